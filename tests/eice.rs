//! EC2 Instance Connect Endpoint tunnels, end to end: the real binary, the
//! stand-in's DescribeInstanceConnectEndpoints and TLS WebSocket endpoint
//! (which verifies every presigned URL independently), and a real sshd.

mod support;

use support::cmd::{run, server_address, stderr, stdout};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::eice::{ClosedBy, EndpointSpec, TunnelFault};
use support::{BedOptions, ClientKey, InstanceSpec, TestBed, sigv4};

/// eic-connect logging in as the bed's user, on ssh's default port 22 (what
/// endpoints reach; the stand-in maps it to the bed's sshd).
fn eic(bed: &TestBed) -> Command {
    let mut c = bed.command();
    c.args(["-l", &bed.os_user()]).stdin(Stdio::null());
    c
}

#[track_caller]
fn assert_clean(bed: &TestBed) {
    assert!(
        bed.signature_failures().is_empty(),
        "signature failures: {:?}",
        bed.signature_failures()
    );
    assert!(
        bed.unexpected_tunnel_rejections().is_empty(),
        "refused tunnels: {:?}",
        bed.unexpected_tunnel_rejections()
    );
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(child: &mut Child) -> (String, String) {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (out, err)
}

/// Runs eic-connect with its standard input open (and never written) until
/// it exits by itself: only the endpoint can end such a tunnel.
fn run_holding_stdin(bed: &TestBed, args: &[&str]) -> Output {
    let mut c = bed.command();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start eic-connect");
    let stdin = child.stdin.take();
    let status = wait_with_timeout(&mut child, Duration::from_secs(15));
    drop(stdin);
    let (out, err) = read_all(&mut child);
    Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

// ------------------------------------------------------------ signing

/// The protocols.md test vector, checked by the stand-in's own verifier
/// (written without aws-sigv4): the vector and the verifier agree.
#[test]
fn the_published_vector_passes_the_independent_verifier() {
    let url_query = "instanceConnectEndpointId=eice-123&remotePort=22&privateIpAddress=10.0.0.0&maxTunnelDuration=1\
        &X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=access_key%2F20200101%2Fus-west-2%2Fec2-instance-connect%2Faws4_request\
        &X-Amz-Date=20200101T010101Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host\
        &X-Amz-Signature=3a56740422a5b9aebd22d860b7a30c729e459a6f71a83bc0de3a2b44b7353f28";
    let headers = vec![(
        "host".to_owned(),
        "eice-123.ec2-instance-connect-endpoint.us-west-2.amazonaws.com".to_owned(),
    )];
    let signed_at = UNIX_EPOCH + Duration::from_secs(1_577_840_461);
    let check = |query: &str, now: SystemTime| {
        sigv4::verify_presigned(
            &sigv4::SignedRequest {
                method: "GET",
                path: "/openTunnel",
                query,
                headers: &headers,
                body: &[],
            },
            &sigv4::Expected {
                access_key_id: "access_key",
                secret_access_key: "secret_key",
                region: "us-west-2",
                service: "ec2-instance-connect",
                session_token: None,
                now,
                max_skew: Duration::from_secs(300),
            },
            60,
        )
    };
    check(url_query, signed_at + Duration::from_secs(30)).expect("the vector verifies");
    let expired = check(url_query, signed_at + Duration::from_secs(61)).unwrap_err();
    assert!(matches!(expired, sigv4::AuthError::Expired(_)), "{expired}");
    let tampered = url_query.replace("remotePort=22", "remotePort=3389");
    assert!(matches!(
        check(&tampered, signed_at).unwrap_err(),
        sigv4::AuthError::Mismatch(_)
    ));
    let long = url_query.replace("X-Amz-Expires=60", "X-Amz-Expires=600");
    assert!(check(&long, signed_at).is_err());
}

// ------------------------------------------------------------- connect

#[test]
fn auto_tunnels_to_a_private_only_instance() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    let mut c = eic(&bed);
    c.args([
        "db-1",
        "--",
        "sh",
        "-c",
        "echo $SSH_CONNECTION; echo to-stderr >&2; exit 7",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(server_address(&out), db.private_ip);
    assert!(stderr(&out).contains("to-stderr"));
    assert!(!stderr(&out).contains("eic-connect:"), "{}", stderr(&out));
    assert_clean(&bed);

    let lookups = bed.requests_for("DescribeInstanceConnectEndpoints");
    assert_eq!(lookups.len(), 1);
    let filters = lookups[0].filters();
    assert!(
        filters.contains(&("vpc-id".to_owned(), vec![bed.vpc_id().to_owned()])),
        "{filters:?}"
    );
    assert!(
        filters
            .iter()
            .any(|(n, v)| n == "state" && v.contains(&"create-complete".to_owned()))
    );

    let tunnels = bed.wait_for_tunnels_closed(1, Duration::from_secs(10));
    assert_eq!(tunnels.len(), 1);
    let t = &tunnels[0];
    assert_eq!(t.endpoint_id, endpoint.id);
    assert_eq!(t.host, endpoint.dns_name);
    assert_eq!(t.private_ip, db.private_ip);
    assert_eq!(t.remote_port, 22);
    assert_eq!(t.max_duration, None);
    assert!(t.bytes_up > 1000 && t.bytes_down > 1000, "{t:?}");
    assert!(t.largest_frame <= 65_000, "{t:?}");
    assert!(t.violations.is_empty(), "{t:?}");
    // The URL's parameters come in the documented order.
    assert!(
        t.query.starts_with(&format!(
            "instanceConnectEndpointId={}&remotePort=22&privateIpAddress={}&X-Amz-Algorithm=",
            endpoint.id, db.private_ip
        )),
        "{}",
        t.query
    );
    assert!(t.query.contains("&X-Amz-Expires=60&"), "{}", t.query);
}

#[test]
fn eice_mode_tunnels_even_to_a_public_instance_and_direct_mode_never_does() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());

    let mut c = eic(&bed);
    c.args(["--connect", "eice", "web-1", "echo $SSH_CONNECTION"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(
        server_address(&out),
        web.private_ip,
        "through the endpoint to the private address"
    );
    assert_eq!(
        bed.wait_for_tunnels_closed(1, Duration::from_secs(10))
            .len(),
        1
    );

    // Direct, to the private-only instance: no lookup, no tunnel.
    let mut c = eic(&bed);
    c.args([
        "--connect",
        "direct",
        "-p",
        &bed.sshd_port().to_string(),
        "db-1",
        "echo $SSH_CONNECTION",
    ]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(server_address(&out), db.private_ip);
    // So is auto with an explicit --public/--private, or a port no endpoint reaches.
    let mut c = eic(&bed);
    c.args([
        "--private",
        "-p",
        &bed.sshd_port().to_string(),
        "db-1",
        "true",
    ]);
    assert!(run(c).status.success());
    let mut c = eic(&bed);
    c.args(["-p", &bed.sshd_port().to_string(), "db-1", "true"]);
    assert!(run(c).status.success());
    assert_eq!(
        bed.requests_for("DescribeInstanceConnectEndpoints").len(),
        1
    );
    assert_eq!(bed.tunnels().len(), 1);
    assert_clean(&bed);
}

#[test]
fn prefers_the_endpoint_in_the_instance_subnet_across_pages() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default().subnet("subnet-0aaaaaaaaaaaaaaaa"));
    bed.add_endpoint(EndpointSpec::default().vpc("vpc-0bbbbbbbbbbbbbbbb"));
    bed.add_endpoint(EndpointSpec::default().state("create-in-progress"));
    let mine = bed.add_endpoint(EndpointSpec::default());
    bed.set_endpoint_page_size(1);
    let mut c = eic(&bed);
    c.args(["db-1", "true"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        bed.requests_for("DescribeInstanceConnectEndpoints").len() >= 2,
        "paginated"
    );
    let tunnels = bed.wait_for_tunnels_closed(1, Duration::from_secs(10));
    assert_eq!(tunnels[0].endpoint_id, mine.id);
    assert_clean(&bed);
}

#[test]
fn session_tokens_are_signed_and_fips_names_served() {
    let bed = TestBed::start_with(BedOptions {
        session_token: Some("FwoGZXIvYXdzEJr//////////wEaDM+token/with+chars==".into()),
        ..BedOptions::default()
    });
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    let mut c = eic(&bed);
    c.args(["db-1", "true"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let t = &bed.wait_for_tunnels_closed(1, Duration::from_secs(10))[0];
    assert_eq!(t.host, endpoint.dns_name);
    assert!(t.query.contains("&X-Amz-Security-Token="), "{}", t.query);

    // The SDK refuses FIPS with a custom API endpoint, so the FIPS name is
    // exercised through the lookup-free form ssh's ProxyCommand uses.
    let mut c = bed.command();
    c.args([
        "tunnel",
        "--eice-id",
        &endpoint.id,
        "--eice-dns-name",
        &endpoint.fips_dns_name,
        "--private-ip",
        "127.0.1.1",
        "db-1",
    ])
    .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let t = &bed.wait_for_tunnels_closed(2, Duration::from_secs(10))[1];
    assert_eq!(t.host, endpoint.fips_dns_name);
    assert!(
        bed.requests_for("DescribeInstances").len() == 1,
        "no lookup"
    );
    assert_clean(&bed);
}

#[test]
fn dry_run_shows_the_endpoint_lookup_and_the_proxy_command() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args([
        "--dry-run",
        "--connect",
        "eice",
        "--max-tunnel-duration",
        "600",
        "i-0123456789abcdef0",
        "uptime",
    ]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("DescribeInstanceConnectEndpoints Filter state=create-complete,"),
        "{text}"
    );
    assert!(text.contains("vpc-id=<instance VpcId>"), "{text}");
    assert!(text.contains("ProxyCommand="), "{text}");
    assert!(text.contains(" tunnel --region us-east-1 "), "{text}");
    assert!(
        text.contains("--max-tunnel-duration 600 --remote-port %p -- i-0123456789abcdef0"),
        "{text}"
    );
    assert!(bed.requests().is_empty());

    let mut c = bed.command();
    c.args(["--dry-run", "--connect", "direct", "web-1"]);
    assert!(!stdout(&run(c)).contains("DescribeInstanceConnectEndpoints"));
}

// -------------------------------------------------------------- tunnel

/// Starts `eic-connect tunnel --local-port 0 …` and returns it with the port
/// it printed.
fn start_listener(bed: &TestBed, args: &[&str]) -> (Child, u16) {
    support::load::start_tunnel_listener(bed, args)
}

fn stop(mut child: Child) -> (std::process::ExitStatus, String) {
    // SIGTERM: the listener stops and exits 0.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    let (_, err) = read_all(&mut child);
    (status, err)
}

fn plain_ssh(bed: &TestBed, key: &ClientKey, port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-i"])
        .arg(&key.private_key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{}@127.0.0.1", bed.os_user()))
        .stdin(Stdio::null());
    c
}

#[test]
fn local_port_mode_carries_concurrent_ssh_sessions() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let key = bed.generate_key("plain");
    bed.push_key_directly(&db.id, &bed.os_user(), &key.public_key);

    let (child, port) = start_listener(&bed, &["db-1"]);
    // Each session marks that it runs, then waits (up to a minute) for the
    // other's mark: both are open at once whatever the machine's speed.
    let mark = |i: usize| {
        bed.dir()
            .join(format!("session-{i}.up"))
            .display()
            .to_string()
    };
    let sessions: Vec<_> = (0..2)
        .map(|i| {
            let mut c = plain_ssh(&bed, &key, port);
            c.arg(format!(
                "touch {mine}; n=0; while [ ! -e {other} ] && [ $n -lt 600 ]; do n=$((n+1)); sleep 0.1; done; \
                 echo session-{i} $SSH_CONNECTION",
                mine = mark(i),
                other = mark(1 - i),
            ));
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().expect("ssh")
        })
        .collect();
    for (i, s) in sessions.into_iter().enumerate() {
        let out = s.wait_with_output().expect("ssh output");
        assert!(out.status.success(), "session {i}: {}", stderr(&out));
        let text = stdout(&out);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            words.first().copied(),
            Some(format!("session-{i}").as_str()),
            "{text}"
        );
        assert_eq!(
            words.get(3).copied(),
            Some(db.private_ip.as_str()),
            "{text}"
        );
    }
    assert_eq!(bed.max_open_tunnels(), 2, "both sessions at once");
    let (status, err) = stop(child);
    assert!(status.success(), "tunnel exit: {status:?}, stderr: {err}");
    let tunnels = bed.wait_for_tunnels_closed(2, Duration::from_secs(10));
    assert!(
        tunnels
            .iter()
            .all(|t| t.private_ip == db.private_ip && t.remote_port == 22)
    );
    assert_clean(&bed);
}

#[test]
fn stdio_mode_is_a_proxycommand_for_plain_ssh() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let key = bed.generate_key("plain");
    bed.push_key_directly(&db.id, &bed.os_user(), &key.public_key);
    let bin = support::eic_connect_bin();
    let mut c = Command::new("ssh");
    bed.apply_env(&mut c);
    c.args(["-F", "/dev/null", "-i"])
        .arg(&key.private_key)
        .arg("-o")
        .arg(format!(
            "ProxyCommand={} tunnel --remote-port %p %h",
            bin.display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
        ])
        .arg(format!("{}@{}", bed.os_user(), db.id))
        .arg("echo via-proxycommand $SSH_CONNECTION")
        .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("via-proxycommand "),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        stdout(&out).split_whitespace().nth(3),
        Some(db.private_ip.as_str())
    );
    bed.wait_for_tunnels_closed(1, Duration::from_secs(10));
    assert_clean(&bed);
}

#[test]
fn local_eof_closes_the_tunnel_cleanly() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let mut c = bed.command();
    c.args(["tunnel", "db-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start");
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let (_, err) = read_all(&mut child);
    assert!(status.success(), "{status:?}: {err}");
    let t = &bed.wait_for_tunnels_closed(1, Duration::from_secs(10))[0];
    assert!(t.client_closed_cleanly(), "{t:?}");
    assert_clean(&bed);
}

#[test]
fn raw_bytes_round_trip_in_frames_of_at_most_65000_bytes() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("win-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    // Port 3389 of the stand-in echoes.
    let mut c = bed.command();
    c.args(["tunnel", "--remote-port", "3389", "win-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start");
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = {
        let payload = payload.clone();
        std::thread::spawn(move || {
            stdin.write_all(&payload).expect("write");
            // Keep stdin open until the echo is back: EOF would close the tunnel.
            std::thread::sleep(Duration::from_millis(100));
            stdin
        })
    };
    let mut echoed = vec![0u8; payload.len()];
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut echoed)
        .expect("read the echo");
    assert!(echoed == payload, "the echo differs");
    drop(writer.join().expect("writer"));
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert!(status.success());
    let t = &bed.wait_for_tunnels_closed(1, Duration::from_secs(10))[0];
    assert_eq!(t.bytes_up, payload.len() as u64);
    assert!(t.largest_frame <= 65_000 && t.frames_up >= 16, "{t:?}");
    assert!(t.client_closed_cleanly(), "{t:?}");
    assert_clean(&bed);
}

#[test]
fn listener_queues_connections_beyond_twenty() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("win-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let (child, port) = start_listener(&bed, &["--remote-port", "3389", "win-1"]);
    let echo = |s: &mut TcpStream, msg: &[u8]| {
        s.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read echo");
        assert_eq!(back, msg);
    };
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            echo(&mut s, format!("hello {i}").as_bytes());
            s
        })
        .collect();
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).expect("connect 21st");
    waiting.write_all(b"queued").expect("write");
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 6];
    assert!(
        waiting.read_exact(&mut buf).is_err(),
        "the 21st waits for a free slot"
    );
    assert_eq!(bed.tunnels().len(), 20);
    drop(conns.remove(0));
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    waiting
        .read_exact(&mut buf)
        .expect("served once a slot is free");
    assert_eq!(&buf, b"queued");
    assert_eq!(bed.max_open_tunnels(), 20);
    drop(conns);
    drop(waiting);
    let (status, err) = stop(child);
    assert!(status.success(), "{err}");
    assert!(err.contains("20 tunnels are open"), "{err}");
    assert_clean(&bed);
}

