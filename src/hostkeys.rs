//! Host keys an instance printed on its console, and pinning keys for ssh.
//!
//! On first boot cloud-init writes the instance's SSH host keys to the serial
//! console between `-----BEGIN SSH HOST KEY KEYS-----` and
//! `-----END SSH HOST KEY KEYS-----`. `GetConsoleOutput` returns that text
//! through the authenticated EC2 API, so keys found there are a trust source
//! that does not depend on the network path to the instance. Real output is
//! messy: lines may carry a syslog or kernel prefix (`<14>Nov 23 18:06:28
//! ec2: `, `[   12.3] cloud-init[811]: `), end in CRLF, interleave with other
//! boot messages, and some AMIs print an empty block. The parser takes only
//! what decodes as a public key of a known type.
//!
//! Pinning: ssh is given a `KnownHostsCommand` that runs `eic-connect
//! __known-hosts` with the pinned keys and fingerprints. ssh hands that
//! helper the key the server offered; the helper prints the pinned keys (and
//! the offered key when its fingerprint is pinned) as known_hosts lines, and
//! records whether the offered key matched, so a refusal can be explained.
//! With `StrictHostKeyChecking=yes` and no other known_hosts source, ssh
//! accepts exactly the pinned keys.
//!
//! Everything here is pure except the two small file helpers at the end.

use std::path::Path;

use ssh_key::{HashAlg, PublicKey};

const KEYS_BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
const KEYS_END: &str = "-----END SSH HOST KEY KEYS-----";

/// Host-key algorithms accepted from the console. DSA is left out: OpenSSH
/// no longer uses it, and it is not worth pinning.
const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Longest base64 key blob accepted (a 16384-bit RSA key is ~2.8 kB).
const MAX_KEY_BASE64: usize = 8192;

/// One public host key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, ...
    pub algorithm: String,
    /// The key blob, base64 as in known_hosts.
    pub base64: String,
    /// `SHA256:…`, as ssh shows it.
    pub fingerprint: String,
}

impl HostKey {
    /// Validates `algorithm base64`: the type must be a known host-key type
    /// and the blob must decode as a key of exactly that type.
    pub fn parse(algorithm: &str, base64: &str) -> Option<HostKey> {
        if !HOST_KEY_TYPES.contains(&algorithm)
            || base64.is_empty()
            || base64.len() > MAX_KEY_BASE64
            || !base64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return None;
        }
        let key = PublicKey::from_openssh(&format!("{algorithm} {base64}")).ok()?;
        if key.algorithm().as_str() != algorithm || key.key_data().is_other() {
            return None;
        }
        // Re-encode so that what is pinned is exactly what was validated.
        let canonical = key.to_openssh().ok()?;
        let (_, blob) = canonical.split_once(' ')?;
        let blob = blob.split(' ').next()?;
        Some(HostKey {
            algorithm: algorithm.to_owned(),
            base64: blob.to_owned(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        })
    }

    /// `ssh-ed25519 AAAA…`
    pub fn openssh(&self) -> String {
        format!("{} {}", self.algorithm, self.base64)
    }

    /// `ED25519`, `ECDSA`, `RSA`: the short name ssh prints.
    pub fn kind(&self) -> &'static str {
        match self.algorithm.as_str() {
            "ssh-ed25519" => "ED25519",
            "ssh-rsa" => "RSA",
            _ => "ECDSA",
        }
    }
}

/// What the console output says about host keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleKeys {
    /// No complete host-key block: cloud-init has not printed it yet, it
    /// scrolled out of the buffer, or the AMI does not print it.
    NotFound,
    /// One or more blocks, none with a usable key.
    Empty,
    /// The keys of the last block that had any.
    Keys(Vec<HostKey>),
}

