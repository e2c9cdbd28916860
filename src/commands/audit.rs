//! `eic-connect audit`.

use std::process::ExitCode;

use crate::cli::AuditArgs;
use crate::settings::Admin;

pub async fn run(settings: Admin<AuditArgs>) -> anyhow::Result<ExitCode> {
    let _ = settings;
    anyhow::bail!("eic-connect audit is not available yet")
}