/// A hundred connections at once, each sending its own random bytes to the
/// echo port and comparing what comes back, byte for byte: twenty are
/// tunnelled at a time (the service's limit per endpoint), the rest wait
/// their turn, and every one of them gets exactly its own bytes back.
#[test]
fn a_hundred_concurrent_connections_each_get_their_own_bytes_back() {
    const CONNECTIONS: usize = 100;
    const BYTES: usize = 256 * 1024;
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("win-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let (child, port) = start_listener(&bed, &["--remote-port", "3389", "win-1"]);
    let load = support::load::echo_load(port, CONNECTIONS, BYTES, Duration::from_secs(120));
    assert!(load.failures.is_empty(), "{:#?}", load.failures);
    assert_eq!(load.matched, CONNECTIONS);
    let tunnels = bed.wait_for_tunnels_closed(CONNECTIONS, Duration::from_secs(30));
    assert_eq!(tunnels.len(), CONNECTIONS, "one tunnel per connection");
    assert!(
        tunnels
            .iter()
            .all(|t| t.bytes_up == BYTES as u64 && t.remote_port == 3389),
        "{tunnels:#?}"
    );
    let most = bed.max_open_tunnels();
    assert!(
        most <= 20,
        "{most} tunnels were open at once; the service allows 20"
    );
    let (status, err, _) = support::load::stop_tunnel_listener(child);
    assert!(status.success(), "{err}");
    assert!(!err.contains("error"), "{err}");
    eprintln!(
        "{CONNECTIONS} connections x {BYTES} bytes: {:.2} s, {:.1} MB/s echoed, at most {most} tunnels open",
        load.elapsed.as_secs_f64(),
        load.megabytes_per_second()
    );
    assert_clean(&bed);
}

#[test]
fn through_an_https_proxy() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let endpoint = bed.add_endpoint(EndpointSpec::default());
    // A one-shot CONNECT proxy that sends every tunnel to the stand-in.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let proxy_port = proxy.local_addr().unwrap().port();
    let upstream = bed
        .eice_endpoint()
        .trim_start_matches("https://")
        .to_owned();
    let seen = std::thread::spawn(move || {
        let (mut client, _) = proxy.accept().expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            client.read_exact(&mut byte).expect("read head");
            head.push(byte[0]);
        }
        let mut server = TcpStream::connect(&upstream).expect("connect upstream");
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let t = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut s2);
            let _ = s2.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut server, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let _ = t.join();
        String::from_utf8_lossy(&head).into_owned()
    });
    let mut c = bed.command();
    c.env_remove("EIC_CONNECT_EICE_ENDPOINT")
        .env(
            "HTTPS_PROXY",
            format!("http://user:secret@127.0.0.1:{proxy_port}"),
        )
        .env("NO_PROXY", "localhost,127.0.0.1")
        .args(["tunnel", "db-1"])
        .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let head = seen.join().expect("proxy");
    assert!(
        head.starts_with(&format!("CONNECT {}:443 HTTP/1.1\r\n", endpoint.dns_name)),
        "{head}"
    );
    assert!(
        head.contains("Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n"),
        "{head}"
    );
    assert_eq!(
        bed.wait_for_tunnels_closed(1, Duration::from_secs(10))
            .len(),
        1
    );
    assert_clean(&bed);
}

