//! What a user feels: time from invocation to the remote command's first
//! output byte, over HTTPS and a network with latency, against the local
//! test bed.
//!
//! `cargo bench --bench latency` (runs per row: `EIC_BENCH_RUNS`, default
//! 15; round-trip times in ms: `EIC_BENCH_RTTS`, default `0,50`). For each
//! RTT the bed serves the API over HTTPS (a test CA, `AWS_CA_BUNDLE`)
//! behind a delay proxy of RTT/2 each way, and the instance's public
//! address is a delay proxy of the same to its sshd
//! (`tests/support/latency.rs`). Rows, each timed from spawning the
//! process to the first byte of `echo x`'s output (unless said otherwise):
//! - plain `ssh` with a key authorised out of band, eic-connect's options;
//! - `eic-connect ID echo x` and `eic-connect NAME echo x`;
//! - `eic-connect --reuse ID echo x` after a first call made the master;
//! - the floor: a fresh process doing only DescribeInstances ∥
//!   SendSSHPublicKey with the SDK (this binary, re-executed), to exit;
//! - eic-connect by id up to ssh started and the push done (a no-op program
//!   as ssh), to exit;
//! - `--dry-run` start-up, to exit;
//! - AWS's `mssh` (`EIC_BENCH_MSSH`, else `mssh` on PATH) and AWS CLI v2's
//!   `aws ec2-instance-connect ssh --connection-type direct`
//!   (`EIC_BENCH_AWS`, else `aws` on PATH), when installed.
//!
//! Each row also shows, per invocation and up to the moment timed, the API
//! requests the stand-in received and the connections and turns (round
//! trips waited for) through the API's and the ssh connection's delay
//! proxies.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::latency::Totals;
use support::load::env_or;
use support::{BedOptions, InstanceSpec, TestBed};

/// Set in the environment of the re-executed floor process.
const FLOOR_ENV: &str = "EIC_BENCH_FLOOR";

fn main() {
    if std::env::var_os(FLOOR_ENV).is_some() {
        std::process::exit(floor());
    }
    let runs = env_or("EIC_BENCH_RUNS", 15).max(1);
    let rtts: Vec<u64> = std::env::var("EIC_BENCH_RTTS")
        .unwrap_or_else(|_| "0,50".into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("EIC_BENCH_RTTS: {v:?} is not a number of ms"))
        })
        .collect();
    let tools = Tools::find();
    println!("eic-connect latency benchmark: {runs} runs per row, RTTs {rtts:?} ms");
    println!("mssh: {}", tools.mssh_note);
    println!("aws:  {}", tools.aws_note);

    let mut tables = Vec::new();
    for &rtt in &rtts {
        let rows = bench_rtt(rtt, runs, &tools);
        print_table(rtt, &rows);
        tables.push((rtt, rows));
    }
    if tables.len() > 1 {
        print_summary(&tables);
    }
}

// ------------------------------------------------------------------ rows

/// One row's outcome.
enum Outcome {
    Measured(Measured),
    /// Why there is no figure ("not installed", …).
    Absent(String),
}

struct Measured {
    median: Duration,
    p90: Duration,
    /// Per invocation, medians: API requests; API proxy connections and
    /// turns; ssh proxy connections and turns.
    requests: f64,
    api: (f64, f64),
    ssh: (f64, f64),
}

struct Row {
    label: &'static str,
    outcome: Outcome,
}

/// What is timed for a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The first byte on stdout (which must be exactly `x\n` in the end).
    FirstOutput,
    /// The process's exit (status 0).
    Exit,
}

/// Everything one RTT's rows share.
struct Ctx<'a> {
    bed: &'a TestBed,
    runs: usize,
    /// The instance's sshd is behind this proxy (at its public address).
    ssh_proxy: std::sync::Arc<support::latency::DelayProxy>,
}

