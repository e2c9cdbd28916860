//! Jump hosts that are EC2 instances (`-J`, `-o ProxyJump`): the real
//! binary and real ssh against the API stand-in and the bed's sshd, which
//! plays the bastion (on its public address) and the instances behind it
//! (on their private addresses).

mod support;

use support::cmd::{
    assert_signed as assert_clean, block_ssh, eic, run, server_address, stderr, stdout,
};

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{InstanceSpec, TestBed};

/// `USER@HOST:PORT` for `-J`: the bed's sshd listens on one port for all.
fn jump(bed: &TestBed, host: &str) -> String {
    format!("{}@{host}:{}", bed.os_user(), bed.sshd_port())
}

/// The SHA256 fingerprint of a pushed public key, as sshd logs it.
fn fingerprint(public_key: &str) -> String {
    ssh_key::PublicKey::from_openssh(public_key)
        .expect("pushed key")
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// An ssh that records its arguments (one a line) and exits 0: the
/// command line eic-connect ran, without a connection.
fn recording_ssh(bed: &TestBed) -> (PathBuf, PathBuf) {
    let script = bed.dir().join("record-ssh");
    let argv = bed.dir().join("ssh-argv");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", argv.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, argv)
}

fn recorded(argv: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(argv)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The ProxyCommand among recorded arguments, if any.
fn proxy_command(args: &[String]) -> Option<&str> {
    args.iter().find_map(|a| a.strip_prefix("ProxyCommand="))
}

/// Whether sshd's log shows a connection arriving on `ip`.
fn connected_on(bed: &TestBed, ip: &str) -> bool {
    bed.sshd_log()
        .lines()
        .any(|l| l.starts_with("Connection from ") && l.contains(&format!(" on {ip} port ")))
}

fn own_known_hosts(bed: &TestBed) -> PathBuf {
    bed.home().join(".local/state/eic-connect/known_hosts")
}

/// Whether eic-connect's known_hosts has an entry for `host` (entries may
/// be hashed, so ask ssh-keygen).
fn known_host_entry(bed: &TestBed, host: &str) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-F")
        .arg(host)
        .arg("-f")
        .arg(own_known_hosts(bed))
        .output()
        .expect("ssh-keygen");
    out.status.success() && !out.stdout.is_empty()
}

#[test]
fn connects_through_an_ec2_jump_host_by_id_and_by_name_and_runs_a_command() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let bastion_public = bastion.public_ip.clone().unwrap();
    // By id before the target; by Name as ssh's ProxyJump after it.
    let by_id = ["-J".to_owned(), jump(&bed, &bastion.id), "web-1".into()];
    let by_name = [
        "web-1".to_owned(),
        "-o".into(),
        format!("ProxyJump={}", jump(&bed, "bastion-1")),
    ];
    for (round, jump_args) in [by_id, by_name].iter().enumerate() {
        bed.clear_records();
        let logins_before = bed.sshd_log().matches("Accepted publickey").count();
        let mut c = eic(&bed);
        c.args(jump_args).args([
            "--",
            "sh",
            "-c",
            "echo \"$SSH_CONNECTION\"; echo on-web >&2; exit 3",
        ]);
        let out = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{jump_args:?}: {err}");
        assert!(err.contains("on-web"), "{err}");
        // The instance was reached at its private address, through the
        // bastion (which web-1's public address would not need).
        assert_eq!(server_address(&out), web.private_ip, "{jump_args:?}");

        // Two pushes, each to its own instance, for its own user, with
        // its own key.
        let pushes = bed.pushes();
        assert_eq!(pushes.len(), 2, "{pushes:?}");
        let to = |id: &str| pushes.iter().find(|p| p.instance_id == id).unwrap();
        let (to_bastion, to_web) = (to(&bastion.id), to(&web.id));
        assert_eq!(to_bastion.os_user, bed.os_user());
        assert_eq!(to_web.os_user, bed.os_user());
        assert_ne!(to_bastion.public_key, to_web.public_key);

        // sshd saw a login on the bastion's public address and one on
        // web-1's private address, each with the key pushed there.
        let log = bed.sshd_log();
        assert!(connected_on(&bed, &bastion_public), "{log}");
        assert!(connected_on(&bed, &web.private_ip), "{log}");
        assert!(
            !connected_on(&bed, web.public_ip.as_deref().unwrap()),
            "{log}"
        );
        for push in [to_bastion, to_web] {
            assert!(
                bed.wait_for_sshd_log(&fingerprint(&push.public_key), Duration::from_secs(5)),
                "round {round}: no login with the key pushed to {}:\n{log}",
                push.instance_id
            );
        }
        assert_eq!(
            bed.sshd_log().matches("Accepted publickey").count(),
            logins_before + 2
        );
    }
    // Both host keys are kept under the instance ids, never the addresses.
    assert!(known_host_entry(&bed, &bastion.id));
    assert!(known_host_entry(&bed, &web.id));
    assert!(!known_host_entry(&bed, &bastion_public));
    assert!(!known_host_entry(&bed, &web.private_ip));
    // Both runtime directories (agents, public keys) are gone, and no
    // private key was ever a file.
    let left: Vec<_> = std::fs::read_dir(bed.dir().join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("eic-connect."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    support::cmd::assert_no_private_key_file(&bed, "after connecting through a jump host");
    assert_clean(&bed);
}

#[test]
fn through_a_jump_host_the_address_flags_still_choose() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args(["--public", "-J", &jump(&bed, &bastion.id), &web.id])
        .arg("echo $SSH_CONNECTION");
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server_address(&out), web.public_ip.clone().unwrap());
}

