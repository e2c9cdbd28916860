//! The command line: eic-connect's own options plus ssh's, in ssh's grammar.
//!
//! `eic-connect [OPTIONS] [USER@]TARGET [COMMAND [ARG...]]`. Options may come
//! before or after the destination (as with ssh); the first word after the
//! destination that is not an option starts the remote command, which is
//! taken verbatim.

use std::ffi::OsString;

use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser};

use crate::eice::ConnectVia;
use crate::target::AddressChoice;

/// ssh's short options that take no value (OpenSSH 9), passed through.
/// `-v` is ours too (it also turns on our own tracing) and `-V` prints our
/// version, so neither is listed here.
const SSH_FLAGS: &[(char, &str)] = &[
    ('4', "Use IPv4 addresses only"),
    ('6', "Use IPv6 addresses only"),
    ('A', "Forward the authentication agent"),
    ('a', "Disable agent forwarding"),
    ('C', "Compress the connection"),
    ('f', "Go to background after authentication"),
    ('G', "Print ssh's configuration and exit"),
    ('g', "Allow remote hosts to connect to forwarded ports"),
    ('K', "Enable GSSAPI authentication"),
    ('k', "Disable GSSAPI credential forwarding"),
    ('M', "Master mode for connection sharing"),
    ('N', "Do not run a remote command (port forwarding only)"),
    ('n', "Redirect stdin from /dev/null"),
    ('q', "Quiet mode"),
    ('s', "Request a subsystem on the remote system"),
    ('T', "Disable pseudo-terminal allocation"),
    ('t', "Force pseudo-terminal allocation"),
    ('X', "Enable X11 forwarding"),
    ('x', "Disable X11 forwarding"),
    ('Y', "Enable trusted X11 forwarding"),
    ('y', "Send log output to syslog"),
];

/// ssh's short options that take a value, passed through. `-l` is handled
/// by eic-connect (it is the OS user the key is pushed for).
const SSH_OPTIONS: &[(char, &str, &str)] = &[
    ('B', "BIND_INTERFACE", "Bind to this interface"),
    ('b', "BIND_ADDRESS", "Bind to this local address"),
    ('c', "CIPHER_SPEC", "Ciphers, comma separated"),
    (
        'D',
        "[BIND_ADDRESS:]PORT",
        "Dynamic (SOCKS) port forwarding",
    ),
    ('E', "LOG_FILE", "Append ssh's debug log to this file"),
    (
        'e',
        "ESCAPE_CHAR",
        "Escape character for sessions with a pty",
    ),
    ('F', "CONFIGFILE", "Use this ssh configuration file"),
    ('I', "PKCS11", "PKCS#11 shared library"),
    (
        'i',
        "IDENTITY_FILE",
        "An extra identity file for ssh to try",
    ),
    ('J', "DESTINATION", "Connect through this jump host"),
    ('L', "ADDRESS", "Local port forwarding"),
    ('m', "MAC_SPEC", "MAC algorithms, comma separated"),
    (
        'O',
        "CTL_CMD",
        "Control an active connection-sharing master",
    ),
    (
        'o',
        "OPTION",
        "An ssh_config option, e.g. -o ServerAliveInterval=30",
    ),
    ('P', "TAG", "Tag for Match blocks in ssh_config"),
    ('p', "PORT", "Port to connect to on the instance"),
    ('Q', "QUERY_OPTION", "Query ssh for supported algorithms"),
    ('R', "ADDRESS", "Remote port forwarding"),
    ('S', "CTL_PATH", "Control socket for connection sharing"),
    (
        'W',
        "HOST:PORT",
        "Forward stdin and stdout to this host and port",
    ),
    ('w', "LOCAL_TUN[:REMOTE_TUN]", "Tunnel device forwarding"),
];

const SSH_HEADING: &str = "SSH options (passed to ssh)";

