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
