//! Plain ssh, scp, sftp, rsync and git reaching instances: through the
//! `ssh-config` block (ProxyCommand mode) and through `eic-connect scp|sftp`
//! and `rsync -e eic-connect`. Real tools, real sshd, bytes compared.

mod support;

use support::cmd::{ssh_config, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{Instance, InstanceSpec, TestBed};

#[track_caller]
fn ok(mut c: Command) -> Output {
    let out = c.stdin(Stdio::null()).output().expect("run");
    assert!(out.status.success(), "{c:?} failed: {}", stderr(&out));
    out
}

/// A tool (ssh, scp, sftp, rsync, git) with the bed's environment.
fn tool(bed: &TestBed, program: &str) -> Command {
    let mut c = Command::new(program);
    bed.apply_env(&mut c);
    c
}

/// Some bytes worth comparing: every byte value, then a pseudo-random tail.
fn payload(path: &Path, len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..=255u8).collect();
    let mut x: u32 = 0x9e37_79b9;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.push(x as u8);
    }
    std::fs::write(path, &data).unwrap();
    data
}

fn setup() -> (TestBed, Instance, PathBuf) {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let config = ssh_config(&bed);
    (bed, web, config)
}

#[test]
fn ssh_config_block_makes_plain_ssh_work_by_id_and_by_name() {
    let (bed, web, config) = setup();
    let port = bed.sshd_port().to_string();
    for host in [web.id.clone(), "eic-web-1".to_owned()] {
        let mut c = tool(&bed, "ssh");
        c.arg("-F").arg(&config).args([
            "-p",
            &port,
            "-o",
            "BatchMode=yes",
            &host,
            "echo",
            "hello from",
            "$0",
        ]);
        let out = ok(c);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("hello from"),
            "{host}"
        );
    }
    // By id and by name alike, the known_hosts entry is the instance id.
    let known = bed.home().join(".local/state/eic-connect/known_hosts");
    let entry = web.id.clone();
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(&entry)
        .arg("-f")
        .arg(&known)
        .output()
        .unwrap();
    assert!(found.status.success());
    assert!(bed.signature_failures().is_empty());
}

#[test]
fn proxy_mode_reuses_a_live_key_with_or_without_an_agent() {
    let (bed, web, config) = setup();
    let agent = support::agent::UserAgent::start(&bed);
    let port = bed.sshd_port().to_string();
    for with_agent in [false, true, false] {
        let mut c = tool(&bed, "ssh");
        if with_agent {
            c.env("SSH_AUTH_SOCK", &agent.socket);
        }
        c.arg("-F")
            .arg(&config)
            .args(["-p", &port, "-o", "BatchMode=yes", &web.id, "true"]);
        ok(c);
    }
    assert_eq!(
        bed.pushes().len(),
        1,
        "a live key is reused instead of pushed again"
    );
    assert_eq!(
        bed.requests_for("DescribeInstances").len(),
        1,
        "reuse needs no API call"
    );
    // The key lives in the proxy's own agent, never in the user's.
    let listed = agent.listed();
    assert!(!listed.contains("eic-connect"), "{listed}");
    let key_dir = bed.dir().join("run/eic-connect-proxy");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn scp_sftp_and_rsync_through_the_ssh_config_block() {
    let (bed, web, config) = setup();
    let port = bed.sshd_port().to_string();
    let src = bed.dir().join("src.bin");
    let data = payload(&src, 300_000);
    let remote_dir = bed.dir().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();

    // scp up and back down.
    let mut c = tool(&bed, "scp");
    c.arg("-F")
        .arg(&config)
        .args(["-P", &port, "-o", "BatchMode=yes"]);
    c.arg(&src)
        .arg(format!("{}:{}/scp.bin", web.id, remote_dir.display()));
    ok(c);
    assert_eq!(std::fs::read(remote_dir.join("scp.bin")).unwrap(), data);
    let back = bed.dir().join("scp-back.bin");
    let mut c = tool(&bed, "scp");
    c.arg("-F")
        .arg(&config)
        .args(["-P", &port, "-o", "BatchMode=yes"]);
    c.arg(format!("eic-web-1:{}/scp.bin", remote_dir.display()))
        .arg(&back);
    ok(c);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // sftp in batch mode.
    let batch = bed.dir().join("sftp.batch");
    let sftp_back = bed.dir().join("sftp-back.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {}/sftp.bin\nget {}/sftp.bin {}\n",
            src.display(),
            remote_dir.display(),
            remote_dir.display(),
            sftp_back.display()
        ),
    )
    .unwrap();
    let mut c = tool(&bed, "sftp");
    c.arg("-F")
        .arg(&config)
        .args(["-P", &port, "-o", "BatchMode=yes", "-b"])
        .arg(&batch)
        .arg(&web.id);
    ok(c);
    assert_eq!(std::fs::read(remote_dir.join("sftp.bin")).unwrap(), data);
    assert_eq!(std::fs::read(&sftp_back).unwrap(), data);

    // rsync -e ssh.
    let mut c = tool(&bed, "rsync");
    c.arg("-e").arg(format!(
        "ssh -F {} -p {port} -o BatchMode=yes",
        config.display()
    ));
    c.arg(&src)
        .arg(format!("{}:{}/rsync.bin", web.id, remote_dir.display()));
    ok(c);
    assert_eq!(std::fs::read(remote_dir.join("rsync.bin")).unwrap(), data);
    assert!(bed.signature_failures().is_empty());
}

