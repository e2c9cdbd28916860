//! Tests of the test bed itself (tests/support), not of eic-connect: the
//! SigV4 verifier against AWS's published vectors, sshd + the
//! AuthorizedKeysCommand with plain OpenSSH, and the API stand-in through
//! raw HTTP and through the real AWS SDK clients eic-connect uses.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::{Duration, SystemTime};

use support::sigv4::{self, AuthError, Expected, SignedRequest};
use support::{BedOptions, InstanceSpec, TestBed};

// ------------------------------------------------------------- SigV4 vectors

// From the AWS SigV4 test suite (aws-signing-test-suite/v4), shared by all
// vectors below: credentials, region, service and time.
const V_KEY: &str = "AKIDEXAMPLE";
const V_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const V_DATE: &str = "20150830T123600Z";

fn vector_expected(token: Option<&'static str>) -> Expected<'static> {
    Expected {
        access_key_id: V_KEY,
        secret_access_key: V_SECRET,
        region: "us-east-1",
        service: "service",
        session_token: token,
        now: sigv4::parse_amz_date(V_DATE).expect("vector date parses"),
        max_skew: Duration::from_secs(300),
    }
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Check a vector both ways: our signer reproduces the published signature,
/// and our verifier accepts the published Authorization header.
fn check_vector(
    method: &str,
    query: &str,
    mut headers: Vec<(String, String)>,
    body: &[u8],
    signed: &[&str],
    token: Option<&'static str>,
    want_sig: &str,
) {
    let req = SignedRequest {
        method,
        path: "/",
        query,
        headers: &headers,
        body,
    };
    let auth = sigv4::sign_headers(&req, signed, V_KEY, V_SECRET, "us-east-1", "service");
    assert!(
        auth.ends_with(&format!("Signature={want_sig}")),
        "signer produced {auth}, want signature {want_sig}"
    );
    headers.push(("Authorization".into(), auth));
    let req = SignedRequest {
        method,
        path: "/",
        query,
        headers: &headers,
        body,
    };
    sigv4::verify(&req, &vector_expected(token)).expect("verifier accepts the published signature");
}

#[test]
fn sigv4_get_vanilla_vector() {
    // get-vanilla: the canonical "hello world" of SigV4.
    let headers = h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", V_DATE)]);
    check_vector(
        "GET",
        "",
        headers,
        b"",
        &["host", "x-amz-date"],
        None,
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    );

    // And the published Authorization header verbatim.
    let headers = h(&[
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", V_DATE),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
    ]);
    let req = SignedRequest {
        method: "GET",
        path: "/",
        query: "",
        headers: &headers,
        body: b"",
    };
    assert_eq!(sigv4::verify(&req, &vector_expected(None)), Ok(()));

    // The same request checked with another secret, region, service or
    // time must fail, each for its own reason.
    let mut e = vector_expected(None);
    e.secret_access_key = "not-the-secret";
    assert!(matches!(
        sigv4::verify(&req, &e),
        Err(AuthError::Mismatch(_))
    ));
    let mut e = vector_expected(None);
    e.region = "eu-west-1";
    assert!(matches!(
        sigv4::verify(&req, &e),
        Err(AuthError::Mismatch(_))
    ));
    let mut e = vector_expected(None);
    e.service = "ec2";
    assert!(matches!(
        sigv4::verify(&req, &e),
        Err(AuthError::Mismatch(_))
    ));
    let mut e = vector_expected(None);
    e.access_key_id = "AKIDOTHER";
    assert!(matches!(
        sigv4::verify(&req, &e),
        Err(AuthError::UnknownKey(_))
    ));
    let mut e = vector_expected(None);
    e.now += Duration::from_secs(301);
    assert!(matches!(
        sigv4::verify(&req, &e),
        Err(AuthError::Expired(_))
    ));
    // A token the bed doesn't expect, or a missing expected one.
    assert!(matches!(
        sigv4::verify(&req, &vector_expected(Some("tok"))),
        Err(AuthError::UnknownKey(_))
    ));
}

#[test]
fn sigv4_more_published_vectors() {
    // get-vanilla-with-session-token
    let tok = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
    let headers = h(&[
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", V_DATE),
        ("X-Amz-Security-Token", tok),
    ]);
    check_vector(
        "GET",
        "",
        headers,
        b"",
        &["host", "x-amz-date", "x-amz-security-token"],
        Some(tok),
        "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
    );

    // get-vanilla-query-order-key-case: query parameters get sorted.
    let headers = h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", V_DATE)]);
    check_vector(
        "GET",
        "Param2=value2&Param1=value1",
        headers,
        b"",
        &["host", "x-amz-date"],
        None,
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    );

    // get-header-value-trim: values trimmed, inner runs of spaces collapsed.
    let headers = h(&[
        ("Host", "example.amazonaws.com"),
        ("My-Header1", " value1"),
        ("My-Header2", " \"a   b   c\""),
        ("X-Amz-Date", V_DATE),
    ]);
    check_vector(
        "GET",
        "",
        headers,
        b"",
        &["host", "my-header1", "my-header2", "x-amz-date"],
        None,
        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
    );

    // post-x-www-form-urlencoded: body hash, declared x-amz-content-sha256.
    let headers = h(&[
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Host", "example.amazonaws.com"),
        ("Content-Length", "13"),
        ("X-Amz-Date", V_DATE),
        (
            "x-amz-content-sha256",
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
        ),
    ]);
    check_vector(
        "POST",
        "",
        headers.clone(),
        b"Param1=value1",
        &[
            "content-length",
            "content-type",
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
        ],
        None,
        "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
    );
    // A body that doesn't match the declared hash is refused.
    let mut with_auth = headers;
    let req = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &with_auth,
        body: b"Param1=value1",
    };
    let auth = sigv4::sign_headers(
        &req,
        &[
            "content-length",
            "content-type",
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
        ],
        V_KEY,
        V_SECRET,
        "us-east-1",
        "service",
    );
    with_auth.push(("Authorization".into(), auth));
    let req = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &with_auth,
        body: b"Param1=value2",
    };
    assert!(matches!(
        sigv4::verify(&req, &vector_expected(None)),
        Err(AuthError::Mismatch(_))
    ));
}