/// SSH to EC2 instances with EC2 Instance Connect: no SSH keys to manage.
///
/// Resolves the instance, generates a one-time ed25519 key, pushes it with
/// SendSSHPublicKey (valid 60 s) and runs your system ssh with it. The private
/// key never touches the disk.
#[derive(Debug, Parser)]
#[command(
    name = "eic-connect",
    version,
    about,
    long_about = None,
    override_usage = "eic-connect [OPTIONS] [USER@]TARGET [COMMAND [ARG...]]",
    after_help = "TARGET is an instance id (i-0abc…), a Name tag value, a public or private DNS name, or an IP address.\n\
                  A single COMMAND argument is run by the remote shell, as with ssh; several are quoted so that\n\
                  each reaches the instance unchanged.\n\n\
                  Settings not on the command line come from an alias, then EIC_CONNECT_* variables, then\n\
                  $XDG_CONFIG_HOME/eic-connect/config.toml, then AWS's own defaults.\n\n\
                  Exit status: the remote command's; 255 if eic-connect or ssh could not connect; 2 for usage errors.",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    subcommand_help_heading = "Other commands",
    subcommand_value_name = "COMMAND"
)]
// `version` is clap's --version flag, not a marker against construction.
#[allow(clippy::manual_non_exhaustive)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Subcommand>,

    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub path: PathArgs,

    /// OS user to log in as [default: guessed from the AMI, else ec2-user] [env: EIC_CONNECT_OS_USER]
    #[arg(long, value_name = "USER")]
    pub os_user: Option<String>,

    /// OS user to log in as (ssh's -l; same as --os-user)
    #[arg(short = 'l', value_name = "USER", help_heading = SSH_HEADING)]
    pub login_name: Option<String>,

    #[command(flatten)]
    pub address: AddressArgs,

    /// Print the AWS calls and the ssh command line, and do nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Trust only the host keys the instance printed on its console
    /// (GetConsoleOutput), checked strictly [env: EIC_CONNECT_VERIFY_HOST_KEY]
    #[arg(long, overrides_with = "no_verify_host_key")]
    pub verify_host_key: bool,

    /// Do not verify host keys from the console, whatever the config says
    #[arg(long, overrides_with = "verify_host_key")]
    pub no_verify_host_key: bool,

    /// Start the instance if it is stopped, wait until it runs, then connect
    #[arg(long)]
    pub start: bool,

    /// Keep the connection as a shared master for DURATION (default 10m)
    /// after the session: later connections to the instance skip the
    /// lookup, the key push and the handshake [env: EIC_CONNECT_REUSE]
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = parse_reuse, overrides_with = "no_reuse")]
    pub reuse: Option<crate::reuse::Setting>,

    /// Do not reuse or keep a master connection, whatever the config says
    #[arg(long, overrides_with = "reuse")]
    pub no_reuse: bool,

    /// With --verify-host-key: if the console shows no host keys, warn and
    /// accept the key on first use instead of failing
    #[arg(
        long,
        env = "EIC_CONNECT_ALLOW_UNVERIFIED",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub allow_unverified: bool,

    /// Verbose: eic-connect's steps and timings, and ssh's -v (repeat for more)
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,

    /// Print version
    #[arg(short = 'V', long = "version", action = ArgAction::Version)]
    version: (),

    /// Print shell completions (bash, zsh, fish) or the man page (man) and exit
    #[arg(long, value_name = "WHAT", value_enum, exclusive = true)]
    pub generate: Option<Generate>,

    /// [USER@]TARGET: instance id, Name tag, DNS name or IP address
    #[arg(value_name = "[USER@]TARGET", required = true, value_parser = clap::value_parser!(OsString))]
    pub destination: Option<OsString>,

    /// Command to run on the instance, with its arguments
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,

    /// ssh options in the order given (filled in from the matches).
    #[arg(skip)]
    pub ssh_options: Vec<OsString>,
}

/// Commands other than connecting.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// List instances: eic-connect list tag:Role=build
    List(ListArgs),
    /// Run a command on every instance a filter selects: eic-connect run -f tag:Role=build -- make test
    Run(RunArgs),
    /// Open a tunnel to an instance through an EC2 Instance Connect Endpoint
    Tunnel(TunnelArgs),
    /// ProxyCommand for ssh, scp, rsync, git and editors (see ssh-config)
    Proxy(ProxyArgs),
    /// Print a ~/.ssh/config block so plain ssh, scp, rsync and git reach instances
    SshConfig(SshConfigArgs),
    /// Copy files with scp: eic-connect scp FILE web-1:/tmp/
    #[command(disable_help_flag = true)]
    Scp(CopyArgs),
    /// Transfer files with sftp: eic-connect sftp web-1
    #[command(disable_help_flag = true)]
    Sftp(CopyArgs),
    /// Explain why a connection would fail: one line per check, with a fix
    Doctor(DoctorArgs),
    /// Connect to an instance's serial console (EC2 Serial Console)
    Serial(SerialArgs),
    /// Show or end master connections kept for reuse: eic-connect reuse list
    Reuse(ReuseArgs),
    /// Who connected to which instance, and when (from CloudTrail): eic-connect audit web-1
    Audit(AuditArgs),
    /// Print a least-privilege IAM policy for connecting: eic-connect policy --tag Team=web
    Policy(PolicyArgs),
    /// List, create or delete EC2 Instance Connect Endpoints
    Endpoint(EndpointArgs),
    /// Open an instance in the AWS console's browser-based EC2 Instance Connect
    Console(ConsoleArgs),
    /// (internal) ssh's KnownHostsCommand for pinned host keys
    #[command(name = "__known-hosts", hide = true)]
    KnownHosts(KnownHostsArgs),
}

/// Filter syntax, shared by `list` and `run` (a macro, for `concat!`).
macro_rules! filter_help {
    () => {
        "FILTER is a Name glob (web-*), an instance id, tag:KEY=VALUE, state=running, type=, az=, vpc=,\n\
         subnet=, ami=, or any EC2 DescribeInstances filter NAME=VALUE. Commas separate values that\n\
         may each match; different filters must all match."
    };
}

