//! `eic-connect doctor --fix`: the changes it offers for failed checks,
//! applied with `--yes`, asked on a terminal (a real pty through
//! `script`), never applied without either, and their errors.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::cmd::{stderr, stdout};
use support::diag::SgRule;
use support::eice::EndpointSpec;
use support::{InstanceSpec, TestBed};

const UBUNTU_AMI: &str = "ami-0a000000000000004";
const CALLER: &str = "198.51.100.7";

fn bed() -> TestBed {
    let bed = TestBed::start();
    bed.register_image(
        UBUNTU_AMI,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
        "Canonical, Ubuntu, 22.04 LTS",
        "Linux/UNIX",
    );
    bed
}

fn healthy(bed: &TestBed, spec: InstanceSpec) -> support::Instance {
    let inst = bed.add_instance(spec.image_id(UBUNTU_AMI));
    bed.set_console_output(&inst.id, &bed.host_key_console());
    inst
}

/// The bed's group open on the sshd port to an office range only: closed
/// to the caller.
fn closed_to_caller(bed: &TestBed) -> Vec<SgRule> {
    let port = i32::from(bed.sshd_port());
    let rules = vec![SgRule::tcp(port, port).allow_cidr("203.0.113.0/24")];
    bed.set_security_group(&bed.security_group_id(), rules.clone());
    rules
}

/// `doctor --source-ip CALLER -p <sshd port> ARGS` with stdin closed.
fn doctor(bed: &TestBed, args: &[&str]) -> Output {
    let port = bed.sshd_port().to_string();
    let mut c: Command = bed.command();
    c.args(["doctor", "--source-ip", CALLER, "-p", &port])
        .args(args)
        .stdin(Stdio::null());
    c.output().expect("run eic-connect doctor")
}

