//! `eic-connect doctor`: the `iam` check against the bed's IAM policy
//! simulator (which evaluates the policies it holds on the context doctor
//! sends), and the `package` check's verdict for a few AMIs.

mod support;

use std::process::{Command, Output, Stdio};

use support::cmd::{stderr, stdout};
use support::diag::SgRule;
use support::eice::EndpointSpec;
use support::iam::Stmt;
use support::{InstanceSpec, TestBed};

const UBUNTU_AMI: &str = "ami-0a000000000000004";
const PUSH: &str = "ec2-instance-connect:SendSSHPublicKey";
const TUNNEL: &str = "ec2-instance-connect:OpenTunnel";

fn bed() -> TestBed {
    let bed = TestBed::start();
    bed.register_image(
        UBUNTU_AMI,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
        "Canonical, Ubuntu, 22.04 LTS",
        "Linux/UNIX",
    );
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

fn healthy(bed: &TestBed, spec: InstanceSpec) -> support::Instance {
    let inst = bed.add_instance(spec.image_id(UBUNTU_AMI));
    bed.set_console_output(&inst.id, &bed.host_key_console());
    inst
}

fn doctor(bed: &TestBed, args: &[&str]) -> Output {
    let mut c: Command = bed.command();
    c.arg("doctor").args(args).stdin(Stdio::null());
    c.output().expect("run eic-connect doctor")
}

/// `doctor --json -p <sshd port> ARGS`: exit code and the JSON.
fn doctor_json(bed: &TestBed, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let port = bed.sshd_port().to_string();
    let mut all = vec!["--json", "-p", port.as_str()];
    all.extend_from_slice(args);
    let out = doctor(bed, &all);
    let json = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(&out), stderr(&out)));
    (out.status.code(), json)
}

/// `(status, detail, fix)` of one check.
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

/// The context entries of a simulation request: (name, type, value).
fn context(call: &support::api::ApiCall) -> Vec<(String, String, String)> {
    (1..)
        .map_while(|n| {
            let base = format!("ContextEntries.member.{n}");
            let name = call.params.get(&format!("{base}.ContextKeyName"))?;
            Some((
                name.clone(),
                call.params
                    .get(&format!("{base}.ContextKeyType"))
                    .cloned()
                    .unwrap_or_default(),
                call.params
                    .get(&format!("{base}.ContextKeyValues.member.1"))
                    .cloned()
                    .unwrap_or_default(),
            ))
        })
        .collect()
}

#[test]
fn allowed_names_the_statement_and_sends_the_real_context() {
    let bed = bed();
    let web = healthy(&bed, InstanceSpec::named("web-1").tag("team", "web"));
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "{json}");
    let (status, detail, fix) = check(&json, "iam");
    assert_eq!(status, "pass", "{detail}");
    assert_eq!(
        detail,
        format!(
            "as arn:aws:iam::123456789012:user/eic-test: SendSSHPublicKey to {} as ubuntu: allowed by eic-test-default (user-managed, statement at line 4, column 5)",
            web.id
        )
    );
    assert_eq!(fix, None);
    assert_eq!(json["caller"], "arn:aws:iam::123456789012:user/eic-test");
    // What IAM was asked: the instance's ARN, the OS user and its tags.
    let sims = bed.requests_for("SimulatePrincipalPolicy");
    assert_eq!(sims.len(), 1);
    let sim = &sims[0];
    assert_eq!(
        sim.params["PolicySourceArn"],
        "arn:aws:iam::123456789012:user/eic-test"
    );
    assert_eq!(sim.list("ActionNames.member"), [PUSH]);
    assert_eq!(
        sim.list("ResourceArns.member"),
        [format!(
            "arn:aws:ec2:us-east-1:123456789012:instance/{}",
            web.id
        )]
    );
    let ctx = context(sim);
    for want in [
        ("ec2:osuser", "string", "ubuntu"),
        ("aws:ResourceTag/team", "string", "web"),
        ("ec2:ResourceTag/team", "string", "web"),
        ("aws:ResourceTag/Name", "string", "web-1"),
    ] {
        assert!(
            ctx.iter()
                .any(|(n, t, v)| (n.as_str(), t.as_str(), v.as_str()) == want),
            "{want:?} not in {ctx:?}"
        );
    }
    assert!(bed.requests_for("GetRole").is_empty());
    assert!(bed.signature_failures().is_empty());
}