#[test]
fn the_jump_hosts_os_user_is_guessed_from_its_ami_and_the_choice_explained() {
    let bed = TestBed::start();
    let ubuntu = bed.register_ubuntu_image();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1").image_id(ubuntu));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let (ssh, argv) = recording_ssh(&bed);
    let hop = format!("bastion-1:{}", bed.sshd_port());
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_SSH", &ssh)
        .args(["-v", "-J", &hop, "web-1", "true"]);
    let out = run(c);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    let bastion_push = pushes.iter().find(|p| p.instance_id == bastion.id).unwrap();
    assert_eq!(
        bastion_push.os_user, "ubuntu",
        "guessed from the bastion's AMI"
    );
    let web_push = pushes.iter().find(|p| p.instance_id == web.id).unwrap();
    assert_eq!(
        web_push.os_user,
        bed.os_user(),
        "-l is the instance's user only"
    );
    // -v says what the jump host is and why.
    assert!(err.contains("the jump host is an EC2 instance"), "{err}");
    assert!(err.contains(&format!("instance={}", bastion.id)), "{err}");
    assert!(err.contains("chosen_by=guessed from the AMI name"), "{err}");
    assert!(
        err.contains("chose the target's address as the jump host reaches it"),
        "{err}"
    );

    // ssh reaches the instance's private address through a ProxyCommand
    // that is an ssh with the jump host's own session options.
    let args = recorded(&argv);
    assert!(!args.iter().any(|a| a == "-J"), "{args:?}");
    let proxy = proxy_command(&args).expect("a ProxyCommand");
    for needle in [
        "-l ubuntu".to_owned(),
        format!("HostKeyAlias={}", bastion.id),
        "StrictHostKeyChecking=accept-new".to_owned(),
        "IdentityAgent=".to_owned(),
        format!("-p {}", bed.sshd_port()),
        format!("-W '[%h]:%p' -- {}", bastion.public_ip.clone().unwrap()),
    ] {
        assert!(proxy.contains(&needle), "{needle:?} in {proxy}");
    }
    let tail: Vec<&str> = args[args.len() - 5..].iter().map(String::as_str).collect();
    assert_eq!(tail, ["-l", &bed.os_user(), "--", &web.private_ip, "true"]);
    assert!(
        args.contains(&format!("HostKeyAlias={}", web.id)),
        "{args:?}"
    );
    // The two ssh processes use two agents.
    let agent = |text: &str| {
        text.split("IdentityAgent=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let outer = args
        .iter()
        .find_map(|a| a.strip_prefix("IdentityAgent="))
        .unwrap();
    assert_ne!(agent(proxy).as_deref(), Some(outer));

    // The guess is remembered for the bastion: no second DescribeImages.
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_SSH", &ssh)
        .args(["-J", &hop, "web-1", "true"]);
    assert!(run(c).status.success());
    assert_eq!(bed.requests_for("DescribeImages").len(), 1);
    assert_eq!(
        bed.pushes()[2..]
            .iter()
            .filter(|p| p.os_user == "ubuntu")
            .count(),
        1
    );
}

#[test]
fn a_jump_host_that_is_not_an_ec2_instance_passes_through_unchanged() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let (ssh, argv) = recording_ssh(&bed);
    for value in ["admin@gw.corp.example:2222", "gw1,gw2.corp.example"] {
        bed.clear_records();
        let mut c = eic(&bed);
        c.env("EIC_CONNECT_SSH", &ssh)
            .args(["-v", "-J", value, "web-1", "true"]);
        let out = run(c);
        let err = stderr(&out);
        assert!(out.status.success(), "{value}: {err}");
        let args = recorded(&argv);
        let at = args.iter().position(|a| a == "-J").expect("-J passed on");
        assert_eq!(args[at + 1], value);
        assert!(proxy_command(&args).is_none(), "{args:?}");
        // As without -J: web-1's public address, one push.
        assert_eq!(args.last().unwrap(), "true");
        assert_eq!(args[args.len() - 2], web.public_ip.clone().unwrap());
        assert_eq!(bed.pushes().len(), 1);
        assert_eq!(bed.pushes()[0].instance_id, web.id);
        // Each hop was looked up as an instance first, and found nothing.
        let looked_up = bed
            .requests_for("DescribeInstances")
            .iter()
            .filter(|c| c.params.values().any(|v| v.starts_with("gw")))
            .count();
        assert!(looked_up >= value.split(',').count(), "{value}");
        assert!(err.contains("-J goes to ssh unchanged"), "{err}");
    }
    assert_clean(&bed);
}

/// Runs `eic-connect` (with a recording ssh) and checks it failed before
/// anything was pushed or ssh ran.
fn refused_before_anything(bed: &TestBed, args: &[&str], exit: i32) -> String {
    let (ssh, argv) = recording_ssh(bed);
    let _ = std::fs::remove_file(&argv);
    bed.clear_records();
    let mut c = eic(bed);
    c.env("EIC_CONNECT_SSH", &ssh).args(args);
    let out: Output = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(exit), "{args:?}: {err}");
    assert!(!argv.exists(), "{args:?}: ssh ran");
    assert!(bed.pushes().is_empty(), "{args:?}: {:?}", bed.pushes());
    assert_eq!(err.matches("eic-connect: error:").count(), 1, "{err}");
    err
}