#[test]
fn bed_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TestBed>();
}

#[test]
fn ec2_filter_wildcards() {
    use support::api::wildcard_match as m;
    assert!(m("web-*", "web-1"));
    assert!(m("web-?", "web-1"));
    assert!(!m("web-?", "web-12"));
    assert!(m("*", ""));
    assert!(m("a*b*c", "aXXbYYc"));
    assert!(!m("a*b*c", "aXXbYY"));
    assert!(m(r"lit\*", "lit*"));
    assert!(!m(r"lit\*", "litX"));
    assert!(!m("Web-1", "web-1"), "filters are case-sensitive");
}

// ------------------------------------------------------------- sshd + keys

fn ssh(bed: &TestBed, key: &support::ClientKey, user: &str, host: &str) -> Output {
    bed.ssh_command(&key.private_key, user, host)
        .args(["echo", "hello"])
        .output()
        .expect("run ssh")
}

fn explain(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn directly_pushed_key_logs_in_until_it_expires() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let key = bed.generate_key("client");
    let user = bed.os_user();
    bed.push_key_directly(&web.id, &user, &key.public_key);

    let public = web.public_ip.as_deref().expect("web-1 has a public IP");
    assert_eq!(public, "127.0.2.1");
    let out = ssh(&bed, &key, &user, public);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nsshd log:\n{}",
        explain(&out),
        bed.sshd_log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // The private address is the same instance.
    let out = ssh(&bed, &key, &user, &web.private_ip);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    // 55 s later the key still works (margin for real seconds passing
    // during the test); at 61 s it is refused.
    bed.advance_clock(55);
    assert_eq!(ssh(&bed, &key, &user, public).status.code(), Some(0));
    bed.advance_clock(6);
    let out = ssh(&bed, &key, &user, public);
    assert_eq!(out.status.code(), Some(255), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        explain(&out)
    );
    assert!(
        bed.wait_for_sshd_log("Failed publickey", Duration::from_secs(5)),
        "{}",
        bed.sshd_log()
    );
}

