//! Jump hosts that are EC2 instances: `-J bastion-1 web-1`,
//! `-J ec2-user@i-0abc…`, `-o ProxyJump=…`, for connect and `run`.
//!
//! Which `-J` values name an instance: an instance id always does (one that
//! does not exist is an error); any other host is looked up as a target
//! would be, and names the instance if exactly one matches. None: the value
//! goes to ssh unchanged, as before (a host from `~/.ssh/config`, a
//! company gateway); several: an error listing them. A chain of hops
//! (`-J a,b`) with an EC2 instance in it is refused: one EC2 hop is built
//! per connection.
//!
//! ssh's own `-J` is not used for an EC2 jump host: the ssh it starts for
//! the hop gets none of the options of the ssh that starts it (agent,
//! known_hosts file, HostKeyAlias), so the jump host's key could not be
//! served, nor its host key kept under its instance id. The hop is built
//! here instead, as the ProxyCommand
//! `ssh <the jump host's session options> -W [%h]:%p -- ADDRESS`, with a
//! session of its own: an ephemeral key pushed for the jump host's own OS
//! user (`USER@` in `-J`, else the guess from its AMI), offered only once
//! that push is done and wiped after, and host keys checked as the
//! target's are (first use or pinned from the console, the same
//! known_hosts file, under the jump host's instance id).
//!
//! Each hop has its own agent rather than one agent holding both keys: each
//! ssh can only ever be offered the key pushed for the host it talks to,
//! each key's 60 seconds follow its own push, and the agent keeps its rule
//! of one key released by one push (`agent.rs`) unchanged.
//!
//! The ssh-config block's proxy goes through a jump host the same way
//! (`eic-connect proxy --jump`, [`for_proxy`]): there the hop's ssh is run
//! by the proxy itself, `-W` to the instance's address, on the proxy's
//! standard input and output.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{oneshot, watch};

use crate::agent::{Push, PushWatch};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::push::{push_key, push_key_within};
use crate::aws::{self, Clients};
use crate::eice::ConnectVia;
use crate::error::{Failure, child_exit_code, fail};
use crate::hostkeys::Pins;
use crate::key::EphemeralKey;
use crate::osuser::{self, UserSource};
use crate::resolve::{Progress, Want, resolve_push_and_tell};
use crate::sanitize::terminal_safe;
use crate::session::{self, HostKeys, Session, Spec};
use crate::settings::{Connect, Reach, ssh_option_value};
use crate::ssh;
use crate::target::{AddressChoice, Addresses, Target, choose_address, parse_target};

/// One hop of a `-J` value: `[USER@]HOST[:PORT]` or `ssh://[USER@]HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// The jump host the user's ssh options name: the first `-J` or
/// `-o ProxyJump=`, as ssh reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// The option that named it (`-J`, `--jump`), for messages.
    pub flag: &'static str,
    /// The value as given (for messages; shown terminal-safe).
    pub value: String,
    pub hops: Vec<Hop>,
}

impl Requested {
    /// `-J VALUE`, terminal-safe, for messages.
    fn shown(&self) -> String {
        format!("{} {}", self.flag, terminal_safe(&self.value))
    }
}

/// A jump host named on its own, as `eic-connect proxy --jump` and
/// `ssh-config --jump` take it: read as ssh reads `-J`, refused as a usage
/// error if ssh would refuse it (or take it for an option).
pub fn parse(value: &str) -> Result<Requested, Failure> {
    let hops: Option<Vec<Hop>> = value.split(',').map(parse_hop).collect();
    match hops {
        Some(hops)
            if !value.eq_ignore_ascii_case("none")
                && !value.chars().any(char::is_control)
                && hops.iter().all(|h| !h.host.starts_with('-')) =>
        {
            Ok(Requested {
                flag: "--jump",
                value: value.to_owned(),
                hops,
            })
        }
        _ => Err(Failure::usage(format!(
            "--jump {:?} does not name a jump host",
            terminal_safe(value)
        ))
        .hint("give [USER@]HOST[:PORT]: an instance id, a Name tag, a DNS name or an address, or a host of your ssh config")),
    }
}

/// ssh's short options that take a value: the word after them is that
/// value, whatever it looks like.
const VALUE_FLAGS: &[u8] = b"BbcDEeFIiJLlmOopPQRSWw";

/// The `-J`/`ProxyJump` value among the user's ssh options, parsed. `None`
/// when there is none, it is `none`, or it does not parse as ssh reads
/// jump hosts (ssh then says what is wrong with it).
pub fn requested(options: &[OsString]) -> Result<Option<Requested>, Failure> {
    let Some(value) = jump_value(options) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .ok_or_else(|| Failure::usage("the -J value is not valid UTF-8"))?
        .to_owned();
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let hops: Option<Vec<Hop>> = value.split(',').map(parse_hop).collect();
    Ok(hops.map(|hops| Requested {
        flag: "-J",
        value,
        hops,
    }))
}

/// The first `-J V` or `-o ProxyJump=V` (`-o "ProxyJump V"`).
fn jump_value(options: &[OsString]) -> Option<OsString> {
    let mut words = options.iter();
    while let Some(word) = words.next() {
        let flag = match word.as_bytes() {
            [b'-', flag] if VALUE_FLAGS.contains(flag) => *flag,
            _ => continue,
        };
        let value = words.next()?;
        match flag {
            b'J' => return Some(value.clone()),
            b'o' => {
                let pair = [OsString::from("-o"), value.clone()];
                if let Some(v) = ssh_option_value(&pair, "proxyjump") {
                    return Some(v.into());
                }
            }
            _ => {}
        }
    }
    None
}

/// The user's ssh options without `-J` and `-o ProxyJump`: the hop is
/// eic-connect's ProxyCommand instead.
pub fn without_jump(options: &[OsString]) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(options.len());
    let mut words = options.iter();
    while let Some(word) = words.next() {
        let takes_value = matches!(word.as_bytes(), [b'-', f] if VALUE_FLAGS.contains(f));
        let value = if takes_value { words.next() } else { None };
        let Some(value) = value else {
            kept.push(word.clone());
            continue;
        };
        let is_jump = word == "-J"
            || (word == "-o"
                && ssh_option_value(&[word.clone(), value.clone()], "proxyjump").is_some());
        if !is_jump {
            kept.extend([word.clone(), value.clone()]);
        }
    }
    kept
}

