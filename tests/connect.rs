//! End to end: the real binary against the AWS stand-in and a real sshd.

mod support;

use support::cmd::{assert_signed as assert_clean, eic, run, server_address, stderr, stdout};

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{InstanceSpec, TestBed};

#[test]
fn connects_by_instance_id_and_returns_output_and_exit_status() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args([
        &web.id,
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 7",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "to-stdout\n");
    assert!(stderr(&out).contains("to-stderr"));
    assert_clean(&bed);

    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].instance_id, web.id);
    assert_eq!(pushes[0].os_user, bed.os_user());
    assert!(pushes[0].public_key.starts_with("ssh-ed25519 "));
    assert_eq!(
        pushes[0].availability_zone, None,
        "the AZ is optional and costs a lookup"
    );
}

#[test]
fn lookup_and_push_overlap_for_an_instance_id() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    // Whichever call comes first is answered only after `delay`: had the
    // other waited for that answer, it would come at least `delay` later.
    let delay = Duration::from_secs(3);
    bed.set_delay("DescribeInstances", delay);
    bed.set_delay("SendSSHPublicKey", delay);
    let mut c = eic(&bed);
    c.args([&web.id, "true"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let describe = &bed.requests_for("DescribeInstances")[0];
    let push = &bed.requests_for("SendSSHPublicKey")[0];
    let gap = push
        .received
        .duration_since(describe.received)
        .unwrap_or_else(|e| e.duration());
    assert!(gap < delay, "the push waited for the lookup: {gap:?} apart");
}

#[test]
fn connects_by_name_tag_dns_names_and_ip_addresses() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let public_ip = web.public_ip.clone().expect("public ip");
    let public_dns = web.public_dns_name.clone().expect("public dns");
    let cases: [(&str, &str); 5] = [
        ("web-1", &public_ip),
        (&public_dns, &public_ip),
        (&web.private_dns_name, &web.private_ip),
        (&public_ip, &public_ip),
        (&web.private_ip, &web.private_ip),
    ];
    for (target, expected_address) in cases {
        let mut c = eic(&bed);
        c.args([target, "echo $SSH_CONNECTION"]);
        let out = run(c);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert_eq!(server_address(&out), expected_address, "{target}");
    }
    assert_eq!(bed.pushes().len(), 5);
    assert!(bed.pushes().iter().all(|p| p.instance_id == web.id));
    assert_clean(&bed);
}

#[test]
fn address_choice_flags() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let check = |args: &[&str], expected: &str| {
        let mut c = eic(&bed);
        c.args(args).arg("echo $SSH_CONNECTION");
        let out = run(c);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(server_address(&out), expected, "{args:?}");
    };
    check(&["web-1"], web.public_ip.as_deref().unwrap());
    check(&["--private", "web-1"], &web.private_ip);
    check(&["db-1"], &db.private_ip);

    let mut c = eic(&bed);
    c.args(["--public", "db-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("no public IPv4 address"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: connect to its private address with --private"));
}

#[test]
fn connects_over_ipv6_when_asked() {
    let bed = TestBed::start();
    assert!(
        bed.ipv6_available(),
        "the test machine needs IPv6 on loopback (::1)"
    );
    let web = bed.add_instance(InstanceSpec::named("v6").ipv6(true));
    let mut c = eic(&bed);
    c.args(["--ipv6", &web.id, "echo $SSH_CONNECTION"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server_address(&out), "::1");
}

#[test]
fn finds_a_name_on_a_later_page() {
    let bed = TestBed::start();
    for i in 0..4 {
        bed.add_instance(InstanceSpec::named(&format!("other-{i}")).tag("Role", "web"));
    }
    bed.add_instance(InstanceSpec::named("web-*x"));
    bed.set_page_size(1);
    let mut c = eic(&bed);
    // `*` is a wildcard to EC2: matches every instance, listed over pages.
    c.args(["*", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("matches 5 instances"),
        "{}",
        stderr(&out)
    );
    assert!(
        bed.requests_for("DescribeInstances").len() >= 5,
        "expected one call per page"
    );
}

#[test]
fn ambiguous_name_lists_the_matches_and_pushes_nothing() {
    let bed = TestBed::start();
    let a = bed.add_instance(InstanceSpec::named("web"));
    let b = bed.add_instance(InstanceSpec::named("web").state("stopped"));
    let mut c = eic(&bed);
    c.args(["web", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(
        err.starts_with("eic-connect: error: Name tag \"web\" matches 2 instances"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}  \"web\"  running", a.id)),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}  \"web\"  stopped", b.id)),
        "{err}"
    );
    assert!(err.contains("hint: name one by its instance id"));
    assert!(bed.pushes().is_empty());
    assert!(bed.requests_for("SendSSHPublicKey").is_empty());
}

