//! `eic-connect proxy HOST PORT USER`: ssh's ProxyCommand.
//!
//! ssh runs it before it authenticates, so it can resolve the host, push a
//! key and hand that key to ssh in time:
//! - with an ssh-agent (`SSH_AUTH_SOCK`), the key is added to it with a
//!   60-second lifetime constraint, and ssh offers it with the agent's keys;
//! - without one, the private key is written where the ssh-config block's
//!   `IdentityFile` points (0600, in a 0700 directory under
//!   `$XDG_RUNTIME_DIR`, a memory filesystem on Linux) and deleted once no
//!   connection uses it. ssh reads an identity's public half *before* it
//!   runs the ProxyCommand, so an existing key file is never replaced: it is
//!   pushed again instead.
//!
//! A key pushed less than `REUSE_WINDOW` ago for the same host and user is
//! reused without any API call, so scp, rsync and Ansible loops do not trip
//! the API's throttling. Then the connection is relayed.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::agent::AgentClient;
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::eice::{self, TunnelTarget};
use crate::aws::push::{KEY_LIFETIME, push_key};
use crate::aws::{self, AwsSettings, Clients};
use crate::cli::{AwsArgs, PathArgs, ProxyArgs};
use crate::commands::tunnel;
use crate::error::{Failure, fail};
use crate::key::EphemeralKey;
use crate::target::{AddressChoice, Target, choose_address, parse_target, validate_user};
use crate::tunnel::{Connector, Tunneller};

/// A pushed key is reused while younger than this: the rest of its 60 s is
/// the margin for ssh to finish authenticating.
const REUSE_WINDOW: Duration = Duration::from_secs(45);

pub async fn run(args: ProxyArgs, aws_args: AwsArgs, path: PathArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.prefix {
        Some(prefix) if !prefix.is_empty() => args
            .host
            .strip_prefix(prefix.as_str())
            .unwrap_or(&args.host),
        _ => &args.host,
    };
    let target = parse_target(name)?;
    validate_user(&args.user)?;
    if args.host.contains('/') || args.host.starts_with('.') {
        return fail(Failure::usage(format!(
            "{:?} cannot name an instance",
            args.host
        )));
    }
    let settings = AwsSettings::from_args(&aws_args)?;
    let key_dir = match args.key_dir {
        Some(dir) => dir,
        None => default_key_dir(),
    };
    let slot = Slot::open(&key_dir, &args.host, &args.user)?;

    let hop = {
        let _lock = slot.lock()?;
        let want = Want {
            settings: &settings,
            path: &path,
            target: &target,
            user: &args.user,
            port: args.port,
        };
        slot.prepare(&want).await?
    };
    let holder = slot.hold_private_key();
    // ssh ends its ProxyCommand with SIGHUP when the session is over; that
    // is a normal end, and the key file must still be cleaned up.
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let relayed = tokio::select! {
        result = relay(&hop, &settings, &path, args.port) => result,
        _ = hangup.recv() => Ok(ExitCode::SUCCESS),
        _ = terminate.recv() => Ok(ExitCode::SUCCESS),
    };
    drop(holder);
    slot.release_private_key();
    relayed
}

/// What one proxy run needs to know.
struct Want<'a> {
    settings: &'a AwsSettings,
    path: &'a PathArgs,
    target: &'a Target,
    user: &'a str,
    port: u16,
}

/// The way to the instance's port: straight there, or through an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hop {
    Direct(IpAddr),
    Eice {
        endpoint_id: String,
        host: String,
        private_ip: IpAddr,
    },
}

impl Hop {
    /// One word (no spaces) for the state file.
    fn render(&self) -> String {
        match self {
            Hop::Direct(ip) => ip.to_string(),
            Hop::Eice {
                endpoint_id,
                host,
                private_ip,
            } => format!("eice,{endpoint_id},{host},{private_ip}"),
        }
    }

