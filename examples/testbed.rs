//! Try eic-connect without an AWS account: the integration-test bed, by hand.
//!
//! ```sh
//! cargo run --example testbed                      # a shell pointed at the bed
//! cargo run --example testbed -- web-1 uptime      # one eic-connect command line
//! cargo run --example testbed -- list
//! cargo run --example testbed -- --exec PROG ARGS  # PROG with the bed's environment
//! ```
//!
//! Starts the AWS API stand-in (EC2, EC2 Instance Connect and an EC2
//! Instance Connect Endpoint, each checking request signatures) and real
//! sshd "instances" on loopback, with a public instance, a private one that
//! only the endpoint reaches, and a stopped one. With arguments, runs
//! `eic-connect ARGS` against it (adding `-p PORT -l USER` for connect and
//! `run`, since the bed's sshd listens on a free port and lets one user in)
//! and exits with its status. Without, opens your shell with the
//! environment set and `eic-connect` on PATH, and shows each API call as it
//! arrives. Everything it created is removed when it ends.
//!
//! `--exec PROG ARGS` runs PROG (not eic-connect) with the bed's
//! environment plus `TESTBED_*` variables naming the endpoint, the private
//! instance, the stand-in's address and two files: the bed appends a line
//! to `$TESTBED_EVENTS` for each tunnel that ends and each refused
//! handshake, and applies each line PROG appends to `$TESTBED_CONTROL`
//! (`fail-next-tunnel CODE MESSAGE`, `close-next-tunnel CODE REASON`,
//! `text-frame-next-tunnel`), answering `ok LINE`. Used by
//! `scripts/crosscheck-aws-cli.sh`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use support::eice::{ClosedBy, TunnelFault};
use support::{InstanceSpec, TestBed};

/// Subcommands that take neither `-p` nor `-l` before their arguments.
const PLAIN: &[&str] = &[
    "list",
    "tunnel",
    "ssh-config",
    "scp",
    "sftp",
    "doctor",
    "serial",
    "audit",
    "policy",
    "endpoint",
    "console",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exec = args.first().map(String::as_str) == Some("--exec");
    let exe = eic_connect().unwrap_or_default();
    if !exec && exe.as_os_str().is_empty() {
        eprintln!(
            "eic-connect is not built: run `cargo build` (or `cargo install --path .`) first"
        );
        return ExitCode::from(2);
    }
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").tag("env", "dev"));
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let endpoint = bed.add_endpoint(support::eice::EndpointSpec::default());
    let (port, user) = (bed.sshd_port().to_string(), bed.os_user());

    if exec {
        let Some(prog) = args.get(1) else {
            eprintln!("usage: testbed --exec PROG [ARGS...]");
            return ExitCode::from(2);
        };
        let (events, control) = (bed.dir().join("events"), bed.dir().join("control"));
        let mut c = Command::new(prog);
        bed.apply_env(&mut c);
        c.args(&args[2..])
            .env("TESTBED_DIR", bed.dir())
            .env("TESTBED_SSH_PORT", &port)
            .env("TESTBED_OS_USER", &user)
            .env("TESTBED_PRIVATE_ID", &db.id)
            .env("TESTBED_PRIVATE_IP", &db.private_ip)
            .env("TESTBED_EICE_ID", &endpoint.id)
            .env("TESTBED_EICE_DNS_NAME", &endpoint.dns_name)
            .env(
                "TESTBED_EICE_ADDR",
                bed.eice_endpoint().trim_start_matches("https://"),
            )
            .env("TESTBED_EVENTS", &events)
            .env("TESTBED_CONTROL", &control);
        let done = std::sync::atomic::AtomicBool::new(false);
        let status = std::thread::scope(|scope| {
            scope.spawn(|| watch_eice(&bed, &events, &control, &done));
            let status = c.status();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            status
        });
        drop(bed);
        return match status {
            Ok(s) => ExitCode::from(s.code().map_or(255, |c| c.clamp(0, 255) as u8)),
            Err(err) => {
                eprintln!("cannot run {prog}: {err}");
                ExitCode::from(255)
            }
        };
    }

    if !args.is_empty() {
        let mut c = Command::new(&exe);
        bed.apply_env(&mut c);
        let mut line: Vec<String> = Vec::new();
        match args.first().map(String::as_str) {
            Some(first) if PLAIN.contains(&first) => line.extend(args.iter().cloned()),
            Some("run") => {
                line.extend(["run".into(), "-p".into(), port.clone(), "-l".into(), user]);
                line.extend(args.iter().skip(1).cloned());
            }
            _ => {
                line.extend(["-p".into(), port.clone(), "-l".into(), user]);
                line.extend(args.iter().cloned());
            }
        }
        eprintln!("$ eic-connect {}", line.join(" "));
        let status = c.args(&line).status();
        drop(bed);
        return match status {
            Ok(s) => ExitCode::from(s.code().map_or(255, |c| c.clamp(0, 255) as u8)),
            Err(err) => {
                eprintln!("cannot run {}: {err}", exe.display());
                ExitCode::from(255)
            }
        };
    }

    println!("eic-connect test bed is up.\n");
    println!("Instances:");
    for i in [&web, &db, &old] {
        println!(
            "  {:<6} {}  {:<8} private {:<10} public {}",
            i.name.as_deref().unwrap_or("-"),
            i.id,
            i.state,
            i.private_ip,
            i.public_ip.as_deref().unwrap_or("-"),
        );
    }
    println!(
        "Endpoint: {} (db-1 has no public address: eic-connect tunnels through it)",
        endpoint.id
    );
    println!(
        "The endpoint's TLS certificate is signed by a test CA, trusted through\n\
         AWS_CA_BUNDLE={}",
        bed.eice_ca_bundle().display()
    );
    println!("\nsshd listens on port {port} on every instance address; only `{user}` logs in.");
    println!("Try:  eic-connect -p {port} {user}@web-1");
    println!("      eic-connect -p {port} {user}@db-1 uptime       # through the endpoint");
    println!("      eic-connect -p {port} --start {user}@old-1 uptime");
    println!("      eic-connect list");
    println!("      eic-connect run -f state=running -p {port} -l {user} -- hostname");
    println!("\nBed dir: {}  (sshd log: sshd.log)", bed.dir().display());
    println!("Leave the shell (exit, or Ctrl-D) to stop the bed.\n");

    // The shell: the bed's environment, the user's terminal, eic-connect first on PATH.
    let bin = bed.dir().join("bin");
    let linked = std::fs::create_dir_all(&bin)
        .and_then(|()| std::os::unix::fs::symlink(&exe, bin.join("eic-connect")));
    if let Err(err) = linked {
        eprintln!("cannot put eic-connect on PATH: {err}");
    }
    let shell = std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into());
    let mut c = Command::new(&shell);
    bed.apply_env(&mut c);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut with_bin = bin.into_os_string();
    with_bin.push(":");
    with_bin.push(path);
    c.env("PATH", with_bin);
    for keep in ["TERM", "COLORTERM", "LANG", "SHELL"] {
        if let Some(v) = std::env::var_os(keep) {
            c.env(keep, v);
        }
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let status = std::thread::scope(|scope| {
        scope.spawn(|| echo_calls(&bed, &done));
        let status = c.status();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        status
    });
    println!("\nStopping.");
    drop(bed);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("cannot run {}: {err}", PathBuf::from(shell).display());
            ExitCode::from(255)
        }
    }
}

