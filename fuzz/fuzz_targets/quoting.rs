//! Words quoted for a POSIX shell, read back by a real one: every word
//! `shell_quote` quotes, the remote command built from several words, and
//! the `ssh-config` block's ProxyCommand (after ssh's own `%` expansion)
//! reach `/bin/sh` as exactly the arguments they were meant to be.
//! Refusals are errors, never panics.
//!
//! Input: words separated by NUL (no argument can hold one). The first
//! byte's bit 0 chooses the ssh that reads the block (OpenSSH 8.5+ or
//! older); the first words become eic-connect's path, the key directory,
//! `--region`, `--profile`, `--eice-id`, `--prefix`, `--os-user`, and the
//! host and user ssh puts in place of `%h` and `%r`.
//!
//! One `sh` reads every execution's commands from its standard input (a
//! process per execution would be far too slow); each command only prints
//! its arguments, so nothing carries over from one execution to the next
//! unless quoting failed, which fails the execution anyway.
#![no_main]

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use eic_connect::commands::ssh_config::render;
use eic_connect::settings::{Command, Layers, resolve};
use eic_connect::ssh::{remote_command, shell_quote};
use libfuzzer_sys::fuzz_target;

/// A long-lived `sh` reading commands on its standard input, and what it
/// prints.
struct Shell {
    _child: Child,
    stdin: ChildStdin,
    stdout: Receiver<Vec<u8>>,
    serial: u64,
}

impl Shell {
    fn start() -> Shell {
        let mut child = Process::new("/bin/sh")
            .arg("-s")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/bin/sh");
        let stdin = child.stdin.take().expect("sh's stdin");
        let mut out = child.stdout.take().expect("sh's stdout");
        let (tx, stdout) = channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Shell {
            _child: child,
            stdin,
            stdout,
            serial: 0,
        }
    }

