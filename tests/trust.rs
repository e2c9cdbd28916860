//! Trust: host keys pinned from the console output (`--verify-host-key`),
//! the OS user guessed from the AMI, and the serial console with AWS's
//! published fingerprint pinned. Real binary, real sshd.

mod support;

use support::cmd::{assert_signed as assert_clean, eic, run, stderr, stdout};

use std::process::{Command, Stdio};

use support::{InstanceSpec, TestBed};

fn own_known_hosts(bed: &TestBed) -> String {
    std::fs::read_to_string(bed.home().join(".local/state/eic-connect/known_hosts"))
        .unwrap_or_default()
}

// ------------------------------------------------------------ host keys

#[test]
fn a_pinned_host_key_lets_the_connection_through() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.set_console_output(&web.id, &bed.host_key_console());
    for target in [web.id.as_str(), "web-1"] {
        let mut c = eic(&bed);
        c.args(["--verify-host-key", target, "echo", "verified"]);
        let out = run(c);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert_eq!(stdout(&out), "verified\n");
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    }
    // The console's key is recorded for the instance in eic-connect's own file.
    let recorded = own_known_hosts(&bed);
    let key_b64 = bed.host_public_key().split(' ').nth(1).unwrap();
    assert!(
        recorded
            .lines()
            .any(|l| l.starts_with(&format!("{} ssh-ed25519 {key_b64}", web.id))),
        "{recorded}"
    );
    assert_eq!(recorded.lines().count(), 1, "recorded once: {recorded}");
    assert_eq!(bed.requests_for("GetConsoleOutput").len(), 2);
    assert_clean(&bed);
}

#[test]
fn the_environment_sets_the_default_and_verbose_shows_the_pins() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.set_console_output(&web.id, &bed.host_key_console());
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_VERIFY_HOST_KEY", "1")
        .args(["-v", &web.id, "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("pinning host keys from the console output"),
        "{err}"
    );
    assert!(err.contains(&bed.host_key_fingerprint()), "{err}");
    assert!(err.contains("StrictHostKeyChecking=yes"), "{err}");
    // Falsey values leave it off: no console lookup at all.
    bed.clear_records();
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_VERIFY_HOST_KEY", "false")
        .args([&web.id, "true"]);
    assert!(run(c).status.success());
    assert!(bed.requests_for("GetConsoleOutput").is_empty());
}

#[test]
fn an_sshd_whose_host_key_differs_from_the_console_is_refused() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let other = bed.generate_key("not-the-host-key");
    bed.set_console_output(
        &web.id,
        &support::diag::cloud_init_console(&[&other.public_key]),
    );
    // A first-use entry that matches the real sshd must not let it through:
    // pinned mode consults the console's keys alone.
    let state = bed.home().join(".local/state/eic-connect");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("known_hosts"),
        format!("{} {}\n", web.id, bed.host_public_key()),
    )
    .unwrap();

    let mut c = eic(&bed);
    c.args(["--verify-host-key", &web.id, "echo", "should-not-run"]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!stdout(&out).contains("should-not-run"));
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(
        err.contains(&format!(
            "eic-connect: error: {} answered with host key ssh-ed25519 {}, which is not among the keys it printed on its console",
            web.id,
            bed.host_key_fingerprint()
        )),
        "{err}"
    );
    assert!(err.contains("hint: something may be intercepting"), "{err}");
    assert!(!bed.sshd_log().contains("Accepted publickey"));
    // The stale first-use entry was replaced by the console's key.
    let recorded = own_known_hosts(&bed);
    let other_b64 = other.public_key.split(' ').nth(1).unwrap();
    assert!(recorded.contains(other_b64), "{recorded}");
    assert!(
        !recorded.contains(bed.host_public_key().split(' ').nth(1).unwrap()),
        "{recorded}"
    );
}