#[test]
fn a_stopped_unknown_or_ambiguous_jump_host_is_a_clear_error_and_nothing_runs() {
    let bed = TestBed::start();
    let stopped = bed.add_instance(InstanceSpec::named("bastion-1").state("stopped"));
    let a = bed.add_instance(InstanceSpec::named("bastion-2"));
    let b = bed.add_instance(InstanceSpec::named("bastion-2"));
    bed.add_instance(InstanceSpec::named("web-1"));

    for hop in [stopped.id.as_str(), "bastion-1"] {
        let err = refused_before_anything(&bed, &["-J", hop, "web-1", "true"], 255);
        assert!(
            err.starts_with(&format!(
                "eic-connect: error: jump host -J {hop}: instance {} is stopped",
                stopped.id
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "hint: start it: aws ec2 start-instances --instance-ids {}",
                stopped.id
            )),
            "{err}"
        );
    }

    let unknown = "i-0123456789abcdef0";
    let err = refused_before_anything(&bed, &["-J", unknown, "web-1", "true"], 255);
    assert!(
        err.starts_with(&format!(
            "eic-connect: error: jump host -J {unknown}: no instance matches instance id {unknown}"
        )),
        "{err}"
    );

    let err = refused_before_anything(&bed, &["-J", "bastion-2", "web-1", "true"], 255);
    assert!(
        err.starts_with(
            "eic-connect: error: jump host -J bastion-2: Name tag \"bastion-2\" matches 2 instances"
        ),
        "{err}"
    );
    assert!(err.contains(&a.id) && err.contains(&b.id), "{err}");
}

