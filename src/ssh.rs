//! Building ssh's command line (pure) and running it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::ExitStatus;

use anyhow::Context;

use crate::error::Failure;

/// What ssh needs from eic-connect for one connection.
#[derive(Debug, Clone)]
pub struct SshInvocation<'a> {
    /// The user's own ssh options, in order. They come first, so where they
    /// set the same ssh_config option as eic-connect, theirs wins.
    pub user_options: &'a [OsString],
    pub verbose: u8,
    pub os_user: &'a str,
    pub instance_id: &'a str,
    /// Where to connect: an IP address (or a placeholder in `--dry-run`).
    pub host: &'a str,
    /// The public half of the ephemeral key, naming which agent key to use.
    pub identity_file: &'a Path,
    pub agent_socket: &'a Path,
    pub known_hosts: &'a Path,
    /// Pinned host keys: a `KnownHostsCommand` that answers with exactly the
    /// keys to trust (see `hostkeys`). When set, ssh checks strictly against
    /// it alone and `known_hosts` is not consulted.
    pub known_hosts_command: Option<&'a OsStr>,
    pub command: &'a [OsString],
}

impl SshInvocation<'_> {
    /// ssh's arguments (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.user_options.to_vec();
        for _ in 0..self.verbose {
            args.push("-v".into());
        }
        let opt = |key: &str, value: &OsStr| -> [OsString; 2] {
            let mut kv = OsString::from(key);
            kv.push("=");
            kv.push(value);
            ["-o".into(), kv]
        };
        args.extend(opt("IdentitiesOnly", "yes".as_ref()));
        args.extend(opt("IdentityFile", self.identity_file.as_os_str()));
        args.extend(opt("IdentityAgent", self.agent_socket.as_os_str()));
        // Known-hosts entries follow the instance, not an address that AWS
        // hands to another instance tomorrow.
        args.extend(opt("HostKeyAlias", self.instance_id.as_ref()));
        match self.known_hosts_command {
            None => {
                args.extend(opt("UserKnownHostsFile", self.known_hosts.as_os_str()));
                args.extend(opt("StrictHostKeyChecking", "accept-new".as_ref()));
            }
            Some(command) => {
                args.extend(opt("UserKnownHostsFile", "/dev/null".as_ref()));
                args.extend(opt("GlobalKnownHostsFile", "/dev/null".as_ref()));
                args.extend(opt("KnownHostsCommand", command));
                args.extend(opt("StrictHostKeyChecking", "yes".as_ref()));
            }
        }
        args.extend([
            "-l".into(),
            self.os_user.into(),
            "--".into(),
            self.host.into(),
        ]);
        if let Some(command) = remote_command(self.command) {
            args.push(command);
        }
        args
    }
}

/// The remote command as ssh sends it. One argument is a command line for the
/// remote shell, as with ssh (`'cd /srv && make'`). Several are quoted for a
/// POSIX shell so each argument reaches the instance exactly as given.
pub fn remote_command(command: &[OsString]) -> Option<OsString> {
    match command {
        [] => None,
        [single] => Some(single.clone()),
        several => {
            let quoted: Vec<Vec<u8>> = several.iter().map(|a| shell_quote(a.as_bytes())).collect();
            Some(OsString::from_vec(quoted.join(&b' ')))
        }
    }
}

