//! Faults injected into the API, the endpoint and the instance, against the
//! real binary and real ssh: each ends in one clear line with a hint, the
//! right exit code, nothing secret on disk, and no wait past the limits.

mod support;

use support::api::Fault;
use support::cmd::{assert_no_private_key_file, block_ssh, eic, run, ssh_config, stderr, stdout};
use support::http::Delivery;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{InstanceSpec, TestBed};

/// The command failed as a user should see it: exit 255, the first line an
/// eic-connect error holding `expected`, at least one hint, and nothing of
/// a panic, a backtrace, an HTML page or an unnamed AWS error.
#[track_caller]
fn assert_clear_failure(what: &str, out: &Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(255), "{what}: {err}");
    let first = err
        .lines()
        .find(|l| l.starts_with("eic-connect: error: "))
        .unwrap_or_else(|| panic!("{what}: no error line in {err:?}"));
    assert!(
        first.contains(expected),
        "{what}: {first:?} lacks {expected:?}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("hint: ")),
        "{what}: no hint in {err}"
    );
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "<html",
        "<h1",
        "<body",
        "Unknown",
        "Error {",
    ] {
        assert!(!err.contains(bad), "{what}: {bad:?} in {err}");
    }
}

/// Runs `c`, which must end within `limit`.
#[track_caller]
fn run_within(c: Command, limit: Duration) -> Output {
    let started = Instant::now();
    let out = run(c);
    assert!(
        started.elapsed() < limit,
        "took {:?} (limit {limit:?}): {}",
        started.elapsed(),
        stderr(&out)
    );
    out
}

/// Broken answers from the API and the network in front of it, for the
/// lookup and for the push, each with what the first line must say.
fn api_faults() -> Vec<(&'static str, Fault, &'static str)> {
    vec![
        (
            "an HTML 500 page",
            Fault::html(500),
            "HTTP 500, an HTML page titled \"500 Error\"",
        ),
        (
            "an HTML 502 page",
            Fault::html(502),
            "HTTP 502, an HTML page",
        ),
        ("an empty 503", Fault::empty(503), "HTTP 503, an empty body"),
        (
            "a reset connection",
            Fault::Broken(Delivery::Reset),
            "the connection to the AWS API broke",
        ),
        (
            "a truncated answer",
            Fault::Broken(Delivery::Truncated),
            "broke off",
        ),
        (
            "cut-off JSON",
            Fault::Body("{\"RequestId\": \"4b2f\", \"Succ".into()),
            "could not read: HTTP 200",
        ),
        (
            "an XML answer to a JSON API and vice versa",
            Fault::Body("<?xml version=\"1.0\"?><Response><Errors><Err".into()),
            "could not read: HTTP 200",
        ),
        (
            "latency past --api-timeout",
            Fault::Latency(Duration::from_secs(5)),
            "timed out",
        ),
    ]
}

/// Every API fault, on the lookup and on the push, through connect: one
/// clear line, exit 255, within the timeout, no key anywhere on disk, and
/// no key pushed when the lookup failed.
#[test]
fn api_faults_end_in_one_clear_line() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    for action in ["DescribeInstances", "SendSSHPublicKey"] {
        for (name, fault, expected) in api_faults() {
            // A body in the wrong format only means something for the API
            // that did not send it.
            let fault = match (&fault, action) {
                (Fault::Body(b), "DescribeInstances") if b.starts_with('<') => {
                    Fault::Body("<?xml version=\"1.0\"?><DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>i-0".into())
                }
                _ => fault,
            };
            let expected = match (&fault, action) {
                (Fault::Body(b), "DescribeInstances") if b.starts_with('<') => {
                    "instance id eic-connect does not understand"
                }
                _ => expected,
            };
            let pushes = bed.pushes().len();
            bed.inject(action, fault, 1);
            let mut c = eic(&bed);
            c.args(["--api-timeout", "1", "web-1", "--", "echo", "reached"]);
            let out = run_within(c, Duration::from_secs(4));
            let what = format!("{action}, {name}");
            assert_clear_failure(&what, &out, expected);
            assert!(!stdout(&out).contains("reached"), "{what}");
            if action == "DescribeInstances" {
                assert_eq!(bed.pushes().len(), pushes, "{what}: pushed a key");
            }
            assert_no_private_key_file(&bed, &what);
            bed.clear_faults();
        }
    }
    // The same instance is fine once the faults are gone.
    let mut c = eic(&bed);
    c.args([web.id.as_str(), "--", "echo", "reached"]);
    let out = run(c);
    assert_eq!(stdout(&out), "reached\n", "{}", stderr(&out));
}