fn bench_rtt(rtt_ms: u64, runs: usize, tools: &Tools) -> Vec<Row> {
    let one_way = Duration::from_micros(rtt_ms * 500);
    let bed = TestBed::start_with(BedOptions {
        https: true,
        api_latency: Some(one_way),
        ..BedOptions::default()
    });
    let inst = bed.add_instance(InstanceSpec::named("bench-1").latency(one_way));
    let ctx = Ctx {
        bed: &bed,
        runs,
        ssh_proxy: bed.ssh_proxy(&inst.id).expect("the instance's delay proxy"),
    };
    let port = bed.sshd_port().to_string();
    let user = bed.os_user();
    let public_ip = inst.public_ip.clone().expect("a public address");
    let eic = |args: &[&str]| {
        let mut c = bed.command();
        c.args(["-p", &port, "-l", &user]).args(args);
        c
    };
    let id = inst.id.as_str();
    let mut rows = Vec::new();

    // Plain ssh, with eic-connect's options where they matter (no agent,
    // this one identity, host key checked against a file, keyed by the
    // instance id).
    let key = bed.generate_key("plain");
    let plain_known_hosts = bed.dir().join("plain_known_hosts");
    rows.push(Row {
        label: "plain `ssh -i KEY` (key authorised out of band)",
        outcome: ctx.measure(Until::FirstOutput, false, || {
            bed.push_key_directly(id, &user, &key.public_key);
            let mut c = Command::new("ssh");
            bed.apply_env(&mut c);
            c.args(["-p", &port, "-l", &user])
                .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
                .arg("-o")
                .arg(format!("IdentityFile={}", key.private_key.display()))
                .arg("-o")
                .arg(format!("HostKeyAlias={id}"))
                .arg("-o")
                .arg(format!(
                    "UserKnownHostsFile={}",
                    plain_known_hosts.display()
                ))
                .args(["-o", "StrictHostKeyChecking=accept-new"])
                .args([&public_ip, "echo", "x"]);
            c
        }),
    });
    rows.push(Row {
        label: "`eic-connect ID echo x`",
        outcome: ctx.measure(Until::FirstOutput, false, || eic(&[id, "echo", "x"])),
    });
    rows.push(Row {
        label: "`eic-connect NAME echo x` (Name tag)",
        outcome: ctx.measure(Until::FirstOutput, false, || eic(&["bench-1", "echo", "x"])),
    });
    rows.push(Row {
        label: "`eic-connect --reuse ID echo x`, master already up",
        outcome: if tools.has_reuse {
            // The first call (not timed) starts the master.
            let first = run_to_end(eic(&["--reuse", id, "echo", "x"]));
            assert_eq!(first.as_deref(), Ok("x\n"), "the first --reuse call");
            let outcome = ctx.measure(Until::FirstOutput, true, || {
                eic(&["--reuse", id, "echo", "x"])
            });
            let mut stop = bed.command();
            stop.args(["reuse", "stop"]);
            let stop = run_to_end(stop);
            assert!(stop.is_ok(), "eic-connect reuse stop: {stop:?}");
            outcome
        } else {
            Outcome::Absent("not available (no --reuse)".into())
        },
    });
    // Session Manager: StartSession, the data channel (behind the same
    // delay as the API: the agent is reached through AWS) and ssh over it;
    // the ssh columns count the data channel's connections and turns.
    let managed = bed.add_instance(
        InstanceSpec::named("bench-ssm")
            .public_ip(false)
            .managed(true),
    );
    let ssm_ctx = Ctx {
        bed: &bed,
        runs,
        ssh_proxy: bed.ssm_proxy().expect("the data channel's delay proxy"),
    };
    rows.push(Row {
        label: "`eic-connect --connect ssm ID echo x` (Session Manager)",
        outcome: ssm_ctx.measure(Until::FirstOutput, false, || {
            let mut c = bed.command();
            c.args(["-l", &user, "--connect", "ssm", &managed.id, "echo", "x"]);
            c
        }),
    });
    let floor_key = bed.generate_key("floor");
    rows.push(Row {
        label: "floor: DescribeInstances ∥ SendSSHPublicKey, fresh process (to exit)",
        outcome: ctx.measure(Until::Exit, false, || {
            let exe = std::env::current_exe().expect("the benchmark's own path");
            let mut c = Command::new(exe);
            bed.apply_env(&mut c);
            c.env(FLOOR_ENV, "1")
                .env("EIC_BENCH_FLOOR_ID", id)
                .env("EIC_BENCH_FLOOR_USER", &user)
                .env("EIC_BENCH_FLOOR_KEY", &floor_key.public_key);
            c
        }),
    });
    let no_op = support::cmd::which("true");
    rows.push(Row {
        label: "`eic-connect ID`: invocation → ssh started, push done (no-op ssh, to exit)",
        outcome: ctx.measure(Until::Exit, false, || {
            let mut c = eic(&[id, "echo", "x"]);
            c.env("EIC_CONNECT_SSH", &no_op);
            c
        }),
    });
    rows.push(Row {
        label: "`eic-connect --dry-run ID` start-up, no API call (to exit)",
        outcome: ctx.measure(Until::Exit, false, || eic(&["--dry-run", id])),
    });

    let known_hosts = bed.dir().join("tools_known_hosts");
    let host_key_opts = [
        "-o".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
    ];
    rows.push(Row {
        label: "AWS `mssh ID echo x` (ec2instanceconnectcli)",
        outcome: match &tools.mssh {
            None => Outcome::Absent(tools.mssh_note.clone()),
            Some(mssh) => ctx.measure_tool(|| {
                // mssh passes options before the target on to ssh (run
                // through a shell; the paths hold no spaces).
                let mut c = Command::new(mssh);
                bed.apply_env(&mut c);
                // botocore reads the region from AWS_DEFAULT_REGION.
                c.env("AWS_DEFAULT_REGION", bed.region())
                    .args(&host_key_opts)
                    .args(["-p", &port, "-l", &user, id, "echo", "x"]);
                c
            }),
        },
    });
    rows.push(Row {
        label: "AWS CLI v2 `aws ec2-instance-connect ssh --connection-type direct`",
        outcome: match &tools.aws {
            None => Outcome::Absent(tools.aws_note.clone()),
            Some(aws) => {
                // The command takes no remote command and no ssh options:
                // an `ssh` first on PATH (the CLI runs the one it finds
                // there) adds them and runs the real one.
                let bin = bed.dir().join("aws-bin");
                std::fs::create_dir_all(&bin).expect("aws-bin");
                let wrapper = bin.join("ssh");
                std::fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh\nexec {} -o 'RemoteCommand=echo x' {} \"$@\"\n",
                        support::cmd::which("ssh"),
                        host_key_opts.join(" ")
                    ),
                )
                .expect("write aws-bin/ssh");
                std::fs::set_permissions(
                    &wrapper,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .expect("chmod aws-bin/ssh");
                let path = format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                );
                ctx.measure_tool(|| {
                    let mut c = Command::new(aws);
                    bed.apply_env(&mut c);
                    c.env("PATH", &path)
                        .env("AWS_DEFAULT_REGION", bed.region())
                        .args(["ec2-instance-connect", "ssh", "--instance-id", id])
                        .args(["--connection-type", "direct", "--os-user", &user])
                        .args(["--ssh-port", &port]);
                    c
                })
            }
        },
    });
    rows
}

