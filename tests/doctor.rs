//! `eic-connect doctor`: each failure mode on a stand-in instance built to
//! have it, the healthy case, the `--json` shape, and the Session Manager
//! path (the bed's stand-in: DescribeInstanceInformation, StartSession,
//! TerminateSession).

mod support;

use support::cmd::{stderr, stdout};

use std::process::{Command, Output, Stdio};

use support::diag::SgRule;
use support::eice::EndpointSpec;
use support::{InstanceSpec, TestBed};

const UBUNTU_AMI: &str = "ami-0a000000000000004";

fn bed() -> TestBed {
    let bed = TestBed::start();
    bed.register_image(
        UBUNTU_AMI,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
        "Canonical, Ubuntu, 22.04 LTS",
        "Linux/UNIX",
    );
    // The instances' sshd listens on the bed's port, not 22: open that too.
    let port = i32::from(bed.sshd_port());
    bed.set_security_group(
        &bed.security_group_id(),
        vec![
            SgRule::tcp(22, 22).allow_cidr("0.0.0.0/0"),
            SgRule::tcp(port, port).allow_cidr("0.0.0.0/0"),
        ],
    );
    bed
}

fn healthy(bed: &TestBed, name: &str) -> support::Instance {
    let inst = bed.add_instance(InstanceSpec::named(name).image_id(UBUNTU_AMI));
    bed.set_console_output(&inst.id, &bed.host_key_console());
    inst
}

fn doctor(bed: &TestBed, args: &[&str]) -> Output {
    let mut c: Command = bed.command();
    c.arg("doctor")
        .args(["-p", &bed.sshd_port().to_string()])
        .args(args)
        .stdin(Stdio::null());
    c.output().expect("run eic-connect doctor")
}

/// The `(status, detail)` of one check, from `--json` output.
fn check(json: &serde_json::Value, name: &str) -> (String, String, Option<String>) {
    let c = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {json}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["detail"].as_str().unwrap().to_owned(),
        c["fix"].as_str().map(str::to_owned),
    )
}

fn doctor_json(bed: &TestBed, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = doctor(bed, &all);
    let json = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(&out), stderr(&out)));
    (out.status.code(), json)
}

#[test]
fn a_healthy_instance_passes_every_check() {
    let bed = bed();
    let web = healthy(&bed, "web-1");
    let out = doctor(&bed, &["web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.starts_with(&format!(
            "eic-connect doctor: {} (\"web-1\"), region us-east-1\n",
            web.id
        )),
        "{text}"
    );
    for name in [
        "instance",
        "path",
        "security-group",
        "port",
        "metadata",
        "os-user",
        "push",
        "host-keys",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("PASS") && l.contains(&format!(" {name} "))),
            "{name} did not pass:\n{text}"
        );
    }
    // Session Manager does not manage it: worth a note, not a warning, on
    // a direct path; and no session is tried.
    assert!(
        text.contains(&format!(
            "NOTE  session-manager {} is not managed by Session Manager",
            web.id
        )),
        "{text}"
    );
    assert!(
        text.contains("SKIP  session         Session Manager is not the path"),
        "{text}"
    );
    assert!(bed.ssm_sessions().is_empty());
    assert!(text.contains("All checks passed."), "{text}");
    assert!(
        text.contains("note: your address was taken to be 127.0.0.1"),
        "{text}"
    );
    // The push was real, for the guessed user, with a throwaway key.
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].os_user, "ubuntu");
    assert!(bed.signature_failures().is_empty());
}

#[test]
fn json_output_has_a_stable_shape() {
    let bed = bed();
    let web = healthy(&bed, "web-1");
    let (code, json) = doctor_json(&bed, &["--source-ip", "198.51.100.7", &web.id]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ok"], true);
    assert_eq!(json["target"], web.id.as_str());
    assert_eq!(json["instance_id"], web.id.as_str());
    assert_eq!(json["name"], "web-1");
    assert_eq!(json["region"], "us-east-1");
    assert_eq!(json["path"], "direct");
    assert_eq!(json["address"], web.public_ip.as_deref().unwrap());
    assert_eq!(json["endpoint"], serde_json::Value::Null);
    assert_eq!(json["os_user"], "ubuntu");
    assert_eq!(json["source"]["address"], "198.51.100.7");
    assert_eq!(json["source"]["how"], "given with --source-ip");
    let names: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "instance",
            "path",
            "session-manager",
            "session",
            "security-group",
            "port",
            "metadata",
            "os-user",
            "package",
            "iam",
            "push",
            "host-keys"
        ]
    );
    for c in json["checks"].as_array().unwrap() {
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["detail", "fix", "name", "status"], "{c}");
    }
}

