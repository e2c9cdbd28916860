//! `eic-connect scp …` and `eic-connect sftp …`: the real scp and sftp, with
//! eic-connect as their ssh program (`-S`), so every remote operand can name
//! an instance the way the connect command does (`web-1:/tmp/`,
//! `ubuntu@i-0abc…:file`) and each connection gets its own pushed key.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::Context;

use crate::error::{Failure, fail};
use crate::settings::{Copy, CopyTool};

fn program(tool: CopyTool) -> &'static str {
    match tool {
        CopyTool::Scp => "scp",
        CopyTool::Sftp => "sftp",
    }
}

/// Replaces this process with scp or sftp (it handles the terminal, signals
/// and exit status itself).
pub fn run(settings: Copy) -> anyhow::Result<ExitCode> {
    let (tool, args) = (settings.tool, &settings.args);
    if args
        .iter()
        .any(|a| a == "-S" || a.to_str().is_some_and(|s| s.starts_with("-S")))
    {
        return fail(Failure::usage(format!(
            "eic-connect {} sets -S itself",
            program(tool)
        )));
    }
    let exe = std::env::current_exe().context("cannot find eic-connect's own path")?;
    let mut command = std::process::Command::new(program(tool));
    command
        .arg("-S")
        .arg(exe)
        .args(args)
        .envs(settings.globals.env());
    let err = command.exec();
    let failure = if err.kind() == std::io::ErrorKind::NotFound {
        Failure::new(format!("cannot run {}: not found", program(tool)))
            .hint("install the OpenSSH client (e.g. apt-get install openssh-client)")
    } else {
        Failure::new(format!("cannot run {}: {err}", program(tool)))
    };
    fail(failure)
}
