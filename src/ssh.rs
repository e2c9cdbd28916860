//! ssh's command-line grammar (pure) and running ssh.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::process::ExitStatus;

use anyhow::Context;

use crate::error::Failure;

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

/// ssh's port as the user's options set it (`-p N` or `-o Port=N`; ssh
/// takes the first).
pub fn port(options: &[OsString]) -> Option<u16> {
    let mut i = 0;
    while i < options.len() {
        let opt = options[i].as_bytes();
        if (opt == b"-p" || opt == b"-o") && i + 1 < options.len() {
            let value = options[i + 1].to_string_lossy();
            if opt == b"-p" {
                return value.trim().parse().ok();
            }
            if let Some((k, v)) = value.split_once(['=', ' ', '\t'])
                && k.trim().eq_ignore_ascii_case("port")
            {
                return v.trim_start_matches(['=', ' ']).trim().parse().ok();
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
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
    run_beside(program, args, std::future::ready(Ok(())), None).await
}

/// [`run`], with `beside` (the key push) finishing alongside. If it fails,
/// ssh is stopped and its error is the outcome. If ssh ends first, it is
/// still awaited, and if ssh failed, a failed push is the outcome: a
/// refused push is reported as such, never as ssh's bare "Permission
/// denied". Not when ssh was stopped — a signal killed it, or the user
/// sent one (Ctrl-C, SIGTERM, SIGHUP): then its status is returned at
/// once, and the push is abandoned.
///
/// With `hold`, ssh's standard error is held back until `hold` says
/// whether it counts: shown (and followed) on `true`, dropped on `false` —
/// for an ssh started on a guess that the lookup may prove wrong.
pub async fn run_beside(
    program: &OsStr,
    args: &[OsString],
    beside: impl std::future::Future<Output = anyhow::Result<()>>,
    hold: Option<tokio::sync::oneshot::Receiver<bool>>,
) -> anyhow::Result<ExitStatus> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing handlers (rather than SIG_IGN) matters: handlers are reset to
    // the default in the child on exec, ignored signals would stay ignored.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;

    let mut command = tokio::process::Command::new(program);
    command.args(args);
    if hold.is_some() {
        command.stderr(std::process::Stdio::piped());
    }
    end_with_parent(&mut command);
    let mut child = command
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
    let held = match (hold, child.stderr.take()) {
        (Some(hold), Some(stderr)) => Some(tokio::spawn(held_stderr(stderr, hold))),
        _ => None,
    };
    let mut beside = std::pin::pin!(beside);
    let mut beside_done = false;
    // The user (or ssh's own end) asked to stop: a push still in flight is
    // not waited for then.
    let mut stopping = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for ssh")?;
                use std::os::unix::process::ExitStatusExt;
                if !beside_done && (stopping || status.signal().is_some()) {
                    tracing::debug!(?status, "ssh was stopped; not waiting for the push");
                    if let Some(held) = held {
                        held.abort();
                    }
                    return Ok(status);
                }
                // Otherwise never cut a push short (what follows it, such
                // as remembering the OS user, would be lost); it also
                // decides whether held output is shown.
                let result = if beside_done { Ok(()) } else { beside.await };
                if let Some(held) = held {
                    let _ = held.await;
                }
                if !status.success() {
                    result?;
                } else if let Err(err) = result {
                    tracing::debug!("ssh succeeded; the push did not: {err:#}");
                }
                return Ok(status);
            }
            result = &mut beside, if !beside_done => {
                beside_done = true;
                if let Err(err) = result {
                    tracing::debug!("stopping ssh: {err:#}");
                    forward(pid, libc::SIGTERM);
                    let _ = child.wait().await;
                    if let Some(held) = held {
                        let _ = held.await;
                    }
                    return Err(err);
                }
            }
            // Ctrl-C and Ctrl-\ reach ssh from the terminal itself.
            _ = interrupt.recv() => stopping = true,
            _ = quit.recv() => stopping = true,
            _ = terminate.recv() => {
                stopping = true;
                forward(pid, libc::SIGTERM);
            }
            _ = hangup.recv() => {
                stopping = true;
                forward(pid, libc::SIGHUP);
            }
        }
    }
}

/// Lets standard error go ([`quiet_stderr`]) once each of a number of
/// steps is done (connected; the key pushed): an error before any of them
/// still reaches the user.
#[derive(Debug)]
pub struct QuietWhen {
    left: std::sync::atomic::AtomicUsize,
}

