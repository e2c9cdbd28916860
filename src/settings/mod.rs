//! Raw arguments → one validated settings value per command, before any work.
//!
//! The command line is parsed once (`cli`), the lower layers are read once
//! (`layers`: the `EIC_CONNECT_*` environment, the config file, aliases), and
//! [`resolve`] combines them for whichever command was named: aliases are
//! expanded once, precedence is decided here and nowhere else, and what comes
//! out are plain values. Nothing past this module reads a clap type.
//!
//! Precedence, highest first: command line > alias (for its own target) >
//! environment > config file > AWS's own defaults.

pub mod layers;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use layers::{Defaults, Layers};

use crate::aws::{AwsSettings, DEFAULT_API_TIMEOUT, MAX_API_TIMEOUT};
use crate::cli::{self, AwsArgs, Cli, PathArgs};
use crate::dirs::{self, ProcessEnv};
use crate::eice::{ConnectVia, PathSettings};
use crate::error::Failure;
use crate::hostkeys::{HostKey, Pins, is_sha256_fingerprint};
use crate::osuser::{DEFAULT_OS_USER, UserSource};
use crate::reuse::Setting;
use crate::target::{AddressChoice, Target, parse_destination, parse_target, validate_user};

/// What the command line asked for, resolved.
#[derive(Debug)]
pub enum Command {
    Connect(Box<Connect>),
    List(List),
    Run(Box<Run>),
    Tunnel(Tunnel),
    Proxy(Proxy),
    SshConfig(SshConfig),
    Copy(Copy),
    Doctor(Box<Doctor>),
    Serial(Serial),
    KnownHosts(KnownHosts),
    Reuse(ReuseCommand),
    Audit(Box<Admin<crate::audit::Query>>),
    Policy(Box<Admin<cli::PolicyArgs>>),
    Endpoint(Box<Admin<cli::EndpointArgs>>),
    Console(Box<Admin<cli::ConsoleArgs>>),
}

/// The administrative commands (`audit`, `policy`, `endpoint`, `console`):
/// AWS settings and their own arguments.
#[derive(Debug, Clone)]
pub struct Admin<A> {
    pub aws: AwsSettings,
    pub args: A,
    /// The config file's defaults that applied (a target's alias section).
    pub defaults: Defaults,
}

/// How the ssh session is to treat host keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Record the key on first use (under the instance id), check it after.
    FirstUse,
    /// Only the keys the instance printed on its console (`--verify-host-key`);
    /// with `allow_unverified`, first use when the console shows none.
    Console { allow_unverified: bool },
}

/// The OS user, and what chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub source: UserSource,
}

/// Settings every command that reaches an instance shares.
#[derive(Debug, Clone)]
pub struct Reach {
    pub aws: AwsSettings,
    pub path: PathSettings,
    pub address: AddressChoice,
    pub host_keys: HostKeyPolicy,
    /// The ssh program (`EIC_CONNECT_SSH`, default `ssh` on PATH).
    pub ssh_program: OsString,
    /// eic-connect's state directory (known_hosts, remembered users).
    pub state_dir: PathBuf,
    /// `--start`.
    pub start: bool,
    /// How long a master connection persists; `None`: no reuse.
    pub reuse: Option<Duration>,
    /// Where master sockets live (private to the user).
    pub reuse_dir: PathBuf,
}

/// `eic-connect [OPTIONS] TARGET [COMMAND…]`.
#[derive(Debug, Clone)]
pub struct Connect {
    pub reach: Reach,
    pub target: Target,
    pub user: OsUser,
    pub dry_run: bool,
    pub verbose: u8,
    /// ssh options in the user's order.
    pub ssh_options: Vec<OsString>,
    pub command: Vec<OsString>,
}

/// `eic-connect reuse list|stop [TARGET]`.
#[derive(Debug, Clone)]
pub struct ReuseCommand {
    pub action: cli::ReuseAction,
    pub dir: PathBuf,
    pub ssh_program: OsString,
}