#[test]
fn a_stopped_instance_fails_with_how_to_start_it() {
    let bed = bed();
    let web = bed.add_instance(
        InstanceSpec::named("web-1")
            .state("stopped")
            .image_id(UBUNTU_AMI),
    );
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(1));
    assert_eq!(json["ok"], false);
    let (status, detail, fix) = check(&json, "instance");
    assert_eq!(status, "fail");
    assert!(detail.contains("is stopped"), "{detail}");
    assert_eq!(
        fix.unwrap(),
        format!(
            "start it: aws ec2 start-instances --instance-ids {}",
            web.id
        )
    );
    assert_eq!(check(&json, "push").0, "skip");
    assert!(bed.pushes().is_empty());
}

#[test]
fn an_unknown_instance_fails_and_skips_the_rest() {
    let bed = bed();
    let out = doctor(&bed, &["i-0123456789abcdef0"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  instance        no instance matches instance id i-0123456789abcdef0"),
        "{text}"
    );
    assert!(text.contains("fix: check --region and --profile"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("SKIP")).count(),
        11,
        "{text}"
    );
    assert!(text.ends_with("1 check failed.\n"), "{text}");
}

#[test]
fn no_public_address_endpoint_or_agent_goes_direct_with_a_warning() {
    let bed = bed();
    let db = bed.add_instance(
        InstanceSpec::named("db-1")
            .public_ip(false)
            .image_id(UBUNTU_AMI),
    );
    let (code, json) = doctor_json(&bed, &["db-1"]);
    // As connect would: straight to the private address, which answers here.
    assert_eq!(code, Some(0), "{json}");
    let (status, detail, fix) = check(&json, "path");
    assert_eq!(status, "warn", "{json}");
    assert_eq!(
        detail,
        format!(
            "no public IPv4 address, no endpoint carries port {} and Session Manager does not manage it: \
             direct to {}, reachable only from inside the VPC, a peered network or a VPN",
            bed.sshd_port(),
            db.private_ip
        )
    );
    let fix = fix.unwrap();
    assert!(fix.contains("create-instance-connect-endpoint"), "{fix}");
    assert!(
        fix.contains("let Session Manager manage the instance"),
        "{fix}"
    );
    assert_eq!(json["path"], "direct");
    assert_eq!(json["address"], db.private_ip.as_str());
    assert_eq!(check(&json, "port").0, "pass");
    assert_eq!(check(&json, "session-manager").0, "note");
    assert!(bed.ssm_sessions().is_empty());
}

#[test]
fn a_security_group_without_port_22_fails_with_the_rule_to_add() {
    let bed = bed();
    healthy(&bed, "web-1");
    let port = bed.sshd_port();
    bed.set_security_group(
        &bed.security_group_id(),
        vec![
            SgRule::tcp(80, 80).allow_cidr("0.0.0.0/0"),
            SgRule::tcp(443, 443).allow_cidr("0.0.0.0/0"),
        ],
    );
    let (code, json) = doctor_json(&bed, &["--source-ip", "198.51.100.7", "web-1"]);
    assert_eq!(code, Some(1), "{json}");
    let (status, detail, fix) = check(&json, "security-group");
    assert_eq!(status, "fail");
    assert_eq!(
        detail,
        format!(
            "port {port} is not open to any source in {}",
            bed.security_group_id()
        )
    );
    assert_eq!(
        fix.unwrap(),
        format!(
            "aws ec2 authorize-security-group-ingress --group-id {} --protocol tcp --port {port} --cidr 198.51.100.7/32",
            bed.security_group_id()
        )
    );
}

#[test]
fn a_security_group_open_to_other_addresses_fails_for_the_caller() {
    let bed = bed();
    healthy(&bed, "web-1");
    let port = bed.sshd_port() as i32;
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(port, port).allow_cidr("203.0.113.0/24")],
    );
    let (code, json) = doctor_json(&bed, &["--source-ip", "198.51.100.7", "web-1"]);
    assert_eq!(code, Some(1));
    let (status, detail, _) = check(&json, "security-group");
    assert_eq!(status, "fail");
    assert!(
        detail.contains("203.0.113.0/24, which does not include 198.51.100.7"),
        "{detail}"
    );
    let (code, json) = doctor_json(&bed, &["--source-ip", "203.0.113.9", "web-1"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(check(&json, "security-group").0, "pass");
    // Open only to the EC2 console's prefix list: the browser can, we can't.
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(port, port).allow_prefix_list(bed.console_prefix_list_id())],
    );
    let (_, json) = doctor_json(&bed, &["--source-ip", "203.0.113.9", "web-1"]);
    let (status, detail, _) = check(&json, "security-group");
    assert_eq!(status, "fail");
    assert!(
        detail.contains("only to the EC2 console's prefix list"),
        "{detail}"
    );
}

