//! `eic-connect policy`: the IAM policy printed grants every action the
//! real binary calls for each capability, against the bed, and no other —
//! for every combination of capabilities.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use support::api::Service;
use support::cmd::{assert_signed, eic, run, stderr, stdout};
use support::eice::EndpointSpec;
use support::policy_eval::allows;
use support::{InstanceSpec, TestBed};

const ACCOUNT: &str = "123456789012";

/// eic-connect logging in as the bed's user on port 22 (the endpoint and
/// Session Manager stand-ins map it to the bed's sshd).
fn login(bed: &TestBed) -> Command {
    let mut c = bed.command();
    c.args(["-l", &bed.os_user()]).stdin(Stdio::null());
    c
}

/// The IAM action of every call the bed answered, refused ones included.
fn actions_called(bed: &TestBed) -> BTreeSet<String> {
    let mut called: BTreeSet<String> = bed
        .requests()
        .iter()
        .map(|call| {
            let service = match call.service {
                Service::Ec2 => "ec2",
                Service::InstanceConnect => "ec2-instance-connect",
                Service::Ssm => "ssm",
                Service::CloudTrail => "cloudtrail",
                Service::Iam => "iam",
                Service::Sts => "sts",
            };
            format!("{service}:{}", call.action)
        })
        .collect();
    if !bed.tunnels().is_empty() || !bed.tunnel_rejections().is_empty() {
        called.insert("ec2-instance-connect:OpenTunnel".to_owned());
    }
    called
}

#[track_caller]
fn assert_ran(c: Command, expect: &str) {
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), expect, "{}", stderr(&out));
}

/// What each capability makes eic-connect call, by really doing it.
fn observe(capability: &str) -> BTreeSet<String> {
    let bed = TestBed::start();
    let user = bed.os_user();
    match capability {
        // Connecting, with the OS user given and guessed from the AMI
        // (the guess, ec2-user, is not a user on the bed: only the calls
        // count), and `run` over a tag filter.
        "connect" => {
            bed.add_instance(InstanceSpec::named("web-1").tag("Team", "web"));
            // (First: a successful login is remembered, and then nothing
            // is guessed.)
            let mut c = bed.command();
            c.args(["-p", &bed.sshd_port().to_string(), "web-1", "--", "true"])
                .stdin(Stdio::null());
            run(c);
            assert_eq!(bed.requests_for("DescribeImages").len(), 1);
            let mut c = eic(&bed);
            c.args(["web-1", "--", "echo", "in"]);
            assert_ran(c, "in\n");
            let mut c = bed.command();
            c.args(["run", "-l", &user, "-p", &bed.sshd_port().to_string()])
                .args(["-f", "tag:Team=web", "--", "echo", "ran"])
                .stdin(Stdio::null());
            let out = run(c);
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(stdout(&out).contains("ran"), "{}", stdout(&out));
        }
        "endpoint" => {
            bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
            bed.add_endpoint(EndpointSpec::default());
            let mut c = login(&bed);
            c.args(["db-1", "--", "echo", "tunnelled"]);
            assert_ran(c, "tunnelled\n");
            assert_eq!(bed.tunnels().len(), 1);
        }
        "session-manager" => {
            bed.add_instance(InstanceSpec::named("app-1").public_ip(false).managed(true));
            let mut c = login(&bed);
            c.args(["app-1", "--", "echo", "managed"]);
            assert_ran(c, "managed\n");
            bed.wait_for_ssm_sessions_closed(1, std::time::Duration::from_secs(10));
        }
        "start" => {
            bed.add_instance(InstanceSpec::named("web-1").state("stopped"));
            let mut c = eic(&bed);
            c.args(["--start", "web-1", "--", "echo", "started"]);
            assert_ran(c, "started\n");
        }
        "verify-host-key" => {
            let web = bed.add_instance(InstanceSpec::named("web-1"));
            bed.set_console_output(&web.id, &bed.host_key_console());
            let mut c = eic(&bed);
            c.args(["--verify-host-key", "web-1", "--", "echo", "pinned"]);
            assert_ran(c, "pinned\n");
        }
        // The bed's sshd is no serial console: the key push and the host
        // key check are what count (ssh then fails to log in).
        "serial" => {
            let web = bed.add_instance(InstanceSpec::named("web-1"));
            let mut c = bed.command();
            c.env(
                "EIC_CONNECT_SERIAL_HOST",
                format!("127.0.2.1:{}", bed.sshd_port()),
            )
            .env("EIC_CONNECT_SERIAL_FINGERPRINT", bed.host_key_fingerprint())
            .stdin(Stdio::null())
            .args(["serial", "web-1"]);
            run(c);
            assert_eq!(bed.serial_pushes().len(), 1);
            assert_eq!(bed.serial_pushes()[0].instance_id, web.id);
        }
        // Who connected to web-1, after connecting to it.
        "audit" => {
            bed.add_instance(InstanceSpec::named("web-1"));
            let mut c = eic(&bed);
            c.args(["web-1", "--", "true"]);
            assert_ran(c, "");
            bed.clear_records();
            let mut c = bed.command();
            c.args(["audit", "web-1", "--json"]).stdin(Stdio::null());
            let out = run(c);
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(
                stdout(&out).contains("SendSSHPublicKey"),
                "{}",
                stdout(&out)
            );
        }
        // doctor for a public instance and a private one (no endpoint, not
        // managed: both lookups come back empty), as an assumed role.
        "doctor" => {
            bed.add_instance(InstanceSpec::named("web-1"));
            bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
            bed.iam_assumed_role("developers", "/team/", "me");
            // (Port 22 for the private one: endpoints carry only 22 and
            // 3389, so only then does doctor look for one.)
            let port = bed.sshd_port().to_string();
            for (target, port) in [("web-1", port.as_str()), ("db-1", "22")] {
                let mut c = bed.command();
                c.args(["doctor", "-l", &user, "-p", port, target])
                    .stdin(Stdio::null());
                let out = run(c);
                assert!(stdout(&out).contains("iam"), "{}", stdout(&out));
            }
        }
        other => panic!("no scenario for {other}"),
    }
    assert_signed(&bed);
    actions_called(&bed)
}