#[test]
fn unknown_instance_says_where_it_looked() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    for target in ["i-0123456789abcdef0", "nope", "10.9.9.9"] {
        let mut c = eic(&bed);
        c.args(["--profile", "", target, "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(255), "{target}");
        let err = stderr(&out);
        assert!(
            err.contains("eic-connect: error: no instance matches"),
            "{err}"
        );
        assert!(err.contains(&format!("(region {})", bed.region())), "{err}");
        assert!(err.contains("hint: check --region and --profile"), "{err}");
    }
    assert!(bed.pushes().is_empty());
}

#[test]
fn stopped_instance_is_refused_with_a_way_out() {
    let bed = TestBed::start();
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    for target in [old.id.as_str(), "old-1"] {
        let mut c = eic(&bed);
        c.args([target, "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(255));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("instance {} is stopped", old.id)),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "hint: start it: aws ec2 start-instances --instance-ids {}",
                old.id
            )),
            "{err}"
        );
    }
    assert!(
        bed.pushes().is_empty(),
        "no key may be accepted for a stopped instance"
    );
    // By name, the push is not even attempted.
    assert_eq!(bed.requests_for("SendSSHPublicKey").len(), 1);
}

#[test]
fn every_push_error_code_gets_its_own_message() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let cases = [
        (
            "AuthException",
            "not allowed to push a key",
            "ec2-instance-connect:SendSSHPublicKey",
        ),
        (
            "EC2InstanceNotFoundException",
            "cannot find instance",
            "check --region and --profile",
        ),
        (
            "EC2InstanceStateInvalidException",
            "is not running",
            "aws ec2 start-instances",
        ),
        (
            "EC2InstanceUnavailableException",
            "temporarily unavailable",
            "try again in a few seconds",
        ),
        (
            "InvalidArgsException",
            "rejected the request",
            "check the OS user name",
        ),
        (
            "ThrottlingException",
            "too many key pushes",
            "wait a few seconds",
        ),
        ("ServiceException", "internal error", "try again shortly"),
    ];
    for (code, message, hint) in cases {
        bed.fail_next("SendSSHPublicKey", code, 1);
        let mut c = eic(&bed);
        c.args(["web-1", "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(255), "{code}");
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("eic-connect: error: ") && first.contains(message),
            "{code}: {err}"
        );
        assert!(
            err.lines()
                .any(|l| l.starts_with("hint: ") && l.contains(hint)),
            "{code}: {err}"
        );
    }
    assert!(bed.pushes().is_empty());
    assert_clean(&bed);
    // The instance is still fine afterwards.
    let mut c = eic(&bed);
    c.args([&web.id, "true"]);
    assert!(run(c).status.success());
}

