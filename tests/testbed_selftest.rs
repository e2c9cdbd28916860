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

    // Pushed again (the logins above took real time), 30 s later the key
    // still works (a margin for the real time the login takes); 61 s after
    // the push it is refused.
    bed.push_key_directly(&web.id, &user, &key.public_key);
    bed.advance_clock(30);
    assert_eq!(ssh(&bed, &key, &user, public).status.code(), Some(0));
    bed.advance_clock(31);
    let out = ssh(&bed, &key, &user, public);
    assert_eq!(out.status.code(), Some(255), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        explain(&out)
    );
    assert!(
        bed.wait_for_sshd_log("Failed publickey", Duration::from_secs(60)),
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
    assert!(
        bed.ipv6_available(),
        "the test machine needs IPv6 on loopback (::1): enable it \
         (sysctl net.ipv6.conf.lo.disable_ipv6=0; for Docker, --sysctl with the same)"
    );
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
    let wire = signed_ec2_post(bed, &host, body, secret);
    let mut s = TcpStream::connect(&host).expect("connect to the stand-in");
    s.write_all(wire.as_bytes()).expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    parse_response(&resp)
}

/// (status, body) of a whole HTTP/1.1 response.
fn parse_response(resp: &str) -> (u16, String) {
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

/// The bytes of a hand-signed EC2 Query POST to `host` (`Connection: close`).
fn signed_ec2_post(bed: &TestBed, host: &str, body: &str, secret: &str) -> String {
    let headers = h(&[
        ("Host", host),
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
    wire
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

    // A key file's line ending (`--ssh-public-key file://key.pub`, as AWS
    // documents it) is accepted and not part of the key; one inside is not.
    bed.set_push_age(0);
    let key3 = bed.generate_key("with-newline");
    rt.block_on(async {
        let push = |k: String| {
            eic.send_ssh_public_key()
                .instance_id(&web.id)
                .instance_os_user(&user)
                .ssh_public_key(k)
                .send()
        };
        push(format!("{}\n", key3.public_key))
            .await
            .expect("a trailing newline is accepted");
        let inside = key3.public_key.replacen(' ', "\n", 1);
        let e = push(inside).await.expect_err("a newline inside");
        assert!(e.into_service_error().is_invalid_args_exception());
    });
    assert_eq!(
        bed.pushes().last().map(|p| p.public_key.clone()),
        Some(key3.public_key.clone())
    );
    assert_eq!(ssh(&bed, &key3, &user, "127.0.2.1").status.code(), Some(0));
}

#[test]
fn sdk_sees_delays_and_bad_credentials() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let key = bed.generate_key("k");
    let rt = rt();

    // A slow SendSSHPublicKey trips the client's operation timeout: the
    // client gives up instead of waiting for the (much later) answer.
    let delay = Duration::from_secs(120);
    bed.set_delay("SendSSHPublicKey", delay);
    let eic = eic_client(&bed, Some(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let r = rt.block_on(
        eic.send_ssh_public_key()
            .instance_id(&web.id)
            .instance_os_user(bed.os_user())
            .ssh_public_key(&key.public_key)
            .send(),
    );
    assert!(
        matches!(
            r,
            Err(aws_sdk_ec2instanceconnect::error::SdkError::TimeoutError(_))
        ),
        "expected a timeout: {r:?}"
    );
    assert!(started.elapsed() < delay, "waited for the answer");
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

// ------------------------------------------------------ slots (fleet beds)

#[test]
fn bed_slots_are_checked() {
    for slots in [0, support::sshd::MAX_SLOTS + 1] {
        let r = std::panic::catch_unwind(|| {
            TestBed::start_with(BedOptions {
                slots,
                ..Default::default()
            })
        });
        assert!(r.is_err(), "a bed with {slots} slots must be refused");
    }
    // The default bed keeps its 15 slots (two sshd processes).
    let bed = TestBed::start();
    assert_eq!(bed.slots(), 15);
    assert!(bed.dir().join("sshd_config.1").exists());
    assert!(!bed.dir().join("sshd_config.2").exists());
}

#[test]
fn bed_with_40_slots_serves_slot_40() {
    let bed = TestBed::start_with(BedOptions {
        slots: 40,
        ..Default::default()
    });
    assert_eq!(bed.slots(), 40);
    let all: Vec<_> = (1..=40)
        .map(|k| bed.add_instance(InstanceSpec::named(&format!("node-{k}"))))
        .collect();
    let last = &all[39];
    assert_eq!(
        (
            last.slot,
            last.private_ip.as_str(),
            last.public_ip.as_deref(),
            last.private_dns_name.as_str()
        ),
        (
            40,
            "127.0.1.40",
            Some("127.0.2.40"),
            "ip-127-0-1-40.ec2.internal"
        )
    );
    // The 41st does not fit (and the bed still works afterwards).
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bed.add_instance(InstanceSpec::named("one-too-many"))
    }));
    assert!(r.is_err(), "a 40-slot bed must refuse a 41st instance");
    assert_eq!(bed.instances().len(), 40);

    // 80 addresses (+ ::1) over 16-address sshd processes, with room for
    // bursts of logins.
    let config = std::fs::read_to_string(bed.dir().join("sshd_config.4")).expect("5th config");
    assert!(config.contains("MaxStartups 500:30:1000"), "{config}");
    assert!(
        config.contains("Match LocalAddress 127.0.2.40\n"),
        "{config}"
    );

    let user = bed.os_user();
    let key = bed.generate_key("k40");
    bed.push_key_directly(&last.id, &user, &key.public_key);
    for host in ["127.0.2.40", "127.0.1.40"] {
        let out = ssh(&bed, &key, &user, host);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{host}: {}\n{}",
            explain(&out),
            bed.sshd_log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    }
    // Slot 39 (another sshd process's neighbour address) is another instance.
    assert_eq!(
        ssh(&bed, &key, &user, "127.0.1.39").status.code(),
        Some(255)
    );
}

#[test]
fn fleet_bed_of_120_slots_takes_100_simultaneous_logins() {
    let started = std::time::Instant::now();
    let bed = TestBed::start_with(BedOptions {
        slots: 120,
        ..Default::default()
    });
    eprintln!("120-slot bed started in {:?}", started.elapsed());
    assert!(
        bed.dir().join("sshd_config.15").exists(),
        "16 sshd processes"
    );
    let fleet: Vec<_> = (1..=120)
        .map(|k| bed.add_instance(InstanceSpec::named(&format!("fleet-{k}"))))
        .collect();
    assert_eq!(fleet[119].private_ip, "127.0.1.120");
    let user = bed.os_user();
    let key = bed.generate_key("fleet");
    // Log in to the last 100 at once, alternating private and public.
    let targets = &fleet[20..];
    for i in targets {
        bed.push_key_directly(&i.id, &user, &key.public_key);
    }
    // Start ssh logins to all `hosts` at once; the failures.
    let burst = |hosts: &[String]| -> Vec<String> {
        let t = std::time::Instant::now();
        let children: Vec<_> = hosts
            .iter()
            .map(|host| {
                // The sftp subsystem (internal-sftp, ends at EOF on stdin)
                // rather than a remote command: a shell would source the
                // user's rc files (0.4 s of CPU each for root here), and what
                // is at stake is sshd admitting many unauthenticated
                // connections at once (MaxStartups). curve25519 alone for the
                // same reason.
                let child = bed
                    .ssh_command_with(
                        &key.private_key,
                        &user,
                        host,
                        &["KexAlgorithms=curve25519-sha256"],
                    )
                    .args(["-s", "sftp"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn ssh");
                (host, child)
            })
            .collect();
        let mut failed = Vec::new();
        for (host, child) in children {
            let out = child.wait_with_output().expect("wait for ssh");
            if out.status.code() != Some(0) {
                failed.push(format!("{host}: {}", explain(&out)));
            }
        }
        eprintln!("{} simultaneous logins took {:?}", hosts.len(), t.elapsed());
        failed
    };
    let check = |failed: Vec<String>, n: usize| {
        assert!(
            failed.is_empty(),
            "{} of {n} logins failed:\n{}\nsshd log tail:\n{}",
            failed.len(),
            failed.join("\n"),
            bed.sshd_log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    };

    // 100 instances, alternating private and public addresses: spread over
    // the sshd processes.
    let hosts: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(n, i)| {
            if n % 2 == 0 {
                i.private_ip.clone()
            } else {
                i.public_ip.clone().expect("public ip")
            }
        })
        .collect();
    check(burst(&hosts), 100);
    let log = bed.sshd_log();
    // Each on its own address, each authenticated with the pushed key.
    for (n, i) in targets.iter().enumerate() {
        let local = if n % 2 == 0 {
            &i.private_ip
        } else {
            i.public_ip.as_ref().expect("public ip")
        };
        assert!(
            log.contains(&format!(" on {local} port {}", bed.sshd_port())),
            "no connection on {local}"
        );
    }
    assert_eq!(log.matches("Accepted publickey for").count(), 100);

    // 60 at once on one address, so one sshd process: the default
    // MaxStartups (10:30:100) would drop many of these.
    let hosts = vec![fleet[119].public_ip.clone().expect("public ip"); 60];
    check(burst(&hosts), 60);
}

// -------------------------------------------- StartInstances / StopInstances

#[test]
fn start_instances_raw_xml_shape() {
    let bed = TestBed::start();
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let body = format!(
        "Action=StartInstances&Version=2016-11-15&InstanceId.1={}",
        old.id
    );
    let (status, xml) = raw_ec2_post(&bed, &body, bed.secret_access_key());
    assert_eq!(status, 200, "{xml}");
    let want =
        "<StartInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>";
    assert!(xml.contains(want), "{xml}");
    let want = format!(
        "</requestId><instancesSet><item><instanceId>{}</instanceId><currentState><code>0</code><name>pending</name></currentState><previousState><code>80</code><name>stopped</name></previousState></item></instancesSet></StartInstancesResponse>",
        old.id
    );
    assert!(xml.ends_with(&want), "{xml}");

    let body = format!(
        "Action=StopInstances&Version=2016-11-15&InstanceId.1={}",
        old.id
    );
    let (status, xml) = raw_ec2_post(&bed, &body, bed.secret_access_key());
    assert_eq!(status, 200, "{xml}");
    let want = format!(
        "<instancesSet><item><instanceId>{}</instanceId><currentState><code>64</code><name>stopping</name></currentState><previousState><code>0</code><name>pending</name></previousState></item></instancesSet></StopInstancesResponse>",
        old.id
    );
    assert!(xml.contains("<StopInstancesResponse xmlns="), "{xml}");
    assert!(xml.ends_with(&want), "{xml}");

    // No InstanceId at all.
    let (status, xml) = raw_ec2_post(
        &bed,
        "Action=StartInstances&Version=2016-11-15",
        bed.secret_access_key(),
    );
    assert_eq!(status, 400, "{xml}");
    assert!(xml.contains("<Code>MissingParameter</Code>"), "{xml}");
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
}

/// Waits until `done` holds, checking every few milliseconds; panics after a
/// minute (only a hang takes that long).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// (instance id, current state, previous state) of a start/stop answer.
fn changes(v: &[aws_sdk_ec2::types::InstanceStateChange]) -> Vec<(String, String, String)> {
    v.iter()
        .map(|c| {
            let name = |s: Option<&aws_sdk_ec2::types::InstanceState>| {
                s.and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default()
            };
            (
                c.instance_id().unwrap_or_default().to_owned(),
                name(c.current_state()),
                name(c.previous_state()),
            )
        })
        .collect()
}

fn st(id: &str, current: &str, previous: &str) -> (String, String, String) {
    (id.to_owned(), current.to_owned(), previous.to_owned())
}

#[test]
fn sdk_start_and_stop_instances() {
    use aws_sdk_ec2::error::ProvideErrorMetadata;

    let bed = TestBed::start();
    // Transitions that outlast any test, to look at the pending and
    // stopping states however slow the machine; short ones to see them end.
    let long = Duration::from_secs(3600);
    let short = Duration::from_millis(200);
    bed.set_start_delay(long);
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let gone = bed.add_instance(InstanceSpec::named("gone").state("terminated"));
    let spare = bed.add_instance(InstanceSpec::named("spare").state("stopped"));
    let user = bed.os_user();
    let key = bed.generate_key("k");
    bed.push_key_directly(&old.id, &user, &key.public_key);
    let public = old.public_ip.clone().expect("old-1 has a public IP");
    let ec2 = ec2_client(&bed);
    let rt = rt();
    let state_in_describe = |id: &str| -> String {
        let out = rt
            .block_on(ec2.describe_instances().instance_ids(id).send())
            .expect("describe");
        out.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default()
    };

    // Stopped: no login.
    assert_eq!(ssh(&bed, &key, &user, &public).status.code(), Some(255));

    // Start: stopped -> pending (codes 0 / 80), still no login.
    let out = rt
        .block_on(ec2.start_instances().instance_ids(&old.id).send())
        .expect("start");
    let c = &out.starting_instances()[0];
    assert_eq!(c.current_state().and_then(|s| s.code()), Some(0));
    assert_eq!(c.previous_state().and_then(|s| s.code()), Some(80));
    assert_eq!(
        changes(out.starting_instances()),
        vec![st(&old.id, "pending", "stopped")]
    );
    assert_eq!(bed.state_of(&old.id), "pending");
    assert_eq!(state_in_describe(&old.id), "pending");
    let out = ssh(&bed, &key, &user, &public);
    assert_eq!(out.status.code(), Some(255), "pending: {}", explain(&out));
    // Starting a pending instance again changes nothing.
    let out = rt
        .block_on(ec2.start_instances().instance_ids(&old.id).send())
        .expect("start pending");
    assert_eq!(
        changes(out.starting_instances()),
        vec![st(&old.id, "pending", "pending")]
    );

    // After the delay it is running, and sshd serves it even if nobody has
    // asked the API in the meantime: start it again with a short delay and
    // watch only the address map sshd reads.
    bed.set_state(&old.id, "stopped");
    bed.set_start_delay(short);
    let out = rt
        .block_on(ec2.start_instances().instance_ids(&old.id).send())
        .expect("start with a short delay");
    assert_eq!(
        changes(out.starting_instances()),
        vec![st(&old.id, "pending", "stopped")]
    );
    let served = bed.dir().join("addr").join(&public);
    wait_until("sshd serves the started instance", || served.exists());
    let out = ssh(&bed, &key, &user, &public);
    assert_eq!(
        out.status.code(),
        Some(0),
        "running: {}\n{}",
        explain(&out),
        bed.sshd_log()
    );
    assert_eq!(state_in_describe(&old.id), "running");
    assert_eq!(bed.instance(&old.id).expect("old-1").state, "running");

    // Start a running + a stopped one together.
    let out = rt
        .block_on(
            ec2.start_instances()
                .instance_ids(&old.id)
                .instance_ids(&spare.id)
                .send(),
        )
        .expect("start two");
    assert_eq!(
        changes(out.starting_instances()),
        vec![
            st(&old.id, "running", "running"),
            st(&spare.id, "pending", "stopped")
        ]
    );

    // Stop: running -> stopping (no more logins) -> stopped.
    bed.set_start_delay(long);
    let out = rt
        .block_on(ec2.stop_instances().instance_ids(&old.id).send())
        .expect("stop");
    assert_eq!(
        changes(out.stopping_instances()),
        vec![st(&old.id, "stopping", "running")]
    );
    assert_eq!(
        out.stopping_instances()[0]
            .current_state()
            .and_then(|s| s.code()),
        Some(64)
    );
    assert_eq!(ssh(&bed, &key, &user, &public).status.code(), Some(255));
    // A stopping instance cannot be started.
    let e = rt
        .block_on(ec2.start_instances().instance_ids(&old.id).send())
        .expect_err("start stopping");
    assert_eq!(e.code(), Some("IncorrectInstanceState"));
    assert_eq!(
        e.message(),
        Some(
            format!(
                "The instance '{}' is not in a state from which it can be started.",
                old.id
            )
            .as_str()
        )
    );
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(400));
    // Once its delay has passed, a stopping instance is stopped.
    bed.set_state(&old.id, "running");
    bed.set_start_delay(short);
    let out = rt
        .block_on(ec2.stop_instances().instance_ids(&old.id).send())
        .expect("stop with a short delay");
    assert_eq!(
        changes(out.stopping_instances()),
        vec![st(&old.id, "stopping", "running")]
    );
    wait_until("the instance stops", || bed.state_of(&old.id) == "stopped");
    wait_until("the spare starts", || bed.state_of(&spare.id) == "running");
    // Stopping a stopped instance is a no-op.
    let out = rt
        .block_on(ec2.stop_instances().instance_ids(&old.id).send())
        .expect("stop stopped");
    assert_eq!(
        changes(out.stopping_instances()),
        vec![st(&old.id, "stopped", "stopped")]
    );

    // Terminated: neither; and a request with one bad instance changes none.
    for start in [true, false] {
        let r = if start {
            rt.block_on(ec2.start_instances().instance_ids(&gone.id).send())
                .map(|_| ())
                .map_err(|e| e.code().map(str::to_owned))
        } else {
            rt.block_on(ec2.stop_instances().instance_ids(&gone.id).send())
                .map(|_| ())
                .map_err(|e| e.code().map(str::to_owned))
        };
        assert_eq!(r, Err(Some("IncorrectInstanceState".to_owned())));
    }
    let e = rt
        .block_on(
            ec2.stop_instances()
                .instance_ids(&web.id)
                .instance_ids(&gone.id)
                .send(),
        )
        .expect_err("stop running + terminated");
    assert_eq!(e.code(), Some("IncorrectInstanceState"));
    assert!(
        e.message().is_some_and(|m| m.contains("can be stopped")),
        "{e:?}"
    );
    assert_eq!(bed.state_of(&web.id), "running");

    // Unknown, malformed, dry run.
    let e = rt
        .block_on(
            ec2.start_instances()
                .instance_ids("i-0123456789abcdef0")
                .send(),
        )
        .expect_err("unknown");
    assert_eq!(e.code(), Some("InvalidInstanceID.NotFound"));
    let e = rt
        .block_on(
            ec2.stop_instances()
                .instance_ids("i-0123456789abcdef0")
                .send(),
        )
        .expect_err("unknown");
    assert_eq!(e.code(), Some("InvalidInstanceID.NotFound"));
    let e = rt
        .block_on(ec2.start_instances().instance_ids("old-1").send())
        .expect_err("malformed");
    assert_eq!(e.code(), Some("InvalidInstanceID.Malformed"));
    let e = rt
        .block_on(
            ec2.stop_instances()
                .instance_ids(&web.id)
                .dry_run(true)
                .send(),
        )
        .expect_err("dry run");
    assert_eq!(e.code(), Some("DryRunOperation"));
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412));
    assert_eq!(bed.state_of(&web.id), "running");

    // Injected failures and delays apply as to any action.
    bed.fail_next("StartInstances", "UnauthorizedOperation", 1);
    let e = rt
        .block_on(ec2.start_instances().instance_ids(&old.id).send())
        .expect_err("injected");
    assert_eq!(e.code(), Some("UnauthorizedOperation"));
    assert_eq!(bed.state_of(&old.id), "stopped");

    // With no delay the instance is running by the next look.
    bed.set_start_delay(Duration::ZERO);
    let out = rt
        .block_on(ec2.start_instances().instance_ids(&old.id).send())
        .expect("start, no delay");
    assert_eq!(
        changes(out.starting_instances()),
        vec![st(&old.id, "pending", "stopped")]
    );
    assert_eq!(state_in_describe(&old.id), "running");
    assert_eq!(ssh(&bed, &key, &user, &public).status.code(), Some(0));

    // set_state cancels a transition in progress: once the transition
    // would have been due (state_of applies every due one), nothing changed.
    bed.set_start_delay(short);
    rt.block_on(ec2.stop_instances().instance_ids(&web.id).send())
        .expect("stop web");
    let due = std::time::Instant::now() + short;
    bed.set_state(&web.id, "running");
    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    assert_eq!(bed.state_of(&web.id), "running");

    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
    let starts = bed.requests_for("StartInstances");
    assert_eq!(starts.len(), 10, "{starts:?}");
    assert_eq!(
        starts[3].list("InstanceId"),
        vec![old.id.clone(), spare.id.clone()]
    );
}

// ------------------------------------------------------------- throttling

#[test]
fn rate_limits_throttle_like_aws() {
    use aws_sdk_ec2instanceconnect::error::ProvideErrorMetadata as _;

    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));
    let key = bed.generate_key("k");
    let user = bed.os_user();
    let eic = eic_client(&bed, None);
    let ec2 = ec2_client(&bed);
    let rt = rt();
    let push = || {
        rt.block_on(
            eic.send_ssh_public_key()
                .instance_id(&web.id)
                .instance_os_user(&user)
                .ssh_public_key(&key.public_key)
                .send(),
        )
        .map_err(Box::new)
    };

    // EC2 Instance Connect: a burst of 3, then ThrottlingException in JSON.
    // One token per 1000 s: no test runs long enough to see one come back
    // on its own, however slow the machine.
    bed.set_rate_limit("SendSSHPublicKey", 0.001, 3);
    for n in 0..3 {
        push().unwrap_or_else(|e| panic!("push {n}: {e:?}"));
    }
    let e = push().expect_err("4th push is throttled");
    assert_eq!(e.code(), Some("ThrottlingException"));
    assert_eq!(e.message(), Some("Rate exceeded"));
    let raw = e.raw_response().expect("raw response");
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(
        raw.headers().get("x-amzn-ErrorType"),
        Some("ThrottlingException")
    );
    let body: serde_json::Value =
        serde_json::from_slice(raw.body().bytes().expect("body")).expect("JSON body");
    assert_eq!(body["__type"], "ThrottlingException");
    assert!(e.into_service_error().is_throttling_exception());
    assert_eq!(bed.pushes().len(), 3, "a throttled push does nothing");
    assert_eq!(bed.throttled("SendSSHPublicKey"), 1);

    // A token comes back after 1000 s (here 1500 s pass at once: one and a
    // half tokens). A request failing SigV4 is refused for that, and does
    // not use the token up.
    bed.pass_rate_limit_time("SendSSHPublicKey", Duration::from_secs(1500));
    let bad = {
        use aws_sdk_ec2instanceconnect::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_ec2instanceconnect::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(bed.region().to_owned()))
            .endpoint_url(bed.endpoint())
            .credentials_provider(Credentials::new(
                bed.access_key_id(),
                "wrong",
                None,
                None,
                "t",
            ))
            .retry_config(aws_sdk_ec2instanceconnect::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_ec2instanceconnect::Client::from_conf(conf)
    };
    let e = rt
        .block_on(
            bad.send_ssh_public_key()
                .instance_id(&web.id)
                .instance_os_user(&user)
                .ssh_public_key(&key.public_key)
                .send(),
        )
        .expect_err("bad signature");
    assert_eq!(e.code(), Some("InvalidSignatureException"));
    push().expect("refilled token");
    let e = push().expect_err("bucket empty again");
    assert_eq!(e.code(), Some("ThrottlingException"));
    assert_eq!(bed.throttled("SendSSHPublicKey"), 2);
    assert_eq!(bed.pushes().len(), 4);
    assert_eq!(bed.signature_failures().len(), 1);
    let calls = bed.requests_for("SendSSHPublicKey");
    let codes: Vec<Option<&str>> = calls.iter().map(|c| c.error_code.as_deref()).collect();
    assert_eq!(
        codes,
        vec![
            None,
            None,
            None,
            Some("ThrottlingException"),
            Some("InvalidSignatureException"),
            None,
            Some("ThrottlingException")
        ]
    );

    // EC2: no refill, burst 2, then RequestLimitExceeded (503) in XML.
    bed.set_rate_limit("DescribeInstances", 0.0, 2);
    let body = "Action=DescribeInstances&Version=2016-11-15";
    for _ in 0..2 {
        let (status, xml) = raw_ec2_post(&bed, body, bed.secret_access_key());
        assert_eq!(status, 200, "{xml}");
    }
    let (status, xml) = raw_ec2_post(&bed, body, bed.secret_access_key());
    assert_eq!(status, 503, "{xml}");
    assert!(
        xml.contains("<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>"),
        "{xml}"
    );
    // Signature first, here too.
    let (status, xml) = raw_ec2_post(&bed, body, "wrong-secret");
    assert_eq!(status, 403, "{xml}");
    {
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        let e = rt
            .block_on(ec2.describe_instances().send())
            .expect_err("SDK sees the throttle");
        assert_eq!(e.code(), Some("RequestLimitExceeded"));
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
    }
    assert_eq!(bed.throttled("DescribeInstances"), 2);
    assert_eq!(
        bed.requests_for("DescribeInstances")
            .iter()
            .filter(|c| c.error_code.as_deref() == Some("RequestLimitExceeded"))
            .count(),
        2
    );
    // Other actions are not limited; clearing the limit lifts it.
    push().expect_err("SendSSHPublicKey is still limited on its own");
    bed.clear_rate_limit("DescribeInstances");
    rt.block_on(ec2.describe_instances().send())
        .expect("limit cleared");

    // A throttled StartInstances starts nothing.
    bed.set_rate_limit("StartInstances", 0.0, 0);
    {
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        let e = rt
            .block_on(ec2.start_instances().instance_ids(&old.id).send())
            .expect_err("throttled start");
        assert_eq!(e.code(), Some("RequestLimitExceeded"));
    }
    assert_eq!(bed.state_of(&old.id), "stopped");
    assert_eq!(bed.throttled("StartInstances"), 1);

    // clear_records forgets the counts.
    bed.clear_records();
    assert_eq!(bed.throttled("SendSSHPublicKey"), 0);
}

