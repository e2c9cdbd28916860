//! `eic-connect endpoint list|create|delete`, end to end: the real binary
//! against the stand-in's DescribeInstanceConnectEndpoints,
//! CreateInstanceConnectEndpoint (create-in-progress, then create-complete
//! or create-failed after a set delay), DeleteInstanceConnectEndpoint,
//! DescribeSubnets and DescribeSecurityGroups (with outbound rules).

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::cmd::{assert_signed, run, server_address, stderr, stdout};
use support::diag::SgRule;
use support::eice::EndpointSpec;
use support::{InstanceSpec, TestBed};

/// `eic-connect endpoint ARGS…`, polling endpoints every 100 ms.
fn endpoint(bed: &TestBed, args: &[&str]) -> Output {
    let mut c = bed.command();
    c.arg("endpoint")
        .args(args)
        .env("EIC_CONNECT_ENDPOINT_POLL_MS", "100")
        .stdin(Stdio::null());
    run(c)
}

/// `eic-connect endpoint ARGS…` on a pseudo-terminal (util-linux
/// `script`), with `typed` as what the user types; stdout and stderr come
/// back together in `stdout`.
fn endpoint_on_terminal(bed: &TestBed, args: &[&str], typed: &str) -> Output {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = quote(&support::eic_connect_bin().to_string_lossy());
    line.push_str(" endpoint");
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut c = Command::new("script");
    bed.apply_env(&mut c);
    c.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("EIC_CONNECT_ENDPOINT_POLL_MS", "100")
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("util-linux script runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(typed.as_bytes()).expect("type");
    // Keep typing open until the command is done (EOF would end the pty).
    let out = std::thread::spawn(move || child.wait_with_output().expect("script"));
    let out = out.join().expect("join");
    drop(stdin);
    out
}

fn mutating_calls(bed: &TestBed) -> usize {
    bed.requests_for("CreateInstanceConnectEndpoint").len()
        + bed.requests_for("DeleteInstanceConnectEndpoint").len()
}

// ------------------------------------------------------------------ list

#[test]
fn list_shows_every_endpoint_across_pages_sanitised() {
    let bed = TestBed::start();
    let a = bed.add_endpoint(EndpointSpec::default().name("bastion\x1b]0;pwned\x07\x1b[2J"));
    let b = bed.add_endpoint(
        EndpointSpec::default()
            .vpc("vpc-0aaaaaaaaaaaaaaaa")
            .subnet("subnet-0bbbbbbbbbbbbbbbb")
            .state("create-failed")
            .ip_address_type("dualstack"),
    );
    let c = bed.add_endpoint(EndpointSpec::default().state("delete-in-progress"));
    bed.set_endpoint_page_size(1);

    let out = endpoint(&bed, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 3, "{all:?}");
    // Three pages, each asked for with the last page's token.
    let calls = bed.requests_for("DescribeInstanceConnectEndpoints");
    assert_eq!(calls.len(), 3);
    assert!(calls[1].params.contains_key("NextToken"));
    let by_id = |id: &str| {
        all.iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {all:?}"))
            .clone()
    };
    let ja = by_id(&a.id);
    assert_eq!(ja["state"], "create-complete");
    assert_eq!(ja["vpc_id"], bed.vpc_id());
    assert_eq!(ja["subnet_id"], bed.subnet_id());
    assert_eq!(
        ja["security_group_ids"],
        serde_json::json!(a.security_group_ids)
    );
    assert_eq!(ja["preserve_client_ip"], false);
    assert_eq!(ja["ip_address_type"], "ipv4");
    assert!(
        ja["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{ja}"
    );
    let name = ja["name"].as_str().expect("name");
    assert!(
        name.starts_with("bastion") && !name.contains('\x1b') && !name.contains('\x07'),
        "{name:?}"
    );
    let jb = by_id(&b.id);
    assert_eq!(jb["state"], "create-failed");
    assert_eq!(jb["vpc_id"], "vpc-0aaaaaaaaaaaaaaaa");
    assert_eq!(jb["ip_address_type"], "dualstack");
    assert_eq!(by_id(&c.id)["state"], "delete-in-progress");

    // Lines (not a terminal): one per endpoint, tab-separated, sanitised.
    let out = endpoint(&bed, &["list", "--vpc", bed.vpc_id()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with(&a.id))
        .expect("a")
        .split('\t')
        .collect();
    assert_eq!(first[1], "create-complete");
    assert_eq!(first[2], bed.vpc_id());
    assert_eq!(first[4], a.security_group_ids.join(","));
    assert!(!text.contains(&b.id), "--vpc lists only that VPC: {text}");
    let last = bed.requests_for("DescribeInstanceConnectEndpoints");
    let filters = last.last().expect("call").filters();
    assert!(
        filters.contains(&("vpc-id".to_owned(), vec![bed.vpc_id().to_owned()])),
        "{filters:?}"
    );
    assert_signed(&bed);
}

// ---------------------------------------------------------------- create

#[test]
fn create_waits_for_create_complete_and_connect_uses_the_endpoint() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let eice_sg = "sg-0e1c0e1c0e1c0e1c0";
    bed.set_security_group(eice_sg, vec![]);
    // The instance's group admits SSH only from an office block.
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_cidr("203.0.113.0/24")],
    );
    bed.set_endpoint_create_delay(Duration::from_millis(1500));

    let started = Instant::now();
    let out = endpoint(
        &bed,
        &[
            "create",
            "db-1",
            "--security-group",
            eice_sg,
            "--preserve-client-ip",
            "--yes",
        ],
    );
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        took >= Duration::from_millis(1500),
        "returned before create-complete: {took:?}"
    );

    let creates = bed.requests_for("CreateInstanceConnectEndpoint");
    assert_eq!(creates.len(), 1);
    let p = &creates[0].params;
    assert_eq!(p.get("SubnetId").map(String::as_str), Some(bed.subnet_id()));
    assert_eq!(
        p.get("SecurityGroupId.1").map(String::as_str),
        Some(eice_sg)
    );
    assert!(!p.contains_key("SecurityGroupId.2"));
    assert_eq!(p.get("PreserveClientIp").map(String::as_str), Some("true"));
    let token = p.get("ClientToken").expect("ClientToken");
    assert!(
        token.starts_with("eic-connect-") && token.len() > 20,
        "{token}"
    );

    let endpoints = bed.endpoints();
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!(e.state, "create-complete");
    assert_eq!(stdout(&out), format!("{}\n", e.id));
    // Polled the endpoint by id until it was complete.
    let polls = bed
        .requests_for("DescribeInstanceConnectEndpoints")
        .into_iter()
        .filter(|c| c.params.get("InstanceConnectEndpointId.1") == Some(&e.id))
        .count();
    assert!(polls >= 3, "{polls} polls");
    // Progress, the cost, the rule the instance lacks, and that connect uses it.
    assert!(err.contains(&format!("creating {}", e.id)), "{err}");
    assert!(
        err.contains(&format!("created {}: create-complete", e.id)),
        "{err}"
    );
    assert!(err.contains("no hourly or data-processing charge"), "{err}");
    assert!(
        err.contains(&format!(
            "aws ec2 authorize-security-group-ingress --group-id {} --protocol tcp --port 22 --source-group {eice_sg}",
            bed.security_group_id()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("`eic-connect {}` now uses the endpoint", db.id)),
        "{err}"
    );

    // And a connection really goes through it.
    let mut c = bed.command();
    c.args([
        "-l",
        &bed.os_user(),
        "db-1",
        "--",
        "sh",
        "-c",
        "echo $SSH_CONNECTION",
    ])
    .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server_address(&out), db.private_ip);
    let tunnels = bed.wait_for_tunnels_closed(1, Duration::from_secs(10));
    assert_eq!(tunnels[0].endpoint_id, e.id);
    assert_signed(&bed);
}