#[test]
fn eic_connect_scp_sftp_and_rsync_with_eic_connect_as_the_remote_shell() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    let port = bed.sshd_port().to_string();
    let user = bed.os_user();
    let src = bed.dir().join("src.bin");
    let data = payload(&src, 200_000);
    let remote = bed.dir().join("remote");
    std::fs::create_dir_all(&remote).unwrap();

    let mut c = bed.command();
    c.args(["scp", "-P", &port])
        .arg(&src)
        .arg(format!("{user}@web-1:{}/a.bin", remote.display()));
    ok(c);
    assert_eq!(std::fs::read(remote.join("a.bin")).unwrap(), data);
    let back = bed.dir().join("a-back.bin");
    let mut c = bed.command();
    c.args(["scp", "-P", &port])
        .arg(format!("{user}@{}:{}/a.bin", web.id, remote.display()))
        .arg(&back);
    ok(c);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let batch = bed.dir().join("b.batch");
    std::fs::write(
        &batch,
        format!("put {} {}/b.bin\n", src.display(), remote.display()),
    )
    .unwrap();
    let mut c = bed.command();
    c.args(["sftp", "-P", &port, "-b"])
        .arg(&batch)
        .arg(format!("{user}@web-1"));
    ok(c);
    assert_eq!(std::fs::read(remote.join("b.bin")).unwrap(), data);

    // rsync runs `eic-connect [-l USER] web-1 rsync --server …`.
    let eic = support::eic_connect_bin();
    let mut c = tool(&bed, "rsync");
    c.arg("-e").arg(format!("{} -p {port}", eic.display()));
    c.arg(&src)
        .arg(format!("{user}@web-1:{}/c.bin", remote.display()));
    ok(c);
    assert_eq!(std::fs::read(remote.join("c.bin")).unwrap(), data);
    assert_eq!(bed.pushes().len(), 4, "one push per connection");
}