#[test]
fn beds_past_250_slots_move_up_the_second_octet() {
    use support::sshd::{private_ip, public_ip, unreachable_ip};
    // The first 250 keep the addresses small beds always had.
    assert_eq!(
        (private_ip(1), public_ip(1)),
        ("127.0.1.1".into(), "127.0.2.1".into())
    );
    assert_eq!(private_ip(250), "127.0.1.250");
    assert_eq!(
        (private_ip(251), public_ip(251)),
        ("127.1.1.1".into(), "127.1.2.1".into())
    );
    assert_eq!(public_ip(500), "127.1.2.250");
    assert_eq!(private_ip(support::sshd::MAX_SLOTS), "127.15.1.250");
    assert_eq!(unreachable_ip(251), "127.255.1.1");

    let bed = TestBed::start_with(BedOptions {
        slots: 260,
        ..Default::default()
    });
    // 520 addresses and ::1: 33 sshd processes.
    assert!(bed.dir().join("sshd_config.32").exists());
    let fleet: Vec<_> = (1..=260)
        .map(|k| bed.add_instance(InstanceSpec::named(&format!("n-{k}"))))
        .collect();
    assert_eq!(fleet[249].public_ip.as_deref(), Some("127.0.2.250"));
    let last = &fleet[259];
    assert_eq!(
        (
            last.slot,
            last.private_ip.as_str(),
            last.public_ip.as_deref(),
            last.private_dns_name.as_str()
        ),
        (
            260,
            "127.1.1.10",
            Some("127.1.2.10"),
            "ip-127-1-1-10.ec2.internal"
        )
    );
    let user = bed.os_user();
    let key = bed.generate_key("k260");
    bed.push_key_directly(&last.id, &user, &key.public_key);
    for host in ["127.1.2.10", "127.1.1.10"] {
        let out = ssh(&bed, &key, &user, host);
        assert_eq!(out.status.code(), Some(0), "{host}: {}", explain(&out));
    }
    // Slot 10 has the same last octet and is another instance.
    assert_eq!(
        ssh(&bed, &key, &user, "127.0.2.10").status.code(),
        Some(255)
    );
}

