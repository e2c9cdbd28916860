//! Speed without cutting corners: ssh starts while the key push is in
//! flight (the agent holds the key back until the push is done), and TLS
//! trust is loaded only when a TLS connection needs it. Real binary, real
//! sshd, the API stand-in.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::cmd::{assert_signed, eic, run, stderr, stdout};
use support::{InstanceSpec, TestBed};

/// How long the stand-in holds each push's answer in these tests.
const PUSH_TAKES: Duration = Duration::from_millis(2500);

/// Runs `eic-connect ARGS echo overlapped` with the push's answer delayed,
/// and returns when sshd saw ssh's connection (relative to the start) and
/// the output.
fn connection_time_with_a_slow_push(
    bed: &TestBed,
    args: &[&str],
) -> (Option<Duration>, std::process::Output) {
    bed.set_delay("SendSSHPublicKey", PUSH_TAKES);
    let mut c = eic(bed);
    c.args(args)
        .args(["echo", "overlapped"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = c.spawn().expect("start eic-connect");
    let seen = bed
        .wait_for_sshd_log("Connection from", PUSH_TAKES + Duration::from_secs(5))
        .then(|| started.elapsed());
    let out = child.wait_with_output().expect("wait for eic-connect");
    bed.set_delay("SendSSHPublicKey", Duration::ZERO);
    (seen, out)
}

#[test]
fn ssh_connects_while_the_push_is_in_flight() {
    for by_name in [false, true] {
        let bed = TestBed::start();
        let web = bed.add_instance(InstanceSpec::named("web-1"));
        let target = if by_name { "web-1" } else { web.id.as_str() };
        let (seen, out) = connection_time_with_a_slow_push(&bed, &[target]);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert_eq!(stdout(&out), "overlapped\n");
        let seen = seen.expect("sshd saw a connection");
        // The lookup is immediate here: the connection came long before
        // the push's answer could have.
        assert!(
            seen < PUSH_TAKES - Duration::from_millis(500),
            "{target}: ssh connected {seen:?} after the start, the push takes {PUSH_TAKES:?}"
        );
        assert_eq!(bed.pushes().len(), 1, "{target}");
        assert_signed(&bed);
    }
}

#[test]
fn without_a_user_ssh_waits_only_for_the_ami_guess_not_the_push() {
    let bed = TestBed::start();
    let ami = bed.register_ubuntu_image();
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id(ami));
    bed.set_delay("SendSSHPublicKey", PUSH_TAKES);
    let mut c = bed.command();
    // No -l: the user comes from the AMI (ubuntu); the bed's sshd lets
    // only its own user in, so the login fails after the push — what
    // matters is when ssh connected.
    c.args(["-p", &bed.sshd_port().to_string(), &web.id, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = c.spawn().unwrap();
    let seen = bed
        .wait_for_sshd_log("Connection from", PUSH_TAKES + Duration::from_secs(5))
        .then(|| started.elapsed());
    let _ = child.wait_with_output().unwrap();
    let seen = seen.expect("sshd saw a connection");
    assert!(seen < PUSH_TAKES - Duration::from_millis(500), "{seen:?}");
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].os_user, "ubuntu");
}

#[test]
fn a_push_refused_while_ssh_connects_is_reported_not_a_bare_permission_denied() {
    for code in ["AccessDeniedException", "EC2InstanceUnavailableException"] {
        let bed = TestBed::start();
        let web = bed.add_instance(InstanceSpec::named("web-1"));
        for target in [web.id.as_str(), "web-1"] {
            bed.fail_next("SendSSHPublicKey", code, 1);
            let (seen, out) = connection_time_with_a_slow_push(&bed, &[target]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(255), "{code} {target}: {err}");
            assert!(seen.is_some(), "{code} {target}: ssh had started");
            assert!(
                err.contains("eic-connect: error:"),
                "{code} {target}: {err}"
            );
            assert!(err.contains("hint:"), "{code} {target}: {err}");
            assert!(
                !err.contains("Permission denied"),
                "{code} {target}: ssh's own refusal must not be what the user sees: {err}"
            );
            assert_eq!(stdout(&out), "", "{code} {target}");
            // The key never reached the instance, and ssh never offered one.
            assert!(
                !bed.sshd_log().contains("Failed publickey"),
                "{code} {target}: {}",
                bed.sshd_log()
            );
        }
    }
}

#[test]
fn ssh_failing_before_the_push_ends_still_reports_the_push() {
    // Nothing listens on the instance's port: ssh fails at once, while the
    // push is in flight and is then refused. The push's error is the one a
    // user can act on.
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.fail_next("SendSSHPublicKey", "AccessDeniedException", 1);
    bed.set_delay("SendSSHPublicKey", Duration::from_millis(800));
    let mut c = bed.command();
    c.args(["-p", "1", "-l", &bed.os_user(), &web.id, "true"])
        .stdin(Stdio::null());
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("eic-connect: error:"), "{err}");
    assert!(
        err.contains("not authorized to call SendSSHPublicKey"),
        "{err}"
    );
}