#[test]
fn git_over_eic_connect() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("git-box"));
    let repo = bed.dir().join("repo.git");
    ok({
        let mut c = tool(&bed, "git");
        c.args(["init", "-q", "--bare"]).arg(&repo);
        c
    });
    let work = bed.dir().join("work");
    let git_ssh = format!(
        "{} -p {}",
        support::eic_connect_bin().display(),
        bed.sshd_port()
    );
    let mut c = tool(&bed, "git");
    c.env("GIT_SSH_COMMAND", &git_ssh)
        .args(["clone", "-q"])
        .arg(format!("{}@git-box:{}", bed.os_user(), repo.display()))
        .arg(&work);
    let out = ok(c);
    assert!(work.join(".git").is_dir(), "{}", stderr(&out));
    assert_eq!(bed.pushes().len(), 1);
}

#[test]
fn scp_refuses_to_be_given_another_ssh_program() {
    let bed = TestBed::start();
    let mut c = bed.command();
    c.args(["scp", "-S", "/bin/sh", "a", "b:"]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("sets -S itself"));
}

/// A private-only instance reachable only through an EC2 Instance Connect
/// Endpoint: the proxy (ssh-config block) and `eic-connect scp|sftp` tunnel,
/// and the copied bytes arrive intact both ways.
#[test]
fn scp_sftp_and_rsync_through_an_endpoint_to_a_private_instance() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    bed.add_endpoint(support::eice::EndpointSpec::default());
    let config = ssh_config(&bed);
    let user = bed.os_user();
    let src = bed.dir().join("src.bin");
    let data = payload(&src, 250_000);
    let remote = bed.dir().join("remote");
    std::fs::create_dir_all(&remote).unwrap();

    // Plain scp with the ssh-config block; no -P: port 22 via the endpoint.
    let mut c = tool(&bed, "scp");
    c.arg("-F").arg(&config).args(["-o", "BatchMode=yes"]);
    c.arg(&src)
        .arg(format!("{}:{}/proxy.bin", db.id, remote.display()));
    ok(c);
    assert_eq!(std::fs::read(remote.join("proxy.bin")).unwrap(), data);
    let back = bed.dir().join("proxy-back.bin");
    let mut c = tool(&bed, "scp");
    c.arg("-F").arg(&config).args(["-o", "BatchMode=yes"]);
    c.arg(format!("eic-db-1:{}/proxy.bin", remote.display()))
        .arg(&back);
    ok(c);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // rsync -e ssh through the same block.
    let mut c = tool(&bed, "rsync");
    c.arg("-e")
        .arg(format!("ssh -F {} -o BatchMode=yes", config.display()));
    c.arg(&src)
        .arg(format!("{}:{}/rsync.bin", db.id, remote.display()));
    ok(c);
    assert_eq!(std::fs::read(remote.join("rsync.bin")).unwrap(), data);

    // eic-connect scp and sftp (connect's ProxyCommand tunnel).
    let mut c = bed.command();
    c.arg("scp")
        .arg(&src)
        .arg(format!("{user}@db-1:{}/eic.bin", remote.display()));
    ok(c);
    assert_eq!(std::fs::read(remote.join("eic.bin")).unwrap(), data);
    let batch = bed.dir().join("get.batch");
    let sftp_back = bed.dir().join("sftp-back.bin");
    std::fs::write(
        &batch,
        format!("get {}/eic.bin {}\n", remote.display(), sftp_back.display()),
    )
    .unwrap();
    let mut c = bed.command();
    c.args(["sftp", "-b"])
        .arg(&batch)
        .arg(format!("{user}@db-1"));
    ok(c);
    assert_eq!(std::fs::read(&sftp_back).unwrap(), data);

    let tunnels = bed.tunnels();
    // Through the block, rsync joins the master the first scp left for the
    // same host (reuse); `eic-db-1` is another host with its own; the
    // scp and sftp of eic-connect open one tunnel each.
    assert!(
        tunnels.len() >= 4,
        "every connection went through the endpoint: {}",
        tunnels.len()
    );
    assert!(
        tunnels.iter().all(|t| t.private_ip == db.private_ip),
        "{tunnels:?}"
    );
    assert!(bed.unexpected_tunnel_rejections().is_empty());
    assert!(bed.signature_failures().is_empty());
}