#[test]
fn instances_can_refuse_logins_be_unreachable_or_refuse_pushes() {
    use aws_sdk_ec2instanceconnect::error::ProvideErrorMetadata;

    let bed = TestBed::start();
    let no_helper = bed.add_instance(InstanceSpec::named("no-helper").instance_connect(false));
    let down = bed.add_instance(InstanceSpec::named("down").unreachable());
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let user = bed.os_user();
    let key = bed.generate_key("k");

    // Pushed, yet refused: its sshd serves no pushed key.
    bed.push_key_directly(&no_helper.id, &user, &key.public_key);
    let out = ssh(&bed, &key, &user, no_helper.public_ip.as_deref().unwrap());
    assert_eq!(out.status.code(), Some(255), "{}", explain(&out));
    assert!(
        explain(&out).contains("Permission denied (publickey)"),
        "{}",
        explain(&out)
    );

    // Nothing listens on its public address; its private one is a slot's.
    assert_eq!(down.public_ip.as_deref(), Some("127.255.0.2"));
    assert_eq!(down.private_ip, "127.0.1.2");
    bed.push_key_directly(&down.id, &user, &key.public_key);
    let out = ssh(&bed, &key, &user, "127.255.0.2");
    assert_eq!(out.status.code(), Some(255), "{}", explain(&out));
    assert!(
        explain(&out).contains("Connection refused"),
        "{}",
        explain(&out)
    );

    // A failure queued for one instance leaves the others' pushes alone.
    bed.fail_next_for("SendSSHPublicKey", &no_helper.id, "AuthException", 1);
    let eic = eic_client(&bed, None);
    rt().block_on(async {
        let push = |id: &str| {
            eic.send_ssh_public_key()
                .instance_id(id)
                .instance_os_user(&user)
                .ssh_public_key(&key.public_key)
                .send()
        };
        push(&web.id)
            .await
            .expect("another instance's push goes through");
        let e = push(&no_helper.id).await.expect_err("refused");
        assert_eq!(e.code(), Some("AuthException"));
        push(&no_helper.id).await.expect("only once");
    });
    assert!(bed.signature_failures().is_empty());
}

// ------------------------------------------------ latency: the delay proxy

mod delay {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::support::latency::DelayProxy;

    pub const ANY: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

    /// What a test server does with each accepted connection.
    #[derive(Clone, Copy)]
    pub enum Mode {
        /// Echo every chunk back.
        Echo,
        /// Send `HELLO\n` first, then answer each line with `OK\n`.
        Banner,
        /// `HELLO\n` and, 60 ms later, `AGAIN\n` (one flight, unprompted),
        /// then as `Banner`.
        Flight,
        /// Send `.` first, then read to the end, recording when each byte
        /// arrived.
        Sink,
    }

    /// Arrival time of every byte a `Sink` server read, in order.
    pub type Arrivals = Arc<Mutex<Vec<Instant>>>;

    /// A server on 127.0.0.1:0, a thread per connection.
    pub fn server(mode: Mode) -> (SocketAddr, Arrivals) {
        let listener = TcpListener::bind(SocketAddr::from(ANY)).expect("bind a test server");
        let addr = listener.local_addr().expect("server address");
        let arrivals = Arrivals::default();
        let log = arrivals.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_nodelay(true);
                    let mut buf = vec![0u8; 64 * 1024];
                    match mode {
                        Mode::Banner => drop(conn.write_all(b"HELLO\n")),
                        Mode::Flight => {
                            let _ = conn.write_all(b"HELLO\n");
                            std::thread::sleep(Duration::from_millis(60));
                            let _ = conn.write_all(b"AGAIN\n");
                        }
                        Mode::Sink => drop(conn.write_all(b".")),
                        Mode::Echo => {}
                    }
                    loop {
                        let n = match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let now = Instant::now();
                        let answer: Vec<u8> = match mode {
                            Mode::Echo => buf[..n].to_vec(),
                            Mode::Banner | Mode::Flight => buf[..n]
                                .iter()
                                .filter(|b| **b == b'\n')
                                .flat_map(|_| b"OK\n".iter().copied())
                                .collect(),
                            Mode::Sink => {
                                log.lock().unwrap().extend(std::iter::repeat_n(now, n));
                                Vec::new()
                            }
                        };
                        if conn.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, arrivals)
    }

    pub fn proxy(upstream: SocketAddr, one_way: Duration) -> DelayProxy {
        DelayProxy::start(ANY.into(), upstream, one_way).expect("start a delay proxy")
    }

    pub fn connect(proxy: &DelayProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s
    }

    pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).expect("read from the proxy");
        buf
    }
}

#[test]
fn delay_proxy_delays_each_way_and_the_tcp_handshake() {
    use delay::{Mode, connect, proxy, read_n, server};
    const D: Duration = Duration::from_millis(25);

    // Client first: the first byte reaches the server 1.5 RTT after
    // connect (the handshake), its echo is back 0.5 RTT later.
    let (echo, _) = server(Mode::Echo);
    let p = proxy(echo, D);
    let t0 = std::time::Instant::now();
    let mut s = connect(&p);
    s.write_all(b"a").unwrap();
    assert_eq!(read_n(&mut s, 1), b"a");
    let first = t0.elapsed();
    assert!(
        first >= 4 * D,
        "first answer after {first:?}, want >= {:?}",
        4 * D
    );
    // Then every round trip takes at least 2 × the delay, and not much more.
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        s.write_all(b"b").unwrap();
        assert_eq!(read_n(&mut s, 1), b"b");
        rtts.push(t.elapsed());
    }
    assert!(rtts.iter().all(|r| *r >= 2 * D), "{rtts:?}");
    let fastest = *rtts.iter().min().unwrap();
    assert!(
        fastest < 3 * D,
        "round trips {rtts:?}, want about {:?}",
        2 * D
    );
    drop(s);
    assert!(
        p.wait_closed(Duration::from_secs(5)),
        "{:?}",
        p.connections()
    );
    let c = &p.connections()[0];
    assert_eq!((c.turns, c.bytes_up, c.bytes_down), (6, 6, 6), "{c:?}");

    // Work between connect and the first write is not hidden by the
    // handshake: it starts one RTT later on a network.
    let t0 = std::time::Instant::now();
    let mut s = connect(&p);
    std::thread::sleep(2 * D);
    s.write_all(b"c").unwrap();
    assert_eq!(read_n(&mut s, 1), b"c");
    let took = t0.elapsed();
    assert!(took >= 6 * D, "answer after {took:?}, want >= {:?}", 6 * D);
    drop(s);

    // Server first (ssh's banner): the banner arrives 2 RTT after connect.
    let (banner, _) = server(Mode::Banner);
    let p = proxy(banner, D);
    let t0 = std::time::Instant::now();
    let mut s = connect(&p);
    assert_eq!(read_n(&mut s, 6), b"HELLO\n");
    let took = t0.elapsed();
    assert!(took >= 4 * D, "banner after {took:?}, want >= {:?}", 4 * D);
}

