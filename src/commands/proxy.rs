//! `eic-connect proxy HOST PORT USER`: ssh's ProxyCommand (see ssh-config).
//!
//! ssh runs it before it authenticates, so it can resolve the host, push a
//! key and serve that key in time. The key is never a file: this process
//! serves it from an agent socket of its own, `<key dir>/USER@HOST.sock`,
//! which the ssh-config block names as ssh's `IdentityAgent` (ssh asks the
//! agent only at user authentication, after this command is running).
//!
//! A key pushed less than `REUSE_WINDOW` ago for the same host and user is
//! reused without any API call, so scp, rsync and Ansible loops do not trip
//! the API's throttling: the proxy that pushed it keeps serving it (without
//! a terminal) until its 60 seconds are over or a newer proxy takes the
//! socket's place. Every key pushed for the instance and user is valid, so
//! whichever agent answers at the socket, ssh logs in.
//!
//! With `--jump JUMP` (`ssh-config --jump`), the relay is the hop's ssh,
//! `-W ADDRESS:PORT` through the jump host, as `-J` builds it for the
//! connect command (`jump.rs`): an EC2 jump host gets a key of its own,
//! pushed for its own OS user and served by its own agent, and its host key
//! is kept under its instance id. ssh's own `-J` cannot do this through the
//! block: its ProxyJump takes the place of the block's ProxyCommand, so the
//! instance's key would never be pushed, and the jump host would be asked
//! for the block's name, which only eic-connect resolves.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{oneshot, watch};

use crate::agent::{Agent, Push};
use crate::aws::{self, Clients};
use crate::dirs::ensure_private_dir;
use crate::eice::endpoint::{self as eice, TunnelTarget};
use crate::eice::relay::{Connector, Tunneller};
use crate::eice::route;
use crate::error::{Failure, fail};
use crate::key::EphemeralKey;
use crate::osuser::UserSource;
use crate::resolve::{Want, resolve_push_and_tell};
use crate::settings::{OsUser, Proxy};
use crate::target::{AddressChoice, choose_address};

/// A pushed key is reused while younger than this: the rest of its 60 s is
/// the margin for ssh to finish authenticating.
const REUSE_WINDOW: Duration = Duration::from_secs(45);
/// The longest socket path the platforms allow (`sun_path`, less the NUL).
const MAX_SOCKET_PATH: usize = 103;