impl Ctx<'_> {
    /// Times `make()`'s command `runs` times after two warm-up runs; every
    /// run must succeed.
    fn measure(&self, until: Until, reuse: bool, make: impl FnMut() -> Command) -> Outcome {
        match self.try_measure(until, reuse, make) {
            Ok(m) => Outcome::Measured(m),
            Err(e) => panic!("benchmark command failed: {e}"),
        }
    }

    /// [`Ctx::measure`] for another vendor's tool: a failure is shown in
    /// the row, not fatal.
    fn measure_tool(&self, make: impl FnMut() -> Command) -> Outcome {
        match self.try_measure(Until::FirstOutput, false, make) {
            Ok(m) => Outcome::Measured(m),
            Err(e) => {
                eprintln!("{e}");
                Outcome::Absent(format!("failed: {}", e.lines().next().unwrap_or_default()))
            }
        }
    }

    fn try_measure(
        &self,
        until: Until,
        reuse: bool,
        mut make: impl FnMut() -> Command,
    ) -> Result<Measured, String> {
        let api_proxy = self.bed.api_proxy().expect("the API's delay proxy");
        let mut samples = Vec::new();
        let (mut requests, mut api_conns, mut api_turns, mut ssh_conns, mut ssh_turns) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Requests and proxy counts at one moment.
        let snapshot = || {
            (
                self.bed.requests().len(),
                api_proxy.totals(),
                self.ssh_proxy.totals(),
            )
        };
        for i in 0..self.runs + 2 {
            // The last run's connections finish first (a reused master's
            // stays open: let its last bytes pass instead).
            api_proxy.wait_closed(Duration::from_secs(5));
            if reuse {
                std::thread::sleep(self.ssh_proxy.delay() * 2 + Duration::from_millis(50));
            } else {
                self.ssh_proxy.wait_closed(Duration::from_secs(5));
            }
            let (req0, api0, ssh0) = snapshot();
            // Counted up to the moment timed: the first output byte (not
            // the session's end), or the exit.
            let (took, (req1, api1, ssh1)) = run_timed(make(), until, &snapshot)?;
            if i < 2 {
                continue;
            }
            let api: Totals = api1.since(&api0);
            let ssh: Totals = ssh1.since(&ssh0);
            samples.push(took);
            requests.push((req1 - req0) as f64);
            api_conns.push(api.connections as f64);
            api_turns.push(api.turns as f64);
            ssh_conns.push(ssh.connections as f64);
            ssh_turns.push(ssh.turns as f64);
        }
        assert!(
            self.bed.signature_failures().is_empty(),
            "signature failures: {:?}",
            self.bed.signature_failures()
        );
        samples.sort_unstable();
        Ok(Measured {
            median: quantile(&samples, 0.5),
            p90: quantile(&samples, 0.9),
            requests: median_f(requests),
            api: (median_f(api_conns), median_f(api_turns)),
            ssh: (median_f(ssh_conns), median_f(ssh_turns)),
        })
    }
}

