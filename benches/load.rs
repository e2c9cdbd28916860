//! Load against the local test bed: `run -- true` on hundreds of instances
//! through a throttled API, with some instances failing on purpose, and the
//! tunnel listener under a hundred concurrent connections.
//!
//! `cargo bench --bench load` runs both; the environment chooses:
//! - `EIC_LOAD_INSTANCES` — fleet sizes, one run each (default `100,500`);
//! - `EIC_LOAD_PARALLEL` — `run --parallel` (default 50);
//! - `EIC_LOAD_CONNECTIONS`, `EIC_LOAD_BYTES` — tunnel connections at once
//!   and the bytes each sends and reads back (default 100 and 1 MiB);
//! - `EIC_LOAD_ONLY=fleet` or `=tunnel` — one half.
//!
//! Fleet: every instance is a real sshd login on its own loopback address.
//! The stand-in throttles SendSSHPublicKey to 25 calls a second (burst 10)
//! and DescribeInstances to 5 a second (burst 1) with pages of 50, and four
//! instances fail, each in its own way: one is stopped, one refuses the push
//! (`AuthException` for that instance only), one takes the push but its
//! sshd accepts no pushed key, one has a public address where nothing
//! listens. The run uses `--json`; every instance must appear exactly once,
//! the rest as succeeded, each of the four with its own reason, or the
//! benchmark fails. Peak memory is the `VmHWM` of the eic-connect process
//! (polled from /proc every 10 ms) and `ru_maxrss` from `wait4`, which also
//! covers the ssh processes it reaped.
//!
//! Tunnel: `eic-connect tunnel --local-port 0 --remote-port 3389` to a
//! private instance through the endpoint stand-in (whose port 3389 echoes);
//! every connection sends its own random bytes and compares the echo byte
//! for byte. The listener tunnels 20 at a time (the service's limit per
//! endpoint); the others wait their turn.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::eice::EndpointSpec;
use support::load::{echo_load, env_or, run_measured, start_tunnel_listener, stop_tunnel_listener};
use support::{BedOptions, InstanceSpec, TestBed};

const PUSH_RATE: f64 = 25.0;
const PUSH_BURST: u32 = 10;
const DESCRIBE_RATE: f64 = 5.0;
const DESCRIBE_BURST: u32 = 1;
const PAGE_SIZE: usize = 50;

fn main() {
    let only = std::env::var("EIC_LOAD_ONLY").unwrap_or_default();
    let sizes: Vec<u16> = std::env::var("EIC_LOAD_INSTANCES")
        .unwrap_or_else(|_| "100,500".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("EIC_LOAD_INSTANCES: {s:?} is not a number"))
        })
        .collect();
    let parallel = env_or("EIC_LOAD_PARALLEL", 50);
    let mut problems = Vec::new();
    let mut fleet_rows = Vec::new();
    if only != "tunnel" {
        for &n in &sizes {
            let (row, mut bad) = fleet(n, parallel);
            problems.append(&mut bad);
            fleet_rows.push(row);
        }
    }
    let tunnel_row = (only != "fleet").then(|| {
        let (row, mut bad) = tunnel(
            env_or("EIC_LOAD_CONNECTIONS", 100),
            env_or("EIC_LOAD_BYTES", 1 << 20),
        );
        problems.append(&mut bad);
        row
    });

    let build = if cfg!(debug_assertions) {
        "dev build"
    } else {
        "release build"
    };
    println!("\neic-connect load benchmark (loopback, {build})\n");
    if !fleet_rows.is_empty() {
        println!(
            "run -- true, --parallel {parallel}; SendSSHPublicKey {PUSH_RATE}/s burst {PUSH_BURST}, \
             DescribeInstances {DESCRIBE_RATE}/s burst {DESCRIBE_BURST}, pages of {PAGE_SIZE}"
        );
        println!(
            "{:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>12} {:>9}  outcomes",
            "instances",
            "bed up s",
            "run s",
            "throttled",
            "(push)",
            "(describe)",
            "peak RSS MiB",
            "+ssh MiB"
        );
        for r in &fleet_rows {
            println!(
                "{:>9} {:>9.1} {:>9.2} {:>10} {:>10} {:>10} {:>12.1} {:>9.1}  {}",
                r.instances,
                r.bed_start.as_secs_f64(),
                r.elapsed.as_secs_f64(),
                r.throttled_push + r.throttled_describe,
                r.throttled_push,
                r.throttled_describe,
                r.peak_rss_kib as f64 / 1024.0,
                r.maxrss_kib as f64 / 1024.0,
                r.outcomes
            );
        }
        for r in &fleet_rows {
            println!(
                "\n{} instances: the four reasons, as run --json gave them",
                r.instances
            );
            for line in &r.reasons {
                println!("  {line}");
            }
            println!(
                "  eic-connect CPU time (with its ssh children): {:.1} s",
                r.cpu.as_secs_f64()
            );
        }
    }
    if let Some(t) = &tunnel_row {
        println!(
            "\ntunnel --local-port: {} connections at once, {} bytes each way each: {}/{} matched byte for byte, \
             {:.2} s, {:.1} MB/s echoed, slowest connection {:.2} s, at most {} tunnels open, listener peak RSS {:.1} MiB",
            t.connections,
            t.bytes_each,
            t.matched,
            t.connections,
            t.elapsed.as_secs_f64(),
            t.mbps,
            t.slowest.as_secs_f64(),
            t.most_open,
            t.peak_rss_kib as f64 / 1024.0
        );
    }
    if !problems.is_empty() {
        eprintln!("\nload benchmark FAILED:");
        for p in &problems {
            eprintln!("  {p}");
        }
        std::process::exit(1);
    }
}

