//! Fleets: `list`, `run` across many instances (with the API throttling),
//! `--start`, and the interactive picker on a real pseudo-terminal.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::cmd::{assert_signed, run, stderr, stdout};
use support::{BedOptions, InstanceSpec, TestBed};

/// `eic-connect run` aimed at the bed's sshd as the bed's user.
fn run_cmd(bed: &TestBed, filters: &[&str]) -> Command {
    let mut c = bed.command();
    c.arg("run");
    for f in filters {
        c.args(["-f", f]);
    }
    c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()]);
    c.stdin(Stdio::null());
    c
}

/// `run … -- 'echo $SSH_CONNECTION'`: each output line's instance (by its
/// label) and the server address its ssh reached.
fn reached<'a>(
    o: &Output,
    instances: &'a [support::Instance],
) -> Vec<(&'a support::Instance, String)> {
    stdout(o)
        .lines()
        .map(|line| {
            let (label, rest) = line
                .split_once(" | ")
                .unwrap_or_else(|| panic!("no label: {line:?}"));
            let server = rest
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned();
            let inst = instances
                .iter()
                .find(|i| i.name.as_deref() == Some(label.trim()))
                .unwrap_or_else(|| panic!("no instance labelled {label:?}"));
            (inst, server)
        })
        .collect()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

#[test]
fn list_shows_what_filters_select_as_tsv_and_json() {
    let bed = TestBed::start();
    bed.register_image(
        "ami-0aaaabbbbcccc1111",
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240101",
        "Canonical, Ubuntu, 22.04 LTS",
        "Linux/UNIX",
    );
    let web1 = bed.add_instance(
        InstanceSpec::named("web-1")
            .tag("Role", "build")
            .image_id("ami-0aaaabbbbcccc1111"),
    );
    let web2 = bed.add_instance(
        InstanceSpec::named("web-2")
            .tag("Role", "build")
            .state("stopped"),
    );
    let _db = bed.add_instance(InstanceSpec::named("db-1").tag("Role", "db"));
    let _gone = bed.add_instance(
        InstanceSpec::named("web-3")
            .tag("Role", "build")
            .state("terminated"),
    );

    let mut c = bed.command();
    c.args(["list", "tag:Role=build"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let lines: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "terminated instances are left out: {}",
        stdout(&out)
    );
    assert_eq!(
        lines[0][..3],
        ["web-1".to_owned(), web1.id.clone(), "running".into()]
    );
    assert_eq!(
        lines[1][..3],
        ["web-2".to_owned(), web2.id.clone(), "stopped".into()]
    );
    assert_eq!(lines[0][7], "ubuntu", "the OS user guessed from the AMI");
    assert_eq!(lines[0][5], web1.public_ip.clone().unwrap());
    assert_eq!(lines[1][5], "-", "a stopped instance has no public address");
    let calls = bed.requests_for("DescribeInstances");
    let filters = calls.last().unwrap().filters();
    assert!(
        filters.contains(&("tag:Role".into(), vec!["build".into()])),
        "{filters:?}"
    );
    assert!(
        filters
            .iter()
            .any(|(n, v)| n == "instance-state-name" && !v.contains(&"terminated".to_owned()))
    );
    assert_eq!(
        bed.requests_for("DescribeImages").len(),
        1,
        "one DescribeImages for all AMIs"
    );

    // A Name glob and a state, as JSON with stable field names.
    let mut c = bed.command();
    c.args(["list", "--json", "web-*", "state=running"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let v = json(&out);
    let all = v.as_array().unwrap();
    assert_eq!(all.len(), 1);
    let one = &all[0];
    assert_eq!(one["id"], web1.id.as_str());
    assert_eq!(one["name"], "web-1");
    assert_eq!(one["state"], "running");
    assert_eq!(one["type"], "t3.micro");
    assert_eq!(one["availability_zone"], "us-east-1a");
    assert_eq!(one["private_ip"], web1.private_ip.as_str());
    assert_eq!(one["os_user"], "ubuntu");
    assert_eq!(one["tags"]["Role"], "build");
    assert_signed(&bed);
}

#[test]
fn list_never_lets_tag_values_reach_the_terminal_raw() {
    let bed = TestBed::start();
    let hostile = "evil\x1b]0;pwned\x07\x1b[2J\u{202e}txt\u{9b}1m";
    bed.add_instance(InstanceSpec::named(hostile).tag("Owner", "\x1b[31mred"));
    for args in [&["list"][..], &["list", "--json"]] {
        let mut c = bed.command();
        c.args(args);
        let out = run(c);
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}'),
            "{args:?} printed raw control characters: {text:?}"
        );
        if args.len() == 2 {
            // JSON still carries the exact values for programs.
            let v = json(&out);
            assert_eq!(v[0]["name"], hostile);
            assert_eq!(v[0]["tags"]["Owner"], "\x1b[31mred");
        }
    }
}

#[test]
fn list_refuses_bad_filters_before_calling_aws() {
    let bed = TestBed::start();
    for bad in ["state=", "na me=x", "web\x1b[2J"] {
        let mut c = bed.command();
        c.args(["list", bad]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("eic-connect: error: "),
            "{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains('\x1b'));
    }
    assert!(bed.requests().is_empty(), "nothing reached AWS");
}

#[test]
fn run_runs_on_every_match_with_prefixed_output_and_a_summary() {
    let bed = TestBed::start();
    let build: Vec<_> = (1..=3)
        .map(|n| bed.add_instance(InstanceSpec::named(&format!("build-{n}")).tag("Role", "build")))
        .collect();
    bed.add_instance(InstanceSpec::named("db-1").tag("Role", "db"));
    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    c.args(["--", "echo", "$SSH_CONNECTION"]);
    // Several words are quoted: the remote shell prints the literal text.
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    for b in &build {
        let name = b.name.as_deref().unwrap();
        assert!(
            text.contains(&format!("{name} | $SSH_CONNECTION\n")),
            "{text}"
        );
    }
    assert_eq!(text.lines().count(), 3, "{text}");

    // One argument is a shell line: each instance reports where it was reached.
    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    c.args(["--", "echo $SSH_CONNECTION"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    for (inst, server) in reached(&out, &build) {
        assert_eq!(Some(server), inst.public_ip, "{}", stdout(&out));
    }
    assert!(
        stderr(&out).contains("3 of 3 instances succeeded"),
        "{}",
        stderr(&out)
    );

    // Each instance got its own key, pushed for it alone; the second run
    // joined the master connections the first left (reuse is on for run).
    let pushes = bed.pushes();
    let keys: BTreeSet<&str> = pushes.iter().map(|p| p.public_key.as_str()).collect();
    assert_eq!(pushes.len(), 3);
    assert_eq!(keys.len(), 3, "a fresh key per connection");
    assert!(
        pushes
            .iter()
            .all(|p| build.iter().any(|b| b.id == p.instance_id))
    );
    assert_signed(&bed);
    // Nothing is left in the runtime directory but the masters, which
    // `reuse stop` ends.
    let left = |bed: &TestBed| -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(bed.dir().join("run")).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("eic-connect-reuse") {
                for socket in std::fs::read_dir(&path).unwrap() {
                    found.push(socket.unwrap().path().display().to_string());
                }
            } else {
                found.push(path.display().to_string());
            }
        }
        found
    };
    let masters = left(&bed);
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(
        masters.iter().all(|p| p.contains("/eic-connect-reuse/")),
        "{masters:?}"
    );
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
    assert!(left(&bed).is_empty(), "{:?}", left(&bed));
    // Without reuse, every run pushes afresh and leaves nothing.
    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    c.args(["--no-reuse", "--", "true"]);
    assert!(run(c).status.success());
    assert_eq!(bed.pushes().len(), 6);
    assert!(left(&bed).is_empty(), "{:?}", left(&bed));
}

#[test]
fn run_exit_status_and_json_say_which_instances_failed() {
    let bed = TestBed::start();
    let a = bed.add_instance(InstanceSpec::named("a").tag("Role", "build"));
    let b = bed.add_instance(InstanceSpec::named("b").tag("Role", "build"));
    let b_ip = b.public_ip.clone().unwrap();
    let script = format!(
        "set -- $SSH_CONNECTION; echo out-$3; echo err-$3 >&2; test \"$3\" != {b_ip} || exit 3"
    );
    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    c.args(["--", &script]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("1 of 2 instances succeeded"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains(&b.id) && l.contains("exit 3")),
        "{err}"
    );
    assert!(err.contains(&format!("b | err-{b_ip}")), "{err}");

    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    c.args(["--json", "--", &script]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["summary"]["total"], 2);
    assert_eq!(v["summary"]["succeeded"], 1);
    assert_eq!(v["summary"]["failed"], 1);
    let by_id = |id: &str| {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
            .unwrap()
    };
    let ra = by_id(&a.id);
    assert_eq!(ra["status"], "succeeded");
    assert_eq!(ra["exit_code"], 0);
    assert_eq!(
        ra["stdout"],
        format!("out-{}\n", a.public_ip.clone().unwrap())
    );
    let rb = by_id(&b.id);
    assert_eq!(rb["status"], "failed");
    assert_eq!(rb["exit_code"], 3);
    assert_eq!(rb["stderr"], format!("err-{b_ip}\n"));
    assert_eq!(rb["os_user"], bed.os_user());
}

#[test]
fn run_reports_instances_it_could_not_reach() {
    let bed = TestBed::start();
    let ok = bed.add_instance(InstanceSpec::named("ok").tag("Role", "build"));
    let denied = bed.add_instance(InstanceSpec::named("denied").tag("Role", "build"));
    let stopped = bed.add_instance(
        InstanceSpec::named("stopped")
            .tag("Role", "build")
            .state("stopped"),
    );
    // AuthException is not retried; the first push to arrive gets it.
    bed.fail_next("SendSSHPublicKey", "AuthException", 1);
    let mut c = run_cmd(&bed, &["tag:Role=build", "state=running,stopped"]);
    c.args(["--parallel", "1", "--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("1 of 3 instances succeeded"), "{err}");
    // Instances are taken in name order: "denied" gets the AuthException.
    assert!(
        err.lines()
            .any(|l| l.contains(&denied.id) && l.contains("not allowed to push a key")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains(&stopped.id) && l.contains("--start")),
        "{err}"
    );
    assert!(bed.pushes().iter().any(|p| p.instance_id == ok.id));
}

#[test]
fn run_without_a_match_fails_and_without_a_filter_is_refused() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = run_cmd(&bed, &["tag:Role=nothing"]);
    c.args(["--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("no instance matches tag:Role=nothing"),
        "{}",
        stderr(&out)
    );
    assert!(bed.pushes().is_empty());

    let mut c = bed.command();
    c.args(["run", "--", "true"]);
    let out = run(c);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a run needs a filter: {}",
        stderr(&out)
    );
}

#[test]
fn run_reaches_a_hundred_instances_through_api_throttling() {
    let bed = TestBed::start_with(BedOptions {
        slots: 100,
        ..BedOptions::default()
    });
    for n in 0..100 {
        bed.add_instance(InstanceSpec::named(&format!("node-{n:03}")).tag("Fleet", "big"));
    }
    // Far below what 100 parallel pushes would ask for.
    bed.set_rate_limit("SendSSHPublicKey", 25.0, 10);
    let mut c = run_cmd(&bed, &["tag:Fleet=big"]);
    c.args(["--parallel", "50", "--json", "--", "echo ok"]);
    let started = Instant::now();
    let out = run(c);
    let took = started.elapsed();
    let v = json(&out);
    let failed: Vec<String> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] != "succeeded")
        .map(|i| {
            format!(
                "{} {} {} {}",
                i["name"], i["status"], i["error"], i["stderr"]
            )
        })
        .collect();
    assert_eq!(out.status.code(), Some(0), "{}: {failed:#?}", v["summary"]);
    assert_eq!(v["summary"]["succeeded"], 100, "{}", v["summary"]);
    assert!(
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["stdout"] == "ok\n")
    );
    assert!(
        bed.throttled("SendSSHPublicKey") > 0,
        "the test must meet throttling"
    );
    let mut pushed: Vec<String> = bed.pushes().into_iter().map(|p| p.instance_id).collect();
    pushed.sort();
    pushed.dedup();
    assert_eq!(pushed.len(), 100);
    assert_signed(&bed);
    eprintln!(
        "100 instances, parallel 50, 25 pushes/s: {:.1} s, {} throttled answers",
        took.as_secs_f64(),
        bed.throttled("SendSSHPublicKey")
    );
}

/// Four instances fail, each its own way, among ones that succeed, while the
/// API throttles both the paged DescribeInstances and the pushes: every
/// instance is accounted for, each failure with its own reason.
#[test]
fn run_gives_each_failing_instance_its_own_reason_under_throttling() {
    let bed = TestBed::start();
    let mut ok = Vec::new();
    for n in 0..8 {
        ok.push(bed.add_instance(InstanceSpec::named(&format!("ok-{n}")).tag("Fleet", "mixed")));
    }
    let stopped = bed.add_instance(
        InstanceSpec::named("stopped")
            .tag("Fleet", "mixed")
            .state("stopped"),
    );
    let denied = bed.add_instance(InstanceSpec::named("denied").tag("Fleet", "mixed"));
    let no_helper = bed.add_instance(
        InstanceSpec::named("no-helper")
            .tag("Fleet", "mixed")
            .instance_connect(false),
    );
    let down = bed.add_instance(
        InstanceSpec::named("down")
            .tag("Fleet", "mixed")
            .unreachable(),
    );
    bed.fail_next_for("SendSSHPublicKey", &denied.id, "AuthException", 1);
    bed.set_rate_limit("SendSSHPublicKey", 5.0, 2);
    bed.set_rate_limit("DescribeInstances", 5.0, 1);
    bed.set_page_size(3);
    let mut c = run_cmd(&bed, &["tag:Fleet=mixed", "state=running,stopped"]);
    c.args(["--parallel", "12", "--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("8 of 12 instances succeeded:"), "{err}");
    let summary: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.contains("instances succeeded"))
        .skip(1)
        .collect();
    assert_eq!(summary.len(), 4, "one summary line per failure: {err}");
    let line_for = |id: &str| {
        summary
            .iter()
            .find(|l| l.contains(id))
            .copied()
            .unwrap_or_else(|| panic!("{id} not in the summary: {err}"))
    };
    assert!(
        line_for(&stopped.id).contains("not reached: instance is stopped"),
        "{err}"
    );
    assert!(
        line_for(&denied.id).contains("not reached: not allowed to push a key"),
        "{err}"
    );
    assert!(line_for(&no_helper.id).contains("exit 255"), "{err}");
    assert!(line_for(&down.id).contains("exit 255"), "{err}");
    // What ssh said, on the instance's own line.
    assert!(
        err.lines()
            .any(|l| l.starts_with("no-helper") && l.contains("Permission denied (publickey)")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("down") && l.contains("Connection refused")),
        "{err}"
    );
    for i in &ok {
        assert!(!err.contains(&i.id), "{} succeeded: {err}", i.id);
        assert!(bed.pushes().iter().any(|p| p.instance_id == i.id));
    }
    assert!(
        bed.throttled("DescribeInstances") > 0,
        "the listing met throttling"
    );
    assert!(bed.requests_for("DescribeInstances").len() >= 4, "in pages");
    assert_signed(&bed);
}

#[test]
fn start_starts_a_stopped_instance_then_connects() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").state("stopped"));
    bed.set_start_delay(Duration::from_millis(1500));

    // Without --start: the state, and how to start it.
    let mut c = support::cmd::eic(&bed);
    c.args(["web-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("is stopped"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--start"), "{}", stderr(&out));
    assert!(bed.requests_for("StartInstances").is_empty());
    let mut c = support::cmd::eic(&bed);
    c.args(["--dry-run", "--start", "web-1", "true"]);
    let out = run(c);
    assert!(
        stdout(&out).contains("StartInstances InstanceId.1=<instance id>"),
        "{}",
        stdout(&out)
    );
    assert!(bed.requests().iter().all(|r| r.action != "StartInstances"));

    for target in ["web-1", web.id.as_str()] {
        bed.set_state(&web.id, "stopped");
        let mut c = support::cmd::eic(&bed);
        c.args(["--start", target, "echo up $SSH_CONNECTION"]);
        let out = run(c);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert!(stdout(&out).starts_with("up "), "{}", stdout(&out));
        assert!(stderr(&out).contains("is running"), "{}", stderr(&out));
        assert_eq!(bed.state_of(&web.id), "running");
        // The key was pushed after the instance ran, within its window.
        let last = bed.pushes().last().cloned().unwrap();
        assert_eq!(last.instance_id, web.id);
    }
    assert_eq!(bed.requests_for("StartInstances").len(), 2);

    // A start AWS refuses is explained.
    bed.set_state(&web.id, "stopped");
    bed.fail_next("StartInstances", "InsufficientInstanceCapacity", 1);
    let mut c = support::cmd::eic(&bed);
    c.args(["--start", &web.id, "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("no capacity"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
    assert_signed(&bed);
}

#[test]
fn run_start_starts_stopped_matches() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("a").tag("Role", "build"));
    let b = bed.add_instance(
        InstanceSpec::named("b")
            .tag("Role", "build")
            .state("stopped"),
    );
    bed.set_start_delay(Duration::from_millis(500));
    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    c.args(["--start", "--", "true"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("2 of 2 instances succeeded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(bed.state_of(&b.id), "running");
}

#[test]
fn several_matches_without_a_terminal_list_them_and_never_prompt() {
    let bed = TestBed::start();
    let a = bed.add_instance(InstanceSpec::named("web-a"));
    let b = bed.add_instance(InstanceSpec::named("web-b"));
    let mut c = support::cmd::eic(&bed);
    c.args(["web-*", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(err.contains("matches 2 instances"), "{err}");
    assert!(err.contains(&a.id) && err.contains(&b.id), "{err}");
    assert!(bed.pushes().is_empty());
}

/// A child process on a fresh pseudo-terminal (its controlling terminal),
/// so `isatty` is true for its stdin and stderr as for a person's shell.
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 30,
            ws_col: 140,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two fds we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: each fd is owned by exactly one File.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap())
            .env("TERM", "xterm");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on the pty");
        drop(slave);
        Pty { master, child }
    }

    /// Reads what arrives within `timeout` into `seen`; false once the
    /// terminal is closed (every copy of the slave side is gone).
    fn read_some(&mut self, seen: &mut String, timeout: Duration) -> bool {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid fd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n <= 0 {
            return true;
        }
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                true
            }
        }
    }

    /// Reads until `needle` shows up (ANSI sequences aside), or panics after
    /// `within`.
    fn expect(&mut self, seen: &mut String, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !strip_ansi(seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} on the terminal; saw {seen:?}"
            );
            let open = self.read_some(seen, left.min(Duration::from_millis(500)));
            assert!(
                open || strip_ansi(seen).contains(needle),
                "terminal closed before {needle:?}; saw {seen:?}"
            );
        }
    }

    /// Waits until the program on the terminal reads keys one at a time
    /// (the terminal is out of canonical mode): the picker switches to that
    /// only once it has drawn its list and waits for a key, and switches
    /// back after each key. A key sent before would meet the terminal's
    /// line discipline instead (Ctrl-C would become a signal). Panics after
    /// `within`.
    fn wait_for_key_reading(&self, seen: &str, within: Duration) {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + within;
        loop {
            // SAFETY: tcgetattr on a valid fd into a termios we own. On the
            // master side it reports the terminal's (the slave's) settings.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) };
            assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
            if t.c_lflag & libc::ICANON == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the picker never waited for a key; saw {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.master.write_all(bytes).unwrap();
    }

    /// Waits for the child, reading its output to the end.
    fn wait(&mut self, seen: &mut String) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.read_some(seen, Duration::from_millis(100)) {
            assert!(
                Instant::now() < deadline,
                "the terminal stayed open; saw {seen:?}"
            );
            if self.child.try_wait().unwrap().is_some() {
                // Whatever is still buffered, then stop.
                while self.read_some(seen, Duration::from_millis(50)) && Instant::now() < deadline {
                }
                break;
            }
        }
        self.child.wait().unwrap().code()
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() || n == '~' {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn several_matches_on_a_terminal_offer_a_picker() {
    let bed = TestBed::start();
    let _a = bed.add_instance(InstanceSpec::named("web-alpha"));
    let b = bed.add_instance(InstanceSpec::named("web-bravo"));
    let mut c = bed.command();
    c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()]);
    c.args(["web-*", "echo reached $SSH_CONNECTION"]);
    let mut pty = Pty::spawn(c);
    let mut seen = String::new();
    let within = Duration::from_secs(60);
    pty.expect(&mut seen, "matches 2 instances", within);
    pty.expect(&mut seen, "web-alpha", within);
    pty.wait_for_key_reading(&seen, within);
    // Type to narrow the list to one; once the picker shows the search
    // term and waits for the next key, take it.
    pty.send(b"bravo");
    pty.expect(&mut seen, "Esc to cancel bravo|", within);
    pty.wait_for_key_reading(&seen, within);
    pty.send(b"\r");
    pty.expect(&mut seen, "reached", within);
    let code = pty.wait(&mut seen);
    assert_eq!(code, Some(0), "{seen}");
    let text = strip_ansi(&seen);
    let line = text.lines().find(|l| l.contains("reached")).unwrap();
    assert!(line.contains(b.public_ip.as_deref().unwrap()), "{line}");
    assert_eq!(bed.pushes().len(), 1);
    assert_eq!(bed.pushes()[0].instance_id, b.id);

    // Esc gives up, and so does Ctrl-C: the same listing a script would
    // get, nothing pushed.
    bed.clear_records();
    for key in [&b"\x1b"[..], b"\x03"] {
        let mut c = bed.command();
        c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
            .args(["web-*", "true"]);
        let mut pty = Pty::spawn(c);
        let mut seen = String::new();
        pty.expect(&mut seen, "web-alpha", within);
        // The picker reads keys in raw mode, where Ctrl-C is a key.
        pty.wait_for_key_reading(&seen, within);
        pty.send(key);
        let code = pty.wait(&mut seen);
        assert_eq!(code, Some(255), "{key:?}: {seen:?}");
        assert!(
            strip_ansi(&seen).contains("name one by its instance id"),
            "{key:?}: {seen:?}"
        );
        // The cursor the picker hid is shown again.
        let hidden = seen
            .rfind("\x1b[?25l")
            .expect("the picker hides the cursor");
        assert!(
            seen[hidden..].contains("\x1b[?25h"),
            "cursor left hidden: {seen:?}"
        );
        assert!(bed.pushes().is_empty());
    }
}

#[test]
fn run_shows_a_progress_line_on_a_terminal() {
    let bed = TestBed::start();
    for n in 1..=2 {
        bed.add_instance(InstanceSpec::named(&format!("b-{n}")).tag("Role", "build"));
    }
    let mut c = bed.command();
    c.args([
        "run",
        "-f",
        "tag:Role=build",
        "-p",
        &bed.sshd_port().to_string(),
    ])
    .args(["-l", &bed.os_user(), "--", "echo hi"]);
    let mut pty = Pty::spawn(c);
    let mut seen = String::new();
    pty.expect(
        &mut seen,
        "2 of 2 instances succeeded",
        Duration::from_secs(30),
    );
    assert_eq!(pty.wait(&mut seen), Some(0), "{seen}");
    assert!(
        seen.contains("\r\u{1b}[2Keic-connect: run: 1/2 done"),
        "a status line redrawn in place: {seen:?}"
    );
    assert!(seen.contains("2/2 done"), "{seen:?}");
    let text = strip_ansi(&seen);
    assert!(
        text.contains("b-1 | hi") && text.contains("b-2 | hi"),
        "{text:?}"
    );
}

#[test]
fn run_lets_the_users_ssh_options_win_over_its_defaults() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("a").tag("Role", "build"));
    let mut c = run_cmd(&bed, &["tag:Role=build"]);
    // run's own default is LogLevel=ERROR; the user's value comes first.
    c.args(["-o", "LogLevel=VERBOSE", "--", "true"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("a | Authenticated to"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_reaches_private_instances_through_one_endpoint_lookup() {
    let bed = TestBed::start();
    let dbs: Vec<_> = (1..=4)
        .map(|n| {
            bed.add_instance(
                InstanceSpec::named(&format!("db-{n}"))
                    .tag("Role", "db")
                    .public_ip(false),
            )
        })
        .collect();
    bed.add_endpoint(support::eice::EndpointSpec::default());
    // No -p: endpoints reach port 22, which the stand-in maps to the sshd.
    let mut c = bed.command();
    c.args(["run", "-f", "tag:Role=db", "-l", &bed.os_user()])
        .args(["--parallel", "4", "--", "echo $SSH_CONNECTION"])
        .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    for (db, server) in reached(&out, &dbs) {
        assert_eq!(server, db.private_ip, "{}", stdout(&out));
    }
    assert_eq!(stdout(&out).lines().count(), 4);
    // The masters (reuse) hold their tunnels until they end.
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
    let tunnels = bed.wait_for_tunnels_closed(4, Duration::from_secs(10));
    let mut reached: Vec<&str> = tunnels.iter().map(|t| t.private_ip.as_str()).collect();
    reached.sort_unstable();
    let mut want: Vec<&str> = dbs.iter().map(|d| d.private_ip.as_str()).collect();
    want.sort_unstable();
    assert_eq!(reached, want);
    assert_eq!(
        bed.requests_for("DescribeInstanceConnectEndpoints").len(),
        1,
        "instances in one subnet share one endpoint lookup"
    );
    assert_signed(&bed);
}

/// The sshd log's `port N` of every session that started a command.
fn started_sessions(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Starting session:"))
        .filter_map(|l| l.split(" port ").nth(1)?.split_whitespace().next())
        .map(|port| format!("port {port}"))
        .collect()
}

/// Whether sshd logged the end of the connection from `port` (`port N`).
fn connection_ended(log: &str, port: &str) -> bool {
    log.lines().any(|l| {
        let words: Vec<&str> = l.split([' ', ':']).collect();
        let mentions = words
            .windows(2)
            .any(|w| w[0] == "port" && Some(w[1]) == port.strip_prefix("port "));
        mentions
            && [
                "Connection closed",
                "Connection reset",
                "Read error",
                "Disconnected",
            ]
            .iter()
            .any(|end| l.contains(end))
    })
}

/// A remote command that prints "started", then runs for ten minutes unless
/// its connection goes away (its next write then ends it), so nothing is
/// left running on the instance after a test.
const LONG_COMMAND: &str =
    "echo started; n=0; while [ $n -lt 600 ] && printf .; do n=$((n+1)); sleep 1; done";

/// How long a stopped run may take to end (only a hang takes longer; the
/// remote command takes far longer).
const STOP_WITHIN: Duration = Duration::from_secs(120);

#[test]
fn run_stopped_by_sigterm_stops_every_ssh_and_leaves_nothing_behind() {
    let bed = TestBed::start();
    for n in 1..=3 {
        bed.add_instance(InstanceSpec::named(&format!("s-{n}")).tag("Role", "slow"));
    }
    let mut c = run_cmd(&bed, &["tag:Role=slow"]);
    c.args(["--", LONG_COMMAND])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Wait until every instance runs the command.
    let deadline = Instant::now() + Duration::from_secs(60);
    while started_sessions(&bed.sshd_log()).len() < 3 {
        assert!(Instant::now() < deadline, "{}", bed.sshd_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = bed.dir().join("run");
    // One runtime dir per connection, besides the masters' directory.
    let sessions = |runtime: &std::path::Path| {
        std::fs::read_dir(runtime)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "eic-connect-reuse")
            .count()
    };
    assert_eq!(sessions(&runtime), 3, "one runtime dir per connection");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < STOP_WITHIN, "run did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(sessions(&runtime), 0, "keys and sockets are gone");

    // Every ssh was stopped: sshd saw each of those connections end (long
    // before the remote command would have).
    let deadline = Instant::now() + STOP_WITHIN;
    loop {
        let log = bed.sshd_log();
        let sessions = started_sessions(&log);
        if sessions.iter().all(|port| connection_ended(&log, port)) {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No master outlived the stop: none answers, and any socket a killed
    // ssh could not remove is swept by the next look (here `reuse list`).
    let mut c = bed.command();
    c.args(["reuse", "list"]);
    let listed = run(c);
    assert_eq!(stdout(&listed), "", "no master outlived the stop");
    let masters = std::fs::read_dir(runtime.join("eic-connect-reuse")).map_or(0, |d| d.count());
    assert_eq!(masters, 0, "no master socket is left");
}

/// Once the picker has run, Ctrl-C still stops eic-connect at once (exit
/// 130), here during `--start`'s wait, and nothing is pushed.
#[test]
fn ctrl_c_after_the_picker_stops_at_once() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-alpha"));
    bed.add_instance(InstanceSpec::named("web-bravo").state("stopped"));
    bed.set_start_delay(Duration::from_secs(120));
    let mut c = bed.command();
    c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
        .args(["--start", "web-*", "true"]);
    let mut pty = Pty::spawn(c);
    let mut seen = String::new();
    pty.expect(&mut seen, "web-bravo", Duration::from_secs(20));
    pty.send(b"bravo");
    pty.expect(&mut seen, "bravo", Duration::from_secs(5));
    pty.send(b"\r");
    pty.expect(&mut seen, "starting", Duration::from_secs(20));
    let pid = pty.child.id() as i32;
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let code = pty.wait(&mut seen);
    assert_eq!(code, Some(130), "{seen:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "Ctrl-C was not heard: {seen:?}"
    );
    assert!(strip_ansi(&seen).contains("interrupted"), "{seen:?}");
    assert!(bed.pushes().is_empty());
}