/// The options of the user's that the jump host's ssh gets too, as ssh's
/// own `-J` passes them: `-F` (the same ssh configuration).
fn hop_options(options: &[OsString]) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut words = options.iter();
    while let Some(word) = words.next() {
        if matches!(word.as_bytes(), [b'-', f] if VALUE_FLAGS.contains(f)) {
            let Some(value) = words.next() else { break };
            if word == "-F" {
                kept.extend([word.clone(), value.clone()]);
            }
        }
    }
    kept
}

/// One hop as ssh reads it; `None` if ssh would refuse it.
fn parse_hop(text: &str) -> Option<Hop> {
    let rest = text.strip_prefix("ssh://").unwrap_or(text);
    let (user, host_port) = match rest.rsplit_once('@') {
        Some((user, host)) => (Some(user.to_owned()), host),
        None => (None, rest),
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host_port.split_once(':') {
            // Two or more colons: an IPv6 address without a port.
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (host_port, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    if host.is_empty() || user.as_deref() == Some("") {
        return None;
    }
    Some(Hop {
        user,
        host: host.to_owned(),
        port,
    })
}

/// An error about the jump host: the `-J` value first.
fn about(requested: &Requested, err: anyhow::Error) -> anyhow::Error {
    err.context(format!("jump host {}", requested.shown()))
}

/// The instance the `-J` value names (see the module's rule), or `None`:
/// the value is not an EC2 instance and goes to ssh unchanged.
pub async fn find(
    clients: &Clients,
    requested: &Requested,
) -> anyhow::Result<Option<InstanceInfo>> {
    let targets: Vec<Target> = requested
        .hops
        .iter()
        .map(|hop| parse_target(&hop.host))
        .collect::<Result<_, Failure>>()
        .map_err(|f| about(requested, anyhow::Error::new(f)))?;
    let started = Instant::now();
    if let [target] = targets.as_slice() {
        let found = ec2::find(clients, target)
            .await
            .map_err(|e| about(requested, e))?;
        tracing::debug!(
            jump = %requested.shown(),
            matches = found.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "looked up the jump host as an EC2 instance"
        );
        if found.is_empty() && !matches!(target, Target::InstanceId(_)) {
            return Ok(None);
        }
        let instance =
            ec2::exactly_one(found, target, &clients.scope).map_err(|e| about(requested, e))?;
        return Ok(Some(instance));
    }
    // A chain: only worth refusing if an EC2 instance is in it.
    let ids: Vec<&Target> = targets
        .iter()
        .filter(|t| matches!(t, Target::InstanceId(_)))
        .collect();
    let mut ec2_hops: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
    if ec2_hops.is_empty() {
        let found =
            futures_util::future::try_join_all(targets.iter().map(|t| ec2::find(clients, t)))
                .await
                .map_err(|e| about(requested, e))?;
        for (target, found) in targets.iter().zip(found) {
            if !found.is_empty() {
                ec2_hops.push(format!("{target} ({})", found[0].id));
            }
        }
    }
    if ec2_hops.is_empty() {
        return Ok(None);
    }
    fail(
        Failure::usage(format!(
            "{}: a chain of jump hosts cannot hold an EC2 instance ({}): eic-connect builds one EC2 hop per connection",
            requested.shown(),
            ec2_hops.join(", ")
        ))
        .hint("jump through the EC2 instance alone (-J HOST), from a network that reaches it")
        .hint("or reach it through the other hops with ssh's own configuration, without eic-connect's key push for it"),
    )
}

/// The jump host as ssh reaches it.
#[derive(Debug, Clone)]
pub struct JumpHost {
    pub instance: InstanceInfo,
    /// The OS user its key is pushed for.
    pub user: String,
    pub port: Option<u16>,
    /// Where the hop's ssh connects: the address `-J` named, else its
    /// public IPv4, else its private one (as for a target).
    pub address: IpAddr,
}

/// Refuses what cannot go with an EC2 jump host.
fn check_combinations(
    reach: &Reach,
    options: &[OsString],
    requested: &Requested,
) -> anyhow::Result<()> {
    if matches!(reach.path.via, ConnectVia::Eice | ConnectVia::Ssm) {
        let via = reach.path.via.as_str();
        return fail(
            Failure::usage(format!(
                "--connect {via} and the EC2 jump host {} are two ways to the instance",
                requested.shown()
            ))
            .hint(format!(
                "choose one: drop -J to go through {}, or --connect {via} to jump",
                if via == "ssm" {
                    "Session Manager"
                } else {
                    "the endpoint"
                }
            )),
        );
    }
    if ssh_option_value(options, "proxycommand").is_some() {
        return fail(
            Failure::usage(format!(
                "a ProxyCommand and the jump host {} cannot be combined (ssh refuses them together too)",
                requested.shown()
            ))
            .hint("drop one of them"),
        );
    }
    Ok(())
}

/// The jump host running (started, with `--start`, and its port
/// answering), its address, and the OS user its key is for: `USER@` in
/// `-J`, else the guess remembered for it, else one from its AMI.
pub async fn ready(
    clients: &Clients,
    reach: &Reach,
    requested: &Requested,
    instance: InstanceInfo,
) -> anyhow::Result<JumpHost> {
    let hop = &requested.hops[0];
    let target = parse_target(&hop.host)?;
    let started = reach.start && instance.state != "running";
    let instance = if started {
        ec2::ensure_started(clients, instance, true).await?
    } else {
        ec2::ensure_running(&instance)?;
        instance
    };
    let address = choose_address(&instance.addresses, AddressChoice::Auto, &target)?;
    if started {
        crate::resolve::wait_for_port(SocketAddr::new(address, hop.port.unwrap_or(22))).await;
    }
    if instance.metadata_endpoint.as_deref() == Some("disabled") {
        eprintln!(
            "eic-connect: warning: instance metadata is disabled on the jump host {}, so it cannot receive the pushed key",
            instance.id
        );
    }
    let choice = match &hop.user {
        Some(user) => {
            crate::target::validate_user(user)?;
            osuser::Choice {
                user: user.clone(),
                source: UserSource::CommandLine("USER@ in -J"),
            }
        }
        None => match osuser::remembered(&reach.state_dir, &instance.id) {
            Some(user) => osuser::Choice {
                user,
                source: UserSource::Remembered,
            },
            None => {
                let choice = osuser::choose_for_image(clients, instance.image_id.as_deref()).await;
                if matches!(choice.source, UserSource::Guessed(_)) {
                    osuser::remember(&reach.state_dir, &instance.id, &choice.user);
                }
                choice
            }
        },
    };
    tracing::debug!(
        jump = %requested.shown(),
        instance = %instance.id,
        %address,
        os_user = %choice.user,
        chosen_by = %choice.source,
        "the jump host is an EC2 instance: its own key is pushed for its own OS user, its host key kept under its id"
    );
    Ok(JumpHost {
        instance,
        user: choice.user,
        port: hop.port,
        address,
    })
}

/// [`ready`], then the push of `public_key` to the jump host: the jump
/// host goes to `found` as soon as it is known, and the push's outcome to
/// `push` (the hop's agent offers the key once it is done).
async fn ready_and_push(
    clients: &Clients,
    reach: &Reach,
    requested: &Requested,
    instance: InstanceInfo,
    public_key: &str,
    found: oneshot::Sender<JumpHost>,
    push: watch::Sender<Push>,
) -> anyhow::Result<Instant> {
    let result = async {
        let jump = ready(clients, reach, requested, instance).await?;
        let _ = found.send(jump.clone());
        let t0 = Instant::now();
        let pushed = push_key(clients, &jump.instance.id, &jump.user, public_key).await?;
        tracing::debug!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "pushed the jump host's key"
        );
        anyhow::Ok(pushed)
    }
    .await
    .map_err(|e| about(requested, e));
    let _ = push.send(match &result {
        Ok(at) => Push::Done(*at),
        Err(_) => Push::Failed,
    });
    result
}

/// The target's address through a jump host. With no address asked for
/// (`--public`, `--private`, `--ipv6`), the one the target was named by
/// (an IP address or DNS name of its own), else its private IPv4: a
/// bastion reaches its VPC, where the public address may not even route.
pub fn target_address(
    addrs: &Addresses,
    choice: AddressChoice,
    target: &Target,
) -> Result<IpAddr, Failure> {
    if choice != AddressChoice::Auto {
        return choose_address(addrs, choice, target);
    }
    let named = |ip: &IpAddr| match target {
        Target::Ip(named) => named == ip,
        Target::DnsName(name) | Target::Name(name) => [&addrs.public_dns, &addrs.private_dns]
            .into_iter()
            .flatten()
            .any(|dns| dns.eq_ignore_ascii_case(name)),
        Target::InstanceId(_) => false,
    };
    if let Some(ip) = choose_address(addrs, AddressChoice::Auto, target)
        .ok()
        .filter(named)
    {
        return Ok(ip);
    }
    choose_address(addrs, AddressChoice::Private, target).map_err(|f| {
        f.hint("through a jump host eic-connect connects to the private address; --public or --ipv6 choose another")
    })
}

/// `ProxyCommand=PROGRAM ARGS…` with `-W [%h]:%p` before the final `--`:
/// the hop's ssh relays the connection to the target's address (`%h`) and
/// port (`%p`). ssh expands `%` tokens in the command and then runs it with
/// `sh -c`, so every word is quoted for sh and every other `%` doubled.
pub fn proxy_command(program: &OsStr, args: &[OsString]) -> OsString {
    let split = args.iter().rposition(|a| a == "--").unwrap_or(args.len());
    let mut line: Vec<u8> = Vec::new();
    let word = |w: &[u8], line: &mut Vec<u8>| {
        for b in ssh::shell_quote(w) {
            if b == b'%' {
                line.push(b'%');
            }
            line.push(b);
        }
        line.push(b' ');
    };
    word(program.as_bytes(), &mut line);
    for arg in &args[..split] {
        word(arg.as_bytes(), &mut line);
    }
    line.extend_from_slice(b"-W '[%h]:%p' ");
    for arg in &args[split..] {
        word(arg.as_bytes(), &mut line);
    }
    line.pop();
    let mut option = OsString::from("ProxyCommand=");
    option.push(OsStr::from_bytes(&line));
    option
}

/// The jump host's half of a session.
pub struct HopSession {
    /// Its agent (serving its key once its push is done) and runtime
    /// directory; attach it to the target's session ([`Session::through`]).
    pub session: Session,
    /// `ProxyCommand=…`, for the target's ssh (after `-o`).
    pub proxy: OsString,
    /// The host keys pinned for the jump host, if pinned.
    pub pins: Option<Pins>,
}

/// Prepares the hop's ssh: `options` (the user's `-F`, run's batch
/// options), eic-connect's session options for the jump host, and the
/// ProxyCommand that runs it.
pub fn hop_session(
    jump: &JumpHost,
    key: EphemeralKey,
    push: PushWatch,
    host_keys: HostKeys,
    ssh_program: &OsStr,
    options: &[OsString],
    verbose: u8,
) -> anyhow::Result<HopSession> {
    let host = jump.address.to_string();
    let spec = hop_spec(jump, &host, host_keys, options, verbose);
    let session = Session::prepare(key, push, &spec)?;
    let proxy = proxy_command(ssh_program, session.args());
    Ok(HopSession {
        session,
        proxy,
        pins: pins(spec.host_keys),
    })
}

fn hop_spec<'a>(
    jump: &'a JumpHost,
    host: &'a str,
    host_keys: HostKeys,
    options: &'a [OsString],
    verbose: u8,
) -> Spec<'a> {
    let mut path_options = Vec::new();
    if let Some(port) = jump.port {
        path_options.extend(["-p".into(), port.to_string().into()]);
    }
    Spec {
        user_options: options,
        path_options,
        verbose,
        os_user: &jump.user,
        host_key_alias: &jump.instance.id,
        host,
        host_keys,
        command: &[],
    }
}

