//! The one place an ssh session is prepared: the runtime directory, the
//! agent serving the pushed key, the host-key policy, agent forwarding, and
//! ssh's options — for connect, run and serial alike.
//!
//! Every path written into an ssh option goes through [`ssh_word`], because
//! ssh (8.7+) splits `-o` values into words and expands `%` tokens and
//! `${VAR}` in them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::agent::{Agent, PushWatch, RuntimeDir};
use crate::aws::{self, Clients};
use crate::dirs;
use crate::error::Failure;
use crate::hostkeys::{self, ConsoleKeys, Pins, Verdict};
use crate::key::EphemeralKey;
use crate::settings::{HostKeyPolicy, Reach};

/// Which host keys ssh may accept.
#[derive(Debug, Clone)]
pub enum HostKeys {
    /// Recorded in `known_hosts` under the host-key alias on first use, and
    /// required to match after.
    FirstUse { known_hosts: PathBuf },
    /// Exactly these (console keys, or the serial console's fingerprint).
    Pinned(Pins),
}

/// What one session needs.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The user's own ssh options, in order. They come first, so where they
    /// set the same ssh_config option as eic-connect, theirs wins.
    pub user_options: &'a [OsString],
    /// eic-connect's options for this path (a ProxyCommand, run's defaults).
    pub path_options: Vec<OsString>,
    pub verbose: u8,
    pub os_user: &'a str,
    /// The name host keys are kept under: the instance id (or the serial
    /// console's host), never an address AWS hands to another instance.
    pub host_key_alias: &'a str,
    /// Where ssh connects: an address, or a placeholder behind a ProxyCommand.
    pub host: &'a str,
    pub host_keys: HostKeys,
    pub command: &'a [OsString],
}

/// A prepared session: run [`Session::args`], then drop it to wipe the key
/// and remove the runtime directory.
pub struct Session {
    args: Vec<OsString>,
    report: PathBuf,
    // Dropped in this order: the agent (key wiped), then the directory.
    _agent: Agent,
    _dir: RuntimeDir,
    /// The jump host's session when ssh reaches the instance through one
    /// (its agent serves the ProxyCommand's ssh): kept as long as this one.
    hop: Option<Box<Session>>,
}

impl Session {
    /// Starts the agent with `key`, offered once `push` is done and wiped
    /// 60 s after, and builds ssh's arguments.
    pub fn prepare(key: EphemeralKey, push: PushWatch, spec: &Spec<'_>) -> anyhow::Result<Self> {
        let dir = RuntimeDir::create()?;
        let agent = Agent::start_in(key, &dir, push, user_agent())?;
        let report = dir.path().join("host-key-report");
        let args = ssh_args(spec, &dir.identity_file(), agent.socket(), &report)?;
        Ok(Session {
            args,
            report,
            _agent: agent,
            _dir: dir,
            hop: None,
        })
    }

    /// This session, reaching the instance through the jump host `hop`
    /// serves: both live, and their keys are wiped, together.
    pub fn through(mut self, hop: Session) -> Session {
        self.hop = Some(Box::new(hop));
        self
    }

    /// The jump host's session, if any.
    pub fn hop(&self) -> Option<&Session> {
        self.hop.as_deref()
    }

    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// What the pinning helper saw (pinned host keys only).
    pub fn verdicts(&self) -> Vec<Verdict> {
        crate::hostkeys::read_report(&self.report)
    }
}