#[test]
fn a_closed_port_fails_the_port_check() {
    let bed = bed();
    healthy(&bed, "web-1");
    // Nothing listens on port 1 of the instance's address.
    let out = bed
        .command()
        .args(["doctor", "-p", "1", "web-1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("refused the connection: nothing listens on port 1"),
        "{text}"
    );
}

#[test]
fn disabled_instance_metadata_fails_with_the_command_to_enable_it() {
    let bed = bed();
    let web = bed.add_instance(
        InstanceSpec::named("web-1")
            .metadata_http_endpoint("disabled")
            .image_id(UBUNTU_AMI),
    );
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(1));
    let (status, _, fix) = check(&json, "metadata");
    assert_eq!(status, "fail");
    assert_eq!(
        fix.unwrap(),
        format!(
            "aws ec2 modify-instance-metadata-options --instance-id {} --http-endpoint enabled",
            web.id
        )
    );
}

#[test]
fn a_denied_push_fails_with_the_missing_permission() {
    let bed = bed();
    healthy(&bed, "web-1");
    bed.fail_next("SendSSHPublicKey", "AuthException", 1);
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(1));
    let (status, detail, fix) = check(&json, "push");
    assert_eq!(status, "fail");
    assert!(detail.contains("not allowed to push a key"), "{detail}");
    assert!(detail.contains("as OS user ubuntu"), "{detail}");
    let fix = fix.unwrap();
    assert!(
        fix.contains("ec2-instance-connect:SendSSHPublicKey"),
        "{fix}"
    );
    assert!(fix.contains("ec2:osuser"), "{fix}");
}

#[test]
fn os_user_guess_and_a_user_that_disagrees_with_the_ami() {
    let bed = bed();
    healthy(&bed, "web-1");
    let plain = bed.add_instance(InstanceSpec::named("plain"));
    bed.set_console_output(&plain.id, &bed.host_key_console());
    let (_, json) = doctor_json(&bed, &["web-1"]);
    let (status, detail, _) = check(&json, "os-user");
    assert_eq!(status, "pass");
    assert!(
        detail.starts_with("ubuntu: guessed from the AMI name"),
        "{detail}"
    );
    let (code, json) = doctor_json(&bed, &["-l", "admin", "web-1"]);
    assert_eq!(code, Some(0), "a warning is not a failure: {json}");
    let (status, detail, fix) = check(&json, "os-user");
    assert_eq!(status, "warn");
    assert!(
        detail.starts_with("admin (from -l), but the AMI suggests ubuntu"),
        "{detail}"
    );
    assert_eq!(fix.unwrap(), "if login fails, try -l ubuntu");
    assert_eq!(bed.pushes().last().unwrap().os_user, "admin");
    let (_, json) = doctor_json(&bed, &["plain"]);
    let (status, detail, _) = check(&json, "os-user");
    assert_eq!(status, "warn");
    assert!(detail.starts_with("ec2-user: the default"), "{detail}");
}

#[test]
fn a_console_without_host_keys_is_a_warning() {
    let bed = bed();
    bed.add_instance(InstanceSpec::named("web-1").image_id(UBUNTU_AMI));
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "{json}");
    let (status, detail, fix) = check(&json, "host-keys");
    assert_eq!(status, "warn");
    assert!(detail.contains("--verify-host-key cannot pin"), "{detail}");
    assert!(fix.unwrap().contains("--allow-unverified"));
}

