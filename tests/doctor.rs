//! `eic-connect doctor`: each failure mode on a stand-in instance built to
//! have it, the healthy case, and the `--json` shape.

mod support;

use support::cmd::{stderr, stdout};

use std::process::{Command, Output, Stdio};

use support::diag::SgRule;
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
            "security-group",
            "port",
            "metadata",
            "os-user",
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
        text.contains("FAIL  instance       no instance matches instance id i-0123456789abcdef0"),
        "{text}"
    );
    assert!(text.contains("fix: check --region and --profile"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("SKIP")).count(),
        7,
        "{text}"
    );
    assert!(text.ends_with("1 check failed.\n"), "{text}");
}

#[test]
fn no_public_address_and_no_endpoint_fails_the_path() {
    let bed = bed();
    let db = bed.add_instance(
        InstanceSpec::named("db-1")
            .public_ip(false)
            .image_id(UBUNTU_AMI),
    );
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(1), "{json}");
    let (status, detail, _) = check(&json, "path");
    assert_eq!(status, "fail", "{json}");
    assert!(
        detail.starts_with("no public IPv4 address, and "),
        "{detail}"
    );
    assert_eq!(json["path"], serde_json::Value::Null);
    assert_eq!(check(&json, "port").0, "skip");
    let _ = db;
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
