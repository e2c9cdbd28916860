//! `eic-connect ssh-config`: a block for `~/.ssh/config` that makes plain
//! `ssh i-0abc…`, `scp`, `sftp`, `rsync -e ssh`, git and editors' remote-SSH
//! reach instances through `eic-connect proxy`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::session::ssh_word;
use crate::settings::SshConfig;
use crate::ssh::shell_quote;

pub fn run(settings: &SshConfig) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find eic-connect's own path")?;
    // The block names eic-connect's known_hosts file; its directory must
    // exist for ssh to record host keys there.
    let known_hosts = crate::dirs::known_hosts_file(&settings.state_dir)?;
    let keyed_by_id = ssh_has_known_hosts_command(&crate::settings::ssh_program());
    let block = render(&exe, &known_hosts, settings, keyed_by_id)?;
    if settings.jump.is_some() && settings.prefix == crate::cli::DEFAULT_PREFIX {
        eprintln!(
            "eic-connect: warning: with --jump and the default prefix, this block takes the plain block's names ({}web-1); \
             give it a prefix of its own, e.g. --prefix eic-via-bastion-",
            settings.prefix
        );
    }
    crate::error::print_stdout(&block)?;
    Ok(ExitCode::SUCCESS)
}

/// The config block. Paths are absolute, so it works whatever the
/// environment of the program running ssh.
///
/// ssh runs the ProxyCommand with `sh -c` after replacing `%h`, `%p` and
/// `%r` with the host, port and user as typed: every word, those three
/// included, is single-quoted so that nothing in them reaches the shell
/// (and names holding a single quote do not match the block at all).
///
/// With `keyed_by_id` (OpenSSH 8.5+), host keys are checked and recorded
/// by `eic-connect __known-hosts` under the instance id the proxy found, as
/// eic-connect records them itself; older ssh records them under the name.
pub fn render(
    exe: &Path,
    known_hosts: &Path,
    settings: &SshConfig,
    keyed_by_id: bool,
) -> anyhow::Result<String> {
    let quote = |s: &str| -> String {
        let quoted = String::from_utf8_lossy(&shell_quote(s.as_bytes())).into_owned();
        quoted.replace('%', "%%")
    };
    // eic-connect's own path goes into the ProxyCommand as text: it must
    // be text ssh can carry (not lossily changed into another path).
    ssh_word(exe.as_os_str(), false)?;
    let key_dir = &settings.key_dir;
    // One line per option: a line break in a value would end it and start
    // a directive of the value's choosing.
    let globals = settings.globals.args();
    for word in globals
        .iter()
        .chain([&settings.prefix, &settings.os_user])
        .chain(&settings.jump)
    {
        if word.chars().any(char::is_control) {
            return Err(anyhow::Error::new(
                crate::error::Failure::usage(format!(
                    "{:?} cannot go into an ssh config: it holds a control character",
                    crate::sanitize::terminal_safe(word)
                ))
                .hint(
                    "check --profile, --region, --prefix, --os-user and --jump (and AWS_PROFILE)",
                ),
            ));
        }
    }
    let mut proxy: Vec<String> = vec![quote(&exe.to_string_lossy()), "proxy".into()];
    proxy.extend(globals.iter().map(|g| quote(g)));
    proxy.extend([
        "--prefix".into(),
        quote(&settings.prefix),
        "--key-dir".into(),
        quote(&key_dir.to_string_lossy()),
    ]);
    if let Some(jump) = &settings.jump {
        proxy.extend(["--jump".into(), quote(jump)]);
    }
    // Reuse: ssh keeps each connection as a master for later ssh, scp,
    // rsync and git runs, its socket named as eic-connect names its own
    // (so `eic-connect --reuse i-…` joins it too).
    let reuse = match settings.reuse {
        Some(persist) => {
            proxy.push("--master".into());
            let route = settings.globals.via.unwrap_or_default().as_str();
            format!(
                "ControlMaster auto\n    \
                 ControlPath {}\n    \
                 ControlPersist {}\n    ",
                in_dir(&settings.reuse_dir, &format!("/%r@%h:%p:{route}"))?,
                persist.as_secs().max(1)
            )
        }
        // A block through a jump host shares no connection, even with a
        // broader block below it that does.
        None if settings.jump.is_some() => "ControlPath none\n    ".to_owned(),
        None => String::new(),
    };
    proxy.extend(["--".into(), "'%h' '%p' '%r'".into()]);
    // The proxy's slot and the agent socket it serves there; ssh expands
    // %r and %h itself.
    let agent = in_dir(key_dir, "/%r@%h.sock")?;
    let slot = in_dir(key_dir, "/%r@%h")?;
    let known_hosts_word = ssh_word(OsStr::new(known_hosts), true)?;
    let host_keys = if keyed_by_id {
        // ssh splits the command into words and expands tokens in all but
        // the first.
        format!(
            "UserKnownHostsFile /dev/null\n    \
             GlobalKnownHostsFile /dev/null\n    \
             KnownHostsCommand {exe} __known-hosts --record {file} --slot {slot} -- %I %H %t %K\n    \
             StrictHostKeyChecking yes\n",
            exe = ssh_word(exe.as_os_str(), false)?.to_string_lossy(),
            file = known_hosts_word.to_string_lossy(),
        )
    } else {
        format!(
            "# (this ssh is older than OpenSSH 8.5: host keys are kept under the name)\n    \
             UserKnownHostsFile {}\n    \
             StrictHostKeyChecking accept-new\n",
            known_hosts_word.to_string_lossy()
        )
    };
    // Through a jump host, only names with the prefix: `i-*` is the plain
    // block's, and the first block to match a host sets its ProxyCommand.
    let (intro, patterns, matched) = match &settings.jump {
        Some(jump) => (
            format!(
                "# eic-connect: reach EC2 instances through the jump host {jump}, by Name\n\
                 # tag or id with the prefix (ssh {prefix}web-1, ssh {prefix}i-0abc…).\n\
                 # Keys are pushed per connection by EC2 Instance Connect (the jump\n\
                 # host, if an instance, gets one of its own), live at most 60 seconds\n\
                 # and are never written to disk: eic-connect serves them from its own\n\
                 # agent sockets. Put this block above any block whose Host patterns\n\
                 # also match {prefix}* (ssh takes each option from the first block\n\
                 # that sets it).\n",
                prefix = settings.prefix
            ),
            format!("{}*", settings.prefix),
            format!("{}*", settings.prefix),
        ),
        None => (
            format!(
                "# eic-connect: reach EC2 instances by id (ssh i-0abc…) or by Name tag\n\
                 # with the prefix (ssh {}web-1). Keys are pushed per connection by\n\
                 # EC2 Instance Connect, live at most 60 seconds and are never written\n\
                 # to disk: eic-connect serves them from its own agent socket.\n",
                settings.prefix
            ),
            format!("i-* {}*", settings.prefix),
            format!("i-*,{}*", settings.prefix),
        ),
    };
    Ok(format!(
        "{intro}\
         # A user name holding a quote could break out of the ProxyCommand's\n\
         # quotes with ssh older than 9.6, which does not refuse it: no proxy.\n\
         Match host \"{matched}\" user \"*'*\"\n    \
             ProxyCommand none\n\
         Host {patterns} \"!*'*\"\n    \
             User {user}\n    \
             ProxyCommand {proxy}\n    \
             IdentityAgent {agent}\n    \
             {reuse}{host_keys}",
        user = settings.os_user,
        proxy = proxy.join(" "),
    ))
}