#[test]
fn what_cannot_go_with_an_ec2_jump_host_is_a_usage_error() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    bed.add_instance(InstanceSpec::named("web-1"));
    // A chain with an EC2 instance in it, by id or found by name.
    for chain in [
        format!("gw.corp.example,{}", bastion.id),
        "bastion-1,gw".into(),
    ] {
        let err = refused_before_anything(&bed, &["-J", &chain, "web-1", "true"], 2);
        assert!(
            err.contains("a chain of jump hosts cannot hold an EC2 instance"),
            "{err}"
        );
        assert!(err.contains(&bastion.id), "{err}");
    }
    for via in ["eice", "ssm"] {
        let err = refused_before_anything(
            &bed,
            &["--connect", via, "-J", "bastion-1", "web-1", "true"],
            2,
        );
        assert!(
            err.contains(&format!("--connect {via} and the EC2 jump host")),
            "{err}"
        );
    }
    let err = refused_before_anything(
        &bed,
        &[
            "-o",
            "ProxyCommand=nc %h %p",
            "-J",
            "bastion-1",
            "web-1",
            "true",
        ],
        2,
    );
    assert!(err.contains("cannot be combined"), "{err}");
}

#[test]
fn a_jump_host_whose_host_key_changed_is_refused() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let other = bed.generate_key("not-the-host-key");
    let file = own_known_hosts(&bed);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    // The key recorded for the bastion's id is not the one it shows now.
    std::fs::write(&file, format!("{} {}\n", bastion.id, other.public_key)).unwrap();
    let connect = || {
        let mut c = eic(&bed);
        c.args(["-J", &jump(&bed, "bastion-1"), "web-1", "echo", "reached"]);
        run(c)
    };
    let out = connect();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!stdout(&out).contains("reached"));
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    assert!(
        err.contains(&format!("Host key for {} has changed", bastion.id)),
        "{err}"
    );
    assert!(
        !bed.sshd_log().contains("Accepted publickey"),
        "{}",
        bed.sshd_log()
    );
    assert!(
        !connected_on(&bed, &web.private_ip),
        "nothing reached the instance: {}",
        bed.sshd_log()
    );
    // The same entry with the key the bastion does show lets it through:
    // the check is the entry under the bastion's id.
    std::fs::write(&file, format!("{} {}\n", bastion.id, bed.host_public_key())).unwrap();
    let out = connect();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "reached\n");
}

#[test]
fn a_jump_hosts_host_key_is_pinned_from_its_console_too() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let other = bed.generate_key("not-the-host-key");
    bed.set_console_output(&web.id, &bed.host_key_console());
    bed.set_console_output(
        &bastion.id,
        &support::diag::cloud_init_console(&[&other.public_key]),
    );
    let connect = || {
        let mut c = eic(&bed);
        c.args([
            "--verify-host-key",
            "-J",
            &jump(&bed, "bastion-1"),
            "web-1",
            "echo",
            "reached",
        ]);
        run(c)
    };
    let out = connect();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!stdout(&out).contains("reached"));
    assert!(
        err.contains(&format!(
            "eic-connect: error: {} answered with host key ssh-ed25519 {}, which is not among the keys it printed on its console",
            bastion.id,
            bed.host_key_fingerprint()
        )),
        "{err}"
    );
    assert!(!bed.sshd_log().contains("Accepted publickey"));
    let consoles: Vec<String> = bed
        .requests_for("GetConsoleOutput")
        .iter()
        .filter_map(|c| c.params.get("InstanceId").cloned())
        .collect();
    assert!(
        consoles.contains(&bastion.id) && consoles.contains(&web.id),
        "{consoles:?}"
    );
    // With the bastion's real key on its console, both pins hold.
    bed.set_console_output(&bastion.id, &bed.host_key_console());
    let out = connect();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "reached\n");
}

#[test]
fn dry_run_shows_both_lookups_both_pushes_and_the_hop() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    let mut c = eic(&bed);
    c.args(["--dry-run", "-J", "bastion-1", "web-1", "uptime"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    let lines: Vec<&str> = plan.lines().collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix:?} in\n{plan}"))
    };
    let jump_lookup = at("DescribeInstances Filter tag:Name=bastion-1 ");
    let jump_push = at(
        "SendSSHPublicKey InstanceId=<jump host id> InstanceOSUser=<jump host OS user from the AMI> ",
    );
    let web_lookup = at("DescribeInstances Filter tag:Name=web-1 ");
    let web_push = at(&format!(
        "SendSSHPublicKey InstanceId=<instance id> InstanceOSUser={} ",
        bed.os_user()
    ));
    assert!(jump_lookup < jump_push && web_lookup < web_push, "{plan}");
    assert!(
        plan.contains("DescribeImages ImageId.1=<AMI of <jump host id>>"),
        "{plan}"
    );
    assert!(
        plan.contains("if it finds none, ssh gets -J unchanged"),
        "{plan}"
    );
    let ssh = lines.last().unwrap();
    assert!(ssh.contains("ProxyCommand="), "{ssh}");
    assert!(ssh.contains("HostKeyAlias=<jump host id>"), "{ssh}");
    assert!(ssh.contains("HostKeyAlias=<instance id>"), "{ssh}");
    assert!(ssh.contains("-W"), "{ssh}");
    assert!(!ssh.contains(" -J "), "{ssh}");
    assert!(bed.requests().is_empty(), "a dry run calls nothing");
}