/// `eic-connect list`.
#[derive(Debug, Clone, Args)]
#[command(after_help = filter_help!())]
pub struct ListArgs {
    /// Which instances [default: all but terminated ones]
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,

    /// Print JSON (field names are stable; see the README)
    #[arg(long)]
    pub json: bool,
}

/// `eic-connect run`.
#[derive(Debug, Clone, Args)]
#[command(after_help = concat!(
    filter_help!(),
    "\n\nExit status: 0 if the command succeeded on every instance; 1 if it failed or could not run on\n\
     any; 255 if no instance matched or the lookup failed; 2 for usage errors; 130 if interrupted."
))]
pub struct RunArgs {
    /// Select instances (repeat: all must match); only running ones unless a state= filter or --start
    #[arg(short = 'f', long = "filter", value_name = "FILTER", required = true)]
    pub filters: Vec<String>,

    /// Instances at a time
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,

    /// OS user to log in as [default: configured, else guessed from each AMI] [env: EIC_CONNECT_OS_USER]
    #[arg(short = 'l', long = "os-user", value_name = "USER")]
    pub os_user: Option<String>,

    /// Port on the instances
    #[arg(short = 'p', value_name = "PORT")]
    pub port: Option<u16>,

    /// An ssh_config option for every connection (repeatable)
    #[arg(short = 'o', value_name = "OPTION")]
    pub ssh_option: Vec<String>,

    /// Reach the instances through this jump host (ssh's -J); an EC2
    /// instance gets a key pushed for every connection
    #[arg(short = 'J', value_name = "[USER@]HOST[:PORT]")]
    pub jump: Option<String>,

    /// Stop a command (and count it failed) after this many seconds
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<f64>,

    /// Start stopped instances that match, wait for them, then run
    #[arg(long)]
    pub start: bool,

    /// How long each instance's master connection stays after the command
    /// (default 10m; on for run): a repeated run skips the key pushes and
    /// handshakes [env: EIC_CONNECT_REUSE]
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = parse_reuse, overrides_with = "no_reuse")]
    pub reuse: Option<crate::reuse::Setting>,

    /// Connect afresh to every instance and keep no master connection
    #[arg(long, overrides_with = "reuse")]
    pub no_reuse: bool,

    /// Trust only the host keys each instance printed on its console
    /// [env: EIC_CONNECT_VERIFY_HOST_KEY]
    #[arg(long, overrides_with = "no_verify_host_key")]
    pub verify_host_key: bool,

    /// Do not verify host keys from the console, whatever the config says
    #[arg(long, overrides_with = "verify_host_key")]
    pub no_verify_host_key: bool,

    /// Print one JSON document with each instance's output and status
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub address: AddressArgs,

    /// The command, run by each instance's shell (several words are quoted as for connect)
    #[arg(value_name = "COMMAND", required = true, trailing_var_arg = true, allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

/// The longest `run --timeout`, in seconds (a week).
const MAX_RUN_TIMEOUT: f64 = 7.0 * 24.0 * 3600.0;

fn parse_reuse(text: &str) -> Result<crate::reuse::Setting, String> {
    crate::reuse::Setting::parse(text)
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    seconds_within(text, MAX_RUN_TIMEOUT)
}

fn parse_api_timeout(text: &str) -> Result<f64, String> {
    seconds_within(text, crate::aws::MAX_API_TIMEOUT)
}

/// A number of seconds above 0 and at most `max`.
fn seconds_within(text: &str, max: f64) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= max => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds above 0 and at most {max}"
        )),
    }
}

/// `eic-connect doctor`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 if every check passed (warnings allowed), 1 if any failed, 2 for usage errors.\n\
                  The push check really pushes a throwaway key: it is valid for 60 seconds and never used."
)]
pub struct DoctorArgs {
    /// [USER@]TARGET: instance id, Name tag, DNS name or IP address
    #[arg(value_name = "[USER@]TARGET")]
    pub destination: String,

    /// OS user to check [default: guessed from the AMI, else ec2-user] [env: EIC_CONNECT_OS_USER]
    #[arg(short = 'l', long = "os-user", value_name = "USER")]
    pub os_user: Option<String>,

    /// Port ssh would connect to
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = 22)]
    pub port: u16,

    /// Your address as the instance sees it [default: the local address used to reach the EC2 API]
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<std::net::IpAddr>,

    #[command(flatten)]
    pub address: AddressArgs,

    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,

    /// Offer the changes that fix failed checks (open the port to you, enable
    /// instance metadata, start the instance), each applied after a yes
    #[arg(long)]
    pub fix: bool,

    /// Check the security groups for the EC2 console's browser-based client
    /// (port 22 from its prefix list) instead of for this machine
    #[arg(long)]
    pub console: bool,

    /// With --fix: apply the changes without asking (for scripts)
    #[arg(long, requires = "fix")]
    pub yes: bool,
}