/// `dir` as one ssh word, with `tail` (holding tokens for ssh) appended
/// inside any quotes.
fn in_dir(dir: &Path, tail: &str) -> anyhow::Result<String> {
    let mut word = ssh_word(dir.as_os_str(), true)?
        .to_string_lossy()
        .into_owned();
    match word.strip_suffix('"') {
        Some(open) => Ok(format!("{open}{tail}\"")),
        None => {
            word.push_str(tail);
            Ok(word)
        }
    }
}

/// Whether the ssh that will read the block knows `KnownHostsCommand`
/// (OpenSSH 8.5+); when `ssh -V` cannot tell, it is assumed.
fn ssh_has_known_hosts_command(ssh: &OsStr) -> bool {
    let Ok(out) = std::process::Command::new(ssh).arg("-V").output() else {
        return true;
    };
    let text = String::from_utf8_lossy(&out.stderr);
    openssh_at_least(&text, (8, 5)).unwrap_or(true)
}

/// `OpenSSH_9.2p1 …` → whether it is at least `(major, minor)`.
fn openssh_at_least(version: &str, want: (u32, u32)) -> Option<bool> {
    let rest = version.trim_start().strip_prefix("OpenSSH_")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::CommandLineGlobals;

    fn settings_for_test() -> SshConfig {
        SshConfig {
            prefix: "eic-".into(),
            state_dir: "/home/u/.local/state/eic-connect".into(),
            os_user: "ubuntu".into(),
            key_dir: "/run/user/1000/eic-connect-proxy".into(),
            reuse: Some(std::time::Duration::from_secs(600)),
            reuse_dir: "/run/user/1000/eic-connect-reuse".into(),
            globals: CommandLineGlobals {
                region: Some("eu-west-1".into()),
                ..CommandLineGlobals::default()
            },
            jump: None,
        }
    }

    /// A block through a jump host matches only its own prefix, so that it
    /// can sit beside the plain block (and blocks for other jump hosts):
    /// `i-*` stays the plain block's, and the agent sockets and master
    /// sockets are named by the host as typed, prefix included.
    #[test]
    fn a_block_through_a_jump_host_keeps_to_its_prefix() {
        let exe = Path::new("/opt/eic-connect");
        let known_hosts = Path::new("/k/known_hosts");
        let mut settings = settings_for_test();
        settings.prefix = "eic-via-bastion-".into();
        settings.jump = Some("admin@bastion-1:2222".into());
        let block = render(exe, known_hosts, &settings, true).unwrap();
        let lines: Vec<&str> = block.lines().collect();
        assert!(
            lines[0].contains("through the jump host admin@bastion-1:2222"),
            "{block}"
        );
        assert!(
            lines.contains(&"Match host \"eic-via-bastion-*\" user \"*'*\""),
            "{block}"
        );
        assert!(
            lines.contains(&"Host eic-via-bastion-* \"!*'*\""),
            "{block}"
        );
        assert!(!block.contains("i-*"), "{block}");
        assert!(
            lines.contains(&"    ProxyCommand /opt/eic-connect proxy --region eu-west-1 --prefix eic-via-bastion- --key-dir /run/user/1000/eic-connect-proxy --jump admin@bastion-1:2222 --master -- '%h' '%p' '%r'"),
            "{block}"
        );
        assert!(
            lines.contains(&"    IdentityAgent /run/user/1000/eic-connect-proxy/%r@%h.sock"),
            "{block}"
        );
        assert!(
            lines.contains(&"    ControlPath /run/user/1000/eic-connect-reuse/%r@%h:%p:auto"),
            "{block}"
        );
        // Without reuse it shares no connection, whatever a block below says.
        settings.reuse = None;
        let block = render(exe, known_hosts, &settings, true).unwrap();
        assert!(block.contains("\n    ControlPath none\n"), "{block}");
        assert!(!block.contains("--master"), "{block}");
        // The plain block is as it was: no ControlPath line without reuse.
        let mut plain = settings_for_test();
        plain.reuse = None;
        let block = render(exe, known_hosts, &plain, true).unwrap();
        assert!(!block.contains("ControlPath"), "{block}");
        assert!(block.contains("Host i-* eic-* "), "{block}");
    }

    #[test]
    fn renders_a_block_with_quoted_paths() {
        let settings = settings_for_test();
        let exe = Path::new("/opt/my tools/eic-connect");
        let known_hosts = Path::new("/home/u/.local/state/eic-connect/known_hosts");
        let block = render(exe, known_hosts, &settings, true).unwrap();
        assert_eq!(
            block.lines().skip(4).collect::<Vec<_>>(),
            [
                "# A user name holding a quote could break out of the ProxyCommand's",
                "# quotes with ssh older than 9.6, which does not refuse it: no proxy.",
                "Match host \"i-*,eic-*\" user \"*'*\"",
                "    ProxyCommand none",
                "Host i-* eic-* \"!*'*\"",
                "    User ubuntu",
                "    ProxyCommand '/opt/my tools/eic-connect' proxy --region eu-west-1 --prefix eic- --key-dir /run/user/1000/eic-connect-proxy --master -- '%h' '%p' '%r'",
                "    IdentityAgent /run/user/1000/eic-connect-proxy/%r@%h.sock",
                "    ControlMaster auto",
                "    ControlPath /run/user/1000/eic-connect-reuse/%r@%h:%p:auto",
                "    ControlPersist 600",
                "    UserKnownHostsFile /dev/null",
                "    GlobalKnownHostsFile /dev/null",
                "    KnownHostsCommand \"/opt/my tools/eic-connect\" __known-hosts --record /home/u/.local/state/eic-connect/known_hosts --slot /run/user/1000/eic-connect-proxy/%r@%h -- %I %H %t %K",
                "    StrictHostKeyChecking yes",
            ]
        );
        let old = render(exe, known_hosts, &settings, false).unwrap();
        assert!(old.contains("    UserKnownHostsFile /home/u/.local/state/eic-connect/known_hosts\n    StrictHostKeyChecking accept-new\n"), "{old}");
        assert!(!old.contains("KnownHostsCommand"));
    }

    #[test]
    fn reads_openssh_versions() {
        assert_eq!(
            openssh_at_least("OpenSSH_9.2p1 Debian-2+deb12u6, OpenSSL 3.0", (8, 5)),
            Some(true)
        );
        assert_eq!(openssh_at_least("OpenSSH_8.5p1", (8, 5)), Some(true));
        assert_eq!(
            openssh_at_least("OpenSSH_8.2p1 Ubuntu", (8, 5)),
            Some(false)
        );
        assert_eq!(openssh_at_least("OpenSSH_10.0", (8, 5)), Some(true));
        assert_eq!(openssh_at_least("Sun_SSH_1.1", (8, 5)), None);
    }

    /// What ssh does with the ProxyCommand: replace the tokens with what was
    /// typed, then `sh -c`. Whatever the host and user hold, the proxy gets
    /// them as single words and no shell syntax in them runs.
    #[test]
    fn hostile_hosts_and_users_never_reach_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SshConfig {
            prefix: "eic-".into(),
            state_dir: "/home/u/.local/state/eic-connect".into(),
            os_user: "ec2-user".into(),
            key_dir: dir.path().join("k e%y"),
            reuse: None,
            reuse_dir: dir.path().join("r e%u"),
            globals: CommandLineGlobals::default(),
            jump: Some(format!(
                "u@gw$(touch {})%h",
                dir.path().join("pwned").display()
            )),
        };
        let args_file = dir.path().join("args");
        // A stand-in for eic-connect that records its arguments.
        let exe = dir.path().join("fake proxy");
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
                args_file.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let block = render(&exe, Path::new("/k"), &settings, true).unwrap();
        let line = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ProxyCommand "))
            .find(|command| *command != "none")
            .unwrap();
        let pwned = dir.path().join("pwned");
        let p = pwned.display();
        for (host, user) in [
            (format!("eic-$(touch {p})"), "ec2-user".to_owned()),
            (
                format!("eic-`touch {p}`;touch {p}"),
                format!("a$(touch {p})"),
            ),
            (format!("eic-x|touch {p}&"), format!("u;touch {p}")),
            ("eic-%h".to_owned(), "%r".to_owned()),
        ] {
            // ssh's expansion: %% → %, %h, %p, %r → the values.
            let mut expanded = String::new();
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    expanded.push(c);
                    continue;
                }
                match chars.next() {
                    Some('%') => expanded.push('%'),
                    Some('h') => expanded.push_str(&host),
                    Some('p') => expanded.push_str("22"),
                    Some('r') => expanded.push_str(&user),
                    other => panic!("unexpected token {other:?}"),
                }
            }
            let status = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("exec {expanded}"))
                .status()
                .unwrap();
            assert!(status.success());
            assert!(!pwned.exists(), "{host:?} / {user:?} ran a command");
            let args = std::fs::read_to_string(&args_file).unwrap();
            let args: Vec<&str> = args.lines().collect();
            assert_eq!(
                &args[args.len() - 3..],
                [host.as_str(), "22", user.as_str()]
            );
            assert!(
                args.contains(&settings.key_dir.to_str().unwrap()),
                "{args:?}"
            );
            let jump = args.iter().position(|a| *a == "--jump").unwrap();
            assert_eq!(args[jump + 1], settings.jump.as_deref().unwrap());
        }
    }

    /// Found by fuzzing: for ssh older than 8.5 a path that is not UTF-8
    /// went into the ProxyCommand changed (another path); now it is refused,
    /// as for newer ssh.
    #[test]
    fn an_executable_path_ssh_cannot_carry_is_refused_for_every_ssh() {
        use std::os::unix::ffi::OsStrExt;
        let settings = settings_for_test();
        for path in [&b"/opt/eic\xff-connect"[..], b"/opt/eic\nconnect"] {
            let exe = Path::new(OsStr::from_bytes(path));
            for keyed_by_id in [true, false] {
                let err = render(exe, Path::new("/k/known_hosts"), &settings, keyed_by_id)
                    .expect_err("refused");
                let text = format!("{err:#}");
                assert!(!text.chars().any(crate::sanitize::needs_escape), "{text:?}");
            }
        }
    }

    /// Found by fuzzing: a line break in a value (a profile name here)
    /// ended the ProxyCommand line and started a directive of its own.
    #[test]
    fn values_with_line_breaks_never_reach_the_block() {
        let exe = Path::new("/opt/eic-connect");
        let mut settings = settings_for_test();
        settings.globals.profile = Some("dev\n    ProxyCommand sh -c evil".into());
        let err = render(exe, Path::new("/k/known_hosts"), &settings, true).expect_err("refused");
        assert!(
            format!("{err:#}").contains("cannot go into an ssh config"),
            "{err:#}"
        );
        let mut settings = settings_for_test();
        settings.prefix = "eic-\r".into();
        assert!(render(exe, Path::new("/k/known_hosts"), &settings, false).is_err());
    }
}