pub async fn run(settings: Proxy) -> anyhow::Result<ExitCode> {
    if settings.master {
        crate::ssh::reclaim_stderr();
    }
    if matches!(
        settings.reach.host_keys,
        crate::settings::HostKeyPolicy::Console { .. }
    ) {
        return fail(
            Failure::usage(
                "--verify-host-key (or verify-host-key in the configuration) is not supported through the ssh-config proxy",
            )
            .hint("use eic-connect itself for pinned host keys: eic-connect --verify-host-key TARGET")
            .hint("or set EIC_CONNECT_VERIFY_HOST_KEY=0 for ssh, scp, rsync and git through the block"),
        );
    }
    ensure_private_dir(&settings.key_dir)?;
    if settings.master {
        // ssh binds the master's socket there once this connection is up.
        ensure_private_dir(&settings.reach.reuse_dir)?;
    }
    let slot = Slot::new(&settings.key_dir, &settings.host, &settings.user)?;
    // The jump host is looked up before anything is pushed: one that is
    // unknown, ambiguous or stopped ends this proxy here.
    let mut through = match &settings.jump {
        Some(requested) => Some(crate::jump::for_proxy(&settings.reach, requested).await?),
        None => None,
    };
    // With --master, standard error goes once connected and the key (and
    // the jump host's) pushed.
    let steps = if through.as_ref().is_some_and(|t| t.pushes()) {
        3
    } else {
        2
    };
    let quiet = settings.master.then(|| crate::ssh::QuietWhen::after(steps));
    // The relay starts as soon as the way to the instance is known; the
    // push may still be in flight (the agent holds the key until it is
    // done, and a refused push ends this proxy with its error).
    let (hop_tx, hop_rx) = oneshot::channel();
    let mut serving = std::pin::pin!(async {
        let _lock = slot.lock()?;
        match slot.reusable(settings.jump.is_some()).await {
            Some(state) => {
                tracing::debug!(instance = %state.instance_id, "reusing the key pushed {}s ago", now_secs() - state.pushed_at);
                let _ = hop_tx.send(state.hop);
                anyhow::Ok(None)
            }
            None => push_and_serve(&settings, &slot, hop_tx).await.map(Some),
        }
    });
    let mut served = None;
    let mut serving_done = false;
    let mut hop_rx = hop_rx;
    let hop = tokio::select! {
        biased;
        result = &mut serving => {
            served = result?;
            serving_done = true;
            (&mut hop_rx).await.ok()
        }
        hop = &mut hop_rx => hop.ok(),
    };
    let Some(hop) = hop else {
        // The way was never named: serving failed, and says why.
        if !serving_done {
            serving.await?;
        }
        anyhow::bail!("no way to the instance was found");
    };
    if serving_done && let Some(quiet) = &quiet {
        quiet.done();
    }
    // ssh ends its ProxyCommand with SIGHUP when the session is over; that
    // is a normal end.
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // Boxed, so that it can end (with a jump host's ssh) before serving on.
    let mut relaying = Box::pin(relay(&hop, &settings, through.take(), quiet.clone()));
    let (relayed, linger) = loop {
        tokio::select! {
            result = &mut serving, if !serving_done => {
                // A refused push ends the connection with its error.
                served = result?;
                serving_done = true;
                if let Some(quiet) = &quiet {
                    quiet.done();
                }
            }
            result = &mut relaying => break (result, true),
            _ = hangup.recv() => break (Ok(ExitCode::SUCCESS), true),
            // Told to stop: no serving on.
            _ = terminate.recv() => break (Ok(ExitCode::SUCCESS), false),
        }
    };
    drop(relaying);
    if !serving_done {
        // The session ended before the push did (ssh gave up): the push's
        // outcome still decides what this proxy reports.
        served = serving.await?;
    }
    if let Some(served) = served {
        // A relay that failed is reported now, while ssh still shows it.
        if linger && relayed.is_ok() {
            served.linger(&slot, &mut terminate).await;
        } else {
            served.retire(&slot);
        }
    }
    relayed
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
    /// A Session Manager session to the instance.
    Ssm {
        instance_id: String,
    },
    /// This address, through the proxy's `--jump` host.
    Jump(IpAddr),
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
            Hop::Ssm { instance_id } => format!("ssm,{instance_id}"),
            Hop::Jump(ip) => format!("jump,{ip}"),
        }
    }

    fn parse(word: &str) -> Option<Hop> {
        if let Some(ip) = word.strip_prefix("jump,") {
            return ip.parse().ok().map(Hop::Jump);
        }
        if let Some(id) = word.strip_prefix("ssm,") {
            return crate::target::is_instance_id(id).then(|| Hop::Ssm {
                instance_id: id.to_owned(),
            });
        }
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

/// Resolves the target, pushes a fresh key and serves it at the slot's
/// socket. The way to the instance goes to `hop_ready` as soon as it is
/// known, before the push is done: the agent answers ssh once it is.
async fn push_and_serve(
    settings: &Proxy,
    slot: &Slot,
    hop_ready: oneshot::Sender<Hop>,
) -> anyhow::Result<Served> {
    let reach = &settings.reach;
    let config = aws::load_config(&reach.aws).await?;
    let clients = Clients::new(&config, &reach.aws);
    // Through a jump host nothing is probed from here: --start waits for
    // the instance to run, not for its port (which may not route here).
    let mut behind_jump = reach.clone();
    behind_jump.path.via = crate::eice::ConnectVia::Auto;
    behind_jump.address = AddressChoice::Private;
    let reach = if settings.jump.is_some() {
        &behind_jump
    } else {
        reach
    };
    let key = EphemeralKey::generate()?;
    let public_key = key.public_openssh().to_owned();
    let user = OsUser {
        name: settings.user.clone(),
        source: UserSource::CommandLine("%r"),
    };
    let want = Want {
        reach,
        target: &settings.target,
        user: &user,
        ssh_port: Some(settings.port),
        picker: false,
    };
    let (push_tx, push_rx) = watch::channel(Push::InFlight);
    let (ready_tx, ready_rx) = oneshot::channel();
    let progress = crate::resolve::Progress {
        instance: None,
        ready: Some(ready_tx),
    };
    let mut resolving = std::pin::pin!(resolve_push_and_tell(
        &want,
        &clients,
        &public_key,
        progress,
        push_tx
    ));
    // The instance (and the endpoint, when tunnelling), alongside the push.
    let mut resolved = None;
    let mut ready_rx = ready_rx;
    let ready = loop {
        tokio::select! {
            ready = &mut ready_rx => break ready,
            result = &mut resolving, if resolved.is_none() => resolved = Some(result?),
        }
    };
    let Ok((instance, _)) = ready else {
        return Err(match resolved {
            Some(_) => anyhow::anyhow!("the lookup ended without naming an instance"),
            None => match (&mut resolving).await {
                Err(err) => err,
                Ok(_) => anyhow::anyhow!("the lookup ended without naming an instance"),
            },
        });
    };
    let hop = if settings.jump.is_some() {
        // The address the jump host reaches: the private one, unless the
        // host named another of the instance's addresses.
        Hop::Jump(crate::jump::target_address(
            &instance.addresses,
            settings.reach.address,
            &settings.target,
        )?)
    } else {
        let chosen = choose_address(&instance.addresses, AddressChoice::Auto, &settings.target)?;
        let decision = route::decide(reach.path.via, false, chosen, &instance);
        let mut planning = std::pin::pin!(route::plan(
            decision,
            &reach.path,
            &config,
            &clients,
            &instance,
            Some(settings.port),
            None,
        ));
        let planned = loop {
            tokio::select! {
                planned = &mut planning => break planned?,
                result = &mut resolving, if resolved.is_none() => resolved = Some(result?),
            }
        };
        match planned {
            Some(route::Route::Endpoint { target, .. }) => Hop::Eice {
                endpoint_id: target.endpoint_id,
                host: target.host,
                private_ip: target.private_ip,
            },
            Some(route::Route::SessionManager { instance_id, .. }) => Hop::Ssm { instance_id },
            None => Hop::Direct(chosen),
        }
    };
    // Bound beside the final name, then moved over it: a proxy asking at
    // the same moment finds the old agent or the new one, never none.
    let fresh = slot.with_ext(&format!(".sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let agent = Agent::start(
        key,
        fresh.clone(),
        None,
        push_rx,
        crate::session::user_agent(),
    )?;
    let socket = slot.socket();
    if let Err(err) = std::fs::rename(&fresh, &socket) {
        let _ = std::fs::remove_file(&fresh);
        return Err(err)
            .with_context(|| format!("could not move the agent socket to {}", socket.display()));
    }
    let inode = std::fs::symlink_metadata(&socket)?.ino();
    let served = Served { agent, inode };
    // ssh checks the host key (by the instance id this names) before it
    // authenticates: the state is written now, with no push time yet, so
    // that no other proxy reuses the key before the push is done.
    slot.write_state(&State {
        instance_id: instance.id.clone(),
        hop: hop.clone(),
        pushed_at: 0,
    })?;
    let _ = hop_ready.send(hop.clone());
    let resolved = match resolved {
        Some(done) => done,
        None => match (&mut resolving).await {
            Ok(done) => done,
            Err(err) => {
                // The slot's lock is held here (by the caller).
                served.retire_locked(slot);
                return Err(err);
            }
        },
    };
    slot.write_state(&State {
        instance_id: resolved.instance.id.clone(),
        hop,
        pushed_at: now_secs(),
    })?;
    tracing::debug!(socket = %socket.display(), "serving the key for at most 60 s");
    Ok(served)
}

/// The agent this proxy serves at the slot's socket.
struct Served {
    agent: Agent,
    inode: u64,
}

impl Served {
    /// After the session: goes on serving, detached from ssh's pipes, for
    /// other proxies that reuse the key, until it expires or a newer proxy
    /// took the socket; then removes the socket if it is still this one.
    /// SIGTERM ends it at once.
    async fn linger(self, slot: &Slot, terminate: &mut tokio::signal::unix::Signal) {
        detach_stdio();
        while self.is_ours(slot) && self.agent.holds_key() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = terminate.recv() => break,
            }
        }
        self.retire(slot);
    }

    /// Stops serving: removes the socket if it is still this one (the key
    /// is wiped when the agent drops).
    fn retire(self, slot: &Slot) {
        let _lock = slot.lock();
        self.retire_locked(slot);
    }

    /// [`Served::retire`] with the slot's lock already held.
    fn retire_locked(self, slot: &Slot) {
        if self.is_ours(slot) {
            let _ = std::fs::remove_file(slot.socket());
        }
    }

    fn is_ours(&self, slot: &Slot) -> bool {
        std::fs::symlink_metadata(slot.socket()).is_ok_and(|m| m.ino() == self.inode)
    }
}