// ------------------------------------------------------------ reuse

/// Runs `c` with piped output and returns when both pipes are closed — a
/// master connection that held a pipe of its first caller open would make
/// this fail, as it would hang `out=$(eic-connect …)` or a CI log.
fn output_within(mut c: std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("start");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for (n, mut pipe) in pipes.drain(..).enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((n, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let mut got = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, buf) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("output still open after {limit:?}: a pipe is held"));
        got[n] = buf;
    }
    let status = child.wait().unwrap();
    let [stdout, stderr] = got;
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

fn logins(bed: &TestBed) -> usize {
    bed.sshd_log().matches("Accepted publickey").count()
}

fn reuse_list(bed: &TestBed) -> String {
    let mut c = bed.command();
    c.args(["reuse", "list"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_repeated_connection_joins_the_master_with_no_api_call_even_after_the_key_expired() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    for target in [web.id.as_str(), "web-1"] {
        let connect = |word: &str| {
            let mut c = eic(&bed);
            c.args(["--reuse=5m", target, "echo", word]);
            output_within(c, Duration::from_secs(20))
        };
        let out = connect("first");
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert_eq!(stdout(&out), "first\n");
        assert_eq!(bed.pushes().len(), 1, "{target}");
        let logged_in = logins(&bed);
        assert!(
            reuse_list(&bed).contains(&format!("{target}\t{}\t", bed.os_user())),
            "{target}: {}",
            reuse_list(&bed)
        );
        bed.clear_records();
        // The key the master logged in with expires; the master stays.
        bed.advance_clock(120);
        for n in 0..3 {
            let out = connect(&format!("again-{n}"));
            assert!(out.status.success(), "{target}: {}", stderr(&out));
            assert_eq!(stdout(&out), format!("again-{n}\n"));
        }
        assert!(bed.requests().is_empty(), "{target}: {:?}", bed.requests());
        assert_eq!(logins(&bed), logged_in, "{target}: no new login");
        assert_signed(&bed);
        bed.clear_records();
    }
    // Ended, a master is gone; the next connection logs in afresh.
    let mut c = bed.command();
    c.args(["reuse", "stop", &web.id]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ended the master connection"),
        "{}",
        stderr(&out)
    );
    let listed = reuse_list(&bed);
    assert!(
        !listed.contains(&web.id) && listed.contains("web-1"),
        "{listed}"
    );
    let mut c = eic(&bed);
    c.args(["--reuse", &web.id, "echo", "fresh"]);
    let out = output_within(c, Duration::from_secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bed.pushes().len(), 1);
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
    assert_eq!(reuse_list(&bed), "");
}

#[test]
fn without_reuse_every_connection_pushes_and_leaves_no_master() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    for _ in 0..2 {
        let mut c = eic(&bed);
        c.args([&web.id, "true"]);
        let out = output_within(c, Duration::from_secs(20));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(bed.pushes().len(), 2);
    assert_eq!(reuse_list(&bed), "");
}

#[test]
fn a_dead_master_is_detected_and_replaced() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let connect = || {
        let mut c = eic(&bed);
        c.args(["--reuse", &web.id, "echo", "ok"]);
        output_within(c, Duration::from_secs(20))
    };
    assert!(connect().status.success());
    // Kill the master (its title is `ssh: SOCKET [mux]`): its socket file
    // stays behind, answering nobody.
    let dir = bed.dir().join("run/eic-connect-reuse");
    let socket = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(&web.id))
        .expect("a master socket");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("{} \\[mux\\]", socket.display())])
        .status()
        .unwrap();
    assert!(killed.success(), "no master process found");
    std::thread::sleep(Duration::from_millis(200));
    assert!(socket.exists(), "the dead master's socket stays");
    let out = connect();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");
    assert_eq!(
        bed.pushes().len(),
        2,
        "a fresh login replaced the dead master"
    );
    assert!(reuse_list(&bed).contains(&web.id));
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
}

