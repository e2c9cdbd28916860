//! Raw arguments → one validated settings value, before any work is done.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::aws::AwsSettings;
use crate::cli::{AwsArgs, Cli};
use crate::config::{Defaults, Layers};
use crate::error::Failure;
use crate::target::{AddressChoice, Target, parse_destination, validate_user};

/// The OS user when nothing says otherwise.
pub const DEFAULT_OS_USER: &str = "ec2-user";
/// The rule name when no OS user was given (connect then guesses from the AMI).
pub const DEFAULT_OS_USER_SOURCE: &str = "the default";

/// Everything the connect command needs, validated.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub aws: AwsSettings,
    pub target: Target,
    pub os_user: String,
    /// Which rule chose the OS user (shown with -v).
    pub os_user_source: String,
    /// Whether the user named the OS user; if not, it is guessed from the AMI.
    pub os_user_explicit: bool,
    /// `--verify-host-key`: pin the host keys from the console output.
    pub verify_host_key: bool,
    /// `--allow-unverified`: without console keys, fall back to first use.
    pub allow_unverified: bool,
    /// `--start`: start a stopped instance and wait for it.
    pub start: bool,
    pub address: AddressChoice,
    /// `--connect`, `--eice-id`, `--max-tunnel-duration`, after every layer.
    pub path: crate::cli::PathArgs,
    pub dry_run: bool,
    pub verbose: u8,
    /// ssh options in the user's order.
    pub ssh_options: Vec<OsString>,
    pub command: Vec<OsString>,
    /// The ssh program (`EIC_CONNECT_SSH`, default `ssh` on PATH).
    pub ssh_program: OsString,
    /// Where eic-connect keeps its known_hosts file.
    pub state_dir: PathBuf,
}

impl ConnectSettings {
    /// Validates the connect command line, with the environment, the config
    /// file and aliases filling what it leaves open.
    pub fn from_cli(mut cli: Cli, layers: &Layers) -> Result<ConnectSettings, Failure> {
        let destination = cli
            .destination
            .as_deref()
            .unwrap_or_default()
            .to_str()
            .ok_or_else(|| Failure::usage("the target is not valid UTF-8"))?;
        let (dest_user, host) = split_destination(destination);
        let (host, defaults) = layers.expand(host);
        let (dest_user, target) = parse_destination(&join_destination(dest_user, &host))?;
        defaults.fill_aws(&mut cli.aws);
        defaults.fill_path(&mut cli.path);
        let (os_user, os_user_source) = choose_os_user(
            dest_user,
            cli.login_name,
            cli.os_user,
            ssh_option_value(&cli.ssh_options, "user"),
            default_user(&defaults),
        )?;
        Ok(ConnectSettings {
            aws: AwsSettings::from_args(&cli.aws)?,
            target,
            os_user,
            os_user_explicit: os_user_source != DEFAULT_OS_USER_SOURCE,
            os_user_source,
            address: cli.address.choice(defaults.address),
            path: cli.path,
            verify_host_key: !cli.no_verify_host_key
                && (cli.verify_host_key || defaults.verify_host_key.unwrap_or(false)),
            allow_unverified: cli.allow_unverified,
            start: cli.start,
            dry_run: cli.dry_run,
            verbose: cli.verbose,
            ssh_options: cli.ssh_options,
            command: cli.command,
            ssh_program: ssh_program(),
            state_dir: state_dir(),
        })
    }
}

/// The ssh program (`EIC_CONNECT_SSH`, default `ssh` on PATH).
pub fn ssh_program() -> OsString {
    std::env::var_os("EIC_CONNECT_SSH")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ssh".into())
}

/// `user@host` → (`Some("user")`, `"host"`); the user part is checked later.
pub fn split_destination(dest: &str) -> (Option<&str>, &str) {
    match dest.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, dest),
    }
}

fn join_destination(user: Option<&str>, host: &str) -> String {
    match user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_owned(),
    }
}