impl QuietWhen {
    pub fn after(steps: usize) -> std::sync::Arc<QuietWhen> {
        std::sync::Arc::new(QuietWhen {
            left: std::sync::atomic::AtomicUsize::new(steps),
        })
    }

    /// One step is done; the last one lets standard error go.
    pub fn done(&self) {
        use std::sync::atomic::Ordering;
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before == Ok(1) {
            quiet_stderr();
        }
    }
}

/// ssh's standard error, held until `hold` says whether to show it.
async fn held_stderr(
    mut from: tokio::process::ChildStderr,
    hold: tokio::sync::oneshot::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = Vec::new();
    let mut hold = std::pin::pin!(hold);
    let mut buf = [0u8; 4096];
    let show = loop {
        tokio::select! {
            decided = &mut hold => break decided.unwrap_or(false),
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => break (&mut hold).await.unwrap_or(false),
                Ok(n) => held.extend_from_slice(&buf[..n]),
            },
        }
    };
    let mut out = tokio::io::stderr();
    if show {
        let _ = out.write_all(&held).await;
        let _ = tokio::io::copy(&mut from, &mut out).await;
    } else {
        let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
    }
}

/// Points standard error at /dev/null. For a ProxyCommand whose connection
/// may become ssh's shared master (ControlPersist): ssh puts the master's
/// own output on /dev/null when it goes to the background, but the
/// ProxyCommand keeps the standard error it was started with — often a
/// pipe (`out=$(ssh host cmd 2>&1)`, CI logs) whose reader would then wait
/// for the master to end. Called once connected, so that every error
/// before (lookup, push, endpoint) still reaches the user.
pub fn quiet_stderr() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto this process's own standard error.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO);
        }
    }
}

/// For a ProxyCommand whose connection may become a shared master: ssh
/// (without `-v`) starts it with standard error on /dev/null when
/// ControlPersist is set, which would hide every error before the
/// connection is up — a refused push, an unknown instance. Takes ssh's own
/// standard error back (Linux: `/proc/PPID/fd/2`; else the terminal, if
/// any) until [`quiet_stderr`] lets it go once connected.
pub fn reclaim_stderr() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (Ok(null), Ok(ours)) = (
        std::fs::metadata("/dev/null"),
        std::fs::metadata("/proc/self/fd/2").or_else(|_| std::fs::metadata("/dev/fd/2")),
    ) else {
        return;
    };
    if ours.rdev() != null.rdev() || ours.ino() != null.ino() {
        return;
    }
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    let theirs = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{parent}/fd/2"))
        .ok()
        .filter(|file| shares_safely(file, parent))
        .or_else(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/tty")
                .ok()
        });
    if let Some(file) = theirs {
        // SAFETY: dup2 onto this process's own standard error.
        unsafe {
            libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO);
        }
    }
}

/// Whether writing to `file`, opened anew from ssh's standard error, mixes
/// well with ssh's own writes: a pipe or terminal does; a regular file only
/// if ssh appends to it too (`2>>log`), or each would write over the other
/// from its own offset (`2>log`).
fn shares_safely(file: &std::fs::File, parent: libc::pid_t) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return true;
    }
    let Ok(info) = std::fs::read_to_string(format!("/proc/{parent}/fdinfo/2")) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_APPEND as u32 != 0)
}

/// Makes the child get SIGHUP when eic-connect dies, however it dies (a
/// SIGKILL gives no chance to pass a signal on): ssh then ends its session
/// and its ProxyCommand, and no ssh outlives the agent serving its key.
/// Linux only (`PR_SET_PDEATHSIG`); spawned from the runtime's one thread,
/// which lives as long as the process.
pub fn end_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: only async-signal-safe calls (prctl, getppid, raise)
        // between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::raise(libc::SIGHUP);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
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

    #[test]
    fn finds_the_ssh_port() {
        assert_eq!(port(&os(&[])), None);
        assert_eq!(port(&os(&["-A", "-p", "2222"])), Some(2222));
        assert_eq!(port(&os(&["-o", "Port=2200", "-p", "22"])), Some(2200));
        assert_eq!(port(&os(&["-o", "port 2201"])), Some(2201));
        assert_eq!(port(&os(&["-o", "User=x"])), None);
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
