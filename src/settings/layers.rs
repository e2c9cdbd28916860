//! The layers below the command line: the `EIC_CONNECT_*` environment, then
//! the config file, then named aliases.
//!
//! Precedence, highest first: command line > alias (for its own target) >
//! environment > config file > AWS's own defaults (`AWS_REGION`, the
//! profile's settings). An alias sits just below the command line because it
//! describes one instance: its region and user belong to it, whatever the
//! shell's general defaults say.
//!
//! ```toml
//! # ~/.config/eic-connect/config.toml
//! region = "eu-west-1"
//! profile = "dev"
//! user = "ubuntu"
//! address = "private"       # auto | public | private | ipv6
//! connect = "auto"          # auto | direct | eice | ssm
//! reuse = "10m"             # keep master connections (true | false | duration)
//!
//! [alias.db]
//! target = "i-0123456789abcdef0"
//! region = "us-east-1"
//! user = "postgres"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::eice::ConnectVia;
use crate::error::Failure;
use crate::sanitize::terminal_safe;
use crate::target::{AddressChoice, parse_target, validate_user};

/// Settings any layer may give. `None`: this layer says nothing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Defaults {
    pub region: Option<String>,
    pub profile: Option<String>,
    /// The OS user to log in as.
    pub user: Option<String>,
    pub address: Option<AddressChoice>,
    pub connect: Option<ConnectVia>,
    pub eice_id: Option<String>,
    pub max_tunnel_duration: Option<u32>,
    pub api_timeout: Option<f64>,
    pub verify_host_key: Option<bool>,
    /// Connection reuse (`reuse = "10m"`, `true`, `false`).
    pub reuse: Option<crate::reuse::Setting>,
    /// Where the OS user came from, for `-v` (not a setting).
    #[serde(skip)]
    pub user_source: Option<String>,
}

/// A named target with its own settings: `eic-connect db`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub target: String,
    pub settings: Defaults,
}

/// The environment and config-file layers, and the aliases.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub env: Defaults,
    pub file: Defaults,
    pub aliases: BTreeMap<String, Alias>,
}

/// The environment variable behind each setting.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("region", "EIC_CONNECT_REGION"),
    ("profile", "EIC_CONNECT_PROFILE"),
    ("user", "EIC_CONNECT_OS_USER"),
    ("address", "EIC_CONNECT_ADDRESS"),
    ("connect", "EIC_CONNECT_PATH"),
    ("eice-id", "EIC_CONNECT_EICE_ID"),
    ("max-tunnel-duration", "EIC_CONNECT_MAX_TUNNEL_DURATION"),
    ("api-timeout", "EIC_CONNECT_API_TIMEOUT"),
    ("verify-host-key", "EIC_CONNECT_VERIFY_HOST_KEY"),
    ("reuse", "EIC_CONNECT_REUSE"),
];

impl Defaults {
    /// Field by field, `self` where it says something, else `lower`.
    pub fn or(self, lower: Defaults) -> Defaults {
        let user_source = if self.user.is_some() {
            self.user_source
        } else {
            lower.user_source
        };
        Defaults {
            region: self.region.or(lower.region),
            profile: self.profile.or(lower.profile),
            user: self.user.or(lower.user),
            address: self.address.or(lower.address),
            connect: self.connect.or(lower.connect),
            eice_id: self.eice_id.or(lower.eice_id),
            max_tunnel_duration: self.max_tunnel_duration.or(lower.max_tunnel_duration),
            api_timeout: self.api_timeout.or(lower.api_timeout),
            verify_host_key: self.verify_host_key.or(lower.verify_host_key),
            reuse: self.reuse.or(lower.reuse),
            user_source,
        }
    }