#[test]
fn a_console_without_keys_is_an_error_unless_unverified_is_allowed() {
    let bed = TestBed::start();
    let silent = bed.add_instance(InstanceSpec::named("silent"));
    let empty = bed.add_instance(InstanceSpec::named("empty"));
    bed.set_console_output(
        &empty.id,
        "<14>Nov 23 18:06:28 ec2: -----BEGIN SSH HOST KEY KEYS-----\r\n<14>Nov 23 18:06:28 ec2: -----END SSH HOST KEY KEYS-----\r\n",
    );
    for (inst, why) in [
        (&silent, "its console output is empty"),
        (&empty, "its console output has an empty host-key block"),
    ] {
        let mut c = eic(&bed);
        c.args(["--verify-host-key", &inst.id, "echo", "ran"]);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{err}");
        assert!(
            err.contains(&format!(
                "eic-connect: error: cannot verify the host key of {}: {why}",
                inst.id
            )),
            "{err}"
        );
        assert!(
            err.contains(
                "hint: to connect anyway, trusting the key on first use, add --allow-unverified"
            ),
            "{err}"
        );
        assert!(!stdout(&out).contains("ran"));

        let mut c = eic(&bed);
        c.args([
            "--verify-host-key",
            "--allow-unverified",
            &inst.id,
            "echo",
            "ran",
        ]);
        let out = run(c);
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert_eq!(stdout(&out), "ran\n");
        assert!(err.contains("warning: cannot verify the host key"), "{err}");
        assert!(
            err.contains("accepting it on first use (--allow-unverified)"),
            "{err}"
        );
    }
    // Without --verify-host-key it changes nothing (first use is the policy
    // anyway), so a default in the environment never gets in the way.
    bed.clear_records();
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_ALLOW_UNVERIFIED", "1")
        .args([&silent.id, "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(bed.requests_for("GetConsoleOutput").is_empty());
}

#[test]
fn dry_run_shows_the_pinning() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args([
        "--dry-run",
        "--verify-host-key",
        "-l",
        "ubuntu",
        "i-0123456789abcdef0",
    ]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(
        plan.contains("GetConsoleOutput InstanceId=i-0123456789abcdef0"),
        "{plan}"
    );
    assert!(plan.contains("StrictHostKeyChecking=yes"), "{plan}");
    assert!(plan.contains("__known-hosts"), "{plan}");
    assert!(bed.requests().is_empty());
}

// ------------------------------------------------------------- OS user

/// eic-connect with ssh replaced by `true`: everything up to ssh is real.
fn eic_without_ssh(bed: &TestBed) -> Command {
    let mut c = bed.command();
    c.env("EIC_CONNECT_SSH", "true").stdin(Stdio::null());
    c
}

#[test]
fn the_os_user_is_guessed_from_each_ami_family() {
    let bed = TestBed::start();
    let families: &[(&str, &str, &str, &str, &str)] = &[
        (
            "ami-0a000000000000001",
            "al2023-ami-2023.1.20230725.0-kernel-6.1-x86_64",
            "Amazon Linux 2023 AMI",
            "Linux/UNIX",
            "ec2-user",
        ),
        (
            "ami-0a000000000000002",
            "RHEL-9.2.0_HVM-20230503-x86_64-41-Hourly2-GP2",
            "Provided by Red Hat, Inc.",
            "Red Hat Enterprise Linux",
            "ec2-user",
        ),
        (
            "ami-0a000000000000003",
            "suse-sles-15-sp5-v20230620-hvm-ssd-x86_64",
            "SUSE Linux Enterprise Server 15 SP5",
            "SUSE Linux",
            "ec2-user",
        ),
        (
            "ami-0a000000000000004",
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
            "Canonical, Ubuntu, 22.04 LTS",
            "Linux/UNIX",
            "ubuntu",
        ),
        (
            "ami-0a000000000000005",
            "debian-12-amd64-20230711-1438",
            "Debian 12 (20230711-1438)",
            "Linux/UNIX",
            "admin",
        ),
        (
            "ami-0a000000000000006",
            "CentOS Stream 9 x86_64 20230710",
            "CentOS Stream 9",
            "Linux/UNIX",
            "centos",
        ),
        (
            "ami-0a000000000000007",
            "Fedora-Cloud-Base-38-1.6.x86_64-hvm-us-east-1-gp3-0",
            "Fedora-Cloud-Base-38",
            "Linux/UNIX",
            "fedora",
        ),
        (
            "ami-0a000000000000008",
            "bitnami-wordpress-6.2.2-linux-debian-11-x86_64-hvm-ebs-nami",
            "Bitnami WordPress on Debian 11",
            "Linux/UNIX",
            "bitnami",
        ),
        (
            "ami-0a000000000000009",
            "golden-image-42",
            "built by packer",
            "Linux/UNIX",
            "ec2-user",
        ),
    ];
    for (ami, name, description, platform, _) in families {
        bed.register_image(ami, name, description, platform);
    }
    // Not registered: a deregistered or private AMI.
    let gone = bed.add_instance(InstanceSpec::named("gone").image_id("ami-0ffffffffffffffff"));
    for (i, (ami, name, _, _, expected)) in families.iter().enumerate() {
        let inst = bed.add_instance(InstanceSpec::named(&format!("host-{i}")).image_id(ami));
        bed.clear_records();
        let mut c = eic_without_ssh(&bed);
        c.args(["-v", &inst.id]);
        let out = run(c);
        let err = stderr(&out);
        assert!(out.status.success(), "{name}: {err}");
        let pushes = bed.pushes();
        assert_eq!(pushes.len(), 1, "{name}");
        assert_eq!(pushes[0].os_user, *expected, "{name}");
        assert!(err.contains("chose OS user"), "{err}");
        assert!(err.contains(&format!("os_user={expected}")), "{err}");
        // The describe, then the image, then the push: in that order.
        let order: Vec<String> = bed.requests().iter().map(|r| r.action.clone()).collect();
        assert_eq!(
            order,
            ["DescribeInstances", "DescribeImages", "SendSSHPublicKey"],
            "{name}"
        );
    }
    bed.clear_records();
    let mut c = eic_without_ssh(&bed);
    c.args(["-v", &gone.id]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bed.pushes()[0].os_user, "ec2-user");
    assert!(stderr(&out).contains("is not visible"), "{}", stderr(&out));
    assert_clean(&bed);
}

#[test]
fn a_named_user_skips_the_guess_and_keeps_the_fast_path() {
    let bed = TestBed::start();
    bed.register_image(
        "ami-0a000000000000004",
        "ubuntu/images/hvm-ssd/ubuntu-jammy",
        "",
        "Linux/UNIX",
    );
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id("ami-0a000000000000004"));
    for args in [
        vec!["-l", "deploy", web.id.as_str()],
        vec!["--os-user", "deploy", web.id.as_str()],
        vec!["deploy@web-1"],
    ] {
        bed.clear_records();
        let mut c = eic_without_ssh(&bed);
        c.args(&args);
        let out = run(c);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(bed.pushes()[0].os_user, "deploy", "{args:?}");
        assert!(bed.requests_for("DescribeImages").is_empty(), "{args:?}");
    }
    // The environment's default user counts as given.
    bed.clear_records();
    let mut c = eic_without_ssh(&bed);
    c.env("EIC_CONNECT_OS_USER", "ops").arg(&web.id);
    assert!(run(c).status.success());
    assert_eq!(bed.pushes()[0].os_user, "ops");
    assert!(bed.requests_for("DescribeImages").is_empty());
}

#[test]
fn a_guessed_user_that_does_not_exist_on_the_instance_fails_at_login() {
    // The bed lets only its own OS user log in; the AMI says ubuntu.
    let bed = TestBed::start();
    bed.register_image(
        "ami-0a000000000000004",
        "ubuntu/images/hvm-ssd/ubuntu-jammy",
        "",
        "Linux/UNIX",
    );
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id("ami-0a000000000000004"));
    let mut c = bed.command();
    c.stdin(Stdio::null())
        .args(["-p", &bed.sshd_port().to_string(), &web.id, "true"]);
    let out = run(c);
    assert_eq!(bed.pushes()[0].os_user, "ubuntu");
    let exists = Command::new("id")
        .arg("ubuntu")
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists || bed.os_user() != "root" {
        assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn dry_run_without_a_user_shows_the_ami_lookup() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args(["--dry-run", "web-1"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(
        plan.contains("DescribeImages ImageId.1=<AMI of <instance id>>"),
        "{plan}"
    );
    assert!(
        plan.contains("InstanceOSUser=<OS user from the AMI>"),
        "{plan}"
    );
}

// ------------------------------------------------------- serial console

fn serial(bed: &TestBed, fingerprint: &str) -> Command {
    let mut c = bed.command();
    c.env(
        "EIC_CONNECT_SERIAL_HOST",
        format!("127.0.2.1:{}", bed.sshd_port()),
    )
    .env("EIC_CONNECT_SERIAL_FINGERPRINT", fingerprint)
    .stdin(Stdio::null())
    .arg("serial");
    c
}

#[test]
fn serial_connects_with_the_pinned_fingerprint() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = serial(&bed, &bed.host_key_fingerprint());
    c.arg("web-1");
    let out = run(c);
    let err = stderr(&out);
    // The host key was accepted and ssh went on to log in as <id>.port0,
    // which the bed's sshd (not a real serial console) does not know.
    let user = format!("{}.port0", web.id);
    assert!(
        bed.wait_for_sshd_log(
            &format!("Invalid user {user}"),
            std::time::Duration::from_secs(60)
        ),
        "{err}\n{}",
        bed.sshd_log()
    );
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!err.contains("offered host key"), "{err}");
    assert!(
        err.contains("warning: serial console endpoint overridden"),
        "{err}"
    );
    let pushes = bed.serial_pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].instance_id, web.id);
    assert!(pushes[0].public_key.starts_with("ssh-ed25519 "));
    let call = &bed.requests_for("SendSerialConsoleSSHPublicKey")[0];
    assert_eq!(call.params.get("SerialPort").map(String::as_str), Some("0"));
    assert_clean(&bed);
}

