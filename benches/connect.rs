//! Connection latency against the local test bed (stand-in APIs + real sshd).
//!
//! `cargo bench --bench connect` (runs: `EIC_BENCH_RUNS`, default 30). Prints
//! medians for:
//! - start-up alone (`--dry-run`: no API call);
//! - invocation → ssh started, by instance id (lookup and push overlap) and by
//!   Name tag (lookup, then push), with a no-op program standing in for ssh;
//! - `eic-connect ID true` end to end against the loopback sshd, beside plain
//!   `ssh -i key true` to the same sshd with a key pushed out of band;
//! - one API round trip to the stand-in, for scale;
//! - bulk copy throughput through ssh, direct and through the EC2 Instance
//!   Connect Endpoint tunnel stand-in (`EIC_BENCH_MIB`, default 64).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{InstanceSpec, TestBed};

fn main() {
    let runs: usize = std::env::var("EIC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let port = bed.sshd_port().to_string();
    let user = bed.os_user();
    let no_op = support::cmd::which("true");

    let eic = |args: &[&str], fake_ssh: bool| {
        let mut c = bed.command();
        if fake_ssh {
            c.env("EIC_CONNECT_SSH", &no_op);
        }
        c.args(["-p", &port, "-l", &user])
            .args(args)
            .stdin(Stdio::null());
        c
    };

    let mut rows: Vec<(&str, Stats)> = Vec::new();
    rows.push((
        "start-up only (--dry-run, no API call)",
        measure(runs, || eic(&["--dry-run", &web.id], false)),
    ));
    rows.push((
        "invocation -> ssh started, by instance id",
        measure(runs, || eic(&[&web.id, "true"], true)),
    ));
    rows.push((
        "invocation -> ssh started, by Name tag",
        measure(runs, || eic(&["web-1", "true"], true)),
    ));
    let e2e = measure(runs, || eic(&[&web.id, "true"], false));
    rows.push(("eic-connect ID true, end to end", e2e));

    let key = bed.generate_key("bench");
    let public_ip = web.public_ip.clone().expect("public ip");
    let plain = measure(runs, || {
        // Out of band, like a key that is already authorised.
        bed.push_key_directly(&web.id, &user, &key.public_key);
        let mut c = bed.ssh_command(&key.private_key, &user, &public_ip);
        c.arg("true");
        c
    });
    rows.push(("plain ssh -i KEY true, same sshd", plain));
    rows.push((
        "one DescribeInstances round trip (raw HTTP)",
        round_trips(&bed, runs),
    ));

    println!("\neic-connect benchmark: {runs} runs each, loopback, medians (p90, min)\n");
    for (label, s) in &rows {
        println!(
            "{label:<46} {:>7.1} ms  (p90 {:>6.1}, min {:>6.1})",
            ms(s.median),
            ms(s.p90),
            ms(s.min)
        );
    }
    let overhead = ms(e2e.median) - ms(plain.median);
    println!("\neic-connect over plain ssh: {overhead:+.1} ms (median difference)");

    tunnel_throughput(&bed, &web.id);
}

/// Bulk copy through ssh, directly and through the EC2 Instance Connect
/// Endpoint stand-in (TLS WebSocket, binary frames): `EIC_BENCH_MIB`
/// (default 64) MiB into `cat > /dev/null`, best of three, less the median
/// time of the same connection running `true`.
fn tunnel_throughput(bed: &TestBed, id: &str) {
    use std::io::Write;
    let mib: usize = std::env::var("EIC_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let path = bed.dir().join("bench-payload");
    {
        let mut f = std::fs::File::create(&path).expect("create payload");
        let chunk: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..mib {
            f.write_all(&chunk).expect("write payload");
        }
    }
    bed.add_endpoint(support::eice::EndpointSpec::default());
    let port = bed.sshd_port().to_string();
    let user = bed.os_user();
    let make = |tunnel: bool, copy: bool| {
        let mut c = bed.command();
        if tunnel {
            // Port 22 is what endpoints reach (the stand-in maps it to sshd).
            c.args(["--connect", "eice", "-l", &user]);
        } else {
            c.args(["--connect", "direct", "-p", &port, "-l", &user]);
        }
        c.arg(id);
        if copy {
            c.arg("cat > /dev/null");
            c.stdin(std::fs::File::open(&path).expect("open payload"));
        } else {
            c.arg("true").stdin(Stdio::null());
        }
        c
    };
    let best = |tunnel: bool| {
        let setup = measure(3, || make(tunnel, false)).median;
        let copy = measure(3, || make(tunnel, true)).min;
        let secs = copy.saturating_sub(setup).as_secs_f64().max(1e-6);
        ((mib * 1024 * 1024) as f64 / 1e6 / secs, copy, setup)
    };
    let (direct, d_copy, d_setup) = best(false);
    let (tunnel, t_copy, t_setup) = best(true);
    println!(
        "\nbulk copy, {mib} MiB through ssh into cat > /dev/null (best of 3, less connection set-up)\n"
    );
    println!(
        "{:<46} {direct:>7.1} MB/s  (copy {:.2} s, set-up {:.0} ms)",
        "direct to sshd",
        d_copy.as_secs_f64(),
        ms(d_setup)
    );
    println!(
        "{:<46} {tunnel:>7.1} MB/s  (copy {:.2} s, set-up {:.0} ms)",
        "through the EICE tunnel (stand-in)",
        t_copy.as_secs_f64(),
        ms(t_setup)
    );
    println!("tunnel / direct: {:.2}", tunnel / direct);
    let _ = std::fs::remove_file(&path);
}

#[derive(Clone, Copy)]
struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p90: at(0.9),
        min: samples[0],
    }
}

/// Times `make()`'s command `runs` times after two warm-up runs; every run
/// must succeed.
fn measure(runs: usize, mut make: impl FnMut() -> Command) -> Stats {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + 2 {
        let mut c = make();
        let t = Instant::now();
        let out = c.output().expect("run benchmark command");
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "benchmark command failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i >= 2 {
            samples.push(took);
        }
    }
    stats(samples)
}

/// A bare HTTP POST to the stand-in and its full response, for the cost of
/// one API round trip on this machine (the stand-in answers an unsigned
/// request with an error, which costs it the same work).
fn round_trips(bed: &TestBed, runs: usize) -> Stats {
    use std::io::{Read, Write};
    let addr = bed.endpoint().trim_start_matches("http://").to_owned();
    let body = "Action=DescribeInstances&Version=2016-11-15";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to stand-in");
        s.write_all(request.as_bytes()).expect("send");
        let mut response = Vec::new();
        s.read_to_end(&mut response).expect("read");
        samples.push(t.elapsed());
    }
    stats(samples)
}