/// Quotes `arg` for a POSIX shell, leaving plainly safe words as they are.
pub fn shell_quote(arg: &[u8]) -> Vec<u8> {
    let safe = |b: &u8| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(b);
    if !arg.is_empty() && arg.iter().all(safe) {
        return arg.to_vec();
    }
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// A command line for display (`--dry-run`, `-v`): each word shell-quoted.
pub fn display_command(program: &OsStr, args: &[OsString]) -> String {
    let words: Vec<String> = std::iter::once(program)
        .chain(args.iter().map(OsString::as_os_str))
        .map(|w| String::from_utf8_lossy(&shell_quote(w.as_bytes())).into_owned())
        .collect();
    words.join(" ")
}

/// Runs ssh in the foreground and waits for it. Keyboard signals reach ssh
/// directly (same process group) and are ignored here so that ssh's exit
/// status is what we report; SIGTERM and SIGHUP are passed on to ssh.
pub async fn run(program: &OsStr, args: &[OsString]) -> anyhow::Result<ExitStatus> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing handlers (rather than SIG_IGN) matters: handlers are reset to
    // the default in the child on exec, ignored signals would stay ignored.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;

    let mut child = tokio::process::Command::new(program)
        .args(args)
        .spawn()
        .map_err(|err| {
            let shown = program.to_string_lossy();
            let failure = if err.kind() == std::io::ErrorKind::NotFound {
                Failure::new(format!("cannot run {shown}: not found"))
                    .hint("install the OpenSSH client (e.g. apt-get install openssh-client), or set EIC_CONNECT_SSH to its path")
            } else {
                Failure::new(format!("cannot run {shown}: {err}"))
            };
            anyhow::Error::new(failure)
        })?;
    let pid = child.id();
    tracing::debug!(pid, "ssh started");
    loop {
        tokio::select! {
            status = child.wait() => return status.context("waiting for ssh"),
            _ = interrupt.recv() => {}
            _ = quit.recv() => {}
            _ = terminate.recv() => forward(pid, libc::SIGTERM),
            _ = hangup.recv() => forward(pid, libc::SIGHUP),
        }
    }
}

fn forward(pid: Option<u32>, sig: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(Into::into).collect()
    }

    fn invocation<'a>(user_options: &'a [OsString], command: &'a [OsString]) -> SshInvocation<'a> {
        SshInvocation {
            user_options,
            verbose: 1,
            os_user: "ec2-user",
            instance_id: "i-0123456789abcdef0",
            host: "3.1.2.3",
            identity_file: Path::new("/run/x/id.pub"),
            agent_socket: Path::new("/run/x/agent.sock"),
            known_hosts: Path::new("/home/u/.local/state/eic-connect/known_hosts"),
            known_hosts_command: None,
            command,
        }
    }

    #[test]
    fn builds_the_full_command_line() {
        let user = os(&["-p", "2222", "-o", "StrictHostKeyChecking=yes"]);
        let cmd = os(&["uptime"]);
        let args = invocation(&user, &cmd).args();
        assert_eq!(
            display_command("ssh".as_ref(), &args),
            "ssh -p 2222 -o StrictHostKeyChecking=yes -v -o IdentitiesOnly=yes -o IdentityFile=/run/x/id.pub \
             -o IdentityAgent=/run/x/agent.sock -o HostKeyAlias=i-0123456789abcdef0 \
             -o UserKnownHostsFile=/home/u/.local/state/eic-connect/known_hosts -o StrictHostKeyChecking=accept-new \
             -l ec2-user -- 3.1.2.3 uptime"
        );
    }

    #[test]
    fn the_host_always_follows_double_dash() {
        let args = invocation(&[], &[]).args();
        let dd = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dd + 1], "3.1.2.3");
        assert_eq!(args.len(), dd + 2);
    }

    #[test]
    fn pinned_host_keys_are_checked_strictly_against_the_command_alone() {
        let mut inv = invocation(&[], &[]);
        inv.known_hosts_command = Some("/bin/eic-connect __known-hosts".as_ref());
        let shown = display_command("ssh".as_ref(), &inv.args());
        assert!(
            shown.contains(
                "-o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null \
                 -o 'KnownHostsCommand=/bin/eic-connect __known-hosts' -o StrictHostKeyChecking=yes"
            ),
            "{shown}"
        );
        assert!(!shown.contains("accept-new"));
    }

    #[test]
    fn remote_command_quoting() {
        assert_eq!(remote_command(&[]), None);
        assert_eq!(
            remote_command(&os(&["cd /srv && make"])).unwrap(),
            "cd /srv && make"
        );
        assert_eq!(remote_command(&os(&["make", "test"])).unwrap(), "make test");
        assert_eq!(
            remote_command(&os(&["printf", "%s|", "a  b", "it's", "$HOME", ""])).unwrap(),
            "printf '%s|' 'a  b' 'it'\\''s' '$HOME' ''"
        );
        assert_eq!(
            remote_command(&os(&["echo", "a;rm -rf /"])).unwrap(),
            "echo 'a;rm -rf /'"
        );
    }
}