#[test]
fn no_allowing_statement_is_an_implicit_deny_with_the_policy_to_attach() {
    let bed = bed();
    let web = healthy(&bed, InstanceSpec::named("web-1"));
    bed.iam_policy("read-only", vec![Stmt::allow(&["ec2:Describe*"], &["*"])]);
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(1), "{json}");
    let (status, detail, fix) = check(&json, "iam");
    assert_eq!(status, "fail");
    assert!(
        detail.ends_with(&format!(
            "SendSSHPublicKey to {} as ubuntu: denied: no statement allows it (implicit deny)",
            web.id
        )),
        "{detail}"
    );
    let fix = fix.unwrap();
    assert!(
        fix.contains(&format!("eic-connect policy {} --os-user ubuntu", web.id)),
        "{fix}"
    );
    assert!(
        fix.contains("arn:aws:iam::123456789012:user/eic-test"),
        "{fix}"
    );
}

#[test]
fn an_explicit_deny_names_the_statement() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    bed.iam_add_policy(
        "no-prod-ssh",
        vec![
            Stmt::allow(&["ec2:DescribeInstances"], &["*"]).sid("Look"),
            Stmt::deny(
                &["ec2-instance-connect:Send*"],
                &["arn:aws:ec2:*:*:instance/*"],
            )
            .sid("NoSsh"),
        ],
    );
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(1));
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "fail");
    // The first statement takes lines 4-13 of the document (pretty JSON).
    assert!(
        detail.ends_with(
            "denied: explicit deny in no-prod-ssh (user-managed, statement at line 14, column 5)"
        ),
        "{detail}"
    );
}

#[test]
fn the_os_user_condition_follows_the_user_doctor_would_use() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    bed.iam_policy(
        "ec2-user-only",
        vec![Stmt::allow(&[PUSH], &["*"]).when("StringEquals", "ec2:osuser", &["ec2-user"])],
    );
    // The AMI says ubuntu: not allowed.
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(1));
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("as ubuntu: denied"), "{detail}");
    // Named ec2-user: allowed by the same policy.
    let (_, json) = doctor_json(&bed, &["-l", "ec2-user", "web-1"]);
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "pass", "{detail}");
    assert!(
        detail.contains("as ec2-user: allowed by ec2-user-only"),
        "{detail}"
    );
}

#[test]
fn tag_conditions_see_the_instances_tags() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1").tag("team", "web"));
    healthy(&bed, InstanceSpec::named("db-1").tag("team", "db"));
    bed.iam_policy(
        "team-web",
        vec![
            Stmt::allow(&[PUSH], &["arn:aws:ec2:us-east-1:123456789012:instance/*"]).when(
                "StringLike",
                "aws:ResourceTag/team",
                &["we*"],
            ),
        ],
    );
    let (_, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(check(&json, "iam").0, "pass", "{json}");
    let (code, json) = doctor_json(&bed, &["db-1"]);
    assert_eq!(code, Some(1));
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "fail");
    assert!(detail.contains("implicit deny"), "{detail}");
}

#[test]
fn a_condition_on_a_key_doctor_cannot_know_is_reported_as_missing_context() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    bed.iam_policy(
        "by-principal-tag",
        vec![Stmt::allow(&[PUSH], &["*"]).when("StringEquals", "aws:PrincipalTag/team", &["web"])],
    );
    let (_, json) = doctor_json(&bed, &["web-1"]);
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "fail");
    assert!(
        detail.ends_with(
            "(implicit deny) (the simulation lacked context keys: aws:PrincipalTag/team)"
        ),
        "{detail}"
    );
}

/// An instance without a public address, an endpoint in its VPC, and
/// port 22 open to the endpoint's security group.
fn behind_an_endpoint(bed: &TestBed) -> (support::Instance, support::eice::Endpoint) {
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    let db = healthy(bed, InstanceSpec::named("db-1").public_ip(false));
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_group(&endpoint.security_group_ids[0])],
    );
    (db, endpoint)
}

fn doctor_22(bed: &TestBed, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["--json", "-p", "22"];
    all.extend_from_slice(args);
    let out = doctor(bed, &all);
    let json = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(&out), stderr(&out)));
    (out.status.code(), json)
}