    fn parse(word: &str) -> Option<Hop> {
        match word.strip_prefix("eice,") {
            Some(rest) => {
                let mut parts = rest.splitn(3, ',');
                let (id, host, ip) = (parts.next()?, parts.next()?, parts.next()?);
                let private_ip = ip.parse().ok()?;
                (eice::is_endpoint_id(id) && eice::is_dns_name(host)).then(|| Hop::Eice {
                    endpoint_id: id.to_owned(),
                    host: host.to_owned(),
                    private_ip,
                })
            }
            None => word.parse().ok().map(Hop::Direct),
        }
    }
}

/// Relays stdin/stdout to the instance over `hop`.
async fn relay(
    hop: &Hop,
    settings: &AwsSettings,
    path: &PathArgs,
    port: u16,
) -> anyhow::Result<ExitCode> {
    match hop {
        Hop::Direct(ip) => {
            relay_direct(*ip, port).await?;
            Ok(ExitCode::SUCCESS)
        }
        Hop::Eice {
            endpoint_id,
            host,
            private_ip,
        } => {
            let config = aws::load_config(settings).await?;
            let tunneller = Tunneller {
                scope: tunnel::scope_of(&config, settings),
                config,
                target: TunnelTarget {
                    endpoint_id: endpoint_id.clone(),
                    host: host.clone(),
                    remote_port: port,
                    private_ip: *private_ip,
                    max_duration: path.max_tunnel_duration,
                },
                connector: Connector::from_env(settings.attempt_timeout)?,
            };
            tunnel::stdio(tunneller, path.max_tunnel_duration).await
        }
    }
}

async fn resolve_and_push(
    clients: &Clients,
    target: &Target,
    user: &str,
    key: &EphemeralKey,
) -> anyhow::Result<InstanceInfo> {
    if let Target::InstanceId(id) = target {
        let (found, pushed) = tokio::join!(
            ec2::find(clients, target),
            push_key(clients, id, user, key.public_openssh())
        );
        let instance = ec2::exactly_one(found?, target, &clients.scope)?;
        ec2::ensure_running(&instance)?;
        pushed?;
        return Ok(instance);
    }
    let instance = ec2::resolve_running(clients, target).await?;
    push_key(clients, &instance.id, user, key.public_openssh()).await?;
    Ok(instance)
}

/// Copies bytes between stdin/stdout and `ip:port` until both sides end.
async fn relay_direct(ip: IpAddr, port: u16) -> anyhow::Result<()> {
    let address = ip;
    let stream = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .map_err(|_| {
        anyhow::Error::new(
            Failure::new(format!("timed out connecting to {address} port {port}"))
                .hint("check that the security group allows port 22 from your address"),
        )
    })?
    .with_context(|| format!("could not connect to {address} port {port}"))?;
    let (mut from_remote, mut to_remote) = stream.into_split();
    let upstream = async {
        let mut stdin = tokio::io::stdin();
        tokio::io::copy(&mut stdin, &mut to_remote).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut to_remote).await
    };
    let downstream = async {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut from_remote, &mut stdout).await?;
        tokio::io::AsyncWriteExt::flush(&mut stdout).await
    };
    tokio::try_join!(upstream, downstream)?;
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `$XDG_RUNTIME_DIR/eic-connect-proxy`, else `<tmp>/eic-connect-proxy-<uid>`.
pub fn default_key_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(dir) => dir.join("eic-connect-proxy"),
        // SAFETY: getuid cannot fail.
        None => {
            std::env::temp_dir().join(format!("eic-connect-proxy-{}", unsafe { libc::getuid() }))
        }
    }
}

/// What a push left for the next proxy of the same host and user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    instance_id: String,
    hop: Hop,
    pushed_at: i64,
    public_key: String,
}

impl State {
    fn parse(text: &str) -> Option<State> {
        let mut words = text.split_whitespace();
        let instance_id = words.next()?.to_owned();
        let hop = Hop::parse(words.next()?)?;
        let pushed_at = words.next()?.parse().ok()?;
        let public_key = words.collect::<Vec<_>>().join(" ");
        (!public_key.is_empty()).then_some(State {
            instance_id,
            hop,
            pushed_at,
            public_key,
        })
    }

