//! Connection reuse: OpenSSH master connections (`ControlMaster`,
//! `ControlPersist`) that later connections to the same instance join,
//! skipping the lookup, the key push and ssh's handshake.
//!
//! A master's socket lives in a private (0700) directory of the user,
//! named after what it reaches: `USER@HOST:PORT:ROUTE`, where HOST is the
//! instance id (or the target as typed, for a Name or address) and ROUTE
//! the path setting (`auto`, `direct`, `eice`). The ssh-config block names
//! its masters the same way (`%r@%h:%p:ROUTE`), so `ssh i-…` and
//! `eic-connect i-…` share them.
//!
//! The trade-off, plainly: a master keeps an authenticated connection open
//! after the pushed key expired (which EC2 Instance Connect allows: the key
//! is only checked at login), and anyone who can open its socket can use
//! it — hence the private directory, checked before every use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::session::ssh_word;

/// How long a master outlives its last session, unless configured.
pub const DEFAULT_PERSIST: Duration = Duration::from_secs(600);
/// The longest `--reuse` accepted.
const MAX_PERSIST: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest socket path the platforms allow (`sun_path`, less the NUL).
const MAX_SOCKET_PATH: usize = 103;

/// `--reuse[=DURATION]`, `--no-reuse`, `reuse = …` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Off,
    /// On, for [`DEFAULT_PERSIST`].
    On,
    For(Duration),
}

impl Setting {
    /// `on`/`yes`/`true`/empty, `off`/`no`/`false`, or a duration: `90`,
    /// `90s`, `10m`, `1h`.
    pub fn parse(text: &str) -> Result<Setting, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "" | "on" | "yes" | "true" => return Ok(Setting::On),
            "off" | "no" | "false" | "0" => return Ok(Setting::Off),
            _ => {}
        }
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => text.split_at(i),
            None => (text, "s"),
        };
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration (e.g. 90s, 10m, 1h) or on/off"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 10m, 1h) or on/off"))?;
        let d = Duration::from_secs(n.saturating_mul(scale));
        if d > MAX_PERSIST {
            return Err(format!("{text:?} is longer than 7 days"));
        }
        Ok(Setting::For(d))
    }

    /// How long masters persist; `None` when reuse is off.
    pub fn persist(self) -> Option<Duration> {
        match self {
            Setting::Off => None,
            Setting::On => Some(DEFAULT_PERSIST),
            Setting::For(d) => Some(d),
        }
    }
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(Setting::On),
            Raw::Flag(false) => Ok(Setting::Off),
            Raw::Text(text) => Setting::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// What a master reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub route: String,
}

impl Key {
    /// The socket's file name: `USER@HOST:PORT:ROUTE`, or, for a host or
    /// user with other characters (a Name tag may hold anything), a hash.
    pub fn file_name(&self) -> String {
        let plain = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if plain(&self.user) && plain(&self.host) && plain(&self.route) {
            format!("{}@{}:{}:{}", self.user, self.host, self.port, self.route)
        } else {
            let text = format!(
                "{}\0{}\0{}\0{}",
                self.user, self.host, self.port, self.route
            );
            format!("h-{:016x}", fnv1a(text.as_bytes()))
        }
    }

    /// The key a socket's file name spells out (hashed names spell none).
    pub fn parse(name: &str) -> Option<Key> {
        let (user, rest) = name.split_once('@')?;
        let mut parts = rest.rsplitn(3, ':');
        let route = parts.next()?;
        let port = parts.next()?.parse().ok()?;
        let host = parts.next()?;
        Some(Key {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            route: route.to_owned(),
        })
    }

    /// The socket's path in `dir`, short enough for a socket.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        let path = dir.join(self.file_name());
        if path.as_os_str().len() <= MAX_SOCKET_PATH {
            return path;
        }
        let text = format!(
            "{}\0{}\0{}\0{}",
            self.user, self.host, self.port, self.route
        );
        dir.join(format!("h-{:016x}", fnv1a(text.as_bytes())))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether a master answers at `path`. A socket nobody answers is stale
/// (its master died): it is removed, so that a new master can take its
/// place (ssh will not bind over an existing file).
pub fn live(path: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => true,
        Err(_) => {
            if std::fs::symlink_metadata(path).is_ok() {
                tracing::debug!(path = %path.display(), "removing a stale master socket");
                let _ = std::fs::remove_file(path);
            }
            false
        }
    }
}

