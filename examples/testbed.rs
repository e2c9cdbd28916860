//! Try eic-connect without an AWS account: the integration-test bed, by hand.
//!
//! ```sh
//! cargo run --example testbed                      # a shell pointed at the bed
//! cargo run --example testbed -- web-1 uptime      # one eic-connect command line
//! cargo run --example testbed -- list
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

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

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
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(exe) = eic_connect() else {
        eprintln!(
            "eic-connect is not built: run `cargo build` (or `cargo install --path .`) first"
        );
        return ExitCode::from(2);
    };
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").tag("env", "dev"));
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let endpoint = bed.add_endpoint(support::eice::EndpointSpec::default());
    let (port, user) = (bed.sshd_port().to_string(), bed.os_user());

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