/// Runs doctor on a pseudo-terminal (util-linux `script`), typing `answer`.
fn doctor_on_a_terminal(bed: &TestBed, args: &[&str], answer: &str) -> (Option<i32>, String) {
    let program = bed.command().get_program().to_owned();
    let port = bed.sshd_port().to_string();
    let mut line = format!(
        "'{}' doctor --source-ip {CALLER} -p {port}",
        program.to_string_lossy()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut c = Command::new("script");
    bed.apply_env(&mut c);
    c.args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("script (util-linux) runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer.as_bytes()).unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    // stdin stays open until doctor ends: script would end it early on EOF.
    let status = child.wait().unwrap();
    drop(stdin);
    (status.code(), reader.join().unwrap().replace("\r\n", "\n"))
}

fn the_caller_rule(bed: &TestBed) -> SgRule {
    let port = i32::from(bed.sshd_port());
    SgRule::tcp(port, port).allow_cidr(&format!("{CALLER}/32"))
}

fn same(a: &[SgRule], b: &[SgRule]) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn fix_yes_opens_the_port_to_the_caller_then_doctor_passes() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    let before = closed_to_caller(&bed);
    let out = doctor(&bed, &["--fix", "--yes", "web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let sg = bed.security_group_id();
    let port = bed.sshd_port();
    // The first report failed, the change was shown twice over, applied,
    // and the checks ran again.
    assert!(text.contains("FAIL  security-group"), "{text}");
    assert!(
        text.contains(&format!(
            "  security-group: open port {port} in {sg} to {CALLER}/32\n    command: aws ec2 authorize-security-group-ingress --group-id {sg} --protocol tcp --port {port} --cidr {CALLER}/32\n    eic-connect calls: ec2:AuthorizeSecurityGroupIngress GroupId={sg} IpPermissions=[{{IpProtocol=tcp,FromPort={port},ToPort={port},IpRanges=[{{CidrIp={CALLER}/32}}]}}]\n    applied\n"
        )),
        "{text}"
    );
    let after = text
        .split("After the changes:\n")
        .nth(1)
        .expect("a second report");
    assert!(
        after.contains(&format!(
            "PASS  security-group  port {port} is open to {CALLER} via {CALLER}/32"
        )),
        "{after}"
    );
    assert!(after.ends_with("All checks passed.\n"), "{after}");
    // Exactly one rule was added: the port, to the caller's /32.
    let mut want = before;
    want.push(the_caller_rule(&bed));
    let now = bed.security_group_rules(&sg);
    assert!(same(&now, &want), "{now:?}");
    let calls = bed.requests_for("AuthorizeSecurityGroupIngress");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].params["IpPermissions.1.IpProtocol"], "tcp");
    assert!(bed.signature_failures().is_empty());
}

#[test]
fn without_a_terminal_or_yes_nothing_changes_and_the_output_says_so() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    let before = closed_to_caller(&bed);
    let out = doctor(&bed, &["--fix", "web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("command: aws ec2 authorize-security-group-ingress"),
        "{text}"
    );
    assert!(
        text.contains("nothing was changed: standard input is not a terminal to ask on; run again with --yes to apply the changes above"),
        "{text}"
    );
    assert!(!text.contains("After the changes"), "{text}");
    assert!(same(
        &bed.security_group_rules(&bed.security_group_id()),
        &before
    ));
    for mutating in [
        "AuthorizeSecurityGroupIngress",
        "ModifyInstanceMetadataOptions",
        "StartInstances",
    ] {
        assert!(
            bed.requests_for(mutating).is_empty(),
            "{mutating} was called"
        );
    }
    // --yes alone is a usage error, and changes nothing either.
    let out = doctor(&bed, &["--yes", "web-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(bed.requests_for("AuthorizeSecurityGroupIngress").is_empty());
}

#[test]
fn on_a_terminal_yes_applies_and_no_does_not() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    let before = closed_to_caller(&bed);
    let sg = bed.security_group_id();
    let (code, text) = doctor_on_a_terminal(&bed, &["--fix", "web-1"], "n\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("apply? [y/N] "), "{text}");
    assert!(text.contains("    not applied\n"), "{text}");
    assert!(same(&bed.security_group_rules(&sg), &before));
    assert!(bed.requests_for("AuthorizeSecurityGroupIngress").is_empty());

    let (code, text) = doctor_on_a_terminal(&bed, &["--fix", "web-1"], "y\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("apply? [y/N] "), "{text}");
    assert!(text.contains("    applied\n"), "{text}");
    assert!(text.contains("All checks passed."), "{text}");
    let mut want = before;
    want.push(the_caller_rule(&bed));
    assert!(same(&bed.security_group_rules(&sg), &want));
    assert_eq!(bed.requests_for("AuthorizeSecurityGroupIngress").len(), 1);
}

#[test]
fn fix_starts_a_stopped_instance_and_checks_it_again() {
    let bed = bed();
    bed.set_start_delay(Duration::from_millis(300));
    let port = i32::from(bed.sshd_port());
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(port, port).allow_cidr("0.0.0.0/0")],
    );
    let web = healthy(&bed, InstanceSpec::named("web-1").state("stopped"));
    let out = doctor(&bed, &["--fix", "--yes", "web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "  instance: start {id}\n    command: aws ec2 start-instances --instance-ids {id}\n",
            id = web.id
        )),
        "{text}"
    );
    let starts = bed.requests_for("StartInstances");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].list("InstanceId"), [web.id.as_str()]);
    assert_eq!(bed.instance(&web.id).unwrap().state, "running");
    let after = text
        .split("After the changes:\n")
        .nth(1)
        .expect("a second report");
    assert!(
        after.contains(&format!("PASS  instance        {} is running", web.id)),
        "{after}"
    );
    assert!(after.ends_with("All checks passed.\n"), "{after}");
}

#[test]
fn fix_enables_instance_metadata() {
    let bed = bed();
    let port = i32::from(bed.sshd_port());
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(port, port).allow_cidr("0.0.0.0/0")],
    );
    let web = healthy(
        &bed,
        InstanceSpec::named("web-1").metadata_http_endpoint("disabled"),
    );
    let out = doctor(&bed, &["--fix", "--yes", "--json", "web-1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["fixes"].as_array().unwrap().len(), 1, "{json}");
    let fix = &json["fixes"][0];
    assert_eq!(fix["check"], "metadata");
    assert_eq!(fix["result"], "applied");
    assert_eq!(
        fix["aws_cli"],
        format!(
            "aws ec2 modify-instance-metadata-options --instance-id {} --http-endpoint enabled",
            web.id
        )
    );
    assert_eq!(fix["error"], serde_json::Value::Null);
    // The plan went to stderr, stdout holds only the JSON.
    assert!(stderr(&out).contains("metadata: enable instance metadata on"));
    let calls = bed.requests_for("ModifyInstanceMetadataOptions");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].params["InstanceId"], web.id);
    assert_eq!(calls[0].params["HttpEndpoint"], "enabled");
    assert_eq!(
        bed.api_instance_metadata_endpoint(&web.id).as_deref(),
        Some("enabled")
    );
}