// -------------------------------------------------------------- errors

#[test]
fn no_endpoint_in_the_vpc_is_a_clear_error() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default().vpc("vpc-0cccccccccccccccc"));
    for args in [
        &["--connect", "eice", "db-1", "true"][..],
        &["tunnel", "db-1"],
    ] {
        let mut c = if args[0] == "tunnel" {
            bed.command()
        } else {
            eic(&bed)
        };
        c.args(args).stdin(Stdio::null());
        let out = run(c);
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "no EC2 Instance Connect Endpoint in {}",
                bed.vpc_id()
            )),
            "{err}"
        );
        assert!(err.contains("hint: create one"), "{err}");
        assert!(
            err.contains("aws ec2 create-instance-connect-endpoint --subnet-id "),
            "{err}"
        );
        assert!(err.contains("--connect direct"), "{err}");
    }
    assert!(bed.tunnels().is_empty());
    assert!(bed.pushes().len() <= 1, "tunnel pushes nothing");
    assert_clean(&bed);
}

#[test]
fn unknown_or_malformed_endpoint_ids_are_clear_errors() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let mut c = bed.command();
    c.args(["--eice-id", "eice-0123456789abcdef0", "tunnel", "db-1"])
        .stdin(Stdio::null());
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(
        err.contains("no such EC2 Instance Connect Endpoint"),
        "{err}"
    );
    assert!(err.contains("eice-0123456789abcdef0"), "{err}");
    assert!(err.contains("hint: check --eice-id"), "{err}");

    let mut c = eic(&bed);
    c.args(["--eice-id", "bogus", "--connect", "eice", "db-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a valid EC2 Instance Connect Endpoint id"));

    let mut c = bed.command();
    c.args(["tunnel", "--remote-port", "8080", "db-1"])
        .stdin(Stdio::null());
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("only reach ports 22 and 3389, not 8080"));
    assert!(bed.tunnels().is_empty());
    assert_clean(&bed);
}