    fn render(&self) -> String {
        format!(
            "{} {} {} {}\n",
            self.instance_id,
            self.hop.render(),
            self.pushed_at,
            self.public_key
        )
    }
}

/// The files of one host and user in the key directory: `<host>-<user>`
/// (private key, no-agent fallback only), `.state`, `.lock` and `.lock-key`.
struct Slot {
    base: PathBuf,
}

impl Slot {
    fn open(dir: &Path, host: &str, user: &str) -> anyhow::Result<Slot> {
        ensure_private_dir(dir)?;
        Ok(Slot {
            base: dir.join(format!("{host}-{user}")),
        })
    }

    fn with_ext(&self, ext: &str) -> PathBuf {
        let mut path = self.base.clone().into_os_string();
        path.push(ext);
        PathBuf::from(path)
    }

    /// Serialises proxies of the same host and user, so a burst of scp
    /// calls pushes once.
    fn lock(&self) -> anyhow::Result<FileLock> {
        FileLock::acquire(&self.with_ext(".lock"), libc::LOCK_EX)
    }

    fn read_state(&self) -> Option<State> {
        State::parse(&std::fs::read_to_string(self.with_ext(".state")).ok()?)
    }

    /// The key file left by another proxy of the same host and user (no
    /// agent). ssh may already have read its public half, so it must not be
    /// replaced while it exists.
    fn file_key(&self) -> anyhow::Result<Option<EphemeralKey>> {
        match std::fs::read_to_string(&self.base) {
            Ok(text) => Ok(Some(EphemeralKey::from_openssh(&zeroize::Zeroizing::new(
                text,
            ))?)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("could not read {}", self.base.display())),
        }
    }

    /// Makes sure ssh will find a key the instance accepts, pushing only when
    /// no live one can be reused. Returns the address to connect to.
    async fn prepare(&self, want: &Want<'_>) -> anyhow::Result<Hop> {
        let fresh = self
            .read_state()
            .filter(|s| (0..REUSE_WINDOW.as_secs() as i64).contains(&(now_secs() - s.pushed_at)));
        if let Some(key) = self.file_key()? {
            if let Some(state) = fresh.filter(|s| s.public_key == key.public_openssh()) {
                tracing::debug!(instance = %state.instance_id, "reusing the key file pushed {}s ago", now_secs() - state.pushed_at);
                return Ok(state.hop);
            }
            // Push the same key again for a new 60 s window.
            return self.push(want, &key, false).await;
        }
        if let (Some(state), Some(mut agent)) = (fresh, AgentClient::from_env().await) {
            let blob = ssh_key::PublicKey::from_openssh(&state.public_key)
                .ok()
                .and_then(|k| k.to_bytes().ok());
            if let Some(blob) = blob
                && agent.has(&blob).await.unwrap_or(false)
            {
                tracing::debug!(instance = %state.instance_id, "reusing the agent key pushed {}s ago", now_secs() - state.pushed_at);
                return Ok(state.hop);
            }
        }
        self.push(want, &EphemeralKey::generate()?, true).await
    }

    /// Resolves the target and pushes `key`; stores it for ssh if `store`.
    async fn push(&self, want: &Want<'_>, key: &EphemeralKey, store: bool) -> anyhow::Result<Hop> {
        let config = aws::load_config(want.settings).await?;
        let clients = Clients::new(&config, want.settings);
        let instance = resolve_and_push(&clients, want.target, want.user, key).await?;
        let pushed_at = now_secs();
        let chosen = choose_address(&instance.addresses, AddressChoice::Auto, want.target)?;
        let decision = tunnel::decide(want.path.via(), false, chosen, &instance, Some(want.port));
        let route = tunnel::plan(
            decision,
            want.path,
            &config,
            &clients,
            &instance,
            Some(want.port),
            None,
        )
        .await?;
        let hop = match route {
            Some(route) => Hop::Eice {
                endpoint_id: route.target.endpoint_id,
                host: route.target.host,
                private_ip: route.target.private_ip,
            },
            None => Hop::Direct(chosen),
        };
        if store {
            self.store_key(key).await?;
        }
        self.write_state(&State {
            instance_id: instance.id.clone(),
            hop: hop.clone(),
            pushed_at,
            public_key: key.public_openssh().to_owned(),
        })?;
        Ok(hop)
    }