#[test]
fn keys_are_scoped_to_instance_user_and_running_state() {
    let bed = TestBed::start();
    let a = bed.add_instance(InstanceSpec::named("a"));
    let b = bed.add_instance(InstanceSpec::named("b").public_ip(false));
    let c = bed.add_instance(InstanceSpec::named("c"));
    assert_eq!(
        (b.slot, b.private_ip.as_str(), b.public_ip.as_deref()),
        (2, "127.0.1.2", None)
    );
    let user = bed.os_user();

    // Pushed for instance a: works on a, not on b or c.
    let key = bed.generate_key("k1");
    bed.push_key_directly(&a.id, &user, &key.public_key);
    assert_eq!(ssh(&bed, &key, &user, "127.0.2.1").status.code(), Some(0));
    assert_eq!(
        ssh(&bed, &key, &user, &b.private_ip).status.code(),
        Some(255)
    );
    assert_eq!(ssh(&bed, &key, &user, "127.0.2.3").status.code(), Some(255));
    // b has no public IP: nothing is served on 127.0.2.2 even for b's keys.
    let kb = bed.generate_key("kb");
    bed.push_key_directly(&b.id, &user, &kb.public_key);
    assert_eq!(ssh(&bed, &kb, &user, &b.private_ip).status.code(), Some(0));
    assert_eq!(ssh(&bed, &kb, &user, "127.0.2.2").status.code(), Some(255));

    // Pushed for another OS user on c: the login as `user` is refused.
    let key2 = bed.generate_key("k2");
    bed.push_key_directly(&c.id, "ec2-user", &key2.public_key);
    assert_eq!(
        ssh(&bed, &key2, &user, "127.0.2.3").status.code(),
        Some(255)
    );

    // A stopped instance serves nothing, and again once running.
    bed.set_state(&a.id, "stopped");
    assert_eq!(ssh(&bed, &key, &user, "127.0.2.1").status.code(), Some(255));
    bed.set_state(&a.id, "running");
    assert_eq!(ssh(&bed, &key, &user, "127.0.2.1").status.code(), Some(0));
}

#[test]
fn ipv6_instance_is_reachable_on_loopback() {
    let bed = TestBed::start();
    if !bed.ipv6_available() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let v6 = bed.add_instance(InstanceSpec::named("v6").ipv6(true));
    let other = bed.add_instance(InstanceSpec::named("other"));
    let key = bed.generate_key("k");
    bed.push_key_directly(&v6.id, &bed.os_user(), &key.public_key);
    assert_eq!(v6.ipv6.as_deref(), Some("::1"));
    let out = ssh(&bed, &key, &bed.os_user(), "::1");
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    // Keys for the other instance are not served on ::1.
    let k2 = bed.generate_key("k2");
    bed.push_key_directly(&other.id, &bed.os_user(), &k2.public_key);
    assert_eq!(
        ssh(&bed, &k2, &bed.os_user(), "::1").status.code(),
        Some(255)
    );
}

// ------------------------------------------------------- raw HTTP + SigV4

/// POST a hand-signed EC2 Query request; returns (status, body).
fn raw_ec2_post(bed: &TestBed, body: &str, secret: &str) -> (u16, String) {
    let host = bed.endpoint().trim_start_matches("http://").to_owned();
    let headers = h(&[
        ("Host", &host),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Amz-Date", &sigv4::format_amz_date(SystemTime::now())),
    ]);
    let req = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let auth = sigv4::sign_headers(
        &req,
        &["content-type", "host", "x-amz-date"],
        bed.access_key_id(),
        secret,
        bed.region(),
        "ec2",
    );
    let mut wire = String::from("POST / HTTP/1.1\r\n");
    for (n, v) in &headers {
        wire.push_str(&format!("{n}: {v}\r\n"));
    }
    wire.push_str(&format!(
        "Authorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut s = TcpStream::connect(&host).expect("connect to the stand-in");
    s.write_all(wire.as_bytes()).expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn hand_signed_requests_are_checked() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let body = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3AName&Filter.1.Value.1=web-1";

    // Right secret: accepted, nothing recorded as a signature failure.
    let (status, xml) = raw_ec2_post(&bed, body, bed.secret_access_key());
    assert_eq!(status, 200, "{xml}");
    assert!(xml.contains("<key>Name</key><value>web-1</value>"), "{xml}");
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
    let call = bed.requests().pop().expect("request recorded");
    assert_eq!(call.action, "DescribeInstances");
    assert_eq!(
        call.filters(),
        vec![("tag:Name".to_owned(), vec!["web-1".to_owned()])]
    );

    // Wrong secret: refused as EC2 refuses it, and recorded.
    let (status, xml) = raw_ec2_post(&bed, body, "wrong-secret");
    assert_eq!(status, 403, "{xml}");
    assert!(xml.contains("<Code>SignatureDoesNotMatch</Code>"), "{xml}");
    let failures = bed.signature_failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("signature mismatch"), "{failures:?}");
}

// ------------------------------------------------------------ real SDK

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ec2_client(bed: &TestBed) -> aws_sdk_ec2::Client {
    use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
    let creds = Credentials::new(
        bed.access_key_id(),
        bed.secret_access_key(),
        bed.session_token().map(str::to_owned),
        None,
        "testbed",
    );
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(bed.region().to_owned()))
        .endpoint_url(bed.endpoint())
        .credentials_provider(creds)
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

fn eic_client(bed: &TestBed, timeout: Option<Duration>) -> aws_sdk_ec2instanceconnect::Client {
    use aws_sdk_ec2instanceconnect::config::{BehaviorVersion, Credentials, Region};
    let creds = Credentials::new(
        bed.access_key_id(),
        bed.secret_access_key(),
        bed.session_token().map(str::to_owned),
        None,
        "testbed",
    );
    let mut b = aws_sdk_ec2instanceconnect::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(bed.region().to_owned()))
        .endpoint_url(bed.endpoint())
        .credentials_provider(creds)
        .retry_config(aws_sdk_ec2instanceconnect::config::retry::RetryConfig::disabled());
    if let Some(t) = timeout {
        b = b.timeout_config(
            aws_sdk_ec2instanceconnect::config::timeout::TimeoutConfig::builder()
                .operation_timeout(t)
                .build(),
        );
    }
    aws_sdk_ec2instanceconnect::Client::from_conf(b.build())
}