fn pins(host_keys: HostKeys) -> Option<Pins> {
    match host_keys {
        HostKeys::Pinned(pins) => Some(pins),
        HostKeys::FirstUse { .. } => None,
    }
}

/// For `run`: the jump host its options name, if it is an EC2 instance,
/// looked up once for every instance; `None` leaves `-J` to ssh.
pub async fn for_fleet(
    clients: &Clients,
    reach: &Reach,
    options: &[OsString],
) -> anyhow::Result<Option<JumpHost>> {
    let Some(requested) = requested(options)? else {
        return Ok(None);
    };
    let Some(instance) = find(clients, &requested).await? else {
        tracing::debug!(jump = %requested.shown(), "no EC2 instance matches the jump host: -J goes to ssh unchanged");
        return Ok(None);
    };
    check_combinations(reach, options, &requested)?;
    let jump = ready(clients, reach, &requested, instance)
        .await
        .map_err(|e| about(&requested, e))?;
    Ok(Some(jump))
}

/// ssh options for the hop's ssh in `run`: no prompt, a bounded connect,
/// none of ssh's notes, as for run's own ssh.
const FLEET_HOP_OPTIONS: [&str; 6] = [
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=15",
    "-o",
    "LogLevel=ERROR",
];

/// For `run`: a fresh key pushed to the jump host (waiting out throttling
/// up to `patience`) and the hop's session, for one instance's connection.
pub async fn fleet_hop(
    clients: &Clients,
    reach: &Reach,
    jump: &JumpHost,
    patience: Duration,
) -> anyhow::Result<HopSession> {
    let host_keys = session::host_keys(reach, clients, &jump.instance.id, None).await?;
    let key = EphemeralKey::generate()?;
    let pushed = push_key_within(
        clients,
        &jump.instance.id,
        &jump.user,
        key.public_openssh(),
        patience,
    )
    .await
    .with_context(|| format!("jump host {}", jump.instance.id))?;
    let options: Vec<OsString> = FLEET_HOP_OPTIONS.iter().map(Into::into).collect();
    hop_session(
        jump,
        key,
        crate::agent::pushed_at(pushed),
        host_keys,
        &reach.ssh_program,
        &options,
        0,
    )
}