#[test]
fn delay_proxy_delivers_each_chunk_its_delay_after_it_was_sent() {
    use delay::{Mode, connect, proxy, read_n, server};
    const D: Duration = Duration::from_millis(30);
    let (sink, arrivals) = server(Mode::Sink);
    let p = proxy(sink, D);
    let mut s = connect(&p);
    // Once the client has heard from the server, only the per-chunk delay
    // counts (before, the handshake's is added).
    assert_eq!(read_n(&mut s, 1), b".");
    let mut sent = Vec::new();
    for _ in 0..6 {
        sent.push(std::time::Instant::now());
        s.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    wait_until("6 bytes at the sink", || {
        arrivals.lock().unwrap().len() == 6
    });
    let got = arrivals.lock().unwrap().clone();
    for (i, (at, sent)) in got.iter().zip(&sent).enumerate() {
        let took = at.duration_since(*sent);
        assert!(took >= D, "byte {i} arrived {took:?} after it was sent");
    }
    // Not held back and delivered in one lump: the first byte arrived
    // before the last one was sent.
    assert!(got[0] < sent[5], "first byte delivered with the last");
}

#[test]
fn delay_proxy_moves_a_large_transfer_intact_and_in_order() {
    use delay::{Mode, connect, proxy, server};
    let (echo, _) = server(Mode::Echo);
    let p = proxy(echo, Duration::from_millis(2));
    let s = connect(&p);
    const LEN: usize = 8 * 1024 * 1024;
    let data: Vec<u8> = (0..LEN as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let mut w = s.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        // Odd-sized writes, so chunks do not line up with the proxy's.
        for part in to_send.chunks(50_001) {
            w.write_all(part).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(LEN);
    let mut r = s;
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), LEN);
    assert!(back == data, "bytes changed or reordered on the way");
    assert!(p.wait_closed(Duration::from_secs(5)));
    let t = p.totals();
    assert_eq!(
        (t.connections, t.bytes_up, t.bytes_down),
        (1, LEN as u64, LEN as u64)
    );
}

#[test]
fn delay_proxy_counts_round_trips() {
    use delay::{Mode, connect, proxy, read_n, server};
    let (banner, _) = server(Mode::Banner);
    let p = proxy(banner, Duration::from_millis(5));
    // Server speaks first; three requests, each waiting for its answer.
    let mut s = connect(&p);
    assert_eq!(read_n(&mut s, 6), b"HELLO\n");
    for line in [&b"a\n"[..], b"b\n", b"c\n"] {
        s.write_all(line).unwrap();
        assert_eq!(read_n(&mut s, 3), b"OK\n");
    }
    drop(s);
    // Pipelined: three requests sent at once cost one turn.
    let mut s = connect(&p);
    assert_eq!(read_n(&mut s, 6), b"HELLO\n");
    s.write_all(b"a\nb\nc\n").unwrap();
    assert_eq!(read_n(&mut s, 9), b"OK\nOK\nOK\n");
    drop(s);
    assert!(p.wait_closed(Duration::from_secs(5)));
    let turns: Vec<u64> = p.connections().iter().map(|c| c.turns).collect();
    assert_eq!(turns, [3, 1]);
    // Answering each of two messages the server sent unprompted is one
    // wait, not two, even when the first answer reaches the proxy before
    // the second message (sent more than the delay after the first): no
    // round trip is shorter than 2 x the delay.
    let (flight, _) = server(Mode::Flight);
    let p2 = proxy(flight, Duration::from_millis(50));
    let mut s = connect(&p2);
    assert_eq!(read_n(&mut s, 6), b"HELLO\n");
    s.write_all(b"a\n").unwrap();
    assert_eq!(read_n(&mut s, 6), b"AGAIN\n");
    s.write_all(b"b\n").unwrap();
    assert_eq!(read_n(&mut s, 6), b"OK\nOK\n");
    drop(s);
    assert!(p2.wait_closed(Duration::from_secs(5)));
    assert_eq!(p2.connections()[0].turns, 1, "{:?}", p2.connections());
    let before = p.totals();
    // Totals::since gives one invocation's share.
    let mut s = connect(&p);
    assert_eq!(read_n(&mut s, 6), b"HELLO\n");
    s.write_all(b"z\n").unwrap();
    assert_eq!(read_n(&mut s, 3), b"OK\n");
    drop(s);
    assert!(p.wait_closed(Duration::from_secs(5)));
    let one = p.totals().since(&before);
    assert_eq!(
        (one.connections, one.turns, one.bytes_up, one.bytes_down),
        (1, 1, 2, 9)
    );
}

// ------------------------------------------------ HTTPS mode and latency

/// Send `wire` over TLS to `addr`, trusting only the CAs in `ca_pem`;
/// the whole answer (the server closes with close_notify).
fn tls_exchange(addr: &str, ca_pem: &str, wire: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rt().block_on(async {
        let connector = tokio_rustls::TlsConnector::from(support::tls::client_config(ca_pem));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(support::tls::server_name("127.0.0.1"), tcp)
            .await?;
        tls.write_all(wire).await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(out)
    })
}

#[test]
fn https_stand_in_answers_tls_clients_that_trust_its_ca_only() {
    let bed = TestBed::start_with(BedOptions {
        https: true,
        ..Default::default()
    });
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let addr = bed
        .endpoint()
        .strip_prefix("https://")
        .expect("an https:// endpoint")
        .to_owned();
    assert!(bed.api_proxy().is_none());
    let api_ca = std::fs::read_to_string(bed.api_ca_pem().expect("api-ca.pem")).unwrap();
    let body = "Action=DescribeInstances&Version=2016-11-15";

    // A TLS client trusting only the bed's API CA: a signed request is answered.
    let wire = signed_ec2_post(&bed, &addr, body, bed.secret_access_key());
    let resp = tls_exchange(&addr, &api_ca, wire.as_bytes()).expect("TLS exchange");
    let (status, xml) = parse_response(&String::from_utf8_lossy(&resp));
    assert_eq!(status, 200, "{xml}");
    assert!(xml.contains(&web.id), "{xml}");
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
    // ...and a wrongly signed one refused, as over plain HTTP.
    let wire = signed_ec2_post(&bed, &addr, body, "wrong-secret");
    let resp = tls_exchange(&addr, &api_ca, wire.as_bytes()).expect("TLS exchange");
    assert_eq!(parse_response(&String::from_utf8_lossy(&resp)).0, 403);
    let requests = bed.requests().len();

    // Trusting another CA (the endpoint stand-in's): the handshake fails.
    let eice_ca = std::fs::read_to_string(bed.eice_ca_bundle()).unwrap();
    let err = tls_exchange(&addr, &eice_ca, wire.as_bytes()).expect_err("an untrusted certificate");
    assert!(err.to_string().contains("certificate"), "{err}");

    // A plain HTTP client gets no HTTP answer.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(signed_ec2_post(&bed, &addr, body, bed.secret_access_key()).as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        bed.requests().len(),
        requests,
        "refused clients reach no handler"
    );

    // The bed's commands trust both stand-ins' CAs and use https.
    let c = bed.command();
    let env: std::collections::HashMap<_, _> = c
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
        .collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], bed.endpoint());
    let bundle = std::fs::read_to_string(&env["AWS_CA_BUNDLE"]).unwrap();
    assert!(bundle.contains(api_ca.trim()) && bundle.contains(eice_ca.trim()));
}

#[test]
fn latency_bed_delays_the_api_and_an_instance_and_counts_turns() {
    const D: Duration = Duration::from_millis(25);
    let bed = TestBed::start_with(BedOptions {
        https: true,
        api_latency: Some(D),
        ..Default::default()
    });
    let slow = bed.add_instance(InstanceSpec::named("slow").latency(D));
    let fast = bed.add_instance(InstanceSpec::named("fast"));
    let proxy = bed.api_proxy().expect("an API proxy");
    let addr = bed.endpoint().strip_prefix("https://").unwrap().to_owned();
    assert_eq!(addr, proxy.addr().to_string());

    // A signed request over TLS through the proxy: TCP handshake, TLS 1.3
    // handshake, request: at least 3 RTT, and two turns.
    let api_ca = std::fs::read_to_string(bed.api_ca_pem().unwrap()).unwrap();
    let wire = signed_ec2_post(
        &bed,
        &addr,
        "Action=DescribeInstances&Version=2016-11-15",
        bed.secret_access_key(),
    );
    let t = std::time::Instant::now();
    let resp = tls_exchange(&addr, &api_ca, wire.as_bytes()).expect("TLS exchange");
    let took = t.elapsed();
    assert_eq!(parse_response(&String::from_utf8_lossy(&resp)).0, 200);
    assert!(
        took >= 6 * D,
        "answered after {took:?}, want >= {:?}",
        6 * D
    );
    assert!(proxy.wait_closed(Duration::from_secs(5)));
    let conns = proxy.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].turns, 2, "{conns:?}");

    // The slow instance's public address is the proxy's; behind it is its
    // sshd, reached on the private address.
    let ssh_proxy = bed
        .ssh_proxy(&slow.id)
        .expect("a proxy for the slow instance");
    let public = slow.public_ip.clone().unwrap();
    assert_eq!(public, support::sshd::delayed_ip(slow.slot));
    assert_eq!(
        ssh_proxy.addr().to_string(),
        format!("{public}:{}", bed.sshd_port())
    );
    assert!(bed.ssh_proxy(&fast.id).is_none());
    assert_eq!(
        fast.public_ip.as_deref(),
        Some(support::sshd::public_ip(fast.slot).as_str())
    );

    let key = bed.generate_key("k");
    bed.push_key_directly(&slow.id, &bed.os_user(), &key.public_key);
    let out = bed
        .ssh_command(&key.private_key, &bed.os_user(), &public)
        .arg("echo $SSH_CONNECTION")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let server = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        server.split_whitespace().nth(2),
        Some(slow.private_ip.as_str()),
        "{server}"
    );
    assert!(ssh_proxy.wait_closed(Duration::from_secs(5)));
    let t = ssh_proxy.totals();
    assert_eq!(t.connections, 1);
    // Banners, key exchange, authentication, the session: several waits.
    assert!(t.turns >= 4, "{t:?}");
}

// ------------------------------------------------------- Session Manager

/// POST a hand-signed AWS JSON 1.1 call of `AmazonSSM.<op>`, signed for
/// `service` with `secret`; returns (status, parsed body).
fn ssm_post_as(
    bed: &TestBed,
    op: &str,
    body: &serde_json::Value,
    secret: &str,
    service: &str,
) -> (u16, serde_json::Value) {
    let host = bed.endpoint().trim_start_matches("http://").to_owned();
    let body = body.to_string();
    let target = format!("AmazonSSM.{op}");
    let headers = h(&[
        ("Host", &host),
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Date", &sigv4::format_amz_date(SystemTime::now())),
        ("X-Amz-Target", &target),
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
        &["content-type", "host", "x-amz-date", "x-amz-target"],
        bed.access_key_id(),
        secret,
        bed.region(),
        service,
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
    let (status, text) = parse_response(&resp);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, json)
}

fn ssm_post(bed: &TestBed, op: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    ssm_post_as(bed, op, &body, bed.secret_access_key(), "ssm")
}

/// `(status, __type, message)` of an SSM error answer (`Message` or
/// `message`).
fn ssm_error(answer: &(u16, serde_json::Value)) -> (u16, String, String) {
    let (status, body) = answer;
    let code = body["__type"].as_str().unwrap_or_default().to_owned();
    let message = body
        .get("Message")
        .or_else(|| body.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    (*status, code, message)
}

fn ids_of(list: &serde_json::Value) -> Vec<String> {
    list["InstanceInformationList"]
        .as_array()
        .expect("InstanceInformationList")
        .iter()
        .map(|i| i["InstanceId"].as_str().expect("InstanceId").to_owned())
        .collect()
}

#[test]
fn ssm_describe_instance_information_filters_pages_and_errors() {
    use serde_json::json;
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let lost = bed.add_instance(InstanceSpec::named("lost-1").ssm_ping("ConnectionLost"));
    let stopped = bed.add_instance(
        InstanceSpec::named("stopped-1")
            .managed(true)
            .state("stopped"),
    );
    let plain = bed.add_instance(InstanceSpec::named("plain-1"));
    let more: Vec<String> = (0..4)
        .map(|k| {
            bed.add_instance(InstanceSpec::named(&format!("m-{k}")).managed(true))
                .id
        })
        .collect();

    // Everything managed, in order; the unmanaged instance is absent.
    let (status, all) = ssm_post(&bed, "DescribeInstanceInformation", json!({}));
    assert_eq!(status, 200, "{all}");
    let mut want = vec![web.id.clone(), lost.id.clone(), stopped.id.clone()];
    want.extend(more.iter().cloned());
    assert_eq!(ids_of(&all), want);
    assert!(all.get("NextToken").is_none(), "{all}");
    let first = &all["InstanceInformationList"][0];
    assert_eq!(first["PingStatus"], "Online");
    assert_eq!(first["PlatformType"], "Linux");
    assert_eq!(first["ResourceType"], "EC2Instance");
    assert_eq!(first["IPAddress"], web.private_ip.as_str());
    assert_eq!(first["ComputerName"], web.private_dns_name.as_str());
    assert_eq!(first["IsLatestVersion"], true);
    assert!(
        first["AgentVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    // Timestamps are epoch seconds, as JSON numbers.
    let ping = first["LastPingDateTime"].as_f64().expect("a number");
    assert!((ping - bed.now() as f64).abs() < 120.0, "{ping}");
    let status_of = |list: &serde_json::Value, id: &str| {
        list["InstanceInformationList"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["InstanceId"] == id)
            .map(|i| i["PingStatus"].as_str().unwrap().to_owned())
    };
    assert_eq!(status_of(&all, &lost.id).as_deref(), Some("ConnectionLost"));
    // Online but not running: the agent stopped pinging.
    assert_eq!(
        status_of(&all, &stopped.id).as_deref(),
        Some("ConnectionLost")
    );

    // Filters (current and older shape); an unmanaged id is just absent.
    let (status, some) = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "Filters": [{ "Key": "InstanceIds", "Values": [web.id, plain.id] }] }),
    );
    assert_eq!(status, 200, "{some}");
    assert_eq!(ids_of(&some), vec![web.id.clone()]);
    let (status, old) = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "InstanceInformationFilterList": [{ "key": "InstanceIds", "valueSet": [lost.id] }] }),
    );
    assert_eq!(status, 200, "{old}");
    assert_eq!(ids_of(&old), vec![lost.id.clone()]);
    let (_, online) = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "Filters": [{ "Key": "PingStatus", "Values": ["Online"] }] }),
    );
    assert_eq!(ids_of(&online).len(), 5, "{online}");

    // Paging: MaxResults 5 of 7, then the rest with the token.
    let (status, p1) = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "MaxResults": 5 }),
    );
    assert_eq!(status, 200, "{p1}");
    assert_eq!(ids_of(&p1), want[..5].to_vec());
    let token = p1["NextToken"].as_str().expect("NextToken").to_owned();
    let (status, p2) = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "MaxResults": 5, "NextToken": token }),
    );
    assert_eq!(status, 200, "{p2}");
    assert_eq!(ids_of(&p2), want[5..].to_vec());
    assert!(p2.get("NextToken").is_none());
    // A token from another query, or made up, is refused.
    let answer = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "MaxResults": 6, "NextToken": token }),
    );
    assert_eq!(ssm_error(&answer).1, "InvalidNextToken", "{answer:?}");
    // The bed can force small pages.
    bed.set_ssm_page_size(2);
    let (_, forced) = ssm_post(&bed, "DescribeInstanceInformation", json!({}));
    assert_eq!(ids_of(&forced).len(), 2);
    assert!(forced["NextToken"].is_string());
    bed.set_ssm_page_size(0);

    // Errors, in the JSON 1.1 shape.
    let answer = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "Filters": [{ "Key": "InstanceIds", "Values": ["web-1"] }] }),
    );
    let (status, code, message) = ssm_error(&answer);
    assert_eq!(
        (status, code.as_str()),
        (400, "InvalidInstanceId"),
        "{answer:?}"
    );
    assert!(message.contains("web-1"), "{message}");
    assert!(
        answer.1.get("Message").is_some(),
        "modelled member name: {answer:?}"
    );
    let answer = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "MaxResults": 3 }),
    );
    assert_eq!(ssm_error(&answer).1, "ValidationException", "{answer:?}");
    let answer = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "Filters": [{ "Key": "PingStatus", "Values": ["Asleep"] }] }),
    );
    assert_eq!(
        ssm_error(&answer).1,
        "InvalidInstanceInformationFilterValue",
        "{answer:?}"
    );
    let answer = ssm_post(
        &bed,
        "DescribeInstanceInformation",
        json!({ "InstanceInformationFilterList": [{ "key": "Colour", "valueSet": ["red"] }] }),
    );
    assert_eq!(ssm_error(&answer).1, "InvalidFilterKey", "{answer:?}");

    // Managed and ping status change at run time.
    bed.set_managed(&plain.id, true);
    bed.set_ssm_ping(&web.id, "Inactive");
    let (_, now) = ssm_post(&bed, "DescribeInstanceInformation", json!({}));
    assert!(ids_of(&now).contains(&plain.id));
    assert_eq!(status_of(&now, &web.id).as_deref(), Some("Inactive"));
    bed.set_managed(&plain.id, false);
    let (_, now) = ssm_post(&bed, "DescribeInstanceInformation", json!({}));
    assert!(!ids_of(&now).contains(&plain.id));
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
}

