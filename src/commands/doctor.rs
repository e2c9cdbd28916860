//! `eic-connect doctor TARGET`: a preflight that explains why a connection
//! would fail (the checks are in [`crate::doctor`]). Prints one line per
//! check, or with `--json` one JSON object. Exit status 0 when nothing
//! failed (warnings allowed), 1 otherwise.
//!
//! With `--fix`, each failed check that one API call can fix is shown as
//! the AWS CLI command and the call eic-connect makes, then applied after
//! a yes on the terminal (or at once with `--yes`); without a terminal and
//! without `--yes` nothing is applied, and the output says so. After a
//! change the checks run again and their new result is shown.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::doctor::fix::{self, Applied, Fix, FixOutcome, FixResult};
use crate::doctor::{self, Request};
use crate::sanitize::terminal_safe;
use crate::settings::Doctor;

/// How each fix is decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consent {
    /// `--yes`.
    Given,
    /// Ask on the terminal.
    Ask,
    /// No terminal and no `--yes`: apply nothing.
    NoTerminal,
}

/// Rounds of fixes at most (a start can reveal what was hidden behind it).
const ROUNDS: usize = 3;

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
        max_tunnel_duration: settings.path.max_tunnel_duration,
        source_ip: settings.source_ip,
        console: settings.console,
    };
    let doctor = doctor::Doctor::new(&settings.aws, &request).await?;
    let mut report = doctor.run(&request).await;
    let json = settings.json;
    // The report and the fixes go to stdout; with --json, stdout holds only
    // the JSON and the fixes go to stderr.
    let say = |text: &str| -> anyhow::Result<()> {
        if json {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            Ok(())
        } else {
            crate::error::print_stdout(text)
        }
    };
    if settings.fix {
        let consent = if settings.yes {
            Consent::Given
        } else if std::io::stdin().is_terminal() {
            Consent::Ask
        } else {
            Consent::NoTerminal
        };
        let mut outcomes: Vec<FixOutcome> = Vec::new();
        let mut offered: Vec<Fix> = Vec::new();
        let mut shown = false;
        for round in 0..ROUNDS {
            if !json {
                if round > 0 {
                    say("\nAfter the changes:\n")?;
                }
                say(&doctor::report::render(&report))?;
            }
            shown = true;
            let fixes = fix::pending(&report.checks, &offered);
            if fixes.is_empty() {
                if round == 0 {
                    say(if report.failed() {
                        "--fix: no failed check has a change eic-connect can make; see the fixes above\n"
                    } else {
                        "--fix: nothing to change\n"
                    })?;
                }
                break;
            }
            say(&format!(
                "\n--fix: {} change{} would fix failed checks:\n",
                fixes.len(),
                if fixes.len() == 1 { "" } else { "s" }
            ))?;
            let mut changed = false;
            for (check, change) in fixes {
                offered.push(change.clone());
                // Group and prefix-list ids came from AWS.
                say(&format!(
                    "  {check}: {}\n    command: {}\n    eic-connect calls: {}\n",
                    terminal_safe(&change.summary()),
                    terminal_safe(&change.aws_cli()),
                    terminal_safe(&change.api_call())
                ))?;
                let go = match consent {
                    Consent::Given => true,
                    Consent::NoTerminal => false,
                    Consent::Ask => ask("apply? [y/N] "),
                };
                let (result, error) = if consent == Consent::NoTerminal {
                    (FixResult::NotAsked, None)
                } else if !go {
                    say("    not applied\n")?;
                    (FixResult::Declined, None)
                } else {
                    match change.apply(&doctor.clients).await {
                        Ok(Applied::Done) => {
                            changed = true;
                            say("    applied\n")?;
                            (FixResult::Applied, None)
                        }
                        Ok(Applied::AlreadyDone) => {
                            changed = true;
                            say("    already so: the security group has this rule\n")?;
                            (FixResult::AlreadyDone, None)
                        }
                        Err(err) => {
                            let shown = crate::error::render(&err);
                            say(&indent(&shown))?;
                            (FixResult::Failed, Some(shown.trim_end().to_owned()))
                        }
                    }
                };
                outcomes.push(FixOutcome {
                    check,
                    fix: change,
                    result,
                    error,
                });
            }
            if consent == Consent::NoTerminal {
                say(
                    "nothing was changed: standard input is not a terminal to ask on; run again with --yes to apply the changes above\n",
                )?;
            }
            if !changed {
                break;
            }
            report = doctor.run(&request).await;
            shown = false;
        }
        if !json && !shown {
            say("\nAfter the changes:\n")?;
            say(&doctor::report::render(&report))?;
        }
        report.fixes = Some(outcomes);
        if json {
            crate::error::print_stdout(&(doctor::report::to_json(&report) + "\n"))?;
        }
    } else {
        let text = if json {
            doctor::report::to_json(&report) + "\n"
        } else {
            doctor::report::render(&report)
        };
        crate::error::print_stdout(&text)?;
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Asks on the terminal; only "y" or "yes" is a yes.
fn ask(question: &str) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(question.as_bytes());
    let _ = err.flush();
    drop(err);
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(0) | Err(_) => false,
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