#[test]
fn create_uses_the_vpcs_default_group_and_says_the_rule_is_there() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_group(&bed.security_group_id())],
    );
    // The bed's own group is the VPC's "default" one.
    let out = endpoint(
        &bed,
        &["create", &db.id, "--yes", "--ip-address-type", "dualstack"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "using the VPC's default security group {}",
            bed.security_group_id()
        )),
        "{err}"
    );
    let p = &bed.requests_for("CreateInstanceConnectEndpoint")[0].params;
    assert!(!p.keys().any(|k| k.starts_with("SecurityGroupId")), "{p:?}");
    assert_eq!(p.get("PreserveClientIp").map(String::as_str), Some("false"));
    assert_eq!(
        p.get("IpAddressType").map(String::as_str),
        Some("dualstack")
    );
    assert!(
        err.contains(&format!(
            "already admits TCP 22 from the endpoint's security group {}",
            bed.security_group_id()
        )),
        "{err}"
    );
    assert!(!err.contains("authorize-security-group-ingress"), "{err}");
}

#[test]
fn create_without_a_terminal_or_yes_changes_nothing() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let out = endpoint(&bed, &["create", "db-1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("without confirmation") && err.contains("--yes"),
        "{err}"
    );
    assert!(
        err.contains("will create an EC2 Instance Connect Endpoint in subnet"),
        "{err}"
    );
    assert_eq!(mutating_calls(&bed), 0);
    assert!(bed.endpoints().is_empty());
    assert!(stdout(&out).is_empty());
}