/// Points standard input, output and error at /dev/null, so whoever waits
/// for the proxy's output (ssh, a shell's `$(…)`) sees it end.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// Relays stdin/stdout to the instance over `hop` (`through` the jump
/// host, with `--jump`).
async fn relay(
    hop: &Hop,
    settings: &Proxy,
    through: Option<crate::jump::ProxyJump>,
    quiet: Option<Arc<crate::ssh::QuietWhen>>,
) -> anyhow::Result<ExitCode> {
    match hop {
        Hop::Jump(ip) => {
            let Some(through) = through else {
                anyhow::bail!("no jump host to reach {ip} through");
            };
            through
                .relay(std::net::SocketAddr::new(*ip, settings.port), quiet)
                .await
        }
        Hop::Direct(ip) => {
            relay_direct(*ip, settings.port, quiet).await?;
            Ok(ExitCode::SUCCESS)
        }
        Hop::Eice {
            endpoint_id,
            host,
            private_ip,
        } => {
            let reach = &settings.reach;
            let config = aws::load_config(&reach.aws).await?;
            let tunneller = Tunneller {
                scope: route::scope_of(&config, &reach.aws),
                config,
                target: TunnelTarget {
                    endpoint_id: endpoint_id.clone(),
                    host: host.clone(),
                    remote_port: settings.port,
                    private_ip: *private_ip,
                    max_duration: reach.path.max_tunnel_duration,
                },
                connector: Connector::from_env(reach.aws.attempt_timeout)?,
            };
            crate::eice::relay::stdio(tunneller, reach.path.max_tunnel_duration, quiet).await
        }
        Hop::Ssm { instance_id } => {
            let reach = &settings.reach;
            let config = aws::load_config(&reach.aws).await?;
            let clients = Clients::new(&config, &reach.aws);
            let connector = Connector::from_env(reach.aws.attempt_timeout)?;
            crate::ssm::Session {
                clients: &clients,
                instance_id,
                port: settings.port,
                connector: &connector,
                quiet,
            }
            .stdio()
            .await
        }
    }
}

