//! `eic-connect audit`, end to end: the real binary against the CloudTrail
//! stand-in, whose history holds the bed's own EC2 Instance Connect traffic
//! (key pushes and endpoint tunnels) and synthetic events.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::api::{ApiCall, Fault};
use support::cloudtrail::{EventSpec, assumed_role, iam_user};
use support::cmd::{run, stderr, stdout};
use support::eice::EndpointSpec;
use support::{InstanceSpec, TestBed};

/// eic-connect (connect) logging in as the bed's user.
fn connect(bed: &TestBed, args: &[&str]) -> Output {
    let mut c = support::cmd::eic(bed);
    c.args(args);
    run(c)
}

/// eic-connect endpoint connection (port 22, which the endpoint maps).
fn connect_eice(bed: &TestBed, args: &[&str]) -> Output {
    let mut c = bed.command();
    c.args(["-l", &bed.os_user()])
        .args(args)
        .stdin(Stdio::null());
    run(c)
}

/// `eic-connect audit …`. Commands in a test follow each other faster than
/// people type them: the bed's LookupEvents bucket gets a second back
/// first (the rate within one run is the command's to keep).
fn audit_cmd(bed: &TestBed, args: &[&str]) -> Command {
    bed.pass_rate_limit_time("LookupEvents", Duration::from_secs(1));
    let mut c = bed.command();
    c.arg("audit").args(args).stdin(Stdio::null());
    c
}

fn audit(bed: &TestBed, args: &[&str]) -> Output {
    run(audit_cmd(bed, args))
}

/// `audit --json …`, parsed; the command must succeed.
#[track_caller]
fn audit_json(bed: &TestBed, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = audit(bed, &all);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)))
}

fn events(doc: &Value) -> Vec<Value> {
    doc["events"].as_array().expect("events").clone()
}