#[test]
fn serial_refuses_a_host_whose_key_is_not_the_pinned_one() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let wrong = "SHA256:dXwn5ma/xadVMeBZGEru5l2gx+yI5LDiJaLUcz0FMmw";
    let mut c = serial(&bed, wrong);
    c.arg(&web.id);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(
        err.contains(&format!(
            "eic-connect: error: the serial console host 127.0.2.1 offered host key ssh-ed25519 {}, not the fingerprint given to pin ({wrong})",
            bed.host_key_fingerprint()
        )),
        "{err}"
    );
    assert!(
        !bed.sshd_log().contains("Invalid user"),
        "{}",
        bed.sshd_log()
    );
}

#[test]
fn serial_never_connects_unpinned() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    // A host override needs a fingerprint.
    let mut c = bed.command();
    c.env("EIC_CONNECT_SERIAL_HOST", "127.0.2.1:22")
        .args(["serial", &web.id]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("EIC_CONNECT_SERIAL_FINGERPRINT"),
        "{}",
        stderr(&out)
    );
    // A region with no published fingerprint is refused before any call.
    let mut c = bed.command();
    c.args(["--region", "xx-future-1", "serial", &web.id]);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("does not know the serial console's host key for region xx-future-1"),
        "{err}"
    );
    assert!(err.contains("--host-key-fingerprint"), "{err}");
    assert!(bed.requests().is_empty());
}