/// The same faults through the ssh-config block: the proxy shows the same
/// clear line through ssh, which never falls back to a bare "Permission
/// denied".
#[test]
fn api_faults_are_as_clear_through_the_ssh_config_block() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    for (action, fault, expected) in [
        (
            "SendSSHPublicKey",
            Fault::html(503),
            "HTTP 503, an HTML page",
        ),
        (
            "DescribeInstances",
            Fault::Broken(Delivery::Reset),
            "the connection to the AWS API broke",
        ),
        (
            "SendSSHPublicKey",
            Fault::Latency(Duration::from_secs(5)),
            "timed out",
        ),
    ] {
        bed.inject(action, fault, 1);
        let mut c = block_ssh(&bed, &config);
        c.env("EIC_CONNECT_API_TIMEOUT", "1")
            .args(["eic-web-1", "echo reached"]);
        let out = run_within(c, Duration::from_secs(6));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "proxy, {action}: {err}");
        assert!(err.contains(expected), "proxy, {action}: {err}");
        assert!(!err.contains("Permission denied"), "proxy, {action}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Unknown"),
            "{err}"
        );
        assert_no_private_key_file(&bed, action);
        bed.clear_faults();
    }
}

/// `run` retries harder (fleets meet throttling): a fault that lasts past
/// every attempt gives the instance its own clear reason, and one that
/// passes is survived.
#[test]
fn run_survives_passing_faults_and_names_lasting_ones() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    bed.add_instance(InstanceSpec::named("web-2"));
    let fleet = |bed: &TestBed| {
        let mut c = bed.command();
        // Every run pushes (no master to join): the faults are in the push.
        c.args(["run", "--no-reuse", "-f", "Name=web-*"])
            .args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
            .args(["--", "echo", "reached"])
            .stdin(std::process::Stdio::null());
        c
    };
    // Three broken answers in a row: retried through.
    bed.inject("SendSSHPublicKey", Fault::html(503), 3);
    bed.inject("DescribeInstances", Fault::Broken(Delivery::Reset), 2);
    let out = run_within(fleet(&bed), Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).matches("reached").count(),
        2,
        "{}",
        stdout(&out)
    );
    bed.clear_faults();

    // Pushes that fail on every attempt: each instance says why.
    bed.inject("SendSSHPublicKey", Fault::html(503), 1000);
    let out = run_within(fleet(&bed), Duration::from_secs(60));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("HTTP 503, an HTML page"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Unknown") && !err.contains("<html"),
        "{err}"
    );
    assert_no_private_key_file(&bed, "run");
}

/// With the SDK's retries (AWS_MAX_ATTEMPTS=3), two transient faults in a
/// row are survived: the command runs.
#[test]
fn transient_api_faults_are_retried() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    for action in ["DescribeInstances", "SendSSHPublicKey"] {
        for fault in [
            Fault::html(500),
            Fault::empty(503),
            Fault::Broken(Delivery::Reset),
            Fault::Broken(Delivery::Truncated),
        ] {
            bed.inject(action, fault.clone(), 2);
            let mut c = eic(&bed);
            c.env("AWS_MAX_ATTEMPTS", "3")
                .args(["web-1", "--", "echo", "reached"]);
            let out = run_within(c, Duration::from_secs(15));
            assert_eq!(
                stdout(&out),
                "reached\n",
                "{action} {fault:?}: {}",
                stderr(&out)
            );
            bed.clear_faults();
        }
    }
}

