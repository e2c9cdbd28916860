//! What doctor found, and how it is shown: one line per check for a
//! terminal, or one JSON object.

use std::fmt::Write as _;

use crate::sanitize::terminal_safe;

use super::checks::{Check, Status};
use super::fix::FixOutcome;
use super::{Route, Source};

/// Everything doctor found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: String,
    pub instance_id: Option<String>,
    pub name: Option<String>,
    pub region: String,
    pub route: Option<Route>,
    pub source: Option<Source>,
    pub os_user: Option<String>,
    /// The IAM principal the policies were simulated for.
    pub caller: Option<String>,
    pub checks: Vec<Check>,
    /// With `--fix`: what was offered and what became of it.
    pub fixes: Option<Vec<FixOutcome>>,
}

impl Report {
    /// Whether any check failed (warnings do not count).
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

/// The report for a terminal: one line per check, fixes indented below.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let who = match (&report.instance_id, &report.name) {
        (Some(id), Some(name)) => format!("{id} ({:?})", terminal_safe(name).as_ref()),
        (Some(id), None) => id.clone(),
        _ => terminal_safe(&report.target).into_owned(),
    };
    let _ = writeln!(out, "eic-connect doctor: {who}, region {}", report.region);
    for check in &report.checks {
        let _ = writeln!(
            out,
            "{:<4}  {:<15} {}",
            check.status.as_str().to_ascii_uppercase(),
            check.name,
            terminal_safe(&check.detail)
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "{:<21} fix: {}", "", terminal_safe(fix));
        }
    }
    // Through Session Manager, the caller's address does not matter.
    match &report.source {
        _ if report.route == Some(Route::SessionManager) => {}
        Some(source) if !source.given => {
            let _ = writeln!(
                out,
                "note: your address was taken to be {} (the local address used to reach the EC2 API); \
                 behind NAT the instance sees another one: pass --source-ip",
                source.ip
            );
        }
        Some(_) => {}
        None => {
            let _ = writeln!(
                out,
                "note: your address is unknown: pass --source-ip to check the security groups against it"
            );
        }
    }
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    let _ = match failed {
        0 if warned == 0 => writeln!(out, "All checks passed."),
        0 => writeln!(
            out,
            "No check failed ({warned} warning{}).",
            if warned == 1 { "" } else { "s" }
        ),
        n => writeln!(out, "{n} check{} failed.", if n == 1 { "" } else { "s" }),
    };
    out
}