fn tag_of<'a>(i: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[test]
fn sdk_describe_instances_filters_pages_and_hostile_tags() {
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    use aws_sdk_ec2::types::Filter;

    let bed = TestBed::start();
    // ESC, BEL, NUL, CR, LF, TAB, markup and entities in a tag value.
    let hostile =
        "evil\u{1b}[31mred\u{1b}[0m <b>&amp;</b> \"q\" 'a' ]]>\r\nline2\tbell\u{7}nul\u{0}end";
    let web = bed.add_instance(
        InstanceSpec::named("web-1")
            .tag("Role", hostile)
            .tag("env", "prod"),
    );
    let db = bed.add_instance(
        InstanceSpec::named("db-1")
            .public_ip(false)
            .metadata_http_endpoint("disabled"),
    );
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let ec2 = ec2_client(&bed);
    let rt = rt();

    rt.block_on(async {
        // By id: all fields the tool cares about come through.
        let out = ec2.describe_instances().instance_ids(&web.id).send().await.expect("describe by id");
        let insts: Vec<_> = out.reservations().iter().flat_map(|r| r.instances()).collect();
        assert_eq!(insts.len(), 1);
        let i = insts[0];
        assert_eq!(i.instance_id(), Some(web.id.as_str()));
        assert_eq!(i.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("running"));
        assert_eq!(i.state().and_then(|s| s.code()), Some(16));
        assert_eq!(i.public_ip_address(), Some("127.0.2.1"));
        assert_eq!(i.private_ip_address(), Some("127.0.1.1"));
        assert_eq!(i.public_dns_name(), Some("ec2-127-0-2-1.compute-1.amazonaws.com"));
        assert_eq!(i.private_dns_name(), Some("ip-127-0-1-1.ec2.internal"));
        assert_eq!(i.placement().and_then(|p| p.availability_zone()), Some("us-east-1a"));
        assert_eq!(i.platform_details(), Some("Linux/UNIX"));
        assert!(i.launch_time().is_some());
        assert_eq!(tag_of(i, "Name"), Some("web-1"));
        assert_eq!(tag_of(i, "Role"), Some(hostile), "the hostile tag survives XML intact");

        // Filters: tag wildcard, state, address; AND across filters, OR within.
        let ids = |out: aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput| -> Vec<String> {
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect()
        };
        let f = |n: &str, v: &[&str]| Filter::builder().name(n).set_values(Some(v.iter().map(|s| s.to_string()).collect())).build();
        let got = ids(ec2.describe_instances().filters(f("tag:Name", &["*-1"])).send().await.expect("wildcard"));
        assert_eq!(got, vec![web.id.clone(), db.id.clone(), old.id.clone()]);
        let got = ids(ec2
            .describe_instances()
            .filters(f("tag:Name", &["*-1"]))
            .filters(f("instance-state-name", &["running"]))
            .send()
            .await
            .expect("and"));
        assert_eq!(got, vec![web.id.clone(), db.id.clone()]);
        let got = ids(ec2.describe_instances().filters(f("private-ip-address", &["127.0.1.2", "127.0.1.3"])).send().await.expect("or"));
        assert_eq!(got, vec![db.id.clone(), old.id.clone()]);
        let got = ids(ec2.describe_instances().filters(f("ip-address", &["127.0.2.3"])).send().await.expect("stopped: no public ip"));
        assert!(got.is_empty());
        let got = ids(ec2.describe_instances().filters(f("tag:Role", &[hostile])).send().await.expect("hostile filter value"));
        assert_eq!(got, vec![web.id.clone()]);
        let got = ids(ec2.describe_instances().filters(f("dns-name", &["ec2-127-0-2-1.compute-1.amazonaws.com"])).send().await.expect("dns"));
        assert_eq!(got, vec![web.id.clone()]);
        let out = ec2.describe_instances().instance_ids(&db.id).send().await.expect("db");
        let i = &out.reservations()[0].instances()[0];
        assert_eq!(i.public_ip_address(), None);
        assert_eq!(i.metadata_options().and_then(|m| m.http_endpoint()).map(|e| e.as_str()), Some("disabled"));

        // Pagination: forced page size 1 -> three pages, opaque tokens.
        bed.set_page_size(1);
        let mut pages = 0;
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = ec2.describe_instances().set_next_token(token.clone()).send().await.expect("page");
            pages += 1;
            seen.extend(ids(out.clone()));
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        assert_eq!((pages, seen.len()), (3, 3));
        bed.set_page_size(0);
        // MaxResults is validated as EC2 does.
        let e = ec2.describe_instances().max_results(2).send().await.expect_err("MaxResults < 5");
        assert_eq!(e.code(), Some("InvalidParameterValue"));

        // Errors: unknown and malformed ids, unknown filter, injected failure.
        let e = ec2.describe_instances().instance_ids("i-0123456789abcdef0").send().await.expect_err("unknown id");
        assert_eq!(e.code(), Some("InvalidInstanceID.NotFound"));
        assert_eq!(e.message(), Some("The instance ID 'i-0123456789abcdef0' does not exist"));
        let e = ec2.describe_instances().instance_ids("web-1").send().await.expect_err("malformed id");
        assert_eq!(e.code(), Some("InvalidInstanceID.Malformed"));
        let e = ec2.describe_instances().filters(f("no-such-filter", &["x"])).send().await.expect_err("bad filter");
        assert_eq!(e.code(), Some("InvalidParameterValue"));
        bed.fail_next("DescribeInstances", "RequestLimitExceeded", 1);
        let e = ec2.describe_instances().send().await.expect_err("injected");
        assert_eq!(e.code(), Some("RequestLimitExceeded"));
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
        ec2.describe_instances().send().await.expect("injection used up");
    });

    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
    let calls = bed.requests_for("DescribeInstances");
    assert!(
        calls
            .iter()
            .all(|c| c.params.get("Version").map(String::as_str) == Some("2016-11-15"))
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.error_code.as_deref() == Some("RequestLimitExceeded"))
            .count(),
        1
    );
}