/// ssh options for the hop's ssh under `eic-connect proxy --jump`: no
/// prompt (nobody could answer one), a bounded connect, errors only (the
/// proxy's standard error is the user's ssh's), and no connection sharing
/// from the user's config (the hop carries this one connection).
const PROXY_HOP_OPTIONS: [&str; 8] = [
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=15",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ControlPath=none",
];

/// How `eic-connect proxy --jump` reaches the target's address: the hop's
/// ssh, `-W ADDRESS:PORT`, on the proxy's standard input and output.
pub struct ProxyJump {
    /// `--jump VALUE`, for messages.
    shown: String,
    ssh_program: OsString,
    way: ProxyWay,
}

enum ProxyWay {
    /// An EC2 jump host: a session of its own (its agent, its host keys
    /// under its instance id) and its key's push, still to be made.
    Ec2(Box<Ec2Hop>),
    /// Not an EC2 instance: ssh reaches it with the user's own ssh
    /// configuration, as with ssh's own `-J`.
    Ssh(Requested),
}

/// An EC2 jump host's session and the push its agent waits for.
struct Ec2Hop {
    session: Session,
    push: PendingPush,
}

/// A push to the jump host, made while the relay starts: its agent offers
/// the key once it is done.
struct PendingPush {
    clients: Clients,
    instance_id: String,
    user: String,
    public_key: String,
    tell: watch::Sender<Push>,
}

/// For `eic-connect proxy --jump`: the jump host looked up, as `-J` looks
/// it up, before anything is pushed (unknown, ambiguous or stopped: an
/// error here), made ready, and its session prepared with a fresh key for
/// its own OS user, pushed by [`ProxyJump::relay`].
pub async fn for_proxy(reach: &Reach, requested: &Requested) -> anyhow::Result<ProxyJump> {
    let config = aws::load_config(&reach.aws).await?;
    let clients = Clients::new(&config, &reach.aws);
    let shown = requested.shown();
    let ssh_program = reach.ssh_program.clone();
    let Some(instance) = find(&clients, requested).await? else {
        tracing::debug!(
            jump = %shown,
            "no EC2 instance matches the jump host: ssh reaches it with your own ssh configuration"
        );
        return Ok(ProxyJump {
            shown,
            ssh_program,
            way: ProxyWay::Ssh(requested.clone()),
        });
    };
    check_combinations(reach, &[], requested)?;
    if !reach.start {
        ec2::ensure_running(&instance).map_err(|e| about(requested, e))?;
    }
    let jump = ready(&clients, reach, requested, instance)
        .await
        .map_err(|e| about(requested, e))?;
    let host_keys = session::host_keys(reach, &clients, &jump.instance.id, None).await?;
    let key = EphemeralKey::generate()?;
    let public_key = key.public_openssh().to_owned();
    let (tell, push) = watch::channel(Push::InFlight);
    let options: Vec<OsString> = PROXY_HOP_OPTIONS.iter().map(Into::into).collect();
    let host = jump.address.to_string();
    let session = Session::prepare(key, push, &hop_spec(&jump, &host, host_keys, &options, 0))?;
    Ok(ProxyJump {
        shown,
        ssh_program,
        way: ProxyWay::Ec2(Box::new(Ec2Hop {
            session,
            push: PendingPush {
                clients,
                instance_id: jump.instance.id,
                user: jump.user,
                public_key,
                tell,
            },
        })),
    })
}

impl ProxyJump {
    /// Whether a key is pushed for the jump host: one more thing to be done
    /// before a master's proxy lets standard error go.
    pub fn pushes(&self) -> bool {
        matches!(self.way, ProxyWay::Ec2(_))
    }

    /// Relays standard input and output to `to` through the jump host,
    /// pushing the jump host's key alongside: the hop's ssh runs with the
    /// proxy's standard input, its output and errors copied on by this
    /// process. Errors go through this process's standard error, so that
    /// [`crate::ssh::QuietWhen`] lets them go with the proxy's own (a
    /// master's hop never holds its first caller's pipe); its first byte
    /// of output (the instance's ssh banner) is being connected.
    pub async fn relay(
        self,
        to: SocketAddr,
        quiet: Option<std::sync::Arc<ssh::QuietWhen>>,
    ) -> anyhow::Result<ExitCode> {
        let ProxyJump {
            shown,
            ssh_program,
            way,
        } = self;
        let (args, pending, _session) = match way {
            ProxyWay::Ec2(hop) => {
                let Ec2Hop { session, push } = *hop;
                (relay_args(session.args(), to), Some(push), Some(session))
            }
            ProxyWay::Ssh(requested) => (pass_through_args(&requested, to), None, None),
        };
        let pushes = pending.is_some();
        tracing::debug!(
            command = %ssh::display_command(&ssh_program, &args),
            "relaying through the jump host"
        );
        let pushing = async {
            let Some(p) = pending else {
                return anyhow::Ok(());
            };
            let result = push_key(&p.clients, &p.instance_id, &p.user, &p.public_key).await;
            let _ = p.tell.send(match &result {
                Ok(at) => Push::Done(*at),
                Err(_) => Push::Failed,
            });
            result
                .map(|_| ())
                .with_context(|| format!("jump host {shown} ({})", p.instance_id))
        };
        let mut command = tokio::process::Command::new(&ssh_program);
        command
            .args(&args)
            .stdin(std::process::Stdio::inherit())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        ssh::end_with_parent(&mut command);
        let mut child = command.spawn().map_err(|err| {
            let program = ssh_program.to_string_lossy();
            anyhow::Error::new(
                Failure::new(format!("cannot run {program}: {err}"))
                    .hint("install the OpenSSH client, or set EIC_CONNECT_SSH to its path"),
            )
        })?;
        let mut stop = StopOnDrop(child.id());
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            anyhow::bail!("the jump host's ssh has no output to relay");
        };
        let mut streams =
            std::pin::pin!(async { tokio::join!(copy_out(out, quiet.clone()), copy_err(err)) });
        let mut pushing = std::pin::pin!(pushing);
        let (mut pushed, mut streamed) = (false, false);
        let status = loop {
            tokio::select! {
                result = &mut pushing, if !pushed => {
                    pushed = true;
                    // A refused push ends the hop (its ssh is stopped).
                    result?;
                    if let (true, Some(quiet)) = (pushes, &quiet) {
                        quiet.done();
                    }
                }
                (result, ()) = &mut streams, if !streamed => {
                    streamed = true;
                    if let Err(err) = result {
                        tracing::debug!("relaying the jump host's output: {err}");
                    }
                }
                status = child.wait() => break status.context("waiting for the jump host's ssh")?,
            }
        };
        // Reaped: its pid is no longer its own.
        stop.0 = None;
        if !streamed {
            // The rest of its errors; bounded, as a ProxyCommand of the
            // user's may still hold the pipes.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut streams).await;
        }
        if !pushed {
            pushing.await?;
        }
        if status.success() {
            return Ok(ExitCode::SUCCESS);
        }
        let how = status.code().map_or_else(
            || "on a signal".to_owned(),
            |c| format!("with exit status {c}"),
        );
        fail(Failure::new(format!(
            "jump host {shown}: the hop's ssh ended {how}, so the connection through it did too"
        )))
    }
}