    /// The `EIC_CONNECT_*` variables (empty ones are unset), read through
    /// `get` so tests need not touch the process environment.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Defaults, Failure> {
        let mut defaults = Defaults::default();
        for (key, var) in ENV_VARS {
            let Some(raw) = get(var).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let raw = raw.trim();
            let value = match *key {
                "max-tunnel-duration" => raw
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| bad_env(var, raw, "not a whole number of seconds"))?,
                "api-timeout" => raw
                    .parse::<f64>()
                    .map(toml::Value::Float)
                    .map_err(|_| bad_env(var, raw, "not a number of seconds"))?,
                "verify-host-key" => toml::Value::Boolean(!matches!(
                    raw.to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "off"
                )),
                _ => toml::Value::String(raw.to_owned()),
            };
            let mut one = toml::Table::new();
            one.insert((*key).to_owned(), value);
            let part = Defaults::from_table(one).map_err(|why| {
                let why = why.split_once(": ").map_or(why.as_str(), |(_, w)| w);
                bad_env(var, raw, why)
            })?;
            defaults = part.or(defaults);
        }
        if defaults.user.is_some() {
            defaults.user_source = Some("EIC_CONNECT_OS_USER".into());
        }
        defaults
            .validate()
            .map_err(|f| f.hint("check the EIC_CONNECT_* variables"))?;
        Ok(defaults)
    }

    /// Reads a table's keys one by one, so a message can name the key that
    /// is wrong.
    fn from_table(table: toml::Table) -> Result<Defaults, String> {
        let mut out = Defaults::default();
        for (key, value) in table {
            let want = match key.as_str() {
                "max-tunnel-duration" => "a whole number",
                "api-timeout" => "a number",
                "verify-host-key" => "true or false",
                _ => "a string in quotes",
            };
            let fits = match (key.as_str(), &value) {
                ("max-tunnel-duration", toml::Value::Integer(_))
                | ("api-timeout", toml::Value::Integer(_) | toml::Value::Float(_))
                | ("verify-host-key", toml::Value::Boolean(_)) => true,
                ("max-tunnel-duration" | "api-timeout" | "verify-host-key", _) => false,
                (_, other) => matches!(other, toml::Value::String(_)),
            };
            // A known key with a value of the wrong kind (unknown keys are
            // left to serde, which lists the known ones).
            if !fits && ENV_VARS.iter().any(|(k, _)| *k == key) {
                return Err(format!("{key} must be {want}"));
            }
            let mut one = toml::Table::new();
            one.insert(key.clone(), value);
            let part: Defaults = one.try_into().map_err(|e: toml::de::Error| {
                format!("{}: {}", terminal_safe(&key), terminal_safe(e.message()))
            })?;
            out = part.or(out);
        }
        Ok(out)
    }

    /// Values no layer may hold, refused before any work.
    fn validate(&self) -> Result<(), Failure> {
        if let Some(user) = &self.user {
            validate_user(user)?;
        }
        if let Some(t) = self.api_timeout
            && !(t.is_finite() && t > 0.0 && t <= 3600.0)
        {
            return Err(Failure::usage(format!(
                "api-timeout must be between 0 and 3600 seconds, not {t}"
            )));
        }
        if let Some(n) = self.max_tunnel_duration
            && !(1..=3600).contains(&n)
        {
            return Err(Failure::usage(format!(
                "max-tunnel-duration must be between 1 and 3600 seconds, not {n}"
            )));
        }
        for (name, value) in [
            ("region", &self.region),
            ("profile", &self.profile),
            ("eice-id", &self.eice_id),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.chars().any(char::is_control) || v.starts_with('-'))
            {
                return Err(Failure::usage(format!(
                    "{name} {:?} is not usable",
                    terminal_safe(v).as_ref()
                )));
            }
        }
        Ok(())
    }
}

fn bad_env(var: &str, value: &str, why: &str) -> Failure {
    Failure::usage(format!(
        "{var}={:?} is not usable: {why}",
        terminal_safe(value).as_ref()
    ))
}

