//! Many instances at once (`list`, `run`): the filter grammar, the OS user
//! for each instance, labels for output, and JSON that is safe on a terminal.

use std::collections::{BTreeMap, BTreeSet};

use crate::aws::Clients;
use crate::aws::ec2::InstanceInfo;
use crate::error::Failure;
use crate::osuser::{self, Choice, UserSource};
use crate::sanitize::{needs_escape, terminal_safe};
use crate::target::is_instance_id;

/// EC2 filters: name → values (values of one filter match any; filters all
/// must match).
pub type Filters = Vec<(String, Vec<String>)>;

/// Short keys for the filters people use most; any other `KEY=VALUE` is
/// passed to EC2 as the filter named KEY.
const SHORT_KEYS: &[(&str, &str)] = &[
    ("name", "tag:Name"),
    ("state", "instance-state-name"),
    ("type", "instance-type"),
    ("az", "availability-zone"),
    ("id", "instance-id"),
    ("vpc", "vpc-id"),
    ("subnet", "subnet-id"),
    ("ami", "image-id"),
];

/// Parses `list`/`run` filters: `web-*` (a Name glob), `i-0abc…` (an
/// instance id), `tag:Role=build`, `state=running,stopped`, or any EC2
/// filter `NAME=VALUE`. Commas separate values that may each match; the
/// same key given twice also matches either.
pub fn parse_filters(words: &[String]) -> Result<Filters, Failure> {
    let mut merged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for word in words {
        let shown = terminal_safe(word);
        if word.chars().any(char::is_control) {
            return Err(Failure::usage(format!(
                "filter {shown:?} contains control characters"
            )));
        }
        let (name, values): (String, Vec<&str>) = match word.split_once('=') {
            None if word.is_empty() || word.starts_with('-') => {
                return Err(Failure::usage(format!("{shown:?} is not a filter"))
                    .hint("filters look like web-*, tag:Role=build or state=running"));
            }
            None if is_instance_id(word) => ("instance-id".into(), vec![word.as_str()]),
            None => ("tag:Name".into(), vec![word.as_str()]),
            Some((key, value)) => {
                let key = key.trim();
                let name = SHORT_KEYS
                    .iter()
                    .find(|(short, _)| short.eq_ignore_ascii_case(key))
                    .map_or_else(|| key.to_owned(), |(_, long)| (*long).to_owned());
                let valid_name = match name.strip_prefix("tag:") {
                    Some(tag) => !tag.is_empty(),
                    None => {
                        !name.is_empty()
                            && name.chars().all(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_')
                            })
                    }
                };
                if !valid_name || name.starts_with('-') {
                    return Err(Failure::usage(format!("{shown:?} is not a filter"))
                        .hint("filters look like web-*, tag:Role=build or state=running"));
                }
                let values: Vec<&str> = value.split(',').filter(|v| !v.is_empty()).collect();
                if values.is_empty() {
                    return Err(Failure::usage(format!("filter {shown:?} has no value"))
                        .hint("to select instances that merely have a tag, use tag-key=KEY"));
                }
                (name, values)
            }
        };
        merged
            .entry(name)
            .or_default()
            .extend(values.into_iter().map(str::to_owned));
    }
    Ok(merged
        .into_iter()
        .map(|(name, values)| (name, values.into_iter().collect()))
        .collect())
}

/// Filters as one readable phrase, for messages.
pub fn describe(filters: &Filters) -> String {
    let parts: Vec<String> = filters
        .iter()
        .map(|(name, values)| format!("{name}={}", values.join(",")))
        .collect();
    terminal_safe(&parts.join(" ")).into_owned()
}

/// The OS user for each instance, as `connect` would choose it: the one
/// configured (`given`), else the guess remembered for the instance, else a
/// guess from its AMI (one DescribeImages call for all of them).
pub async fn os_users(
    clients: &Clients,
    instances: &[InstanceInfo],
    given: Option<(String, UserSource)>,
    state_dir: &std::path::Path,
) -> BTreeMap<String, Choice> {
    let mut out = BTreeMap::new();
    if let Some((user, source)) = given {
        for instance in instances {
            let choice = Choice {
                user: user.clone(),
                source: source.clone(),
            };
            out.insert(instance.id.clone(), choice);
        }
        return out;
    }
    let mut need: Vec<&InstanceInfo> = Vec::new();
    for instance in instances {
        match osuser::remembered(state_dir, &instance.id) {
            Some(user) => {
                let source = UserSource::Remembered;
                out.insert(instance.id.clone(), Choice { user, source });
            }
            None => need.push(instance),
        }
    }
    let images: BTreeSet<&str> = need.iter().filter_map(|i| i.image_id.as_deref()).collect();
    let images: Vec<&str> = images.into_iter().collect();
    let found = osuser::describe_images(clients, &images).await;
    for instance in need {
        let image = instance.image_id.as_deref();
        let lookup = match (&found, image) {
            (Ok(facts), Some(id)) => Ok(facts.iter().find(|f| f.image_id == id).cloned()),
            (Err(err), Some(_)) => Err(err.clone()),
            (_, None) => Ok(None),
        };
        out.insert(instance.id.clone(), Choice::from_lookup(image, lookup));
    }
    out
}

/// A short, terminal-safe name for each instance in output: its Name tag if
/// no other instance here shares it, else `name/i-…`; the id if unnamed.
pub fn labels(instances: &[InstanceInfo]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in instances {
        if let Some(name) = instance.name.as_deref().filter(|n| !n.is_empty()) {
            *counts.entry(name).or_default() += 1;
        }
    }
    instances
        .iter()
        .map(|instance| {
            let label = match instance.name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) if counts.get(name) == Some(&1) => terminal_safe(name).into_owned(),
                Some(name) => format!("{}/{}", terminal_safe(name), instance.id),
                None => instance.id.clone(),
            };
            (instance.id.clone(), label)
        })
        .collect()
}