/// Finds cloud-init's host-key blocks in console output. Several blocks
/// (reboots, re-provisioning) resolve to the last one holding keys; a block
/// without its END line is ignored, as its last key may be cut off.
pub fn parse_console(text: &str) -> ConsoleKeys {
    let mut open: Option<Vec<HostKey>> = None;
    let mut last: Option<Vec<HostKey>> = None;
    let mut saw_block = false;
    // CR, LF, CRLF and the CR CR LF some consoles produce all end a line.
    for line in text.split(['\r', '\n']) {
        if line.contains(KEYS_BEGIN) {
            open = Some(Vec::new());
        } else if line.contains(KEYS_END) {
            if let Some(keys) = open.take() {
                saw_block = true;
                if !keys.is_empty() {
                    last = Some(keys);
                }
            }
        } else if let Some(keys) = open.as_mut()
            && let Some(key) = key_in_line(line)
            && !keys.contains(&key)
        {
            keys.push(key);
        }
    }
    match (last, saw_block) {
        (Some(keys), _) => ConsoleKeys::Keys(keys),
        (None, true) => ConsoleKeys::Empty,
        (None, false) => ConsoleKeys::NotFound,
    }
}

/// The key on one console line, wherever a prefix puts it: the first
/// `TYPE BASE64` word pair that validates.
fn key_in_line(line: &str) -> Option<HostKey> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    words
        .windows(2)
        .filter(|pair| HOST_KEY_TYPES.contains(&pair[0]))
        .find_map(|pair| HostKey::parse(pair[0], pair[1]))
}

/// What ssh may accept as the host key of one connection: whole keys (from
/// the console) and/or bare fingerprints (the serial console's published
/// ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub keys: Vec<HostKey>,
    pub fingerprints: Vec<String>,
}

/// Whether `s` looks like an OpenSSH SHA-256 fingerprint (`SHA256:` and 43
/// unpadded base64 characters).
pub fn is_sha256_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    })
}

impl Pins {
    fn allows(&self, fingerprint: &str) -> bool {
        self.fingerprints.iter().any(|f| f == fingerprint)
            || self.keys.iter().any(|k| k.fingerprint == fingerprint)
    }

    /// The helper's arguments (after the program name), with ssh's tokens
    /// for the reason, the known_hosts name and the offered key at the end.
    pub fn helper_args(&self, report: &Path) -> Vec<String> {
        let mut args = vec![
            "__known-hosts".to_owned(),
            "--report".into(),
            report.to_string_lossy().into_owned(),
        ];
        for fp in &self.fingerprints {
            args.extend(["--pin".to_owned(), fp.clone()]);
        }
        for key in &self.keys {
            args.extend([
                "--key".to_owned(),
                format!("{}:{}", key.algorithm, key.base64),
            ]);
        }
        args.extend(["--", "%I", "%H", "%t", "%K"].map(String::from));
        args
    }
}

/// What the helper found when ssh showed it the server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The offered key is pinned.
    Match { fingerprint: String },
    /// The server offered a key that is not pinned.
    Mismatch {
        fingerprint: String,
        algorithm: String,
    },
}

impl Verdict {
    /// One line for the report file.
    pub fn to_line(&self) -> String {
        match self {
            Verdict::Match { fingerprint } => format!("match {fingerprint}"),
            Verdict::Mismatch {
                fingerprint,
                algorithm,
            } => format!("mismatch {fingerprint} {algorithm}"),
        }
    }

    fn from_line(line: &str) -> Option<Verdict> {
        let mut words = line.split(' ');
        match (words.next()?, words.next()?, words.next()) {
            ("match", fp, None) if is_sha256_fingerprint(fp) => Some(Verdict::Match {
                fingerprint: fp.to_owned(),
            }),
            ("mismatch", fp, Some(alg)) if is_sha256_fingerprint(fp) => Some(Verdict::Mismatch {
                fingerprint: fp.to_owned(),
                algorithm: alg.to_owned(),
            }),
            _ => None,
        }
    }
}

