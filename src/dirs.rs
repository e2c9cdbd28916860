//! Every place eic-connect keeps something, with one set of rules.
//!
//! - config: `EIC_CONNECT_CONFIG`, else `$XDG_CONFIG_HOME/eic-connect/config.toml`,
//!   else `~/.config/eic-connect/config.toml`;
//! - state (known_hosts, remembered OS users): `$XDG_STATE_HOME/eic-connect`,
//!   else `~/.local/state/eic-connect`;
//! - runtime (agent sockets, public keys, host-key reports): `$XDG_RUNTIME_DIR`,
//!   else `$TMPDIR`, else `/tmp`.
//!
//! An XDG variable that is empty or not an absolute path is ignored, as the
//! XDG Base Directory specification says. Everything is read through `get`,
//! so the rules are tested without touching the process environment.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::{Failure, fail};

/// The environment, as these rules read it.
pub trait Env {
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

fn absolute(env: &dyn Env, name: &str) -> Option<PathBuf> {
    env.var(name).map(PathBuf::from).filter(|p| p.is_absolute())
}

fn home(env: &dyn Env) -> Option<PathBuf> {
    absolute(env, "HOME")
}

/// The config file, if any (`EIC_CONNECT_CONFIG` set but empty: none).
pub fn config_file(env: &dyn Env) -> Option<PathBuf> {
    if let Some(explicit) = env.var("EIC_CONNECT_CONFIG") {
        return (!explicit.is_empty()).then(|| PathBuf::from(explicit));
    }
    let base = absolute(env, "XDG_CONFIG_HOME").or_else(|| home(env).map(|h| h.join(".config")))?;
    Some(base.join("eic-connect").join("config.toml"))
}

/// eic-connect's state directory (not created here).
pub fn state_dir(env: &dyn Env) -> PathBuf {
    absolute(env, "XDG_STATE_HOME")
        .or_else(|| home(env).map(|h| h.join(".local/state")))
        .unwrap_or_else(|| runtime_base(env))
        .join("eic-connect")
}

/// Where per-connection runtime directories and the proxy's sockets go.
pub fn runtime_base(env: &dyn Env) -> PathBuf {
    absolute(env, "XDG_RUNTIME_DIR")
        .or_else(|| absolute(env, "TMPDIR"))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The ssh-config proxy's directory of agent sockets and state: one per
/// user, private. Without `$XDG_RUNTIME_DIR` it is in `/tmp`, not
/// `$TMPDIR`: socket paths are limited to about 100 bytes, and macOS's
/// `$TMPDIR` alone takes half of that.
pub fn proxy_dir(env: &dyn Env) -> PathBuf {
    match absolute(env, "XDG_RUNTIME_DIR") {
        Some(base) => base.join("eic-connect-proxy"),
        // A shared directory: the name carries the uid, and the directory
        // is checked to be this user's and private before use.
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/tmp/eic-connect-proxy-{}", unsafe {
            libc::getuid()
        })),
    }
}

/// Where master connections' sockets go (connection reuse): one directory
/// per user, private, beside the proxy's (same rules, same reasons).
pub fn reuse_dir(env: &dyn Env) -> PathBuf {
    match absolute(env, "XDG_RUNTIME_DIR") {
        Some(base) => base.join("eic-connect-reuse"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/tmp/eic-connect-reuse-{}", unsafe {
            libc::getuid()
        })),
    }
}

/// eic-connect's known_hosts file in `state_dir`, which is created (0700)
/// if missing, so that ssh can record keys there.
pub fn known_hosts_file(state_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("could not create {}", state_dir.display()))?;
    Ok(known_hosts_in(state_dir))
}

/// Where eic-connect's known_hosts file is in `state_dir`.
pub fn known_hosts_in(state_dir: &Path) -> PathBuf {
    state_dir.join("known_hosts")
}

/// Creates `dir` (0700) or checks that an existing one is this user's and
/// private.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
                return fail(
                    Failure::new(format!(
                        "{} is not a private directory of this user",
                        dir.display()
                    ))
                    .hint("remove it: eic-connect makes it again, private (0700)"),
                );
            }
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("could not create {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Map(BTreeMap<&'static str, &'static str>);

    impl Env for Map {
        fn var(&self, name: &str) -> Option<OsString> {
            self.0.get(name).map(Into::into)
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> Map {
        Map(pairs.iter().copied().collect())
    }

    #[test]
    fn config_file_choices() {
        let p = |pairs: &[(&'static str, &'static str)]| config_file(&env(pairs));
        assert_eq!(
            p(&[("HOME", "/home/u")]),
            Some(PathBuf::from("/home/u/.config/eic-connect/config.toml"))
        );
        assert_eq!(
            p(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/x")]),
            Some(PathBuf::from("/x/eic-connect/config.toml"))
        );
        // A relative XDG_CONFIG_HOME is ignored, as the spec says.
        assert_eq!(
            p(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "rel")]),
            Some(PathBuf::from("/h/.config/eic-connect/config.toml"))
        );
        assert_eq!(
            p(&[("EIC_CONNECT_CONFIG", "/etc/e.toml"), ("HOME", "/h")]),
            Some(PathBuf::from("/etc/e.toml"))
        );
        assert_eq!(p(&[("EIC_CONNECT_CONFIG", ""), ("HOME", "/h")]), None);
        assert_eq!(p(&[]), None);
    }

    #[test]
    fn state_and_runtime_follow_the_same_rules() {
        let e = env(&[("HOME", "/h"), ("XDG_STATE_HOME", ""), ("TMPDIR", "rel")]);
        assert_eq!(state_dir(&e), PathBuf::from("/h/.local/state/eic-connect"));
        assert_eq!(runtime_base(&e), PathBuf::from("/tmp"));
        let e = env(&[
            ("HOME", "/h"),
            ("XDG_STATE_HOME", "/s"),
            ("XDG_RUNTIME_DIR", "/run/user/7"),
        ]);
        assert_eq!(state_dir(&e), PathBuf::from("/s/eic-connect"));
        assert_eq!(runtime_base(&e), PathBuf::from("/run/user/7"));
        assert_eq!(
            proxy_dir(&e),
            PathBuf::from("/run/user/7/eic-connect-proxy")
        );
        let e = env(&[("TMPDIR", "/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T")]);
        assert!(
            proxy_dir(&e)
                .to_string_lossy()
                .starts_with("/tmp/eic-connect-proxy-"),
            "short enough for socket paths wherever TMPDIR is"
        );
        // No HOME at all: state goes beside runtime files rather than nowhere.
        assert_eq!(
            state_dir(&e),
            PathBuf::from("/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T/eic-connect")
        );
    }

    #[test]
    fn refuses_a_dir_that_is_not_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&open).is_err());
        let fresh = dir.path().join("fresh");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        ensure_private_dir(&fresh).unwrap();
    }
}
