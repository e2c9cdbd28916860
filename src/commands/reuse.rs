//! `eic-connect reuse list|stop [TARGET]`: the master connections kept for
//! reuse (see [`crate::reuse`]).

use std::process::ExitCode;
use std::time::SystemTime;

use crate::cli::ReuseAction;
use crate::reuse::{self, Master};
use crate::sanitize::terminal_safe;
use crate::settings::ReuseCommand;

pub fn run(settings: &ReuseCommand) -> anyhow::Result<ExitCode> {
    // Only this user's private directory is read: a socket elsewhere is
    // nobody's to list or end.
    let live: Vec<Master> = if std::fs::symlink_metadata(&settings.dir).is_ok() {
        crate::dirs::ensure_private_dir(&settings.dir)?;
        reuse::masters(&settings.dir)
            .into_iter()
            .filter(|m| reuse::live(&m.path))
            .collect()
    } else {
        Vec::new()
    };
    match &settings.action {
        ReuseAction::List => list(&live),
        ReuseAction::Stop { target } => stop(settings, live, target.as_deref()),
    }
}

fn list(live: &[Master]) -> anyhow::Result<ExitCode> {
    if live.is_empty() {
        eprintln!("eic-connect: no master connections");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::from("HOST\tUSER\tPORT\tROUTE\tAGE\n");
    for master in live {
        let age = SystemTime::now()
            .duration_since(master.since)
            .map_or(0, |d| d.as_secs());
        let age = format!("{}m{:02}s", age / 60, age % 60);
        match &master.key {
            Some(k) => out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{age}\n",
                terminal_safe(&k.host),
                terminal_safe(&k.user),
                k.port,
                k.route
            )),
            None => out.push_str(&format!(
                "{}\t-\t-\t-\t{age}\n",
                terminal_safe(&master.path.display().to_string())
            )),
        }
    }
    crate::error::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `master` reaches `target`: its host is the target as `list`
/// shows it, or the ssh-config block's default host for a Name
/// (`eic-web-1` for `web-1`).
fn matches(master: &Master, target: &str) -> bool {
    master
        .key
        .as_ref()
        .is_some_and(|k| k.host == target || k.host.strip_prefix("eic-") == Some(target))
}

fn stop(
    settings: &ReuseCommand,
    live: Vec<Master>,
    target: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let chosen: Vec<Master> = live
        .into_iter()
        .filter(|m| target.is_none_or(|t| matches(m, t)))
        .collect();
    if chosen.is_empty() {
        match target {
            Some(t) => eprintln!("eic-connect: no master connection to {}", terminal_safe(t)),
            None => eprintln!("eic-connect: no master connections"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    for master in chosen {
        let name = match &master.key {
            Some(k) => format!("{}@{}:{} ({})", k.user, k.host, k.port, k.route),
            None => master.path.display().to_string(),
        };
        if reuse::stop(&settings.ssh_program, &master.path) {
            eprintln!(
                "eic-connect: ended the master connection {}",
                terminal_safe(&name)
            );
        } else {
            failed += 1;
            eprintln!(
                "eic-connect: error: could not end the master connection {}",
                terminal_safe(&name)
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