/// The helper's answer to one ssh invocation: known_hosts lines to print
/// and, when ssh showed it a key, the verdict to record. `reason` is
/// `ORDER` (ssh is choosing host-key algorithms; no key yet), `HOSTNAME` or
/// `ADDRESS`; `host` is the name ssh looks up.
pub fn answer(
    pins: &Pins,
    reason: &str,
    host: &str,
    key_type: &str,
    key_base64: &str,
) -> (Vec<String>, Option<Verdict>) {
    // A name ssh would misread in a known_hosts line gets no answer at all.
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return (Vec::new(), None);
    }
    let mut lines: Vec<String> = pins
        .keys
        .iter()
        .map(|k| format!("{host} {}", k.openssh()))
        .collect();
    if reason == "ORDER" || key_type.is_empty() || key_base64.is_empty() {
        return (lines, None);
    }
    // ssh names RSA keys by the signature algorithm in use; the blob says ssh-rsa.
    let blob_type = match key_type {
        "rsa-sha2-256" | "rsa-sha2-512" => "ssh-rsa",
        other => other,
    };
    let Some(offered) = HostKey::parse(blob_type, key_base64) else {
        return (lines, None);
    };
    let verdict = if pins.allows(&offered.fingerprint) {
        if !pins.keys.contains(&offered) {
            lines.push(format!("{host} {}", offered.openssh()));
        }
        Verdict::Match {
            fingerprint: offered.fingerprint,
        }
    } else {
        Verdict::Mismatch {
            fingerprint: offered.fingerprint,
            algorithm: offered.algorithm,
        }
    };
    (lines, Some(verdict))
}

/// First use keyed by instance id (the ssh-config block, where ssh knows
/// only the name typed): what to print for ssh, and the line to append to
/// eic-connect's known_hosts file when the instance has no key recorded.
/// `host` is ssh's `%H`; `existing` the file's text.
pub fn first_use_answer(
    existing: &str,
    alias: &str,
    reason: &str,
    host: &str,
    key_type: &str,
    key_base64: &str,
) -> (Vec<String>, Option<String>) {
    // Neither name may break a known_hosts line or name several hosts.
    let one_word = |s: &str| {
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    };
    if !one_word(host) || !one_word(alias) {
        return (Vec::new(), None);
    }
    let recorded: Vec<HostKey> = existing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace();
            let (hosts, alg, blob) = (words.next()?, words.next()?, words.next()?);
            hosts
                .split(',')
                .any(|h| h == alias)
                .then(|| HostKey::parse(alg, blob))
                .flatten()
        })
        .collect();
    if !recorded.is_empty() {
        let lines = recorded
            .iter()
            .map(|k| format!("{host} {}", k.openssh()))
            .collect();
        return (lines, None);
    }
    if reason != "HOSTNAME" {
        return (Vec::new(), None);
    }
    let blob_type = match key_type {
        "rsa-sha2-256" | "rsa-sha2-512" => "ssh-rsa",
        other => other,
    };
    match HostKey::parse(blob_type, key_base64) {
        Some(offered) => (
            vec![format!("{host} {}", offered.openssh())],
            Some(format!("{alias} {}\n", offered.openssh())),
        ),
        None => (Vec::new(), None),
    }
}

/// Appends `line` to the known_hosts file at `path` unless `alias` gained
/// a key meanwhile, under the same lock as [`record`].
pub fn append_first_use(path: &Path, alias: &str, line: &str) -> std::io::Result<()> {
    let mut file = Locked::open(path)?;
    let taken = file.existing.lines().any(|l| {
        l.split_ascii_whitespace()
            .next()
            .is_some_and(|hosts| hosts.split(',').any(|h| h == alias))
    });
    if taken {
        return Ok(());
    }
    file.append(line)
}

/// Reads the helper's report: the verdicts in the order ssh asked.
pub fn read_report(path: &Path) -> Vec<Verdict> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(Verdict::from_line)
        .collect()
}

/// `existing` known_hosts text with `keys` recorded for `alias`: plain
/// entries for the alias whose key is not among `keys` are removed (hashed
/// entries cannot be matched without the salt and are left alone), the rest
/// of the file is kept as it was. `None` when nothing is stale, so the keys
/// only need appending ([`missing_lines`]).
pub fn known_hosts_with(existing: &str, alias: &str, keys: &[HostKey]) -> Option<String> {
    let mut out = String::with_capacity(existing.len() + keys.len() * 120);
    let mut present: Vec<&HostKey> = Vec::new();
    let mut stale = false;
    // Every other line is kept byte for byte, line ending included.
    for line in existing.split_inclusive('\n') {
        let mut words = line.split_ascii_whitespace();
        let (hosts, alg, blob) = (words.next(), words.next(), words.next());
        let for_alias = hosts.is_some_and(|h| h.split(',').any(|p| p == alias));
        if for_alias {
            match keys
                .iter()
                .find(|k| Some(k.algorithm.as_str()) == alg && Some(k.base64.as_str()) == blob)
            {
                Some(k) if !present.contains(&k) => present.push(k),
                _ => {
                    stale = true;
                    continue;
                }
            }
        }
        out.push_str(line);
        if !line.ends_with('\n') {
            out.push('\n');
        }
    }
    for key in keys.iter().filter(|k| !present.contains(k)) {
        out.push_str(&format!("{alias} {}\n", key.openssh()));
    }
    stale.then_some(out)
}

