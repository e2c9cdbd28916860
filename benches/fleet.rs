//! Fleet timings against the local test bed: 100 instances, each a real
//! sshd login on its own loopback address.
//!
//! `cargo bench --bench fleet` (runs per row: `EIC_BENCH_RUNS`, default 3;
//! instances: `EIC_BENCH_INSTANCES`, default 100). Prints medians for:
//! - `list` of every instance (one DescribeInstances, one DescribeImages);
//! - `run` up to "every ssh started" (a no-op program stands in for ssh):
//!   the lookup, the AMI lookup, 100 keys generated and pushed;
//! - `run -- true` end to end at --parallel 10 and 50, beside plain
//!   `ssh -i KEY true` to the same 100 addresses with the same parallelism
//!   (keys authorised out of band): the difference is eic-connect's;
//! - the same `run` with the stand-in throttling SendSSHPublicKey to 25
//!   calls a second (burst 10), with the throttled answers counted.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::load::env_or;
use support::{BedOptions, InstanceSpec, TestBed};

fn main() {
    let runs = env_or("EIC_BENCH_RUNS", 3);
    let count = env_or("EIC_BENCH_INSTANCES", 100).clamp(1, usize::from(support::sshd::MAX_SLOTS));
    let bed = TestBed::start_with(BedOptions {
        slots: count as u16,
        ..BedOptions::default()
    });
    let instances: Vec<_> = (0..count)
        .map(|n| {
            bed.add_instance(InstanceSpec::named(&format!("node-{n:03}")).tag("Fleet", "bench"))
        })
        .collect();
    let port = bed.sshd_port().to_string();
    let user = bed.os_user();
    let no_op = support::cmd::which("true");
    let run = |parallel: usize, fake_ssh: bool| {
        let mut c = bed.command();
        if fake_ssh {
            c.env("EIC_CONNECT_SSH", &no_op);
        }
        c.args(["run", "-f", "tag:Fleet=bench", "-p", &port, "-l", &user])
            .args(["--parallel", &parallel.to_string(), "--", "true"])
            .stdin(Stdio::null());
        c
    };

    let mut rows: Vec<(String, Duration)> = Vec::new();
    let list = median(runs.max(5), || {
        let mut c = bed.command();
        c.args(["list", "tag:Fleet=bench"]).stdin(Stdio::null());
        c
    });
    rows.push((format!("list {count} instances"), list));
    rows.push((
        format!("run on {count}: every ssh started (no-op ssh), --parallel 50"),
        median(runs, || run(50, true)),
    ));
    for parallel in [10, 50] {
        rows.push((
            format!("run -- true on {count}, --parallel {parallel}"),
            median(runs, || run(parallel, false)),
        ));
        let key = bed.generate_key(&format!("bench-{parallel}"));
        let plain = median_of(runs, || plain_ssh_fleet(&bed, &instances, &key, parallel));
        rows.push((
            format!("plain ssh -i KEY true to {count}, {parallel} at a time"),
            plain,
        ));
    }

    bed.set_rate_limit("SendSSHPublicKey", 25.0, 10);
    bed.clear_records();
    let throttled_run = median(runs, || run(50, false));
    let throttled = bed.throttled("SendSSHPublicKey") / runs.max(1);
    rows.push((
        format!("run -- true on {count}, --parallel 50, pushes limited to 25/s"),
        throttled_run,
    ));

    println!(
        "\neic-connect fleet benchmark: {count} instances, {runs} runs per row, loopback, medians\n"
    );
    for (label, d) in &rows {
        println!("{label:<64} {:>8.2} s", d.as_secs_f64());
    }
    println!("\nthrottled SendSSHPublicKey answers per throttled run: {throttled}");
}

/// Median wall time of `make()`'s command; every run must succeed.
fn median(runs: usize, mut make: impl FnMut() -> Command) -> Duration {
    median_of(runs, || {
        let t = Instant::now();
        let out = make().output().expect("run benchmark command");
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "benchmark command failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    })
}

fn median_of(runs: usize, mut once: impl FnMut() -> Duration) -> Duration {
    let mut samples: Vec<Duration> = (0..runs.max(1)).map(|_| once()).collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Plain OpenSSH to every instance, `parallel` at a time, each login with a
/// key authorised just before it (as eic-connect's would be).
fn plain_ssh_fleet(
    bed: &TestBed,
    instances: &[support::Instance],
    key: &support::ClientKey,
    parallel: usize,
) -> Duration {
    let user = bed.os_user();
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(inst) = instances.get(n) else { break };
                    bed.push_key_directly(&inst.id, &user, &key.public_key);
                    let ip = inst.public_ip.as_deref().expect("public ip");
                    let mut c = bed.ssh_command(&key.private_key, &user, ip);
                    let out = c.arg("true").output().expect("run ssh");
                    assert!(
                        out.status.success(),
                        "plain ssh failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            });
        }
    });
    started.elapsed()
}