/// The user's own agent (`SSH_AUTH_SOCK`), where forwarded connections go.
pub fn user_agent() -> Option<PathBuf> {
    std::env::var_os("SSH_AUTH_SOCK")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// `--dry-run`: ssh's command line for `spec`, with placeholders for the
/// paths a real session makes.
pub fn dry_run_command(program: &OsStr, spec: &Spec<'_>) -> anyhow::Result<String> {
    let args = ssh_args(
        spec,
        Path::new("<runtime dir>/id.pub"),
        Path::new("<runtime dir>/agent.sock"),
        Path::new("<runtime dir>/host-key-report"),
    )?;
    Ok(crate::ssh::display_command(program, &args))
}

/// ssh's arguments for `spec` (without the program name).
pub fn ssh_args(
    spec: &Spec<'_>,
    identity_file: &Path,
    agent_socket: &Path,
    report: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let (mut args, forward) = without_forwarding(spec.user_options);
    for _ in 0..spec.verbose {
        args.push("-v".into());
    }
    args.extend(spec.path_options.iter().cloned());
    let mut opt = |key: &str, value: OsString| {
        let mut kv = OsString::from(key);
        kv.push("=");
        kv.push(value);
        args.extend(["-o".into(), kv]);
    };
    // The agent the user asked to forward is theirs, never eic-connect's.
    match forward {
        Forward::Unsaid => {}
        Forward::No => opt("ForwardAgent", "no".into()),
        Forward::Yes => match user_agent() {
            Some(theirs) => opt("ForwardAgent", ssh_word(theirs.as_os_str(), true)?),
            None => {
                eprintln!(
                    "eic-connect: warning: -A: there is no agent to forward (SSH_AUTH_SOCK is not set)"
                );
                opt("ForwardAgent", "no".into());
            }
        },
        Forward::Socket(path) => opt("ForwardAgent", path),
    }
    opt("IdentitiesOnly", "yes".into());
    opt("IdentityFile", ssh_word(identity_file.as_os_str(), true)?);
    opt("IdentityAgent", ssh_word(agent_socket.as_os_str(), true)?);
    opt("HostKeyAlias", spec.host_key_alias.into());
    match &spec.host_keys {
        HostKeys::FirstUse { known_hosts } => {
            opt(
                "UserKnownHostsFile",
                ssh_word(known_hosts.as_os_str(), true)?,
            );
            opt("StrictHostKeyChecking", "accept-new".into());
        }
        HostKeys::Pinned(pins) => {
            opt("UserKnownHostsFile", "/dev/null".into());
            opt("GlobalKnownHostsFile", "/dev/null".into());
            opt("KnownHostsCommand", pinning_command(report, pins)?);
            opt("StrictHostKeyChecking", "yes".into());
        }
    }
    args.extend([
        "-l".into(),
        spec.os_user.into(),
        "--".into(),
        spec.host.into(),
    ]);
    if let Some(command) = crate::ssh::remote_command(spec.command) {
        args.push(command);
    }
    Ok(args)
}

/// What the user's options say about agent forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Forward {
    Unsaid,
    No,
    /// `-A` or `ForwardAgent yes`: the agent in `SSH_AUTH_SOCK`.
    Yes,
    /// `ForwardAgent /path` or `ForwardAgent $VAR`.
    Socket(OsString),
}

/// The user's options without `-A`, `-a` and `-o ForwardAgent`, and what
/// they meant, as ssh reads them: `-A`/`-a` set it whatever came before, an
/// `-o` only if nothing set it yet.
fn without_forwarding(options: &[OsString]) -> (Vec<OsString>, Forward) {
    let mut kept = Vec::with_capacity(options.len());
    let mut forward = Forward::Unsaid;
    let mut words = options.iter();
    while let Some(word) = words.next() {
        match word.as_bytes() {
            b"-A" => forward = Forward::Yes,
            b"-a" => forward = Forward::No,
            b"-o" => {
                let Some(value) = words.next() else {
                    kept.push(word.clone());
                    continue;
                };
                let text = value.to_string_lossy();
                let split = text.split_once(['=', ' ', '\t']);
                match split {
                    Some((k, v)) if k.trim().eq_ignore_ascii_case("forwardagent") => {
                        if forward == Forward::Unsaid {
                            let v = v.trim_start_matches(['=', ' ', '\t']).trim();
                            forward = match v.to_ascii_lowercase().as_str() {
                                "yes" | "true" => Forward::Yes,
                                "no" | "false" => Forward::No,
                                // In ssh's own syntax: passed on as written.
                                _ => Forward::Socket(v.into()),
                            };
                        }
                    }
                    _ => kept.extend([word.clone(), value.clone()]),
                }
            }
            _ => kept.push(word.clone()),
        }
    }
    (kept, forward)
}

