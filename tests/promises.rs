//! The README's promises on every path: what reaches a shell, what is on
//! disk, which agent is forwarded, which host keys are trusted, and that
//! odd but legal environments work. Real binary, real ssh and sshd.

mod support;

use support::cmd::{
    assert_no_private_key_file, assert_signed, block_ssh, eic, run, ssh_config, stderr, stdout,
};

use std::process::{Command, Stdio};

use support::agent::UserAgent;
use support::{InstanceSpec, TestBed};

/// The user's own ssh-agent, holding one key of theirs.
fn user_agent(bed: &TestBed) -> (UserAgent, String) {
    let agent = UserAgent::start(bed);
    let fingerprint = agent.add_new_key(bed, "users-own-key");
    (agent, fingerprint)
}

/// `-A` forwards the user's own agent, and never the in-process one that
/// holds the ephemeral key.
#[test]
fn forwarding_gives_the_instance_the_users_agent_not_the_ephemeral_key() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let (agent, fingerprint) = user_agent(&bed);
    for forward in [&["-A"][..], &["-o", "ForwardAgent=yes"]] {
        let mut c = eic(&bed);
        c.env("SSH_AUTH_SOCK", &agent.socket)
            .args(forward)
            .args([&web.id, "--", "ssh-add", "-l"]);
        let out = run(c);
        assert!(out.status.success(), "{forward:?}: {}", stderr(&out));
        let listed = stdout(&out);
        assert!(listed.contains(&fingerprint), "{forward:?}: {listed}");
        assert!(!listed.contains("eic-connect"), "{forward:?}: {listed}");
        assert_eq!(listed.lines().count(), 1, "{listed}");
    }
    // Without -A nothing is forwarded, whatever the agent.
    let mut c = eic(&bed);
    c.env("SSH_AUTH_SOCK", &agent.socket).args([
        &web.id,
        "--",
        "sh",
        "-c",
        "echo \"[$SSH_AUTH_SOCK]\"",
    ]);
    let out = run(c);
    assert_eq!(stdout(&out), "[]\n", "{}", stderr(&out));
    assert_signed(&bed);
}

/// Through the ssh-config block, `ssh -A` also forwards the user's agent:
/// the proxy's agent relays a forwarded connection to it.
#[test]
fn forwarding_through_the_ssh_config_block_gives_the_users_agent() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let (agent, fingerprint) = user_agent(&bed);
    let config = ssh_config(&bed);
    let mut c = block_ssh(&bed, &config);
    c.env("SSH_AUTH_SOCK", &agent.socket)
        .args(["-A", &web.id, "ssh-add", "-l"]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains(&fingerprint), "{listed}");
    assert!(!listed.contains("eic-connect"), "{listed}");
}

/// Through the ssh-config block no private key is ever a file: not while
/// ssh authenticates (the remote command runs after that), not after, not
/// after the proxy is killed, and the user's agent is left alone.
#[test]
fn the_ssh_config_proxy_never_writes_a_private_key() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    let (agent, fingerprint) = user_agent(&bed);
    // The remote command runs while the proxy is alive: it looks for keys.
    let probe = format!(
        "grep -rl 'PRIVATE KEY' {} {} 2>/dev/null; echo probed",
        bed.dir().join("run").display(),
        bed.dir().join("tmp").display()
    );
    for with_agent in [false, true] {
        let mut c = block_ssh(&bed, &config);
        if with_agent {
            c.env("SSH_AUTH_SOCK", &agent.socket);
        }
        c.args(["eic-web-1", &probe]);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "probed\n",
            "a key file existed during the session"
        );
        assert_no_private_key_file(&bed, "after the session");
    }
    // The user's agent was never given the ephemeral key.
    let listed = agent.listed();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains(&fingerprint));

    // The proxy that pushed the key still serves it; SIGKILL it: what it
    // leaves (a dead socket, its state) holds no secret, and the next
    // connection replaces the socket and logs in.
    let key_dir = bed.dir().join("run/eic-connect-proxy");
    let killed = kill_processes_mentioning(&key_dir.to_string_lossy());
    assert!(killed > 0, "a proxy was still serving the key");
    assert_no_private_key_file(&bed, "after SIGKILL");
    let mut c = block_ssh(&bed, &config);
    c.args(["eic-web-1", "echo", "again"]);
    let out = c.output().unwrap();
    assert_eq!(stdout(&out), "again\n", "{}", stderr(&out));
}

