//! `eic-connect endpoint`.

use std::process::ExitCode;

use crate::cli::EndpointArgs;
use crate::settings::Admin;

pub async fn run(settings: Admin<EndpointArgs>) -> anyhow::Result<ExitCode> {
    let _ = settings;
    anyhow::bail!("eic-connect endpoint is not available yet")
}
