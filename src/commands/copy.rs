//! `eic-connect scp …` and `eic-connect sftp …`: the real scp and sftp, with
//! eic-connect as their ssh program (`-S`), so every remote operand can name
//! an instance the way the connect command does (`web-1:/tmp/`,
//! `ubuntu@i-0abc…:file`) and each connection gets its own pushed key.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{AwsArgs, PathArgs, global_env};
use crate::error::{Failure, fail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Scp,
    Sftp,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Tool::Scp => "scp",
            Tool::Sftp => "sftp",
        }
    }
}

/// Replaces this process with scp or sftp (it handles the terminal, signals
/// and exit status itself).
pub fn run(
    tool: Tool,
    args: Vec<OsString>,
    aws: &AwsArgs,
    path: &PathArgs,
) -> anyhow::Result<ExitCode> {
    if args
        .iter()
        .any(|a| a == "-S" || a.to_str().is_some_and(|s| s.starts_with("-S")))
    {
        return fail(Failure::usage(format!(
            "eic-connect {} sets -S itself",
            tool.program()
        )));
    }
    let exe = std::env::current_exe().context("cannot find eic-connect's own path")?;
    let mut command = std::process::Command::new(tool.program());
    command
        .arg("-S")
        .arg(exe)
        .args(&args)
        .envs(global_env(aws, path));
    let err = command.exec();
    let failure = if err.kind() == std::io::ErrorKind::NotFound {
        Failure::new(format!("cannot run {}: not found", tool.program()))
            .hint("install the OpenSSH client (e.g. apt-get install openssh-client)")
    } else {
        Failure::new(format!("cannot run {}: {err}", tool.program()))
    };
    fail(failure)
}