#[test]
fn sdk_push_then_ssh_and_eic_errors() {
    use aws_sdk_ec2instanceconnect::error::ProvideErrorMetadata;

    let bed = TestBed::start_with(BedOptions {
        session_token: Some("testbed-session-token".into()),
        ..Default::default()
    });
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let stopped = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let key = bed.generate_key("pushed");
    let eic = eic_client(&bed, None);
    let user = bed.os_user();
    let rt = rt();

    rt.block_on(async {
        let out = eic
            .send_ssh_public_key()
            .instance_id(&web.id)
            .instance_os_user(&user)
            .ssh_public_key(&key.public_key)
            .send()
            .await
            .expect("push accepted");
        assert!(out.success());
        assert!(out.request_id().is_some());

        // Wrong AZ, stopped instance, unknown instance, sk- key, bad user.
        let e = eic.send_ssh_public_key().instance_id(&web.id).instance_os_user(&user).ssh_public_key(&key.public_key).availability_zone("us-east-1b").send().await.expect_err("wrong AZ");
        assert_eq!(e.code(), Some("InvalidArgsException"));
        let e = eic.send_ssh_public_key().instance_id(&stopped.id).instance_os_user(&user).ssh_public_key(&key.public_key).send().await.expect_err("stopped");
        assert_eq!(e.code(), Some("EC2InstanceStateInvalidException"));
        assert!(e.into_service_error().is_ec2_instance_state_invalid_exception());
        let e = eic.send_ssh_public_key().instance_id("i-0123456789abcdef0").instance_os_user(&user).ssh_public_key(&key.public_key).send().await.expect_err("unknown");
        assert!(e.into_service_error().is_ec2_instance_not_found_exception());
        let sk = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIFz4b9zMxY6oWWr0XyVpSBNVQwq2vWbm0U9SnYGdNVhkAAAABHNzaDo= me";
        let e = eic.send_ssh_public_key().instance_id(&web.id).instance_os_user(&user).ssh_public_key(sk).send().await.expect_err("sk key");
        assert!(e.into_service_error().is_invalid_args_exception());
        let e = eic.send_ssh_public_key().instance_id(&web.id).instance_os_user("bad/user").ssh_public_key(&key.public_key).send().await.expect_err("bad user");
        assert!(e.into_service_error().is_invalid_args_exception());

        // Injected errors come back as the right modelled variants and statuses.
        bed.fail_next("SendSSHPublicKey", "ThrottlingException", 1);
        bed.fail_next("SendSSHPublicKey", "AuthException", 1);
        let e = eic.send_ssh_public_key().instance_id(&web.id).instance_os_user(&user).ssh_public_key(&key.public_key).send().await.expect_err("throttled");
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(400));
        assert!(e.into_service_error().is_throttling_exception());
        let e = eic.send_ssh_public_key().instance_id(&web.id).instance_os_user(&user).ssh_public_key(&key.public_key).send().await.expect_err("auth");
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403));
        assert!(e.into_service_error().is_auth_exception());
    });

    // The SDK-pushed key logs in; the session token was signed every time.
    let out = ssh(&bed, &key, &user, "127.0.2.1");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        explain(&out),
        bed.sshd_log()
    );
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(
        (pushes[0].instance_id.as_str(), pushes[0].os_user.as_str()),
        (web.id.as_str(), user.as_str())
    );
    assert_eq!(pushes[0].public_key, key.public_key);
    assert_eq!(pushes[0].availability_zone, None);
    let call = bed.requests_for("SendSSHPublicKey").remove(0);
    assert!(
        call.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-amz-security-token"))
    );

    // A push recorded as 61 s old is already refused by sshd.
    let key2 = bed.generate_key("stale");
    bed.set_push_age(61);
    rt.block_on(async {
        eic.send_ssh_public_key()
            .instance_id(&web.id)
            .instance_os_user(&user)
            .ssh_public_key(&key2.public_key)
            .send()
            .await
            .expect("push accepted");
    });
    assert_eq!(
        ssh(&bed, &key2, &user, "127.0.2.1").status.code(),
        Some(255)
    );
}