/// JSON text that is also safe to print on a terminal: every character the
/// terminal sanitiser escapes ([`needs_escape`]: controls, separators, bidi
/// and invisible format characters) becomes a `\uXXXX` escape (a surrogate
/// pair beyond U+FFFF). A JSON parser reads back the exact values.
pub fn json_text(value: &serde_json::Value) -> String {
    let raw = value.to_string();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if needs_escape(c) {
            // Outside strings, compact JSON holds only ASCII punctuation,
            // digits and letters: anything escaped here is inside a string.
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An instance as `list --json` and `run --json` describe it (stable field
/// names, documented in the README).
pub fn instance_json(instance: &InstanceInfo, user: Option<&Choice>) -> serde_json::Value {
    let a = &instance.addresses;
    let tags: serde_json::Map<String, serde_json::Value> = instance
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "id": instance.id,
        "name": instance.name,
        "state": instance.state,
        "type": instance.instance_type,
        "availability_zone": instance.availability_zone,
        "public_ip": a.public_ip,
        "private_ip": a.private_ip,
        "ipv6": a.ipv6,
        "public_dns": a.public_dns,
        "private_dns": a.private_dns,
        "vpc_id": instance.vpc_id,
        "subnet_id": instance.subnet_id,
        "image_id": instance.image_id,
        "os_user": user.map(|c| &c.user),
        "os_user_source": user.map(|c| c.source.to_string()),
        "tags": tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Filters, Failure> {
        parse_filters(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    fn f(name: &str, values: &[&str]) -> (String, Vec<String>) {
        (
            name.to_owned(),
            values.iter().map(|v| (*v).to_owned()).collect(),
        )
    }

    #[test]
    fn filter_forms() {
        assert_eq!(parse(&["web-*"]).unwrap(), [f("tag:Name", &["web-*"])]);
        assert_eq!(
            parse(&["tag:Role=build", "state=running,stopped"]).unwrap(),
            [
                f("instance-state-name", &["running", "stopped"]),
                f("tag:Role", &["build"])
            ]
        );
        assert_eq!(
            parse(&["i-0123456789abcdef0"]).unwrap(),
            [f("instance-id", &["i-0123456789abcdef0"])]
        );
        assert_eq!(
            parse(&["type=t3.micro", "platform=windows", "tag:Team=a=b"]).unwrap(),
            [
                f("instance-type", &["t3.micro"]),
                f("platform", &["windows"]),
                f("tag:Team", &["a=b"])
            ]
        );
        // Names given twice match either.
        assert_eq!(
            parse(&["web-1", "web-2", "name=db"]).unwrap(),
            [f("tag:Name", &["db", "web-1", "web-2"])]
        );
        // Tag values are free text, spaces and all.
        assert_eq!(
            parse(&["tag:Owner=Jane Doe"]).unwrap(),
            [f("tag:Owner", &["Jane Doe"])]
        );
    }

    #[test]
    fn bad_filters_are_usage_errors() {
        for words in [
            &["state="][..],
            &["=x"],
            &["-rf"],
            &[""],
            &["tag:=x"],
            &["na me=x"],
            &["web\x1b[2J"],
        ] {
            let err = parse(words).unwrap_err();
            assert_eq!(err.exit, 2, "{words:?}");
            assert!(!err.message.contains('\x1b'), "{}", err.message);
        }
    }

    #[test]
    fn labels_are_unique_and_terminal_safe() {
        let inst = |id: &str, name: Option<&str>| InstanceInfo {
            id: id.into(),
            name: name.map(Into::into),
            ..Default::default()
        };
        let all = [
            inst("i-00000001", Some("web")),
            inst("i-00000002", Some("web")),
            inst("i-00000003", Some("db\x1b[31m")),
            inst("i-00000004", None),
        ];
        let l = labels(&all);
        assert_eq!(l["i-00000001"], "web/i-00000001");
        assert_eq!(l["i-00000002"], "web/i-00000002");
        assert_eq!(l["i-00000003"], "db\\u{1b}[31m");
        assert_eq!(l["i-00000004"], "i-00000004");
    }

    #[test]
    fn json_is_terminal_safe_and_exact() {
        let hostile = "a\x1b[2J\u{9b}1m\u{202e}b\x7f\n\u{61c}\u{2028}\u{2029}\u{200b}\u{feff}\u{2066}\u{180e}\u{e0041}";
        let v = serde_json::json!({ "name": hostile, hostile: [hostile] });
        let text = json_text(&v);
        assert!(!text.chars().any(needs_escape), "{text:?}");
        assert!(
            text.contains("\\u061c") && text.contains("\\udb40\\udc41"),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    /// The JSON escaping covers every character the terminal sanitiser
    /// escapes, and leaves printable text alone.
    #[test]
    fn json_escapes_what_the_terminal_sanitiser_escapes() {
        let escaped = (0..=0x10ffff)
            .filter_map(char::from_u32)
            .filter(|c| needs_escape(*c));
        for c in escaped.chain("aé€ウ👍\u{a0}".chars()) {
            let text = json_text(&serde_json::Value::String(c.to_string()));
            assert!(
                !text.chars().any(needs_escape),
                "U+{:04X}: {text:?}",
                c as u32
            );
            assert_eq!(
                text.contains(c),
                !needs_escape(c),
                "U+{:04X}: {text:?}",
                c as u32
            );
            let back: String = serde_json::from_str(&text).unwrap();
            assert_eq!(back, c.to_string());
        }
    }
}