#[test]
fn through_an_endpoint_the_tunnel_is_simulated_with_its_port_address_and_duration() {
    let bed = bed();
    let (db, endpoint) = behind_an_endpoint(&bed);
    bed.iam_policy(
        "tunnel-to-loopback",
        vec![
            Stmt::allow(&[PUSH], &["*"]),
            Stmt::allow(&[TUNNEL], &["arn:aws:ec2:*:*:instance-connect-endpoint/*"])
                .when(
                    "NumericLessThanEquals",
                    "ec2-instance-connect:remotePort",
                    &["22"],
                )
                .when(
                    "IpAddress",
                    "ec2-instance-connect:privateIpAddress",
                    &["127.0.0.0/8"],
                )
                .when(
                    "NumericLessThanEquals",
                    "ec2-instance-connect:maxTunnelDuration",
                    &["3600"],
                ),
        ],
    );
    let (code, json) = doctor_22(&bed, &["db-1"]);
    assert_eq!(json["path"], "eice", "{json}");
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "pass", "{detail}");
    assert!(
        detail.contains(&format!(
            "; OpenTunnel through {} to port 22: allowed by tunnel-to-loopback",
            endpoint.id
        )),
        "{detail}"
    );
    assert_eq!(code, Some(0), "{json}");
    let tunnel = bed
        .requests_for("SimulatePrincipalPolicy")
        .into_iter()
        .find(|c| c.list("ActionNames.member") == [TUNNEL])
        .expect("an OpenTunnel simulation");
    assert_eq!(
        tunnel.list("ResourceArns.member"),
        [format!(
            "arn:aws:ec2:us-east-1:123456789012:instance-connect-endpoint/{}",
            endpoint.id
        )]
    );
    let ctx = context(&tunnel);
    assert!(ctx.contains(&(
        "ec2-instance-connect:remotePort".into(),
        "numeric".into(),
        "22".into()
    )));
    assert!(ctx.contains(&(
        "ec2-instance-connect:privateIpAddress".into(),
        "ip".into(),
        db.private_ip.clone()
    )));
    assert!(ctx.contains(&(
        "ec2-instance-connect:maxTunnelDuration".into(),
        "numeric".into(),
        "3600".into()
    )));
    // A policy for another subnet denies the tunnel, not the push; a
    // shorter --max-tunnel-duration than the policy's limit is allowed.
    bed.iam_policy(
        "tunnel-to-10",
        vec![
            Stmt::allow(&[PUSH], &["*"]),
            Stmt::allow(&[TUNNEL], &["*"]).when(
                "IpAddress",
                "ec2-instance-connect:privateIpAddress",
                &["10.0.0.0/8"],
            ),
        ],
    );
    let (code, json) = doctor_22(&bed, &["db-1"]);
    assert_eq!(code, Some(1));
    let (status, detail, fix) = check(&json, "iam");
    assert_eq!(status, "fail");
    assert!(
        detail.contains("as ubuntu: allowed by tunnel-to-10"),
        "{detail}"
    );
    assert!(
        detail.ends_with("to port 22: denied: no statement allows it (implicit deny)"),
        "{detail}"
    );
    assert!(fix.unwrap().contains(&format!(
        "(OpenTunnel goes on arn:aws:ec2:us-east-1:123456789012:instance-connect-endpoint/{})",
        endpoint.id
    )));
    bed.iam_policy(
        "short-tunnels",
        vec![
            Stmt::allow(&[PUSH], &["*"]),
            Stmt::allow(&[TUNNEL], &["*"]).when(
                "NumericLessThanEquals",
                "ec2-instance-connect:maxTunnelDuration",
                &["600"],
            ),
        ],
    );
    assert_eq!(check(&doctor_22(&bed, &["db-1"]).1, "iam").0, "fail");
    let (_, json) = doctor_22(&bed, &["--max-tunnel-duration", "600", "db-1"]);
    assert_eq!(check(&json, "iam").0, "pass", "{json}");
}

#[test]
fn an_assumed_role_is_simulated_as_its_role_with_the_path_from_get_role() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    bed.iam_assumed_role("eic-ops", "/team/admins/", "alice@example.com");
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "{json}");
    let role = "arn:aws:iam::123456789012:role/team/admins/eic-ops";
    assert_eq!(bed.iam_principal_arn(), role);
    let get_role = bed.requests_for("GetRole");
    assert_eq!(get_role.len(), 1);
    assert_eq!(get_role[0].params["RoleName"], "eic-ops");
    let sims = bed.requests_for("SimulatePrincipalPolicy");
    assert_eq!(sims[0].params["PolicySourceArn"], role);
    assert_eq!(json["caller"], role);
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "pass");
    assert!(detail.starts_with(&format!("as {role}: ")), "{detail}");
}