impl Layers {
    /// Reads the environment and the config file (`EIC_CONNECT_CONFIG`, else
    /// `$XDG_CONFIG_HOME/eic-connect/config.toml`, else
    /// `~/.config/eic-connect/config.toml`). A missing file is no file; an
    /// unreadable or invalid one is an error naming it.
    pub fn load() -> Result<Layers, Failure> {
        let env = Defaults::from_env(|name| std::env::var(name).ok())?;
        let Some(path) = crate::dirs::config_file(&crate::dirs::ProcessEnv) else {
            return Ok(Layers {
                env,
                ..Layers::default()
            });
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Layers {
                    env,
                    ..Layers::default()
                });
            }
            Err(err) => {
                return Err(Failure::usage(format!(
                    "could not read the config file {}: {err}",
                    path.display()
                )));
            }
        };
        let mut layers = Layers::parse(&text, &path)?;
        layers.env = env;
        tracing::debug!(file = %path.display(), "read the config file");
        Ok(layers)
    }

    /// Parses a config file's text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Layers, Failure> {
        let shown = path.display();
        let invalid = |what: String| {
            Failure::usage(format!("invalid config file {shown}: {what}"))
                .hint("see the Configuration section of the README for the keys")
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e: toml::de::Error| {
            let place = e.span().map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
            invalid(format!(
                "{}{}",
                place.unwrap_or_default(),
                terminal_safe(e.message().trim())
            ))
        })?;
        let mut aliases = BTreeMap::new();
        match table.remove("alias") {
            None => {}
            Some(toml::Value::Table(entries)) => {
                for (name, value) in entries {
                    let alias = parse_alias(&name, value).map_err(|why| {
                        invalid(format!("[alias.{}]: {why}", terminal_safe(&name)))
                    })?;
                    aliases.insert(name, alias);
                }
            }
            Some(_) => return Err(invalid("`alias` must be a table: [alias.NAME]".into())),
        }
        let mut file = Defaults::from_table(table).map_err(invalid)?;
        file.validate().map_err(|f| invalid(f.message))?;
        if file.user.is_some() {
            file.user_source = Some(format!("the config file {shown}"));
        }
        Ok(Layers {
            env: Defaults::default(),
            file,
            aliases,
        })
    }

    /// The defaults for a command without a target: environment over file.
    pub fn general(&self) -> Defaults {
        self.env.clone().or(self.file.clone())
    }

    /// Expands `host` if it names an alias: the alias's target, and its
    /// settings over the general defaults. Otherwise `host` unchanged.
    pub fn expand(&self, host: &str) -> (String, Defaults) {
        match self.aliases.get(host) {
            Some(alias) => {
                tracing::debug!(alias = host, target = %alias.target, "expanded alias");
                (
                    alias.target.clone(),
                    alias.settings.clone().or(self.general()),
                )
            }
            None => (host.to_owned(), self.general()),
        }
    }
}