/// The known_hosts lines `keys` add for `alias` to `existing`: those not
/// already there.
pub fn missing_lines(existing: &str, alias: &str, keys: &[HostKey]) -> String {
    let mut out = String::new();
    for key in keys {
        let present = existing.lines().any(|line| {
            let mut words = line.split_ascii_whitespace();
            let (hosts, alg, blob) = (words.next(), words.next(), words.next());
            hosts.is_some_and(|h| h.split(',').any(|p| p == alias))
                && alg == Some(key.algorithm.as_str())
                && blob == Some(key.base64.as_str())
        });
        if !present && !out.contains(&key.base64) {
            out.push_str(&format!("{alias} {}\n", key.openssh()));
        }
    }
    out
}

/// A known_hosts file opened for appending, read, and held under its lock
/// (`FILE.lock`) until dropped: every writer of eic-connect takes it.
struct Locked {
    file: std::fs::File,
    existing: String,
    _lock: std::fs::File,
}

impl Locked {
    fn open(path: &Path) -> std::io::Result<Locked> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path.with_extension("lock"))?;
        lock.lock()?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let mut existing = String::new();
        file.read_to_string(&mut existing)?;
        Ok(Locked {
            file,
            existing,
            _lock: lock,
        })
    }

    /// Appends `lines`, after a newline if the file does not end in one.
    /// The end is read again just before the write: ssh appends without
    /// the lock, and a read taken while it wrote may have seen half a line.
    fn append(&mut self, lines: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let len = self.file.metadata()?.len();
        let mut last = [b'\n'];
        if len > 0 {
            self.file.read_exact_at(&mut last, len - 1)?;
        }
        let mut text = String::new();
        if last[0] != b'\n' {
            text.push('\n');
        }
        text.push_str(lines);
        self.file.write_all(text.as_bytes())
    }
}