/// `eic-connect serial`.
#[derive(Debug, Clone, Args)]
pub struct SerialArgs {
    /// Instance id, Name tag, DNS name or IP address
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Pin this host-key fingerprint instead of AWS's published one (for a
    /// region newer than this release)
    #[arg(long, value_name = "SHA256:…", env = "EIC_CONNECT_SERIAL_FINGERPRINT")]
    pub host_key_fingerprint: Option<String>,

    /// Verbose: ssh's -v (repeat for more)
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
}

// ---- audit ----

/// `eic-connect audit`.
#[derive(Debug, Clone, Args)]
#[command(after_help = concat!(
    "WHEN is a duration ago (30m, 2h, 7d, 1w) or an RFC 3339 time (2026-11-30T08:00:00Z, or a date:\n\
     2026-11-30). CloudTrail keeps 90 days of events, per region. Newest events first.\n\n",
    filter_help!()
))]
pub struct AuditArgs {
    /// Instance id, Name tag, DNS name or IP address (tunnels through an
    /// endpoint are matched by the instance's private address)
    #[arg(value_name = "TARGET", conflicts_with = "filters")]
    pub target: Option<String>,

    /// Select instances by filter (repeat: all must match) and show their events
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,

    /// Start of the time range [default: 24h]
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// End of the time range [default: now]
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// Only key pushes for this OS user
    #[arg(short = 'l', long = "os-user", value_name = "USER")]
    pub os_user: Option<String>,

    /// Only calls by this principal (text contained in its ARN or name)
    #[arg(long, value_name = "TEXT")]
    pub principal: Option<String>,

    /// Only failed attempts
    #[arg(long)]
    pub failures: bool,

    /// Only events of this kind (repeatable)
    #[arg(long = "event", value_name = "KIND", value_enum)]
    pub events: Vec<AuditEventKind>,

    /// Show at most this many events (the newest)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,

    /// Print one JSON document (field names are stable; see the README)
    #[arg(long)]
    pub json: bool,
}

/// `audit --event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditEventKind {
    /// SendSSHPublicKey
    SendSshPublicKey,
    /// SendSerialConsoleSSHPublicKey
    Serial,
    /// OpenTunnel (EC2 Instance Connect Endpoint)
    OpenTunnel,
}

// ---- policy ----

/// `eic-connect policy`.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Instances the policy is for: instance ids, Name tags, DNS names or IP addresses [default: any instance]
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,

    /// Only instances carrying this tag (repeat: all of them; `*` and `?` match as in IAM's StringLike)
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,

    /// OS users keys may be pushed for (repeat) [default: any]
    #[arg(short = 'l', long = "os-user", value_name = "USER")]
    pub os_users: Vec<String>,

    /// Allow tunnels through this EC2 Instance Connect Endpoint (repeat; `any` for every endpoint)
    #[arg(long = "endpoint", value_name = "EICE-ID")]
    pub endpoints: Vec<String>,

    /// Ports tunnels may reach (repeat) [default: 22]
    #[arg(long = "tunnel-port", value_name = "PORT", requires = "endpoints")]
    pub tunnel_ports: Vec<u16>,

    /// Addresses tunnels may reach (repeat) [default: any]
    #[arg(long = "private-ip", value_name = "CIDR", requires = "endpoints")]
    pub private_ips: Vec<ipnet::IpNet>,

    /// Allow Session Manager as a way in (--connect ssm)
    #[arg(long)]
    pub session_manager: bool,

    /// Allow starting stopped instances (--start)
    #[arg(long)]
    pub start: bool,

    /// Allow reading host keys from the console output (--verify-host-key)
    #[arg(long)]
    pub verify_host_key: bool,

    /// Allow the serial console (eic-connect serial)
    #[arg(long)]
    pub serial: bool,

    /// Allow reading who connected (eic-connect audit)
    #[arg(long)]
    pub audit: bool,

    /// Allow eic-connect doctor's checks (IAM simulation included)
    #[arg(long)]
    pub doctor: bool,

    /// Account the instances are in [default: the caller's, from sts:GetCallerIdentity]
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,

    /// For every region rather than the current one
    #[arg(long)]
    pub all_regions: bool,

    /// Print the policy on one line
    #[arg(long)]
    pub compact: bool,

    /// From --max-tunnel-duration or the config file.
    #[arg(skip)]
    pub max_tunnel_duration: Option<u32>,
}

// ---- endpoint ----

/// `eic-connect endpoint list|create|delete`.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    #[command(subcommand)]
    pub action: EndpointAction,
}

/// What `eic-connect endpoint` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EndpointAction {
    /// List the region's EC2 Instance Connect Endpoints
    List(EndpointListArgs),
    /// Create an endpoint in an instance's subnet: eic-connect endpoint create db-1
    Create(EndpointCreateArgs),
    /// Delete an endpoint: eic-connect endpoint delete eice-0123456789abcdef0
    Delete(EndpointDeleteArgs),
}

/// `eic-connect endpoint list`.
#[derive(Debug, Clone, Args)]
pub struct EndpointListArgs {
    /// Only the endpoints in this VPC
    #[arg(long, value_name = "VPC")]
    pub vpc: Option<String>,

