//! Small helpers the end-to-end tests share for running commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::TestBed;

/// eic-connect aimed at the bed's sshd port, logging in as the bed's user.
pub fn eic(bed: &TestBed) -> Command {
    let mut c = bed.command();
    c.args(["-p", &bed.sshd_port().to_string(), "-l", &bed.os_user()]);
    c.stdin(Stdio::null());
    c
}

/// Runs a command to completion, capturing its output.
pub fn run(mut c: Command) -> Output {
    c.output().expect("run eic-connect")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `echo $SSH_CONNECTION` on the instance: the server address ssh reached.
pub fn server_address(o: &Output) -> String {
    stdout(o)
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every request the bed saw was correctly signed.
#[track_caller]
pub fn assert_signed(bed: &TestBed) {
    assert!(
        bed.signature_failures().is_empty(),
        "signature failures: {:?}",
        bed.signature_failures()
    );
}

/// A program's path on `PATH` (empty if there is none).
pub fn which(program: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes `eic-connect ssh-config` output (for the bed's OS user) to a file
/// in the bed and returns its path.
pub fn ssh_config(bed: &TestBed) -> PathBuf {
    let mut c = bed.command();
    c.args(["ssh-config", "--os-user", &bed.os_user()]);
    let out = c.output().expect("run eic-connect ssh-config");
    assert!(out.status.success(), "{}", stderr(&out));
    let path = bed.dir().join("ssh_config");
    std::fs::write(&path, &out.stdout).expect("write ssh_config");
    path
}

/// ssh with the `ssh-config` block, the bed's environment and port.
pub fn block_ssh(bed: &TestBed, config: &Path) -> Command {
    let mut c = Command::new("ssh");
    bed.apply_env(&mut c);
    c.arg("-F")
        .arg(config)
        .args(["-p", &bed.sshd_port().to_string(), "-o", "BatchMode=yes"])
        .stdin(Stdio::null());
    c
}

/// Every file under `dir` (following no links), for "what is on disk".
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                todo.push(e.path());
            } else if kind.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// No file in the bed's runtime, temporary or home directories holds a
/// private key.
#[track_caller]
pub fn assert_no_private_key_file(bed: &TestBed, when: &str) {
    for root in [bed.dir().join("run"), bed.dir().join("tmp"), bed.home()] {
        for file in files_under(&root) {
            let text = std::fs::read(&file).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
                "{when}: {} holds a private key",
                file.display()
            );
        }
    }
}