fn parse_alias(name: &str, value: toml::Value) -> Result<Alias, String> {
    let toml::Value::Table(mut table) = value else {
        return Err("must be a table with at least `target = \"…\"`".into());
    };
    if name.is_empty() || name.starts_with('-') || name.contains('@') {
        return Err("alias names cannot be empty, start with '-' or contain '@'".into());
    }
    let target = match table.remove("target") {
        Some(toml::Value::String(t)) => t,
        Some(_) => return Err("`target` must be a string".into()),
        None => {
            return Err(
                "missing `target = \"…\"` (an instance id, Name tag, DNS name or IP)".into(),
            );
        }
    };
    parse_target(&target).map_err(|f| f.message)?;
    let mut settings = Defaults::from_table(table)?;
    settings.validate().map_err(|f| f.message)?;
    if settings.user.is_some() {
        settings.user_source = Some(format!("alias {name}"));
    }
    Ok(Alias { target, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn layers(text: &str, env_pairs: &[(&str, &str)]) -> Layers {
        let mut l = Layers::parse(text, Path::new("/cfg/config.toml")).unwrap();
        l.env = Defaults::from_env(env(env_pairs)).unwrap();
        l
    }

    const FILE: &str = r#"
        region = "eu-west-1"
        profile = "file-profile"
        user = "ubuntu"
        address = "private"
        connect = "direct"
        api-timeout = 4.5

        [alias.db]
        target = "i-0123456789abcdef0"
        region = "us-east-2"
        user = "postgres"
    "#;

    #[test]
    fn file_values_are_read() {
        let l = layers(FILE, &[]);
        let d = l.general();
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        assert_eq!(d.profile.as_deref(), Some("file-profile"));
        assert_eq!(d.user.as_deref(), Some("ubuntu"));
        assert_eq!(d.address, Some(AddressChoice::Private));
        assert_eq!(d.connect, Some(ConnectVia::Direct));
        assert_eq!(d.api_timeout, Some(4.5));
        assert_eq!(
            d.user_source.as_deref(),
            Some("the config file /cfg/config.toml")
        );
    }

    #[test]
    fn env_beats_file() {
        let l = layers(
            FILE,
            &[
                ("EIC_CONNECT_REGION", "ap-south-1"),
                ("EIC_CONNECT_OS_USER", "admin"),
                ("EIC_CONNECT_PATH", "eice"),
                ("EIC_CONNECT_PROFILE", ""),
            ],
        );
        let d = l.general();
        assert_eq!(d.region.as_deref(), Some("ap-south-1"));
        assert_eq!(d.user.as_deref(), Some("admin"));
        assert_eq!(d.user_source.as_deref(), Some("EIC_CONNECT_OS_USER"));
        assert_eq!(d.connect, Some(ConnectVia::Eice));
        // An empty variable is unset: the file's value stays.
        assert_eq!(d.profile.as_deref(), Some("file-profile"));
        assert_eq!(d.address, Some(AddressChoice::Private));
    }

    #[test]
    fn aliases_expand_and_sit_above_env() {
        let l = layers(FILE, &[("EIC_CONNECT_REGION", "ap-south-1")]);
        let (target, d) = l.expand("db");
        assert_eq!(target, "i-0123456789abcdef0");
        assert_eq!(d.region.as_deref(), Some("us-east-2"));
        assert_eq!(d.user.as_deref(), Some("postgres"));
        assert_eq!(d.user_source.as_deref(), Some("alias db"));
        // What the alias leaves open comes from the lower layers.
        assert_eq!(d.profile.as_deref(), Some("file-profile"));
        let (target, d) = l.expand("web-1");
        assert_eq!(target, "web-1");
        assert_eq!(d.region.as_deref(), Some("ap-south-1"));
    }

    #[test]
    fn bad_files_are_refused_with_the_path() {
        for (text, needle) in [
            ("regoin = \"x\"", "regoin"),
            ("address = \"sideways\"", "sideways"),
            ("connect = 3", "connect"),
            ("user = \"-oProxyCommand=x\"", "not a valid OS user"),
            ("api-timeout = -1.0", "api-timeout"),
            ("max-tunnel-duration = 7200", "max-tunnel-duration"),
            ("region = \"a\\u001b[2Jb\"", "not usable"),
            ("[alias.x]\nuser = \"a\"", "missing `target"),
            ("[alias.x]\ntarget = \"-rf\"", "starts with '-'"),
            ("[alias.x]\ntarget = \"web\"\nbogus = 1", "bogus"),
            ("alias = 3", "must be a table"),
            ("this is not toml", "invalid config file"),
            ("profile = \"a\"\nregion = [", "line 2, column 11"),
            ("verify-host-key = \"yes\"", "must be true or false"),
        ] {
            let err = Layers::parse(text, Path::new("/cfg/config.toml")).unwrap_err();
            assert_eq!(err.exit, 2, "{text}");
            assert!(err.message.contains("/cfg/config.toml"), "{}", err.message);
            assert!(err.message.contains(needle), "{text}: {}", err.message);
            assert!(!err.message.contains('\x1b'), "{}", err.message);
        }
    }

    #[test]
    fn bad_env_values_are_refused() {
        for (var, value) in [
            ("EIC_CONNECT_API_TIMEOUT", "soon"),
            ("EIC_CONNECT_MAX_TUNNEL_DURATION", "1.5"),
            ("EIC_CONNECT_ADDRESS", "sideways"),
            ("EIC_CONNECT_PATH", "carrier-pigeon"),
            ("EIC_CONNECT_OS_USER", "a b"),
        ] {
            let err = Defaults::from_env(env(&[(var, value)])).unwrap_err();
            assert_eq!(err.exit, 2, "{var}");
            let named =
                err.message.contains(var) || err.hints.iter().any(|h| h.contains("EIC_CONNECT_"));
            assert!(named, "{var}: {}", err.message);
        }
        let d = Defaults::from_env(env(&[
            ("EIC_CONNECT_VERIFY_HOST_KEY", "0"),
            ("EIC_CONNECT_API_TIMEOUT", "2"),
        ]))
        .unwrap();
        assert_eq!(d.verify_host_key, Some(false));
        assert_eq!(d.api_timeout, Some(2.0));
    }
}