/// A throttling storm (every call refused) ends with the throttling
/// explained, after the SDK's retries, in bounded time.
#[test]
fn a_throttling_storm_is_explained() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    for (action, expected) in [
        ("DescribeInstances", "throttl"),
        ("SendSSHPublicKey", "too many key pushes"),
    ] {
        bed.set_rate_limit(action, 0.0, 0);
        let mut c = eic(&bed);
        c.env_remove("AWS_MAX_ATTEMPTS")
            .args(["web-1", "--", "echo", "reached"]);
        let out = run_within(c, Duration::from_secs(20));
        assert_clear_failure(action, &out, expected);
        assert!(
            bed.throttled(action) >= 3,
            "{action}: retried {}",
            bed.throttled(action)
        );
        bed.clear_rate_limit(action);
    }
    assert_no_private_key_file(&bed, "throttled");
}

/// Credentials that expire mid-run (an SSO session ending between the
/// lookup and the push): the refresh fails, and the error says so.
#[test]
fn credentials_expiring_mid_run_are_explained() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let script = bed.dir().join("credentials.sh");
    let count = bed.dir().join("credentials.count");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo x >> '{count}'\n\
             if [ $(wc -l < '{count}') -gt 1 ]; then\n\
               echo 'Error loading SSO Token: Token for dev does not exist or has expired' >&2; exit 1\n\
             fi\n\
             printf '{{\"Version\": 1, \"AccessKeyId\": \"%s\", \"SecretAccessKey\": \"%s\", \"Expiration\": \"%s\"}}\\n' \
               '{}' '{}' \"$(date -u -d '+12 seconds' +%Y-%m-%dT%H:%M:%SZ)\"\n",
            bed.access_key_id(),
            bed.secret_access_key(),
            count = count.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(bed.dir().join("aws")).unwrap();
    std::fs::write(
        bed.dir().join("aws/config"),
        format!("[profile dev]\ncredential_process = {}\n", script.display()),
    )
    .unwrap();
    // The lookup takes long enough for the credentials to need a refresh:
    // the SDK refreshes 10 s before the expiration, less up to 5 s jitter,
    // so these expire for it 1-7 s after they were fetched.
    bed.inject(
        "DescribeInstances",
        Fault::Latency(Duration::from_secs(8)),
        1,
    );
    let mut c = eic(&bed);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_PROFILE", "dev")
        .args(["web-1", "--", "echo", "reached"]);
    let out = run_within(c, Duration::from_secs(15));
    assert_clear_failure("expired", &out, "no usable AWS credentials");
    assert!(stderr(&out).contains("has expired\n"), "{}", stderr(&out));
    // Fetched once, then refused on the refresh: mid-run.
    let fetched = std::fs::read_to_string(&count).unwrap();
    assert_eq!(
        fetched.lines().count(),
        2,
        "credential_process ran {fetched:?}"
    );
    assert!(bed.pushes().is_empty());
    assert_no_private_key_file(&bed, "expired");
}

/// The instance stops between the lookup and the push: the push's refusal
/// is explained, by id and by name, and nothing is left behind.
#[test]
fn an_instance_stopping_between_lookup_and_push_is_explained() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    for target in [web.id.as_str(), "web-1"] {
        bed.set_state(&web.id, "running");
        bed.set_state_after("DescribeInstances", &web.id, "stopping");
        let mut c = eic(&bed);
        c.args([target, "--", "echo", "reached"]);
        let out = run_within(c, Duration::from_secs(10));
        assert_clear_failure(target, &out, &format!("instance {} is not running", web.id));
        assert_eq!(bed.state_of(&web.id), "stopping");
        assert_no_private_key_file(&bed, target);
    }
}