/// SIGKILLs every process whose command line mentions `needle`; how many.
fn kill_processes_mentioning(needle: &str) -> usize {
    let mut found: Vec<(i32, String)> = Vec::new();
    match std::fs::read_dir("/proc") {
        Ok(entries) => {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                found.push((pid, String::from_utf8_lossy(&cmdline).into_owned()));
            }
        }
        // No /proc (macOS): ps lists the same.
        Err(_) => {
            let out = Command::new("ps")
                .args(["-axo", "pid=,command="])
                .output()
                .expect("ps");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let line = line.trim_start();
                let (pid, command) = line.split_once(' ').unwrap_or((line, ""));
                if let Ok(pid) = pid.parse() {
                    found.push((pid, command.to_owned()));
                }
            }
        }
    }
    let mut killed = 0;
    for (pid, command) in found {
        if command.contains(needle) && pid != std::process::id() as i32 {
            // SAFETY: kill(2) on a process this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// A burst of scp runs through the block at once: every copy arrives, and
/// the pushed key is shared rather than pushed once per copy.
#[test]
fn concurrent_copies_through_the_ssh_config_block_all_succeed() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    let port = bed.sshd_port().to_string();
    let remote = bed.dir().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let mut children = Vec::new();
    for n in 0..12 {
        let src = bed.dir().join(format!("src-{n}"));
        std::fs::write(&src, format!("copy {n}\n")).unwrap();
        let host = if n % 2 == 0 {
            web.id.clone()
        } else {
            "eic-web-1".to_owned()
        };
        let mut c = Command::new("scp");
        bed.apply_env(&mut c);
        c.arg("-F")
            .arg(&config)
            .args(["-P", &port, "-o", "BatchMode=yes"])
            .arg(&src)
            .arg(format!("{host}:{}/dst-{n}", remote.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(c.spawn().unwrap());
    }
    for (n, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "copy {n}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(remote.join(format!("dst-{n}"))).unwrap(),
            format!("copy {n}\n")
        );
    }
    let pushes = bed.pushes().len();
    assert!(
        (1..=4).contains(&pushes),
        "a key is shared by the burst: {pushes} pushes"
    );
    assert_no_private_key_file(&bed, "after the burst");
    assert_signed(&bed);
}

/// By Name tag through the block, host keys are recorded under the
/// instance id, as eic-connect itself records them: so a name that moves to
/// a new instance is a new host, not a "REMOTE HOST IDENTIFICATION HAS
/// CHANGED".
#[test]
fn the_ssh_config_block_records_host_keys_by_instance_id() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    let mut c = block_ssh(&bed, &config);
    c.args(["eic-web-1", "true"]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let known =
        std::fs::read_to_string(bed.home().join(".local/state/eic-connect/known_hosts")).unwrap();
    assert!(
        known
            .lines()
            .all(|l| l.starts_with(&format!("[{}]", web.id))
                || l.starts_with(&format!("{} ", web.id))),
        "{known}"
    );
    assert!(!known.contains("eic-web-1"), "{known}");
}

/// HOME, XDG_RUNTIME_DIR, XDG_STATE_HOME and TMPDIR may hold spaces, `%`
/// and `$`: ssh is given every path so that it reads it back unchanged.
#[test]
fn odd_but_legal_directories_work() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.set_console_output(&web.id, &bed.host_key_console());
    let odd = bed.dir().join("a dir %h $HOME 100%");
    for sub in ["home", "run", "tmp", "state"] {
        std::fs::create_dir_all(odd.join(sub)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(odd.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
    for extra in [&[][..], &["--verify-host-key"]] {
        let mut c = eic(&bed);
        c.env("HOME", odd.join("home"))
            .env("XDG_RUNTIME_DIR", odd.join("run"))
            .env("TMPDIR", odd.join("tmp"))
            .env("XDG_STATE_HOME", odd.join("state"))
            .args(extra)
            .args([&web.id, "echo", "reached"]);
        let out = run(c);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "reached\n");
    }
    let known = std::fs::read_to_string(odd.join("state/eic-connect/known_hosts")).unwrap();
    assert!(known.contains(&web.id), "{known}");
    // Nothing was left in the runtime directory.
    assert_eq!(std::fs::read_dir(odd.join("run")).unwrap().count(), 0);
}

/// Numbers are range-checked when the command line is read: nothing runs,
/// nothing is looked up, exit 2.
#[test]
fn out_of_range_numbers_are_usage_errors_before_any_work() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1").tag("Role", "build"));
    for args in [
        &[
            "run",
            "-f",
            "tag:Role=build",
            "--timeout",
            "1e20",
            "--",
            "true",
        ][..],
        &[
            "run",
            "-f",
            "tag:Role=build",
            "--timeout",
            "inf",
            "--",
            "true",
        ],
        &[
            "run",
            "-f",
            "tag:Role=build",
            "--timeout",
            "-1",
            "--",
            "true",
        ],
        &["--api-timeout", "1e20", "web-1", "true"],
        &["--api-timeout", "NaN", "web-1", "true"],
        &["run", "-f", "x", "--parallel", "0", "--", "true"],
        &["--max-tunnel-duration", "0", "web-1"],
    ] {
        let mut c = bed.command();
        c.args(args).stdin(Stdio::null());
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    assert!(bed.requests().is_empty(), "no API call was made");
}

/// `--api-timeout` reaches the tunnel process behind connect's ProxyCommand.
#[test]
fn the_api_timeout_reaches_the_tunnel_process() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let mut c = bed.command();
    c.args([
        "--dry-run",
        "--connect",
        "eice",
        "--api-timeout",
        "25",
        "db-1",
    ]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    let proxy = shown
        .lines()
        .find(|l| l.contains("ProxyCommand="))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(proxy.contains("--api-timeout 25"), "{proxy}");
}

/// `run` honours `--verify-host-key`, as connect does: a host whose key is
/// not the console's is refused.
#[test]
fn run_verifies_host_keys_when_asked() {
    let bed = TestBed::start();
    let good = bed.add_instance(InstanceSpec::named("good").tag("Role", "build"));
    let bad = bed.add_instance(InstanceSpec::named("bad").tag("Role", "build"));
    bed.set_console_output(&good.id, &bed.host_key_console());
    let other = bed.generate_key("not-the-host-key");
    bed.set_console_output(
        &bad.id,
        &support::diag::cloud_init_console(&[&other.public_key]),
    );
    let mut c = bed.command();
    c.args([
        "run",
        "-p",
        &bed.sshd_port().to_string(),
        "-l",
        &bed.os_user(),
    ])
    .args([
        "--verify-host-key",
        "-f",
        "tag:Role=build",
        "--json",
        "--",
        "echo",
        "ran",
    ])
    .stdin(Stdio::null());
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    let by_name = |name: &str| {
        report["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {text}"))
    };
    assert_eq!(by_name("good")["stdout"], "ran\n", "{text}");
    assert_ne!(by_name("bad")["status"], "succeeded", "{text}");
    assert_eq!(bed.requests_for("GetConsoleOutput").len(), 2);
}

/// `tunnel` carries bytes and speaks no ssh: with `verify-host-key` it shows
/// the keys the console printed for the ssh run through it, and refuses
/// when the console shows none.
#[test]
fn the_tunnel_shows_console_host_keys_when_verification_is_on() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(support::eice::EndpointSpec::default());
    bed.set_console_output(&db.id, &bed.host_key_console());
    let tunnel = |bed: &TestBed| {
        let mut c = bed.command();
        c.env("EIC_CONNECT_VERIFY_HOST_KEY", "1")
            .args(["tunnel", "db-1"])
            .stdin(Stdio::null());
        run(c)
    };
    let out = tunnel(&bed);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&bed.host_key_fingerprint()),
        "{}",
        stderr(&out)
    );
    assert_eq!(bed.tunnels().len(), 1);
    bed.set_console_output(&db.id, "no keys here\n");
    let out = tunnel(&bed);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot verify the host key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(bed.tunnels().len(), 1, "no second tunnel was opened");
}

