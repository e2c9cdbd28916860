//! `eic-connect __known-hosts`: run by ssh as its `KnownHostsCommand`.
//!
//! With `--record FILE --slot SLOT` (the ssh-config block): first use, keyed
//! by the instance id the proxy found for the name ssh was given, so a name
//! that moves to another instance is a new host. Prints the keys recorded
//! for the instance, or records and prints the offered one.
//!
//! Otherwise, host keys are pinned (`--verify-host-key`, `serial`). Prints the pinned
//! keys as known_hosts lines, and the offered key if its fingerprint is
//! pinned; appends what it saw to the report file so that eic-connect can
//! explain a refusal. Never talks to AWS; always exits 0 (ssh treats no
//! output as "no known key", which with strict checking means refusal).

use std::io::Write;
use std::process::ExitCode;

use crate::hostkeys::{answer, append_first_use, first_use_answer};
use crate::settings::{KnownHosts, KnownHostsMode};

pub fn run(settings: &KnownHosts) -> anyhow::Result<ExitCode> {
    let word = |i: usize| {
        settings
            .words
            .get(i)
            .map(String::as_str)
            .unwrap_or_default()
    };
    let lines = match &settings.mode {
        KnownHostsMode::FirstUse { file, slot } => {
            // The instance the proxy reached; its state file is written
            // before the proxy relays a byte, so before ssh sees a host key.
            let mut state = slot.clone().into_os_string();
            state.push(".state");
            let alias = std::fs::read_to_string(&state)
                .ok()
                .and_then(|text| text.split_whitespace().next().map(str::to_owned))
                .filter(|id| crate::target::is_instance_id(id));
            let Some(alias) = alias else {
                return Ok(ExitCode::SUCCESS);
            };
            let existing = std::fs::read_to_string(file).unwrap_or_default();
            let (lines, append) =
                first_use_answer(&existing, &alias, word(0), word(1), word(2), word(3));
            if let Some(line) = append {
                append_first_use(file, &alias, &line)?;
            }
            lines
        }
        KnownHostsMode::Pinned { pins, report } => {
            let (lines, verdict) = answer(pins, word(0), word(1), word(2), word(3));
            if let (Some(verdict), Some(report)) = (verdict, report) {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(report)?;
                writeln!(file, "{}", verdict.to_line())?;
            }
            lines
        }
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