/// The actions a printed policy grants.
fn granted(policy: &serde_json::Value) -> BTreeSet<String> {
    policy["Statement"]
        .as_array()
        .expect("Statement is a list")
        .iter()
        .flat_map(|s| s["Action"].as_array().expect("Action is a list").clone())
        .map(|a| a.as_str().expect("actions are strings").to_owned())
        .collect()
}

fn policy(bed: &TestBed, args: &[&str]) -> serde_json::Value {
    let mut c = bed.command();
    c.args(["policy", "--account", ACCOUNT]).args(args);
    let out = run(c);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// For every combination of capabilities, the policy printed grants
/// exactly the actions eic-connect called for them against the bed:
/// nothing it needs is missing, nothing it does not call is granted.
#[test]
fn every_combination_grants_exactly_the_actions_called() {
    // (capability, the option that adds it to the policy)
    let optional = [
        ("endpoint", &["--endpoint", "any"][..]),
        ("session-manager", &["--session-manager"][..]),
        ("start", &["--start"][..]),
        ("verify-host-key", &["--verify-host-key"][..]),
        ("serial", &["--serial"][..]),
        ("audit", &["--audit"][..]),
        ("doctor", &["--doctor"][..]),
    ];
    let base = observe("connect");
    let seen: Vec<BTreeSet<String>> = optional.iter().map(|(name, _)| observe(name)).collect();
    for (n, (name, _)) in optional.iter().enumerate() {
        eprintln!("{name}: {:?}", seen[n]);
    }
    eprintln!("connect: {base:?}");
    for (n, (name, _)) in optional.iter().enumerate() {
        assert!(
            !seen[n].is_subset(&base),
            "{name} calls nothing beyond connecting: {:?}",
            seen[n]
        );
    }
    // The policy needs no AWS call when the account is given and
    // instances are named by id.
    let bed = TestBed::start();
    for mask in 0..(1u32 << optional.len()) {
        let mut args: Vec<&str> = Vec::new();
        let mut expected = base.clone();
        for (n, (_, option)) in optional.iter().enumerate() {
            if mask & (1 << n) != 0 {
                args.extend_from_slice(option);
                expected.extend(seen[n].iter().cloned());
            }
        }
        let printed = policy(&bed, &args);
        assert_eq!(granted(&printed), expected, "{args:?}\n{printed:#}");
    }
    assert!(bed.requests().is_empty(), "{:?}", bed.requests());
}

/// Named instances become their ids; tags, OS users, endpoints, ports,
/// addresses and the tunnel duration (from the config file) become
/// conditions. Only the Name lookup is a call.
#[test]
fn targets_and_limits_become_resources_and_conditions() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let dir = bed.home().join(".config/eic-connect");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "max-tunnel-duration = 600\n").unwrap();
    let other = "i-0123456789abcdef0";
    let endpoint = "eice-0fedcba9876543210";
    let printed = policy(
        &bed,
        &[
            "web-1",
            other,
            "--tag",
            "Team=web",
            "--tag",
            "Env=dev-*",
            "-l",
            "ec2-user",
            "--os-user",
            "ubuntu",
            "--endpoint",
            endpoint,
            "--tunnel-port",
            "22",
            "--tunnel-port",
            "3389",
            "--private-ip",
            "10.0.0.0/16",
            "--session-manager",
        ],
    );
    let region = bed.region();
    let statement = |sid: &str| -> serde_json::Value {
        printed["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("no {sid}: {printed:#}"))
            .clone()
    };
    let mut ids = [web.id.as_str(), other];
    ids.sort_unstable();
    let instance_arns: Vec<String> = ids
        .iter()
        .map(|id| format!("arn:aws:ec2:{region}:{ACCOUNT}:instance/{id}"))
        .collect();
    let push = statement("EicConnectPushKeys");
    assert_eq!(
        push["Action"],
        serde_json::json!(["ec2-instance-connect:SendSSHPublicKey"])
    );
    assert_eq!(push["Resource"], serde_json::json!(instance_arns));
    assert_eq!(
        push["Condition"],
        serde_json::json!({
            "StringEquals": {"aws:ResourceTag/Team": ["web"], "ec2:osuser": ["ec2-user", "ubuntu"]},
            "StringLike": {"aws:ResourceTag/Env": ["dev-*"]},
        })
    );
    let tunnel = statement("EicConnectOpenTunnels");
    assert_eq!(
        tunnel["Resource"],
        serde_json::json!([format!(
            "arn:aws:ec2:{region}:{ACCOUNT}:instance-connect-endpoint/{endpoint}"
        )])
    );
    assert_eq!(
        tunnel["Condition"],
        serde_json::json!({
            "NumericEquals": {"ec2-instance-connect:remotePort": ["22", "3389"]},
            "IpAddress": {"ec2-instance-connect:privateIpAddress": ["10.0.0.0/16"]},
            "NumericLessThanEquals": {"ec2-instance-connect:maxTunnelDuration": ["600"]},
        })
    );
    let sessions = statement("EicConnectSessionsToInstances");
    assert_eq!(sessions["Resource"], serde_json::json!(instance_arns));
    assert_eq!(
        sessions["Condition"]["StringEquals"],
        serde_json::json!({"ssm:resourceTag/Team": ["web"]})
    );
    assert_eq!(
        statement("EicConnectSessionDocument")["Resource"],
        serde_json::json!([format!(
            "arn:aws:ssm:{region}::document/AWS-StartSSHSession"
        )])
    );
    assert_eq!(
        statement("EicConnectLookups")["Resource"],
        serde_json::json!(["*"])
    );
    // The Name lookup, and nothing else.
    let calls: Vec<String> = bed.requests().iter().map(|c| c.action.clone()).collect();
    assert_eq!(calls, ["DescribeInstances"]);
    assert_signed(&bed);
}

/// Instance ids and --account need no AWS call; --all-regions needs no
/// region either; --compact prints one line.
#[test]
fn ids_and_an_account_need_no_call() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.env_remove("AWS_REGION")
        .env("AWS_CONFIG_FILE", bed.home().join("no-such-file"))
        .args(["policy", "--all-regions", "--account", "*", "--compact"])
        .arg("i-0123456789abcdef0");
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("\"arn:aws:ec2:*:*:instance/i-0123456789abcdef0\""),
        "{text}"
    );
    // What the reader should know goes to stderr, never into the document.
    assert!(stderr(&out).contains("any OS user"), "{}", stderr(&out));
    assert!(bed.requests().is_empty());
}