#[test]
fn ssm_calls_are_signed_throttled_and_fail_on_demand() {
    use serde_json::json;
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let body = json!({ "Target": web.id, "DocumentName": "AWS-StartSSHSession", "Parameters": { "portNumber": ["22"] } });

    // A wrong secret, or the wrong signing name, is refused first and
    // recorded; no session starts.
    let answer = ssm_post_as(&bed, "StartSession", &body, "wrong-secret", "ssm");
    let (status, code, _) = ssm_error(&answer);
    assert_eq!(
        (status, code.as_str()),
        (403, "InvalidSignatureException"),
        "{answer:?}"
    );
    let answer = ssm_post_as(&bed, "StartSession", &body, bed.secret_access_key(), "ec2");
    assert_eq!(ssm_error(&answer).0, 403, "{answer:?}");
    assert_eq!(
        bed.signature_failures().len(),
        2,
        "{:?}",
        bed.signature_failures()
    );
    assert!(
        bed.signature_failures()
            .iter()
            .all(|f| f.starts_with("ssm StartSession")),
        "{:?}",
        bed.signature_failures()
    );
    assert!(bed.ssm_sessions().is_empty());
    let call = bed.requests_for("StartSession").pop().expect("recorded");
    assert_eq!(call.service, support::Service::Ssm);
    bed.clear_records();

    // Injected failures come after the signature check, with SSM's statuses.
    for (code, status) in [
        ("AccessDeniedException", 400),
        ("ThrottlingException", 400),
        ("InternalServerError", 500),
        ("TargetNotConnected", 400),
    ] {
        bed.fail_next("StartSession", code, 1);
        let answer = ssm_post(&bed, "StartSession", body.clone());
        let (s, c, m) = ssm_error(&answer);
        assert_eq!((s, c.as_str()), (status, code), "{answer:?}");
        assert!(!m.is_empty(), "{answer:?}");
    }
    bed.fail_next("StartSession", "AccessDeniedException", 1);
    let (_, _, m) = ssm_error(&ssm_post(&bed, "StartSession", body.clone()));
    assert!(m.contains("ssm:StartSession") && m.contains(&web.id), "{m}");
    // ... and per instance.
    let other = bed.add_instance(InstanceSpec::named("other").managed(true));
    bed.fail_next_for("StartSession", &web.id, "InternalServerError", 1);
    let (s, ok) = ssm_post(
        &bed,
        "StartSession",
        json!({ "Target": other.id, "DocumentName": "AWS-StartSSHSession" }),
    );
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ssm_post(&bed, "StartSession", body.clone()).0, 500);
    assert!(bed.ssm_sessions().len() == 1);

    // A rate limit answers ThrottlingException (400) and does nothing.
    bed.set_rate_limit("DescribeInstanceInformation", 0.0, 1);
    assert_eq!(
        ssm_post(&bed, "DescribeInstanceInformation", json!({})).0,
        200
    );
    let answer = ssm_post(&bed, "DescribeInstanceInformation", json!({}));
    assert_eq!(
        (ssm_error(&answer).0, ssm_error(&answer).1.as_str()),
        (400, "ThrottlingException"),
        "{answer:?}"
    );
    assert_eq!(bed.throttled("DescribeInstanceInformation"), 1);

    // An unknown operation.
    let answer = ssm_post(&bed, "TerminateSessions", json!({}));
    assert_eq!(
        ssm_error(&answer).1,
        "UnknownOperationException",
        "{answer:?}"
    );
    assert!(bed.signature_failures().is_empty());
}

#[test]
fn ssm_start_and_terminate_session() {
    use serde_json::json;
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let plain = bed.add_instance(InstanceSpec::named("plain-1"));
    let lost = bed.add_instance(InstanceSpec::named("lost-1").ssm_ping("ConnectionLost"));
    let stopped = bed.add_instance(
        InstanceSpec::named("stopped-1")
            .managed(true)
            .state("stopped"),
    );
    let start = |target: &str, doc: &str, params: serde_json::Value| {
        ssm_post(
            &bed,
            "StartSession",
            json!({ "Target": target, "DocumentName": doc, "Parameters": params, "Reason": "testing" }),
        )
    };

    let (status, out) = start(
        &web.id,
        "AWS-StartSSHSession",
        json!({ "portNumber": ["22"] }),
    );
    assert_eq!(status, 200, "{out}");
    let id = out["SessionId"].as_str().expect("SessionId").to_owned();
    let url = out["StreamUrl"].as_str().expect("StreamUrl").to_owned();
    assert!(out["TokenValue"].as_str().is_some_and(|t| t.len() > 20));
    assert_eq!(
        url.split_once('?').map(|(base, _)| base.to_owned()),
        Some(format!(
            "{}/v1/data-channel/{id}",
            bed.ssm_stream_endpoint()
        ))
    );
    assert!(url.contains("role=publish_subscribe&cell-number="), "{url}");
    let s = bed.ssm_session(&id).expect("recorded");
    assert_eq!(s.target, web.id);
    assert_eq!(s.document_name, "AWS-StartSSHSession");
    assert_eq!(s.parameters["portNumber"], vec!["22".to_owned()]);
    assert_eq!(s.reason.as_deref(), Some("testing"));
    assert!(!s.terminated);

    // Not connected: unmanaged, lost, stopped, unknown.
    for target in [
        &plain.id,
        &lost.id,
        &stopped.id,
        &"i-0123456789abcdef0".to_owned(),
    ] {
        let answer = start(
            target,
            "AWS-StartSSHSession",
            json!({ "portNumber": ["22"] }),
        );
        let (status, code, message) = ssm_error(&answer);
        assert_eq!(
            (status, code.as_str()),
            (400, "TargetNotConnected"),
            "{answer:?}"
        );
        assert_eq!(message, format!("{target} is not connected."));
    }
    // Documents and parameters.
    let answer = start(&web.id, "AWS-StartPortForwardingSessionToSocket", json!({}));
    assert_eq!(ssm_error(&answer).1, "InvalidDocument", "{answer:?}");
    let answer = start(
        &web.id,
        "AWS-StartSSHSession",
        json!({ "portNumber": ["022"] }),
    );
    assert_eq!(ssm_error(&answer).1, "InvalidParameters", "{answer:?}");
    let answer = start(&web.id, "AWS-StartSSHSession", json!({ "host": ["x"] }));
    assert_eq!(ssm_error(&answer).1, "InvalidParameters", "{answer:?}");
    let (status, _) = start(&web.id, "AWS-StartSSHSession", json!({}));
    assert_eq!(status, 200, "portNumber defaults to 22");

    // TerminateSession: a session with no channel ends at once; an unknown
    // id is a success too, as on AWS.
    let (status, out) = ssm_post(&bed, "TerminateSession", json!({ "SessionId": id }));
    assert_eq!(
        (status, out["SessionId"].as_str()),
        (200, Some(id.as_str()))
    );
    let s = bed.ssm_session(&id).unwrap();
    assert!(s.terminated && s.terminate_api_called, "{s:?}");
    assert_eq!(s.ended_by, Some(support::SsmEnd::TerminateApi));
    let (status, out) = ssm_post(
        &bed,
        "TerminateSession",
        json!({ "SessionId": "nobody-0123456789abcdef0" }),
    );
    assert_eq!(
        (status, out["SessionId"].as_str()),
        (200, Some("nobody-0123456789abcdef0"))
    );
    assert!(bed.signature_failures().is_empty());
}

