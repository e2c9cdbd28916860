//! The interactive choice when a target matches several instances: a fuzzy
//! finder on the terminal. Only offered when both standard input and
//! standard error are terminals, so a script or CI job gets the error that
//! lists the matches instead of a prompt nobody will answer.

use std::io::IsTerminal;

use crate::aws::Scope;
use crate::aws::ec2::{self, InstanceInfo};
use crate::target::Target;

/// Whether a person is there to choose.
pub fn available() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Lets the user choose one of `found` (type to filter, arrows to move,
/// Enter to take, Esc to give up). Giving up is the same error a script
/// would get: the list of matches.
pub fn pick(
    mut found: Vec<InstanceInfo>,
    target: &Target,
    scope: &Scope,
) -> anyhow::Result<InstanceInfo> {
    // Every line is terminal-safe: tag values cannot reach the terminal raw.
    let items: Vec<String> = found.iter().map(InstanceInfo::summary).collect();
    let prompt = format!(
        "{target} matches {} instances ({}): type to filter, Enter to connect, Esc to cancel",
        found.len(),
        scope.describe()
    );
    let term = dialoguer::console::Term::stderr();
    // Ctrl-C in the picker makes it raise SIGINT, which by default would end
    // eic-connect with the terminal's cursor still hidden: catch the signal
    // (for the rest of the run; ssh gets its own handling later) and treat
    // it like Esc.
    let _caught = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let chosen = dialoguer::FuzzySelect::new()
        .with_prompt(prompt)
        .items(&items)
        .default(0)
        .highlight_matches(false)
        .interact_on_opt(&term);
    let _ = term.show_cursor();
    match chosen {
        Ok(Some(index)) if index < found.len() => Ok(found.swap_remove(index)),
        Ok(_) => ec2::exactly_one(found, target, scope),
        Err(err) => {
            tracing::debug!(%err, "the picker ended without a choice");
            ec2::exactly_one(found, target, scope)
        }
    }
}