/// Echoes API calls as they arrive, to see what the tool does.
fn echo_calls(bed: &TestBed, done: &std::sync::atomic::AtomicBool) {
    let mut last = 0;
    loop {
        // Read the flag first: calls made before it was set are still shown.
        let finished = done.load(std::sync::atomic::Ordering::Relaxed);
        let calls = bed.requests();
        for c in calls.iter().skip(last) {
            let outcome = match (&c.error_code, &c.auth_error) {
                (_, Some(a)) => format!("AUTH FAILED: {a}"),
                (Some(code), None) => format!("-> {} {code}", c.status),
                (None, None) => format!("-> {}", c.status),
            };
            eprintln!("[api] {} {outcome}", c.action);
        }
        last = calls.len();
        if finished {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// For `--exec`: appends ended tunnels, refused handshakes and signature
/// failures to `events`, and applies the lines appended to `control`.
fn watch_eice(
    bed: &TestBed,
    events: &std::path::Path,
    control: &std::path::Path,
    done: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    let Ok(mut out) = std::fs::File::create(events) else {
        eprintln!("cannot create {}", events.display());
        return;
    };
    let _ = std::fs::write(control, "");
    let (mut tunnels, mut refusals, mut failures, mut applied) = (0, 0, 0, 0);
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let lines: Vec<String> = std::fs::read_to_string(control)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        for line in lines.iter().skip(applied) {
            let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (first, second) = rest.split_once(' ').unwrap_or((rest, ""));
            let ok = match verb {
                "fail-next-tunnel" => {
                    bed.fail_next_tunnel(first, second);
                    true
                }
                "close-next-tunnel" => first.parse().is_ok_and(|code| {
                    let reason = second.to_owned();
                    bed.fault_next_tunnel(TunnelFault::Close { code, reason });
                    true
                }),
                "text-frame-next-tunnel" => {
                    bed.fault_next_tunnel(TunnelFault::TextFrame);
                    true
                }
                _ => false,
            };
            let _ = writeln!(out, "{} {line}", if ok { "ok" } else { "unknown" });
        }
        applied = lines.len();
        let all = bed.tunnels();
        // Tunnels end in any order; report them in order, each once ended.
        while let Some(t) = all.get(tunnels).filter(|t| t.closed_by != ClosedBy::Open) {
            let code = |c: Option<u16>| c.map_or("-".into(), |c| c.to_string());
            let _ = writeln!(
                out,
                "tunnel {tunnels} port={} closed_by={:?} client_close={} server_close={} up={} down={} frames_up={} largest_frame={} violations={}",
                t.remote_port,
                t.closed_by,
                code(t.client_close_code),
                code(t.server_close.as_ref().map(|(c, _)| *c)),
                t.bytes_up,
                t.bytes_down,
                t.frames_up,
                t.largest_frame,
                t.violations.len(),
            );
            tunnels += 1;
        }
        for r in bed.tunnel_rejections().iter().skip(refusals) {
            let _ = writeln!(
                out,
                "refused status={} code={} injected={} message={}",
                r.status, r.code, r.injected, r.message
            );
            refusals += 1;
        }
        for f in bed.signature_failures().iter().skip(failures) {
            let _ = writeln!(out, "signature-failure {f}");
            failures += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The eic-connect to run: the one built beside this example, else the
/// one on PATH.
fn eic_connect() -> Option<PathBuf> {
    let built = support::eic_connect_bin();
    if built.is_file() {
        return Some(built);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v eic-connect"])
        .output()
        .ok()?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!found.is_empty()).then(|| PathBuf::from(found))
}