/// `eic-connect list`.
#[derive(Debug, Clone)]
pub struct List {
    pub aws: AwsSettings,
    pub filters: Vec<String>,
    pub json: bool,
    /// A user the lower layers name, if any.
    pub user: Option<OsUser>,
    pub state_dir: PathBuf,
}

/// `eic-connect run`.
#[derive(Debug, Clone)]
pub struct Run {
    pub reach: Reach,
    pub filters: Vec<String>,
    pub parallel: u16,
    pub user: Option<OsUser>,
    pub ssh_options: Vec<OsString>,
    pub timeout: Option<Duration>,
    pub json: bool,
    pub command: Vec<OsString>,
}

/// `eic-connect tunnel`.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub aws: AwsSettings,
    pub path: PathSettings,
    pub target: Target,
    pub remote_port: u16,
    pub local_port: Option<u16>,
    /// `--master`: stop writing to standard error once connected.
    pub master: bool,
    /// eic-connect's own ProxyCommand: the endpoint and address, no lookup.
    pub known: Option<(String, IpAddr)>,
    /// `verify-host-key`: the tunnel carries bytes and checks no host key,
    /// so it shows the keys the console printed, for the ssh that uses it.
    pub show_console_keys: bool,
}

/// `eic-connect proxy HOST PORT USER`.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub reach: Reach,
    pub host: String,
    pub target: Target,
    pub port: u16,
    pub user: String,
    pub key_dir: PathBuf,
    /// `--master`: stop writing to standard error once connected.
    pub master: bool,
    /// `--jump`: the target's address is reached through this jump host.
    pub jump: Option<crate::jump::Requested>,
}

/// `eic-connect ssh-config`.
#[derive(Debug, Clone)]
pub struct SshConfig {
    pub prefix: String,
    /// Where eic-connect keeps its known_hosts file.
    pub state_dir: PathBuf,
    pub os_user: String,
    pub key_dir: PathBuf,
    /// How long ssh keeps master connections; `None`: no reuse.
    pub reuse: Option<Duration>,
    pub reuse_dir: PathBuf,
    pub globals: CommandLineGlobals,
    /// `--jump`: the block's proxy goes through this jump host.
    pub jump: Option<String>,
}

/// `eic-connect scp|sftp`.
#[derive(Debug, Clone)]
pub struct Copy {
    pub tool: CopyTool,
    pub args: Vec<OsString>,
    pub globals: CommandLineGlobals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyTool {
    Scp,
    Sftp,
}

/// `eic-connect doctor`.
#[derive(Debug, Clone)]
pub struct Doctor {
    pub aws: AwsSettings,
    pub path: PathSettings,
    pub destination: String,
    pub target: Target,
    pub user: OsUser,
    pub port: u16,
    pub source_ip: Option<IpAddr>,
    pub address: AddressChoice,
    pub json: bool,
    /// `--fix`: offer the changes that fix failed checks.
    pub fix: bool,
    /// `--yes`: apply them without asking.
    pub yes: bool,
    /// `--console`: check for the EC2 console's browser-based client.
    pub console: bool,
}

/// `eic-connect serial`.
#[derive(Debug, Clone)]
pub struct Serial {
    pub aws: AwsSettings,
    pub target: Target,
    pub host_key_fingerprint: Option<String>,
    pub verbose: u8,
    pub ssh_program: OsString,
}

/// `eic-connect __known-hosts`, as ssh's `KnownHostsCommand`.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    pub mode: KnownHostsMode,
    /// ssh's `%I %H %t %K` (any may be empty).
    pub words: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum KnownHostsMode {
    /// First use, keyed by the instance id in the proxy's slot state.
    FirstUse { file: PathBuf, slot: PathBuf },
    /// Exactly these keys; what ssh was shown goes to `report`.
    Pinned { pins: Pins, report: Option<PathBuf> },
}

/// The global options exactly as the command line gave them, for commands
/// that set up other eic-connect processes (ssh-config's ProxyCommand,
/// scp's and sftp's `-S`): those read the lower layers themselves, so a
/// printed ssh config does not freeze today's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandLineGlobals {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub api_timeout: Option<f64>,
    pub via: Option<ConnectVia>,
    pub eice_id: Option<String>,
    pub max_tunnel_duration: Option<u32>,
}