#[test]
fn a_refused_handshake_shows_the_service_message() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    bed.fail_next_tunnel(
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: ec2-instance-connect:OpenTunnel\x1b[2J",
    );
    let mut c = bed.command();
    c.args(["tunnel", "db-1"]).stdin(Stdio::null());
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(
        err.contains("refused the tunnel (HTTP 403, AccessDeniedException)"),
        "{err}"
    );
    assert!(
        err.contains(
            "user/dev is not authorized to perform: ec2-instance-connect:OpenTunnel\\u{1b}[2J"
        ),
        "{err}"
    );
    assert!(!err.contains('\x1b'));
    assert!(
        err.contains("hint: your IAM identity needs ec2-instance-connect:OpenTunnel"),
        "{err}"
    );
    assert!(err.contains("security group"), "{err}");

    // Through connect, ssh shows the tunnel's error and fails.
    bed.fail_next_tunnel("ThrottlingException", "Rate exceeded");
    let mut c = eic(&bed);
    c.args(["db-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("Rate exceeded"), "{}", stderr(&out));
    assert!(bed.tunnels().is_empty());
    assert_clean(&bed);
}

#[test]
fn a_server_close_or_text_frame_is_reported() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());

    bed.fault_next_tunnel(TunnelFault::Close {
        code: 1011,
        reason: "Unable to reach 127.0.1.1:22: connection timed out".into(),
    });
    let out = run_holding_stdin(&bed, &["tunnel", "db-1"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("the endpoint closed the tunnel (code 1011): Unable to reach 127.0.1.1:22: connection timed out"),
        "{}",
        stderr(&out)
    );

    bed.fault_next_tunnel(TunnelFault::TextFrame);
    let out = run_holding_stdin(&bed, &["tunnel", "db-1"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("text frame"), "{}", stderr(&out));

    let tunnels = bed.wait_for_tunnels_closed(2, Duration::from_secs(10));
    assert!(
        tunnels[0].client_close_code.is_some(),
        "answered the close: {:?}",
        tunnels[0]
    );
    assert_eq!(tunnels[1].client_close_code, Some(1002), "protocol error");
    assert_clean(&bed);
}

#[test]
fn max_tunnel_duration_is_sent_and_enforced() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());

    // stdin stays open: only the endpoint can end this tunnel.
    let mut c = bed.command();
    c.args(["--max-tunnel-duration", "1", "tunnel", "db-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start");
    let stdin = child.stdin.take();
    let status = wait_with_timeout(&mut child, Duration::from_secs(15));
    drop(stdin);
    let (_, err) = read_all(&mut child);
    assert!(status.success(), "{status:?} {err}");
    assert!(
        err.contains("the tunnel reached its maximum duration of 1 s (--max-tunnel-duration)"),
        "{err}"
    );
    let t = &bed.wait_for_tunnels_closed(1, Duration::from_secs(10))[0];
    assert_eq!(t.max_duration, Some(1));
    assert!(t.query.contains("&maxTunnelDuration=1&"), "{}", t.query);
    assert_eq!(t.closed_by, ClosedBy::Server);

    // Through connect: the session is cut and the reason shown.
    let mut c = eic(&bed);
    c.args([
        "--connect",
        "eice",
        "--max-tunnel-duration",
        "1",
        "db-1",
        "sleep 5",
    ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("maximum duration of 1 s"),
        "{}",
        stderr(&out)
    );
    assert_clean(&bed);
}

#[test]
fn the_endpoint_lookup_overlaps_the_key_push() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    // The push is answered only after `delay`: had the lookup waited for
    // that answer, it would come at least `delay` later.
    let delay = Duration::from_secs(3);
    bed.set_delay("SendSSHPublicKey", delay);
    let mut c = eic(&bed);
    c.args(["db-1", "true"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let push = bed.requests_for("SendSSHPublicKey")[0].received;
    let lookup = bed.requests_for("DescribeInstanceConnectEndpoints")[0].received;
    let gap = lookup.duration_since(push).unwrap_or_else(|e| e.duration());
    assert!(gap < delay, "the lookup waited for the push: {gap:?} apart");
    assert_clean(&bed);
}

/// The endpoint lookup only improves `--connect auto`: when it fails with a
/// server error the connection goes direct, with a warning, instead of
/// aborting.
#[test]
fn a_failed_endpoint_lookup_in_auto_mode_falls_back_to_direct() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(support::eice::EndpointSpec::default());
    // Port 22 (so auto would tunnel); ssh is a no-op, and -v shows its
    // command line: where it would have gone.
    let started = |args: &[&str]| {
        let mut c = bed.command();
        c.env("EIC_CONNECT_SSH", support::cmd::which("true"))
            .args(["-v", "-l", &bed.os_user()])
            .args(args)
            .stdin(Stdio::null());
        run(c)
    };
    bed.fail_next("DescribeInstanceConnectEndpoints", "InternalError", 10);
    let out = started(&["db-1", "true"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning:"), "{err}");
    assert!(
        err.contains(&format!("connecting to {} directly", db.id)),
        "{err}"
    );
    let ssh_line = err
        .lines()
        .find(|l| l.contains("starting ssh"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(!ssh_line.contains("ProxyCommand"), "{ssh_line}");
    assert!(
        ssh_line.contains(&format!("-- {}", db.private_ip)),
        "{ssh_line}"
    );
    // Asked for explicitly, the endpoint is not optional: the error stands.
    bed.fail_next("DescribeInstanceConnectEndpoints", "InternalError", 10);
    let out = started(&["--connect", "eice", "db-1", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
}

// ---------------------------------------------------------------- IPv6

/// An IPv6-only instance (the bed's ::1, no IPv4 address at all).
fn ipv6_only(bed: &TestBed) -> support::Instance {
    assert!(bed.ipv6_available(), "the bed needs IPv6 loopback");
    bed.add_instance(
        InstanceSpec::named("v6-1")
            .public_ip(false)
            .ipv4(false)
            .ipv6(true),
    )
}

#[test]
fn an_ipv6_only_instance_is_reached_through_a_dual_stack_endpoint() {
    for kind in ["dualstack", "ipv6"] {
        let bed = TestBed::start();
        let v6 = ipv6_only(&bed);
        bed.add_endpoint(EndpointSpec::default().ip_address_type(kind));
        let mut c = eic(&bed);
        c.args(["--connect", "eice", "v6-1", "echo $SSH_CONNECTION"]);
        let out = run(c);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        assert_eq!(server_address(&out), "::1", "{kind}");
        let tunnels = bed.tunnels();
        assert_eq!(tunnels.len(), 1);
        // The tunnel's privateIpAddress is the instance's IPv6 address,
        // percent-encoded in the signed URL.
        assert_eq!(tunnels[0].private_ip, v6.ipv6.clone().unwrap(), "{kind}");
        assert!(
            tunnels[0].query.contains("privateIpAddress=%3A%3A1"),
            "{}",
            tunnels[0].query
        );
        assert_clean(&bed);
    }
}

#[test]
fn an_ipv4_only_endpoint_and_an_ipv6_only_instance_get_the_dual_stack_fix() {
    let bed = TestBed::start();
    ipv6_only(&bed);
    bed.add_endpoint(EndpointSpec::default());
    let mut c = eic(&bed);
    c.args(["--connect", "eice", "v6-1", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("reaches IPv4 addresses only"), "{err}");
    assert!(err.contains("--ip-address-type dualstack"), "{err}");
    assert!(bed.tunnels().is_empty());
    assert!(bed.sshd_log().matches("Accepted publickey").count() == 0);
}

#[test]
fn an_ipv6_only_instance_is_reached_directly() {
    let bed = TestBed::start();
    let v6 = ipv6_only(&bed);
    let mut c = eic(&bed);
    c.args([
        "-p",
        &bed.sshd_port().to_string(),
        "v6-1",
        "echo $SSH_CONNECTION",
    ]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server_address(&out), v6.ipv6.unwrap());
    assert!(bed.tunnels().is_empty());
}