/// Records `keys` for `alias` in the known_hosts file at `path` (mode 0600),
/// under a lock. ssh itself appends to the same file (first use), so keys
/// are appended in one write; only when the file holds a stale key for the
/// alias (the console says otherwise) is it rewritten, by rename.
pub fn record(path: &Path, alias: &str, keys: &[HostKey]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = Locked::open(path)?;
    if let Some(updated) = known_hosts_with(&file.existing, alias, keys) {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(updated.as_bytes())?;
        out.sync_all()?;
        drop(out);
        return std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        });
    }
    let lines = missing_lines(&file.existing, alias, keys);
    if lines.is_empty() {
        return Ok(());
    }
    file.append(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINyrthAyT0OlfZBcHYwYqguVw1wamLXj8hAYLB+dlytx";
    const ED25519_FP: &str = "SHA256:dnuznENULxTzW17jO5395DpLfU94NR8a6ekV8+KjDyM";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFM+T+D+BoUiFFefrvBfhlu9tfmVovDp8zTQe3FCx9LthuC1MFj1vmMj0E5Fob3DE/h85St4ptXR6eFd2MJPQlM=";
    const ECDSA_FP: &str = "SHA256:J3l0XHTYf4ERjL5hPz3rslrK3RciaEDbhPTzxK1t8sg";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDJB+7OP3FcEt0Mg+qqFYllatp2qSZG2Yaya59+q6HUcFfFeaGmaEmoiV7Vd0opvlqXzlbIBoLCXfHq9gd8XzjihZ+KWJspTEYvn8e9aAUnmK9YU2qNbhkKqWlccGtSppZQQGjXl3iLQmuyOx+U4CcBxUmR/+Dl/zArov2tf3h4s51jHZ3oWBcM9PxPUSL/RV80hDYeNhU0vqir53f60N0aNXghNhebWEtVmE01d4wa5Y7Oz7GJEZj0JNyklesU2FVDeS0SfNBLGo5GkuRZPnYWB8HaoGG8fu/npi59cvSyQlb8IliotOKzzqnzzSWokRKqh6nco039y6WFIqBnj3H9";
    const RSA_FP: &str = "SHA256:+90CAQ2hcewqgj7fLd+d6wAD3ROH/mHaUtAF5BJc7Dg";

    fn fps(keys: &ConsoleKeys) -> Vec<&str> {
        match keys {
            ConsoleKeys::Keys(keys) => keys.iter().map(|k| k.fingerprint.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Amazon Linux 2 style: the fingerprints through syslog (`ec2:`
    /// prefix), the keys raw, CRLF line ends, boot noise around.
    #[test]
    fn amazon_linux_syslog_prefixes_and_crlf() {
        let text = format!(
            "[    0.000000] Linux version 5.10.219-208.866.amzn2.x86_64\r\n\
             [  OK  ] Started Initial cloud-init job (metadata service crawler).\r\n\
             <14>Nov 23 18:06:28 ec2: \r\n\
             <14>Nov 23 18:06:28 ec2: #############################################################\r\n\
             <14>Nov 23 18:06:28 ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n\
             <14>Nov 23 18:06:28 ec2: 256 {ECDSA_FP} no comment (ECDSA)\r\n\
             <14>Nov 23 18:06:28 ec2: 256 {ED25519_FP} no comment (ED25519)\r\n\
             <14>Nov 23 18:06:28 ec2: 2048 {RSA_FP} no comment (RSA)\r\n\
             <14>Nov 23 18:06:28 ec2: -----END SSH HOST KEY FINGERPRINTS-----\r\n\
             <14>Nov 23 18:06:28 ec2: #############################################################\r\n\
             -----BEGIN SSH HOST KEY KEYS-----\r\n\
             {ECDSA} \r\n\
             {ED25519} \r\n\
             {RSA} \r\n\
             -----END SSH HOST KEY KEYS-----\r\n\
             [   24.506227] cloud-init[2547]: Cloud-init v. 19.3-46.amzn2 finished\r\n"
        );
        assert_eq!(fps(&parse_console(&text)), [ECDSA_FP, ED25519_FP, RSA_FP]);
    }

    /// Ubuntu style: every line of the block through cloud-init's logger,
    /// with a kernel timestamp and a syslog prefix, and comments on keys.
    #[test]
    fn ubuntu_prefixed_key_lines_with_comments() {
        let text = format!(
            "[   30.120045] cloud-init[1021]: Cloud-init v. 23.1.2 running 'modules:final'\n\
             [   30.2] cloud-init[1021]: <14>Jun  1 10:00:00 cloud-init: -----BEGIN SSH HOST KEY KEYS-----\n\
             [   30.2] cloud-init[1021]: <14>Jun  1 10:00:00 cloud-init: {ED25519} root@ip-172-31-0-10\n\
             [   30.2] cloud-init[1021]: <14>Jun  1 10:00:00 cloud-init: {RSA} root@ip-172-31-0-10\n\
             [   30.2] cloud-init[1021]: <14>Jun  1 10:00:00 cloud-init: -----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(fps(&parse_console(&text)), [ED25519_FP, RSA_FP]);
    }

    #[test]
    fn empty_block_missing_block_and_unterminated_block() {
        let empty = "<14>Nov 23 18:06:28 ec2: -----BEGIN SSH HOST KEY KEYS-----\r\n\
                     <14>Nov 23 18:06:28 ec2: -----END SSH HOST KEY KEYS-----\r\n";
        assert_eq!(parse_console(empty), ConsoleKeys::Empty);
        assert_eq!(parse_console(""), ConsoleKeys::NotFound);
        assert_eq!(parse_console("Booting...\nlogin: "), ConsoleKeys::NotFound);
        // Cut off before END (the buffer ends mid-block): not trusted.
        let cut = format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n{ED25519}\n{}",
            &RSA[..60]
        );
        assert_eq!(parse_console(&cut), ConsoleKeys::NotFound);
        // END without BEGIN (the start scrolled out): not trusted either.
        let headless = format!("{ED25519}\n-----END SSH HOST KEY KEYS-----\n");
        assert_eq!(parse_console(&headless), ConsoleKeys::NotFound);
    }

    #[test]
    fn the_last_block_with_keys_wins_and_duplicates_collapse() {
        let text = format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n{RSA}\n-----END SSH HOST KEY KEYS-----\n\
             -----BEGIN SSH HOST KEY KEYS-----\n{ED25519}\n{ED25519}\n-----END SSH HOST KEY KEYS-----\n\
             -----BEGIN SSH HOST KEY KEYS-----\n-----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(fps(&parse_console(&text)), [ED25519_FP]);
    }

    #[test]
    fn garbage_inside_a_block_is_skipped() {
        let bad_b64 =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINyrthAyT0OlfZBcHYwYqguVw1wamLXj8hAYLB+dlyt";
        let wrong_type = format!("ssh-rsa {}", ED25519.split(' ').nth(1).unwrap());
        let text = format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n\
             \x1b[31mgarbage\x1b[0m\n\
             ssh-dss AAAAB3NzaC1kc3MAAACBAP\n\
             {bad_b64}\n\
             {wrong_type}\n\
             ssh-ed25519 !!notbase64!!\n\
             ssh-ed25519\n\
             {ECDSA}\n\
             -----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(fps(&parse_console(&text)), [ECDSA_FP]);
        let only_garbage =
            "-----BEGIN SSH HOST KEY KEYS-----\nxyz\n-----END SSH HOST KEY KEYS-----";
        assert_eq!(parse_console(only_garbage), ConsoleKeys::Empty);
    }

    #[test]
    fn fingerprints_and_kinds() {
        let (alg, b64) = ED25519.split_once(' ').unwrap();
        let key = HostKey::parse(alg, b64).unwrap();
        assert_eq!(key.fingerprint, ED25519_FP);
        assert_eq!(key.kind(), "ED25519");
        assert_eq!(key.openssh(), ED25519);
        assert!(is_sha256_fingerprint(ED25519_FP));
        assert!(!is_sha256_fingerprint("SHA256:short"));
        assert!(!is_sha256_fingerprint("MD5:aa:bb"));
    }

    fn pins_of(lines: &[&str]) -> Pins {
        Pins {
            keys: lines
                .iter()
                .map(|l| {
                    let (a, b) = l.split_once(' ').unwrap();
                    HostKey::parse(a, b).unwrap()
                })
                .collect(),
            fingerprints: Vec::new(),
        }
    }

    #[test]
    fn helper_answers_with_pinned_keys_and_records_the_verdict() {
        let pins = pins_of(&[ED25519, ECDSA]);
        let (a, b) = ED25519.split_once(' ').unwrap();
        // ORDER: the pinned keys, so ssh prefers their types; no verdict.
        let (lines, verdict) = answer(&pins, "ORDER", "i-0abc", "", "");
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("i-0abc ssh-ed25519 "));
        assert_eq!(verdict, None);
        // The offered key is pinned.
        let (_, verdict) = answer(&pins, "HOSTNAME", "i-0abc", a, b);
        assert_eq!(
            verdict,
            Some(Verdict::Match {
                fingerprint: ED25519_FP.into()
            })
        );
        // Another key: still only the pins are printed; a mismatch is recorded.
        let (ra, rb) = RSA.split_once(' ').unwrap();
        let (lines, verdict) = answer(&pins, "HOSTNAME", "i-0abc", "rsa-sha2-512", rb);
        assert_eq!(lines.len(), 2);
        assert!(!lines.iter().any(|l| l.contains(ra)));
        assert_eq!(
            verdict.unwrap().to_line(),
            format!("mismatch {RSA_FP} ssh-rsa")
        );
        // A name ssh would misparse gets nothing.
        assert_eq!(answer(&pins, "HOSTNAME", "a b", a, b), (Vec::new(), None));
    }

    #[test]
    fn helper_with_fingerprint_pins_prints_only_a_matching_offer() {
        let pins = Pins {
            keys: Vec::new(),
            fingerprints: vec![ED25519_FP.into()],
        };
        let (a, b) = ED25519.split_once(' ').unwrap();
        let (lines, verdict) = answer(&pins, "HOSTNAME", "[127.0.0.1]:2222", a, b);
        assert_eq!(lines, [format!("[127.0.0.1]:2222 {ED25519}")]);
        assert!(matches!(verdict, Some(Verdict::Match { .. })));
        let (ea, eb) = ECDSA.split_once(' ').unwrap();
        let (lines, verdict) = answer(&pins, "HOSTNAME", "h", ea, eb);
        assert!(lines.is_empty());
        assert!(matches!(verdict, Some(Verdict::Mismatch { .. })));
        assert_eq!(answer(&pins, "ORDER", "h", "", ""), (Vec::new(), None));
    }

    #[test]
    fn verdict_lines_round_trip() {
        for v in [
            Verdict::Match {
                fingerprint: ED25519_FP.into(),
            },
            Verdict::Mismatch {
                fingerprint: RSA_FP.into(),
                algorithm: "ssh-rsa".into(),
            },
        ] {
            assert_eq!(Verdict::from_line(&v.to_line()), Some(v));
        }
        assert_eq!(Verdict::from_line("match nonsense"), None);
    }

    /// Found by fuzzing: an alias holding a newline (or a comma) would have
    /// put a line of its own choosing into known_hosts.
    #[test]
    fn first_use_refuses_an_alias_that_is_not_one_word() {
        let (lines, append) = first_use_answer(
            "",
            "i-0abc\n|1|c2FsdA==|aGFzaA== ssh-rsa AAAAB3",
            "HOSTNAME",
            "i-0abc",
            "ssh-ed25519",
            ED25519.split(' ').nth(1).unwrap(),
        );
        assert!(lines.is_empty() && append.is_none(), "{lines:?} {append:?}");
        for alias in ["", "a b", "a,b", "a\tb"] {
            let (_, append) = first_use_answer(
                "",
                alias,
                "HOSTNAME",
                "h",
                "ssh-ed25519",
                ED25519.split(' ').nth(1).unwrap(),
            );
            assert!(append.is_none(), "{alias:?}");
        }
        let (lines, append) = first_use_answer(
            "",
            "i-0abc",
            "HOSTNAME",
            "[i-0abc]:2222",
            "ssh-ed25519",
            ED25519.split(' ').nth(1).unwrap(),
        );
        assert_eq!(lines.len(), 1);
        assert!(append.unwrap().starts_with("i-0abc ssh-ed25519 "));
    }

    #[test]
    fn recording_replaces_stale_entries_for_the_alias_only() {
        let keys = match parse_console(&format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n{ED25519}\n{ECDSA}\n-----END SSH HOST KEY KEYS-----"
        )) {
            ConsoleKeys::Keys(k) => k,
            other => panic!("{other:?}"),
        };
        let existing =
            format!("i-0abc {RSA}\ni-0other {RSA}\n|1|c2FsdA==|aGFzaA== {RSA}\ni-0abc {ED25519}\n");
        let updated = known_hosts_with(&existing, "i-0abc", &keys).unwrap();
        assert_eq!(
            updated,
            format!(
                "i-0other {RSA}\n|1|c2FsdA==|aGFzaA== {RSA}\ni-0abc {ED25519}\ni-0abc {ECDSA}\n"
            )
        );
        assert_eq!(known_hosts_with(&updated, "i-0abc", &keys), None);
    }

    /// Found by fuzzing: a rewrite dropped a carriage return from another
    /// host's line. Lines of other hosts are now kept byte for byte.
    #[test]
    fn a_rewrite_keeps_other_lines_exactly() {
        let keys = match parse_console(&format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n{ED25519}\n-----END SSH HOST KEY KEYS-----"
        )) {
            ConsoleKeys::Keys(k) => k,
            other => panic!("{other:?}"),
        };
        let existing = format!("rsh-e\r\r\n\x0c x\r\ni-0abc {RSA}\nlast\r");
        let updated = known_hosts_with(&existing, "i-0abc", &keys).unwrap();
        assert!(
            updated.starts_with("rsh-e\r\r\n\x0c x\r\nlast\r\n"),
            "{updated:?}"
        );
    }

    #[test]
    fn recording_appends_what_is_missing() {
        let keys = match parse_console(&format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n{ED25519}\n{ECDSA}\n-----END SSH HOST KEY KEYS-----"
        )) {
            ConsoleKeys::Keys(k) => k,
            other => panic!("{other:?}"),
        };
        let existing = format!("i-0other {RSA}\n|1|c2FsdA==|aGFzaA== {RSA}\ni-0abc {ED25519}\n");
        assert_eq!(
            missing_lines(&existing, "i-0abc", &keys),
            format!("i-0abc {ECDSA}\n")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, &existing).unwrap();
        record(&path, "i-0abc", &keys).unwrap();
        record(&path, "i-0abc", &keys).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{existing}i-0abc {ECDSA}\n")
        );
    }

    /// Many recorders and ssh-like appenders at once: every line survives.
    #[test]
    fn concurrent_recording_loses_no_line() {
        use std::io::Write;
        let keys = match parse_console(&format!(
            "-----BEGIN SSH HOST KEY KEYS-----\n{ED25519}\n-----END SSH HOST KEY KEYS-----"
        )) {
            ConsoleKeys::Keys(k) => k,
            other => panic!("{other:?}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::thread::scope(|scope| {
            for n in 0..50 {
                let (path, keys) = (&path, &keys);
                scope.spawn(move || {
                    record(path, &format!("i-{n:08x}"), keys).unwrap();
                    // What ssh does on first use: an O_APPEND write, no lock.
                    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                    f.write_all(format!("ssh-{n} {RSA}\n").as_bytes()).unwrap();
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        for n in 0..50 {
            assert!(text.contains(&format!("i-{n:08x} ")), "recorded {n}");
            assert!(text.contains(&format!("ssh-{n} ")), "appended {n}");
        }
        assert_eq!(text.lines().count(), 100);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Console-like text: block markers, key lines, prefixes and noise.
        fn console_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just(KEYS_BEGIN.to_owned()),
                Just(KEYS_END.to_owned()),
                Just(ED25519.to_owned()),
                Just(ECDSA.to_owned()),
                Just(RSA.to_owned()),
                Just("<14>Nov 23 18:06:28 ec2: ".to_owned()),
                Just("\r\n".to_owned()),
                Just("\n".to_owned()),
                Just("ssh-ed25519 ".to_owned()),
                Just("ssh-rsa AAAAB3NzaC1yc2E".to_owned()),
                "[A-Za-z0-9+/= ]{0,40}",
                any::<String>(),
            ];
            proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Never panics, and every key returned parses as what it claims.
            #[test]
            fn parser_never_panics_and_returns_only_valid_keys(text in console_text()) {
                if let ConsoleKeys::Keys(keys) = parse_console(&text) {
                    prop_assert!(!keys.is_empty());
                    for key in keys {
                        let again = HostKey::parse(&key.algorithm, &key.base64);
                        prop_assert_eq!(again.as_ref(), Some(&key));
                        let public = PublicKey::from_openssh(&key.openssh()).unwrap();
                        prop_assert_eq!(public.fingerprint(HashAlg::Sha256).to_string(), key.fingerprint);
                    }
                }
            }

            /// Arbitrary bytes (lossily decoded) never panic either.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = parse_console(&String::from_utf8_lossy(&bytes));
            }

            /// Mutating one character of a valid key line never yields a key
            /// that fails to parse.
            #[test]
            fn mutated_keys_parse_or_are_dropped(pos in 0usize..90, c in any::<char>()) {
                let mut line: Vec<char> = ED25519.chars().collect();
                let pos = pos % line.len();
                line[pos] = c;
                let line: String = line.into_iter().collect();
                let text = format!("{KEYS_BEGIN}\n{line}\n{KEYS_END}\n");
                if let ConsoleKeys::Keys(keys) = parse_console(&text) {
                    for key in keys {
                        prop_assert!(PublicKey::from_openssh(&key.openssh()).is_ok());
                    }
                }
            }

            #[test]
            fn helper_never_panics(reason in "[A-Z]{0,8}", host in any::<String>(), t in any::<String>(), k in any::<String>()) {
                let pins = pins_of(&[ED25519]);
                let _ = answer(&pins, &reason, &host, &t, &k);
            }
        }
    }
}
