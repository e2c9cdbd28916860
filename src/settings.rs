//! Raw arguments → one validated settings value, before any work is done.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::aws::AwsSettings;
use crate::cli::{AwsArgs, Cli};
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
    pub os_user_source: &'static str,
    /// Whether the user named the OS user; if not, it is guessed from the AMI.
    pub os_user_explicit: bool,
    /// `--verify-host-key`: pin the host keys from the console output.
    pub verify_host_key: bool,
    /// `--allow-unverified`: without console keys, fall back to first use.
    pub allow_unverified: bool,
    pub address: AddressChoice,
    /// `--connect`, `--eice-id`, `--max-tunnel-duration`.
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
    pub fn from_cli(cli: Cli) -> Result<ConnectSettings, Failure> {
        let destination = cli
            .destination
            .as_deref()
            .unwrap_or_default()
            .to_str()
            .ok_or_else(|| Failure::usage("the target is not valid UTF-8"))?;
        let (dest_user, target) = parse_destination(destination)?;
        let (os_user, os_user_source) = choose_os_user(
            dest_user,
            cli.login_name,
            cli.os_user,
            ssh_option_value(&cli.ssh_options, "user"),
        )?;
        let address = match (cli.address.public, cli.address.private, cli.address.ipv6) {
            (true, _, _) => AddressChoice::Public,
            (_, true, _) => AddressChoice::Private,
            (_, _, true) => AddressChoice::Ipv6,
            _ => AddressChoice::Auto,
        };
        Ok(ConnectSettings {
            aws: AwsSettings::from_args(&cli.aws)?,
            target,
            os_user,
            os_user_explicit: os_user_source != DEFAULT_OS_USER_SOURCE,
            os_user_source,
            address,
            path: cli.path,
            verify_host_key: cli.verify_host_key,
            allow_unverified: cli.allow_unverified,
            dry_run: cli.dry_run,
            verbose: cli.verbose,
            ssh_options: cli.ssh_options,
            command: cli.command,
            ssh_program: std::env::var_os("EIC_CONNECT_SSH")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "ssh".into()),
            state_dir: state_dir(),
        })
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// `USER@`, `-l`, `--os-user` and `-o User=` all name the OS user; they may
/// repeat one another but not disagree. Nothing given: `ec2-user`.
pub fn choose_os_user(
    dest_user: Option<String>,
    login_name: Option<String>,
    os_user: Option<String>,
    ssh_user_option: Option<String>,
) -> Result<(String, &'static str), Failure> {
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
        return Ok((first.clone(), first_source));
    }
    Ok((DEFAULT_OS_USER.to_owned(), DEFAULT_OS_USER_SOURCE))
}

impl AwsSettings {
    /// Validates the AWS options shared by every command.
    pub fn from_args(args: &AwsArgs) -> Result<AwsSettings, Failure> {
        let timeout = args.api_timeout;
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
        assert_eq!(
            choose_os_user(None, None, None, None).unwrap(),
            ("ec2-user".into(), "the default")
        );
        assert_eq!(
            choose_os_user(s("ubuntu"), None, None, None).unwrap().0,
            "ubuntu"
        );
        assert_eq!(
            choose_os_user(None, s("admin"), None, None).unwrap(),
            ("admin".into(), "-l")
        );
        assert_eq!(
            choose_os_user(None, None, s("admin"), None).unwrap().1,
            "--os-user"
        );
        assert_eq!(
            choose_os_user(s("ubuntu"), s("ubuntu"), None, None)
                .unwrap()
                .0,
            "ubuntu"
        );
        let err = choose_os_user(s("ubuntu"), None, s("admin"), None).unwrap_err();
        assert_eq!(err.exit, 2);
        assert!(err.message.contains("conflicting"), "{}", err.message);
        assert!(choose_os_user(None, None, None, s("bob")).is_ok());
        assert!(choose_os_user(None, s("-oProxyCommand=x"), None, None).is_err());
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