#[test]
fn run_goes_through_an_ec2_jump_host() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let webs: Vec<_> = (1..=2)
        .map(|i| {
            bed.add_instance(
                InstanceSpec::named(&format!("web-{i}"))
                    .tag("Role", "web")
                    .public_ip(false),
            )
        })
        .collect();
    let mut c = bed.command();
    c.args([
        "run",
        "-f",
        "tag:Role=web",
        "-J",
        &jump(&bed, &bastion.id),
        "-p",
        &bed.sshd_port().to_string(),
        "-l",
        &bed.os_user(),
        "--",
        "echo $SSH_CONNECTION",
    ])
    .stdin(std::process::Stdio::null());
    let out = run(c);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    for web in &webs {
        let line = text
            .lines()
            .find(|l| l.starts_with(web.name.as_deref().unwrap()))
            .unwrap_or_else(|| panic!("no output from {}: {text}", web.id));
        assert_eq!(
            line.split_whitespace().nth(4),
            Some(web.private_ip.as_str()),
            "{line}"
        );
    }
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 4, "{pushes:?}");
    assert_eq!(
        pushes
            .iter()
            .filter(|p| p.instance_id == bastion.id)
            .count(),
        2,
        "a key of its own for every connection through the bastion"
    );
    for web in &webs {
        assert_eq!(pushes.iter().filter(|p| p.instance_id == web.id).count(), 1);
    }
    assert!(
        bed.requests_for("DescribeInstanceConnectEndpoints")
            .is_empty()
    );
    assert_clean(&bed);
}

// ------------------------------------------ through the ssh-config block

/// The output of a command that must end, pipes and all, within `limit`:
/// a master's proxy (or its hop) holding a pipe of its first caller's
/// would keep it open for the master's life.
fn output_within(mut c: Command, limit: Duration) -> Output {
    use std::io::Read;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start");
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for (n, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((n, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let mut got = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, buf) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("output still open after {limit:?}: a pipe is held"));
        got[n] = buf;
    }
    let status = child.wait().unwrap();
    let [stdout, stderr] = got;
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The jump block's prefix: short, as the bed's socket directories are
/// long (ssh's master socket path must fit in a Unix socket's).
const VIA: &str = "eic-j-";

/// An ssh config holding the block through the jump host `jump` (prefix
/// `eic-j-`, with `extra` options), above the plain block (prefix `eic-`,
/// which matches those names too): the two side by side.
fn jump_block_config(bed: &TestBed, jump: &str, extra: &[&str]) -> PathBuf {
    let mut c = bed.command();
    c.args(["ssh-config", "--os-user", &bed.os_user(), "--prefix", VIA])
        .args(["--jump", jump])
        .args(extra);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let block = stdout(&out);
    assert!(
        block.contains(&format!(" --jump {jump} ")),
        "the block's ProxyCommand goes through the jump host: {block}"
    );
    let plain = std::fs::read_to_string(support::cmd::ssh_config(bed)).unwrap();
    let path = bed.dir().join("ssh_config_via_bastion");
    std::fs::write(&path, format!("{block}\n{plain}")).unwrap();
    path
}

/// Ends the masters the block's ssh left, when the test ends, passed or
/// failed.
struct StopMasters<'a>(&'a TestBed);

impl Drop for StopMasters<'_> {
    fn drop(&mut self) {
        let mut c = self.0.command();
        c.args(["reuse", "stop"]);
        let _ = c.stdin(Stdio::null()).output();
    }
}