    /// Runs `script` (a list of `printf '%s\0' …` commands) and returns
    /// what it printed before its end mark.
    fn run(&mut self, script: &[u8]) -> Vec<u8> {
        self.serial += 1;
        let mark = format!("\u{2}end {}\u{2}", self.serial).into_bytes();
        let mut line = script.to_vec();
        line.extend_from_slice(
            format!("\nprintf '{}'\n", String::from_utf8_lossy(&mark)).as_bytes(),
        );
        self.stdin.write_all(&line).expect("writing to sh");
        self.stdin.flush().expect("writing to sh");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        // Until the mark: a quote left open swallows it, and sh waits.
        while !got.ends_with(&mark) {
            match self
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "sh is still reading: the quoting left something open\nscript: {:?}\nprinted: {:?}",
                    String::from_utf8_lossy(script),
                    String::from_utf8_lossy(&got)
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "sh exited\nscript: {:?}\nprinted: {:?}",
                    String::from_utf8_lossy(script),
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        match got.strip_suffix(mark.as_slice()) {
            Some(printed) => printed.to_vec(),
            None => panic!(
                "sh printed more than the arguments\nscript: {:?}\nprinted: {:?}",
                String::from_utf8_lossy(script),
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

thread_local! {
    static SHELL: std::cell::RefCell<Shell> = std::cell::RefCell::new(Shell::start());
    static CLAP: std::cell::RefCell<clap::Command> =
        std::cell::RefCell::new(eic_connect::cli::command());
}

/// What `printf '%s\0' ARGS…` prints.
fn printed(args: &[&[u8]]) -> Vec<u8> {
    if args.is_empty() {
        return vec![0];
    }
    let mut out = Vec::new();
    for arg in args {
        out.extend_from_slice(arg);
        out.push(0);
    }
    out
}

/// ssh's expansion of a ProxyCommand: `%%`, `%h`, `%p` and `%r`; any other
/// token would be ssh's error.
fn ssh_expand(line: &str, host: &[u8], user: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = line.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'%') => out.push(b'%'),
            Some(b'h') => out.extend_from_slice(host),
            Some(b'p') => out.extend_from_slice(b"22"),
            Some(b'r') => out.extend_from_slice(user),
            other => panic!("ssh cannot expand %{other:?} in {line:?}"),
        }
    }
    out
}

/// `ssh-config` on a command line, resolved as the program resolves it.
fn ssh_config_settings(words: &[&[u8]]) -> Option<eic_connect::settings::SshConfig> {
    let mut args: Vec<OsString> = vec!["eic-connect".into(), "ssh-config".into()];
    for (flag, word) in [
        "--region",
        "--profile",
        "--eice-id",
        "--prefix",
        "--os-user",
    ]
    .into_iter()
    .zip(words)
    {
        if !word.is_empty() {
            args.push(flag.into());
            args.push(OsStr::from_bytes(word).to_owned());
        }
    }
    let cli = CLAP
        .with_borrow_mut(|clap| eic_connect::cli::parse_with(clap, args))
        .ok()?;
    match resolve(cli, &Layers::default()) {
        Ok(Command::SshConfig(settings)) => Some(settings),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let keyed_by_id = flags & 1 != 0;
    let words: Vec<&[u8]> = data.split(|&b| b == 0).collect();

    let mut script: Vec<u8> = Vec::new();
    let mut expected: Vec<u8> = Vec::new();
    let mut command = |quoted: &[u8], meant: &[&[u8]]| {
        script.extend_from_slice(b"printf '%s\\0' ");
        script.extend_from_slice(quoted);
        script.extend_from_slice(b"\nprintf '\\1'\n");
        expected.extend(printed(meant));
        expected.push(1);
    };

    // Each word on its own, and all of them as one line.
    for word in &words {
        command(&shell_quote(word), &[word]);
    }
    let quoted: Vec<Vec<u8>> = words.iter().map(|w| shell_quote(w)).collect();
    command(&quoted.join(&b' '), &words);

    // The remote command: several words are quoted, each reaching the
    // instance as it is (one is a command line of its own, as with ssh).
    let several: Vec<OsString> = words
        .iter()
        .map(|w| OsString::from_vec(w.to_vec()))
        .collect();
    if several.len() >= 2 {
        let line = remote_command(&several).expect("a remote command");
        command(line.as_bytes(), &words);
    }

    // The ssh-config block's ProxyCommand, as ssh hands it to sh.
    if let [exe, key_dir, rest @ ..] = &words[..]
        && let Some(mut settings) = ssh_config_settings(rest)
    {
        let host = rest.get(5).copied().unwrap_or(b"i-0123456789abcdef0");
        let user = rest.get(6).copied().unwrap_or(b"ec2-user");
        settings.key_dir = OsStr::from_bytes(key_dir).into();
        let exe = Path::new(OsStr::from_bytes(exe));
        match render(exe, Path::new("/k/known_hosts"), &settings, keyed_by_id) {
            Err(err) => {
                let message = format!("{err:#}");
                assert!(
                    !message.chars().any(eic_connect::sanitize::needs_escape),
                    "not terminal-safe: {message:?}"
                );
            }
            Ok(block) => {
                let lines: Vec<&str> = block.lines().collect();
                let proxy: Vec<&str> = lines
                    .iter()
                    .filter_map(|l| l.trim_start().strip_prefix("ProxyCommand "))
                    // The Match block's, for user names holding a quote.
                    .filter(|command| *command != "none")
                    .collect();
                assert_eq!(proxy.len(), 1, "one ProxyCommand line: {block:?}");
                // Names holding a single quote do not match the block's
                // Host line ("!*'*"). ssh 9.6 and later refuse a user name
                // holding one on the command line; the block relies on that
                // (%r is single-quoted).
                if !host.contains(&b'\'') && !user.contains(&b'\'') {
                    let line = ssh_expand(proxy[0], host, user);
                    let mut meant: Vec<&[u8]> = vec![exe.as_os_str().as_bytes(), b"proxy"];
                    let globals = settings.globals.args();
                    meant.extend(globals.iter().map(|g| g.as_bytes()));
                    meant.extend([
                        &b"--prefix"[..],
                        settings.prefix.as_bytes(),
                        b"--key-dir",
                        key_dir,
                        b"--",
                        host,
                        b"22",
                        user,
                    ]);
                    command(&line, &meant);
                }
            }
        }
    }

    let got = SHELL.with_borrow_mut(|sh| sh.run(&script));
    assert!(
        got == expected,
        "sh read other arguments\nscript: {:?}\nprinted:  {:?}\nexpected: {:?}",
        String::from_utf8_lossy(&script),
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
});