    /// Gives ssh the key: through the agent if there is one, else as a file.
    async fn store_key(&self, key: &EphemeralKey) -> anyhow::Result<()> {
        match AgentClient::from_env().await {
            Some(mut agent) => {
                agent
                    .add(key, KEY_LIFETIME)
                    .await
                    .context("could not add the key to ssh-agent (SSH_AUTH_SOCK)")?;
                tracing::debug!("added the key to ssh-agent for {}s", KEY_LIFETIME.as_secs());
            }
            None => {
                write_private(&self.base, key.private_openssh()?.as_bytes())?;
                tracing::debug!(path = %self.base.display(), "no ssh-agent: wrote the key for at most 60 s");
            }
        }
        Ok(())
    }

    fn write_state(&self, state: &State) -> anyhow::Result<()> {
        write_atomic(&self.with_ext(".state"), state.render().as_bytes(), 0o600)
    }

    /// A shared lock on the private key file while this proxy's ssh may
    /// still read it (fallback mode only; absent in agent mode).
    fn hold_private_key(&self) -> Option<FileLock> {
        self.base
            .exists()
            .then(|| FileLock::acquire(&self.with_ext(".lock-key"), libc::LOCK_SH).ok())
            .flatten()
    }

    /// Deletes the private key file (fallback mode) unless another proxy
    /// still holds it.
    fn release_private_key(&self) {
        if !self.base.exists() {
            return;
        }
        if let Ok(_exclusive) = FileLock::try_acquire(&self.with_ext(".lock-key"), libc::LOCK_EX) {
            let _ = std::fs::remove_file(&self.base);
        }
    }
}

/// Creates `dir` (0700) or checks that an existing one is ours and private.
fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
                return fail(
                    Failure::new(format!(
                        "{} is not a private directory of this user",
                        dir.display()
                    ))
                    .hint("remove it, or choose another with --key-dir"),
                );
            }
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("could not create {}", dir.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("could not write {}", path.display()))
}

/// An flock(2) held until dropped.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn open(path: &Path) -> anyhow::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("could not open {}", path.display()))
    }

    fn acquire(path: &Path, kind: libc::c_int) -> anyhow::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = Self::open(path)?;
        // SAFETY: flock on a descriptor we own; blocks until granted.
        if unsafe { libc::flock(file.as_raw_fd(), kind) } != 0 {
            return Err(std::io::Error::last_os_error()).context("flock");
        }
        Ok(FileLock { _file: file })
    }

    fn try_acquire(path: &Path, kind: libc::c_int) -> anyhow::Result<FileLock> {
        Self::acquire(path, kind | libc::LOCK_NB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let state = State {
            instance_id: "i-0123456789abcdef0".into(),
            hop: Hop::Direct("10.0.0.5".parse().unwrap()),
            pushed_at: 1_700_000_000,
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake".into(),
        };
        assert_eq!(State::parse(&state.render()), Some(state));
        assert_eq!(
            State::parse("i-1 10.0.0.5 notanumber ssh-ed25519 AAAA"),
            None
        );
        assert_eq!(State::parse("i-1 10.0.0.5 12"), None);
        let tunnelled = Hop::Eice {
            endpoint_id: "eice-0123456789abcdef0".into(),
            host: "eice-0123456789abcdef0.ec2-instance-connect-endpoint.us-east-1.amazonaws.com"
                .into(),
            private_ip: "fd00::5".parse().unwrap(),
        };
        assert_eq!(Hop::parse(&tunnelled.render()), Some(tunnelled));
        assert_eq!(Hop::parse("eice,bad id,host,10.0.0.5"), None);
    }

    #[test]
    fn refuses_a_key_dir_that_is_not_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&open).is_err());
        let fresh = dir.path().join("fresh");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        ensure_private_dir(&fresh).unwrap();
    }
}