#[test]
fn every_lookup_error_code_gets_its_own_message() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let cases = [
        (
            "UnauthorizedOperation",
            "not authorized to call DescribeInstances",
            "ec2:DescribeInstances",
        ),
        (
            "AuthFailure",
            "did not accept the credentials",
            "aws sts get-caller-identity",
        ),
        (
            "InvalidClientTokenId",
            "did not accept the credentials",
            "aws configure",
        ),
        (
            "SignatureDoesNotMatch",
            "rejected the request signature",
            "clock",
        ),
        ("ExpiredToken", "expired", "aws sso login"),
        ("RequestExpired", "expired", "clock"),
        ("RequestLimitExceeded", "throttled", "wait a few seconds"),
        ("InternalError", "internal error", "try again shortly"),
        ("Unavailable", "internal error", "try again shortly"),
        ("OptInRequired", "not subscribed", "--region"),
        ("Blocked", "cannot use EC2", "AWS Support"),
        (
            "InvalidParameterValue",
            "rejected the DescribeInstances request",
            "bug",
        ),
    ];
    for (code, message, hint) in cases {
        bed.fail_next("DescribeInstances", code, 1);
        let mut c = eic(&bed);
        c.args(["web-1", "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(255), "{code}");
        let err = stderr(&out);
        assert!(
            err.lines().next().unwrap_or_default().contains(message),
            "{code}: {err}"
        );
        assert!(
            err.lines()
                .any(|l| l.starts_with("hint: ") && l.contains(hint)),
            "{code}: {err}"
        );
    }
    assert!(bed.requests_for("SendSSHPublicKey").is_empty());
}

#[test]
fn throttled_and_transient_push_errors_are_retried() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    for code in [
        "ThrottlingException",
        "EC2InstanceUnavailableException",
        "ServiceException",
    ] {
        bed.clear_records();
        bed.fail_next("SendSSHPublicKey", code, 2);
        let mut c = eic(&bed);
        c.env("AWS_MAX_ATTEMPTS", "3").args(["web-1", "echo ok"]);
        let out = run(c);
        assert!(out.status.success(), "{code}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ok\n");
        assert_eq!(bed.requests_for("SendSSHPublicKey").len(), 3, "{code}");
    }
}

#[test]
fn a_key_pushed_61_seconds_ago_is_refused() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.set_push_age(61);
    let mut c = eic(&bed);
    c.args(["-o", "BatchMode=yes", &web.id, "echo should-not-run"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(!stdout(&out).contains("should-not-run"));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(bed.pushes().len(), 1, "the push itself was accepted");

    // Still valid half-way through its 60 s (sshd asks for the keys twice
    // per login: the margin is for the real time a login takes).
    bed.set_push_age(30);
    let mut c = eic(&bed);
    c.args([&web.id, "echo still-valid"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "still-valid\n");
}

#[test]
fn the_private_key_never_touches_the_disk_and_the_runtime_dir_goes_away() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let d = bed.dir().display().to_string();
    let run_dir = bed.dir().join("run");
    // The "instance" is this machine, so the remote command can look at the
    // client side's files while the session is up.
    let probe = format!(
        "ls {rd}/eic-connect.*; grep -rIl -D skip 'PRIVATE KEY' {d}/home {d}/tmp {d}/run || echo no-private-key-files",
        rd = run_dir.display()
    );
    let mut c = eic(&bed);
    c.args([web.id.as_str(), &probe]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    let mut names: Vec<&str> = listing
        .lines()
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["agent.sock", "id.pub", "no-private-key-files"],
        "{listing}"
    );

    let leftovers: Vec<_> = std::fs::read_dir(&run_dir)
        .expect("run dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        leftovers.is_empty(),
        "runtime files left behind: {leftovers:?}"
    );
}

#[test]
fn ssh_options_pass_through_and_come_first() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let log = bed.dir().join("ssh.log");
    let mut c = eic(&bed);
    c.arg("-E")
        .arg(&log)
        .args(["-v", "-o", "HostKeyAlias=my-alias", &web.id, "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let ssh_log = std::fs::read_to_string(&log).expect("ssh wrote its -E log");
    assert!(ssh_log.contains("debug1:"), "-v reached ssh");
    assert!(known_host_entry(&bed, "my-alias"), "the user's -o wins");
    assert!(!known_host_entry(&bed, &web.id));
}

/// Whether eic-connect's known_hosts has an entry for `host` (entries may be
/// hashed, as Debian's ssh_config asks, so look them up with ssh-keygen).
fn known_host_entry(bed: &TestBed, host: &str) -> bool {
    let file = bed.home().join(".local/state/eic-connect/known_hosts");
    let out = Command::new("ssh-keygen")
        .arg("-F")
        .arg(host)
        .arg("-f")
        .arg(&file)
        .output()
        .expect("ssh-keygen");
    out.status.success() && !out.stdout.is_empty()
}

#[test]
fn known_hosts_entries_follow_the_instance_id() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args(["web-1", "true"]);
    assert!(run(c).status.success());
    let known_hosts =
        std::fs::read_to_string(bed.home().join(".local/state/eic-connect/known_hosts")).unwrap();
    assert_eq!(known_hosts.lines().count(), 1);
    assert!(known_host_entry(&bed, &web.id), "{known_hosts}");
    assert!(
        !known_host_entry(&bed, web.public_ip.as_deref().unwrap()),
        "keyed by id, not address"
    );
    // A second connection by another route reuses the entry.
    let mut c = eic(&bed);
    c.args([web.private_ip.as_str(), "true"]);
    assert!(run(c).status.success());
    let again =
        std::fs::read_to_string(bed.home().join(".local/state/eic-connect/known_hosts")).unwrap();
    assert_eq!(again, known_hosts);
}

#[test]
fn remote_command_arguments_arrive_unchanged() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args([
        &web.id,
        "--",
        "printf",
        "[%s]",
        "a  b",
        "it's",
        "$HOME",
        "",
        "semi;colon",
        "*",
    ]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "[a  b][it's][$HOME][][semi;colon][*]");

    // A single argument is a command line for the remote shell, as with ssh.
    let mut c = eic(&bed);
    c.args([&web.id, "echo $((6 * 7)) | tr 4 X"]);
    let out = run(c);
    assert_eq!(stdout(&out), "X2\n");
}

