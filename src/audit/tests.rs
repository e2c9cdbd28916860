use super::*;
use proptest::prelude::*;

fn record(v: serde_json::Value) -> String {
    v.to_string()
}

fn ssh_record() -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": "AROAEXAMPLE:alice",
            "arn": "arn:aws:sts::123456789012:assumed-role/Admin/alice",
            "accountId": "123456789012",
            "sessionContext": {"sessionIssuer": {"type": "Role", "userName": "Admin"}}
        },
        "eventTime": "2026-12-01T10:00:00Z",
        "eventSource": "ec2-instance-connect.amazonaws.com",
        "eventName": "SendSSHPublicKey",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "eic-connect",
        "requestParameters": {"instanceId": "i-0123456789abcdef0", "instanceOSUser": "ec2-user", "sSHPublicKey": "ssh-ed25519 AAAA"},
        "responseElements": {"requestId": "r", "success": true},
        "eventID": "e-1"
    })
}

#[test]
fn reads_a_key_push() {
    let e = parse_event(&Outer::default(), Some(&record(ssh_record())));
    assert_eq!(e.name, "SendSSHPublicKey");
    assert_eq!(e.kind(), Some(Kind::SshKey));
    assert_eq!(e.principal.as_deref(), Some("Admin/alice"));
    assert_eq!(
        e.principal_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/Admin/alice")
    );
    assert_eq!(e.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(e.os_user.as_deref(), Some("ec2-user"));
    assert_eq!(e.source_ip.as_deref(), Some("198.51.100.7"));
    assert_eq!(e.time, time::parse_rfc3339("2026-12-01T10:00:00Z"));
    assert_eq!(e.event_id.as_deref(), Some("e-1"));
    assert!(!e.failed() && !e.unreadable);
}

#[test]
fn reads_a_tunnel_and_a_failure() {
    let mut r = ssh_record();
    r["eventName"] = "OpenTunnel".into();
    r["requestParameters"] = serde_json::json!({
        "instanceConnectEndpointId": "eice-0123456789abcdef0",
        "privateIpAddress": "10.0.1.5",
        "remotePort": "22",
        "maxTunnelDuration": "3600"
    });
    r["errorCode"] = "AccessDenied".into();
    r["errorMessage"] = "not allowed".into();
    let e = parse_event(&Outer::default(), Some(&record(r)));
    assert_eq!(e.kind(), Some(Kind::Tunnel));
    assert_eq!(e.endpoint_id.as_deref(), Some("eice-0123456789abcdef0"));
    assert_eq!(e.address(), Some("10.0.1.5".parse().unwrap()));
    assert_eq!(e.port, Some(22));
    assert_eq!(e.instance_id, None);
    assert_eq!(e.error_code.as_deref(), Some("AccessDenied"));
    assert!(e.failed());
}

#[test]
fn names_principals_as_people_say_them() {
    let p = |v: serde_json::Value| principal(&v).0;
    assert_eq!(
        p(
            serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::1:user/ops/bob", "userName": "bob"})
        ),
        Some("bob".into())
    );
    assert_eq!(
        p(serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::1:user/ops/bob"})),
        Some("bob".into())
    );
    assert_eq!(
        p(serde_json::json!({"type": "Root", "arn": "arn:aws:iam::1:root"})),
        Some("root".into())
    );
    assert_eq!(
        p(
            serde_json::json!({"type": "AssumedRole", "principalId": "AROA:s1",
            "sessionContext": {"sessionIssuer": {"userName": "R"}}})
        ),
        Some("R/s1".into())
    );
    assert_eq!(
        p(serde_json::json!({"type": "AWSService", "invokedBy": "ec2.amazonaws.com"})),
        Some("ec2.amazonaws.com".into())
    );
    assert_eq!(
        p(serde_json::json!({"type": "Weird"})),
        Some("Weird".into())
    );
    assert_eq!(p(serde_json::json!({})), None);
}

#[test]
fn missing_or_odd_records_fall_back_to_the_outer_fields() {
    let outer = Outer {
        event_id: Some("e-9".into()),
        event_name: Some("SendSSHPublicKey".into()),
        event_time: Some(1_700_000_000),
        username: Some("carol".into()),
    };
    for text in [
        None,
        Some(""),
        Some("not json"),
        Some("[1,2]"),
        Some("\"s\""),
        Some("null"),
    ] {
        let e = parse_event(&outer, text);
        assert!(e.unreadable, "{text:?}");
        assert_eq!(e.time, Some(1_700_000_000));
        assert_eq!(e.principal.as_deref(), Some("carol"));
        assert_eq!(e.name, "SendSSHPublicKey");
    }
    // Wrong types inside a readable record are ignored, not trusted.
    let odd = serde_json::json!({
        "eventTime": 5, "userIdentity": "x", "sourceIPAddress": ["a"],
        "requestParameters": {"instanceId": 7, "remotePort": 70000, "privateIpAddress": {}},
        "errorCode": false
    });
    let e = parse_event(&outer, Some(&odd.to_string()));
    assert!(!e.unreadable);
    assert_eq!(e.time, Some(1_700_000_000));
    assert_eq!(
        (e.instance_id, e.port, e.private_ip, e.error_code),
        (None, None, None, None)
    );
    assert_eq!(e.principal.as_deref(), Some("carol"));
}

fn holder(id: &str, launched: i64, ips: &[&str]) -> Holder {
    Holder {
        id: id.into(),
        launch_time: Some(launched),
        addresses: ips.iter().map(|i| i.parse().unwrap()).collect(),
    }
}

#[test]
fn tunnels_map_by_address_and_say_when_unsure() {
    let tunnel = |ip: &str| Event {
        name: "OpenTunnel".into(),
        time: Some(1000),
        private_ip: Some(ip.into()),
        ..Event::default()
    };
    let holders = [
        holder("i-00000001", 500, &["10.0.0.1"]),
        holder("i-00000002", 2000, &["10.0.0.2"]),
        holder("i-00000003", 500, &["10.0.0.3"]),
        holder("i-00000004", 500, &["10.0.0.3", "2600::1"]),
    ];
    assert_eq!(
        map_event(&tunnel("10.0.0.1"), &holders),
        Mapping::ByAddress("i-00000001".into())
    );
    assert_eq!(
        map_event(&tunnel("10.0.0.2"), &holders),
        Mapping::LaunchedAfter("i-00000002".into())
    );
    assert_eq!(map_event(&tunnel("10.0.0.9"), &holders), Mapping::NoHolder);
    assert_eq!(
        map_event(&tunnel("10.0.0.3"), &holders),
        Mapping::Several(vec!["i-00000003".into(), "i-00000004".into()])
    );
    assert_eq!(
        map_event(&tunnel("2600:0::1"), &holders),
        Mapping::ByAddress("i-00000004".into())
    );
    assert_eq!(map_event(&tunnel("not an ip"), &holders), Mapping::Unknown);
    let push = Event {
        instance_id: Some("i-00000009".into()),
        ..tunnel("10.0.0.1")
    };
    assert_eq!(
        map_event(&push, &holders),
        Mapping::Recorded("i-00000009".into())
    );
    assert_eq!(Mapping::NoHolder.cell(), "?");
    assert_eq!(Mapping::LaunchedAfter("i-1".into()).cell(), "i-1?");
    let events: Vec<(Event, Mapping)> = ["10.0.0.2", "10.0.0.9", "10.0.0.9", "10.0.0.1"]
        .iter()
        .map(|ip| (tunnel(ip), map_event(&tunnel(ip), &holders)))
        .collect();
    let notes = notes(&events);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("launched after") && notes[1].contains("no instance holds 10.0.0.9"));
}

#[test]
fn times_and_ranges() {
    let now = time::parse_rfc3339("2026-12-02T00:00:00Z").unwrap();
    assert_eq!(time::parse_when("2h", now), Some(now - 7200));
    assert_eq!(time::parse_when("7d", now), Some(now - 7 * 86400));
    assert_eq!(time::parse_when("1w", now), Some(now - 7 * 86400));
    assert_eq!(
        time::parse_when("2026-12-01T02:00:00+02:00", now),
        Some(now - 86400)
    );
    assert_eq!(time::parse_when("2026-12-01", now), Some(now - 86400));
    for bad in [
        "",
        "h",
        "2x",
        "-2h",
        "yesterday",
        "2026-13-01",
        "9999999999999999999d",
    ] {
        assert_eq!(time::parse_when(bad, now), None, "{bad:?}");
    }
    assert_eq!(time::range(None, None, now).unwrap(), (now - 86400, now));
    assert_eq!(
        time::range(Some("90d"), None, now).unwrap().0,
        now - 90 * 86400
    );
    assert!(
        time::range(Some("91d"), None, now)
            .unwrap_err()
            .message
            .contains("90 days")
    );
    assert!(
        time::range(Some("1h"), Some("2h"), now)
            .unwrap_err()
            .message
            .contains("not before")
    );
    let e = time::range(Some("\x1b[2J"), None, now).unwrap_err();
    assert!(
        !e.message.contains('\x1b') && e.exit == crate::error::EXIT_USAGE,
        "{}",
        e.message
    );
    assert_eq!(time::format(now), "2026-12-02T00:00:00Z");
    // Without --since: a day before --until, never before the history.
    assert_eq!(
        time::range(None, Some("89d12h"), now).ok(),
        None,
        "not a duration"
    );
    assert_eq!(
        time::range(None, Some("2148h"), now).unwrap(),
        (now - 90 * 86400, now - 2148 * 3600)
    );
    assert_eq!(
        time::range(None, Some("2d"), now).unwrap(),
        (now - 3 * 86400, now - 2 * 86400)
    );
}

#[test]
fn rows_are_terminal_safe() {
    let e = Event {
        name: "SendSSHPublicKey".into(),
        principal: Some("evil\x1b[2J\nname".into()),
        source_ip: Some("1.2.3.4\r".into()),
        os_user: Some("u\u{202e}x".into()),
        error_code: Some("Bad\x07".into()),
        ..Event::default()
    };
    let r = row(&e, &Mapping::Recorded("i-1\n".into()));
    for cell in &r {
        assert!(!cell.chars().any(crate::sanitize::needs_escape), "{cell:?}");
    }
    let t = crate::table::render(&HEADER, &[r], Some((2, PRINCIPAL_WIDTH)));
    assert_eq!(t.lines().count(), 2, "{t}");
}

proptest! {
    /// No record, however broken, panics the parser.
    #[test]
    fn parsing_never_panics(text in ".{0,300}", name in ".{0,40}", t in any::<i64>()) {
        let outer = Outer { event_name: Some(name), event_time: Some(t), ..Outer::default() };
        let e = parse_event(&outer, Some(&text));
        let _ = map_event(&e, &[]);
        let _ = row(&e, &map_event(&e, &[]));
    }

    /// Records with the right shape but arbitrary values and types.
    #[test]
    fn odd_values_never_panic(
        values in proptest::collection::vec(
            prop_oneof![
                any::<i64>().prop_map(serde_json::Value::from),
                ".{0,20}".prop_map(serde_json::Value::from),
                any::<bool>().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
                Just(serde_json::json!([1, {"a": "b"}])),
            ],
            12,
        )
    ) {
        let v = serde_json::json!({
            "eventName": values[0], "eventTime": values[1], "eventID": values[2],
            "userIdentity": {"type": values[3], "arn": values[4], "principalId": values[5],
                "sessionContext": {"sessionIssuer": {"userName": values[6]}}},
            "requestParameters": {"instanceId": values[7], "privateIpAddress": values[8],
                "remotePort": values[9], "instanceOSUser": values[10]},
            "errorCode": values[11],
        });
        let e = parse_event(&Outer::default(), Some(&v.to_string()));
        let mapping = map_event(&e, &[]);
        let _ = row(&e, &mapping);
        let _ = event_json(&e, &mapping);
    }
}
