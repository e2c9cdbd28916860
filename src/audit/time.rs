//! `--since` / `--until`: durations ago and RFC 3339 times, as epoch seconds.

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

use crate::error::Failure;
use crate::sanitize::terminal_safe;

/// How far back CloudTrail's event history goes.
pub const RETENTION_DAYS: i64 = 90;
const DAY: i64 = 24 * 3600;

/// `30s`, `15m`, `2h`, `7d`, `2w` (ago from `now`), or an RFC 3339 time
/// (`2026-11-30T08:00:00Z`, `…+02:00`), or a date (`2026-11-30`, midnight
/// UTC). Epoch seconds.
pub fn parse_when(text: &str, now: i64) -> Option<i64> {
    let text = text.trim();
    if let Some(secs) = parse_duration(text) {
        return now.checked_sub(secs);
    }
    if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        return parse_rfc3339(&format!("{text}T00:00:00Z"));
    }
    parse_rfc3339(text)
}

/// A number and a unit: s, m, h, d or w.
fn parse_duration(text: &str) -> Option<i64> {
    let unit = text.chars().last()?;
    let number = text.get(..text.len() - unit.len_utf8())?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = number.parse().ok()?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => DAY,
        'w' => 7 * DAY,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// An RFC 3339 time, with `Z` or an offset; epoch seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::from_str(text.trim(), Format::DateTimeWithOffset)
        .ok()
        .map(|t| t.secs())
}

/// `2026-12-02T00:55:12Z`.
pub fn format(secs: i64) -> String {
    DateTime::from_secs(secs)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| secs.to_string())
}

/// `--since` and `--until` as a range: by default the 24 hours before the
/// end (now); the start before the end, and within CloudTrail's 90 days.
pub fn range(since: Option<&str>, until: Option<&str>, now: i64) -> Result<(i64, i64), Failure> {
    let parse = |flag: &str, text: &str| {
        parse_when(text, now).ok_or_else(|| {
            Failure::usage(format!(
                "{flag} {:?} is neither a duration nor a time",
                terminal_safe(text).as_ref()
            ))
            .hint(
                "use a duration ago such as 30m, 2h or 7d, or a time such as 2026-11-30T08:00:00Z",
            )
        })
    };
    let until = match until {
        Some(text) => parse("--until", text)?,
        None => now,
    };
    let oldest = now - RETENTION_DAYS * DAY;
    let since = match since {
        Some(text) => parse("--since", text)?,
        // A day before the end, but not before the history begins.
        None => (until - DAY).max(oldest),
    };
    if since >= until {
        return Err(Failure::usage(format!(
            "the range is empty: --since {} is not before --until {}",
            format(since),
            format(until)
        ))
        .hint("give --since an earlier time than --until"));
    }
    if since < oldest {
        return Err(Failure::usage(format!(
            "CloudTrail keeps {RETENTION_DAYS} days of events; --since {} is older (the oldest is {})",
            format(since),
            format(oldest)
        ))
        .hint(format!("use --since {RETENTION_DAYS}d or later"))
        .hint("older events are only in a trail's log files in S3 (query them with Athena or CloudTrail Lake)"));
    }
    if until <= oldest {
        return Err(Failure::usage(format!(
            "CloudTrail keeps {RETENTION_DAYS} days of events; --until {} is older",
            format(until)
        ))
        .hint(format!("use --until within the last {RETENTION_DAYS} days")));
    }
    Ok((since, until))
}
