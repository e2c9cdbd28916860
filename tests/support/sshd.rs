//! Real OpenSSH sshd standing in for every fake instance of a bed.
//!
//! It listens on one port P on a private and a public address for every
//! slot k in 1..=slots (15 by default, up to [`MAX_SLOTS`]), plus [::1] when
//! IPv6 loopback works. Slots 1-250 are 127.0.1.k (private) and 127.0.2.k
//! (public); every further 250 move one step up the second octet: slot 251
//! is 127.1.1.1 / 127.1.2.1, slot 500 is 127.1.1.250 / 127.1.2.250 (see
//! [`private_ip`]). The whole of 127.0.0.0/8 is loopback on Linux. Which instance a connection is "for" is
//! decided by the local address it arrived on: a `Match LocalAddress` block
//! per address hands that address to the AuthorizedKeysCommand (OpenSSH 9.2
//! rejects `%C` in that command, and an unknown token there aborts the
//! connection).
//!
//! sshd can hold at most 16 listen sockets (`MAX_LISTEN_SOCKS`; more makes
//! it exit with "Too many listen sockets"), so the addresses are split over
//! several sshd processes (2 for the default 15 slots, 16 for 120 slots, 63
//! for 500) with
//! the same port, host key, AuthorizedKeysCommand and log file, started
//! together. To a test they are one sshd. Each process has `Match` blocks for
//! its own addresses only, and `MaxStartups 500:30:1000` so that a burst of
//! logins (fleet tests) is not dropped by the default `10:30:100`.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Default instance slots per bed (addresses 127.0.1.1-15 / 127.0.2.1-15);
/// see `BedOptions::slots`.
pub const SLOTS: u16 = 15;

/// Most slots a bed can have: 4,000 slots are 8,000 addresses (127.0.x.y to
/// 127.15.x.y) served by 501 sshd processes, which a 2-core machine with
/// 24 GB starts in a few seconds. The address scheme goes on (up to 127.254.x.y,
/// 63,750 slots); memory for the sshd processes (a few MB each, one per
/// 8 slots) is what limits a bed, and logging in to all of them is what
/// limits a benchmark (see docs/benchmarks.md).
pub const MAX_SLOTS: u16 = 4000;

/// Slots per block of addresses: 127.B.1.1-250 / 127.B.2.1-250.
const SLOTS_PER_BLOCK: u16 = 250;

/// OpenSSH's MAX_LISTEN_SOCKS.
const MAX_LISTEN_SOCKS: usize = 16;

/// Block (second octet) and host (last octet) of a slot's addresses.
fn octets(slot: u16) -> (u16, u16) {
    assert!(slot >= 1, "slots start at 1");
    let n = slot - 1;
    (n / SLOTS_PER_BLOCK, n % SLOTS_PER_BLOCK + 1)
}

/// 127.0.1.k for slots 1-250, then 127.1.1.1-250, 127.2.1.1-250, …
pub fn private_ip(slot: u16) -> String {
    let (block, host) = octets(slot);
    format!("127.{block}.1.{host}")
}

/// 127.0.2.k for slots 1-250, then 127.1.2.1-250, 127.2.2.1-250, …
pub fn public_ip(slot: u16) -> String {
    let (block, host) = octets(slot);
    format!("127.{block}.2.{host}")
}

/// 127.0.3.k for slots 1-250, then 127.1.3.1-250, …: the public address of
/// an instance with a latency (`InstanceSpec::latency`), where a delay
/// proxy to its private address listens instead of sshd.
pub fn delayed_ip(slot: u16) -> String {
    let (block, host) = octets(slot);
    format!("127.{block}.3.{host}")
}

/// A loopback address no bed listens on (127.255.B.H, B and H as for
/// [`private_ip`]), for an instance that cannot be reached: connections to
/// it are refused at once.
pub fn unreachable_ip(slot: u16) -> String {
    let (block, host) = octets(slot);
    format!("127.255.{block}.{host}")
}

pub const IPV6_ADDR: &str = "::1";

pub struct Sshd {
    children: Vec<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub configs: Vec<PathBuf>,
}

/// Every address sshd must listen on.
fn all_addresses(slots: u16, ipv6: bool) -> Vec<String> {
    let mut addrs: Vec<String> = (1..=slots)
        .flat_map(|k| [private_ip(k), public_ip(k)])
        .collect();
    if ipv6 {
        addrs.push(IPV6_ADDR.to_owned());
    }
    addrs
}

/// The sshd binary: `EIC_TESTBED_SSHD` or /usr/sbin/sshd.
pub fn sshd_path() -> PathBuf {
    std::env::var_os("EIC_TESTBED_SSHD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"))
}

