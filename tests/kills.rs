//! eic-connect killed at every stage (before the push, after it, while ssh
//! authenticates, mid-session) with SIGKILL, SIGINT (to the process group,
//! as Ctrl-C does), SIGTERM and SIGHUP; for connect, `run`, the ssh-config
//! proxy and the tunnel. After each: it exits, no process it started
//! outlives it, no private key is on disk, and the next run works and
//! clears what the killed one left.

mod support;

use support::api::Fault;
use support::cmd::{assert_no_private_key_file, block_ssh, ssh_config, stderr, stdout};
use support::eice::EndpointSpec;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{InstanceSpec, TestBed};

const SIGNALS: [(&str, i32); 4] = [
    ("SIGKILL", libc::SIGKILL),
    ("SIGINT", libc::SIGINT),
    ("SIGTERM", libc::SIGTERM),
    ("SIGHUP", libc::SIGHUP),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The push is in flight.
    BeforePush,
    /// The key is pushed and ssh is being started.
    AfterPush,
    /// sshd is looking the key up.
    Authenticating,
    /// The remote command runs.
    MidSession,
}

/// `(pid, parent pid, state)` of every process.
fn processes() -> Vec<(i32, i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

/// Every live descendant of `root`.
fn descendants(root: i32) -> Vec<i32> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (pid, ppid, state) in &all {
            if *ppid == parent && *state != 'Z' && !found.contains(pid) {
                found.push(*pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

fn alive(pid: i32) -> bool {
    processes()
        .iter()
        .any(|(p, _, state)| *p == pid && *state != 'Z')
}

fn command_line(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `pid` (SIGINT to its process group, as a terminal).
fn send(pid: i32, signal: i32) {
    // SAFETY: getpgid and kill(2) on processes this test started.
    unsafe {
        let target = if signal == libc::SIGINT {
            -libc::getpgid(pid)
        } else {
            pid
        };
        assert_ne!(target, 0);
        libc::kill(target, signal);
    }
}

/// Starts `c` in its own process group, stdout piped.
fn start(mut c: Command) -> Child {
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("start")
}

/// Readies `stage` for a connection about to start, returning the remote
/// command to run.
fn arrange(bed: &TestBed, stage: Stage) -> &'static str {
    bed.clear_records();
    match stage {
        Stage::BeforePush => {
            bed.inject(
                "SendSSHPublicKey",
                Fault::Latency(Duration::from_secs(30)),
                1,
            );
        }
        Stage::Authenticating => bed.hold_authentication(30),
        Stage::AfterPush | Stage::MidSession => {}
    }
    "echo started; sleep 30"
}

/// Waits until `stage` is reached by the process whose stdout is `out`.
fn reach(bed: &TestBed, stage: Stage, out: &mut impl BufRead, marker: &Path) {
    let limit = Duration::from_secs(15);
    match stage {
        Stage::BeforePush => wait_for("the push", limit, || {
            !bed.requests_for("SendSSHPublicKey").is_empty()
        }),
        Stage::AfterPush => wait_for("ssh to start", limit, || marker.exists()),
        Stage::Authenticating => wait_for("sshd's key lookup", limit, || bed.authentication_held()),
        Stage::MidSession => {
            let mut line = String::new();
            out.read_line(&mut line).expect("read");
            assert!(line.contains("started"), "{line:?}");
        }
    }
}

/// Signals `victim` (`child` or a process under it) and checks what is
/// left: it exits, nothing it started survives, no key is on disk.
fn kill_and_check(bed: &TestBed, child: &mut Child, victim: i32, signal: i32, what: &str) {
    // Everything the victim started, before it goes.
    let started = descendants(victim);
    send(victim, signal);
    if victim != child.id() as i32 && (signal == libc::SIGINT || signal == libc::SIGHUP) {
        // SIGHUP is how ssh ends its proxy, a normal end (and Ctrl-C ends
        // ssh, which sends it): the proxy may stay to serve the pushed key
        // to later connections until it expires, detached from ssh.
        wait_for(
            &format!("{what}: ssh to exit"),
            Duration::from_secs(10),
            || child.try_wait().expect("wait").is_some(),
        );
        wait_for(
            &format!("{what}: the proxy to end or detach"),
            Duration::from_secs(10),
            || {
                !alive(victim)
                    || std::fs::read_link(format!("/proc/{victim}/fd/1"))
                        .is_ok_and(|p| p == Path::new("/dev/null"))
            },
        );
        send(victim, libc::SIGTERM);
    }
    wait_for(&format!("{what}: exit"), Duration::from_secs(10), || {
        !alive(victim)
    });
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: the command did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for(
        &format!("{what}: every process it started to end"),
        Duration::from_secs(10),
        || started.iter().all(|p| !alive(*p)),
    );
    let survivors: Vec<String> = started
        .iter()
        .filter(|p| alive(**p))
        .map(|p| command_line(*p))
        .collect();
    assert!(survivors.is_empty(), "{what}: left running: {survivors:?}");
    assert_no_private_key_file(bed, what);
    bed.hold_authentication(0);
    bed.clear_faults();
    bed.clear_records();
}

/// The next connection works, and afterwards no runtime directory is
/// left, the killed run's included.
fn next_run_cleans(bed: &TestBed, what: &str) {
    let mut c = bed.command();
    c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
        .args(["web-1", "--", "echo", "next"])
        .stdin(Stdio::null());
    let out = c.output().expect("run");
    assert_eq!(stdout(&out), "next\n", "{what}: {}", stderr(&out));
    let left: Vec<String> = std::fs::read_dir(bed.dir().join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("eic-connect."))
        .collect();
    assert!(
        left.is_empty(),
        "{what}: left in the runtime directory: {left:?}"
    );
}

/// An ssh stand-in that notes it started and then waits (as an ssh still
/// connecting would), without children of its own.
fn slow_ssh(bed: &TestBed) -> (std::path::PathBuf, std::path::PathBuf) {
    let marker = bed.dir().join("ssh_started");
    let script = bed.dir().join("slow-ssh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n: > '{}'\nexec sleep 30\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, marker)
}

fn connect_at(stage: Stage) {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let (script, marker) = slow_ssh(&bed);
    for (name, signal) in SIGNALS {
        let what = format!("connect, {stage:?}, {name}");
        let _ = std::fs::remove_file(&marker);
        let remote = arrange(&bed, stage);
        let mut c = bed.command();
        if stage == Stage::AfterPush {
            c.env("EIC_CONNECT_SSH", &script);
        }
        c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
            .args(["web-1", "--", remote]);
        let mut child = start(c);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        reach(&bed, stage, &mut out, &marker);
        let pid = child.id() as i32;
        kill_and_check(&bed, &mut child, pid, signal, &what);
        next_run_cleans(&bed, &what);
    }
}

#[test]
fn connect_killed_before_the_push() {
    connect_at(Stage::BeforePush);
}

#[test]
fn connect_killed_after_the_push() {
    connect_at(Stage::AfterPush);
}

#[test]
fn connect_killed_while_ssh_authenticates() {
    connect_at(Stage::Authenticating);
}

#[test]
fn connect_killed_mid_session() {
    connect_at(Stage::MidSession);
}

#[test]
fn run_killed_at_each_stage() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    bed.add_instance(InstanceSpec::named("web-2"));
    for stage in [Stage::BeforePush, Stage::Authenticating, Stage::MidSession] {
        for (name, signal) in SIGNALS {
            let what = format!("run, {stage:?}, {name}");
            let remote = arrange(&bed, stage);
            let mut c = bed.command();
            c.args([
                "run",
                "-f",
                "Name=web-*",
                "-p",
                &bed.sshd_port().to_string(),
            ])
            .args(["-l", &bed.os_user(), "--", remote]);
            let mut child = start(c);
            let mut out = BufReader::new(child.stdout.take().unwrap());
            reach(&bed, stage, &mut out, Path::new("/nonexistent"));
            let pid = child.id() as i32;
            kill_and_check(&bed, &mut child, pid, signal, &what);
            next_run_cleans(&bed, &what);
        }
    }
}

/// The ssh-config block: the proxy ssh runs is what gets killed.
#[test]
fn the_ssh_config_proxy_killed_at_each_stage() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    for stage in [Stage::BeforePush, Stage::Authenticating, Stage::MidSession] {
        for (name, signal) in SIGNALS {
            let what = format!("proxy, {stage:?}, {name}");
            let remote = arrange(&bed, stage);
            let mut c = block_ssh(&bed, &config);
            c.args(["eic-web-1", remote]);
            let mut child = start(c);
            let mut out = BufReader::new(child.stdout.take().unwrap());
            reach(&bed, stage, &mut out, Path::new("/nonexistent"));
            let ssh = child.id() as i32;
            let proxy = descendants(ssh)
                .into_iter()
                .find(|p| command_line(*p).contains(" proxy "))
                .unwrap_or_else(|| panic!("{what}: no proxy under ssh"));
            kill_and_check(&bed, &mut child, proxy, signal, &what);
            // ssh itself ends too: its proxy is gone.
            assert!(!alive(ssh), "{what}: ssh still runs");
            // The next connection through the block works, and what the
            // killed proxy left (its socket) is replaced: every socket
            // left is served.
            let mut c = block_ssh(&bed, &config);
            c.args(["eic-web-1", "echo next"]);
            let out = c.output().expect("ssh");
            assert_eq!(stdout(&out), "next\n", "{what}: {}", stderr(&out));
            let dir = bed.dir().join("run/eic-connect-proxy");
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "sock") {
                    assert!(
                        std::os::unix::net::UnixStream::connect(&path).is_ok(),
                        "{what}: a dead socket is left: {}",
                        path.display()
                    );
                }
            }
            next_run_cleans(&bed, &what);
            end_lingering_proxies(&bed);
        }
    }
}

/// Ends the proxies that stay to serve a pushed key for a later ssh (each
/// for up to its 60 s), so that the next connection pushes again.
fn end_lingering_proxies(bed: &TestBed) {
    let dir = bed.dir().to_string_lossy().into_owned();
    let lingering: Vec<i32> = processes()
        .into_iter()
        .filter(|(pid, _, state)| {
            let line = command_line(*pid);
            *state != 'Z' && line.contains(" proxy ") && line.contains(&dir)
        })
        .map(|(pid, _, _)| pid)
        .collect();
    for pid in &lingering {
        send(*pid, libc::SIGTERM);
    }
    wait_for("lingering proxies to end", Duration::from_secs(10), || {
        lingering.iter().all(|p| !alive(*p))
    });
}

/// The tunnel on standard input and output, and its local listener, with
/// a connection open through each.
#[test]
fn the_tunnel_killed_mid_transfer() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    for (name, signal) in SIGNALS {
        let what = format!("tunnel, {name}");
        let mut c = bed.command();
        c.args(["tunnel", "db-1"]);
        let mut c_child = {
            c.process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().expect("start")
        };
        // sshd's banner through the tunnel: bytes are flowing.
        let mut out = BufReader::new(c_child.stdout.take().unwrap());
        let mut banner = String::new();
        out.read_line(&mut banner).expect("read");
        assert!(banner.starts_with("SSH-2.0-"), "{what}: {banner:?}");
        let pid = c_child.id() as i32;
        kill_and_check(&bed, &mut c_child, pid, signal, &what);
        next_run_cleans(&bed, &what);
    }
    let tunnels = bed.wait_for_tunnels_closed(SIGNALS.len(), Duration::from_secs(10));
    assert_eq!(tunnels.len(), SIGNALS.len());
}

/// ssh started while the push is held (the overlap), then eic-connect is
/// told to stop: it stops ssh and ends at once, without waiting out the
/// push.
#[test]
fn a_signal_while_ssh_runs_beside_a_held_push_ends_at_once() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let (script, marker) = slow_ssh(&bed);
    for (name, signal) in [("SIGHUP", libc::SIGHUP), ("SIGTERM", libc::SIGTERM)] {
        let _ = std::fs::remove_file(&marker);
        bed.inject(
            "SendSSHPublicKey",
            Fault::Latency(Duration::from_secs(30)),
            1,
        );
        let mut c = bed.command();
        c.env("EIC_CONNECT_SSH", &script)
            .args(["-l", &bed.os_user(), "web-1", "true"]);
        let mut child = start(c);
        wait_for(
            "ssh to start beside the held push",
            Duration::from_secs(15),
            || marker.exists(),
        );
        let sent = Instant::now();
        send(child.id() as i32, signal);
        wait_for(
            &format!("{name}: eic-connect to end"),
            Duration::from_secs(5),
            || child.try_wait().expect("wait").is_some(),
        );
        assert!(sent.elapsed() < Duration::from_secs(5));
        next_run_cleans(&bed, name);
    }
}