/// A session's ssh arguments (ending `-- ADDRESS`) with `-W [IP]:PORT`
/// before that `--`: the hop's ssh relays to `to`.
fn relay_args(args: &[OsString], to: SocketAddr) -> Vec<OsString> {
    let split = args.iter().rposition(|a| a == "--").unwrap_or(args.len());
    let mut out = args[..split].to_vec();
    out.extend(["-W".into(), format!("[{}]:{}", to.ip(), to.port()).into()]);
    out.extend_from_slice(&args[split..]);
    out
}

/// `ssh [-J FIRST…] [-l USER] [-p PORT] -W [IP]:PORT -- HOST` for a jump
/// host that is not an EC2 instance: the last hop as ssh's destination,
/// any before it as its `-J`.
fn pass_through_args(requested: &Requested, to: SocketAddr) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let Some((last, before)) = requested.hops.split_last() else {
        return out;
    };
    if !before.is_empty()
        && let Some((first, _)) = requested.value.rsplit_once(',')
    {
        out.extend(["-J".into(), first.into()]);
    }
    if let Some(user) = &last.user {
        out.extend(["-l".into(), user.into()]);
    }
    if let Some(port) = last.port {
        out.extend(["-p".into(), port.to_string().into()]);
    }
    out.extend([
        "-W".into(),
        format!("[{}]:{}", to.ip(), to.port()).into(),
        "--".into(),
        last.host.clone().into(),
    ]);
    out
}

/// Stops the hop's ssh (SIGTERM) when the relay is dropped: the proxy was
/// told to end, or the session is over.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: a signal to our own child, which is not yet reaped
            // (the tokio handle is dropped after this guard).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

/// The hop's output to standard output; its first byte is being connected.
async fn copy_out(
    mut from: tokio::process::ChildStdout,
    quiet: Option<std::sync::Arc<ssh::QuietWhen>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    let mut connected = quiet;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return out.flush().await;
        }
        out.write_all(&buf[..n]).await?;
        out.flush().await?;
        if let Some(quiet) = connected.take() {
            quiet.done();
        }
    }
}

/// The hop's errors to this process's standard error, wherever that points
/// now (the user's, or /dev/null once a master's proxy let it go).
async fn copy_err(mut from: tokio::process::ChildStderr) {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let _ = std::io::stderr().write_all(&buf[..n]);
    }
}

/// Ctrl-C, SIGTERM and SIGHUP while preparing.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// The connect command through the jump host `requested` names, if it is
/// an EC2 instance; `None` if it is not (the caller connects as before,
/// `-J` passed to ssh unchanged).
///
/// The jump host is looked up first, so that a jump host that is unknown,
/// ambiguous or stopped is reported before anything is pushed. Then both
/// instances are made ready and both keys pushed at once; ssh starts as
/// soon as both instances and OS users are known, each agent holding its
/// key back until its own push is done.
pub async fn connect(
    settings: &Connect,
    requested: &Requested,
) -> anyhow::Result<Option<ExitCode>> {
    let started = Instant::now();
    let reach = &settings.reach;
    let mut signals = Signals::new()?;
    let config = aws::load_config(&reach.aws).await?;
    let clients = Clients::new(&config, &reach.aws);
    let found = tokio::select! {
        found = find(&clients, requested) => found?,
        () = signals.any() => return fail(Failure::interrupted()),
    };
    let Some(found) = found else {
        tracing::debug!(
            jump = %requested.shown(),
            "no EC2 instance matches the jump host ({}): -J goes to ssh unchanged",
            clients.scope.describe()
        );
        return Ok(None);
    };
    check_combinations(reach, &settings.ssh_options, requested)?;
    if !reach.start {
        ec2::ensure_running(&found).map_err(|e| about(requested, e))?;
    }
    let user_options = without_jump(&settings.ssh_options);
    // Through a jump host nothing is probed from here: --start waits for
    // the target to run, not for its port (which may not route here).
    let mut target_reach = reach.clone();
    target_reach.path.via = ConnectVia::Auto;
    target_reach.address = AddressChoice::Private;
    let want = Want {
        reach: &target_reach,
        target: &settings.target,
        user: &settings.user,
        ssh_port: ssh::port(&user_options),
        picker: true,
    };
    let target_key = EphemeralKey::generate()?;
    let jump_key = EphemeralKey::generate()?;
    let target_public = target_key.public_openssh().to_owned();
    let jump_public = jump_key.public_openssh().to_owned();
    let (target_push_tx, target_push_rx) = watch::channel(Push::InFlight);
    let (jump_push_tx, jump_push_rx) = watch::channel(Push::InFlight);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (jump_tx, jump_rx) = oneshot::channel();
    let progress = Progress {
        instance: None,
        ready: Some(ready_tx),
    };
    let mut pushing = std::pin::pin!(async {
        tokio::try_join!(
            resolve_push_and_tell(&want, &clients, &target_public, progress, target_push_tx),
            ready_and_push(
                &clients,
                reach,
                requested,
                found,
                &jump_public,
                jump_tx,
                jump_push_tx
            ),
        )
    });
    let mut setup = std::pin::pin!(prepare(
        settings,
        &clients,
        &user_options,
        (target_key, target_push_rx, ready_rx),
        (jump_key, jump_push_rx, jump_rx),
    ));
    let mut pushed = false;
    let prepared = loop {
        tokio::select! {
            biased;
            result = &mut pushing, if !pushed => {
                result?;
                pushed = true;
            }
            prepared = &mut setup => break prepared?,
            () = signals.any() => return fail(Failure::interrupted()),
        }
    };
    let Prepared {
        session,
        instance_id,
        pins,
        jump_id,
        jump_pins,
    } = prepared;
    tracing::debug!(
        command = %ssh::display_command(&reach.ssh_program, session.args()),
        since_start_ms = started.elapsed().as_millis() as u64,
        pushes_done = pushed,
        "starting ssh through the jump host"
    );
    let push = async {
        if !pushed {
            (&mut pushing).await?;
        }
        Ok(())
    };
    let status = ssh::run_beside(&reach.ssh_program, session.args(), push, None).await?;
    let refused = if status.code() == Some(255) {
        let hop_verdicts = session.hop().map(Session::verdicts).unwrap_or_default();
        jump_pins
            .and_then(|pins| session::host_key_refusal(&jump_id, &pins, &hop_verdicts))
            .or_else(|| {
                pins.and_then(|pins| {
                    session::host_key_refusal(&instance_id, &pins, &session.verdicts())
                })
            })
    } else {
        None
    };
    drop(session);
    tracing::debug!(
        ?status,
        "ssh finished; both keys wiped, runtime directories removed"
    );
    match refused {
        Some(failure) => fail(failure),
        None => Ok(Some(child_exit_code(status))),
    }
}