/// Copies bytes between stdin/stdout and `ip:port` until both sides end.
/// With `quiet`, being connected is a step towards letting standard error go.
async fn relay_direct(
    ip: IpAddr,
    port: u16,
    quiet: Option<Arc<crate::ssh::QuietWhen>>,
) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .map_err(|_| {
        anyhow::Error::new(
            Failure::new(format!("timed out connecting to {ip} port {port}"))
                .hint("check that the security group allows port 22 from your address"),
        )
    })?
    .with_context(|| format!("could not connect to {ip} port {port}"))?;
    if let Some(quiet) = quiet {
        quiet.done();
    }
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

/// What a push left for the next proxy of the same host and user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    instance_id: String,
    hop: Hop,
    pushed_at: i64,
}

impl State {
    fn parse(text: &str) -> Option<State> {
        let mut words = text.split_whitespace();
        let instance_id = words.next()?.to_owned();
        let hop = Hop::parse(words.next()?)?;
        let pushed_at = words.next()?.parse().ok()?;
        (crate::target::is_instance_id(&instance_id) && words.next().is_none()).then_some(State {
            instance_id,
            hop,
            pushed_at,
        })
    }

    fn render(&self) -> String {
        format!(
            "{} {} {}\n",
            self.instance_id,
            self.hop.render(),
            self.pushed_at
        )
    }
}