#[test]
fn plain_ssh_through_the_jump_block_reaches_the_private_address_with_two_pushes() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let bastion_public = bastion.public_ip.clone().unwrap();
    let web_public = web.public_ip.clone().unwrap();
    let config = jump_block_config(&bed, &jump(&bed, "bastion-1"), &[]);
    let _masters = StopMasters(&bed);
    let ssh = |host: &str| {
        let mut c = block_ssh(&bed, &config);
        c.args([host, "echo $SSH_CONNECTION"]);
        // Reuse is on: the first ssh becomes a master, which must not hold
        // this caller's pipes.
        let out = output_within(c, Duration::from_secs(30));
        assert!(out.status.success(), "{host}: {}", stderr(&out));
        out
    };
    let host = format!("{VIA}web-1");
    let out = ssh(&host);
    assert_eq!(server_address(&out), web.private_ip, "{}", stderr(&out));

    // Two pushes: the bastion's own key for its own OS user (USER@ in
    // --jump), web-1's for the block's user (%r).
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    let to = |id: &str| pushes.iter().find(|p| p.instance_id == id).unwrap();
    let (to_bastion, to_web) = (to(&bastion.id), to(&web.id));
    assert_eq!(to_bastion.os_user, bed.os_user());
    assert_eq!(to_web.os_user, bed.os_user());
    assert_ne!(to_bastion.public_key, to_web.public_key);
    for push in [to_bastion, to_web] {
        assert!(
            bed.wait_for_sshd_log(&fingerprint(&push.public_key), Duration::from_secs(5)),
            "no login with the key pushed to {}:\n{}",
            push.instance_id,
            bed.sshd_log()
        );
    }
    // sshd saw a connection on the bastion's address and one on web-1's
    // private address; none on web-1's public one.
    let log = bed.sshd_log();
    assert!(connected_on(&bed, &bastion_public), "{log}");
    assert!(connected_on(&bed, &web.private_ip), "{log}");
    assert!(!connected_on(&bed, &web_public), "{log}");
    // Both host keys are kept under the instance ids.
    assert!(known_host_entry(&bed, &bastion.id));
    assert!(known_host_entry(&bed, &web.id));
    assert!(!known_host_entry(&bed, &bastion_public));

    // The next ssh joins the master: nothing pushed, nothing looked up.
    bed.clear_records();
    let out = ssh(&host);
    assert_eq!(server_address(&out), web.private_ip);
    assert!(bed.requests().is_empty(), "{:?}", bed.requests());

    // By instance id with the prefix, through the bastion too; and the
    // plain block beside it still goes straight to web-1.
    let out = ssh(&format!("{VIA}{}", web.id));
    assert_eq!(server_address(&out), web.private_ip);
    assert_eq!(bed.pushes().len(), 2, "{:?}", bed.pushes());
    let out = ssh("eic-web-1");
    assert_eq!(server_address(&out), web_public);
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 3, "{pushes:?}");
    assert_eq!(pushes[2].instance_id, web.id);
    // Each name got its own agent socket and master.
    let masters = std::fs::read_dir(bed.dir().join("run/eic-connect-reuse"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    for name in [host.clone(), format!("{VIA}{}", web.id), "eic-web-1".into()] {
        assert!(
            masters.iter().any(|m| m.contains(&format!("@{name}:"))),
            "{name}: {masters:?}"
        );
    }
    support::cmd::assert_no_private_key_file(&bed, "after ssh through the jump block");
    assert_clean(&bed);
}

#[test]
fn scp_through_the_jump_block_copies_bytes_intact() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    // No reuse: every scp is a connection of its own through the bastion.
    let config = jump_block_config(&bed, &jump(&bed, &bastion.id), &["--no-reuse"]);
    let src = bed.dir().join("src.bin");
    let mut data: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    data.extend(b"tail\n\x00\xff");
    std::fs::write(&src, &data).unwrap();
    let remote = bed.dir().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let scp = |from: String, to: String| {
        let mut c = Command::new("scp");
        bed.apply_env(&mut c);
        c.arg("-F").arg(&config).args([
            "-P",
            &bed.sshd_port().to_string(),
            "-o",
            "BatchMode=yes",
            &from,
            &to,
        ]);
        let out = output_within(c, Duration::from_secs(30));
        assert!(out.status.success(), "scp {from} {to}: {}", stderr(&out));
    };
    scp(
        src.display().to_string(),
        format!("{VIA}web-1:{}/up.bin", remote.display()),
    );
    assert_eq!(std::fs::read(remote.join("up.bin")).unwrap(), data);
    let back = bed.dir().join("back.bin");
    scp(
        format!("{VIA}web-1:{}/up.bin", remote.display()),
        back.display().to_string(),
    );
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert!(connected_on(&bed, &web.private_ip), "{}", bed.sshd_log());
    assert!(!connected_on(&bed, web.public_ip.as_deref().unwrap()));
    // The bastion gets a key per connection; web-1's key, pushed seconds
    // ago for the same name, is reused by the second scp's proxy.
    let pushes = bed.pushes();
    let count = |id: &str| pushes.iter().filter(|p| p.instance_id == id).count();
    assert_eq!(count(&bastion.id), 2, "{pushes:?}");
    assert_eq!(count(&web.id), 1, "{pushes:?}");
    assert_clean(&bed);
}

