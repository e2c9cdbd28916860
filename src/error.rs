//! Failures that decide an exit status or a hint, and how they are reported.
//!
//! Everything else travels as `anyhow::Error`; at the top, `report` prints the
//! whole cause chain on one line, prefixed `eic-connect: error:`, followed by
//! whatever `hint:` lines the failure carries.

use std::fmt;
use std::process::ExitCode;

/// Exit status when eic-connect itself fails before or around ssh: the same
/// value ssh uses for a connection failure, so scripts need one check.
pub const EXIT_FAILURE: u8 = 255;
/// Exit status for a command line that cannot be used (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit status after Ctrl-C, SIGTERM or SIGHUP, as a shell reports SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// A failure the user can act on: a message, optional extra lines (such as a
/// list of matching instances) and hints saying what to do next.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: String,
    pub details: Vec<String>,
    pub hints: Vec<String>,
    pub exit: u8,
    /// What went wrong, for code that reacts to it (never the message text).
    pub kind: FailureKind,
}

/// The failures some caller reacts to; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureKind {
    #[default]
    Other,
    /// IAM denied the call.
    NotAuthorized,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            details: Vec::new(),
            hints: Vec::new(),
            exit: EXIT_FAILURE,
            kind: FailureKind::Other,
        }
    }

    pub fn kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }

    /// A command line that cannot be used: exit status 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            exit: EXIT_USAGE,
            ..Failure::new(message)
        }
    }

    /// Ctrl-C, SIGTERM or SIGHUP before ssh started: exit status 130.
    pub fn interrupted() -> Self {
        Failure {
            exit: EXIT_INTERRUPTED,
            ..Failure::new("interrupted; nothing was left behind")
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    pub fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Shorthand for returning a `Failure` from a function yielding `anyhow::Result`.
pub fn fail<T>(failure: Failure) -> anyhow::Result<T> {
    Err(anyhow::Error::new(failure))
}

/// Whether any failure in `err`'s chain is of `kind`.
pub fn is_kind(err: &anyhow::Error, kind: FailureKind) -> bool {
    err.chain()
        .filter_map(|c| c.downcast_ref::<Failure>())
        .any(|f| f.kind == kind)
}

/// Renders an error as eic-connect prints it: one `error:` line holding the
/// cause chain, then detail lines, then `hint:` lines.
pub fn render(err: &anyhow::Error) -> String {
    let mut chain: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Wrapped errors often repeat their source's text; print it once.
        if chain.last().is_some_and(|prev| prev.contains(&text)) {
            continue;
        }
        chain.push(text);
    }
    let mut out = format!("eic-connect: error: {}\n", chain.join(": "));
    if let Some(failure) = find_failure(err) {
        for line in &failure.details {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        for hint in &failure.hints {
            out.push_str("hint: ");
            out.push_str(hint);
            out.push('\n');
        }
    }
    out
}

fn find_failure(err: &anyhow::Error) -> Option<&Failure> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Failure>())
}

/// The exit status for an error: the failure's own, else 255.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    find_failure(err).map_or(EXIT_FAILURE, |f| f.exit)
}

/// Writes to standard output; a reader that went away (`| head`) is not an
/// error worth a panic or a message.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

/// Maps a child's exit status to ours: the code itself, or 128 + signal as a
/// shell reports it.
pub fn child_exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.wrapping_add(signal as u8)),
        (None, None) => ExitCode::from(EXIT_FAILURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn failure_renders_chain_details_and_hints() {
        let err = fail::<()>(
            Failure::new("instance i-0123456789abcdef0 is stopped")
                .detail("i-0123456789abcdef0  web-1  stopped")
                .hint("start it: aws ec2 start-instances --instance-ids i-0123456789abcdef0"),
        )
        .context("cannot connect to web-1")
        .unwrap_err();
        assert_eq!(
            render(&err),
            "eic-connect: error: cannot connect to web-1: instance i-0123456789abcdef0 is stopped\n  \
             i-0123456789abcdef0  web-1  stopped\n\
             hint: start it: aws ec2 start-instances --instance-ids i-0123456789abcdef0\n"
        );
        assert_eq!(exit_code(&err), EXIT_FAILURE);
    }

    #[test]
    fn usage_failures_exit_2_and_plain_errors_255() {
        let usage = anyhow::Error::new(Failure::usage("bad target"));
        assert_eq!(exit_code(&usage), 2);
        let plain = anyhow::anyhow!("io went wrong");
        assert_eq!(exit_code(&plain), 255);
        assert_eq!(render(&plain), "eic-connect: error: io went wrong\n");
    }

    #[test]
    fn repeated_cause_text_is_printed_once() {
        let inner = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(inner).context("dispatch failure: connection refused");
        assert_eq!(
            render(&err),
            "eic-connect: error: dispatch failure: connection refused\n"
        );
    }

    #[test]
    fn child_status_passes_through() {
        use std::os::unix::process::ExitStatusExt;
        let exited = std::process::ExitStatus::from_raw(7 << 8);
        assert_eq!(child_exit_code(exited), ExitCode::from(7));
        let killed = std::process::ExitStatus::from_raw(libc::SIGTERM);
        assert_eq!(child_exit_code(killed), ExitCode::from(143));
    }
}