impl CommandLineGlobals {
    fn from_args(aws: &AwsArgs, path: &PathArgs) -> Result<Self, Failure> {
        // Validated now, so a bad value is refused here and not by the
        // process it is handed to.
        aws_settings(aws, &Defaults::default())?;
        Ok(CommandLineGlobals {
            region: non_empty(aws.region.clone()),
            profile: non_empty(aws.profile.clone()),
            api_timeout: aws.api_timeout,
            via: path.via,
            eice_id: path.eice_id.clone(),
            max_tunnel_duration: path.max_tunnel_duration,
        })
    }

    /// As options for another eic-connect process.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                out.push(flag.to_owned());
                out.push(value);
            }
        };
        add("--region", self.region.clone());
        add("--profile", self.profile.clone());
        add("--api-timeout", self.api_timeout.map(|t| t.to_string()));
        add("--connect", self.via.map(|v| v.as_str().to_owned()));
        add("--eice-id", self.eice_id.clone());
        add(
            "--max-tunnel-duration",
            self.max_tunnel_duration.map(|n| n.to_string()),
        );
        out
    }

    /// As `EIC_CONNECT_*` variables, for a child that takes no arguments
    /// from us (scp's and sftp's `-S` program). They rank above the config
    /// file there, as the command line does here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |var: &'static str, value: Option<String>| {
            if let Some(value) = value {
                out.push((var, value));
            }
        };
        add("EIC_CONNECT_REGION", self.region.clone());
        add("EIC_CONNECT_PROFILE", self.profile.clone());
        add(
            "EIC_CONNECT_API_TIMEOUT",
            self.api_timeout.map(|t| t.to_string()),
        );
        add("EIC_CONNECT_PATH", self.via.map(|v| v.as_str().to_owned()));
        add("EIC_CONNECT_EICE_ID", self.eice_id.clone());
        add(
            "EIC_CONNECT_MAX_TUNNEL_DURATION",
            self.max_tunnel_duration.map(|n| n.to_string()),
        );
        out
    }
}