// ---------------------------------------------------------- Session Manager

/// A private-only instance that Session Manager manages, its agent `ping`.
fn managed(bed: &TestBed, name: &str, ping: &str) -> support::Instance {
    let inst = bed.add_instance(
        InstanceSpec::named(name)
            .public_ip(false)
            .managed(true)
            .ssm_ping(ping)
            .image_id(UBUNTU_AMI),
    );
    bed.set_console_output(&inst.id, &bed.host_key_console());
    inst
}

/// The one line of a check in the text report.
#[track_caller]
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|r| r.starts_with(&format!("{name} ")))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

#[track_caller]
fn assert_clean(bed: &TestBed) {
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
    assert!(
        bed.ssm_violations().is_empty(),
        "{:?}",
        bed.ssm_violations()
    );
}

#[test]
fn without_public_ip_or_endpoint_a_managed_instance_is_checked_through_session_manager() {
    let bed = bed();
    let db = managed(&bed, "db-1", "Online");
    // No inbound rule at all: Session Manager needs none.
    bed.set_security_group(&bed.security_group_id(), vec![]);
    let out = doctor(&bed, &["db-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert_eq!(
        line(&text, "path"),
        format!(
            "PASS  path            no public IPv4 address and no endpoint carries port {}: \
             through Session Manager (its agent is online)",
            bed.sshd_port()
        )
    );
    assert_eq!(
        line(&text, "session-manager"),
        "PASS  session-manager managed by Session Manager, its agent Online (agent 3.3.1142.0, Amazon Linux)"
    );
    let session = line(&text, "session");
    assert!(
        session.starts_with("PASS  session         StartSession opened session eic-test-"),
        "{text}"
    );
    assert!(
        session.ends_with(&format!(
            "(AWS-StartSSHSession to port {}), and TerminateSession ended it at once",
            bed.sshd_port()
        )),
        "{text}"
    );
    assert!(
        line(&text, "security-group")
            .starts_with("PASS  security-group  no inbound rule is needed through Session Manager"),
        "{text}"
    );
    assert!(
        line(&text, "port").starts_with("SKIP  port            through Session Manager"),
        "{text}"
    );
    assert!(line(&text, "push").starts_with("PASS"), "{text}");
    assert!(text.ends_with("All checks passed.\n"), "{text}");
    // The caller's address plays no part on this path.
    assert!(!text.contains("note: your address"), "{text}");

    // One real session, to the port, started and at once terminated, with
    // no data channel opened.
    let sessions = bed.ssm_sessions();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let s = &sessions[0];
    assert_eq!(s.target, db.id);
    assert_eq!(s.document_name, "AWS-StartSSHSession");
    assert_eq!(
        s.parameters.get("portNumber"),
        Some(&vec![bed.sshd_port().to_string()])
    );
    assert!(s.terminate_api_called && s.terminated, "{s:#?}");
    assert_eq!(s.connections, 0);
    assert!(session.contains(&s.session_id), "{session}");
    let ssm_calls: Vec<String> = bed
        .requests()
        .into_iter()
        .map(|c| c.action)
        .filter(|a| {
            matches!(
                a.as_str(),
                "DescribeInstanceInformation" | "StartSession" | "TerminateSession"
            )
        })
        .collect();
    assert_eq!(
        ssm_calls,
        [
            "DescribeInstanceInformation",
            "StartSession",
            "TerminateSession"
        ]
    );
    // No security group is read for a path that needs none.
    assert!(bed.requests_for("DescribeSecurityGroups").is_empty());
    assert_clean(&bed);
}

#[test]
fn json_shows_the_session_manager_route_and_check() {
    let bed = bed();
    let db = managed(&bed, "db-1", "Online");
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["path"], "ssm");
    assert_eq!(json["address"], serde_json::Value::Null);
    assert_eq!(json["endpoint"], serde_json::Value::Null);
    assert_eq!(json["instance_id"], db.id.as_str());
    let names: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &names[..4],
        ["instance", "path", "session-manager", "session"]
    );
    let (status, detail, fix) = check(&json, "session-manager");
    assert_eq!(status, "pass");
    assert!(
        detail.contains("its agent Online (agent 3.3.1142.0"),
        "{detail}"
    );
    assert_eq!(fix, None);
    assert_eq!(check(&json, "session").0, "pass");
}