#[test]
fn hostile_input_is_refused_before_anything_runs() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let marker = bed.dir().join("pwned");
    let m = marker.display().to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["--".into(), format!("-oProxyCommand=touch {m}")],
        vec!["--".into(), format!("-oProxyCommand=touch {m}@web-1")],
        vec![
            "--os-user".into(),
            format!("-oProxyCommand=touch {m}"),
            "web-1".into(),
        ],
        vec![format!("$(touch {m})@web-1")],
        vec!["--".into(), "web\x1b]0;title\x07".into()],
        vec!["--".into(), "web\n1".into()],
    ];
    for args in cases {
        let mut c = bed.command();
        c.args(&args).arg("true");
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains('\x1b'),
            "raw escape echoed: {args:?}"
        );
    }
    assert!(!marker.exists());
    assert!(bed.requests().is_empty(), "no API call for unusable input");

    // Shell metacharacters in a name are just a name: looked up literally.
    let mut c = eic(&bed);
    c.args([&format!("web; touch {m}"), "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(!marker.exists());
    let describe = &bed.requests_for("DescribeInstances")[0];
    assert!(
        describe
            .params
            .values()
            .any(|v| v == &format!("web; touch {m}")),
        "{:?}",
        describe.params
    );
}

#[test]
fn hostile_tag_values_are_neutralised_on_the_terminal() {
    let bed = TestBed::start();
    let evil = "evil\x1b]0;pwned\x07\x1b[2J\u{202e}";
    bed.add_instance(InstanceSpec::named("dup").tag("Name", evil));
    bed.add_instance(InstanceSpec::named("dup"));
    let mut c = eic(&bed);
    c.args(["dup", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(err.contains("matches 2 instances"), "{err}");
    assert!(
        !err.contains('\x1b') && !err.contains('\x07') && !err.contains('\u{202e}'),
        "{err:?}"
    );
}

#[test]
fn dry_run_prints_the_plan_and_calls_nothing() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args(["--dry-run", "-p", "2222", "ubuntu@web-1", "uptime"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(
        plan.contains("DescribeInstances Filter tag:Name=web-1"),
        "{plan}"
    );
    assert!(
        plan.contains("SendSSHPublicKey InstanceId=<instance id> InstanceOSUser=ubuntu"),
        "{plan}"
    );
    let ssh_line = plan
        .lines()
        .find(|l| l.starts_with("ssh "))
        .expect("ssh line");
    assert!(
        ssh_line.starts_with("ssh -p 2222 -o IdentitiesOnly=yes"),
        "{ssh_line}"
    );
    assert!(
        ssh_line.ends_with("-l ubuntu -- '<instance address>' uptime"),
        "{ssh_line}"
    );
    assert!(!plan.contains("PRIVATE"));
    assert!(bed.requests().is_empty());
}

#[test]
fn verbose_output_shows_steps_and_no_secrets() {
    let bed = TestBed::start_with(support::BedOptions {
        session_token: Some("SESSIONTOKEN-abc123".into()),
        ..Default::default()
    });
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args(["-vvv", &web.id, "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("looked up instance and pushed key concurrently"),
        "{err}"
    );
    assert!(err.contains("starting ssh"), "{err}");
    assert!(err.contains("since_start_ms="), "{err}");
    assert!(!err.contains(bed.secret_access_key()), "secret key leaked");
    assert!(!err.contains("SESSIONTOKEN-abc123"), "session token leaked");
    assert!(!err.contains("PRIVATE KEY"));
    assert_clean(&bed);
}

#[test]
fn unreachable_and_slow_endpoints_fail_fast_with_advice() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = eic(&bed);
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .args(["web-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(err.contains("could not reach the AWS API"), "{err}");
    assert!(err.contains("hint: if AWS_ENDPOINT_URL"), "{err}");

    // Far beyond both the 0.5 s asked for and the 10 s default.
    bed.set_delay("DescribeInstances", Duration::from_secs(120));
    let mut c = eic(&bed);
    c.args(["--api-timeout", "0.5", "web-1", "true"]);
    let started = std::time::Instant::now();
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 0.5 s limit was not applied: {:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("DescribeInstances timed out"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--api-timeout"));
}

#[test]
fn missing_region_and_credentials_are_explained() {
    let bed = TestBed::start();
    let mut c = eic(&bed);
    c.env_remove("AWS_REGION").args(["web-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("no AWS region is configured"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: pass --region REGION"));

    let mut c = eic(&bed);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["web-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("no usable AWS credentials"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: configure credentials"));
    assert!(bed.requests().is_empty());
}

#[test]
fn region_and_profile_options_are_used() {
    let bed = TestBed::start_with(support::BedOptions {
        region: "eu-west-1".into(),
        ..Default::default()
    });
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    // The profile carries credentials and a wrong region; --region corrects it.
    std::fs::create_dir_all(bed.dir().join("aws")).unwrap();
    std::fs::write(
        bed.dir().join("aws/config"),
        format!(
            "[profile work]\nregion = us-west-2\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            bed.access_key_id(),
            bed.secret_access_key()
        ),
    )
    .unwrap();
    let mut c = eic(&bed);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .args([
            "--profile",
            "work",
            "--region",
            "eu-west-1",
            &web.id,
            "echo hi",
        ]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n");
    assert_clean(&bed);

    // Without --region the profile's region is used, and the stand-in (which
    // is eu-west-1) rejects the signature scope: proof the profile was read.
    let mut c = eic(&bed);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .args(["--profile", "work", &web.id, "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("region us-west-2, profile work"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn per_service_endpoint_variables_are_honoured() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = eic(&bed);
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .env("AWS_ENDPOINT_URL_EC2", bed.endpoint())
        .env("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT", bed.endpoint())
        .args([&web.id, "echo via-service-endpoints"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "via-service-endpoints\n");
}

#[test]
fn usage_errors_exit_2_and_ssh_failures_exit_255() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    for args in [
        vec!["--public", "--private", "web-1"],
        vec![],
        vec!["-l", "a", "b@web-1"],
    ] {
        let mut c = bed.command();
        c.args(&args);
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    // Pushed for one user, but the instance has no such account.
    let mut c = bed.command();
    c.args([
        "-p",
        &bed.sshd_port().to_string(),
        "-o",
        "BatchMode=yes",
        "-l",
        "nosuchuser",
        &web.id,
        "true",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
}

/// A remote command that prints "started", then runs for ten minutes unless
/// its connection goes away (its next write then ends it), so nothing is
/// left running on the instance after a test.
const LONG_COMMAND: &str =
    "echo started; n=0; while [ $n -lt 600 ] && printf .; do n=$((n+1)); sleep 1; done";

/// Starts `eic-connect ID LONG_COMMAND` and waits for "started".
fn start_session(
    bed: &TestBed,
    id: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut c = eic(bed);
    c.args([id, LONG_COMMAND])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn eic-connect");
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    assert_eq!(line, "started\n");
    (child, reader)
}

fn runtime_entries(bed: &TestBed) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(bed.dir().join("run"))
        .expect("run dir")
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[test]
fn sigterm_is_passed_to_ssh_and_the_runtime_dir_is_removed() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let (mut child, _out) = start_session(&bed, &web.id);
    assert_eq!(
        runtime_entries(&bed).len(),
        1,
        "a runtime dir exists during the session"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Only a hang takes this long; the remote command takes far longer.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ssh did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // ssh reports being killed by a signal with 255; eic-connect passes it on.
    assert_eq!(status.code(), Some(255), "{status:?}");
    assert!(
        runtime_entries(&bed).is_empty(),
        "{:?}",
        runtime_entries(&bed)
    );
}

#[test]
fn after_sigkill_no_secret_remains_and_the_next_run_sweeps_up() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let (mut child, _out) = start_session(&bed, &web.id);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let left = runtime_entries(&bed);
    assert_eq!(left.len(), 1, "SIGKILL leaves the directory: {left:?}");
    let mut files: Vec<String> = std::fs::read_dir(&left[0])
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["agent.sock", "id.pub"],
        "only a socket and the public key"
    );
    let public = std::fs::read_to_string(left[0].join("id.pub")).unwrap();
    assert!(public.starts_with("ssh-ed25519 ") && !public.contains("PRIVATE"));

    let mut c = eic(&bed);
    c.args([&web.id, "true"]);
    assert!(run(c).status.success());
    assert!(
        runtime_entries(&bed).is_empty(),
        "stale dir swept: {:?}",
        runtime_entries(&bed)
    );
}

#[test]
fn throttled_lookups_are_retried() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    bed.fail_next("DescribeInstances", "RequestLimitExceeded", 2);
    let mut c = eic(&bed);
    c.env("AWS_MAX_ATTEMPTS", "3").args(["web-1", "echo ok"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bed.requests_for("DescribeInstances").len(), 3);
}

#[test]
fn ssh_dash_g_prints_config_without_calling_aws() {
    // git runs `$GIT_SSH_COMMAND -G host` to learn what kind of ssh it has.
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args(["-G", "web-1"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hostname web-1"), "{}", stdout(&out));
    assert!(bed.requests().is_empty());
}

#[test]
fn the_ami_guess_is_remembered_so_the_next_connection_pushes_at_once() {
    let bed = TestBed::start();
    let ubuntu = bed.register_ubuntu_image();
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id(ubuntu));
    let fake_ssh = |bed: &TestBed| {
        let mut c = bed.command();
        c.env("EIC_CONNECT_SSH", "true").args(["-v", &web.id]);
        c
    };
    assert!(run(fake_ssh(&bed)).status.success());
    let first: Vec<String> = bed.requests().iter().map(|r| r.action.clone()).collect();
    assert_eq!(
        first,
        ["DescribeInstances", "DescribeImages", "SendSSHPublicKey"]
    );
    bed.clear_records();
    let out = run(fake_ssh(&bed));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("remembered"), "{}", stderr(&out));
    assert!(bed.requests_for("DescribeImages").is_empty());
    assert_eq!(bed.pushes()[0].os_user, "ubuntu");
    assert!(stderr(&out).contains("looked up instance and pushed key concurrently"));
}