/// Combines the command line with the lower layers for the command it names.
pub fn resolve(mut cli: Cli, layers: &Layers) -> Result<Command, Failure> {
    use cli::Subcommand as S;
    let Some(subcommand) = cli.subcommand.take() else {
        return resolve_connect(cli, layers).map(|c| Command::Connect(Box::new(c)));
    };
    let general = layers.general();
    Ok(match subcommand {
        S::List(args) => Command::List(List {
            aws: aws_settings(&cli.aws, &general)?,
            filters: args.filters,
            json: args.json,
            user: layered_user(&general)?,
            state_dir: dirs::state_dir(&ProcessEnv),
        }),
        S::Run(args) => {
            let user = match args.os_user {
                Some(name) => Some(command_line_user(name, "--os-user")?),
                None => layered_user(&general)?,
            };
            let mut ssh_options: Vec<OsString> = Vec::new();
            if let Some(port) = args.port {
                ssh_options.extend(["-p".into(), port.to_string().into()]);
            }
            for option in &args.ssh_option {
                ssh_options.extend(["-o".into(), option.into()]);
            }
            if let Some(jump) = &args.jump {
                ssh_options.extend(["-J".into(), jump.into()]);
            }
            let host_keys = host_key_policy(
                args.verify_host_key,
                args.no_verify_host_key,
                false,
                &general,
            );
            Command::Run(Box::new(Run {
                reach: reach(
                    &cli,
                    &general,
                    args.address.choice(general.address),
                    host_keys,
                    args.start,
                    reuse_choice(args.reuse, args.no_reuse, &general, Setting::On),
                )?,
                filters: args.filters,
                parallel: args.parallel,
                user,
                ssh_options,
                timeout: args.timeout.map(Duration::from_secs_f64),
                json: args.json,
                command: args.command,
            }))
        }
        S::Tunnel(args) => {
            let (target, defaults) = layers.expand(&args.target);
            let path = path_settings(&cli.path, &defaults);
            let known = match (args.eice_dns_name, args.private_ip) {
                (Some(dns), Some(ip)) => Some((dns, ip)),
                _ => None,
            };
            let show_console_keys = known.is_none()
                && host_key_policy(false, false, false, &defaults) != HostKeyPolicy::FirstUse;
            Command::Tunnel(Tunnel {
                aws: aws_settings(&cli.aws, &defaults)?,
                target: parse_target(&target)?,
                path,
                remote_port: args.remote_port,
                local_port: args.local_port,
                master: args.master,
                known,
                show_console_keys,
            })
        }
        S::Proxy(args) => {
            validate_user(&args.user)?;
            let name = match &args.prefix {
                Some(prefix) if !prefix.is_empty() => args
                    .host
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(&args.host),
                _ => &args.host,
            };
            if args.host.contains('/') || args.host.starts_with('.') {
                return Err(Failure::usage(format!(
                    "{:?} cannot name an instance",
                    crate::sanitize::terminal_safe(&args.host)
                )));
            }
            let target = parse_target(name)?;
            let host_keys = host_key_policy(false, false, false, &general);
            Command::Proxy(Proxy {
                reach: reach(&cli, &general, AddressChoice::Auto, host_keys, false, None)?,
                target,
                host: args.host,
                port: args.port,
                user: args.user,
                key_dir: args.key_dir.unwrap_or_else(|| dirs::proxy_dir(&ProcessEnv)),
                master: args.master,
                jump: args.jump.as_deref().map(crate::jump::parse).transpose()?,
            })
        }
        S::SshConfig(args) => {
            validate_user(&args.os_user)?;
            let prefix_ok = !args.prefix.is_empty()
                && args
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !prefix_ok {
                return Err(Failure::usage(format!(
                    "--prefix {:?}: use letters, digits, '-', '_' or '.'",
                    crate::sanitize::terminal_safe(&args.prefix)
                )));
            }
            let globals = CommandLineGlobals::from_args(&cli.aws, &cli.path)?;
            if let Some(jump) = &args.jump {
                crate::jump::parse(jump)?;
                if let Some(via @ (ConnectVia::Eice | ConnectVia::Ssm)) = globals.via {
                    return Err(Failure::usage(format!(
                        "--connect {} and --jump are two ways to the instances",
                        via.as_str()
                    ))
                    .hint("choose one: a block for each, with a prefix of its own"));
                }
            }
            Command::SshConfig(SshConfig {
                prefix: args.prefix,
                state_dir: dirs::state_dir(&ProcessEnv),
                os_user: args.os_user,
                key_dir: dirs::proxy_dir(&ProcessEnv),
                reuse: reuse_choice(args.reuse, args.no_reuse, &general, Setting::On),
                reuse_dir: dirs::reuse_dir(&ProcessEnv),
                globals,
                jump: args.jump,
            })
        }
        S::Scp(args) => Command::Copy(Copy {
            tool: CopyTool::Scp,
            args: args.args,
            globals: CommandLineGlobals::from_args(&cli.aws, &cli.path)?,
        }),
        S::Sftp(args) => Command::Copy(Copy {
            tool: CopyTool::Sftp,
            args: args.args,
            globals: CommandLineGlobals::from_args(&cli.aws, &cli.path)?,
        }),
        S::Doctor(args) => {
            let (dest_user, host) = split_destination(&args.destination);
            let (host, defaults) = layers.expand(host);
            let (dest_user, target) = parse_destination(&join_destination(dest_user, &host))?;
            let user = choose_os_user(dest_user, args.os_user, None, None, &defaults)?;
            Command::Doctor(Box::new(Doctor {
                aws: aws_settings(&cli.aws, &defaults)?,
                path: path_settings(&cli.path, &defaults),
                destination: args.destination,
                target,
                user,
                port: args.port,
                source_ip: args.source_ip,
                address: args.address.choice(defaults.address),
                json: args.json,
                fix: args.fix,
                yes: args.yes,
                console: args.console,
            }))
        }
        S::Serial(args) => {
            let (target, defaults) = layers.expand(&args.target);
            Command::Serial(Serial {
                aws: aws_settings(&cli.aws, &defaults)?,
                target: parse_target(&target)?,
                host_key_fingerprint: args.host_key_fingerprint,
                verbose: args.verbose,
                ssh_program: ssh_program(),
            })
        }
        S::KnownHosts(args) => Command::KnownHosts(known_hosts(args)),
        S::Audit(args) => {
            let (selection, defaults) = match (&args.target, args.filters.is_empty()) {
                (Some(target), _) => {
                    let (target, defaults) = layers.expand(target);
                    (
                        crate::audit::Selection::Target(parse_target(&target)?),
                        defaults,
                    )
                }
                (None, false) => (
                    crate::audit::Selection::Filters(crate::fleet::parse_filters(&args.filters)?),
                    general.clone(),
                ),
                (None, true) => (crate::audit::Selection::All, general.clone()),
            };
            if let Some(user) = &args.os_user {
                validate_user(user)?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let (since, until) =
                crate::audit::time::range(args.since.as_deref(), args.until.as_deref(), now)?;
            Command::Audit(Box::new(Admin {
                aws: aws_settings(&cli.aws, &defaults)?,
                args: crate::audit::Query {
                    selection,
                    since,
                    until,
                    os_user: args.os_user,
                    principal: args.principal.filter(|p| !p.is_empty()),
                    failures: args.failures,
                    kinds: args.events.into_iter().map(Into::into).collect(),
                    limit: args.limit as usize,
                    json: args.json,
                },
                defaults,
            }))
        }
        // (policy)
        S::Policy(args) => {
            let max_tunnel_duration = cli.path.max_tunnel_duration.or(general.max_tunnel_duration);
            Command::Policy(Box::new(Admin {
                aws: aws_settings(&cli.aws, &general)?,
                args: cli::PolicyArgs {
                    max_tunnel_duration,
                    ..args
                },
                defaults: general.clone(),
            }))
        }
        // (endpoint)
        S::Endpoint(args) => {
            let (args, defaults) = endpoint_args(args, layers, &general)?;
            Command::Endpoint(Box::new(Admin {
                aws: aws_settings(&cli.aws, &defaults)?,
                args,
                defaults,
            }))
        }
        // (console)
        S::Console(args) => {
            let (target, defaults) = layers.expand(&args.target);
            parse_target(&target)?;
            choose_os_user(None, args.os_user.clone(), None, None, &defaults)?;
            let args = cli::ConsoleArgs { target, ..args };
            Command::Console(Box::new(Admin {
                aws: aws_settings(&cli.aws, &defaults)?,
                args,
                defaults,
            }))
        }
        S::Reuse(args) => Command::Reuse(ReuseCommand {
            action: args.action,
            dir: dirs::reuse_dir(&ProcessEnv),
            ssh_program: ssh_program(),
        }),
    })
}

/// `endpoint`'s arguments checked before any call: a TARGET is expanded
/// (an alias may name the region and profile) and must parse; ids must
/// have their shape.
fn endpoint_args(
    mut args: cli::EndpointArgs,
    layers: &layers::Layers,
    general: &Defaults,
) -> Result<(cli::EndpointArgs, Defaults), Failure> {
    use cli::EndpointAction as A;
    let mut defaults = general.clone();
    match &mut args.action {
        A::List(list) => {
            if let Some(vpc) = &list.vpc {
                check_id("VPC", "vpc-", vpc)?;
            }
        }
        A::Create(create) => {
            if let Some(target) = &create.target {
                let (expanded, d) = layers.expand(target);
                parse_target(&expanded)?;
                create.target = Some(expanded);
                defaults = d;
            }
            if let Some(subnet) = &create.subnet {
                check_id("subnet", "subnet-", subnet)?;
            }
            for sg in &create.security_groups {
                check_id("security group", "sg-", sg)?;
            }
        }
        A::Delete(delete) => crate::eice::endpoint::validate_endpoint_id(&delete.id)?,
    }
    Ok((args, defaults))
}

/// Checks that `id` looks like an EC2 resource id (`prefix` and 8 or 17
/// hex digits) before it is sent anywhere.
fn check_id(what: &str, prefix: &str, id: &str) -> Result<(), Failure> {
    let ok = id.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{:?} is not a valid {what} id",
            crate::sanitize::terminal_safe(id)
        ))
        .hint(format!("{what} ids look like {prefix}0123456789abcdef0")))
    }
}