    /// Print the endpoints as JSON
    #[arg(long)]
    pub json: bool,
}

/// `eic-connect endpoint create`.
#[derive(Debug, Clone, Args)]
pub struct EndpointCreateArgs {
    /// The instance to reach (instance id, Name tag, DNS name or IP address): the endpoint goes in its subnet
    #[arg(
        value_name = "TARGET",
        required_unless_present = "subnet",
        conflicts_with = "subnet"
    )]
    pub target: Option<String>,

    /// Create the endpoint in this subnet instead of an instance's
    #[arg(long, value_name = "SUBNET")]
    pub subnet: Option<String>,

    /// The endpoint's security group (repeat for more) [default: the VPC's default group]
    #[arg(long = "security-group", value_name = "SG")]
    pub security_groups: Vec<String>,

    /// Let instances see the client's address instead of the endpoint's
    #[arg(long)]
    pub preserve_client_ip: bool,

    /// Which instance addresses the endpoint reaches [default: ipv4]
    #[arg(long, value_name = "TYPE", value_enum)]
    pub ip_address_type: Option<EndpointIpType>,

    /// Also check the rules for RDP (TCP 3389), not only SSH (TCP 22)
    #[arg(long)]
    pub rdp: bool,

    /// Return once AWS accepted the request, without waiting for create-complete
    #[arg(long)]
    pub no_wait: bool,

    /// Do not ask for confirmation (needed without a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `--ip-address-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointIpType {
    Ipv4,
    Dualstack,
    Ipv6,
}

impl EndpointIpType {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointIpType::Ipv4 => "ipv4",
            EndpointIpType::Dualstack => "dualstack",
            EndpointIpType::Ipv6 => "ipv6",
        }
    }
}

/// `eic-connect endpoint delete`.
#[derive(Debug, Clone, Args)]
pub struct EndpointDeleteArgs {
    /// The endpoint's id (eice-…)
    #[arg(value_name = "EICE-ID")]
    pub id: String,

    /// Return once AWS accepted the request, without waiting for delete-complete
    #[arg(long)]
    pub no_wait: bool,

    /// Do not ask for confirmation (needed without a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

// ---- console ----

/// `eic-connect console`.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Instance id, Name tag, DNS name or IP address
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// OS user to log in as [default: as for connecting: remembered, else guessed from the AMI]
    #[arg(short = 'l', long = "os-user", value_name = "USER")]
    pub os_user: Option<String>,

    /// Open the URL in the desktop's browser (xdg-open, open)
    #[arg(long)]
    pub open: bool,

    /// Print the URL even when the browser client's prerequisites are not met
    #[arg(long)]
    pub force: bool,
}

// ---- end of the administrative commands ----

/// `eic-connect __known-hosts … -- %I %H %t %K`, run by ssh.
#[derive(Debug, Clone, Args)]
pub struct KnownHostsArgs {
    /// File to append the verdict to
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    /// A pinned SHA256 fingerprint
    #[arg(long, value_name = "SHA256:…")]
    pub pin: Vec<String>,
    /// A pinned key, `TYPE:BASE64`
    #[arg(long, value_name = "TYPE:BASE64")]
    pub key: Vec<String>,
    /// First use: the known_hosts file keys are recorded in, by instance id
    #[arg(long, value_name = "FILE", requires = "slot", conflicts_with_all = ["pin", "key"])]
    pub record: Option<std::path::PathBuf>,
    /// With --record: the proxy's slot (`DIR/USER@HOST`), whose state names the instance
    #[arg(long, value_name = "PATH", requires = "record")]
    pub slot: Option<std::path::PathBuf>,
    /// ssh's %I %H %t %K (any may be empty)
    #[arg(value_name = "WORD", num_args = 0.., allow_hyphen_values = true)]
    pub words: Vec<String>,
}