/// Bad input is refused before any call, and says why.
#[test]
fn bad_input_is_refused_before_any_call() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    for (args, says) in [
        (&["--tag", "Team"][..], "is not KEY=VALUE"),
        (&["--tag", "=web"][..], "is not KEY=VALUE"),
        (
            &["--tag", "T=\u{1b}[31m"][..],
            "has characters a tag cannot hold",
        ),
        (&["-l", "bad user"][..], "is not a valid OS user name"),
        (
            &["--endpoint", "eice-123"][..],
            "is not an EC2 Instance Connect Endpoint id",
        ),
        (&["--private-ip", "10.0.0.0/8"][..], "--endpoint"),
        (
            &["--tunnel-port", "0", "--endpoint", "any"][..],
            "is not a port",
        ),
        (&["--private-ip", "ten", "--endpoint", "any"][..], "ten"),
    ] {
        let mut c = bed.command();
        c.args(["policy", "--account", ACCOUNT, "web-1"]).args(args);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains('\u{1b}'), "{args:?}: {err:?}");
        assert!(stdout(&out).is_empty());
    }
    let mut c = bed.command();
    c.args(["policy", "--account", "12345", "web-1"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not an AWS account id"),
        "{}",
        stderr(&out)
    );
    assert!(bed.requests().is_empty(), "{:?}", bed.requests());
}

