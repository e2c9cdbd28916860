//! Small helpers the end-to-end tests share for running commands.

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