#[test]
fn the_chain_puts_an_endpoint_before_session_manager_for_the_ports_it_carries() {
    let bed = bed();
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    managed(&bed, "db-1", "Online");
    // Port 22: the endpoint, as connect would take it.
    let out = bed
        .command()
        .args(["doctor", "--json", "-p", "22", "db-1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["path"], "eice", "{json}");
    assert_eq!(json["endpoint"], endpoint.id.as_str());
    assert_eq!(check(&json, "session-manager").0, "pass");
    assert_eq!(check(&json, "session").0, "skip");
    // Another port: no endpoint carries it, so Session Manager.
    let (_, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(json["path"], "ssm", "{json}");
    assert_eq!(bed.ssm_sessions().len(), 1);
    assert_clean(&bed);
}

#[test]
fn an_unmanaged_instance_gets_the_fix() {
    let bed = bed();
    let web = healthy(&bed, "web-1");
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "a note fails nothing: {json}");
    let (status, detail, fix) = check(&json, "session-manager");
    assert_eq!(status, "note");
    assert_eq!(
        detail,
        format!(
            "{} is not managed by Session Manager (DescribeInstanceInformation does not list it)",
            web.id
        )
    );
    let fix = fix.unwrap();
    for needed in [
        "SSM agent running",
        "AmazonSSMManagedInstanceCore",
        &format!("associate-iam-instance-profile --instance-id {}", web.id),
        "com.amazonaws.us-east-1.ssm,",
        "com.amazonaws.us-east-1.ssmmessages",
        "com.amazonaws.us-east-1.ec2messages",
    ] {
        assert!(fix.contains(needed), "{needed}: {fix}");
    }
    // Through Session Manager, the same is a failure, and no session is tried.
    let (code, json) = doctor_json(&bed, &["--connect", "ssm", "web-1"]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["path"], "ssm");
    let (status, _, fix_on_path) = check(&json, "session-manager");
    assert_eq!(status, "fail");
    assert_eq!(fix_on_path.as_deref(), Some(fix.as_str()));
    let (status, detail, _) = check(&json, "session");
    assert_eq!(status, "skip");
    assert!(detail.contains("does not manage the instance"), "{detail}");
    assert!(bed.requests_for("StartSession").is_empty());
    assert_clean(&bed);
}

#[test]
fn a_lost_agent_fails_through_session_manager_and_is_a_note_otherwise() {
    let bed = bed();
    let db = managed(&bed, "db-1", "ConnectionLost");
    // auto: the chain passes Session Manager by and goes direct, as connect does.
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["path"], "direct");
    assert_eq!(json["address"], db.private_ip.as_str());
    let (status, detail, _) = check(&json, "path");
    assert_eq!(status, "warn");
    assert!(
        detail.contains("its SSM agent is ConnectionLost"),
        "{detail}"
    );
    let (status, detail, fix) = check(&json, "session-manager");
    assert_eq!(status, "note");
    assert_eq!(
        detail,
        "managed by Session Manager, but its agent is ConnectionLost (agent 3.3.1142.0, Amazon Linux)"
    );
    assert!(fix.unwrap().contains("amazon-ssm-agent"));
    // --connect ssm: a failure, and no session tried.
    let (code, json) = doctor_json(&bed, &["--connect", "ssm", "db-1"]);
    assert_eq!(code, Some(1), "{json}");
    let (status, _, fix) = check(&json, "session-manager");
    assert_eq!(status, "fail");
    assert!(fix.unwrap().contains("ssmmessages"));
    let (status, detail, _) = check(&json, "session");
    assert_eq!(status, "skip");
    assert!(detail.contains("the agent is ConnectionLost"), "{detail}");
    assert!(bed.requests_for("StartSession").is_empty());
    assert_clean(&bed);
}

#[test]
fn no_permission_to_describe_instance_information_is_a_skip_naming_it() {
    let bed = bed();
    let web = bed.add_instance(
        InstanceSpec::named("web-1")
            .managed(true)
            .image_id(UBUNTU_AMI),
    );
    bed.set_console_output(&web.id, &bed.host_key_console());
    bed.fail_next("DescribeInstanceInformation", "AccessDeniedException", 1);
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "never a failure of the run: {json}");
    assert_eq!(json["ok"], true);
    let (status, detail, fix) = check(&json, "session-manager");
    assert_eq!(status, "skip");
    assert!(
        detail.contains("not authorized to call ssm:DescribeInstanceInformation"),
        "{detail}"
    );
    assert!(
        fix.unwrap().contains("ssm:DescribeInstanceInformation"),
        "{json}"
    );
    assert_eq!(bed.requests_for("DescribeInstanceInformation").len(), 1);
    // Through Session Manager the session itself is still tried: it proves
    // what the lookup could not.
    let db = managed(&bed, "db-1", "Online");
    bed.fail_next("DescribeInstanceInformation", "AccessDeniedException", 1);
    let (code, json) = doctor_json(&bed, &["--connect", "ssm", "db-1"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(check(&json, "session-manager").0, "skip");
    assert_eq!(check(&json, "session").0, "pass");
    assert_eq!(bed.ssm_sessions()[0].target, db.id);
    assert_clean(&bed);
}

#[test]
fn start_session_errors_fail_the_session_check_with_their_fix() {
    let bed = bed();
    let db = managed(&bed, "db-1", "Online");
    bed.fail_next("StartSession", "TargetNotConnected", 1);
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["path"], "ssm");
    let (status, detail, fix) = check(&json, "session");
    assert_eq!(status, "fail");
    assert!(
        detail.starts_with(&format!(
            "Session Manager cannot reach {}: its SSM agent is not connected",
            db.id
        )),
        "{detail}"
    );
    let fix = fix.unwrap();
    assert!(fix.contains("AmazonSSMManagedInstanceCore"), "{fix}");
    assert!(!fix.contains("eic-connect doctor"), "this is doctor: {fix}");
    // Nothing started, so nothing to terminate.
    assert!(bed.ssm_sessions().is_empty());
    assert!(bed.requests_for("TerminateSession").is_empty());

    bed.fail_next("StartSession", "AccessDeniedException", 1);
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(1), "{json}");
    let (status, detail, fix) = check(&json, "session");
    assert_eq!(status, "fail");
    assert!(
        detail.starts_with("not authorized to call StartSession"),
        "{detail}"
    );
    let fix = fix.unwrap();
    assert!(
        fix.contains(&format!(
            "ssm:StartSession on the instance (arn:aws:ec2:us-east-1:ACCOUNT:instance/{})",
            db.id
        )),
        "{fix}"
    );
    assert!(
        fix.contains("on the document (arn:aws:ssm:us-east-1::document/AWS-StartSSHSession)"),
        "{fix}"
    );

    bed.fail_next("StartSession", "InvalidDocument", 1);
    let (_, json) = doctor_json(&bed, &["db-1"]);
    let (status, detail, fix) = check(&json, "session");
    assert_eq!(status, "fail");
    assert!(detail.contains("refused the session document"), "{detail}");
    assert!(fix.unwrap().contains("AWS-StartSSHSession"));
    assert!(bed.ssm_sessions().is_empty());
    assert_clean(&bed);
}

#[test]
fn a_refused_terminate_session_is_a_warning() {
    let bed = bed();
    managed(&bed, "db-1", "Online");
    bed.fail_next("TerminateSession", "AccessDeniedException", 1);
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(0), "a warning: {json}");
    let sessions = bed.ssm_sessions();
    assert_eq!(sessions.len(), 1);
    let id = &sessions[0].session_id;
    // The session lingers, as the warning says.
    assert!(!sessions[0].terminated, "{:#?}", sessions[0]);
    let (status, detail, fix) = check(&json, "session");
    assert_eq!(status, "warn");
    assert_eq!(
        detail,
        format!(
            "StartSession opened session {id}, but TerminateSession failed: not authorized to call TerminateSession (region us-east-1)"
        )
    );
    let fix = fix.unwrap();
    assert!(fix.contains("ssm:TerminateSession"), "{fix}");
    assert!(fix.contains("idle timeout"), "{fix}");
    assert!(
        fix.ends_with(&format!("aws ssm terminate-session --session-id {id}")),
        "{fix}"
    );
    assert_clean(&bed);
}