/// Endpoint faults mid-tunnel, through connect: a close frame or a dropped
/// connection mid-transfer, an oversized frame and an idle stall each end
/// in a clear line within the limits; fragmented frames just work.
#[test]
fn endpoint_faults_mid_tunnel() {
    use support::eice::{EndpointSpec, TunnelFault};
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let connect = |bed: &TestBed| {
        let mut c = bed.command();
        c.args([
            "--api-timeout",
            "2",
            "-l",
            &bed.os_user(),
            "db-1",
            "--",
            "echo",
            "reached",
        ])
        .stdin(std::process::Stdio::null());
        c
    };
    for (fault, expected) in [
        (
            TunnelFault::CloseAfter {
                bytes: 30,
                code: 1011,
                reason: "Connection to the instance was lost".into(),
            },
            "the endpoint closed the tunnel (code 1011): Connection to the instance was lost",
        ),
        (TunnelFault::DropAfter { bytes: 30 }, "the tunnel broke"),
        (TunnelFault::Oversized(2 << 20), "Message too long"),
        (
            TunnelFault::Stall,
            "the tunnel to port 22 stayed silent for 2s",
        ),
    ] {
        bed.fault_next_tunnel(fault.clone());
        let out = run_within(connect(&bed), Duration::from_secs(8));
        let what = format!("{fault:?}");
        assert_clear_failure(&what, &out, expected);
        assert!(!stdout(&out).contains("reached"), "{what}");
        assert_no_private_key_file(&bed, &what);
    }
    bed.fault_next_tunnel(TunnelFault::Fragmented);
    let out = run_within(connect(&bed), Duration::from_secs(8));
    assert_eq!(stdout(&out), "reached\n", "{}", stderr(&out));
    // Every tunnel ended, none is left open.
    let tunnels = bed.wait_for_tunnels_closed(5, Duration::from_secs(10));
    assert_eq!(tunnels.len(), 5);
}