/// `eic-connect reuse list|stop [TARGET]`.
#[derive(Debug, Clone, Args)]
pub struct ReuseArgs {
    #[command(subcommand)]
    pub action: ReuseAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ReuseAction {
    /// List the master connections: what each reaches and since when
    List,
    /// End master connections: all, or those to TARGET (instance id, Name,
    /// or an ssh-config host such as eic-web-1)
    Stop {
        #[arg(value_name = "TARGET")]
        target: Option<String>,
    },
}

/// `eic-connect proxy HOST PORT USER`, as ssh's `ProxyCommand … '%h' '%p' '%r'`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Host as ssh names it (%h): instance id, Name tag (after --prefix), DNS name or IP
    #[arg(value_name = "HOST")]
    pub host: String,
    /// Port (%p)
    #[arg(value_name = "PORT")]
    pub port: u16,
    /// OS user (%r): the key is pushed for this user
    #[arg(value_name = "USER")]
    pub user: String,
    /// Strip this prefix from HOST (the ssh-config block's Host pattern for names)
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Directory of the agent sockets ssh asks for the key (the ssh-config block's IdentityAgent)
    #[arg(long, value_name = "DIR")]
    pub key_dir: Option<std::path::PathBuf>,
    /// The connection may become ssh's shared master (the block's
    /// ControlPersist): once connected, write nothing more to standard
    /// error, so that no pipe of the first ssh's caller is held open
    #[arg(long)]
    pub master: bool,
    /// Reach HOST's address through this jump host ([USER@]HOST[:PORT]): an
    /// EC2 instance gets a key of its own pushed; any other host is reached
    /// with your ssh config (see ssh-config --jump)
    #[arg(long, value_name = "JUMP")]
    pub jump: Option<String>,
}

/// The ssh-config block's default prefix for Name tags.
pub const DEFAULT_PREFIX: &str = "eic-";

/// `eic-connect ssh-config`.
#[derive(Debug, Clone, Args)]
pub struct SshConfigArgs {
    /// Prefix that marks a Name tag: `ssh eic-web-1` reaches the instance named web-1
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Default OS user for these hosts
    #[arg(long, value_name = "USER", default_value = crate::osuser::DEFAULT_OS_USER)]
    pub os_user: String,
    /// How long ssh keeps each host's master connection after the last
    /// session (default 10m; on for the block): later ssh, scp, rsync and
    /// git runs skip the lookup, the key push and the handshake
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = parse_reuse, overrides_with = "no_reuse")]
    pub reuse: Option<crate::reuse::Setting>,
    /// Write the block without connection reuse
    #[arg(long, overrides_with = "reuse")]
    pub no_reuse: bool,
    /// A block whose hosts are reached through this jump host
    /// ([USER@]HOST[:PORT]; an EC2 instance gets a key of its own pushed):
    /// only names with the prefix match it, so give it a prefix of its own
    /// (--prefix eic-via-bastion-)
    #[arg(long, value_name = "JUMP")]
    pub jump: Option<String>,
}

/// `eic-connect scp|sftp [ARGS...]`: the tool's own arguments, passed on.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// Arguments for scp or sftp; remote operands name instances ([USER@]TARGET:PATH)
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,
}

/// `eic-connect tunnel`.
#[derive(Debug, Clone, Args)]
pub struct TunnelArgs {
    /// Instance id, Name tag, DNS name or IP address
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Port on the instance: 22 (SSH) or 3389 (RDP)
    #[arg(long, value_name = "PORT", default_value_t = 22)]
    pub remote_port: u16,
    /// The connection may become ssh's shared master: once connected,
    /// write nothing more to standard error (see proxy --master)
    #[arg(long, hide = true)]
    pub master: bool,

    /// Listen on this loopback port and tunnel each connection; without it,
    /// relay standard input and output
    #[arg(long, value_name = "PORT")]
    pub local_port: Option<u16>,

    /// (internal, with --private-ip and --eice-id) the endpoint's DNS name:
    /// skip every lookup, as eic-connect's own ProxyCommand does
    #[arg(long, value_name = "DNS_NAME", hide = true, requires = "private_ip")]
    pub eice_dns_name: Option<String>,

    /// (internal, with --eice-dns-name) the instance's private address
    #[arg(long, value_name = "IP", hide = true, requires = "eice_dns_name")]
    pub private_ip: Option<std::net::IpAddr>,
}

/// AWS settings, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// AWS region [env: EIC_CONNECT_REGION; default: the config file, else AWS_REGION or the profile's]
    #[arg(long, value_name = "REGION", global = true)]
    pub region: Option<String>,

    /// AWS profile [env: EIC_CONNECT_PROFILE; default: the config file, else AWS_PROFILE or "default"]
    #[arg(long, value_name = "PROFILE", global = true)]
    pub profile: Option<String>,

    /// Seconds to wait for one attempt of one AWS API call [default: 10] [env: EIC_CONNECT_API_TIMEOUT]
    #[arg(long, value_name = "SECONDS", global = true, value_parser = parse_api_timeout)]
    pub api_timeout: Option<f64>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    Bash,
    Zsh,
    Fish,
    /// The man page (roff)
    Man,
}

/// The network path, shared by every command that connects.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Network path to the instance [default: auto] [env: EIC_CONNECT_PATH]
    #[arg(long = "connect", value_name = "PATH", value_enum, global = true)]
    pub via: Option<ConnectVia>,

    /// EC2 Instance Connect Endpoint to use [default: the one in the instance's subnet, else its VPC] [env: EIC_CONNECT_EICE_ID]
    #[arg(long, value_name = "ID", global = true)]
    pub eice_id: Option<String>,

    /// Close endpoint tunnels after this many seconds (1-3600) [env: EIC_CONNECT_MAX_TUNNEL_DURATION]
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u32).range(1..=3600),
        global = true
    )]
    pub max_tunnel_duration: Option<u32>,
}

/// Which address to connect to.
#[derive(Debug, Clone, Default, Args)]
#[group(multiple = false)]
pub struct AddressArgs {
    /// Connect to the public IPv4 address [env: EIC_CONNECT_ADDRESS=public]
    #[arg(long)]
    pub public: bool,
    /// Connect to the private IPv4 address [env: EIC_CONNECT_ADDRESS=private]
    #[arg(long)]
    pub private: bool,
    /// Connect to the IPv6 address [env: EIC_CONNECT_ADDRESS=ipv6]
    #[arg(long)]
    pub ipv6: bool,
}