/// The rows of the non-terminal output: tab-separated cells.
fn rows(out: &Output) -> Vec<Vec<String>> {
    stdout(out)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn lookups(bed: &TestBed) -> Vec<ApiCall> {
    bed.requests_for("LookupEvents")
}

/// A JSON-number parameter of a recorded call (the stand-in keeps them as
/// JSON text).
fn number(call: &ApiCall, name: &str) -> f64 {
    call.params
        .get(name)
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number: {:?}", call.params))
}

#[track_caller]
fn assert_one_event_source_attribute(call: &ApiCall) {
    let attrs: Value =
        serde_json::from_str(&call.params["LookupAttributes"]).expect("LookupAttributes");
    assert_eq!(
        attrs,
        serde_json::json!([{
            "AttributeKey": "EventSource",
            "AttributeValue": "ec2-instance-connect.amazonaws.com"
        }])
    );
    let max = number(call, "MaxResults");
    assert!((1.0..=50.0).contains(&max), "MaxResults {max}");
}

#[test]
fn a_connection_and_a_refused_push_are_shown_with_their_results() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.add_instance(InstanceSpec::named("db-1"));
    let before = bed.now();
    let out = connect(&bed, &["web-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    bed.fail_next("SendSSHPublicKey", "AuthException", 1);
    let out = connect(&bed, &["db-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    bed.clear_records();

    // The very connection, for its target.
    let out = audit(&bed, &["web-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = rows(&out);
    assert_eq!(shown.len(), 1, "{}", stdout(&out));
    let r = &shown[0];
    let time = r[0].clone();
    let user = bed.os_user();
    assert_eq!(
        r[1..],
        [
            "SendSSHPublicKey",
            "bed-user",
            "127.0.0.1",
            web.id.as_str(),
            user.as_str(),
            "-",
            "ok"
        ]
    );
    let at = support::timefmt::iso8601(before);
    assert!(
        time.as_str() >= &at[..17] && time.ends_with('Z'),
        "{time} vs {at}"
    );
    let calls = lookups(&bed);
    assert_eq!(calls.len(), 1);
    assert_one_event_source_attribute(&calls[0]);

    // Everything: both, newest first; the refusal with its code.
    let doc = audit_json(&bed, &[]);
    let all = events(&doc);
    assert_eq!(all.len(), 2, "{doc}");
    assert_eq!(all[0]["result"], "failed");
    assert_eq!(all[0]["error_code"], "AuthException");
    assert!(
        all[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("not authorized")
    );
    assert_eq!(all[1]["instance_id"], web.id.as_str());
    assert_eq!(all[1]["result"], "ok");
    assert_eq!(
        all[1]["principal_arn"],
        format!("arn:aws:iam::{}:user/bed-user", bed.account_id()).as_str()
    );
    assert!(
        all[1]["user_agent"]
            .as_str()
            .unwrap()
            .contains("aws-sdk-rust"),
        "{}",
        all[1]["user_agent"]
    );

    // --failures keeps the refusal only.
    let out = audit(&bed, &["--failures"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = rows(&out);
    assert_eq!(rows.len(), 1, "{}", stdout(&out));
    assert_eq!(rows[0][1], "SendSSHPublicKey");
    assert_eq!(rows[0][7], "AuthException");
    support::cmd::assert_signed(&bed);
}

#[test]
fn endpoint_tunnels_are_mapped_to_instances_by_private_address() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    let out = connect_eice(&bed, &["db-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let now = bed.now();
    // A tunnel to an address no instance holds, and one to db-1's address
    // from before db-1 was launched (an hour ago).
    bed.add_trail_event(EventSpec::tunnel(&endpoint.id, "10.9.9.9", 22).at(now - 600));
    bed.add_trail_event(EventSpec::tunnel(&endpoint.id, &db.private_ip, 22).at(now - 7200));
    bed.clear_records();

    let doc = audit_json(&bed, &[]);
    let all = events(&doc);
    let tunnels: Vec<&Value> = all.iter().filter(|e| e["event"] == "OpenTunnel").collect();
    assert_eq!(tunnels.len(), 3, "{doc}");
    let mapping = |ip: &str, mapping: &str| {
        tunnels
            .iter()
            .find(|e| e["private_ip"] == ip && e["instance_mapping"] == mapping)
            .unwrap_or_else(|| panic!("no {ip} {mapping} in {doc}"))
    };
    let live = mapping(&db.private_ip, "by-address");
    assert_eq!(live["instance_id"], db.id.as_str());
    assert_eq!(live["endpoint_id"], endpoint.id.as_str());
    assert_eq!(live["port"], 22);
    assert_eq!(live["result"], "ok");
    assert_eq!(live["os_user"], Value::Null);
    assert_eq!(mapping("10.9.9.9", "no-holder")["instance_id"], Value::Null);
    assert_eq!(
        mapping(&db.private_ip, "address-reused")["instance_id"],
        db.id.as_str()
    );
    let push = all
        .iter()
        .find(|e| e["event"] == "SendSSHPublicKey")
        .expect("the push");
    assert_eq!(push["instance_mapping"], "recorded");

    // One DescribeInstances, for every address seen.
    let describes = bed.requests_for("DescribeInstances");
    assert_eq!(describes.len(), 1);
    let filters = describes[0].filters();
    assert_eq!(filters.len(), 1, "{filters:?}");
    assert_eq!(filters[0].0, "private-ip-address");
    let values: BTreeSet<&str> = filters[0].1.iter().map(String::as_str).collect();
    assert_eq!(values, BTreeSet::from([db.private_ip.as_str(), "10.9.9.9"]));

    // The plain output marks uncertain mappings and says why.
    let out = audit(&bed, &["--event", "open-tunnel"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = rows(&out);
    assert_eq!(rows.len(), 3, "{}", stdout(&out));
    let instances: Vec<&str> = rows.iter().map(|r| r[4].as_str()).collect();
    assert_eq!(
        instances,
        [db.id.clone(), "?".into(), format!("{}?", db.id)]
    );
    assert_eq!(rows[0][6], format!("{} {}:22", endpoint.id, db.private_ip));
    let err = stderr(&out);
    assert!(err.contains("no instance holds 10.9.9.9"), "{err}");
    assert!(err.contains("launched after the tunnel"), "{err}");

    // The target's tunnels: matched by its private address.
    let doc = audit_json(&bed, &["db-1"]);
    let mine = events(&doc);
    assert_eq!(mine.len(), 3, "{doc}");
    assert!(mine.iter().all(|e| e["instance_id"] == db.id.as_str()));
}

#[test]
fn a_refused_tunnel_is_shown_with_its_error() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    bed.fail_next_tunnel(
        "AccessDeniedException",
        "User is not authorized to perform: ec2-instance-connect:OpenTunnel",
    );
    let out = connect_eice(&bed, &["--connect", "eice", "db-1", "--", "true"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc = audit_json(&bed, &["--failures"]);
    let all = events(&doc);
    assert!(!all.is_empty(), "{doc}");
    for e in &all {
        assert_eq!(e["event"], "OpenTunnel", "{doc}");
        assert_eq!(e["error_code"], "AccessDeniedException");
        assert_eq!(e["endpoint_id"], endpoint.id.as_str());
        assert_eq!(e["private_ip"], db.private_ip.as_str());
        assert_eq!(e["instance_id"], db.id.as_str());
        assert_eq!(e["instance_mapping"], "by-address");
    }
}

#[test]
fn pages_are_read_once_each_and_paced_under_the_rate_limit() {
    let bed = TestBed::start();
    let now = bed.now();
    for n in 0..120 {
        bed.add_trail_event(
            EventSpec::push("i-0123456789abcdef0", &format!("u{n}")).at(now - 60 * (n + 1)),
        );
    }
    let out = audit(&bed, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let all = events(&doc);
    assert_eq!(all.len(), 120);
    let ids: BTreeSet<&str> = all
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 120, "every event once");
    let users: Vec<String> = all
        .iter()
        .map(|e| e["os_user"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..120).map(|n| format!("u{n}")).collect();
    assert_eq!(users, expected, "newest first");
    assert_eq!(doc["truncated"], false);

    let calls = lookups(&bed);
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert_one_event_source_attribute(call);
        assert_eq!(call.error_code, None);
    }
    assert!(!calls[0].params.contains_key("NextToken"));
    assert!(
        calls[1..]
            .iter()
            .all(|c| c.params.contains_key("NextToken"))
    );
    for pair in calls.windows(2) {
        let gap = pair[1]
            .received
            .duration_since(pair[0].received)
            .unwrap_or_default();
        assert!(gap >= Duration::from_millis(480), "calls {gap:?} apart");
    }
    assert_eq!(bed.throttled("LookupEvents"), 0);
    // Not a terminal: no progress line.
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // --limit stops reading once enough is shown, and says so.
    bed.clear_records();
    let out = audit(&bed, &["--limit", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(rows(&out).len(), 10);
    assert_eq!(rows(&out)[0][5], "u0");
    assert!(
        stderr(&out).contains("showing the newest 10 events"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lookups(&bed).len(), 1);
}

#[test]
fn the_time_range_principal_user_and_kind_filters() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").tag("Team", "web"));
    let db = bed.add_instance(InstanceSpec::named("db-1").tag("Team", "data"));
    let now = bed.now();
    let account = bed.account_id().to_owned();
    let alice = assumed_role(&account, "Admin", "alice");
    let bob = iam_user(&account, "bob", "AKIAEXAMPLEBOB000001");
    bed.add_trail_event(
        EventSpec::push(&web.id, "ec2-user")
            .identity(alice.clone())
            .at(now - 7200),
    );
    bed.add_trail_event(
        EventSpec::push(&web.id, "ubuntu")
            .identity(bob.clone())
            .at(now - 30 * 3600),
    );
    bed.add_trail_event(
        EventSpec::push(&db.id, "ec2-user")
            .identity(bob.clone())
            .at(now - 600),
    );
    bed.add_trail_event(
        EventSpec::serial(&db.id)
            .identity(alice.clone())
            .at(now - 300),
    );

    // Default: the last 24 hours, sent to CloudTrail as StartTime/EndTime.
    let doc = audit_json(&bed, &[]);
    assert_eq!(events(&doc).len(), 3, "{doc}");
    let call = &lookups(&bed)[0];
    let (start, end) = (number(call, "StartTime"), number(call, "EndTime"));
    assert!((end - now as f64).abs() <= 5.0, "EndTime {end} vs {now}");
    assert_eq!(end - start, 86400.0);

    bed.clear_records();
    let doc = audit_json(&bed, &["--since", "2d"]);
    assert_eq!(events(&doc).len(), 4);
    assert!((number(&lookups(&bed)[0], "StartTime") - (now - 172_800) as f64).abs() <= 5.0);

    bed.clear_records();
    let since = support::timefmt::iso8601(now - 31 * 3600).replace(".000Z", "Z");
    let until = support::timefmt::iso8601(now - 3600).replace(".000Z", "Z");
    let doc = audit_json(&bed, &["--since", &since, "--until", &until]);
    let shown: Vec<Value> = events(&doc).iter().map(|e| e["os_user"].clone()).collect();
    assert_eq!(shown, ["ec2-user", "ubuntu"]);
    assert_eq!(
        number(&lookups(&bed)[0], "StartTime"),
        (now - 31 * 3600) as f64
    );
    assert_eq!(number(&lookups(&bed)[0], "EndTime"), (now - 3600) as f64);
    assert_eq!(doc["since"], since.as_str());

    let doc = audit_json(&bed, &["--since", "2d", "--os-user", "ubuntu"]);
    assert_eq!(events(&doc).len(), 1);
    assert_eq!(events(&doc)[0]["principal"], "bob");

    let doc = audit_json(&bed, &["--principal", "alice"]);
    let names: BTreeSet<String> = events(&doc)
        .iter()
        .map(|e| e["principal"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, BTreeSet::from(["Admin/alice".to_owned()]));
    assert_eq!(events(&doc).len(), 2);
    let doc = audit_json(
        &bed,
        &["--principal", &format!("arn:aws:iam::{account}:user/bob")],
    );
    assert_eq!(events(&doc).len(), 1, "{doc}");

    let doc = audit_json(&bed, &["--event", "serial"]);
    assert_eq!(events(&doc).len(), 1);
    assert_eq!(events(&doc)[0]["instance_id"], db.id.as_str());
    let out = audit(&bed, &["--event", "serial"]);
    assert_eq!(rows(&out)[0][5], "serial console");

    // list-style filters select instances, then their events.
    let doc = audit_json(&bed, &["-f", "tag:Team=web", "--since", "2d"]);
    let all = events(&doc);
    assert_eq!(all.len(), 2, "{doc}");
    assert!(all.iter().all(|e| e["instance_id"] == web.id.as_str()));
}

#[test]
fn json_field_names_are_stable() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let now = bed.now();
    bed.add_trail_event(
        EventSpec::push(&web.id, "ec2-user")
            .failed("AccessDenied", "User: x is not authorized")
            .source_ip("203.0.113.9")
            .user_agent("curl/8")
            .at(now - 60),
    );
    let doc = audit_json(&bed, &[]);
    let keys: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["events", "region", "since", "until", "truncated"])
    );
    assert_eq!(doc["region"], bed.region());
    let e = &events(&doc)[0];
    let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "time",
            "event",
            "principal",
            "principal_arn",
            "source_ip",
            "instance_id",
            "os_user",
            "endpoint_id",
            "private_ip",
            "port",
            "instance_mapping",
            "result",
            "error_code",
            "error_message",
            "user_agent",
            "event_id",
        ])
    );
    let time = support::timefmt::iso8601(now - 60).replace(".000Z", "Z");
    assert_eq!(e["time"], time.as_str());
    assert_eq!(e["event"], "SendSSHPublicKey");
    assert_eq!(e["principal"], "bed-user");
    assert_eq!(e["source_ip"], "203.0.113.9");
    assert_eq!(e["result"], "failed");
    assert_eq!(e["error_code"], "AccessDenied");
    assert_eq!(e["error_message"], "User: x is not authorized");
    assert_eq!(e["user_agent"], "curl/8");
    assert_eq!(e["endpoint_id"], Value::Null);
    assert_eq!(e["port"], Value::Null);
}

const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[31m\r\n\u{202e}x";

#[test]
fn hostile_values_from_cloudtrail_never_reach_the_terminal_raw() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let now = bed.now();
    let mut identity = iam_user(bed.account_id(), &format!("evil{HOSTILE}"), "AKIA0");
    identity["arn"] = format!("arn:aws:iam::1:user/evil{HOSTILE}").into();
    bed.add_trail_event(
        EventSpec::push(&web.id, &format!("root{HOSTILE}"))
            .identity(identity)
            .source_ip(&format!("1.2.3.4{HOSTILE}"))
            .user_agent(&format!("ua{HOSTILE}"))
            .failed(&format!("Bad{HOSTILE}"), HOSTILE)
            .at(now - 120),
    );
    bed.add_trail_event(EventSpec::push(&format!("i-1{HOSTILE}"), "x").at(now - 100));
    bed.add_trail_event(EventSpec::tunnel(&format!("eice-{HOSTILE}"), HOSTILE, 22).at(now - 90));
    bed.add_trail_record("SendSSHPublicKey", now - 80, &format!("{{broken{HOSTILE}"));

    let clean = |text: &str| {
        !text.contains('\x1b')
            && !text.contains('\x07')
            && !text.contains('\r')
            && !text.contains('\u{202e}')
    };
    let out = audit(&bed, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(clean(&stdout(&out)), "{:?}", stdout(&out));
    assert!(clean(&stderr(&out)), "{:?}", stderr(&out));
    assert_eq!(
        rows(&out).len(),
        4,
        "one line per event: {:?}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("1 of these events came with a record that is not JSON"),
        "{}",
        stderr(&out)
    );
    assert!(
        rows(&out).iter().all(|r| r.len() == 8),
        "{:?}",
        stdout(&out)
    );

    // JSON: escaped on the terminal, exact for a parser.
    let out = audit(&bed, &["--json"]);
    assert!(clean(&stdout(&out)) && !stdout(&out).trim().contains('\n'));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &events(&doc)[3];
    assert_eq!(first["error_message"], HOSTILE);
    assert_eq!(first["user_agent"], format!("ua{HOSTILE}").as_str());

    // On a terminal: the aligned table, with no escape sequence but the
    // progress line's own erase.
    let seen = on_terminal(&bed, &["audit"]);
    let without_erase = seen.replace("\r\x1b[2K", "");
    assert!(
        !without_erase.contains('\x1b') && !without_erase.contains('\x07'),
        "{seen:?}"
    );
    assert!(
        seen.contains("TIME (UTC)") && seen.contains("PRINCIPAL"),
        "{seen:?}"
    );
    assert!(seen.contains("\\u{1b}"), "escapes are shown: {seen:?}");
    // The progress line was shown, then erased before the table.
    let progress = seen.find("reading CloudTrail").expect("a progress line");
    let erased = seen.rfind("\r\x1b[2K").expect("erased");
    let table = seen.find("TIME (UTC)").expect("a table");
    assert!(progress < erased && erased < table, "{seen:?}");

    // An error message from CloudTrail, likewise.
    bed.inject(
        "LookupEvents",
        Fault::Answer {
            status: 400,
            content_type: "application/x-amz-json-1.1".into(),
            body: serde_json::json!({
                "__type": "AccessDeniedException",
                "Message": format!("User: evil{HOSTILE} is not authorized"),
            })
            .to_string(),
        },
        1,
    );
    let out = audit(&bed, &[]);
    assert_eq!(out.status.code(), Some(255));
    assert!(clean(&stderr(&out)), "{:?}", stderr(&out));
    assert!(
        stderr(&out).contains("cloudtrail:LookupEvents"),
        "{}",
        stderr(&out)
    );
}

/// Runs eic-connect on a pseudo-terminal (util-linux `script`) and returns
/// everything it wrote there.
fn on_terminal(bed: &TestBed, args: &[&str]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = quote(&support::eic_connect_bin().to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    bed.pass_rate_limit_time("LookupEvents", Duration::from_secs(1));
    let mut c = Command::new("script");
    bed.apply_env(&mut c);
    c.env("TERM", "xterm")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::null());
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn every_lookup_error_has_a_message_and_a_hint() {
    let bed = TestBed::start();
    let cases = [
        ("AccessDeniedException", "cloudtrail:LookupEvents"),
        ("ThrottlingException", "2 LookupEvents calls a second"),
        ("InvalidLookupAttributesException", "one attribute"),
        ("InvalidTimeRangeException", "90 days"),
        ("InvalidMaxResultsException", "at most 50"),
        ("InvalidNextTokenException", "run the command again"),
        ("InvalidEventCategoryException", "management events"),
        ("OperationNotPermittedException", "administrator"),
        ("UnsupportedOperationException", "check --region"),
        ("InternalServerError", "CloudTrail had an internal error"),
    ];
    for (code, needle) in cases {
        bed.fail_next("LookupEvents", code, 1);
        let out = audit(&bed, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{code}: {err}");
        assert!(err.starts_with("eic-connect: error: "), "{code}: {err}");
        assert!(
            err.contains("\nhint: ") || err.contains("hint:"),
            "{code}: {err}"
        );
        assert!(err.contains(needle), "{code}: {err}");
        assert!(!err.contains("failed with AWS error"), "{code}: {err}");
    }

    // The stand-in's own rate limit answers ThrottlingException.
    bed.set_rate_limit("LookupEvents", 0.0, 0);
    let out = audit(&bed, &[]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("CloudTrail is throttling LookupEvents"),
        "{}",
        stderr(&out)
    );
    assert_eq!(bed.throttled("LookupEvents"), 1);
}

#[test]
fn bad_input_makes_no_cloudtrail_call() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let usage = [
        (
            vec!["--since", "yesterday"],
            "neither a duration nor a time",
        ),
        (vec!["--since", "2h", "--until", "3h"], "not before"),
        (vec!["--since", "100d"], "90 days"),
        (vec!["--until", "2026-13-01T00:00:00Z"], "neither"),
        (vec!["--os-user", "bad user"], "user"),
        (vec!["-f", "=x"], "not a filter"),
        (vec!["web-1", "-f", "tag:A=b"], "cannot be used with"),
        (vec!["--limit", "0"], "0"),
        (vec!["--event", "reboot"], "reboot"),
    ];
    for (args, needle) in usage {
        let out = audit(&bed, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(bed.requests().is_empty(), "{args:?} made calls");
    }
    let out = audit(&bed, &["nosuch"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("no instance matches"),
        "{}",
        stderr(&out)
    );
    let out = audit(&bed, &["-f", "tag:Team=none"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("no instance matches"),
        "{}",
        stderr(&out)
    );
    assert!(lookups(&bed).is_empty());
    assert!(bed.trail_events().is_empty(), "nothing was pushed");
}

#[test]
fn no_events_is_success_with_a_note() {
    let bed = TestBed::start();
    let now = bed.now();
    // Older than the default window.
    bed.add_trail_event(EventSpec::push("i-0123456789abcdef0", "ec2-user").at(now - 2 * 86400));
    let out = audit(&bed, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("no EC2 Instance Connect events in")
            && stderr(&out).contains(&format!("region {}", bed.region())),
        "{}",
        stderr(&out)
    );
    let doc = audit_json(&bed, &[]);
    assert_eq!(events(&doc).len(), 0);
    assert_eq!(
        audit_json(&bed, &["--since", "3d"])["events"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

type Lookup = Result<
    aws_sdk_cloudtrail::operation::lookup_events::LookupEventsOutput,
    aws_sdk_cloudtrail::error::SdkError<
        aws_sdk_cloudtrail::operation::lookup_events::LookupEventsError,
        aws_sdk_cloudtrail::config::http::HttpResponse,
    >,
>;

/// `ok`, or the error code a LookupEvents call met.
fn code(result: Lookup) -> String {
    use aws_sdk_cloudtrail::error::ProvideErrorMetadata;
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e
            .as_service_error()
            .and_then(|s| s.code())
            .unwrap_or("no code")
            .to_owned(),
    }
}

fn cloudtrail_client(bed: &TestBed) -> aws_sdk_cloudtrail::Client {
    use aws_sdk_cloudtrail::config::{BehaviorVersion, Credentials, Region};
    let creds = Credentials::new(
        bed.access_key_id(),
        bed.secret_access_key(),
        bed.session_token().map(str::to_owned),
        None,
        "testbed",
    );
    let conf = aws_sdk_cloudtrail::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(bed.region().to_owned()))
        .endpoint_url(bed.endpoint())
        .credentials_provider(creds)
        .retry_config(aws_sdk_cloudtrail::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_cloudtrail::Client::from_conf(conf)
}

/// The stand-in refuses what CloudTrail refuses, with CloudTrail's codes,
/// and pages with tokens bound to their query.
#[test]
// The SDK's error type is large; these are a test's few calls.
#[allow(clippy::result_large_err)]
fn the_cloudtrail_stand_in_checks_lookups_as_cloudtrail_does() {
    use aws_sdk_cloudtrail::operation::lookup_events::builders::LookupEventsFluentBuilder;
    use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
    use aws_smithy_types::DateTime;
    let bed = TestBed::start();
    let now = bed.now();
    for n in 0..3 {
        bed.add_trail_event(EventSpec::push("i-0123456789abcdef0", "ec2-user").at(now - n));
    }
    let client = cloudtrail_client(&bed);
    let source = LookupAttribute::builder()
        .attribute_key(LookupAttributeKey::EventSource)
        .attribute_value("ec2-instance-connect.amazonaws.com")
        .build()
        .unwrap();
    let name = LookupAttribute::builder()
        .attribute_key(LookupAttributeKey::EventName)
        .attribute_value("SendSSHPublicKey")
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lookup = || client.lookup_events().lookup_attributes(source.clone());
    let call = |req: LookupEventsFluentBuilder| {
        bed.pass_rate_limit_time("LookupEvents", Duration::from_secs(1));
        rt.block_on(req.send())
    };
    assert_eq!(
        code(call(lookup().lookup_attributes(name.clone()))),
        "InvalidLookupAttributesException"
    );
    assert_eq!(
        code(call(lookup().max_results(51))),
        "InvalidMaxResultsException"
    );
    assert_eq!(
        code(call(
            lookup()
                .start_time(DateTime::from_secs(now))
                .end_time(DateTime::from_secs(now - 60))
        )),
        "InvalidTimeRangeException"
    );
    assert_eq!(
        code(call(lookup().next_token("not-issued"))),
        "InvalidNextTokenException"
    );
    assert_eq!(
        code(call(lookup().event_category(
            aws_sdk_cloudtrail::types::EventCategory::from("bogus")
        ))),
        "InvalidEventCategoryException"
    );
    // Pages: newest first, a token good for its own query only.
    let first = call(lookup().max_results(2)).unwrap();
    let times: Vec<i64> = first
        .events()
        .iter()
        .map(|e| e.event_time().unwrap().secs())
        .collect();
    assert_eq!(times, [now, now - 1]);
    let token = first.next_token().unwrap().to_owned();
    assert_eq!(
        code(call(lookup().max_results(3).next_token(&token))),
        "InvalidNextTokenException"
    );
    let second = call(lookup().max_results(2).next_token(&token)).unwrap();
    assert_eq!(second.events().len(), 1);
    assert_eq!(second.next_token(), None);
    let record: Value =
        serde_json::from_str(second.events()[0].cloud_trail_event().unwrap()).unwrap();
    for key in [
        "eventVersion",
        "userIdentity",
        "eventTime",
        "eventSource",
        "eventName",
        "awsRegion",
        "sourceIPAddress",
        "userAgent",
        "requestParameters",
        "responseElements",
        "requestID",
        "eventID",
        "readOnly",
        "resources",
        "eventType",
        "managementEvent",
        "recipientAccountId",
        "eventCategory",
    ] {
        assert!(record.get(key).is_some(), "{key} missing: {record}");
    }
    // Two calls a second, a burst of two: the third at once is throttled.
    bed.set_rate_limit("LookupEvents", 2.0, 2);
    let codes: Vec<String> = (0..3).map(|_| code(rt.block_on(lookup().send()))).collect();
    assert_eq!(codes, ["ok", "ok", "ThrottlingException"]);
}