#[test]
fn on_a_terminal_create_asks_and_list_is_a_table() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let out = endpoint_on_terminal(&bed, &["create", "db-1"], "n\n");
    let text = stdout(&out);
    assert!(text.contains("create the endpoint? [y/N]"), "{text}");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(mutating_calls(&bed), 0);

    let out = endpoint_on_terminal(&bed, &["create", "db-1"], "y\n");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(bed.requests_for("CreateInstanceConnectEndpoint").len(), 1);
    let e = &bed.endpoints()[0];
    assert!(
        text.contains(&format!("created {}: create-complete", e.id)),
        "{text}"
    );

    let out = endpoint_on_terminal(&bed, &["list"], "");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let header = text.lines().find(|l| l.starts_with("ID")).expect("header");
    assert!(
        header.contains("STATE")
            && header.contains("SECURITY GROUPS")
            && header.contains("CREATED"),
        "{header}"
    );
    let row = text.lines().find(|l| l.starts_with(&e.id)).expect("row");
    // Columns line up under the header.
    assert_eq!(row.find("create-complete"), header.find("STATE"), "{text}");
}

#[test]
fn an_existing_endpoint_in_the_vpc_is_named_not_duplicated() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let there = bed.add_endpoint(EndpointSpec::default().state("create-in-progress"));
    let out = endpoint(&bed, &["create", "db-1", "--yes"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(&format!(
            "{} already has an EC2 Instance Connect Endpoint: {}",
            bed.vpc_id(),
            there.id
        )),
        "{err}"
    );
    assert!(err.contains("one endpoint per VPC"), "{err}");
    assert!(
        err.contains(&format!("eic-connect endpoint delete {}", there.id)),
        "{err}"
    );
    assert_eq!(mutating_calls(&bed), 0);
}