#[test]
fn through_the_jump_block_a_bastion_whose_host_key_changed_is_refused() {
    let bed = TestBed::start();
    let bastion = bed.add_instance(InstanceSpec::named("bastion-1"));
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let config = jump_block_config(&bed, &jump(&bed, "bastion-1"), &[]);
    let _masters = StopMasters(&bed);
    let other = bed.generate_key("not-the-host-key");
    let file = own_known_hosts(&bed);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    // The key recorded for the bastion's id is not the one it shows now.
    std::fs::write(&file, format!("{} {}\n", bastion.id, other.public_key)).unwrap();
    let connect = || {
        let mut c = block_ssh(&bed, &config);
        c.args([&format!("{VIA}web-1"), "echo", "reached"]);
        output_within(c, Duration::from_secs(30))
    };
    let out = connect();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!stdout(&out).contains("reached"));
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    assert!(
        err.contains(&format!("Host key for {} has changed", bastion.id)),
        "{err}"
    );
    assert!(
        err.contains("eic-connect: error: jump host --jump"),
        "{err}"
    );
    assert!(
        !bed.sshd_log().contains("Accepted publickey"),
        "{}",
        bed.sshd_log()
    );
    assert!(
        !connected_on(&bed, &web.private_ip),
        "nothing reached the instance: {}",
        bed.sshd_log()
    );
    // With the key the bastion does show under its id, it goes through.
    std::fs::write(&file, format!("{} {}\n", bastion.id, bed.host_public_key())).unwrap();
    let out = connect();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "reached\n");
}

#[test]
fn through_the_jump_block_an_unknown_stopped_or_ambiguous_jump_host_is_a_clear_error() {
    let bed = TestBed::start();
    let stopped = bed.add_instance(InstanceSpec::named("bastion-1").state("stopped"));
    bed.add_instance(InstanceSpec::named("bastion-2"));
    bed.add_instance(InstanceSpec::named("bastion-2"));
    bed.add_instance(InstanceSpec::named("web-1"));
    let unknown = "i-0123456789abcdef0";
    for (value, says) in [
        (
            unknown.to_owned(),
            format!("eic-connect: error: jump host --jump {unknown}: no instance matches instance id {unknown}"),
        ),
        (
            "bastion-1".to_owned(),
            format!("eic-connect: error: jump host --jump bastion-1: instance {} is stopped", stopped.id),
        ),
        (
            "bastion-2".to_owned(),
            "eic-connect: error: jump host --jump bastion-2: Name tag \"bastion-2\" matches 2 instances".to_owned(),
        ),
    ] {
        let config = jump_block_config(&bed, &value, &[]);
        bed.clear_records();
        let connections = bed.sshd_log().matches("Connection from").count();
        let mut c = block_ssh(&bed, &config);
        c.args([&format!("{VIA}web-1"), "echo", "reached"]);
        let out = output_within(c, Duration::from_secs(30));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{value}: {err}");
        assert!(err.contains(&says), "{value}: {err}");
        assert_eq!(err.matches("eic-connect: error:").count(), 1, "{err}");
        assert!(stdout(&out).is_empty());
        assert!(bed.pushes().is_empty(), "{value}: {:?}", bed.pushes());
        assert_eq!(
            bed.sshd_log().matches("Connection from").count(),
            connections,
            "{value}: nothing was relayed"
        );
    }
    // The block refuses what cannot go with a jump host.
    let mut c = bed.command();
    c.args(["--connect", "eice", "ssh-config", "--jump", "bastion-1"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--connect eice and --jump"),
        "{}",
        stderr(&out)
    );
    // The default prefix would take the plain block's names: said.
    let mut c = bed.command();
    c.args(["ssh-config", "--jump", "bastion-1"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: with --jump and the default prefix"),
        "{}",
        stderr(&out)
    );
}