/// The OS user the lower layers (alias, environment, config file) name, with
/// where it came from.
pub fn default_user(defaults: &Defaults) -> Option<(String, String)> {
    let user = defaults.user.clone()?;
    let source = defaults
        .user_source
        .clone()
        .unwrap_or_else(|| "the configuration".into());
    Some((user, source))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// `USER@`, `-l`, `--os-user` and `-o User=` all name the OS user; they may
/// repeat one another but not disagree. Else the lower layers' user
/// (`fallback`), else `ec2-user`.
pub fn choose_os_user(
    dest_user: Option<String>,
    login_name: Option<String>,
    os_user: Option<String>,
    ssh_user_option: Option<String>,
    fallback: Option<(String, String)>,
) -> Result<(String, String), Failure> {
    let given: Vec<(String, &'static str)> = [
        (dest_user, "USER@ in the destination"),
        (login_name, "-l"),
        (os_user, "--os-user"),
        (ssh_user_option, "-o User="),
    ]
    .into_iter()
    .filter_map(|(value, source)| value.map(|v| (v, source)))
    .collect();
    if let Some((first, first_source)) = given.first() {
        if let Some((other, other_source)) = given.iter().find(|(v, _)| v != first) {
            return Err(Failure::usage(format!(
                "conflicting OS users: {first:?} from {first_source} and {other:?} from {other_source}"
            )));
        }
        validate_user(first)?;
        return Ok((first.clone(), (*first_source).to_owned()));
    }
    if let Some((user, source)) = fallback {
        validate_user(&user)?;
        return Ok((user, source));
    }
    Ok((
        DEFAULT_OS_USER.to_owned(),
        DEFAULT_OS_USER_SOURCE.to_owned(),
    ))
}

impl AwsSettings {
    /// Validates the AWS options shared by every command.
    pub fn from_args(args: &AwsArgs) -> Result<AwsSettings, Failure> {
        let timeout = args.api_timeout();
        if !(timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0) {
            return Err(Failure::usage(format!(
                "--api-timeout must be between 0 and 3600 seconds, not {timeout}"
            )));
        }
        Ok(AwsSettings {
            region: non_empty(args.region.clone()),
            profile: non_empty(args.profile.clone()),
            attempt_timeout: Duration::from_secs_f64(timeout),
        })
    }
}

/// The value of `-o Key=value` (or `-o "Key value"`) among ssh options, if
/// given; keys are case-insensitive as in ssh_config.
pub fn ssh_option_value(options: &[OsString], key: &str) -> Option<String> {
    options
        .windows(2)
        .filter(|pair| pair[0] == "-o")
        .filter_map(|pair| pair[1].to_str())
        .find_map(|opt| {
            let (k, v) = opt.split_once(['=', ' ', '\t'])?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| v.trim_start_matches(['=', ' ']).trim().to_owned())
        })
}

/// `$XDG_STATE_HOME/eic-connect`, else `~/.local/state/eic-connect`.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("eic-connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn os_user_sources_agree_or_conflict() {
        let pair = |u: &str, src: &str| (u.to_owned(), src.to_owned());
        assert_eq!(
            choose_os_user(None, None, None, None, None).unwrap(),
            pair("ec2-user", "the default")
        );
        assert_eq!(
            choose_os_user(s("ubuntu"), None, None, None, None)
                .unwrap()
                .0,
            "ubuntu"
        );
        assert_eq!(
            choose_os_user(None, s("admin"), None, None, None).unwrap(),
            pair("admin", "-l")
        );
        assert_eq!(
            choose_os_user(None, None, s("admin"), None, None)
                .unwrap()
                .1,
            "--os-user"
        );
        assert_eq!(
            choose_os_user(s("ubuntu"), s("ubuntu"), None, None, None)
                .unwrap()
                .0,
            "ubuntu"
        );
        let err = choose_os_user(s("ubuntu"), None, s("admin"), None, None).unwrap_err();
        assert_eq!(err.exit, 2);
        assert!(err.message.contains("conflicting"), "{}", err.message);
        assert!(choose_os_user(None, None, None, s("bob"), None).is_ok());
        assert!(choose_os_user(None, s("-oProxyCommand=x"), None, None, None).is_err());
    }

    #[test]
    fn layered_user_ranks_below_every_command_line_form() {
        let cfg = Some(pair_owned("ubuntu", "alias db"));
        assert_eq!(
            choose_os_user(None, None, None, None, cfg.clone()).unwrap(),
            pair_owned("ubuntu", "alias db")
        );
        // The command line never conflicts with a default: it wins.
        assert_eq!(
            choose_os_user(s("admin"), None, None, None, cfg.clone())
                .unwrap()
                .0,
            "admin"
        );
        assert_eq!(
            choose_os_user(None, None, None, s("root"), cfg).unwrap().0,
            "root"
        );
    }

    fn pair_owned(u: &str, src: &str) -> (String, String) {
        (u.to_owned(), src.to_owned())
    }

    #[test]
    fn finds_ssh_option_values() {
        let opts: Vec<OsString> = ["-p", "22", "-o", "User=bob", "-o", "Port 2222"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(ssh_option_value(&opts, "user"), s("bob"));
        assert_eq!(ssh_option_value(&opts, "PORT"), s("2222"));
        assert_eq!(ssh_option_value(&opts, "HostName"), None);
    }
}