fn known_hosts(args: cli::KnownHostsArgs) -> KnownHosts {
    let mode = match (args.record, args.slot) {
        (Some(file), Some(slot)) => KnownHostsMode::FirstUse { file, slot },
        _ => KnownHostsMode::Pinned {
            // ssh runs this with what eic-connect gave it: anything that does
            // not parse is left out, which can only refuse more.
            pins: Pins {
                keys: args
                    .key
                    .iter()
                    .filter_map(|k| k.split_once(':'))
                    .filter_map(|(alg, b64)| HostKey::parse(alg, b64))
                    .collect(),
                fingerprints: args
                    .pin
                    .into_iter()
                    .filter(|f| is_sha256_fingerprint(f))
                    .collect(),
            },
            report: args.report,
        },
    };
    KnownHosts {
        mode,
        words: args.words,
    }
}

fn resolve_connect(cli: Cli, layers: &Layers) -> Result<Connect, Failure> {
    let destination = cli
        .destination
        .as_deref()
        .unwrap_or_default()
        .to_str()
        .ok_or_else(|| Failure::usage("the target is not valid UTF-8"))?;
    let (dest_user, host) = split_destination(destination);
    let (host, defaults) = layers.expand(host);
    let (dest_user, target) = parse_destination(&join_destination(dest_user, &host))?;
    let user = choose_os_user(
        dest_user,
        cli.login_name.clone(),
        cli.os_user.clone(),
        ssh_option_value(&cli.ssh_options, "user"),
        &defaults,
    )?;
    let host_keys = host_key_policy(
        cli.verify_host_key,
        cli.no_verify_host_key,
        cli.allow_unverified,
        &defaults,
    );
    Ok(Connect {
        reach: reach(
            &cli,
            &defaults,
            cli.address.choice(defaults.address),
            host_keys,
            cli.start,
            reuse_choice(cli.reuse, cli.no_reuse, &defaults, Setting::Off),
        )?,
        target,
        user,
        dry_run: cli.dry_run,
        verbose: cli.verbose,
        ssh_options: cli.ssh_options,
        command: cli.command,
    })
}

