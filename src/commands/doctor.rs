//! `eic-connect doctor TARGET`: a preflight that explains why a connection
//! would fail (the checks are in [`crate::doctor`]). Prints one line per
//! check, or with `--json` one JSON object. Exit status 0 when nothing
//! failed (warnings allowed), 1 otherwise.

use std::process::ExitCode;

use crate::doctor::{self, Request};
use crate::settings::Doctor;

pub async fn run(settings: Doctor) -> anyhow::Result<ExitCode> {
    let user = settings.user;
    let request = Request {
        destination: settings.destination.clone(),
        target: settings.target,
        explicit_user: user
            .source
            .is_given()
            .then(|| (user.name, user.source.to_string())),
        port: settings.port,
        address_choice: settings.address,
        via: settings.path.via,
        eice_id: settings.path.eice_id.clone(),
        source_ip: settings.source_ip,
    };
    let report = doctor::run(&settings.aws, &request).await?;
    let text = if settings.json {
        doctor::report::to_json(&report) + "\n"
    } else {
        doctor::report::render(&report)
    };
    crate::error::print_stdout(&text)?;
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