/// `(major, minor)` of the installed OpenSSH, from `sshd -V`.
fn sshd_version(sshd: &Path) -> Option<(u32, u32)> {
    let out = Command::new(sshd)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let v = text.split("OpenSSH_").nth(1)?;
    let mut nums = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

pub fn ipv6_loopback_works() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

impl Sshd {
    /// Start sshd for a bed in `dir` (which must hold `akc.sh` and the host
    /// key) with `slots` instance slots (1..=[`MAX_SLOTS`]), retrying with a
    /// fresh port if the chosen one turns out taken.
    pub fn start(dir: &Path, user: &str, host_key: &Path, ipv6: bool, slots: u16) -> Sshd {
        assert!(
            (1..=MAX_SLOTS).contains(&slots),
            "a bed has 1..={MAX_SLOTS} slots, not {slots}"
        );
        let sshd = sshd_path();
        assert!(
            sshd.exists(),
            "{} not found: the test bed needs OpenSSH's server (apt-get install openssh-server)",
            sshd.display()
        );
        if is_root() {
            // Privilege separation directory; needed by sshd when run as root.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let version = sshd_version(&sshd);
        let addrs = all_addresses(slots, ipv6);
        let mut last_log = String::new();
        for attempt in 0..6 {
            let port = free_port();
            let log = dir.join("sshd.log");
            let mut s = Sshd {
                children: Vec::new(),
                port,
                log: log.clone(),
                configs: Vec::new(),
            };
            // All processes append to one log (O_APPEND keeps lines whole).
            let _ = std::fs::remove_file(&log);
            for (n, chunk) in addrs.chunks(MAX_LISTEN_SOCKS).enumerate() {
                let config = dir.join(format!("sshd_config.{n}"));
                std::fs::write(
                    &config,
                    config_text(dir, user, host_key, port, chunk, version),
                )
                .expect("write sshd_config");
                let log_file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("open sshd.log");
                let child = Command::new(&sshd)
                    .arg("-D")
                    .arg("-e")
                    .arg("-f")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().expect("dup sshd.log"))
                    .stderr(log_file)
                    // Own process group, so stop() also ends per-connection children.
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", sshd.display()));
                s.children.push(child);
                s.configs.push(config);
            }
            match s.wait_ready(&addrs) {
                Ok(()) => return s,
                Err(text) => {
                    s.stop();
                    let port_clash =
                        text.contains("Address already in use") || text.contains("Bind to port");
                    last_log = text;
                    if !port_clash {
                        break;
                    }
                    eprintln!("testbed: sshd port {port} clashed (attempt {attempt}), retrying");
                }
            }
        }
        panic!("sshd did not start; its log:\n{last_log}");
    }

    /// Wait until every sshd process says it listens on all its addresses
    /// and a TCP connection to each process gets an SSH banner (up to 5 s,
    /// plus 1 s per process: the processes start concurrently, but a loaded
    /// machine may take a while for 16 of them). `Err(log)` on failure.
    fn wait_ready(&mut self, addrs: &[String]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5 + self.children.len() as u64);
        // One address per process, to check its banner.
        let probes: Vec<&String> = addrs
            .chunks(MAX_LISTEN_SOCKS)
            .filter_map(|c| c.first())
            .collect();
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("Bind to port") || log.contains("Cannot bind") {
                return Err(log);
            }
            for child in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{log}\n(sshd exited: {status})"));
                }
            }
            // One pass over the log: a bed of 1,000 slots has 2,000 addresses.
            let suffix = format!(" port {}.", self.port);
            let listening: std::collections::HashSet<&str> = log
                .lines()
                .filter_map(|l| {
                    let (_, rest) = l.split_once("Server listening on ")?;
                    rest.trim_end().strip_suffix(&suffix)
                })
                .collect();
            let all = addrs.iter().all(|a| listening.contains(a.as_str()));
            if all && probes.iter().all(|a| banner_ok(a, self.port)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{log}\n(timed out waiting for sshd to listen on port {})",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop every sshd process of the bed.
    pub fn stop(&mut self) {
        for child in std::mem::take(&mut self.children) {
            stop_group(child);
        }
    }
}

/// SIGTERM an sshd's process group (listener and per-connection children),
/// wait up to 2 s for the listener, then SIGKILL the group. The group is only
/// signalled while its leader is unreaped, so the id cannot have been reused.
fn stop_group(mut child: Child) {
    let pgid = child.id() as libc::pid_t;
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on the process group we created for this sshd, whose
    // leader we have not reaped yet.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    // SAFETY: as above; the leader is still unreaped here.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn banner_ok(ip: &str, port: u16) -> bool {
    let addr: SocketAddr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
    .parse()
    .expect("socket address");
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-"
}

/// A port that is free right now on the bed's first address.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.1.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Config for one sshd process: listens on `listen`, with a Match block for
/// each of those addresses (connections to this process arrive on no other).
fn config_text(
    dir: &Path,
    user: &str,
    host_key: &Path,
    port: u16,
    listen: &[String],
    version: Option<(u32, u32)>,
) -> String {
    let akc = dir.join("akc.sh");
    let mut c = String::new();
    c.push_str("# Generated by the eic-connect test bed.\n");
    for a in listen {
        if a.contains(':') {
            c.push_str(&format!("ListenAddress [{a}]:{port}\n"));
        } else {
            c.push_str(&format!("ListenAddress {a}:{port}\n"));
        }
    }
    c.push_str(&format!("HostKey {}\n", host_key.display()));
    c.push_str(
        "PidFile none\n\
         AuthorizedKeysFile none\n\
         UsePAM no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         StrictModes no\n\
         LogLevel VERBOSE\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         UseDNS no\n\
         X11Forwarding no\n\
         Subsystem sftp internal-sftp\n",
    );
    // Fleet tests log in to ~100 instances at once. The default 10:30:100
    // starts dropping unauthenticated connections at 10 per process.
    c.push_str("MaxStartups 500:30:1000\n");
    // OpenSSH >= 9.8 penalises sources with repeated failed logins, which
    // would punish a test suite that fails logins on purpose.
    if version.is_some_and(|v| v >= (9, 8)) {
        c.push_str("PerSourcePenalties no\n");
    }
    c.push_str(&format!("AuthorizedKeysCommandUser {user}\n"));
    // Default: serve no keys. Then one Match block per address.
    c.push_str(&format!(
        "AuthorizedKeysCommand /bin/sh {} %u -\n",
        akc.display()
    ));
    for a in listen {
        c.push_str(&format!("Match LocalAddress {a}\n"));
        c.push_str(&format!(
            "    AuthorizedKeysCommand /bin/sh {} %u {a}\n",
            akc.display()
        ));
    }
    c
}