/// Spawns `c` and times it: to its first output byte or to its exit, and
/// takes `snapshot()` at that moment. The command must exit 0, and with
/// `FirstOutput` print exactly `x\n`.
fn run_timed<S>(
    mut c: Command,
    until: Until,
    snapshot: &dyn Fn() -> S,
) -> Result<(Duration, S), String> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = format!("{:?}", c.get_program());
    let start = Instant::now();
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = Vec::new();
    let mut first = [0u8; 1];
    let first_at = match stdout.read(&mut first) {
        Ok(1) => {
            let at = start.elapsed();
            out.push(first[0]);
            Some((at, snapshot()))
        }
        _ => None,
    };
    let _ = stdout.read_to_end(&mut out);
    let status = child
        .wait()
        .map_err(|e| format!("wait for {program}: {e}"))?;
    let exit_at = start.elapsed();
    let at_exit = snapshot();
    let errors = errors.join().unwrap_or_default();
    let out = String::from_utf8_lossy(&out);
    if !status.success() {
        return Err(format!(
            "{program} exited with {status}: {}\nstdout: {out}",
            errors.trim()
        ));
    }
    match until {
        Until::Exit => Ok((exit_at, at_exit)),
        Until::FirstOutput if out == "x\n" => Ok(first_at.expect("a first byte")),
        Until::FirstOutput => Err(format!(
            "{program} printed {out:?}, not \"x\\n\"; stderr: {}",
            errors.trim()
        )),
    }
}

/// Runs `c` to its end: its stdout, or why it failed.
fn run_to_end(mut c: Command) -> Result<String, String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ----------------------------------------------------------------- tools

/// AWS's own clients, where installed.
struct Tools {
    mssh: Option<PathBuf>,
    mssh_note: String,
    aws: Option<PathBuf>,
    aws_note: String,
    /// eic-connect has `--reuse`.
    has_reuse: bool,
}

impl Tools {
    fn find() -> Tools {
        let (mssh, mssh_note) = match tool("EIC_BENCH_MSSH", "mssh") {
            None => (None, "not installed".to_owned()),
            Some(p) => {
                let note = format!("{}", p.display());
                (Some(p), note)
            }
        };
        let (aws, aws_note) = match tool("EIC_BENCH_AWS", "aws") {
            None => (None, "not installed".to_owned()),
            Some(p) => match version(&p, &["--version"]) {
                Some(v) if v.starts_with("aws-cli/2.") => {
                    let note = format!("{} ({})", p.display(), v.trim());
                    (Some(p), note)
                }
                Some(v) => (None, format!("not installed (not v2: {})", v.trim())),
                None => (None, "not installed (no answer to --version)".to_owned()),
            },
        };
        let help = Command::new(support::eic_connect_bin())
            .arg("--help")
            .output()
            .expect("eic-connect --help");
        let has_reuse = String::from_utf8_lossy(&help.stdout).contains("--reuse");
        Tools {
            mssh,
            mssh_note,
            aws,
            aws_note,
            has_reuse,
        }
    }
}