/// A session through the jump host, ready for ssh.
struct Prepared {
    session: Session,
    instance_id: String,
    pins: Option<Pins>,
    jump_id: String,
    jump_pins: Option<Pins>,
}

/// A key, its push's progress, and where the instance it is for is told.
type Half<T> = (EphemeralKey, PushWatch, oneshot::Receiver<T>);

/// Both sessions once both instances and OS users are known: the hop's
/// (its agent, its host keys, the ProxyCommand) and the target's through it.
async fn prepare(
    settings: &Connect,
    clients: &Clients,
    user_options: &[OsString],
    target: Half<(InstanceInfo, String)>,
    jump: Half<JumpHost>,
) -> anyhow::Result<Prepared> {
    let reach = &settings.reach;
    let (target_key, target_push, ready) = target;
    let (jump_key, jump_push, jump_found) = jump;
    let (ready, jump_found) = tokio::join!(ready, jump_found);
    let (Ok((instance, user)), Ok(jump)) = (ready, jump_found) else {
        // A lookup failed: its error is reported, not this.
        anyhow::bail!("the lookups ended without naming both instances");
    };
    let (host_keys, jump_host_keys) = tokio::try_join!(
        session::host_keys(reach, clients, &instance.id, None),
        session::host_keys(reach, clients, &jump.instance.id, None),
    )?;
    let address = target_address(&instance.addresses, reach.address, &settings.target)?;
    let why = match reach.address {
        AddressChoice::Auto => {
            "its private IPv4 (a bastion reaches its VPC), unless the target named another of its addresses"
        }
        AddressChoice::Private => "--private",
        AddressChoice::Public => "--public",
        AddressChoice::Ipv6 => "--ipv6",
    };
    tracing::debug!(
        %address,
        via = %jump.instance.id,
        why,
        "chose the target's address as the jump host reaches it"
    );
    if instance.metadata_endpoint.as_deref() == Some("disabled") {
        eprintln!(
            "eic-connect: warning: instance metadata is disabled on {}, so it cannot receive the pushed key; \
             enable it with: aws ec2 modify-instance-metadata-options --instance-id {} --http-endpoint enabled",
            instance.id, instance.id
        );
    }
    let hop = hop_session(
        &jump,
        jump_key,
        jump_push,
        jump_host_keys,
        &reach.ssh_program,
        &hop_options(&settings.ssh_options),
        settings.verbose,
    )?;
    let mut path_options: Vec<OsString> = vec!["-o".into(), hop.proxy];
    if let Some(persist) = reach.reuse {
        crate::dirs::ensure_private_dir(&reach.reuse_dir)?;
        let path = master_key(settings, &user, user_options).path_in(&reach.reuse_dir);
        path_options.extend(crate::reuse::master_options(&path, persist)?);
    }
    let host = address.to_string();
    let spec = Spec {
        user_options,
        path_options,
        verbose: settings.verbose,
        os_user: &user,
        host_key_alias: &instance.id,
        host: &host,
        host_keys,
        command: &settings.command,
    };
    let session = Session::prepare(target_key, target_push, &spec)?.through(hop.session);
    let pins = pins(spec.host_keys);
    Ok(Prepared {
        session,
        instance_id: instance.id,
        pins,
        jump_id: jump.instance.id,
        jump_pins: hop.pins,
    })
}

/// The master a connection through the jump host becomes (with reuse),
/// named as the connect command names its masters.
fn master_key(settings: &Connect, user: &str, user_options: &[OsString]) -> crate::reuse::Key {
    crate::reuse::Key {
        user: user.to_owned(),
        host: settings.target.host_text(),
        port: ssh::port(user_options).unwrap_or(22),
        route: settings.reach.path.via.as_str().to_owned(),
    }
}