/// How an instance of the fleet is set up to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    Succeeds,
    Stopped,
    PushRefused,
    LoginRefused,
    Unreachable,
}

struct FleetRow {
    instances: u16,
    bed_start: Duration,
    elapsed: Duration,
    throttled_push: usize,
    throttled_describe: usize,
    peak_rss_kib: u64,
    maxrss_kib: u64,
    cpu: Duration,
    outcomes: String,
    reasons: Vec<String>,
}

fn fleet(n: u16, parallel: usize) -> (FleetRow, Vec<String>) {
    assert!(n >= 5, "a load fleet needs at least 5 instances");
    eprintln!("load: starting a bed of {n} instances");
    let t = Instant::now();
    let bed = TestBed::start_with(BedOptions {
        slots: n,
        ..BedOptions::default()
    });
    let bed_start = t.elapsed();
    let special = |k: u16| match k {
        _ if k == n / 5 => Expect::Stopped,
        _ if k == 2 * n / 5 => Expect::PushRefused,
        _ if k == 3 * n / 5 => Expect::LoginRefused,
        _ if k == 4 * n / 5 => Expect::Unreachable,
        _ => Expect::Succeeds,
    };
    let mut expected: BTreeMap<String, Expect> = BTreeMap::new();
    for k in 0..n {
        let expect = special(k);
        let mut spec = InstanceSpec::named(&format!("node-{k:03}")).tag("Fleet", "load");
        spec = match expect {
            Expect::Succeeds | Expect::PushRefused => spec,
            Expect::Stopped => spec.state("stopped"),
            Expect::LoginRefused => spec.instance_connect(false),
            Expect::Unreachable => spec.unreachable(),
        };
        let inst = bed.add_instance(spec);
        if expect == Expect::PushRefused {
            bed.fail_next_for("SendSSHPublicKey", &inst.id, "AuthException", 1);
        }
        expected.insert(inst.id, expect);
    }
    bed.set_rate_limit("SendSSHPublicKey", PUSH_RATE, PUSH_BURST);
    bed.set_rate_limit("DescribeInstances", DESCRIBE_RATE, DESCRIBE_BURST);
    bed.set_page_size(PAGE_SIZE);

    let mut c = bed.command();
    c.args(["run", "-f", "tag:Fleet=load", "-f", "state=running,stopped"])
        .args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()])
        .args(["--parallel", &parallel.to_string(), "--json", "--", "true"]);
    eprintln!("load: run -- true on {n} instances, --parallel {parallel}");
    let m = run_measured(c);
    let mut problems = Vec::new();
    let stderr = String::from_utf8_lossy(&m.output.stderr);
    if m.output.status.code() != Some(1) {
        problems.push(format!(
            "{n}: run exited {:?}, not 1 (some instances failed on purpose); stderr: {stderr}",
            m.output.status
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&m.output.stdout).unwrap_or_else(|e| {
        panic!(
            "{n}: run --json printed no JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&m.output.stdout)
        )
    });
    let listed = doc["instances"].as_array().cloned().unwrap_or_default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut counts: BTreeMap<Expect, usize> = BTreeMap::new();
    let mut reasons = Vec::new();
    for i in &listed {
        let id = i["id"].as_str().unwrap_or_default().to_owned();
        *seen.entry(id.clone()).or_default() += 1;
        let Some(&expect) = expected.get(&id) else {
            problems.push(format!(
                "{n}: run reported an instance not in the fleet: {id}"
            ));
            continue;
        };
        let status = i["status"].as_str().unwrap_or_default();
        let error = i["error"].as_str().unwrap_or_default();
        let ssh_said = i["stderr"].as_str().unwrap_or_default().trim();
        let (want_status, want_text, said) = match expect {
            Expect::Succeeds => ("succeeded", "", ""),
            Expect::Stopped => ("not-reached", "instance is stopped", error),
            Expect::PushRefused => ("not-reached", "not allowed to push a key", error),
            Expect::LoginRefused => ("failed", "Permission denied (publickey)", ssh_said),
            Expect::Unreachable => ("failed", "Connection refused", ssh_said),
        };
        let one_line = !said.contains('\n');
        if status != want_status || !said.contains(want_text) || !one_line {
            problems.push(format!(
                "{n}: {id} ({expect:?}): status {status:?}, error {error:?}, stderr {ssh_said:?}; \
                 expected {want_status:?} with one line saying {want_text:?}"
            ));
        } else {
            *counts.entry(expect).or_default() += 1;
            if expect != Expect::Succeeds {
                reasons.push(format!("{expect:?}: {status}: {said}"));
            }
        }
    }
    for id in expected.keys() {
        match seen.get(id) {
            Some(1) => {}
            Some(k) => problems.push(format!("{n}: {id} reported {k} times")),
            None => problems.push(format!("{n}: {id} missing from the report")),
        }
    }
    if doc["summary"]["total"] != u64::from(n) {
        problems.push(format!("{n}: summary {}", doc["summary"]));
    }
    if !bed.signature_failures().is_empty() {
        problems.push(format!(
            "{n}: signature failures {:?}",
            bed.signature_failures()
        ));
    }
    let throttled_push = bed.throttled("SendSSHPublicKey");
    let throttled_describe = bed.throttled("DescribeInstances");
    if throttled_push == 0 || throttled_describe == 0 {
        problems.push(format!(
            "{n}: the run met no throttling (push {throttled_push}, describe {throttled_describe})"
        ));
    }
    let outcomes = format!(
        "{} ok, {} stopped, {} push refused, {} login refused, {} unreachable",
        counts.get(&Expect::Succeeds).copied().unwrap_or(0),
        counts.get(&Expect::Stopped).copied().unwrap_or(0),
        counts.get(&Expect::PushRefused).copied().unwrap_or(0),
        counts.get(&Expect::LoginRefused).copied().unwrap_or(0),
        counts.get(&Expect::Unreachable).copied().unwrap_or(0),
    );
    eprintln!(
        "load: {n} instances: {:.2} s, {outcomes}",
        m.elapsed.as_secs_f64()
    );
    let row = FleetRow {
        instances: n,
        bed_start,
        elapsed: m.elapsed,
        throttled_push,
        throttled_describe,
        peak_rss_kib: m.peak_rss_kib,
        maxrss_kib: m.maxrss_with_children_kib,
        cpu: m.cpu,
        outcomes,
        reasons,
    };
    (row, problems)
}

struct TunnelRow {
    connections: usize,
    bytes_each: usize,
    matched: usize,
    elapsed: Duration,
    slowest: Duration,
    mbps: f64,
    most_open: usize,
    peak_rss_kib: u64,
}

fn tunnel(connections: usize, bytes_each: usize) -> (TunnelRow, Vec<String>) {
    eprintln!("load: tunnel listener, {connections} connections x {bytes_each} bytes");
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("win-1").public_ip(false));
    bed.add_endpoint(EndpointSpec::default());
    let (child, port) = start_tunnel_listener(&bed, &["--remote-port", "3389", "win-1"]);
    let load = echo_load(port, connections, bytes_each, Duration::from_secs(300));
    let mut problems: Vec<String> = load.failures.clone();
    let tunnels = bed.wait_for_tunnels_closed(connections, Duration::from_secs(60));
    if tunnels.len() != connections {
        problems.push(format!(
            "{} tunnels for {connections} connections",
            tunnels.len()
        ));
    }
    if let Some(t) = tunnels.iter().find(|t| t.bytes_up != bytes_each as u64) {
        problems.push(format!(
            "a tunnel carried {} bytes up, not {bytes_each}",
            t.bytes_up
        ));
    }
    let most_open = bed.max_open_tunnels();
    if most_open > 20 {
        problems.push(format!(
            "{most_open} tunnels open at once; the service allows 20"
        ));
    }
    let (status, err, peak_rss_kib) = stop_tunnel_listener(child);
    if !status.success() {
        problems.push(format!("the listener exited {status:?}: {err}"));
    }
    let row = TunnelRow {
        connections,
        bytes_each,
        matched: load.matched,
        elapsed: load.elapsed,
        slowest: load.slowest,
        mbps: load.megabytes_per_second(),
        most_open,
        peak_rss_kib,
    };
    (row, problems)
}