/// The live master for `host`, `port` and `route` in `dir`: for `user`, or,
/// with no user given, for whichever user the last connection chose.
pub fn find(
    dir: &Path,
    user: Option<&str>,
    host: &str,
    port: u16,
    route: &str,
) -> Option<(Key, PathBuf)> {
    if let Some(user) = user {
        let key = Key {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            route: route.to_owned(),
        };
        let path = key.path_in(dir);
        return live(&path).then_some((key, path));
    }
    masters(dir)
        .into_iter()
        .filter(|m| {
            m.key
                .as_ref()
                .is_some_and(|k| k.host == host && k.port == port && k.route == route)
        })
        .max_by_key(|m| m.since)
        .filter(|m| live(&m.path))
        .and_then(|m| Some((m.key?, m.path)))
}

/// ssh's options for a connection that becomes the master at `path` (or
/// joins it, should another connection have become it meanwhile). After its
/// session, ssh keeps the master in the background for `persist`, its
/// standard input, output and error on /dev/null.
pub fn master_options(path: &Path, persist: Duration) -> anyhow::Result<Vec<OsString>> {
    let mut control_path = OsString::from("ControlPath=");
    control_path.push(ssh_word(path.as_os_str(), true)?);
    Ok(vec![
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        control_path,
        "-o".into(),
        format!("ControlPersist={}", persist.as_secs().max(1)).into(),
    ])
}

/// ssh's options for a session through the master at `path`.
pub fn client_options(path: &Path) -> anyhow::Result<Vec<OsString>> {
    let mut control_path = OsString::from("ControlPath=");
    control_path.push(ssh_word(path.as_os_str(), true)?);
    Ok(vec![
        "-o".into(),
        "ControlMaster=no".into(),
        "-o".into(),
        control_path,
    ])
}

/// Asks the master at `path` to end (`ssh -O exit`), ending its sessions;
/// whether it did.
pub fn stop(ssh_program: &std::ffi::OsStr, path: &Path) -> bool {
    let Ok(mut args) = client_options(path) else {
        return false;
    };
    args.splice(0..0, ["-O".into(), "exit".into()]);
    args.extend(["--".into(), "eic-connect-master".into()]);
    std::process::Command::new(ssh_program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A master socket found in the directory.
#[derive(Debug, Clone)]
pub struct Master {
    pub path: PathBuf,
    /// What it reaches (none for hashed names).
    pub key: Option<Key>,
    /// When the socket was made.
    pub since: SystemTime,
}

/// The master sockets in `dir` (live or not), newest first.
pub fn masters(dir: &Path) -> Vec<Master> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Master> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            if !meta.file_type().is_socket() {
                return None;
            }
            let name = entry.file_name().to_str()?.to_owned();
            Some(Master {
                path: entry.path(),
                key: Key::parse(&name),
                since: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.since));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(Setting::parse(""), Ok(Setting::On));
        assert_eq!(Setting::parse("off"), Ok(Setting::Off));
        assert_eq!(
            Setting::parse("90"),
            Ok(Setting::For(Duration::from_secs(90)))
        );
        assert_eq!(
            Setting::parse("10m"),
            Ok(Setting::For(Duration::from_secs(600)))
        );
        assert_eq!(
            Setting::parse("2h"),
            Ok(Setting::For(Duration::from_secs(7200)))
        );
        for bad in ["10x", "-1", "m", "1.5h", "9999h", "10 m"] {
            assert!(Setting::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Setting::Off.persist(), None);
        assert_eq!(Setting::On.persist(), Some(DEFAULT_PERSIST));
    }

    #[test]
    fn socket_names_round_trip_and_odd_names_are_hashed() {
        let key = Key {
            user: "ec2-user".into(),
            host: "i-0123456789abcdef0".into(),
            port: 22,
            route: "auto".into(),
        };
        assert_eq!(key.file_name(), "ec2-user@i-0123456789abcdef0:22:auto");
        assert_eq!(Key::parse(&key.file_name()), Some(key.clone()));
        let odd = Key {
            host: "web server/1".into(),
            ..key.clone()
        };
        let name = odd.file_name();
        assert!(name.starts_with("h-") && name.len() == 18, "{name}");
        assert_eq!(Key::parse(&name), None);
        let long = Key {
            host: "a".repeat(200),
            ..key
        };
        let path = long.path_in(Path::new("/run/user/1000/eic-connect-reuse"));
        assert!(
            path.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            path.display()
        );
    }

    #[test]
    fn a_socket_nobody_answers_is_stale_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ec2-user@i-1:22:auto");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(live(&path));
        drop(listener);
        assert!(path.exists(), "a dropped listener leaves its file");
        assert!(!live(&path));
        assert!(!path.exists(), "the stale socket is removed");
    }
}