#[test]
fn without_permission_to_simulate_the_check_is_a_skip_not_a_failure() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    bed.fail_next("SimulatePrincipalPolicy", "AccessDenied", 1);
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ok"], true);
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "skip");
    assert_eq!(
        detail,
        "cannot simulate (missing iam:SimulatePrincipalPolicy)"
    );
    // Without iam:GetRole, an assumed role cannot be mapped: a skip too.
    bed.iam_assumed_role("eic-ops", "/", "alice");
    bed.fail_next("GetRole", "AccessDenied", 1);
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "{json}");
    let (status, detail, _) = check(&json, "iam");
    assert_eq!(status, "skip");
    assert_eq!(
        detail,
        "cannot simulate (missing iam:GetRole, which maps the assumed role eic-ops to its ARN)"
    );
    assert_eq!(json["caller"], serde_json::Value::Null);
}

#[test]
fn an_iam_error_is_a_warning_with_its_explanation() {
    let bed = bed();
    healthy(&bed, InstanceSpec::named("web-1"));
    bed.fail_next("SimulatePrincipalPolicy", "PolicyEvaluation", 1);
    let (code, json) = doctor_json(&bed, &["web-1"]);
    assert_eq!(code, Some(0), "{json}");
    let (status, detail, fix) = check(&json, "iam");
    assert_eq!(status, "warn");
    assert!(
        detail.contains(
            "could not simulate: IAM could not evaluate the policies during SimulatePrincipalPolicy"
        ),
        "{detail}"
    );
    assert!(fix.unwrap().contains("policy simulator"));
    bed.fail_next("GetCallerIdentity", "ExpiredToken", 1);
    let (_, json) = doctor_json(&bed, &["web-1"]);
    let (status, detail, fix) = check(&json, "iam");
    assert_eq!(status, "warn");
    assert!(
        detail.starts_with("cannot tell who you are: the AWS credentials or request have expired"),
        "{detail}"
    );
    assert!(fix.unwrap().contains("aws sso login"));
}

#[test]
fn the_text_report_shows_iam_and_package_lines() {
    let bed = bed();
    let web = healthy(&bed, InstanceSpec::named("web-1"));
    let port = bed.sshd_port().to_string();
    let out = doctor(&bed, &["-p", &port, "web-1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "PASS  iam             as arn:aws:iam::123456789012:user/eic-test: SendSSHPublicKey to {} as ubuntu: allowed by eic-test-default",
            web.id
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "PASS  package         Ubuntu 22.04 AMIs ship the EC2 Instance Connect package ({UBUNTU_AMI})"
        )),
        "{text}"
    );
}

#[test]
fn the_package_check_by_distribution() {
    let bed = bed();
    let images = [
        (
            "ami-0c000000000000001",
            "al2023-ami-2023.3.20240205.2-kernel-6.1-x86_64",
            "Linux/UNIX",
            "pass",
            None,
        ),
        (
            "ami-0c000000000000002",
            "amzn2-ami-minimal-hvm-2.0.20240131.0-x86_64-ebs",
            "Linux/UNIX",
            "warn",
            Some("on the instance: sudo yum install -y ec2-instance-connect"),
        ),
        (
            "ami-0c000000000000003",
            "ubuntu/images/hvm-ssd/ubuntu-bionic-18.04-amd64-server-20230531",
            "Linux/UNIX",
            "warn",
            Some(
                "on the instance: sudo apt-get update && sudo apt-get install -y ec2-instance-connect",
            ),
        ),
        (
            "ami-0c000000000000004",
            "RHEL-9.3.0_HVM-20240117-x86_64-49-Hourly2-GP3",
            "Red Hat Enterprise Linux",
            "warn",
            None,
        ),
        (
            "ami-0c000000000000005",
            "golden-image-42",
            "Linux/UNIX",
            "note",
            None,
        ),
    ];
    for (n, (ami, name, platform, want, fix_want)) in images.iter().enumerate() {
        bed.register_image(ami, name, "", platform);
        let host = format!("host-{n}");
        let inst = bed.add_instance(InstanceSpec::named(&host).image_id(ami));
        let (code, json) = doctor_json(&bed, &[&host]);
        let (status, detail, fix) = check(&json, "package");
        assert_eq!(&status, want, "{name}: {detail}");
        assert!(detail.contains(ami), "{detail}");
        if let Some(f) = fix_want {
            assert_eq!(fix.as_deref(), Some(*f), "{name}");
        }
        if *platform == "Red Hat Enterprise Linux" {
            let fix = fix.unwrap();
            assert!(fix.contains("aws-ec2-instance-connect-config"), "{fix}");
        }
        // A note or a warning about the package never fails doctor.
        assert_ne!(status, "fail");
        let _ = (code, inst);
    }
}
