//! `eic-connect list [FILTER…]`: the instances a filter selects, with the
//! OS user eic-connect would log in as.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::{self, Clients};
use crate::fleet;
use crate::osuser::Choice;
use crate::sanitize::terminal_safe;
use crate::settings::List;

/// Widest a name is shown in the table; longer ones end in `…`.
const NAME_WIDTH: usize = 40;

pub async fn run(settings: List) -> anyhow::Result<ExitCode> {
    let filters = fleet::parse_filters(&settings.filters)?;
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let instances = ec2::list(&clients, filters).await?;
    let given = settings.user.map(|u| (u.name, u.source));
    let users = fleet::os_users(&clients, &instances, given, &settings.state_dir).await;
    let text = if settings.json {
        let all: Vec<serde_json::Value> = instances
            .iter()
            .map(|i| fleet::instance_json(i, users.get(&i.id)))
            .collect();
        fleet::json_text(&serde_json::Value::Array(all)) + "\n"
    } else {
        let rows: Vec<Vec<String>> = instances.iter().map(|i| row(i, users.get(&i.id))).collect();
        if std::io::stdout().is_terminal() {
            table(&rows)
        } else {
            rows.iter().map(|r| r.join("\t") + "\n").collect()
        }
    };
    crate::error::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

const HEADER: [&str; 8] = [
    "NAME",
    "INSTANCE",
    "STATE",
    "TYPE",
    "AZ",
    "PUBLIC IP",
    "PRIVATE IP",
    "USER",
];

/// One instance's cells, terminal-safe, `-` for nothing.
fn row(i: &InstanceInfo, user: Option<&Choice>) -> Vec<String> {
    let cell = |s: Option<String>| s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into());
    vec![
        cell(i.name.as_deref().map(|n| terminal_safe(n).into_owned())),
        i.id.clone(),
        terminal_safe(&i.state).into_owned(),
        cell(i.instance_type.clone()),
        cell(i.availability_zone.clone()),
        cell(i.addresses.public_ip.map(|ip| ip.to_string())),
        cell(i.addresses.private_ip.map(|ip| ip.to_string())),
        cell(user.map(|c| c.user.clone())),
    ]
}

/// Rows aligned under the header, names cut to [`NAME_WIDTH`].
fn table(rows: &[Vec<String>]) -> String {
    crate::table::render(&HEADER, rows, Some((0, NAME_WIDTH)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_width::UnicodeWidthStr;

    #[test]
    fn table_aligns_by_display_width() {
        let mut a = vec!["-".to_owned(); 8];
        a[0] = "ウェブ".into(); // three characters, six columns
        a[1] = "i-1".into();
        let mut b = vec!["-".to_owned(); 8];
        b[0] = "db".into();
        b[1] = "i-2".into();
        let text = table(&[a, b]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |line: &str| {
            let at = line.find("i-").unwrap();
            line[..at].width()
        };
        assert_eq!(col(lines[1]), col(lines[2]));
        assert_eq!(
            lines[0].find("INSTANCE").map(|b| lines[0][..b].width()),
            Some(col(lines[1]))
        );
    }
}