/// `$var` if set (an empty value: none), else `name` on PATH.
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)).filter(|p| p.exists()),
        None => Some(support::cmd::which(name))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    }
}

/// The first line `program ARGS` prints (stdout, else stderr).
fn version(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
}

// ----------------------------------------------------------------- floor

/// The floor process: the SDK configured as eic-connect configures it
/// (`aws::load_config`: its HTTP client, `AWS_CA_BUNDLE`), then
/// DescribeInstances and SendSSHPublicKey at the same time, and nothing
/// else. Exit status 0 if both succeeded.
fn floor() -> i32 {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let (id, user, key) = (
        var("EIC_BENCH_FLOOR_ID"),
        var("EIC_BENCH_FLOOR_USER"),
        var("EIC_BENCH_FLOOR_KEY"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let settings = eic_connect::aws::AwsSettings {
            attempt_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let config = match eic_connect::aws::load_config(&settings).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("floor: {e:#}");
                return 1;
            }
        };
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let eic = aws_sdk_ec2instanceconnect::Client::new(&config);
        let (described, pushed) = tokio::join!(
            ec2.describe_instances().instance_ids(&id).send(),
            eic.send_ssh_public_key()
                .instance_id(&id)
                .instance_os_user(&user)
                .ssh_public_key(&key)
                .send()
        );
        match (described, pushed) {
            (Ok(_), Ok(p)) if p.success() => 0,
            (d, p) => {
                eprintln!("floor: describe {:?}, push {:?}", d.err(), p.err());
                1
            }
        }
    })
}

// ---------------------------------------------------------------- output

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `3` or `2.5`: counts are medians of whole numbers.
fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn print_table(rtt: u64, rows: &[Row]) {
    println!("\n#### RTT {rtt} ms (HTTPS API and ssh each behind a {rtt} ms round trip)\n");
    println!(
        "| measurement | median | p90 | API requests | API conns / turns | ssh conns / turns |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        match &r.outcome {
            Outcome::Measured(m) => println!(
                "| {} | {:.1} ms | {:.1} ms | {} | {} / {} | {} / {} |",
                r.label,
                ms(m.median),
                ms(m.p90),
                count(m.requests),
                count(m.api.0),
                count(m.api.1),
                count(m.ssh.0),
                count(m.ssh.1),
            ),
            Outcome::Absent(why) => println!("| {} | {why} | | | | |", r.label),
        }
    }
    let find = |prefix: &str| {
        rows.iter().find_map(|r| match &r.outcome {
            Outcome::Measured(m) if r.label.starts_with(prefix) => Some(m.median),
            _ => None,
        })
    };
    if let (Some(started), Some(floor)) = (find("`eic-connect ID`: invocation"), find("floor")) {
        println!(
            "\neic-connect up to ssh started / floor: {:.2} ({:.1} ms against {:.1} ms)",
            started.as_secs_f64() / floor.as_secs_f64(),
            ms(started),
            ms(floor)
        );
    }
    if let (Some(eic), Some(plain)) = (find("`eic-connect ID echo"), find("plain")) {
        println!(
            "eic-connect ID over plain ssh: {:+.1} ms",
            ms(eic) - ms(plain)
        );
    }
}

/// Medians side by side, one column per RTT.
fn print_summary(tables: &[(u64, Vec<Row>)]) {
    println!("\n#### Medians side by side\n");
    let mut head = String::from("| measurement |");
    let mut rule = String::from("|---|");
    for (rtt, _) in tables {
        head.push_str(&format!(" RTT {rtt} ms |"));
        rule.push_str("---:|");
    }
    println!("{head}\n{rule}");
    for (i, row) in tables[0].1.iter().enumerate() {
        let mut line = format!("| {} |", row.label);
        for (_, rows) in tables {
            match &rows[i].outcome {
                Outcome::Measured(m) => line.push_str(&format!(" {:.1} ms |", ms(m.median))),
                Outcome::Absent(why) => line.push_str(&format!(" {why} |")),
            }
        }
        println!("{line}");
    }
}