/// A minimal Session Manager client for testing the stand-in, written
/// apart from it (framing, acknowledgements, reordering, retransmission),
/// so each checks the other.
mod ssmc {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};
    use tokio_tungstenite::tungstenite::Message;

    pub const OUTPUT: u32 = 1;
    pub const HANDSHAKE_REQUEST: u32 = 5;
    pub const HANDSHAKE_RESPONSE: u32 = 6;
    pub const HANDSHAKE_COMPLETE: u32 = 7;
    pub const FLAG: u32 = 10;
    /// How long before the client sends an unacknowledged message again.
    const RESEND_AFTER: Duration = Duration::from_millis(150);

    /// A received message.
    #[derive(Debug, Clone)]
    pub struct Msg {
        pub ty: String,
        pub schema: u32,
        pub created: u64,
        pub seq: i64,
        pub flags: u64,
        /// UUID bytes, usual order.
        pub id: [u8; 16],
        pub ptype: u32,
        pub payload: Vec<u8>,
    }

    pub fn random_v4() -> [u8; 16] {
        let mut b = super::support::api::random_bytes::<16>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        b
    }

    pub fn uuid_text(id: &[u8; 16]) -> String {
        let h = hex::encode(id);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn millis() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// The plugin's layout: HL=116, type (32, space-padded), schema,
    /// created ms, seq, flags, id (low half, then high half), SHA-256,
    /// payload type, payload length, payload.
    pub fn encode(
        ty: &str,
        seq: i64,
        flags: u64,
        ptype: u32,
        payload: &[u8],
        id: [u8; 16],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(116u32.to_be_bytes());
        let mut t = [b' '; 32];
        t[..ty.len()].copy_from_slice(ty.as_bytes());
        b.extend(t);
        b.extend(1u32.to_be_bytes());
        b.extend(millis().to_be_bytes());
        b.extend(seq.to_be_bytes());
        b.extend(flags.to_be_bytes());
        b.extend(&id[8..]);
        b.extend(&id[..8]);
        b.extend(Sha256::digest(payload));
        b.extend(ptype.to_be_bytes());
        b.extend((payload.len() as u32).to_be_bytes());
        b.extend(payload);
        assert_eq!(b.len(), 120 + payload.len());
        b
    }

    /// Decode, checking lengths and digest as the plugin does.
    pub fn decode(b: &[u8]) -> Msg {
        assert!(b.len() >= 120, "short message: {b:?}");
        let be32 = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        let be64 = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(be32(0), 116, "HeaderLength");
        assert_eq!(be32(116) as usize, b.len() - 120, "PayloadLength");
        let payload = b[120..].to_vec();
        assert_eq!(&b[80..112], Sha256::digest(&payload).as_slice(), "digest");
        let ty = String::from_utf8(b[4..36].to_vec()).unwrap();
        assert!(
            ty.len() == 32
                && ty
                    .trim_end_matches(' ')
                    .bytes()
                    .all(|c| c.is_ascii_graphic()),
            "MessageType {ty:?} padded with spaces"
        );
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&b[72..80]);
        id[8..].copy_from_slice(&b[64..72]);
        assert_eq!(
            id[6] >> 4,
            4,
            "a v4 UUID, low half first: {}",
            uuid_text(&id)
        );
        Msg {
            ty: ty.trim_end().to_owned(),
            schema: be32(36),
            created: be64(40),
            seq: be64(48) as i64,
            flags: be64(56),
            id,
            ptype: be32(112),
            payload,
        }
    }

    type Ws =
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

    pub struct Client {
        pub ws: Ws,
        pub next_seq: i64,
        pub expected: i64,
        ahead: BTreeMap<i64, Msg>,
        /// seq -> (wire bytes, id, last sent)
        unacked: BTreeMap<i64, (Vec<u8>, [u8; 16], Instant)>,
        /// The ids of what the client sent, by seq.
        pub sent_ids: BTreeMap<i64, String>,
        pub handshake_request: Option<(Msg, Value)>,
        pub handshake_complete: Option<(Msg, Value)>,
        /// Output payloads, in sequence order.
        pub data: Vec<u8>,
        /// Sequence numbers of output_stream_data as they arrived.
        pub arrivals: Vec<i64>,
        pub duplicates: u64,
        pub out_of_order: u64,
        /// (acknowledged seq, acknowledged id, the whole content)
        pub acks: Vec<(i64, String, Value)>,
        pub retransmissions: u64,
        pub channel_closed: Option<Value>,
        pub closed: bool,
        /// When false the client acknowledges nothing (to make the agent
        /// retransmit).
        pub acknowledge: bool,
    }

    impl Client {
        /// TLS (trusting only `ca_pem`) and the WebSocket upgrade.
        pub async fn connect(url: &str, ca_pem: &str) -> Result<Client, String> {
            let rest = url.strip_prefix("wss://").ok_or("not wss://")?;
            let hostport = rest.split('/').next().unwrap_or_default();
            let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
            let tcp = tokio::net::TcpStream::connect(hostport)
                .await
                .map_err(|e| e.to_string())?;
            let connector =
                tokio_rustls::TlsConnector::from(super::support::tls::client_config(ca_pem));
            let tls = connector
                .connect(super::support::tls::server_name(host), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (ws, _) = tokio_tungstenite::client_async(url, tls)
                .await
                .map_err(|e| format!("WebSocket: {e}"))?;
            Ok(Client {
                ws,
                next_seq: 0,
                expected: 0,
                ahead: BTreeMap::new(),
                unacked: BTreeMap::new(),
                sent_ids: BTreeMap::new(),
                handshake_request: None,
                handshake_complete: None,
                data: Vec::new(),
                arrivals: Vec::new(),
                duplicates: 0,
                out_of_order: 0,
                acks: Vec::new(),
                retransmissions: 0,
                channel_closed: None,
                closed: false,
                acknowledge: true,
            })
        }

        pub async fn open(&mut self, token: &str) {
            let frame = json!({
                "MessageSchemaVersion": "1.0",
                "RequestId": uuid_text(&random_v4()),
                "TokenValue": token,
                "ClientId": uuid_text(&random_v4()),
                "ClientVersion": "1.2.0.0-selftest",
            });
            self.ws
                .send(Message::text(frame.to_string()))
                .await
                .unwrap();
        }

        /// Send raw bytes as a binary frame.
        pub async fn send_raw(&mut self, bytes: Vec<u8>) {
            self.ws.send(Message::binary(bytes)).await.unwrap();
        }

        /// An input_stream_data message with the next sequence number.
        pub async fn send_stream(&mut self, ptype: u32, payload: &[u8]) -> i64 {
            let seq = self.next_seq;
            self.next_seq += 1;
            let id = random_v4();
            let bytes = encode("input_stream_data", seq, 0, ptype, payload, id);
            self.sent_ids.insert(seq, uuid_text(&id));
            self.unacked
                .insert(seq, (bytes.clone(), id, Instant::now()));
            let _ = self.ws.send(Message::binary(bytes)).await;
            seq
        }

        pub async fn handshake_response(&mut self) -> i64 {
            let response = json!({
                "ClientVersion": "1.2.0.0-selftest",
                "ProcessedClientActions": [
                    { "ActionType": "SessionType", "ActionStatus": 1, "ActionResult": null, "Error": "" }
                ],
                "Errors": [],
            });
            self.send_stream(HANDSHAKE_RESPONSE, response.to_string().as_bytes())
                .await
        }

        async fn ack(&mut self, m: &Msg) {
            if !self.acknowledge {
                return;
            }
            let content = json!({
                "AcknowledgedMessageType": m.ty,
                "AcknowledgedMessageId": uuid_text(&m.id),
                "AcknowledgedMessageSequenceNumber": m.seq,
                "IsSequentialMessage": true,
            });
            let bytes = encode(
                "acknowledge",
                0,
                3,
                0,
                content.to_string().as_bytes(),
                random_v4(),
            );
            let _ = self.ws.send(Message::binary(bytes)).await;
        }

        fn take(&mut self, m: Msg) {
            match m.ptype {
                HANDSHAKE_REQUEST => {
                    let v = serde_json::from_slice(&m.payload).unwrap();
                    self.handshake_request = Some((m, v));
                }
                HANDSHAKE_COMPLETE => {
                    let v = serde_json::from_slice(&m.payload).unwrap();
                    self.handshake_complete = Some((m, v));
                }
                OUTPUT => self.data.extend_from_slice(&m.payload),
                other => panic!("unexpected payload type {other}"),
            }
        }

        /// Handle one frame.
        pub async fn handle(&mut self, frame: Message) {
            let bytes = match frame {
                Message::Binary(b) => b,
                Message::Close(_) => {
                    self.closed = true;
                    return;
                }
                _ => return,
            };
            let m = decode(&bytes);
            match m.ty.as_str() {
                "output_stream_data" => {
                    self.arrivals.push(m.seq);
                    self.ack(&m).await;
                    if m.seq == self.expected {
                        self.expected += 1;
                        self.take(m);
                        while let Some(next) = self.ahead.remove(&self.expected) {
                            self.expected += 1;
                            self.take(next);
                        }
                    } else if m.seq > self.expected {
                        if self.ahead.insert(m.seq, m).is_none() {
                            self.out_of_order += 1;
                        } else {
                            self.duplicates += 1;
                        }
                    } else {
                        self.duplicates += 1;
                    }
                }
                "acknowledge" => {
                    assert_eq!((m.seq, m.flags, m.ptype), (0, 3, 0), "ack header");
                    let v: Value = serde_json::from_slice(&m.payload).unwrap();
                    let seq = v["AcknowledgedMessageSequenceNumber"].as_i64().unwrap();
                    let id = v["AcknowledgedMessageId"].as_str().unwrap().to_owned();
                    self.unacked.remove(&seq);
                    self.acks.push((seq, id, v));
                }
                "channel_closed" => {
                    self.channel_closed = Some(serde_json::from_slice(&m.payload).unwrap());
                }
                other => panic!("unexpected message type {other}"),
            }
        }

        /// Send again what is unacknowledged for too long.
        pub async fn resend(&mut self) {
            let now = Instant::now();
            let due: Vec<i64> = self
                .unacked
                .iter()
                .filter(|(_, (_, _, t))| now.duration_since(*t) > RESEND_AFTER)
                .map(|(s, _)| *s)
                .collect();
            for seq in due {
                let (bytes, _, t) = self.unacked.get_mut(&seq).unwrap();
                *t = now;
                let bytes = bytes.clone();
                self.retransmissions += 1;
                let _ = self.ws.send(Message::binary(bytes)).await;
            }
        }

        /// Handle frames (and resend) until `done` holds; panics after
        /// `timeout`.
        pub async fn run_until(
            &mut self,
            what: &str,
            timeout: Duration,
            done: impl Fn(&Client) -> bool,
        ) {
            let deadline = Instant::now() + timeout;
            while !done(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                if self.closed {
                    panic!(
                        "the channel closed while waiting for {what} (arrivals {:?}, data {:?})",
                        self.arrivals,
                        String::from_utf8_lossy(&self.data)
                    );
                }
                match tokio::time::timeout(Duration::from_millis(20), self.ws.next()).await {
                    Ok(Some(Ok(frame))) => self.handle(frame).await,
                    Ok(_) => self.closed = true,
                    Err(_) => {}
                }
                self.resend().await;
            }
        }

        /// Open, handshake: ready for data.
        pub async fn start(url: &str, token: &str, ca_pem: &str) -> Client {
            let mut c = Client::connect(url, ca_pem).await.expect("connect");
            c.open(token).await;
            let t = Duration::from_secs(10);
            c.run_until("HandshakeRequest", t, |c| c.handshake_request.is_some())
                .await;
            c.handshake_response().await;
            c.run_until("HandshakeComplete", t, |c| c.handshake_complete.is_some())
                .await;
            c.run_until("the ack of the HandshakeResponse", t, |c| {
                c.acks.iter().any(|a| a.0 == 0)
            })
            .await;
            c
        }

        /// Relay between `tcp` and the session until the channel closes:
        /// a ProxyCommand's job. At the local end of input it sends the
        /// TerminateSession flag.
        pub async fn bridge(&mut self, tcp: tokio::net::TcpStream) {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut r, mut w) = tcp.into_split();
            let mut buf = vec![0u8; 1024];
            let mut written = 0;
            let mut local_open = true;
            let mut ended_at = None;
            loop {
                if self.data.len() > written {
                    if w.write_all(&self.data[written..]).await.is_err() {
                        local_open = false;
                    }
                    written = self.data.len();
                }
                if self.closed || self.channel_closed.is_some() {
                    break;
                }
                if ended_at.is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(5)) {
                    break;
                }
                enum Ev {
                    Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
                    Local(std::io::Result<usize>),
                    Tick,
                }
                let ev = tokio::select! {
                    m = self.ws.next() => Ev::Ws(m),
                    n = r.read(&mut buf), if local_open => Ev::Local(n),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => Ev::Tick,
                };
                match ev {
                    Ev::Ws(Some(Ok(frame))) => self.handle(frame).await,
                    Ev::Ws(_) => self.closed = true,
                    Ev::Local(Ok(0)) | Ev::Local(Err(_)) => {
                        local_open = false;
                        ended_at = Some(Instant::now());
                        self.send_stream(FLAG, &2u32.to_be_bytes()).await;
                    }
                    Ev::Local(Ok(n)) => {
                        let chunk = buf[..n].to_vec();
                        self.send_stream(OUTPUT, &chunk).await;
                    }
                    Ev::Tick => {}
                }
                self.resend().await;
            }
            let _ = w.shutdown().await;
        }
    }
}

/// Start an AWS-StartSSHSession session on `instance`: (session id,
/// StreamUrl, token).
fn ssm_start(bed: &TestBed, instance: &str) -> (String, String, String) {
    let (status, out) = ssm_post(
        bed,
        "StartSession",
        serde_json::json!({
            "Target": instance,
            "DocumentName": "AWS-StartSSHSession",
            "Parameters": { "portNumber": ["22"] },
        }),
    );
    assert_eq!(status, 200, "{out}");
    let s = |k: &str| out[k].as_str().expect(k).to_owned();
    (s("SessionId"), s("StreamUrl"), s("TokenValue"))
}