/// sshd dies mid-session: ssh's exit status (255) comes back at once, on
/// the direct path and through the endpoint, and nothing is left behind.
#[test]
fn sshd_killed_mid_session() {
    use support::eice::EndpointSpec;
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    // The remote shell's parent is sshd's session process.
    let script = "echo started; sleep 1; kill -9 $PPID; sleep 20; echo survived";
    for (target, port) in [
        ("web-1", bed.sshd_port().to_string()),
        ("db-1", "22".to_owned()),
    ] {
        let mut c = bed.command();
        c.args(["-p", &port, "-l", &bed.os_user(), target, "--", script])
            .stdin(std::process::Stdio::null());
        let out = run_within(c, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(255), "{target}: {}", stderr(&out));
        assert_eq!(stdout(&out), "started\n", "{target}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert_no_private_key_file(&bed, target);
    }
    let tunnels = bed.wait_for_tunnels_closed(1, Duration::from_secs(10));
    assert_eq!(tunnels.len(), 1);
}

/// eic-connect inside a private mount namespace (a user namespace, so
/// this works without root too) where `prepare` (a shell snippet) has
/// changed the file system: a read-only home, a full state directory.
fn in_namespace(bed: &TestBed, prepare: &str, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    bed.apply_env(&mut c);
    c.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(format!("{prepare} && exec \"$@\""))
        .arg("sh")
        .arg(support::eic_connect_bin())
        .args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
        .args(args)
        .stdin(std::process::Stdio::null());
    c
}

/// A read-only home and a state directory with no space left: the
/// connection still works (nothing it needs is written there) and ssh says
/// it could not record the host key. A full runtime directory (where the
/// agent socket lives) is a clear error with a hint.
#[test]
fn a_read_only_home_or_a_full_state_directory_still_connects() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let home = bed.home();
    let state = home.join(".local/state/eic-connect");
    std::fs::create_dir_all(&state).unwrap();
    let read_only = format!(
        "mount --bind '{h}' '{h}' && mount -o remount,bind,ro '{h}'",
        h = home.display()
    );
    let full = format!(
        "mount -t tmpfs -o size=16k tmpfs '{s}' && (dd if=/dev/zero of='{s}/filler' bs=1k count=64 2>/dev/null; true)",
        s = state.display()
    );
    let runtime = bed.dir().join("run");
    let full_runtime = format!(
        "mount -t tmpfs -o size=16k tmpfs '{r}' && (dd if=/dev/zero of='{r}/filler' bs=1k count=64 2>/dev/null; true)",
        r = runtime.display()
    );
    for (what, prepare) in [
        ("read-only home", read_only),
        ("full state directory", full),
    ] {
        for target in [web.id.as_str(), "web-1"] {
            let out = run_within(
                in_namespace(&bed, &prepare, &[target, "--", "echo", "reached"]),
                Duration::from_secs(10),
            );
            let err = stderr(&out);
            assert_eq!(stdout(&out), "reached\n", "{what}, {target}: {err}");
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
    }
    let out = run_within(
        in_namespace(&bed, &full_runtime, &["web-1", "--", "echo", "reached"]),
        Duration::from_secs(10),
    );
    assert_clear_failure("full runtime directory", &out, "No space left on device");
    // Outside the namespaces, the state directory was never touched.
    assert!(!state.join("known_hosts").exists());
    assert_no_private_key_file(&bed, "read-only");
}

/// 50 connections to one instance at once: all log in, and the files they
/// share (known_hosts, the remembered OS users) stay whole: every line
/// parses and names this instance.
#[test]
fn fifty_concurrent_connects_keep_the_shared_files_whole() {
    let bed = TestBed::start();
    let ubuntu = bed.register_ubuntu_image();
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id(ubuntu));
    let at_once = |make: &dyn Fn() -> Command| -> Vec<Output> {
        let children: Vec<_> = (0..50)
            .map(|_| {
                make()
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn eic-connect")
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait"))
            .collect()
    };
    // Real logins (the bed's user), recording the host key on first use.
    let outs = at_once(&|| {
        let mut c = eic(&bed);
        c.env("AWS_MAX_ATTEMPTS", "10")
            .args([web.id.as_str(), "--", "echo", "reached"]);
        c
    });
    for out in &outs {
        assert_eq!(stdout(out), "reached\n", "{}", stderr(out));
    }
    let state = bed.home().join(".local/state/eic-connect");
    let known_hosts = std::fs::read_to_string(state.join("known_hosts")).unwrap();
    let key = bed
        .host_public_key()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(!known_hosts.is_empty());
    for line in known_hosts.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words.len(),
            3,
            "a broken line in known_hosts: {line:?}\n{known_hosts}"
        );
        assert_eq!(words[2], key, "{line:?}");
    }
    // Names may be hashed (HashKnownHosts): ssh-keygen finds every line
    // under the instance id.
    let found = Command::new("ssh-keygen")
        .args(["-F", &web.id, "-f"])
        .arg(state.join("known_hosts"))
        .output()
        .expect("ssh-keygen");
    let found = String::from_utf8_lossy(&found.stdout)
        .matches("found: line")
        .count();
    assert_eq!(found, known_hosts.lines().count(), "{known_hosts}");
    // Guessed users (ssh stood in by `true`): remembered, one whole line each.
    let outs = at_once(&|| {
        let mut c = bed.command();
        c.env("EIC_CONNECT_SSH", "true")
            .env("AWS_MAX_ATTEMPTS", "10")
            .arg(&web.id)
            .stdin(std::process::Stdio::null());
        c
    });
    for out in &outs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let remembered = std::fs::read_to_string(state.join("os-users")).unwrap();
    assert!(!remembered.is_empty());
    for line in remembered.lines() {
        assert_eq!(line, format!("{} ubuntu", web.id), "{remembered}");
    }
}

/// A lookup that only improves the connection fails: eic-connect warns
/// and goes on with the plain path; here the AMI lookup for the OS user
/// guess, which falls back to ec2-user. (A failed endpoint lookup in
/// `--connect auto` going direct is in tests/eice.rs.)
#[test]
fn optional_lookups_that_fail_never_abort() {
    let bed = TestBed::start();
    let ubuntu = bed.register_ubuntu_image();
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id(ubuntu));
    bed.inject("DescribeImages", Fault::html(503), 1);
    let mut c = bed.command();
    c.env("EIC_CONNECT_SSH", "true")
        .arg(&web.id)
        .stdin(std::process::Stdio::null());
    let out = run_within(c, Duration::from_secs(10));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(bed.pushes()[0].os_user, "ec2-user");
    assert!(
        err.starts_with("eic-connect: warning: could not look up the AMI"),
        "{err}"
    );
    assert!(
        err.contains("DescribeImages got an answer that is not from the AWS API"),
        "{err}"
    );
    assert!(!err.contains("<html"), "{err}");
}
