//! Session Manager as a way in, end to end: the real binary and the real
//! ssh, the stand-in's StartSession / TerminateSession /
//! DescribeInstanceInformation (SigV4 checked) and its agent side of the
//! data channel (an independent implementation of the protocol, with
//! faults on demand), relaying to the bed's real sshd.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cmd::{assert_no_private_key_file, run, server_address, stderr, stdout, which};
use support::eice::EndpointSpec;
use support::ssm::{SsmSession, StreamFaults};
use support::{InstanceSpec, TestBed};

/// eic-connect logging in as the bed's user on port 22 (which the agent
/// stand-in maps to the bed's sshd, as the endpoint stand-in does).
fn eic(bed: &TestBed) -> Command {
    let mut c = bed.command();
    c.args(["-l", &bed.os_user()]).stdin(Stdio::null());
    c
}

/// A private-only instance that Session Manager manages, its agent online.
fn managed(name: &str) -> InstanceSpec {
    InstanceSpec::named(name).public_ip(false).managed(true)
}

#[track_caller]
fn assert_clean(bed: &TestBed) {
    assert!(
        bed.signature_failures().is_empty(),
        "signature failures: {:?}",
        bed.signature_failures()
    );
    assert!(
        bed.ssm_violations().is_empty(),
        "protocol violations: {:?}",
        bed.ssm_violations()
    );
}

/// The one session the bed saw, once it is over.
#[track_caller]
fn only_session(bed: &TestBed) -> SsmSession {
    let sessions = bed.wait_for_ssm_sessions_closed(1, Duration::from_secs(10));
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    sessions.into_iter().next().unwrap()
}

