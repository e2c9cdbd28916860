//! Connection latency against the local test bed (stand-in APIs + real sshd).
//!
//! `cargo bench --bench connect` (runs: `EIC_BENCH_RUNS`, default 30). Prints
//! medians for:
//! - start-up alone (`--dry-run`: no API call);
//! - invocation → ssh started, by instance id (lookup and push overlap) and by
//!   Name tag (lookup, then push), with a no-op program standing in for ssh;
//! - `eic-connect ID true` end to end against the loopback sshd, beside plain
//!   `ssh -i key true` to the same sshd with a key pushed out of band;
//! - one API round trip to the stand-in, for scale.

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
    let no_op = which("true");

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

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
