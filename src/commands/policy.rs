//! `eic-connect policy`.

use std::process::ExitCode;

use crate::cli::PolicyArgs;
use crate::settings::Admin;

pub async fn run(settings: Admin<PolicyArgs>) -> anyhow::Result<ExitCode> {
    let _ = settings;
    anyhow::bail!("eic-connect policy is not available yet")
}