#[test]
fn sdk_sees_delays_and_bad_credentials() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let key = bed.generate_key("k");
    let rt = rt();

    // A slow SendSSHPublicKey trips the client's operation timeout.
    bed.set_delay("SendSSHPublicKey", Duration::from_millis(1500));
    let eic = eic_client(&bed, Some(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let r = rt.block_on(
        eic.send_ssh_public_key()
            .instance_id(&web.id)
            .instance_os_user(bed.os_user())
            .ssh_public_key(&key.public_key)
            .send(),
    );
    assert!(r.is_err(), "expected a timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "took {:?}",
        started.elapsed()
    );
    bed.set_delay("SendSSHPublicKey", Duration::ZERO);

    // A client with the wrong secret is refused and the failure recorded.
    use aws_sdk_ec2instanceconnect::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_ec2instanceconnect::error::ProvideErrorMetadata;
    let conf = aws_sdk_ec2instanceconnect::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(bed.endpoint())
        .credentials_provider(Credentials::new(
            bed.access_key_id(),
            "wrong",
            None,
            None,
            "t",
        ))
        .build();
    let bad = aws_sdk_ec2instanceconnect::Client::from_conf(conf);
    let e = rt
        .block_on(
            bad.send_ssh_public_key()
                .instance_id(&web.id)
                .instance_os_user(bed.os_user())
                .ssh_public_key(&key.public_key)
                .send(),
        )
        .expect_err("bad signature");
    assert_eq!(e.code(), Some("InvalidSignatureException"));
    assert_eq!(bed.signature_failures().len(), 1);
}