/// The files of one host and user in the key directory, `USER@HOST` plus
/// `.sock` (the agent), `.state` and `.lock`. None holds a secret.
struct Slot {
    base: PathBuf,
}

impl Slot {
    fn new(dir: &Path, host: &str, user: &str) -> anyhow::Result<Slot> {
        let slot = Slot {
            base: dir.join(format!("{user}@{host}")),
        };
        // The socket's own name plus the temporary suffix must fit.
        let longest = slot.with_ext(".sock.4294967295");
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return fail(
                Failure::new(format!(
                    "the agent socket path {} is too long for a Unix socket",
                    slot.socket().display()
                ))
                .hint("use the instance id as the host (ssh i-0abc…), or a shorter --key-dir in the ssh-config block"),
            );
        }
        Ok(slot)
    }

    fn with_ext(&self, ext: &str) -> PathBuf {
        let mut path = self.base.clone().into_os_string();
        path.push(ext);
        PathBuf::from(path)
    }

    fn socket(&self) -> PathBuf {
        self.with_ext(".sock")
    }

    /// Serialises proxies of the same host and user, so a burst of scp
    /// calls pushes once.
    fn lock(&self) -> anyhow::Result<std::fs::File> {
        let path = self.with_ext(".lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("could not open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("could not lock {}", path.display()))?;
        Ok(file)
    }

    /// The state of a key still young enough to reuse, whose agent answers,
    /// left by a proxy that went the same way (`through_jump`: through the
    /// jump host, or not).
    async fn reusable(&self, through_jump: bool) -> Option<State> {
        let text = std::fs::read_to_string(self.with_ext(".state")).ok()?;
        let state =
            State::parse(&text).filter(|s| matches!(s.hop, Hop::Jump(_)) == through_jump)?;
        let age = now_secs() - state.pushed_at;
        if !(0..REUSE_WINDOW.as_secs() as i64).contains(&age) {
            return None;
        }
        tokio::net::UnixStream::connect(self.socket()).await.ok()?;
        Some(state)
    }

    fn write_state(&self, state: &State) -> anyhow::Result<()> {
        let path = self.with_ext(".state");
        let tmp = self.with_ext(&format!(".state.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(state.render().as_bytes())?;
        drop(file);
        std::fs::rename(&tmp, &path).with_context(|| format!("could not write {}", path.display()))
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
        };
        assert_eq!(State::parse(&state.render()), Some(state));
        assert_eq!(
            State::parse("i-0123456789abcdef0 10.0.0.5 notanumber"),
            None
        );
        assert_eq!(State::parse("i-1 10.0.0.5 12"), None);
        assert_eq!(State::parse("i-0123456789abcdef0 10.0.0.5 12 extra"), None);
        let tunnelled = Hop::Eice {
            endpoint_id: "eice-0123456789abcdef0".into(),
            host: "eice-0123456789abcdef0.ec2-instance-connect-endpoint.us-east-1.amazonaws.com"
                .into(),
            private_ip: "fd00::5".parse().unwrap(),
        };
        assert_eq!(Hop::parse(&tunnelled.render()), Some(tunnelled));
        assert_eq!(Hop::parse("eice,bad id,host,10.0.0.5"), None);
        let ssm = Hop::Ssm {
            instance_id: "i-0123456789abcdef0".into(),
        };
        assert_eq!(Hop::parse(&ssm.render()), Some(ssm));
        assert_eq!(Hop::parse("ssm,web-1"), None);
        let behind = Hop::Jump("10.0.0.5".parse().unwrap());
        assert_eq!(Hop::parse(&behind.render()), Some(behind));
        assert_eq!(Hop::parse("jump,bastion-1"), None);
    }

    #[test]
    fn socket_paths_that_do_not_fit_are_refused() {
        let dir = Path::new("/run/user/1000/eic-connect-proxy");
        assert!(Slot::new(dir, "i-0123456789abcdef0", "ec2-user").is_ok());
        assert!(Slot::new(dir, &"eic-".repeat(20), "ec2-user").is_err());
    }
}
