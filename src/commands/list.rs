//! `eic-connect list [FILTER…]`: the instances a filter selects, with the
//! OS user eic-connect would log in as.

use std::io::IsTerminal;
use std::process::ExitCode;

use unicode_width::UnicodeWidthStr;

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

/// Rows aligned under a header, by display width (names may be wide).
fn table(rows: &[Vec<String>]) -> String {
    let mut shown: Vec<Vec<String>> = vec![HEADER.iter().map(|h| (*h).to_owned()).collect()];
    shown.extend(rows.iter().map(|r| {
        let mut r = r.clone();
        r[0] = truncate(&r[0], NAME_WIDTH);
        r
    }));
    let mut widths = vec![0; HEADER.len()];
    for r in &shown {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    for r in &shown {
        let mut line = String::new();
        for (n, (cell, w)) in r.iter().zip(&widths).enumerate() {
            line.push_str(cell);
            if n + 1 < r.len() {
                line.push_str(&" ".repeat(w - cell.width() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    for c in s.chars() {
        if out.width() + c.to_string().width() > max - 1 {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn long_names_are_cut() {
        let long = "x".repeat(60);
        let cut = truncate(&long, NAME_WIDTH);
        assert_eq!(cut.width(), NAME_WIDTH);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", NAME_WIDTH), "short");
    }
}