/// The report as one JSON object.
pub fn to_json(report: &Report) -> String {
    use serde_json::{Value, json};
    let (path, address, endpoint) = match &report.route {
        Some(Route::Direct(ip)) => (json!("direct"), json!(ip.to_string()), Value::Null),
        Some(Route::Endpoint(e)) => (json!("eice"), Value::Null, json!(e.id)),
        Some(Route::SessionManager) => (json!("ssm"), Value::Null, Value::Null),
        None => (Value::Null, Value::Null, Value::Null),
    };
    let source = report.source.as_ref().map_or(Value::Null, |s| {
        json!({
            "address": s.ip.to_string(),
            "how": if s.given { "given with --source-ip" } else { "assumed: the local address used to reach the EC2 API" },
        })
    });
    let checks: Vec<Value> = report
        .checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": c.status.as_str(),
                "detail": c.detail,
                "fix": c.fix,
            })
        })
        .collect();
    let mut value = json!({
        "target": report.target,
        "instance_id": report.instance_id,
        "name": report.name,
        "region": report.region,
        "path": path,
        "address": address,
        "endpoint": endpoint,
        "source": source,
        "os_user": report.os_user,
        "caller": report.caller,
        "ok": !report.failed(),
        "checks": checks,
    });
    if let Some(fixes) = &report.fixes {
        value["fixes"] = fixes
            .iter()
            .map(|f| {
                json!({
                    "check": f.check,
                    "change": f.fix.summary(),
                    "aws_cli": f.fix.aws_cli(),
                    "call": f.fix.api_call(),
                    "result": f.result.as_str(),
                    "error": f.error,
                })
            })
            .collect();
    }
    // Tag values and messages: terminal-safe, yet exact once decoded.
    crate::fleet::json_text(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_and_json() {
        let report = Report {
            target: "web-1".into(),
            instance_id: Some("i-0abc".into()),
            name: Some("web\x1b[2J".into()),
            region: "us-east-1".into(),
            route: Some(Route::Direct("3.1.2.3".parse().unwrap())),
            source: Some(Source {
                ip: "198.51.100.7".parse().unwrap(),
                given: true,
            }),
            os_user: Some("ubuntu".into()),
            checks: vec![
                Check::new("instance", Status::Pass, "i-0abc is running"),
                Check::new("metadata", Status::Fail, "disabled").fix("enable it"),
            ],
            ..Report::default()
        };
        let text = render(&report);
        assert!(
            text.contains("PASS  instance        i-0abc is running\n"),
            "{text}"
        );
        assert!(text.contains("FAIL  metadata        disabled\n"), "{text}");
        assert!(
            text.contains("                      fix: enable it\n"),
            "{text}"
        );
        assert!(text.ends_with("1 check failed.\n"), "{text}");
        assert!(!text.contains('\x1b'));
        let raw = to_json(&report);
        assert!(!raw.contains('\x1b'), "{raw}");
        let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(json["name"], "web\x1b[2J", "exact once decoded");
        assert_eq!(json["ok"], false);
        assert_eq!(json["path"], "direct");
        assert_eq!(json["address"], "3.1.2.3");
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "enable it");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(json["source"]["how"], "given with --source-ip");
    }

    #[test]
    fn notes_about_the_source_and_the_summary() {
        let mut report = Report {
            target: "web\x1b[2J".into(),
            region: "eu-west-1".into(),
            checks: vec![Check::new("instance", Status::Warn, "odd")],
            ..Report::default()
        };
        let text = render(&report);
        assert!(text.contains(", region eu-west-1\n"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("note: your address is unknown"), "{text}");
        assert!(text.ends_with("No check failed (1 warning).\n"), "{text}");
        report.source = Some(Source {
            ip: "192.168.1.5".parse().unwrap(),
            given: false,
        });
        report.checks[0].status = Status::Pass;
        let text = render(&report);
        assert!(
            text.contains("note: your address was taken to be 192.168.1.5"),
            "{text}"
        );
        assert!(text.ends_with("All checks passed.\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&to_json(&report)).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["path"], serde_json::Value::Null);
        assert_eq!(json["source"]["address"], "192.168.1.5");
        assert!(
            json["source"]["how"]
                .as_str()
                .is_some_and(|h| h.starts_with("assumed"))
        );
    }

    #[test]
    fn session_manager_in_text_and_json() {
        let report = Report {
            target: "db-1".into(),
            instance_id: Some("i-0abc".into()),
            region: "us-east-1".into(),
            route: Some(Route::SessionManager),
            source: Some(Source {
                ip: "192.168.1.5".parse().unwrap(),
                given: false,
            }),
            checks: vec![
                Check::new("path", Status::Pass, "through Session Manager"),
                Check::new("session-manager", Status::Note, "not managed").fix("run the agent"),
            ],
            ..Report::default()
        };
        let text = render(&report);
        assert!(
            text.contains("NOTE  session-manager not managed\n"),
            "{text}"
        );
        assert!(
            text.contains("                      fix: run the agent\n"),
            "{text}"
        );
        assert!(!text.contains("note: your address"), "{text}");
        assert!(
            text.ends_with("All checks passed.\n"),
            "a note is no warning: {text}"
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&report)).unwrap();
        assert_eq!(json["path"], "ssm");
        assert_eq!(json["address"], serde_json::Value::Null);
        assert_eq!(json["endpoint"], serde_json::Value::Null);
        assert_eq!(json["ok"], true);
        assert_eq!(json["checks"][1]["status"], "note");
    }
}