/// The OS user guessed from an instance's AMI is remembered for the
/// instance, whichever way it is named next: no second DescribeImages.
#[test]
fn the_remembered_os_user_serves_names_as_well_as_ids() {
    let bed = TestBed::start();
    bed.register_image(
        "ami-0a000000000000004",
        "ubuntu/images/hvm-ssd/ubuntu-jammy",
        "",
        "Linux/UNIX",
    );
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id("ami-0a000000000000004"));
    for target in [web.id.as_str(), "web-1", web.id.as_str()] {
        let mut c = bed.command();
        c.env("EIC_CONNECT_SSH", "true")
            .arg(target)
            .stdin(Stdio::null());
        let out = run(c);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
    }
    assert_eq!(bed.requests_for("DescribeImages").len(), 1);
    assert!(bed.pushes().iter().all(|p| p.os_user == "ubuntu"));
}

/// `verify-host-key` cannot be honoured by the ssh-config proxy (ssh checks
/// the host key there, against the block's settings): it is refused with a
/// message, never quietly downgraded to first use.
#[test]
fn the_ssh_config_proxy_refuses_verify_host_key() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    let mut c = block_ssh(&bed, &config);
    c.env("EIC_CONNECT_VERIFY_HOST_KEY", "1")
        .args(["eic-web-1", "echo", "reached"]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(!stdout(&out).contains("reached"));
    assert!(
        stderr(&out).contains("not supported through the ssh-config proxy"),
        "{}",
        stderr(&out)
    );
    assert!(bed.pushes().is_empty(), "nothing was pushed");
}