impl AddressArgs {
    /// The flag given, else the lower layers' choice, else `Auto`.
    pub fn choice(&self, default: Option<AddressChoice>) -> AddressChoice {
        match (self.public, self.private, self.ipv6) {
            (true, _, _) => AddressChoice::Public,
            (_, true, _) => AddressChoice::Private,
            (_, _, true) => AddressChoice::Ipv6,
            _ => default.unwrap_or_default(),
        }
    }
}

/// The full command definition: our options plus ssh's passthrough options.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for &(short, help) in SSH_FLAGS {
        cmd = cmd.arg(
            Arg::new(flag_id(short))
                .short(short)
                .help(help)
                .action(ArgAction::Count)
                .help_heading(SSH_HEADING),
        );
    }
    for &(short, value_name, help) in SSH_OPTIONS {
        cmd = cmd.arg(
            Arg::new(flag_id(short))
                .short(short)
                .value_name(value_name)
                .help(help)
                .action(ArgAction::Append)
                .allow_hyphen_values(false)
                .value_parser(clap::value_parser!(OsString))
                .help_heading(SSH_HEADING),
        );
    }
    cmd
}

fn flag_id(short: char) -> String {
    format!("ssh-{short}")
}

/// Parses the command line; clap's own errors (exit 2) and help (exit 0)
/// are returned as `clap::Error` for the caller to print.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_with(&mut command(), args)
}