/// A CI job: steps run plain ssh and scp through the ssh-config block (reuse
/// on by default there), minutes apart — long after the first step's key
/// expired at the instance. Each step joins the master; once the master is
/// gone, the next step pushes a fresh key instead of offering a stale one.
#[test]
fn ci_steps_through_the_block_never_meet_an_expired_key() {
    use support::cmd::{block_ssh, ssh_config};
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    let block = std::fs::read_to_string(&config).unwrap();
    assert!(block.contains("ControlPersist 600"), "{block}");
    let step = |word: &str| {
        let mut c = block_ssh(&bed, &config);
        c.args([web.id.as_str(), "echo", word]);
        let out = output_within(c, Duration::from_secs(20));
        assert!(out.status.success(), "{word}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{word}\n"));
    };
    step("step-1");
    assert_eq!(bed.pushes().len(), 1);
    let file = bed.dir().join("step.txt");
    std::fs::write(&file, "artifact").unwrap();
    for n in 2..=4 {
        bed.advance_clock(90);
        step(&format!("step-{n}"));
        let mut c = std::process::Command::new("scp");
        bed.apply_env(&mut c);
        c.arg("-F").arg(&config).args(["-o", "BatchMode=yes"]);
        c.args(["-P", &bed.sshd_port().to_string()]);
        c.arg(&file)
            .arg(format!("{}:{}/copied-{n}.txt", web.id, bed.dir().display()));
        let out = output_within(c, Duration::from_secs(20));
        assert!(out.status.success(), "scp {n}: {}", stderr(&out));
    }
    assert_eq!(bed.pushes().len(), 1, "every later step joined the master");
    assert_eq!(
        std::fs::read_to_string(bed.dir().join("copied-4.txt")).unwrap(),
        "artifact"
    );
    // The master ends (ControlPersist ran out, the job's cleanup): the
    // next step logs in afresh, with a key pushed for it.
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
    let proxy_socket = bed.dir().join(format!(
        "run/eic-connect-proxy/{}@{}.sock",
        bed.os_user(),
        web.id
    ));
    // The bed's clock moved minutes; real time did not: the master's proxy
    // would serve its key for the rest of that key's 60 real seconds. Those
    // are over in the job's time: end it as they would (SIGTERM ends its
    // serving at once).
    let ended = std::process::Command::new("pkill")
        .args([
            "-TERM",
            "-f",
            &format!("eic-connect proxy .*{}", bed.dir().display()),
        ])
        .status()
        .unwrap();
    assert!(ended.success(), "the proxy that served the master's key");
    let gone = Instant::now() + Duration::from_secs(5);
    while proxy_socket.exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!proxy_socket.exists(), "the master's proxy ended");
    bed.advance_clock(90);
    step("step-5");
    assert_eq!(bed.pushes().len(), 2);
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
}

// ------------------------------------------------- remembered addresses

fn addresses_file(bed: &TestBed) -> std::path::PathBuf {
    bed.home().join(".local/state/eic-connect/addresses")
}