fn reach(
    cli: &Cli,
    defaults: &Defaults,
    address: AddressChoice,
    host_keys: HostKeyPolicy,
    start: bool,
    reuse: Option<Duration>,
) -> Result<Reach, Failure> {
    Ok(Reach {
        aws: aws_settings(&cli.aws, defaults)?,
        path: path_settings(&cli.path, defaults),
        address,
        host_keys,
        ssh_program: ssh_program(),
        state_dir: dirs::state_dir(&ProcessEnv),
        start,
        reuse,
        reuse_dir: dirs::reuse_dir(&ProcessEnv),
    })
}

/// Connection reuse: `--reuse[=D]`/`--no-reuse`, else the layers, else the
/// command's own default (on for `run` and the ssh-config block, whose
/// repeated connections are what reuse is for; off for an interactive
/// connection, which a user expects to end when they log out).
fn reuse_choice(
    flag: Option<Setting>,
    no: bool,
    defaults: &Defaults,
    default: Setting,
) -> Option<Duration> {
    let setting = if no {
        Setting::Off
    } else {
        flag.or(defaults.reuse).unwrap_or(default)
    };
    setting.persist()
}

fn host_key_policy(
    verify: bool,
    no_verify: bool,
    allow_unverified: bool,
    defaults: &Defaults,
) -> HostKeyPolicy {
    if !no_verify && (verify || defaults.verify_host_key.unwrap_or(false)) {
        HostKeyPolicy::Console { allow_unverified }
    } else {
        HostKeyPolicy::FirstUse
    }
}