/// Waits until `TerminateSession` was called for the session: the
/// TerminateSession flag ends its channel first, the API call follows (from
/// the ProxyCommand, which may outlive ssh by a moment).
#[track_caller]
fn wait_terminated(bed: &TestBed, session_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bed
        .ssm_session(session_id)
        .is_some_and(|s| s.terminate_api_called)
    {
        assert!(
            Instant::now() < deadline,
            "TerminateSession was not called: {:#?}",
            bed.ssm_session(session_id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connect_ssm_runs_a_command_and_passes_its_status() {
    let bed = TestBed::start();
    let web = bed.add_instance(managed("web-1"));
    let mut c = eic(&bed);
    c.args([
        "--connect",
        "ssm",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo $SSH_CONNECTION; echo to-stderr >&2; exit 7",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    // The agent connects to sshd on the instance's own address.
    assert_eq!(server_address(&out), web.private_ip);
    assert!(stderr(&out).contains("to-stderr"));
    assert!(!stderr(&out).contains("eic-connect:"), "{}", stderr(&out));

    let session = only_session(&bed);
    assert_eq!(session.target, web.id);
    assert_eq!(session.document_name, "AWS-StartSSHSession");
    assert_eq!(
        session.parameters.get("portNumber"),
        Some(&vec!["22".to_owned()])
    );
    assert_eq!(session.token_ok, Some(true));
    let response = session
        .handshake_response
        .clone()
        .expect("a handshake response");
    assert_eq!(response["ProcessedClientActions"][0]["ActionStatus"], 1);
    assert!(session.connected_to_instance);
    assert!(session.bytes_up > 0 && session.bytes_down > 0);
    wait_terminated(&bed, &session.session_id);
    // The key still went through EC2 Instance Connect, for the right user.
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(
        (pushes[0].instance_id.as_str(), pushes[0].os_user.as_str()),
        (web.id.as_str(), bed.os_user().as_str())
    );
    // No endpoint lookup and no Session Manager lookup: the path was given.
    assert!(
        bed.requests_for("DescribeInstanceConnectEndpoints")
            .is_empty()
    );
    assert!(bed.requests_for("DescribeInstanceInformation").is_empty());
    assert_no_private_key_file(&bed, "after a Session Manager session");
    assert_clean(&bed);
}

#[test]
fn auto_takes_session_manager_when_there_is_no_endpoint() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    let mut c = eic(&bed);
    c.args(["-v", "db-1", "echo $SSH_CONNECTION"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server_address(&out), db.private_ip);
    let err = stderr(&out);
    assert!(
        err.contains("Session Manager manages the instance and its agent is online"),
        "{err}"
    );
    assert_eq!(
        bed.requests_for("DescribeInstanceConnectEndpoints").len(),
        1
    );
    let asked = bed.requests_for("DescribeInstanceInformation");
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0]
            .params
            .get("Filters")
            .is_some_and(|f| f.contains(&db.id)),
        "{:?}",
        asked[0].params
    );
    assert_eq!(only_session(&bed).target, db.id);
    assert_clean(&bed);
}

#[test]
fn a_large_transfer_survives_loss_reordering_and_duplicates() {
    let bed = TestBed::start();
    bed.add_instance(managed("db-1"));
    bed.set_ssm_faults(StreamFaults {
        drop_incoming_every: 7,
        hold_outgoing_every: 5,
        duplicate_outgoing_every: 6,
        lose_outgoing_every: 11,
    });
    // 600 KiB of varied bytes up, their digest and 300 KiB back down.
    let data: Vec<u8> = (0..600 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let mut c = eic(&bed);
    c.args([
        "--connect",
        "ssm",
        "db-1",
        "--",
        "sh",
        "-c",
        "sha256sum; head -c 307200 /dev/zero | tr '\\0' 'z'",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start eic-connect");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
        data
    });
    let out = child.wait_with_output().expect("wait");
    let data = writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let want = {
        let mut sh = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sh.stdin.take().unwrap().write_all(&data).unwrap();
        String::from_utf8(sh.wait_with_output().unwrap().stdout).unwrap()
    };
    assert!(
        text.starts_with(&want),
        "got {:?}, want {want:?}",
        &text[..text.len().min(80)]
    );
    assert_eq!(text.len(), want.len() + 307_200);
    assert!(text[want.len()..].bytes().all(|b| b == b'z'));

    let session = only_session(&bed);
    let f = session.faults_applied;
    assert!(
        f.dropped_incoming > 0
            && f.held_outgoing > 0
            && f.duplicated_outgoing > 0
            && f.lost_outgoing > 0,
        "{f:?}"
    );
    // Every dropped message came again from the client.
    assert!(
        session.client_retransmissions >= f.dropped_incoming,
        "{session:#?}"
    );
    assert_clean(&bed);
}

#[test]
fn the_agent_closing_the_session_ends_the_connection_with_its_reason() {
    let bed = TestBed::start();
    bed.add_instance(managed("db-1"));
    let mut c = eic(&bed);
    c.args(["--connect", "ssm", "db-1", "--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("start eic-connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        if let Some(s) = bed
            .ssm_sessions()
            .into_iter()
            .find(|s| s.connected_to_instance && s.bytes_down > 1000)
        {
            break s;
        }
        assert!(Instant::now() < deadline, "no session came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Logged in (the session carries the sleeping command) before closing.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert!(bed.ssm_agent_close(
        &session.session_id,
        "Session terminated by an administrator"
    ));
    let out = child.wait_with_output().expect("wait");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(255), "ssh lost its connection");
    assert!(
        stderr(&out)
            .contains("Session Manager closed the session: Session terminated by an administrator"),
        "{}",
        stderr(&out)
    );
    assert_clean(&bed);
}

#[test]
fn start_session_errors_each_have_a_message_and_a_hint() {
    let bed = TestBed::start();
    bed.add_instance(managed("db-1"));
    let cases = [
        (
            "TargetNotConnected",
            "its SSM agent is not connected",
            "AmazonSSMManagedInstanceCore",
        ),
        (
            "AccessDeniedException",
            "not authorized to call StartSession",
            "ssm:StartSession",
        ),
        (
            "InvalidDocument",
            "refused the session document",
            "AWS-StartSSHSession",
        ),
        (
            "InternalServerError",
            "Session Manager had an internal error during StartSession",
            "try again",
        ),
        (
            "ThrottlingException",
            "StartSession is being throttled",
            "wait a few seconds",
        ),
    ];
    for (code, message, hint) in cases {
        bed.fail_next("StartSession", code, 1);
        let mut c = eic(&bed);
        c.args(["--connect", "ssm", "db-1", "--", "true"]);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{code}: {err}");
        assert!(err.contains(message), "{code}: {err}");
        assert!(
            err.lines().any(|l| l.contains("hint:") && l.contains(hint)),
            "{code}: {err}"
        );
    }
    // Nothing was started, so nothing needed terminating.
    assert!(bed.ssm_sessions().is_empty());
    assert_clean(&bed);
}

#[test]
fn an_unmanaged_instance_is_named_not_connected() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let mut c = eic(&bed);
    c.args(["--connect", "ssm", "db-1", "--", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(err.contains("Session Manager cannot reach i-"), "{err}");
    assert!(err.contains("eic-connect doctor"), "{err}");
    assert_clean(&bed);
}

#[test]
fn without_permission_to_ask_auto_goes_on_quietly() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    bed.fail_next("DescribeInstanceInformation", "AccessDeniedException", 1);
    // (Direct connections need the bed's sshd port.)
    let port = bed.sshd_port().to_string();
    let mut c = eic(&bed);
    c.args(["-p", &port, "db-1", "echo $SSH_CONNECTION"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    // Directly to the private address (the bed's is reachable), no warning.
    assert_eq!(server_address(&out), db.private_ip);
    assert!(!stderr(&out).contains("eic-connect"), "{}", stderr(&out));
    assert!(bed.ssm_sessions().is_empty());

    // Any other failure is a warning, and the chain still goes on.
    bed.fail_next("DescribeInstanceInformation", "InternalServerError", 1);
    let mut c = eic(&bed);
    c.args(["-p", &port, "db-1", "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("eic-connect: warning: Session Manager had an internal error"),
        "{}",
        stderr(&out)
    );
    assert_clean(&bed);
}

#[test]
fn dry_run_explains_the_fallback_chain() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args(["--dry-run", "i-0123456789abcdef0"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("DescribeInstanceInformation Filter InstanceIds=i-0123456789abcdef0"),
        "{text}"
    );
    assert!(text.contains("--connect ssm"), "{text}");
    assert!(
        text.contains("# else ssh connects to the address directly"),
        "{text}"
    );
    let mut c = bed.command();
    c.args(["--dry-run", "--connect", "ssm", "i-0123456789abcdef0"]);
    let out = run(c);
    let text = stdout(&out);
    assert!(
        text.contains("StartSession Target=i-0123456789abcdef0 DocumentName=AWS-StartSSHSession"),
        "{text}"
    );
    assert!(!text.contains("DescribeInstanceInformation"), "{text}");
    assert!(bed.requests().is_empty(), "a dry run calls nothing");
}

#[test]
fn tunnel_local_port_carries_each_connection_in_a_session() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    let mut c = bed.command();
    c.args(["tunnel", "--connect", "ssm", &db.id, "--local-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start the tunnel");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        reader.read_line(&mut line).unwrap();
    }
    let addr = line
        .split_whitespace()
        .find_map(|w| w.trim_end_matches(';').parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    for _ in 0..2 {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut banner = [0u8; 8];
        std::io::Read::read_exact(&mut conn, &mut banner).unwrap();
        assert_eq!(&banner, b"SSH-2.0-");
    }
    let sessions = bed.wait_for_ssm_sessions_closed(2, Duration::from_secs(10));
    assert_eq!(sessions.len(), 2);
    // With an instance id, the tunnel made no EC2 call.
    assert!(bed.requests_for("DescribeInstances").is_empty());
    let _ = child.kill();
    let _ = child.wait();
    assert_clean(&bed);
}

// ---------------------------------------------------- the ssh-config block

#[test]
fn ssh_scp_and_rsync_through_the_block_over_session_manager() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    let mut c = bed.command();
    c.args([
        "ssh-config",
        "--os-user",
        &bed.os_user(),
        "--connect",
        "ssm",
    ]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let config = bed.dir().join("ssh_config");
    std::fs::write(&config, &out.stdout).unwrap();
    let tool = |program: &str| {
        let mut c = Command::new(program);
        bed.apply_env(&mut c);
        c.stdin(Stdio::null());
        c
    };

    let mut ssh = tool("ssh");
    ssh.arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", &db.id, "echo $SSH_CONNECTION"]);
    let out = ssh.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server_address(&out), db.private_ip);

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let local = bed.dir().join("payload.bin");
    std::fs::write(&local, &payload).unwrap();
    let remote_dir = bed.dir().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();

    let mut scp = tool("scp");
    scp.arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes"])
        .arg(&local)
        .arg(format!(
            "{}:{}",
            db.id,
            remote_dir.join("by-scp.bin").display()
        ));
    let out = scp.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(remote_dir.join("by-scp.bin")).unwrap(),
        payload
    );

    assert!(
        !which("rsync").is_empty(),
        "rsync is needed (.ci/run installs it)"
    );
    let mut rsync = tool("rsync");
    rsync
        .arg("-e")
        .arg(format!("ssh -F {} -o BatchMode=yes", config.display()))
        .arg(&local)
        .arg(format!(
            "{}:{}",
            db.id,
            remote_dir.join("by-rsync.bin").display()
        ));
    let out = rsync.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(remote_dir.join("by-rsync.bin")).unwrap(),
        payload
    );

    assert!(!bed.ssm_sessions().is_empty());
    assert!(bed.ssm_sessions().iter().all(|s| s.target == db.id));
    let _ = run({
        let mut c = bed.command();
        c.args(["reuse", "stop"]);
        c
    });
    assert_clean(&bed);
}

// ------------------------------------------ auto's choice, every combination

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Direct,
    Endpoint,
    SessionManager,
}

#[test]
fn auto_picks_the_way_in_for_every_combination() {
    // (address the instance has, endpoint in the VPC, managed and online)
    // → the way auto takes. The bed's IPv6 address (::1) is routable.
    #[derive(Debug, Clone, Copy)]
    enum Address {
        Public,
        Private,
        Ipv6Only,
    }
    let table = [
        (Address::Public, false, false, Way::Direct),
        (Address::Public, true, false, Way::Direct),
        (Address::Public, false, true, Way::Direct),
        (Address::Public, true, true, Way::Direct),
        (Address::Private, false, false, Way::Direct),
        (Address::Private, true, false, Way::Endpoint),
        (Address::Private, false, true, Way::SessionManager),
        (Address::Private, true, true, Way::Endpoint),
        (Address::Ipv6Only, false, false, Way::Direct),
        (Address::Ipv6Only, true, false, Way::Direct),
        (Address::Ipv6Only, false, true, Way::Direct),
        (Address::Ipv6Only, true, true, Way::Direct),
    ];
    for (address, endpoint, is_managed, want) in table {
        let row = format!("{address:?}, endpoint {endpoint}, managed {is_managed}");
        let bed = TestBed::start();
        let spec = InstanceSpec::named("web-1").managed(is_managed);
        let spec = match address {
            Address::Public => spec,
            Address::Private => spec.public_ip(false),
            Address::Ipv6Only => {
                assert!(bed.ipv6_available(), "the bed needs IPv6 loopback");
                spec.public_ip(false).ipv4(false).ipv6(true)
            }
        };
        let instance = bed.add_instance(spec);
        if endpoint {
            bed.add_endpoint(EndpointSpec::default());
        }
        let mut c = eic(&bed);
        if want == Way::Direct {
            // The bed's sshd is on a port of its own; the endpoint and agent
            // stand-ins map port 22 to it. (For every Direct row the choice
            // is made before the port matters: see decide_with's tests.)
            c.args(["-p", &bed.sshd_port().to_string()]);
        }
        c.args(["-v", "web-1", "echo $SSH_CONNECTION"]);
        let out = run(c);
        assert!(out.status.success(), "{row}: {}", stderr(&out));
        let got = if !bed.ssm_sessions().is_empty() {
            Way::SessionManager
        } else if !bed.tunnels().is_empty() {
            Way::Endpoint
        } else {
            Way::Direct
        };
        assert_eq!(got, want, "{row}: {}", stderr(&out));
        let reached = server_address(&out);
        let expected = match (address, got) {
            (Address::Public, Way::Direct) => instance.public_ip.clone().unwrap(),
            (Address::Ipv6Only, _) => instance.ipv6.clone().unwrap(),
            _ => instance.private_ip.clone(),
        };
        assert_eq!(reached, expected, "{row}");
        assert_eq!(bed.pushes().len(), 1, "{row}");
        assert_clean(&bed);
    }
}

// ------------------------------------------------------ run and reuse

#[test]
fn run_reaches_every_managed_instance_through_session_manager() {
    let bed = TestBed::start();
    let dbs: Vec<_> = (1..=3)
        .map(|n| bed.add_instance(managed(&format!("db-{n}")).tag("Role", "db")))
        .collect();
    let mut c = bed.command();
    // auto: private addresses, no endpoint, managed → Session Manager.
    c.args([
        "run",
        "-f",
        "tag:Role=db",
        "-l",
        &bed.os_user(),
        "--no-reuse",
    ])
    .args(["--", "echo $SSH_CONNECTION"])
    .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for db in &dbs {
        assert!(
            text.lines().any(|l| l.contains(&db.private_ip)),
            "{} missing from {text}",
            db.private_ip
        );
    }
    let sessions = bed.wait_for_ssm_sessions_closed(3, Duration::from_secs(10));
    let mut targets: Vec<&str> = sessions.iter().map(|s| s.target.as_str()).collect();
    targets.sort_unstable();
    let mut want: Vec<&str> = dbs.iter().map(|d| d.id.as_str()).collect();
    want.sort_unstable();
    assert_eq!(targets, want);
    assert_eq!(bed.pushes().len(), 3);
    assert_clean(&bed);
}

#[test]
fn a_reused_connection_keeps_one_session_and_makes_no_call() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    let connect = |word: &str| {
        let mut c = bed.command();
        c.args([
            "-l",
            &bed.os_user(),
            "--connect",
            "ssm",
            "--reuse",
            &db.id,
            "echo",
            word,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = c.spawn().unwrap();
        // The master must not hold the caller's pipes: this returns.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
        rx.recv_timeout(Duration::from_secs(30))
            .expect("eic-connect returned")
    };
    let out = connect("first");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "first\n");
    bed.clear_records();
    let out = connect("second");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "second\n");
    assert!(bed.requests().is_empty(), "{:?}", bed.requests());
    assert_eq!(bed.ssm_sessions().len(), 1, "one session carries both");
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
    let session = bed.wait_for_ssm_sessions_closed(1, Duration::from_secs(10));
    wait_terminated(&bed, &session[0].session_id);
    assert_clean(&bed);
}

// ------------------------------------------------------------- overlap

#[test]
fn by_id_the_session_starts_while_the_lookup_runs() {
    // The lookup is what an early start does not wait for (the push
    // overlaps ssh on every path).
    const LOOKUP_TAKES: Duration = Duration::from_millis(2500);
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    bed.set_delay("DescribeInstances", LOOKUP_TAKES);
    let mut c = eic(&bed);
    c.args(["--connect", "ssm", &db.id, "echo", "overlapped"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = c.spawn().unwrap();
    // The session, its data channel and sshd's banner come while the push
    // is still held.
    let seen = loop {
        if bed
            .ssm_sessions()
            .iter()
            .any(|s| s.connected_to_instance && s.bytes_down > 0)
        {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < LOOKUP_TAKES + Duration::from_secs(5),
            "no session came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "overlapped\n");
    assert!(
        seen < LOOKUP_TAKES - Duration::from_millis(500),
        "the session came up {seen:?} after the start; the lookup takes {LOOKUP_TAKES:?}"
    );
    assert_clean(&bed);
}

#[test]
fn by_id_a_stopped_instance_is_reported_and_the_early_ssh_is_never_heard() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1").state("stopped"));
    let mut c = eic(&bed);
    c.args(["--connect", "ssm", &db.id, "echo", "never"]);
    let out = run(c);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is stopped"), "{err}");
    assert!(
        !err.contains("Session Manager cannot reach"),
        "the early ssh's tunnel was heard: {err}"
    );
    assert!(
        !err.contains("ssh:") && !err.contains("kex_exchange"),
        "{err}"
    );
    assert_eq!(stdout(&out), "");
}

// ------------------------------------------------------------ host keys

#[test]
fn host_keys_through_session_manager_are_kept_under_the_instance_id_and_checked() {
    let bed = TestBed::start();
    let db = bed.add_instance(managed("db-1"));
    let known_hosts = bed.home().join(".local/state/eic-connect/known_hosts");
    // First use: recorded under the instance id, not an address.
    let mut c = eic(&bed);
    c.args(["--connect", "ssm", "db-1", "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    // (ssh may hash the names: ask ssh-keygen.)
    let has = |name: &str| {
        Command::new("ssh-keygen")
            .arg("-F")
            .arg(name)
            .arg("-f")
            .arg(&known_hosts)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(has(&db.id), "no entry for {}", db.id);
    assert!(!has(&db.private_ip), "an entry for the address");
    // A different key under that id: refused, nothing logs in.
    let other = bed.generate_key("not-the-host-key");
    std::fs::write(&known_hosts, format!("{} {}\n", db.id, other.public_key)).unwrap();
    let logins = bed.sshd_log().matches("Accepted publickey").count();
    let mut c = eic(&bed);
    c.args(["--connect", "ssm", "db-1", "echo", "reached"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!stdout(&out).contains("reached"));
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    assert_eq!(bed.sshd_log().matches("Accepted publickey").count(), logins);
    assert_no_private_key_file(&bed, "after a refused host key");
    assert_clean(&bed);
}