/// A name that matches no instance, or several, is an error (as when
/// connecting), and no policy is printed.
#[test]
fn unknown_and_ambiguous_names_print_no_policy() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web"));
    bed.add_instance(InstanceSpec::named("web"));
    for (name, says) in [
        ("db-1", "no instance matches"),
        ("web", "matches 2 instances"),
    ] {
        let mut c = bed.command();
        c.args(["policy", "--account", ACCOUNT, name]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}

/// A policy narrowed to one team's instances, one OS user, one endpoint
/// and one address allows every call eic-connect made for each capability
/// (each with the resource and condition keys AWS authorises it by), and
/// refuses the same calls for another user, another team's instance,
/// another port, another address or another endpoint.
#[test]
fn a_narrowed_policy_allows_every_call_made_and_nothing_beside() {
    let bed = TestBed::start();
    let user = bed.os_user();
    let web = bed.add_instance(InstanceSpec::named("web-1").tag("Team", "web"));
    let db = bed.add_instance(
        InstanceSpec::named("db-1")
            .tag("Team", "web")
            .public_ip(false),
    );
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    bed.add_instance(
        InstanceSpec::named("app-1")
            .tag("Team", "web")
            .public_ip(false)
            .managed(true),
    );
    bed.set_console_output(&web.id, &bed.host_key_console());
    let mut steps: Vec<(Vec<&str>, &str)> = vec![
        (vec!["web-1", "--", "echo", "direct"], "direct\n"),
        (
            vec!["--verify-host-key", "web-1", "--", "echo", "pinned"],
            "pinned\n",
        ),
        (vec!["db-1", "--", "echo", "tunnelled"], "tunnelled\n"),
        (
            vec!["--connect", "ssm", "app-1", "--", "echo", "managed"],
            "managed\n",
        ),
    ];
    for (args, expect) in steps.drain(..) {
        let mut c = login(&bed);
        if !args.contains(&"db-1") && !args.contains(&"app-1") {
            c.args(["-p", &bed.sshd_port().to_string()]);
        }
        c.args(&args);
        assert_ran(c, expect);
    }
    bed.set_state(&web.id, "stopped");
    let mut c = eic(&bed);
    c.args(["--start", "web-1", "--", "echo", "started"]);
    assert_ran(c, "started\n");
    let mut c = bed.command();
    c.env(
        "EIC_CONNECT_SERIAL_HOST",
        format!("127.0.2.1:{}", bed.sshd_port()),
    )
    .env("EIC_CONNECT_SERIAL_FINGERPRINT", bed.host_key_fingerprint())
    .stdin(Stdio::null())
    .args(["serial", "web-1"]);
    run(c);
    bed.wait_for_ssm_sessions_closed(1, std::time::Duration::from_secs(10));
    let mut c = bed.command();
    c.args([
        "doctor",
        "-l",
        &user,
        "-p",
        &bed.sshd_port().to_string(),
        "web-1",
    ])
    .stdin(Stdio::null());
    let out = run(c);
    // (The bed's security group does not open its sshd's port: only the
    // calls count.)
    assert!(stdout(&out).contains("PASS  iam"), "{}", stdout(&out));
    assert_signed(&bed);

    let authorizations = bed.authorizations();
    let mut c = bed.command();
    let cidr = format!("{}/32", db.private_ip);
    c.args(["policy", "--tag", "Team=web", "-l", &user])
        .args(["--endpoint", &endpoint.id, "--private-ip", &cidr])
        .args([
            "--session-manager",
            "--start",
            "--verify-host-key",
            "--serial",
            "--doctor",
        ]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    // The account came from GetCallerIdentity.
    assert!(
        stdout(&out).contains(&format!(":{}:instance/*", bed.account_id())),
        "{printed:#}"
    );

    assert_eq!(
        bed.requests().last().map(|c| c.action.as_str()),
        Some("GetCallerIdentity")
    );
    let vars = std::collections::BTreeMap::from([("aws:username", "eic-test")]);
    let actions: BTreeSet<&str> = authorizations.iter().map(|a| a.action.as_str()).collect();
    for needed in [
        "ec2-instance-connect:SendSSHPublicKey",
        "ec2-instance-connect:OpenTunnel",
        "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
        "ec2:StartInstances",
        "ec2:GetConsoleOutput",
        "ssm:StartSession",
        "ssm:TerminateSession",
        "iam:SimulatePrincipalPolicy",
    ] {
        assert!(
            actions.contains(needed),
            "{needed} was not called: {actions:?}"
        );
    }
    let mut refused = 0;
    for auth in &authorizations {
        assert!(
            allows(&printed, auth, &vars),
            "refused: {auth:#?}\n{printed:#}"
        );
        let mut others = Vec::new();
        for (key, other) in [
            ("ec2:osuser", "someone-else"),
            ("aws:ResourceTag/Team", "payroll"),
            ("ssm:resourceTag/Team", "payroll"),
            ("ec2-instance-connect:remotePort", "23"),
            ("ec2-instance-connect:privateIpAddress", "10.9.9.9"),
            ("ec2-instance-connect:maxTunnelDuration", "3601"),
        ] {
            if auth.context.contains_key(key) && key != "ec2-instance-connect:maxTunnelDuration" {
                others.push(auth.with(key, other));
            }
        }
        if auth.resource.contains(&endpoint.id) {
            let mut other = auth.clone();
            other.resource = auth
                .resource
                .replace(&endpoint.id, "eice-0aaaaaaaaaaaaaaaa");
            others.push(other);
        }
        if auth.resource.contains(":session/") {
            let mut other = auth.clone();
            other.resource = auth
                .resource
                .replace("session/eic-test-", "session/someone-");
            others.push(other);
        }
        for other in others {
            refused += 1;
            assert!(
                !allows(&printed, &other, &vars),
                "allowed: {other:#?}\n{printed:#}"
            );
        }
    }
    assert!(refused >= 6, "{refused} refusals checked");
}