fn bed_ca(bed: &TestBed) -> String {
    std::fs::read_to_string(bed.ca_bundle()).expect("the bed's CA bundle")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn ssm_stream_handshakes_relays_to_sshd_and_acknowledges() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let (id, url, token) = ssm_start(&bed, &web.id);
    let ca = bed_ca(&bed);
    let t = Duration::from_secs(10);
    rt().block_on(async {
        let mut c = ssmc::Client::connect(&url, &ca).await.expect("connect");
        c.open(&token).await;
        c.run_until("HandshakeRequest", t, |c| c.handshake_request.is_some())
            .await;
        // HandshakeRequest: the agent's stream message 0, SYN set; a port
        // session for port 22 and nothing else (no KMS encryption).
        let (m, request) = c.handshake_request.clone().unwrap();
        assert_eq!(
            (m.ty.as_str(), m.seq, m.flags, m.ptype, m.schema),
            ("output_stream_data", 0, 1, 5, 1)
        );
        assert!(m.created > 1_600_000_000_000, "epoch ms: {}", m.created);
        let actions = request["RequestedClientActions"].as_array().unwrap();
        assert_eq!(actions.len(), 1, "{request}");
        assert_eq!(actions[0]["ActionType"], "SessionType");
        assert_eq!(actions[0]["ActionParameters"]["SessionType"], "Port");
        assert_eq!(
            actions[0]["ActionParameters"]["Properties"]["portNumber"],
            "22"
        );
        assert!(request["AgentVersion"].is_string());

        // HandshakeResponse is the client's 0; HandshakeComplete the agent's 1.
        assert_eq!(c.handshake_response().await, 0);
        c.run_until("HandshakeComplete", t, |c| c.handshake_complete.is_some())
            .await;
        let (m, complete) = c.handshake_complete.clone().unwrap();
        assert_eq!((m.seq, m.flags, m.ptype), (1, 0, 7));
        assert!(complete["HandshakeTimeToComplete"].is_u64(), "{complete}");

        // Data: an SSH banner goes to sshd, sshd's comes back.
        let seq = c.send_stream(ssmc::OUTPUT, b"SSH-2.0-selftest\r\n").await;
        assert_eq!(seq, 1);
        c.run_until("sshd's banner", t, |c| {
            contains(&c.data, b"SSH-2.0-OpenSSH")
        })
        .await;
        assert!(
            c.data.starts_with(b"SSH-2.0-OpenSSH"),
            "{:?}",
            String::from_utf8_lossy(&c.data)
        );
        // sshd answers our banner with its KEXINIT: it took the bytes.
        c.run_until("sshd's KEXINIT", t, |c| {
            contains(&c.data, b"curve25519-sha256")
        })
        .await;
        // Each of our messages acknowledged, naming its id as text.
        c.run_until("acks", t, |c| c.acks.len() >= 2).await;
        for (seq, ack_id, content) in &c.acks {
            assert_eq!(Some(ack_id), c.sent_ids.get(seq), "{content}");
            assert_eq!(content["AcknowledgedMessageType"], "input_stream_data");
            assert_eq!(content["IsSequentialMessage"], true);
        }
        // Data messages are the agent's 2, 3, ...; none out of order.
        assert!(c.arrivals.starts_with(&[0, 1, 2]), "{:?}", c.arrivals);
        assert_eq!((c.out_of_order, c.duplicates), (0, 0));

        // The TerminateSession flag ends it: channel_closed, then close.
        c.send_stream(ssmc::FLAG, &2u32.to_be_bytes()).await;
        c.run_until("channel_closed", t, |c| c.channel_closed.is_some())
            .await;
        let closed = c.channel_closed.clone().unwrap();
        assert_eq!(closed["MessageType"], "channel_closed");
        assert_eq!(closed["SessionId"], id.as_str());
        assert_eq!(closed["DestinationId"], web.id.as_str());
        assert_eq!(closed["SchemaVersion"], 1);
    });
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    assert_eq!(s.token_ok, Some(true));
    assert_eq!(
        s.open_frame.as_ref().unwrap()["ClientVersion"],
        "1.2.0.0-selftest"
    );
    assert_eq!(s.client_version(), Some("1.2.0.0-selftest"));
    assert!(s.handshake_request_sent && s.handshake_complete_sent && s.connected_to_instance);
    assert_eq!(s.bytes_up, b"SSH-2.0-selftest\r\n".len() as u64);
    assert!(s.bytes_down > 100, "{s:?}");
    assert!(
        s.acks_received >= 3,
        "handshake request, complete, data: {s:?}"
    );
    assert_eq!(s.acks_sent, 3, "response, banner, flag");
    assert_eq!(s.client_flags, vec![2]);
    assert!(s.client_terminate_flag && !s.client_disconnect_flag);
    assert_eq!(s.ended_by, Some(support::SsmEnd::ClientTerminateFlag));
    assert_eq!(s.channel_closed_sent.as_deref(), Some(""));
    assert_eq!(
        (s.client_retransmissions, s.faults_applied),
        (0, Default::default())
    );
}

#[test]
fn ssm_stream_refuses_bad_tokens_and_records_malformed_messages() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let ca = bed_ca(&bed);
    let t = Duration::from_secs(10);

    // A wrong token: the connection is closed, nothing else happens.
    let (bad, url, _) = ssm_start(&bed, &web.id);
    rt().block_on(async {
        let mut c = ssmc::Client::connect(&url, &ca).await.expect("connect");
        c.open("not-the-token").await;
        c.run_until("the close", t, |c| c.closed).await;
        assert!(c.handshake_request.is_none());
        // A second connection to the session is refused.
        assert!(ssmc::Client::connect(&url, &ca).await.is_err());
        // The certificate is for 127.0.0.1 from the bed's CA: a client
        // trusting another CA refuses it.
        let stranger = support::tls::TestCa::new("another CA").pem;
        let refused = ssmc::Client::connect(&url, &stranger).await.err();
        assert!(
            refused.as_deref().is_some_and(|e| e.starts_with("TLS")),
            "{refused:?}"
        );
    });
    let s = bed.wait_for_ssm_session_closed(&bad, t);
    assert_eq!(s.token_ok, Some(false));
    assert_eq!(s.ended_by, Some(support::SsmEnd::BadToken));
    assert!(!s.handshake_request_sent);
    assert!(
        bed.ssm_stream_rejections()
            .iter()
            .any(|r| r.reason.contains("already has a data channel")),
        "{:?}",
        bed.ssm_stream_rejections()
    );

    // Unknown session; a session's URL with another cell-number.
    let endpoint = bed.ssm_stream_endpoint();
    rt().block_on(async {
        let nobody =
            format!("{endpoint}/v1/data-channel/test-0123456789abcdef0?role=publish_subscribe");
        assert!(ssmc::Client::connect(&nobody, &ca).await.is_err());
    });
    assert!(bed.ssm_stream_rejections().iter().any(|r| r.status == 404));

    // Malformed messages are dropped (no ack) and recorded; a UUID in the
    // wrong order, or a wrong id in an ack, is recorded.
    let (id, url, token) = ssm_start(&bed, &web.id);
    rt().block_on(async {
        let mut c = ssmc::Client::start(&url, &token, &ca).await;
        // From here on the client acknowledges nothing itself.
        c.acknowledge = false;
        let acks = c.acks.len();
        let mut bytes = ssmc::encode(
            "input_stream_data",
            1,
            0,
            ssmc::OUTPUT,
            b"SSH-2.0-x\r\n",
            ssmc::random_v4(),
        );
        bytes[90] ^= 0xff; // the digest
        c.send_raw(bytes).await;
        let mut bytes = ssmc::encode(
            "input_stream_data",
            1,
            0,
            ssmc::OUTPUT,
            b"SSH-2.0-x\r\n",
            ssmc::random_v4(),
        );
        bytes[119] += 1; // PayloadLength
        c.send_raw(bytes).await;
        let short = ssmc::encode(
            "input_stream_data",
            1,
            0,
            ssmc::OUTPUT,
            b"",
            ssmc::random_v4(),
        );
        c.send_raw(short[..100].to_vec()).await;
        let mut nul = ssmc::encode(
            "input_stream_data",
            1,
            0,
            ssmc::OUTPUT,
            b"SSH-2.0-x\r\n",
            ssmc::random_v4(),
        );
        for b in &mut nul[4 + "input_stream_data".len()..36] {
            *b = 0;
        }
        c.send_raw(nul).await;
        // UUID with its halves swapped (the high half first).
        let uuid = ssmc::random_v4();
        let mut swapped = [0u8; 16];
        swapped[..8].copy_from_slice(&uuid[8..]);
        swapped[8..].copy_from_slice(&uuid[..8]);
        let wrong_order = ssmc::encode(
            "input_stream_data",
            1,
            0,
            ssmc::OUTPUT,
            b"SSH-2.0-x\r\n",
            swapped,
        );
        c.send_raw(wrong_order).await;
        c.run_until("the ack of seq 1", t, |c| c.acks.iter().any(|a| a.0 == 1))
            .await;
        c.run_until("a moment", t, {
            let t0 = std::time::Instant::now();
            move |_| t0.elapsed() > Duration::from_millis(300)
        })
        .await;
        assert_eq!(
            c.acks.len(),
            acks + 1,
            "only the well-formed message is acknowledged"
        );
        // An ack naming the wrong id.
        let content = serde_json::json!({
            "AcknowledgedMessageType": "output_stream_data",
            "AcknowledgedMessageId": ssmc::uuid_text(&ssmc::random_v4()),
            "AcknowledgedMessageSequenceNumber": 2,
            "IsSequentialMessage": true,
        });
        c.run_until("sshd's banner", t, |c| {
            contains(&c.data, b"SSH-2.0-OpenSSH")
        })
        .await;
        let ack = ssmc::encode(
            "acknowledge",
            0,
            3,
            0,
            content.to_string().as_bytes(),
            ssmc::random_v4(),
        );
        c.send_raw(ack).await;
        let t0 = std::time::Instant::now();
        c.run_until("a moment", t, move |_| {
            t0.elapsed() > Duration::from_millis(300)
        })
        .await;
    });
    let s = bed.wait_for_ssm_session_closed(&id, t);
    let v = s.violations.join("\n");
    for needle in [
        "PayloadDigest",
        "PayloadLength is",
        "shorter than the 120-byte header",
        "not ASCII text padded with spaces",
        "is not a version-4 UUID",
        "acknowledge of seq 2: AcknowledgedMessageId",
    ] {
        assert!(v.contains(needle), "{needle:?} not in:\n{v}");
    }
    // The client went away without acknowledging: the agent retransmitted.
    assert!(s.retransmissions > 0, "{s:?}");
    assert_eq!(s.ended_by, Some(support::SsmEnd::ClientDropped));
}

#[test]
fn ssm_stream_faults_are_retransmitted_and_reordered() {
    use support::StreamFaults;
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let ca = bed_ca(&bed);
    let t = Duration::from_secs(20);
    let banner = b"SSH-2.0-selftest-with-faults\r\n";

    // Every 2nd new client data message dropped: the client sends it
    // again, and sshd still gets the banner in order (one byte a message).
    bed.set_ssm_faults(StreamFaults {
        drop_incoming_every: 2,
        ..StreamFaults::none()
    });
    let (dropped, url, token) = ssm_start(&bed, &web.id);
    rt().block_on(async {
        let mut c = ssmc::Client::start(&url, &token, &ca).await;
        for b in banner {
            c.send_stream(ssmc::OUTPUT, &[*b]).await;
        }
        c.run_until("sshd's KEXINIT", t, |c| {
            contains(&c.data, b"curve25519-sha256")
        })
        .await;
        c.run_until("every ack", t, |c| {
            (0..c.next_seq).all(|s| c.acks.iter().any(|a| a.0 == s))
        })
        .await;
        assert!(
            c.retransmissions >= (banner.len() / 2) as u64,
            "{}",
            c.retransmissions
        );
    });
    let s = bed.ssm_session(&dropped).unwrap();
    assert_eq!(
        s.faults_applied.dropped_incoming,
        (banner.len() / 2) as u64,
        "{s:?}"
    );
    assert!(
        s.client_retransmissions >= s.faults_applied.dropped_incoming,
        "{s:?}"
    );
    assert_eq!(s.bytes_up, banner.len() as u64);
    assert!(s.violations.is_empty(), "{:#?}", s.violations);

    // Every outgoing data message lost on its first transmission: the
    // client gets each only from the agent's retransmission.
    bed.set_ssm_faults(StreamFaults {
        lose_outgoing_every: 1,
        ..StreamFaults::none()
    });
    let (lost, url, token) = ssm_start(&bed, &web.id);
    rt().block_on(async {
        let mut c = ssmc::Client::start(&url, &token, &ca).await;
        c.send_stream(ssmc::OUTPUT, banner).await;
        c.run_until("sshd's KEXINIT", t, |c| {
            contains(&c.data, b"curve25519-sha256")
        })
        .await;
        assert!(c.data.starts_with(b"SSH-2.0-OpenSSH"));
    });
    let s = bed.ssm_session(&lost).unwrap();
    assert!(s.faults_applied.lost_outgoing >= 2, "{s:?}");
    assert!(s.retransmissions >= 2, "{s:?}");
    assert!(s.violations.is_empty(), "{:#?}", s.violations);

    // Held back and duplicated: sshd's banner is held until its KEXINIT
    // has gone (twice); the client puts them back in order.
    bed.set_ssm_faults(StreamFaults {
        hold_outgoing_every: 1,
        duplicate_outgoing_every: 1,
        ..StreamFaults::none()
    });
    let (held, url, token) = ssm_start(&bed, &web.id);
    rt().block_on(async {
        let mut c = ssmc::Client::start(&url, &token, &ca).await;
        c.send_stream(ssmc::OUTPUT, banner).await;
        c.run_until("sshd's KEXINIT", t, |c| {
            contains(&c.data, b"curve25519-sha256")
        })
        .await;
        assert!(c.data.starts_with(b"SSH-2.0-OpenSSH"));
        assert!(c.out_of_order >= 1, "arrivals {:?}", c.arrivals);
        assert!(c.duplicates >= 1, "arrivals {:?}", c.arrivals);
        // The banner (the agent's 2) came after a later message.
        let banner_at = c.arrivals.iter().position(|s| *s == 2).unwrap();
        assert!(
            c.arrivals[..banner_at].iter().any(|s| *s > 2),
            "{:?}",
            c.arrivals
        );
    });
    let s = bed.ssm_session(&held).unwrap();
    assert!(s.faults_applied.held_outgoing >= 1, "{s:?}");
    assert!(s.faults_applied.duplicated_outgoing >= 1, "{s:?}");
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    // Duplicated messages are acknowledged twice.
    wait_until("duplicate acks", || {
        bed.ssm_session(&held).unwrap().duplicate_acks_received >= 1
    });
}

