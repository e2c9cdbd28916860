//! Load helpers shared by the tests and `benches/load.rs`: a command run
//! with its peak memory measured, and many concurrent echo connections whose
//! bytes are compared end to end.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A finished command with what it cost.
#[derive(Debug)]
pub struct Measured {
    pub output: Output,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// Peak resident set of the process itself, in KiB: the highest
    /// `VmHWM` (the kernel's own high-water mark) read from
    /// `/proc/PID/status`, polled every 10 ms and once more after it exited
    /// but before it was reaped.
    pub peak_rss_kib: u64,
    /// `ru_maxrss` from `wait4(2)`, in KiB: the larger of the process's own
    /// peak and that of the largest child it reaped (ssh, for `run`).
    pub maxrss_with_children_kib: u64,
    /// User + system CPU time of the process and its reaped children.
    pub cpu: Duration,
}

/// `VmHWM` of `pid` in KiB, if it can be read.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` to the end (standard input: none; output collected) and
/// measures its wall time, peak memory and CPU time.
pub fn run_measured(mut cmd: Command) -> Measured {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start the measured command");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let poller = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Wait for the exit but leave the zombie, so that the pid cannot be
    // reused while the poller still reads /proc/PID.
    // SAFETY: waitid(2) on our own child, with a zeroed siginfo_t we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        );
        assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    poller.join().expect("poller");
    let mut status = 0;
    // SAFETY: wait4(2) reaps our own child; `usage` is a zeroed rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let rc = libc::wait4(pid, &mut status, 0, &mut usage);
        assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
        usage
    };
    // `child` was reaped above: dropping it neither waits nor kills.
    drop(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Measured {
        output: Output {
            status: ExitStatus::from_raw(status),
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        },
        elapsed,
        peak_rss_kib: peak.load(Ordering::Relaxed),
        maxrss_with_children_kib: usage.ru_maxrss as u64,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    }
}

/// What [`echo_load`] saw.
#[derive(Debug)]
pub struct EchoLoad {
    pub connections: usize,
    pub bytes_each: usize,
    /// From the first connect to the last byte compared.
    pub elapsed: Duration,
    /// Connections whose echo equalled what they sent, byte for byte.
    pub matched: usize,
    /// What went wrong on the others, one line each.
    pub failures: Vec<String>,
    /// The slowest connection, connect to last byte.
    pub slowest: Duration,
}

impl EchoLoad {
    /// Echoed payload per second (each byte counted once, though it crossed
    /// the tunnel both ways), in MB/s.
    pub fn megabytes_per_second(&self) -> f64 {
        (self.connections * self.bytes_each) as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Fills `buf` with pseudo-random bytes from `seed` (xorshift64*): every
/// connection gets bytes of its own, so a crossed stream cannot match.
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A random 64-bit number from the OS.
fn os_random() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    u64::from_le_bytes(b)
}

/// Opens `connections` TCP connections to 127.0.0.1:`port` at once; each
/// sends `bytes_each` random bytes of its own (while reading, so neither
/// side's buffers fill) and reads as many back, which must equal what it
/// sent. A connection waits up to `patience` for its echo to complete.
pub fn echo_load(port: u16, connections: usize, bytes_each: usize, patience: Duration) -> EchoLoad {
    let base = os_random();
    let payloads: Vec<Arc<Vec<u8>>> = (0..connections)
        .map(|i| {
            let mut p = vec![0u8; bytes_each];
            fill_random(
                &mut p,
                base.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            );
            Arc::new(p)
        })
        .collect();
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                let payload = payload.clone();
                s.spawn(move || {
                    echo_one(port, &payload, patience).map_err(|e| format!("connection {i}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let elapsed = started.elapsed();
    let failures: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
    EchoLoad {
        connections,
        bytes_each,
        elapsed,
        matched: results.iter().filter(|r| r.is_ok()).count(),
        failures,
        slowest: results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .max()
            .copied()
            .unwrap_or_default(),
    }
}

/// One connection of [`echo_load`].
fn echo_one(port: u16, payload: &Arc<Vec<u8>>, patience: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(patience))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(patience))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let sending = payload.clone();
    let sender = std::thread::spawn(move || {
        // Several writes, as an application would make them.
        for chunk in sending.chunks(64 * 1024) {
            writer.write_all(chunk)?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut back = vec![0u8; payload.len()];
    let read = conn.read_exact(&mut back);
    let sent = sender.join().map_err(|_| "sender panicked".to_owned())?;
    sent.map_err(|e| format!("send: {e}"))?;
    read.map_err(|e| format!("read the echo: {e}"))?;
    if back != **payload {
        let at = back.iter().zip(payload.iter()).position(|(a, b)| a != b);
        return Err(format!(
            "the echo differs from what was sent, first at byte {at:?}"
        ));
    }
    let took = started.elapsed();
    let _ = conn.shutdown(Shutdown::Both);
    Ok(took)
}

/// `eic-connect tunnel --local-port 0 ARGS…` against `bed`, running, with
/// the port it printed that it listens on.
pub fn start_tunnel_listener(bed: &super::TestBed, args: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut c = bed.command();
    c.arg("tunnel")
        .args(["--local-port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start the tunnel");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok());
    match port {
        Some(port) => (child, port),
        None => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            panic!("no port in {line:?}; stderr: {err}")
        }
    }
}

/// Ends a listener from [`start_tunnel_listener`] with SIGTERM (it exits 0)
/// and returns its exit status, its standard error and its peak resident
/// set in KiB (`VmHWM`, read just before the signal).
pub fn stop_tunnel_listener(mut child: std::process::Child) -> (ExitStatus, String, u64) {
    let pid = child.id() as libc::pid_t;
    let peak = vm_hwm_kib(pid).unwrap_or(0);
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the listener") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the tunnel listener did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err, peak)
}

/// A number from the environment (benchmark settings), else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