/// The AWS settings: the command line, else the layers, else AWS's own.
fn aws_settings(args: &AwsArgs, defaults: &Defaults) -> Result<AwsSettings, Failure> {
    let timeout = args
        .api_timeout
        .or(defaults.api_timeout)
        .unwrap_or(DEFAULT_API_TIMEOUT);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= MAX_API_TIMEOUT) {
        return Err(Failure::usage(format!(
            "--api-timeout must be between 0 and 3600 seconds, not {timeout}"
        )));
    }
    Ok(AwsSettings {
        region: non_empty(args.region.clone()).or_else(|| defaults.region.clone()),
        profile: non_empty(args.profile.clone()).or_else(|| defaults.profile.clone()),
        attempt_timeout: Duration::from_secs_f64(timeout),
    })
}

fn path_settings(args: &PathArgs, defaults: &Defaults) -> PathSettings {
    PathSettings {
        via: args.via.or(defaults.connect).unwrap_or_default(),
        eice_id: args.eice_id.clone().or_else(|| defaults.eice_id.clone()),
        max_tunnel_duration: args.max_tunnel_duration.or(defaults.max_tunnel_duration),
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

fn command_line_user(name: String, flag: &'static str) -> Result<OsUser, Failure> {
    validate_user(&name)?;
    Ok(OsUser {
        name,
        source: UserSource::CommandLine(flag),
    })
}

/// The OS user the lower layers (alias, environment, config file) name.
fn layered_user(defaults: &Defaults) -> Result<Option<OsUser>, Failure> {
    let Some(name) = defaults.user.clone() else {
        return Ok(None);
    };
    validate_user(&name)?;
    let source = defaults
        .user_source
        .clone()
        .unwrap_or_else(|| "the configuration".into());
    Ok(Some(OsUser {
        name,
        source: UserSource::Layer(source),
    }))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// `USER@`, `-l`, `--os-user` and `-o User=` all name the OS user; they may
/// repeat one another but not disagree. Else the lower layers' user, else
/// `ec2-user` (which connect then replaces with a guess from the AMI).
pub fn choose_os_user(
    dest_user: Option<String>,
    login_name: Option<String>,
    os_user: Option<String>,
    ssh_user_option: Option<String>,
    defaults: &Defaults,
) -> Result<OsUser, Failure> {
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
                "conflicting OS users: {:?} from {first_source} and {:?} from {other_source}",
                crate::sanitize::terminal_safe(first),
                crate::sanitize::terminal_safe(other)
            )));
        }
        return command_line_user(first.clone(), first_source);
    }
    Ok(layered_user(defaults)?.unwrap_or_else(|| OsUser {
        name: DEFAULT_OS_USER.to_owned(),
        source: UserSource::Default(None),
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn none() -> Defaults {
        Defaults::default()
    }

    #[test]
    fn os_user_sources_agree_or_conflict() {
        let chosen = choose_os_user(None, None, None, None, &none()).unwrap();
        assert_eq!(chosen.name, "ec2-user");
        assert_eq!(chosen.source, UserSource::Default(None));
        assert!(!chosen.source.is_given());
        assert_eq!(
            choose_os_user(s("ubuntu"), None, None, None, &none())
                .unwrap()
                .name,
            "ubuntu"
        );
        assert_eq!(
            choose_os_user(None, s("admin"), None, None, &none())
                .unwrap()
                .source,
            UserSource::CommandLine("-l")
        );
        assert_eq!(
            choose_os_user(s("ubuntu"), s("ubuntu"), None, None, &none())
                .unwrap()
                .name,
            "ubuntu"
        );
        let err = choose_os_user(s("ubuntu"), None, s("admin"), None, &none()).unwrap_err();
        assert_eq!(err.exit, 2);
        assert!(err.message.contains("conflicting"), "{}", err.message);
        assert!(choose_os_user(None, None, None, s("bob"), &none()).is_ok());
        assert!(choose_os_user(None, s("-oProxyCommand=x"), None, None, &none()).is_err());
    }

    #[test]
    fn layered_user_ranks_below_every_command_line_form() {
        let layered = Defaults {
            user: s("ubuntu"),
            user_source: s("alias db"),
            ..Defaults::default()
        };
        let chosen = choose_os_user(None, None, None, None, &layered).unwrap();
        assert_eq!(chosen.name, "ubuntu");
        assert_eq!(chosen.source, UserSource::Layer("alias db".into()));
        assert!(chosen.source.is_given());
        // The command line never conflicts with a default: it wins.
        assert_eq!(
            choose_os_user(s("admin"), None, None, None, &layered)
                .unwrap()
                .name,
            "admin"
        );
        assert_eq!(
            choose_os_user(None, None, None, s("root"), &layered)
                .unwrap()
                .name,
            "root"
        );
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

    fn resolve_line(args: &[&str], layers: &Layers) -> Result<Command, Failure> {
        let cli = cli::parse(std::iter::once("eic-connect").chain(args.iter().copied()))
            .map_err(|e| Failure::usage(e.to_string()))?;
        resolve(cli, layers)
    }

    #[test]
    fn precedence_is_decided_in_one_place_for_every_command() {
        let mut layers = Layers::parse(
            "region = \"eu-west-1\"\napi-timeout = 4.5\nconnect = \"direct\"\n\
             [alias.db]\ntarget = \"i-0123456789abcdef0\"\nregion = \"us-east-2\"\n",
            std::path::Path::new("/cfg"),
        )
        .unwrap();
        layers.env.profile = s("env-profile");
        let Command::Connect(c) = resolve_line(&["db"], &layers).unwrap() else {
            panic!("connect")
        };
        assert_eq!(c.reach.aws.region.as_deref(), Some("us-east-2"), "alias");
        assert_eq!(c.reach.aws.profile.as_deref(), Some("env-profile"));
        assert_eq!(c.reach.aws.attempt_timeout, Duration::from_millis(4500));
        assert_eq!(c.reach.path.via, ConnectVia::Direct);
        let Command::Tunnel(t) =
            resolve_line(&["--region", "sa-east-1", "tunnel", "db"], &layers).unwrap()
        else {
            panic!("tunnel")
        };
        assert_eq!(t.aws.region.as_deref(), Some("sa-east-1"), "command line");
        assert_eq!(t.target, Target::InstanceId("i-0123456789abcdef0".into()));
        let Command::Run(r) = resolve_line(&["run", "-f", "x", "--", "true"], &layers).unwrap()
        else {
            panic!("run")
        };
        assert_eq!(r.reach.aws.region.as_deref(), Some("eu-west-1"), "file");
        // ssh-config passes on only the command line's settings.
        let Command::SshConfig(sc) =
            resolve_line(&["ssh-config", "--api-timeout", "7"], &layers).unwrap()
        else {
            panic!("ssh-config")
        };
        assert_eq!(sc.globals.region, None);
        assert_eq!(sc.globals.args(), ["--api-timeout", "7"]);
    }

    #[test]
    fn verify_host_key_reaches_every_command_that_connects() {
        let layers = Layers::default();
        let Command::Run(r) = resolve_line(
            &["run", "--verify-host-key", "-f", "x", "--", "true"],
            &layers,
        )
        .unwrap() else {
            panic!("run")
        };
        assert_eq!(
            r.reach.host_keys,
            HostKeyPolicy::Console {
                allow_unverified: false
            }
        );
    }
}
