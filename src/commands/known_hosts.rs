//! `eic-connect __known-hosts`: run by ssh as its `KnownHostsCommand` when
//! host keys are pinned (`--verify-host-key`, `serial`). Prints the pinned
//! keys as known_hosts lines, and the offered key if its fingerprint is
//! pinned; appends what it saw to the report file so that eic-connect can
//! explain a refusal. Never talks to AWS; always exits 0 (ssh treats no
//! output as "no known key", which with strict checking means refusal).

use std::io::Write;
use std::process::ExitCode;

use crate::cli::KnownHostsArgs;
use crate::hostkeys::{HostKey, Pins, answer, is_sha256_fingerprint};

pub fn run(args: &KnownHostsArgs) -> anyhow::Result<ExitCode> {
    let pins = Pins {
        keys: args
            .key
            .iter()
            .filter_map(|k| k.split_once(':'))
            .filter_map(|(alg, b64)| HostKey::parse(alg, b64))
            .collect(),
        fingerprints: args
            .pin
            .iter()
            .filter(|f| is_sha256_fingerprint(f))
            .cloned()
            .collect(),
    };
    let word = |i: usize| args.words.get(i).map(String::as_str).unwrap_or_default();
    let (lines, verdict) = answer(&pins, word(0), word(1), word(2), word(3));
    if let (Some(verdict), Some(report)) = (verdict, &args.report) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(report)?;
        writeln!(file, "{}", verdict.to_line())?;
    }
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The `KnownHostsCommand` that makes ssh accept exactly `pins`, reporting
/// to `report`.
pub fn pinning_command(
    report: &std::path::Path,
    pins: &Pins,
) -> anyhow::Result<std::ffi::OsString> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("cannot find eic-connect's own path")?;
    crate::hostkeys::known_hosts_command(&exe, report, pins).map_err(|why| {
        anyhow::Error::new(
            crate::error::Failure::new(format!("cannot pin host keys: {why}"))
                .hint("install eic-connect under a plain path (no quotes, %, $ or backslashes)"),
        )
    })
}