#[test]
fn through_an_endpoint_the_port_is_opened_to_the_endpoints_group() {
    let bed = bed();
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    healthy(&bed, InstanceSpec::named("db-1").public_ip(false));
    let sg = bed.security_group_id();
    bed.set_security_group(&sg, vec![]);
    let mut c = bed.command();
    c.args(["doctor", "-p", "22", "--fix", "--yes", "db-1"])
        .stdin(Stdio::null());
    let out = c.output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "command: aws ec2 authorize-security-group-ingress --group-id {sg} --protocol tcp --port 22 --source-group {}",
            endpoint.security_group_ids[0]
        )),
        "{text}"
    );
    let now = bed.security_group_rules(&sg);
    let want = vec![SgRule::tcp(22, 22).allow_group(&endpoint.security_group_ids[0])];
    assert!(same(&now, &want), "{now:?}");
}

#[test]
fn a_failing_fix_reports_its_error_and_hint() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    let before = closed_to_caller(&bed);
    bed.fail_next("AuthorizeSecurityGroupIngress", "UnauthorizedOperation", 1);
    let out = doctor(&bed, &["--fix", "--yes", "web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("    eic-connect: error: not authorized to call AuthorizeSecurityGroupIngress (region us-east-1)\n"),
        "{text}"
    );
    assert!(
        text.contains("    hint: your IAM identity needs ec2:AuthorizeSecurityGroupIngress\n"),
        "{text}"
    );
    assert!(!text.contains("After the changes"), "{text}");
    assert!(same(
        &bed.security_group_rules(&bed.security_group_id()),
        &before
    ));

    // A full group: the bed's real refusal.
    bed.set_rule_limit(1);
    let out = doctor(&bed, &["--fix", "--yes", "--json", "web-1"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["fixes"][0]["result"], "failed");
    let error = json["fixes"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("the security group has as many rules as it may hold"),
        "{error}"
    );
    assert!(
        error.contains("hint: remove rules that are no longer needed"),
        "{error}"
    );
    assert!(same(
        &bed.security_group_rules(&bed.security_group_id()),
        &before
    ));

    // A rule that exists already counts as done.
    bed.set_rule_limit(60);
    bed.fail_next(
        "AuthorizeSecurityGroupIngress",
        "InvalidPermission.Duplicate",
        1,
    );
    let out = doctor(&bed, &["--fix", "--yes", "web-1"]);
    assert!(
        stdout(&out).contains("    already so: the security group has this rule\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_check_that_passes_offers_no_fix() {
    let bed = bed();
    let port = i32::from(bed.sshd_port());
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(port, port).allow_cidr("0.0.0.0/0")],
    );
    healthy(&bed, InstanceSpec::named("web-1"));
    let out = doctor(&bed, &["--fix", "--yes", "web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.ends_with("--fix: nothing to change\n"), "{text}");
    for mutating in [
        "AuthorizeSecurityGroupIngress",
        "ModifyInstanceMetadataOptions",
        "StartInstances",
    ] {
        assert!(
            bed.requests_for(mutating).is_empty(),
            "{mutating} was called"
        );
    }
}

#[test]
fn console_checks_and_opens_the_browser_clients_prefix_list() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    let before = closed_to_caller(&bed);
    let sg = bed.security_group_id();
    let pl = bed.console_prefix_list_id();
    let out = doctor(&bed, &["--console", "--fix", "--yes", "web-1"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "FAIL  security-group  port 22 is not open to the EC2 console's prefix list {pl} (com.amazonaws.us-east-1.ec2-instance-connect)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "    command: aws ec2 authorize-security-group-ingress --group-id {sg} --ip-permissions 'IpProtocol=tcp,FromPort=22,ToPort=22,PrefixListIds=[{{PrefixListId={pl}}}]'\n"
        )),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let mut want = before;
    want.push(SgRule::tcp(22, 22).allow_prefix_list(pl));
    let now = bed.security_group_rules(&sg);
    assert!(same(&now, &want), "{now:?}");
    let after = text
        .split("After the changes:\n")
        .nth(1)
        .expect("a second report");
    assert!(
        after.contains(&format!(
            "PASS  security-group  port 22 is open to the EC2 console's prefix list {pl}"
        )),
        "{after}"
    );
}