#[test]
fn ssm_stream_ends_the_ways_the_agent_ends_it() {
    use support::SsmEnd;
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let ca = bed_ca(&bed);
    let t = Duration::from_secs(10);
    // One runtime: the clients' sockets belong to it.
    let rt = rt();
    let session = || {
        let (id, url, token) = ssm_start(&bed, &web.id);
        let c = rt.block_on(ssmc::Client::start(&url, &token, &ca));
        (id, c)
    };
    let closed_with = |c: &mut ssmc::Client| -> serde_json::Value {
        rt.block_on(c.run_until("channel_closed", t, |c| c.channel_closed.is_some()));
        c.channel_closed.clone().unwrap()
    };

    // sshd closes (it takes no such banner): the port session ends.
    let (id, mut c) = session();
    rt.block_on(c.send_stream(ssmc::OUTPUT, b"HELLO?\r\n"));
    assert_eq!(closed_with(&mut c)["Output"], "");
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::SshdClosed));
    assert!(s.violations.is_empty(), "{:?}", s.violations);

    // TerminateSession on a live session.
    let (id, mut c) = session();
    let (status, _) = ssm_post(
        &bed,
        "TerminateSession",
        serde_json::json!({ "SessionId": id }),
    );
    assert_eq!(status, 200);
    closed_with(&mut c);
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::TerminateApi));
    assert!(s.terminate_api_called);

    // The agent (instance) ends it.
    let (id, mut c) = session();
    assert!(bed.ssm_agent_close(&id, "the instance is shutting down"));
    assert_eq!(
        closed_with(&mut c)["Output"],
        "the instance is shutting down"
    );
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::AgentClosed));
    assert_eq!(
        s.channel_closed_sent.as_deref(),
        Some("the instance is shutting down")
    );
    assert!(
        !bed.ssm_agent_close(&id, "again"),
        "no live channel any more"
    );

    // DisconnectToPort: for an SSH session the agent closes and ends.
    let (id, mut c) = session();
    rt.block_on(c.send_stream(ssmc::FLAG, &1u32.to_be_bytes()));
    closed_with(&mut c);
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::ClientDisconnectFlag));
    assert!(s.client_disconnect_flag && !s.client_terminate_flag);

    // The client's channel_closed; the client's WebSocket close.
    let (id, mut c) = session();
    let closing =
        serde_json::json!({ "MessageType": "channel_closed", "SessionId": id, "Output": "" });
    rt.block_on(c.send_raw(ssmc::encode(
        "channel_closed",
        0,
        3,
        0,
        closing.to_string().as_bytes(),
        ssmc::random_v4(),
    )));
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::ClientChannelClosed));
    assert!(s.client_channel_closed);
    let (id, mut c) = session();
    rt.block_on(c.ws.close(None)).unwrap();
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::ClientClosed(1005)));

    // A failed handshake.
    let (id, url, token) = ssm_start(&bed, &web.id);
    rt.block_on(async {
        let mut c = ssmc::Client::connect(&url, &ca).await.unwrap();
        c.open(&token).await;
        c.run_until("HandshakeRequest", t, |c| c.handshake_request.is_some())
            .await;
        let failed = serde_json::json!({
            "ClientVersion": "1.2.0.0-selftest",
            "ProcessedClientActions": [
                { "ActionType": "SessionType", "ActionStatus": 2, "Error": "Unknown session type Port" }
            ],
            "Errors": ["Unknown session type Port"],
        });
        c.send_stream(ssmc::HANDSHAKE_RESPONSE, failed.to_string().as_bytes())
            .await;
        c.run_until("channel_closed", t, |c| c.channel_closed.is_some())
            .await;
        let output = c.channel_closed.as_ref().unwrap()["Output"].as_str().unwrap().to_owned();
        assert!(output.contains("handshake") && output.contains("Unknown session type"), "{output}");
        assert!(c.handshake_complete.is_none());
    });
    let s = bed.wait_for_ssm_session_closed(&id, t);
    assert_eq!(s.ended_by, Some(SsmEnd::HandshakeFailed));
    assert!(!s.connected_to_instance);
}

#[test]
fn ssm_stream_carries_a_real_ssh_session_through_faults() {
    use support::StreamFaults;
    use tokio::io::AsyncWriteExt;
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").managed(true));
    let key = bed.generate_key("k");
    let user = bed.os_user();
    bed.push_key_directly(&web.id, &user, &key.public_key);
    bed.set_ssm_faults(StreamFaults {
        drop_incoming_every: 3,
        hold_outgoing_every: 4,
        duplicate_outgoing_every: 5,
        lose_outgoing_every: 7,
    });
    let (id, url, token) = ssm_start(&bed, &web.id);
    let ca = bed_ca(&bed);
    let mut input = Vec::new();
    while input.len() < 200_000 {
        input.extend(support::api::random_bytes::<4096>());
    }
    let (out, client) = rt().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = ssmc::Client::start(&url, &token, &ca).await;
        let mut ssh = tokio::process::Command::new("ssh");
        ssh.args(["-F", "/dev/null", "-i"])
            .arg(&key.private_key)
            .args(["-p", &port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "KexAlgorithms=curve25519-sha256",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .arg("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = ssh.spawn().expect("run ssh");
        let mut stdin = child.stdin.take().unwrap();
        let data = input.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let (out, ()) = tokio::join!(child.wait_with_output(), c.bridge(tcp));
        (out.unwrap(), c)
    });
    assert!(
        out.status.success(),
        "ssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == input,
        "{} bytes back of {}",
        out.stdout.len(),
        input.len()
    );
    let s = bed.wait_for_ssm_session_closed(&id, Duration::from_secs(10));
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    let f = s.faults_applied;
    assert!(
        f.dropped_incoming > 10
            && f.held_outgoing > 10
            && f.duplicated_outgoing > 10
            && f.lost_outgoing > 10,
        "{f:?}"
    );
    assert!(s.client_retransmissions >= f.dropped_incoming, "{s:?}");
    assert!(s.retransmissions >= f.lost_outgoing, "{s:?}");
    assert!(
        client.out_of_order > 10 && client.duplicates > 10,
        "{} {}",
        client.out_of_order,
        client.duplicates
    );
    assert!(
        s.bytes_up > input.len() as u64 && s.bytes_down > input.len() as u64,
        "{s:?}"
    );
    assert!(matches!(
        s.ended_by,
        Some(support::SsmEnd::SshdClosed | support::SsmEnd::ClientTerminateFlag)
    ));
}

fn ssm_client(bed: &TestBed) -> aws_sdk_ssm::Client {
    use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
    let creds = Credentials::new(
        bed.access_key_id(),
        bed.secret_access_key(),
        bed.session_token().map(str::to_owned),
        None,
        "testbed",
    );
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(bed.region().to_owned()))
        .endpoint_url(bed.endpoint())
        .credentials_provider(creds)
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

/// The real SDK parses what the SSM stand-in answers: its shapes, paging
/// and modelled errors.
#[test]
fn sdk_ssm_sessions_instance_information_and_errors() {
    use aws_sdk_ssm::error::ProvideErrorMetadata;
    use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};
    let bed = TestBed::start_with(BedOptions {
        session_token: Some("FwoGZXIvYXdzEBEaDtestbedtoken".into()),
        ..Default::default()
    });
    let ids: Vec<String> = (0..7)
        .map(|k| {
            bed.add_instance(InstanceSpec::named(&format!("m-{k}")).managed(true))
                .id
        })
        .collect();
    let plain = bed.add_instance(InstanceSpec::named("plain"));
    bed.set_ssm_ping(&ids[6], "ConnectionLost");
    let ssm = ssm_client(&bed);
    let rt = rt();

    // Paging through the SDK's paginator, 5 at a time.
    let pages: Vec<_> = rt.block_on(async {
        ssm.describe_instance_information()
            .max_results(5)
            .into_paginator()
            .send()
            .collect::<Vec<_>>()
            .await
    });
    assert_eq!(pages.len(), 2);
    let listed: Vec<_> = pages
        .into_iter()
        .flat_map(|p| {
            p.expect("a page")
                .instance_information_list
                .unwrap_or_default()
        })
        .collect();
    let listed_ids: Vec<&str> = listed.iter().filter_map(|i| i.instance_id()).collect();
    assert_eq!(
        listed_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(listed[0].ping_status(), Some(&PingStatus::Online));
    assert_eq!(listed[6].ping_status(), Some(&PingStatus::ConnectionLost));
    assert!(listed[0].last_ping_date_time().is_some());
    assert_eq!(listed[0].platform_type().map(|p| p.as_str()), Some("Linux"));

    // A filter by id; an unmanaged one is absent; a malformed one refused.
    let one = rt
        .block_on(
            ssm.describe_instance_information()
                .filters(
                    InstanceInformationStringFilter::builder()
                        .key("InstanceIds")
                        .values(&ids[2])
                        .values(&plain.id)
                        .build()
                        .unwrap(),
                )
                .send(),
        )
        .expect("filtered");
    assert_eq!(one.instance_information_list().len(), 1);
    let err = rt
        .block_on(
            ssm.describe_instance_information()
                .filters(
                    InstanceInformationStringFilter::builder()
                        .key("InstanceIds")
                        .values("web-1")
                        .build()
                        .unwrap(),
                )
                .send(),
        )
        .expect_err("malformed id")
        .into_service_error();
    assert!(err.is_invalid_instance_id(), "{err:?}");

    // StartSession and TerminateSession; TargetNotConnected and
    // InvalidDocument as modelled errors, with their messages.
    let out = rt
        .block_on(
            ssm.start_session()
                .target(&ids[0])
                .document_name("AWS-StartSSHSession")
                .parameters("portNumber", vec!["22".to_owned()])
                .send(),
        )
        .expect("StartSession");
    let id = out.session_id().expect("SessionId").to_owned();
    assert!(
        out.stream_url()
            .is_some_and(|u| u.starts_with("wss://127.0.0.1:"))
    );
    assert!(out.token_value().is_some());
    let err = rt
        .block_on(
            ssm.start_session()
                .target(&plain.id)
                .document_name("AWS-StartSSHSession")
                .send(),
        )
        .expect_err("not managed")
        .into_service_error();
    assert!(err.is_target_not_connected(), "{err:?}");
    assert_eq!(
        err.message(),
        Some(format!("{} is not connected.", plain.id).as_str())
    );
    let err = rt
        .block_on(
            ssm.start_session()
                .target(&ids[0])
                .document_name("AWS-Nope")
                .send(),
        )
        .expect_err("unknown document")
        .into_service_error();
    assert!(err.is_invalid_document(), "{err:?}");
    bed.fail_next("StartSession", "AccessDeniedException", 1);
    let err = rt
        .block_on(
            ssm.start_session()
                .target(&ids[0])
                .document_name("AWS-StartSSHSession")
                .send(),
        )
        .expect_err("injected")
        .into_service_error();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(
        err.message()
            .is_some_and(|m| m.contains("ssm:StartSession")),
        "{err:?}"
    );
    let done = rt
        .block_on(ssm.terminate_session().session_id(&id).send())
        .expect("TerminateSession");
    assert_eq!(done.session_id(), Some(id.as_str()));
    assert!(bed.ssm_session(&id).unwrap().terminate_api_called);
    assert!(
        bed.signature_failures().is_empty(),
        "{:?}",
        bed.signature_failures()
    );
}