/// [`parse`] with a [`command`] built beforehand, which may be reused:
/// building it is most of the work of parsing a short command line.
pub fn parse_with<I, T>(command: &mut clap::Command, args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = subcommand_first(args.into_iter().map(Into::into).collect());
    let matches = command.try_get_matches_from_mut(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    cli.ssh_options = ssh_options_in_order(&matches);
    Ok(cli)
}

/// Options shared by every command (`global` in the definition), with
/// whether each takes a value.
const GLOBAL_OPTIONS: &[(&str, bool)] = &[
    ("--region", true),
    ("--profile", true),
    ("--api-timeout", true),
    ("--connect", true),
    ("--eice-id", true),
    ("--max-tunnel-duration", true),
];

/// `eic-connect --region R tunnel …` means the tunnel command, but clap
/// only sees a subcommand in first position (anything else is the connect
/// command's grammar, where `tunnel` would be an instance name). When only
/// global options precede a subcommand name, move the name first.
fn subcommand_first(mut args: Vec<OsString>) -> Vec<OsString> {
    let mut i = 1;
    while i < args.len() {
        let Some(word) = args[i].to_str() else {
            return args;
        };
        if <Subcommand as clap::Subcommand>::has_subcommand(word) {
            if i > 1 {
                let name = args.remove(i);
                args.insert(1, name);
            }
            return args;
        }
        let (flag, inline_value) = match word.split_once('=') {
            Some((flag, _)) => (flag, true),
            None => (word, false),
        };
        match GLOBAL_OPTIONS.iter().find(|(name, _)| *name == flag) {
            Some((_, takes_value)) => i += if *takes_value && !inline_value { 2 } else { 1 },
            None => return args,
        }
    }
    args
}

/// Rebuilds ssh's options in the order they were given (order matters to
/// ssh: for `-o`, the first value of an option wins).
fn ssh_options_in_order(matches: &ArgMatches) -> Vec<OsString> {
    let mut seen: Vec<(usize, OsString, Option<OsString>)> = Vec::new();
    for &(short, _) in SSH_FLAGS {
        let id = flag_id(short);
        // Count flags carry a default of 0 with an index; only real uses count.
        if matches.value_source(&id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        if let Some(indices) = matches.indices_of(&id) {
            for index in indices {
                seen.push((index, format!("-{short}").into(), None));
            }
        }
    }
    for &(short, _, _) in SSH_OPTIONS {
        let id = flag_id(short);
        if let (Some(indices), Some(values)) =
            (matches.indices_of(&id), matches.get_many::<OsString>(&id))
        {
            for (index, value) in indices.zip(values) {
                seen.push((index, format!("-{short}").into(), Some(value.clone())));
            }
        }
    }
    seen.sort_by_key(|(index, _, _)| *index);
    let mut out = Vec::with_capacity(seen.len() * 2);
    for (_, flag, value) in seen {
        out.push(flag);
        out.extend(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Cli {
        parse(std::iter::once("eic-connect").chain(args.iter().copied())).unwrap()
    }

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn destination_and_command() {
        let cli = parse_ok(&["web-1", "--", "make", "test"]);
        assert_eq!(cli.destination.as_deref(), Some("web-1".as_ref()));
        assert_eq!(strs(&cli.command), ["make", "test"]);
        let cli = parse_ok(&["web-1", "ls", "-la", "/tmp"]);
        assert_eq!(strs(&cli.command), ["ls", "-la", "/tmp"]);
    }

    #[test]
    fn ssh_options_keep_their_order_and_values() {
        let cli = parse_ok(&[
            "-p",
            "2222",
            "-o",
            "ServerAliveInterval=30",
            "-At",
            "-L8080:localhost:80",
            "-o",
            "Compression=yes",
            "web-1",
            "-N",
        ]);
        assert_eq!(
            strs(&cli.ssh_options),
            [
                "-p",
                "2222",
                "-o",
                "ServerAliveInterval=30",
                "-A",
                "-t",
                "-L",
                "8080:localhost:80",
                "-o",
                "Compression=yes",
                "-N"
            ]
        );
        assert!(cli.command.is_empty());
    }

    #[test]
    fn options_after_the_destination_are_options_until_the_command() {
        let cli = parse_ok(&["web-1", "-p", "22", "uptime", "-p"]);
        assert_eq!(strs(&cli.ssh_options), ["-p", "22"]);
        assert_eq!(strs(&cli.command), ["uptime", "-p"]);
    }

    #[test]
    fn our_options_and_verbosity() {
        let cli = parse_ok(&[
            "-vv",
            "--region",
            "eu-west-1",
            "--profile",
            "dev",
            "-l",
            "ubuntu",
            "--private",
            "web-1",
        ]);
        assert_eq!(cli.verbose, 2);
        assert_eq!(cli.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cli.aws.profile.as_deref(), Some("dev"));
        assert_eq!(cli.login_name.as_deref(), Some("ubuntu"));
        assert!(cli.address.private);
        assert!(cli.ssh_options.is_empty());
    }

    #[test]
    fn subcommand_names_are_the_commands() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(names.iter().any(|n| n == "__known-hosts"), "{names:?}");
        for name in &names {
            assert!(
                <Subcommand as clap::Subcommand>::has_subcommand(name),
                "{name}"
            );
        }
        for word in ["help", "web-1", "Tunnel", "tunnel ", ""] {
            assert!(
                !<Subcommand as clap::Subcommand>::has_subcommand(word),
                "{word}"
            );
        }
    }

    #[test]
    fn a_reused_command_parses_as_a_fresh_one() {
        let lines: &[&[&str]] = &[
            &["-p", "2222", "ubuntu@web-1", "uptime"],
            &["--bogus"],
            &["--region", "x", "tunnel", "web-1"],
            &["help"],
            &["--region", "x", "help"],
            &["list", "--help"],
            &["-o"],
            &["--version"],
            &["run", "-f", "tag:Role=build", "--", "make"],
            &["-l", "ec2-user", "i-0123456789abcdef0", "--", "ls", "-l"],
            &["tunnel"],
            &["web-1"],
        ];
        let mut reused = command();
        for line in lines.iter().chain(lines) {
            let args = std::iter::once(&"eic-connect").chain(line.iter());
            let fresh = parse(args.clone()).map_err(|e| (e.kind(), e.to_string()));
            let again = parse_with(&mut reused, args).map_err(|e| (e.kind(), e.to_string()));
            assert_eq!(format!("{again:?}"), format!("{fresh:?}"), "{line:?}");
        }
    }

    #[test]
    fn subcommands_after_global_options() {
        let os = |v: &[&str]| -> Vec<OsString> { v.iter().map(Into::into).collect() };
        assert_eq!(
            subcommand_first(os(&[
                "e",
                "--region",
                "x",
                "--connect=eice",
                "tunnel",
                "web"
            ])),
            os(&["e", "tunnel", "--region", "x", "--connect=eice", "web"])
        );
        // After ssh options or a destination, `tunnel` is a name or a command.
        for args in [
            &["e", "-p", "22", "tunnel"][..],
            &["e", "web", "tunnel"],
            &["e", "--", "tunnel"],
        ] {
            assert_eq!(subcommand_first(os(args)), os(args));
        }
        let cli = parse_ok(&["--region", "x", "tunnel", "web-1"]);
        assert!(matches!(cli.subcommand, Some(Subcommand::Tunnel(_))));
        assert_eq!(cli.aws.region.as_deref(), Some("x"));
        let cli = parse_ok(&["web-1", "tunnel"]);
        assert!(cli.subcommand.is_none());
        assert_eq!(strs(&cli.command), ["tunnel"]);
        let cli = parse_ok(&["--", "tunnel"]);
        assert_eq!(cli.destination.as_deref(), Some("tunnel".as_ref()));
    }

    #[test]
    fn usage_errors() {
        let err = |args: &[&str]| {
            parse(std::iter::once("eic-connect").chain(args.iter().copied())).unwrap_err()
        };
        assert_eq!(err(&[]).exit_code(), 2);
        assert_eq!(err(&["--public", "--private", "web-1"]).exit_code(), 2);
        assert_eq!(err(&["-p"]).exit_code(), 2);
        assert_eq!(err(&["-Z", "web-1"]).exit_code(), 2);
        assert_eq!(err(&["--bogus", "web-1"]).exit_code(), 2);
    }
}