#[test]
fn an_instance_reached_before_gets_ssh_started_before_the_lookup_answers() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args([&web.id, "true"]);
    assert!(run(c).status.success());
    let remembered = std::fs::read_to_string(addresses_file(&bed)).unwrap();
    assert!(
        remembered.contains(&format!(
            "{} Auto {}",
            web.id,
            web.public_ip.clone().unwrap()
        )),
        "{remembered}"
    );
    let before = bed.sshd_log().matches("Connection from").count();
    bed.clear_records();
    bed.set_delay("DescribeInstances", PUSH_TAKES);
    let mut c = eic(&bed);
    c.args([&web.id, "echo", "early"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = c.spawn().unwrap();
    let deadline = started + PUSH_TAKES + Duration::from_secs(5);
    let seen = loop {
        if bed.sshd_log().matches("Connection from").count() > before {
            break Some(started.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "early\n");
    let seen = seen.expect("sshd saw the connection");
    assert!(
        seen < PUSH_TAKES - Duration::from_millis(500),
        "ssh connected {seen:?} after the start; the lookup takes {PUSH_TAKES:?}"
    );
    // The lookup still ran (it confirms the address) and one key was pushed.
    assert_eq!(bed.requests_for("DescribeInstances").len(), 1);
    assert_eq!(bed.pushes().len(), 1);
}

#[test]
fn a_stale_remembered_address_is_abandoned_unheard_and_the_right_one_reached() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let other = bed.add_instance(InstanceSpec::named("web-2"));
    let mut c = eic(&bed);
    c.args([&web.id, "true"]);
    assert!(run(c).status.success());
    // The address now belongs to another instance (as after a stop/start).
    std::fs::write(
        addresses_file(&bed),
        format!("{} Auto {}\n", web.id, other.public_ip.clone().unwrap()),
    )
    .unwrap();
    bed.clear_records();
    let mut c = eic(&bed);
    c.args([&web.id, "echo $SSH_CONNECTION"]);
    let out = output_within(c, Duration::from_secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    let server = stdout(&out)
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(Some(server), web.public_ip.clone(), "{}", stdout(&out));
    assert_eq!(stderr(&out), "", "the abandoned ssh is never heard");
    let remembered = std::fs::read_to_string(addresses_file(&bed)).unwrap();
    assert!(
        remembered.trim_end().ends_with(&format!(
            "{} Auto {}",
            web.id,
            web.public_ip.clone().unwrap()
        )),
        "{remembered}"
    );
    // A stopped instance: the early ssh is stopped and the state reported.
    bed.set_state(&web.id, "stopped");
    let mut c = eic(&bed);
    c.args([&web.id, "true"]);
    let out = output_within(c, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

// ------------------------------------------------------------ TLS trust

fn https_bed() -> TestBed {
    TestBed::start_with(support::BedOptions {
        https: true,
        ..support::BedOptions::default()
    })
}

/// Files eic-connect opened (strace), one path per line.
fn opened_files(c: std::process::Command, log: &std::path::Path) -> (std::process::Output, String) {
    let program = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut traced = std::process::Command::new("strace");
    traced
        .args(["-f", "-qq", "-e", "trace=open,openat", "-o"])
        .arg(log)
        .arg(&program)
        .args(&args);
    // The bed's commands run with a clean environment: so does this.
    traced.env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            traced.env(k, v);
        }
    }
    traced.stdin(Stdio::null());
    let out = traced
        .output()
        .expect("run strace (apt-get install strace)");
    (out, std::fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn tls_trust_is_read_only_when_a_tls_connection_needs_it() {
    let bed = https_bed();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let ca = bed.api_ca_pem().expect("HTTPS mode has a CA").to_owned();
    // The bed's CA as the system's store (as a CA an administrator added
    // would be), and no AWS_CA_BUNDLE: trust must come from the store.
    let store = bed.dir().join("system-store.pem");
    std::fs::copy(&ca, &store).unwrap();
    let with_store = |args: &[&str]| {
        let mut c = eic(&bed);
        c.env_remove("AWS_CA_BUNDLE")
            .env("SSL_CERT_FILE", &store)
            .env("SSL_CERT_DIR", bed.dir().join("no-such-dir"))
            .args(args);
        c
    };
    let log = bed.dir().join("strace.log");
    let (out, opened) = opened_files(with_store(&["--dry-run", &web.id]), &log);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !opened.contains("system-store.pem"),
        "--dry-run read the trust store:\n{opened}"
    );
    assert!(
        !opened.contains("/etc/ssl/certs"),
        "--dry-run read the trust store:\n{opened}"
    );

    let (out, opened) = opened_files(with_store(&[&web.id, "echo", "trusted"]), &log);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "trusted\n");
    let reads = opened
        .lines()
        .filter(|l| l.contains("system-store.pem") && !l.contains("ENOENT"))
        .count();
    assert_eq!(reads, 1, "read once, by one process:\n{opened}");
}

#[test]
fn api_calls_trust_aws_ca_bundle_and_say_so_when_they_cannot() {
    let bed = https_bed();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    // The bed sets AWS_CA_BUNDLE to its CA.
    let mut c = eic(&bed);
    c.args([&web.id, "echo", "over https"]);
    let out = output_within(c, Duration::from_secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "over https\n");
    assert_signed(&bed);

    // Not trusted: the system's store alone does not know the bed's CA.
    let mut c = eic(&bed);
    c.env_remove("AWS_CA_BUNDLE").args([&web.id, "true"]);
    let out = output_within(c, Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.starts_with("eic-connect: error:"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(
        err.contains("AWS_CA_BUNDLE"),
        "the hint names the way out: {err}"
    );

    // A bundle that cannot be read is named, with what to do.
    let mut c = eic(&bed);
    c.env("AWS_CA_BUNDLE", bed.dir().join("missing.pem"))
        .args([&web.id, "true"]);
    let out = output_within(c, Duration::from_secs(20));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("cannot read AWS_CA_BUNDLE"), "{err}");
    assert!(
        err.contains("hint: point AWS_CA_BUNDLE at a PEM file"),
        "{err}"
    );
    assert!(bed.pushes().len() == 1, "nothing was pushed without trust");
}

#[test]
fn dry_run_shows_the_master_it_would_join_or_become() {
    let bed = TestBed::start();
    let mut c = eic(&bed);
    c.args(["--dry-run", "--reuse=90s", "i-0123456789abcdef0", "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("# reuse: if a master answers at "), "{text}");
    assert!(text.contains("ControlPersist=90"), "{text}");
    let mut c = eic(&bed);
    c.args(["--dry-run", "i-0123456789abcdef0", "true"]);
    let text = stdout(&run(c));
    assert!(
        !text.contains("Control"),
        "reuse is off for connect by default: {text}"
    );
    assert!(bed.requests().is_empty());
}

#[test]
fn reuse_through_an_endpoint_holds_no_pipe_and_the_tunnel_ends_with_the_master() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(support::eice::EndpointSpec::default());
    let connect = |word: &str| {
        let mut c = bed.command();
        c.args(["-l", &bed.os_user(), "--reuse", &db.id, "echo", word])
            .stdin(Stdio::null());
        output_within(c, Duration::from_secs(30))
    };
    let out = connect("first");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "first\n");
    bed.clear_records();
    let out = connect("second");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "second\n");
    assert!(bed.requests().is_empty(), "{:?}", bed.requests());
    assert_eq!(bed.tunnels().len(), 1, "one tunnel carries both");
    let mut c = bed.command();
    c.args(["reuse", "stop"]);
    assert!(run(c).status.success());
    bed.wait_for_tunnels_closed(1, Duration::from_secs(10));
}

#[test]
fn through_the_ssh_config_block_ssh_connects_while_the_push_is_in_flight() {
    use support::cmd::{block_ssh, ssh_config};
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    bed.set_delay("SendSSHPublicKey", PUSH_TAKES);
    let mut c = block_ssh(&bed, &config);
    c.args(["-o", "ControlMaster=no", "eic-web-1", "echo", "overlapped"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = c.spawn().unwrap();
    let seen = bed
        .wait_for_sshd_log("Connection from", PUSH_TAKES + Duration::from_secs(5))
        .then(|| started.elapsed());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "overlapped\n");
    let seen = seen.expect("sshd saw a connection");
    assert!(
        seen < PUSH_TAKES - Duration::from_millis(500),
        "ssh connected {seen:?} after the start, the push takes {PUSH_TAKES:?}"
    );
    // Refused while ssh connects: the proxy's error, not ssh's refusal.
    bed.fail_next("SendSSHPublicKey", "AccessDeniedException", 1);
    let web = bed.instances().into_iter().next().unwrap();
    let mut c = block_ssh(&bed, &config);
    c.args(["-o", "ControlMaster=no", &web.id, "true"]);
    let out = output_within(c, PUSH_TAKES + Duration::from_secs(15));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("not authorized to call SendSSHPublicKey"),
        "{err}"
    );
    assert!(!err.contains("Permission denied"), "{err}");
}