/// The DescribeInstances lines that look `target` up.
fn lookup_lines(target: &Target) -> String {
    match target {
        Target::InstanceId(id) => format!("DescribeInstances InstanceId.1={id}"),
        other => ec2::filter_sets(other)
            .into_iter()
            .map(|set| {
                let filters: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "DescribeInstances Filter {} instance-state-name=pending,running,stopping,stopped",
                    terminal_safe(&filters.join(" "))
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `--dry-run` through a jump host of one hop: both lookups, both pushes
/// and the ssh command line with the hop's ProxyCommand. Calls nothing and
/// creates no key.
pub async fn dry_run(settings: &Connect, requested: &Requested) -> anyhow::Result<ExitCode> {
    let reach = &settings.reach;
    let scope = aws::scope_for_dry_run(&reach.aws).await?;
    let hop = &requested.hops[0];
    let jump_target =
        parse_target(&hop.host).map_err(|f| about(requested, anyhow::Error::new(f)))?;
    let jump_ref = match &jump_target {
        Target::InstanceId(id) => id.clone(),
        _ => "<jump host id>".to_owned(),
    };
    let instance_ref = match &settings.target {
        Target::InstanceId(id) => id.clone(),
        _ => "<instance id>".to_owned(),
    };
    let mut out = format!("# dry run ({}): nothing below is run\n", scope.describe());
    out.push_str(&format!(
        "# jump host {}: {}\n",
        requested.shown(),
        match jump_target {
            Target::InstanceId(_) => "an EC2 instance (an instance id)".to_owned(),
            _ => "an EC2 instance if this lookup finds exactly one (several: an error); if it finds none, ssh gets -J unchanged and only the instance's calls below are made".to_owned(),
        }
    ));
    out.push_str(&lookup_lines(&jump_target));
    out.push('\n');
    let jump_user = match &hop.user {
        Some(user) => user.clone(),
        None => {
            out.push_str(&format!(
                "DescribeImages ImageId.1=<AMI of {jump_ref}>  # the jump host's OS user, guessed from the AMI, else ec2-user\n"
            ));
            "<jump host OS user from the AMI>".to_owned()
        }
    };
    out.push_str(&format!(
        "SendSSHPublicKey InstanceId={jump_ref} InstanceOSUser={jump_user} SSHPublicKey=<ephemeral ed25519 public key for the jump host>\n"
    ));
    out.push_str(&lookup_lines(&settings.target));
    out.push('\n');
    if reach.start {
        out.push_str(&format!(
            "StartInstances InstanceId.1=<either>  # only if {instance_ref} or {jump_ref} is stopped (--start)\n"
        ));
    }
    let user = if settings.user.source.is_given() {
        settings.user.name.clone()
    } else {
        out.push_str(&format!(
            "DescribeImages ImageId.1=<AMI of {instance_ref}>  # OS user guessed from the AMI, else ec2-user\n"
        ));
        "<OS user from the AMI>".to_owned()
    };
    out.push_str(&format!(
        "SendSSHPublicKey InstanceId={instance_ref} InstanceOSUser={user} SSHPublicKey=<another ephemeral ed25519 public key, for the instance>\n"
    ));
    let verify = matches!(
        reach.host_keys,
        crate::settings::HostKeyPolicy::Console { .. }
    );
    let host_keys = || {
        if verify {
            HostKeys::Pinned(Pins::default())
        } else {
            HostKeys::FirstUse {
                known_hosts: crate::dirs::known_hosts_in(&reach.state_dir),
            }
        }
    };
    if verify {
        out.push_str(&format!(
            "GetConsoleOutput InstanceId={jump_ref}  # host keys to pin\nGetConsoleOutput InstanceId={instance_ref}  # host keys to pin\n"
        ));
    }
    let jump = JumpHost {
        instance: InstanceInfo {
            id: jump_ref,
            ..InstanceInfo::default()
        },
        user: jump_user,
        port: hop.port,
        address: IpAddr::from([0, 0, 0, 0]),
    };
    let hop_options = hop_options(&settings.ssh_options);
    let hop_spec = hop_spec(
        &jump,
        "<jump host address>",
        host_keys(),
        &hop_options,
        settings.verbose,
    );
    let hop_args = session::ssh_args(
        &hop_spec,
        Path::new("<jump runtime dir>/id.pub"),
        Path::new("<jump runtime dir>/agent.sock"),
        Path::new("<jump runtime dir>/host-key-report"),
    )?;
    let user_options = without_jump(&settings.ssh_options);
    let mut path_options = vec!["-o".into(), proxy_command(&reach.ssh_program, &hop_args)];
    if let Some(persist) = reach.reuse {
        let path = master_key(settings, &user, &user_options).path_in(&reach.reuse_dir);
        out.push_str(&format!(
            "# reuse: if a master answers at {}, ssh joins it and nothing above is called; else ssh becomes one, kept {} s after its last session\n",
            terminal_safe(&path.display().to_string()),
            persist.as_secs()
        ));
        path_options.extend(crate::reuse::master_options(&path, persist)?);
    }
    let host = match reach.address {
        AddressChoice::Auto => "<instance private IPv4, or the address it was named by>",
        AddressChoice::Private => "<instance private IPv4>",
        AddressChoice::Public => "<instance public IPv4>",
        AddressChoice::Ipv6 => "<instance IPv6 address>",
    };
    let spec = Spec {
        user_options: &user_options,
        path_options,
        verbose: settings.verbose,
        os_user: &user,
        host_key_alias: &instance_ref,
        host,
        host_keys: host_keys(),
        command: &settings.command,
    };
    out.push_str(&session::dry_run_command(&reach.ssh_program, &spec)?);
    out.push('\n');
    crate::error::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(Into::into).collect()
    }

    fn hop(user: Option<&str>, host: &str, port: Option<u16>) -> Hop {
        Hop {
            user: user.map(Into::into),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn reads_jump_hosts_as_ssh_does() {
        assert_eq!(parse_hop("bastion-1"), Some(hop(None, "bastion-1", None)));
        assert_eq!(
            parse_hop("ec2-user@i-0123456789abcdef0:2222"),
            Some(hop(Some("ec2-user"), "i-0123456789abcdef0", Some(2222)))
        );
        assert_eq!(
            parse_hop("ssh://admin@gw.example.com:22"),
            Some(hop(Some("admin"), "gw.example.com", Some(22)))
        );
        assert_eq!(
            parse_hop("[2600:1f18::5]:22"),
            Some(hop(None, "2600:1f18::5", Some(22)))
        );
        assert_eq!(
            parse_hop("2600:1f18::5"),
            Some(hop(None, "2600:1f18::5", None))
        );
        // The last @ separates the user, as in ssh.
        assert_eq!(parse_hop("a@b@host"), Some(hop(Some("a@b"), "host", None)));
        for bad in [
            "",
            "@host",
            "user@",
            "host:0",
            "host:x",
            "host:70000",
            "[::1",
            "[::1]x",
        ] {
            assert_eq!(parse_hop(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn finds_the_first_jump_option_in_ssh_order() {
        let r = |v: &[&str]| requested(&os(v)).unwrap();
        assert_eq!(r(&["-p", "22", "-A"]), None);
        let one = r(&["-A", "-J", "root@bastion:2200", "-J", "other"]).unwrap();
        assert_eq!(one.value, "root@bastion:2200");
        assert_eq!(one.hops, [hop(Some("root"), "bastion", Some(2200))]);
        assert_eq!(r(&["-o", "ProxyJump=b1", "-J", "b2"]).unwrap().value, "b1");
        assert_eq!(r(&["-o", "proxyjump b3"]).unwrap().value, "b3");
        assert_eq!(r(&["-J", "none"]), None);
        // A value of another option is never taken for -J.
        assert_eq!(r(&["-E", "-J", "x"]), None);
        assert_eq!(r(&["-J", "a,b"]).unwrap().hops.len(), 2);
        // ssh reports a malformed value itself.
        assert_eq!(r(&["-J", "a,"]), None);
    }

    #[test]
    fn the_jump_option_is_dropped_and_only_f_goes_to_the_hop() {
        let options = os(&[
            "-A",
            "-J",
            "bastion",
            "-p",
            "22",
            "-o",
            "ProxyJump=x",
            "-o",
            "User=u",
            "-F",
            "/cfg",
            "-E",
            "-J",
        ]);
        assert_eq!(
            without_jump(&options),
            os(&["-A", "-p", "22", "-o", "User=u", "-F", "/cfg", "-E", "-J"])
        );
        assert_eq!(hop_options(&options), os(&["-F", "/cfg"]));
    }

    #[test]
    fn a_jump_host_named_on_its_own_is_read_as_ssh_reads_j() {
        let one = parse("admin@bastion-1:2222").unwrap();
        assert_eq!(one.hops, [hop(Some("admin"), "bastion-1", Some(2222))]);
        assert_eq!(one.shown(), "--jump admin@bastion-1:2222");
        assert_eq!(parse("gw1,i-0123456789abcdef0").unwrap().hops.len(), 2);
        for bad in ["", "none", "a,", "user@", "-oProxyCommand=x", "gw\nHost *"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("does not name a jump host"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn the_proxys_hop_relays_to_the_instances_address() {
        let to: SocketAddr = "10.0.0.5:2222".parse().unwrap();
        let session = os(&[
            "-o",
            "HostKeyAlias=i-1",
            "-l",
            "ubuntu",
            "--",
            "203.0.113.9",
        ]);
        assert_eq!(
            relay_args(&session, to),
            os(&[
                "-o",
                "HostKeyAlias=i-1",
                "-l",
                "ubuntu",
                "-W",
                "[10.0.0.5]:2222",
                "--",
                "203.0.113.9"
            ])
        );
        let v6: SocketAddr = "[2600::5]:22".parse().unwrap();
        assert_eq!(
            pass_through_args(&parse("gw.corp.example").unwrap(), v6),
            os(&["-W", "[2600::5]:22", "--", "gw.corp.example"])
        );
        // The last hop is ssh's destination; those before it its -J.
        assert_eq!(
            pass_through_args(&parse("gw1,admin@gw2:2200").unwrap(), to),
            os(&[
                "-J",
                "gw1",
                "-l",
                "admin",
                "-p",
                "2200",
                "-W",
                "[10.0.0.5]:2222",
                "--",
                "gw2"
            ])
        );
    }

    fn addrs(public: bool) -> Addresses {
        Addresses {
            public_ip: public.then(|| "3.1.2.3".parse().unwrap()),
            private_ip: Some("10.0.0.5".parse().unwrap()),
            ipv6: vec!["2600::5".parse().unwrap()],
            public_dns: public.then(|| "ec2-3-1-2-3.compute-1.amazonaws.com".into()),
            private_dns: Some("ip-10-0-0-5.ec2.internal".into()),
        }
    }

    #[test]
    fn through_a_jump_host_the_private_address_is_the_default() {
        let id = Target::InstanceId("i-01234567".into());
        let a = |choice, target: &Target| {
            target_address(&addrs(true), choice, target)
                .unwrap()
                .to_string()
        };
        assert_eq!(a(AddressChoice::Auto, &id), "10.0.0.5");
        assert_eq!(
            a(AddressChoice::Auto, &Target::Name("web-1".into())),
            "10.0.0.5"
        );
        assert_eq!(a(AddressChoice::Public, &id), "3.1.2.3");
        assert_eq!(a(AddressChoice::Ipv6, &id), "2600::5");
        // The address the target was named by.
        assert_eq!(
            a(AddressChoice::Auto, &Target::Ip("3.1.2.3".parse().unwrap())),
            "3.1.2.3"
        );
        assert_eq!(
            a(
                AddressChoice::Auto,
                &Target::DnsName("ec2-3-1-2-3.compute-1.amazonaws.com".into())
            ),
            "3.1.2.3"
        );
        let none = Addresses {
            private_ip: None,
            ..addrs(true)
        };
        let err = target_address(&none, AddressChoice::Auto, &id).unwrap_err();
        assert!(err.hints.iter().any(|h| h.contains("--public")), "{err:?}");
    }

    /// What ssh does with the ProxyCommand: expand `%%`, `%h` and `%p`,
    /// then `sh -c`. Every word reaches the hop's ssh as it was, `%` and
    /// shell syntax included, and the relay goes to `[HOST]:PORT`.
    #[test]
    fn the_proxy_command_survives_token_expansion_and_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let args_file = dir.path().join("args");
        let program = dir.path().join("fake ssh %h");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
                args_file.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pwned = dir.path().join("pwned");
        let args = os(&[
            "-o",
            "IdentityAgent=\"/run/a b/%%h/agent.sock\"",
            "-o",
            &format!(
                "KnownHostsCommand=/x __known-hosts -- %I %H $(touch {})",
                pwned.display()
            ),
            "-l",
            "it's",
            "--",
            "203.0.113.9",
        ]);
        let option = proxy_command(program.as_os_str(), &args);
        let line = option
            .to_str()
            .unwrap()
            .strip_prefix("ProxyCommand=")
            .unwrap();
        let mut expanded = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                expanded.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => expanded.push('%'),
                Some('h') => expanded.push_str("10.0.0.5"),
                Some('p') => expanded.push_str("22"),
                other => panic!("ssh would not expand %{other:?}"),
            }
        }
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec {expanded}"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!pwned.exists());
        let seen = std::fs::read_to_string(&args_file).unwrap();
        let mut want: Vec<String> = args[..6]
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        want.extend([
            "-W".into(),
            "[10.0.0.5]:22".into(),
            "--".into(),
            "203.0.113.9".into(),
        ]);
        assert_eq!(seen.lines().collect::<Vec<_>>(), want);
    }
}