/// `value` as one word of an ssh_config option: double-quoted when it holds
/// a space, a quote or a backslash (ssh splits option values into words),
/// and with `%` doubled when ssh expands tokens in it (`expands`). A `${`
/// cannot be written so that ssh leaves it alone, so it is refused.
pub fn ssh_word(value: &OsStr, expands: bool) -> anyhow::Result<OsString> {
    let text = value.to_str().ok_or_else(|| {
        anyhow::Error::new(
            Failure::new(format!(
                "{:?} is not valid UTF-8, which ssh's options cannot carry",
                crate::sanitize::terminal_safe(&value.to_string_lossy())
            ))
            .hint("set HOME, XDG_RUNTIME_DIR, XDG_STATE_HOME or TMPDIR to a plainer path"),
        )
    })?;
    if text.chars().any(char::is_control) || (expands && text.contains("${")) {
        return Err(anyhow::Error::new(
            Failure::new(format!(
                "ssh cannot be given the path {:?}: it holds a control character or \"${{\"",
                crate::sanitize::terminal_safe(text)
            ))
            .hint("set HOME, XDG_RUNTIME_DIR, XDG_STATE_HOME or TMPDIR to a plainer path"),
        ));
    }
    let mut out = String::with_capacity(text.len() + 2);
    let quote = text.is_empty() || text.contains([' ', '\t', '"', '\'', '\\', '#']);
    if quote {
        out.push('"');
    }
    for c in text.chars() {
        match c {
            '%' if expands => out.push_str("%%"),
            '"' | '\\' if quote => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    if quote {
        out.push('"');
    }
    Ok(out.into())
}

/// The `KnownHostsCommand` that makes ssh accept exactly `pins`, reporting
/// what it saw to `report`. ssh splits it into words and expands tokens in
/// all but the first.
pub fn pinning_command(report: &Path, pins: &Pins) -> anyhow::Result<OsString> {
    let exe = std::env::current_exe().context("cannot find eic-connect's own path")?;
    let mut line = ssh_word(exe.as_os_str(), false)?;
    for arg in pins.helper_args(report) {
        line.push(" ");
        if arg.starts_with('%') {
            line.push(&arg);
        } else {
            line.push(ssh_word(OsStr::new(&arg), true)?);
        }
    }
    Ok(line)
}

/// The host-key policy for one instance: first use, or (with
/// `--verify-host-key`) the keys its console shows, fetched unless given.
pub async fn host_keys(
    reach: &Reach,
    clients: &Clients,
    instance_id: &str,
    console: Option<String>,
) -> anyhow::Result<HostKeys> {
    let known_hosts = dirs::known_hosts_file(&reach.state_dir)?;
    let HostKeyPolicy::Console { allow_unverified } = reach.host_keys else {
        return Ok(HostKeys::FirstUse { known_hosts });
    };
    let console = match console {
        Some(text) => text,
        None => aws::diag::console_output(clients, instance_id).await?,
    };
    Ok(
        match console_pins(allow_unverified, instance_id, &console, &known_hosts)? {
            Some(pins) => HostKeys::Pinned(pins),
            None => HostKeys::FirstUse { known_hosts },
        },
    )
}

/// `--verify-host-key`: the keys the instance printed on its console, also
/// recorded for it in eic-connect's known_hosts. With none there, an error,
/// or (`--allow-unverified`) a warning and the usual first-use policy.
fn console_pins(
    allow_unverified: bool,
    instance_id: &str,
    console: &str,
    known_hosts: &Path,
) -> anyhow::Result<Option<Pins>> {
    let why = match hostkeys::parse_console(console) {
        ConsoleKeys::Keys(keys) => {
            let shown: Vec<String> = keys
                .iter()
                .map(|k| format!("{} {}", k.kind(), k.fingerprint))
                .collect();
            tracing::debug!(keys = %shown.join(", "), "pinning host keys from the console output");
            if let Err(err) = hostkeys::record(known_hosts, instance_id, &keys) {
                eprintln!(
                    "eic-connect: warning: could not record the host keys in {}: {err}",
                    known_hosts.display()
                );
            }
            return Ok(Some(Pins {
                keys,
                fingerprints: Vec::new(),
            }));
        }
        ConsoleKeys::Empty => "its console output has an empty host-key block",
        ConsoleKeys::NotFound if console.trim().is_empty() => "its console output is empty",
        ConsoleKeys::NotFound => "its console output has no host-key block",
    };
    if allow_unverified {
        eprintln!(
            "eic-connect: warning: cannot verify the host key of {instance_id}: {why}; \
             accepting it on first use (--allow-unverified)"
        );
        return Ok(None);
    }
    crate::error::fail(
        Failure::new(format!("cannot verify the host key of {instance_id}: {why}"))
            .hint(format!(
                "cloud-init prints the keys once, on first boot, and the output can lag boot by minutes; \
                 look at it with: aws ec2 get-console-output --instance-id {instance_id} --output text"
            ))
            .hint("to connect anyway, trusting the key on first use, add --allow-unverified"),
    )
}

/// After ssh exited 255: whether it was because the instance offered a key
/// the console did not list, and what to say.
pub fn host_key_refusal(instance_id: &str, pins: &Pins, verdicts: &[Verdict]) -> Option<Failure> {
    if verdicts.iter().any(|v| matches!(v, Verdict::Match { .. })) {
        return None;
    }
    let Verdict::Mismatch {
        fingerprint,
        algorithm,
    } = verdicts.first()?
    else {
        return None;
    };
    let mut failure = Failure::new(format!(
        "{instance_id} answered with host key {algorithm} {fingerprint}, which is not among the keys it printed on its console"
    ));
    for key in &pins.keys {
        failure = failure.detail(format!("console: {} {}", key.kind(), key.fingerprint));
    }
    Some(
        failure
            .hint("something may be intercepting the connection: do not log in until you know why")
            .hint("if the instance's host keys were replaced after first boot, the console no longer shows the current ones; \
                   connect without --verify-host-key only if you can confirm the new key another way"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(Into::into).collect()
    }

    fn spec<'a>(user_options: &'a [OsString], command: &'a [OsString]) -> Spec<'a> {
        Spec {
            user_options,
            path_options: Vec::new(),
            verbose: 1,
            os_user: "ec2-user",
            host_key_alias: "i-0123456789abcdef0",
            host: "3.1.2.3",
            host_keys: HostKeys::FirstUse {
                known_hosts: "/home/u/.local/state/eic-connect/known_hosts".into(),
            },
            command,
        }
    }

    fn shown(spec: &Spec<'_>) -> String {
        let args = ssh_args(
            spec,
            Path::new("/run/x/id.pub"),
            Path::new("/run/x/agent.sock"),
            Path::new("/run/x/report"),
        )
        .unwrap();
        crate::ssh::display_command("ssh".as_ref(), &args)
    }

    #[test]
    fn builds_the_full_command_line() {
        let user = os(&["-p", "2222", "-o", "StrictHostKeyChecking=yes"]);
        let cmd = os(&["uptime"]);
        assert_eq!(
            shown(&spec(&user, &cmd)),
            "ssh -p 2222 -o StrictHostKeyChecking=yes -v -o IdentitiesOnly=yes -o IdentityFile=/run/x/id.pub \
             -o IdentityAgent=/run/x/agent.sock -o HostKeyAlias=i-0123456789abcdef0 \
             -o UserKnownHostsFile=/home/u/.local/state/eic-connect/known_hosts -o StrictHostKeyChecking=accept-new \
             -l ec2-user -- 3.1.2.3 uptime"
        );
    }

    #[test]
    fn the_host_always_follows_double_dash() {
        let args = ssh_args(
            &spec(&[], &[]),
            Path::new("/a"),
            Path::new("/b"),
            Path::new("/c"),
        )
        .unwrap();
        let dd = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dd + 1], "3.1.2.3");
        assert_eq!(args.len(), dd + 2);
    }

    #[test]
    fn pinned_host_keys_are_checked_strictly_against_the_command_alone() {
        let mut s = spec(&[], &[]);
        s.host_keys = HostKeys::Pinned(Pins::default());
        let shown = shown(&s);
        assert!(
            shown.contains("-o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null"),
            "{shown}"
        );
        assert!(shown.contains("__known-hosts --report /run/x/report -- %I %H %t %K"));
        assert!(shown.contains("-o StrictHostKeyChecking=yes"), "{shown}");
        assert!(!shown.contains("accept-new"));
    }

    #[test]
    fn forwarding_is_rewritten_to_the_users_own_agent() {
        let (kept, f) = without_forwarding(&os(&["-A", "-p", "22"]));
        assert_eq!((kept, f), (os(&["-p", "22"]), Forward::Yes));
        // -A/-a set it whatever came before; -o only when nothing did.
        assert_eq!(
            without_forwarding(&os(&["-o", "ForwardAgent=no", "-A"])).1,
            Forward::Yes
        );
        assert_eq!(
            without_forwarding(&os(&["-A", "-o", "ForwardAgent=no"])).1,
            Forward::Yes
        );
        assert_eq!(
            without_forwarding(&os(&["-o", "forwardagent yes", "-o", "ForwardAgent=no"])).1,
            Forward::Yes
        );
        assert_eq!(without_forwarding(&os(&["-A", "-a"])).1, Forward::No);
        assert_eq!(
            without_forwarding(&os(&["-o", "ForwardAgent=/tmp/a.sock"])).1,
            Forward::Socket("/tmp/a.sock".into())
        );
        assert_eq!(without_forwarding(&os(&["-t"])).1, Forward::Unsaid);
        let shown = shown(&spec(&os(&["-a"]), &[]));
        assert!(shown.contains("-o ForwardAgent=no"), "{shown}");
    }

    #[test]
    fn words_survive_ssh_splitting_and_expansion() {
        let w = |s: &str, e| ssh_word(OsStr::new(s), e).unwrap();
        assert_eq!(w("/run/user/1/x", true), "/run/user/1/x");
        assert_eq!(w("/tmp/a b/%h", true), "\"/tmp/a b/%%h\"");
        assert_eq!(w("/tmp/a b/%h", false), "\"/tmp/a b/%h\"");
        assert_eq!(w("/tmp/$x/\"q\\", true), "\"/tmp/$x/\\\"q\\\\\"");
        assert!(ssh_word(OsStr::new("/tmp/${HOME}"), true).is_err());
        assert!(ssh_word(OsStr::new("/tmp/a\nb"), true).is_err());
    }

    /// Found by fuzzing: a path that is not UTF-8 was shown raw, control
    /// characters included.
    #[test]
    fn a_path_that_is_not_utf8_is_refused_in_terminal_safe_words() {
        use std::os::unix::ffi::OsStrExt;
        let path = OsStr::from_bytes(b"/home/\xff\x15\x1b[2J/run");
        let err = ssh_word(path, true).expect_err("refused");
        let text = format!("{err:#}");
        assert!(text.contains("is not valid UTF-8"), "{text}");
        assert!(!text.chars().any(crate::sanitize::needs_escape), "{text:?}");
    }
}