#[test]
fn create_failed_reports_the_state_message() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.set_endpoint_create_delay(Duration::from_millis(300));
    bed.fail_next_endpoint_create("Insufficient free IP addresses in subnet \x1b[31mred\x1b[0m");
    let out = endpoint(&bed, &["create", "db-1", "--yes"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    let id = &bed.endpoints()[0].id;
    assert!(
        err.contains(&format!(
            "{id} ended create-failed: Insufficient free IP addresses in subnet"
        )),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(
        err.contains(&format!("eic-connect endpoint delete {id}")),
        "{err}"
    );
    assert!(!err.contains("no hourly"), "{err}");
}

#[test]
fn a_missing_egress_rule_is_reported_with_the_fix_before_creating() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let eice_sg = "sg-0e1c0e1c0e1c0e1c1";
    bed.set_security_group(eice_sg, vec![]);
    bed.set_security_group_egress(eice_sg, vec![SgRule::tcp(443, 443).allow_cidr("0.0.0.0/0")]);
    let out = endpoint(
        &bed,
        &["create", "db-1", "--security-group", eice_sg, "--yes"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(&format!(
            "does not allow outbound TCP 22 to instance {} ({} or its security group {})",
            db.id,
            db.private_ip,
            bed.security_group_id()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "aws ec2 authorize-security-group-egress --group-id {eice_sg} --ip-permissions 'IpProtocol=tcp,FromPort=22,ToPort=22,UserIdGroupPairs=[{{GroupId={}}}]'",
            bed.security_group_id()
        )),
        "{err}"
    );
    assert_eq!(mutating_calls(&bed), 0);

    // Hostile rule values from AWS reach no terminal raw.
    bed.set_security_group_egress(
        eice_sg,
        vec![
            SgRule::tcp(22, 22)
                .allow_cidr("\x1b]0;owned\x07")
                .allow_group("sg-\x1b[2J"),
        ],
    );
    let out = endpoint(
        &bed,
        &["create", "db-1", "--security-group", eice_sg, "--yes"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert_eq!(mutating_calls(&bed), 0);

    // With port 22 allowed to the instance's group, --rdp still wants 3389.
    bed.set_security_group_egress(
        eice_sg,
        vec![SgRule::tcp(22, 22).allow_group(&bed.security_group_id())],
    );
    let out = endpoint(
        &bed,
        &[
            "create",
            "db-1",
            "--security-group",
            eice_sg,
            "--rdp",
            "--yes",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("does not allow outbound TCP 3389"), "{err}");
    assert_eq!(mutating_calls(&bed), 0);
}

#[test]
fn no_wait_returns_while_in_progress() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.set_endpoint_create_delay(Duration::from_secs(60));
    let started = Instant::now();
    let out = endpoint(&bed, &["create", "db-1", "--yes", "--no-wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    let e = &bed.endpoints()[0];
    assert_eq!(e.state, "create-in-progress");
    assert_eq!(stdout(&out), format!("{}\n", e.id));
    assert!(stderr(&out).contains("not waiting"), "{}", stderr(&out));
}

#[test]
fn create_errors_come_from_the_error_table() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    // An unknown subnet: DescribeSubnets says so.
    let out = endpoint(
        &bed,
        &["create", "--subnet", "subnet-0123456789abcdef0", "--yes"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("no such subnet"), "{err}");
    assert!(err.contains("hint: check --subnet"), "{err}");
    // An unknown security group.
    let out = endpoint(
        &bed,
        &[
            "create",
            "db-1",
            "--security-group",
            "sg-0123456789abcdef0",
            "--yes",
        ],
    );
    let err = stderr(&out);
    assert!(err.contains("no such security group"), "{err}");
    // Not allowed: the hint names the permissions creating needs.
    bed.fail_next("CreateInstanceConnectEndpoint", "UnauthorizedOperation", 1);
    let out = endpoint(&bed, &["create", "db-1", "--yes"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ec2:CreateInstanceConnectEndpoint"), "{err}");
    assert!(
        err.contains("ec2:CreateNetworkInterface") && err.contains("iam:CreateServiceLinkedRole"),
        "{err}"
    );
    // Bad ids never reach AWS.
    let before = bed.requests().len();
    let out = endpoint(&bed, &["create", "--subnet", "subnet-\x1b[2J", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains('\x1b'));
    assert_eq!(bed.requests().len(), before);
    assert!(bed.endpoints().is_empty());
}

// ---------------------------------------------------------------- delete

#[test]
fn delete_waits_for_delete_complete() {
    let bed = TestBed::start();
    let e = bed.add_endpoint(EndpointSpec::default());
    bed.set_endpoint_delete_delay(Duration::from_millis(1000));
    let started = Instant::now();
    let out = endpoint(&bed, &["delete", &e.id, "--yes"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    let deletes = bed.requests_for("DeleteInstanceConnectEndpoint");
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].params.get("InstanceConnectEndpointId"),
        Some(&e.id)
    );
    assert_eq!(bed.endpoints()[0].state, "delete-complete");
    assert!(err.contains(&format!("deleting {}", e.id)), "{err}");
    assert!(err.contains(&format!("deleted {}", e.id)), "{err}");
    assert_signed(&bed);
}

#[test]
fn delete_refuses_unknown_ids_and_unconfirmed_requests() {
    let bed = TestBed::start();
    let e = bed.add_endpoint(EndpointSpec::default());
    let out = endpoint(&bed, &["delete", "eice-0123456789abcdef0", "--yes"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("no EC2 Instance Connect Endpoint eice-0123456789abcdef0"),
        "{err}"
    );
    assert_eq!(mutating_calls(&bed), 0);

    let before = bed.requests().len();
    let out = endpoint(&bed, &["delete", "eice-nothex", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(bed.requests().len(), before, "a malformed id reached AWS");

    let out = endpoint(&bed, &["delete", &e.id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("without confirmation") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(mutating_calls(&bed), 0);
    assert_eq!(bed.endpoints()[0].state, "create-complete");
}
