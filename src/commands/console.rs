//! `eic-connect console`.

use std::process::ExitCode;

use crate::cli::ConsoleArgs;
use crate::settings::Admin;

pub async fn run(settings: Admin<ConsoleArgs>) -> anyhow::Result<ExitCode> {
    let _ = settings;
    anyhow::bail!("eic-connect console is not available yet")
}