#[test]
fn every_serial_console_error_code_gets_its_own_message() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let cases = [
        (
            "AuthException",
            "not allowed to push a key",
            "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
        ),
        (
            "SerialConsoleAccessDisabledException",
            "serial console access is disabled",
            "aws ec2 enable-serial-console-access",
        ),
        (
            "SerialConsoleSessionLimitExceededException",
            "already has a serial console session",
            "wait about 30 seconds",
        ),
        (
            "SerialConsoleSessionUnavailableException",
            "is unavailable right now",
            "reboot the instance",
        ),
        (
            "SerialConsoleSessionUnsupportedException",
            "does not support serial console sessions",
            "Nitro",
        ),
        (
            "EC2InstanceTypeInvalidException",
            "does not support the serial console",
            "Nitro-based",
        ),
        (
            "EC2InstanceNotFoundException",
            "cannot find instance",
            "--region",
        ),
        (
            "EC2InstanceStateInvalidException",
            "is not running",
            "start-instances",
        ),
        (
            "EC2InstanceUnavailableException",
            "temporarily unavailable",
            "try again",
        ),
        ("ThrottlingException", "throttled", "wait a few seconds"),
        ("InvalidArgsException", "rejected the request", "check the"),
        ("ServiceException", "internal error", "try again"),
    ];
    let mut seen = Vec::new();
    for (code, message, hint) in cases {
        bed.fail_next("SendSerialConsoleSSHPublicKey", code, 1);
        let mut c = serial(&bed, &bed.host_key_fingerprint());
        c.arg(&web.id);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{code}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("eic-connect: error:"))
            .unwrap_or_else(|| panic!("{code}: no error line in {err}"))
            .to_owned();
        assert!(line.contains(message), "{code}: {line}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("hint:") && l.contains(hint)),
            "{code}: {err}"
        );
        assert!(
            !seen.contains(&line),
            "{code} repeats another code's message: {line}"
        );
        seen.push(line);
    }
    assert!(bed.serial_pushes().is_empty());
    assert!(
        !bed.sshd_log().contains("port0"),
        "ssh must not run after a failed push"
    );
}
