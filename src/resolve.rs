//! From a target to an instance with a key pushed for its OS user: the
//! lookup, the choice among several, `--start`, the OS user (given,
//! remembered or guessed from the AMI) and the push — one way for connect
//! and the ssh-config proxy.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::aws::Clients;
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::push::push_key;
use crate::eice::ConnectVia;
use crate::osuser::{self, UserSource};
use crate::settings::{OsUser, Reach};
use crate::target::{Target, choose_address};

/// What to find and for whom.
pub struct Want<'a> {
    pub reach: &'a Reach,
    pub target: &'a Target,
    pub user: &'a OsUser,
    /// ssh's port, for waiting until a started instance answers.
    pub ssh_port: Option<u16>,
    /// Whether several matches may be offered in a picker (a terminal).
    pub picker: bool,
}

/// The instance, the user the key was pushed for, and when it was pushed.
pub struct Resolved {
    pub instance: InstanceInfo,
    pub user: String,
    pub pushed: Instant,
}

/// Who hears of the steps before the push is done, to start their own work
/// early.
#[derive(Default)]
pub struct Progress {
    /// The instance, as soon as it is known and running (the endpoint
    /// lookup starts then).
    pub instance: Option<oneshot::Sender<InstanceInfo>>,
    /// The instance and the OS user, once both are known: ssh may start
    /// while the push is still in flight.
    pub ready: Option<oneshot::Sender<(InstanceInfo, String)>>,
}

impl Progress {
    fn instance(&mut self, instance: &InstanceInfo) {
        if let Some(tx) = self.instance.take() {
            let _ = tx.send(instance.clone());
        }
    }

    fn ready(&mut self, instance: &InstanceInfo, user: &str) {
        self.instance(instance);
        if let Some(tx) = self.ready.take() {
            let _ = tx.send((instance.clone(), user.to_owned()));
        }
    }
}

/// Finds the instance and pushes `public_key` for the OS user, which it
/// returns. With a user given and an instance id, both calls go out at once
/// (the push needs nothing from the lookup); otherwise the lookup must name
/// the instance first, and without a user, DescribeImages must name its AMI.
pub async fn resolve_and_push(
    want: &Want<'_>,
    clients: &Clients,
    public_key: &str,
    mut progress: Progress,
) -> anyhow::Result<Resolved> {
    let t0 = Instant::now();
    let given = want.user.source.is_given();
    let remembered = match want.target {
        Target::InstanceId(id) if !given => osuser::remembered(&want.reach.state_dir, id),
        _ => None,
    };
    if !given && remembered.is_none() {
        let instance = ready(want, clients, pick_one(want, clients).await?).await?;
        progress.instance(&instance);
        tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance");
        let t1 = Instant::now();
        // A name found the instance: its AMI guess may be remembered too.
        let choice = match osuser::remembered(&want.reach.state_dir, &instance.id) {
            Some(user) => osuser::Choice {
                user,
                source: UserSource::Remembered,
            },
            None => osuser::choose_for_image(clients, instance.image_id.as_deref()).await,
        };
        tracing::debug!(
            os_user = %choice.user,
            chosen_by = %choice.source,
            elapsed_ms = t1.elapsed().as_millis() as u64,
            "chose OS user"
        );
        progress.ready(&instance, &choice.user);
        let t2 = Instant::now();
        let pushed = push_key(clients, &instance.id, &choice.user, public_key).await?;
        tracing::debug!(elapsed_ms = t2.elapsed().as_millis() as u64, "pushed key");
        if matches!(choice.source, UserSource::Guessed(_)) {
            osuser::remember(&want.reach.state_dir, &instance.id, &choice.user);
        }
        return Ok(Resolved {
            instance,
            user: choice.user,
            pushed,
        });
    }
    let (user, source) = match &remembered {
        Some(user) => (user.as_str(), UserSource::Remembered),
        None => (want.user.name.as_str(), want.user.source.clone()),
    };
    tracing::debug!(os_user = user, chosen_by = %source, "OS user given");
    if let Target::InstanceId(id) = want.target {
        let lookup = async {
            let found = ec2::exactly_one(
                ec2::find(clients, want.target).await?,
                want.target,
                &clients.scope,
            )?;
            let was_running = found.state == "running";
            let instance = ready(want, clients, found).await?;
            progress.ready(&instance, user);
            tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance");
            anyhow::Ok((instance, was_running))
        };
        let (looked_up, pushed) = tokio::join!(lookup, push_key(clients, id, user, public_key));
        // The lookup explains "not found" and "stopped" better than the push.
        let (instance, was_running) = looked_up?;
        let pushed = if was_running {
            pushed?
        } else {
            // Started just now: the first push went to a stopped instance.
            push_key(clients, id, user, public_key).await?
        };
        tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance and pushed key concurrently");
        return Ok(Resolved {
            instance,
            user: user.to_owned(),
            pushed,
        });
    }
    let instance = ready(want, clients, pick_one(want, clients).await?).await?;
    progress.ready(&instance, user);
    tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance");
    let t1 = Instant::now();
    let pushed = push_key(clients, &instance.id, user, public_key).await?;
    tracing::debug!(elapsed_ms = t1.elapsed().as_millis() as u64, "pushed key");
    Ok(Resolved {
        instance,
        user: user.to_owned(),
        pushed,
    })
}

/// [`resolve_and_push`], then tells the agent watching `push` how the push
/// ended, so that it offers the key (or nothing) to an ssh already started.
pub async fn resolve_push_and_tell(
    want: &Want<'_>,
    clients: &Clients,
    public_key: &str,
    progress: Progress,
    push: tokio::sync::watch::Sender<crate::agent::Push>,
) -> anyhow::Result<Resolved> {
    use crate::agent::Push;
    let result = resolve_and_push(want, clients, public_key, progress).await;
    let _ = push.send(match &result {
        Ok(resolved) => Push::Done(resolved.pushed),
        Err(_) => Push::Failed,
    });
    result
}

/// The one instance the target names. Several: on a terminal, the user picks
/// one; otherwise (scripts, CI) an error lists them, so nothing ever waits
/// for an answer that cannot come.
async fn pick_one(want: &Want<'_>, clients: &Clients) -> anyhow::Result<InstanceInfo> {
    let found = ec2::find(clients, want.target).await?;
    if found.len() > 1 && want.picker && crate::picker::available() {
        return crate::picker::pick(found, want.target, &clients.scope);
    }
    ec2::exactly_one(found, want.target, &clients.scope)
}

/// A running instance, or with `--start` one started and waited for (and,
/// when ssh will go straight to it, until its port answers); otherwise an
/// error saying what state it is in.
async fn ready(
    want: &Want<'_>,
    clients: &Clients,
    instance: InstanceInfo,
) -> anyhow::Result<InstanceInfo> {
    if !want.reach.start || instance.state == "running" {
        ec2::ensure_running(&instance)?;
        return Ok(instance);
    }
    let instance = ec2::ensure_started(clients, instance, true).await?;
    let direct = match choose_address(&instance.addresses, want.reach.address, want.target) {
        Ok(address) if want.reach.path.via == ConnectVia::Direct => Some(address),
        Ok(address)
            if want.reach.path.via == ConnectVia::Auto
                && instance.addresses.public_ip.map(IpAddr::V4) == Some(address) =>
        {
            Some(address)
        }
        _ => None,
    };
    if let Some(address) = direct {
        let port = want.ssh_port.unwrap_or(22);
        wait_for_port(std::net::SocketAddr::new(address, port)).await;
    }
    Ok(instance)
}

/// After a start, sshd comes up some seconds after the instance is
/// `running`: waits (up to two minutes) until the port accepts connections,
/// so the 60-second key is not spent on "connection refused".
pub async fn wait_for_port(addr: std::net::SocketAddr) {
    const PATIENCE: Duration = Duration::from_secs(120);
    let started = Instant::now();
    let mut progress = crate::progress::Line::stderr();
    while started.elapsed() < PATIENCE {
        let attempt =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_)) = attempt.await {
            return;
        }
        progress.show(&format!(
            "waiting for {addr} to accept connections ({} s)",
            started.elapsed().as_secs()
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where addresses that reached an instance directly are remembered.
const ADDRESSES: &str = "addresses";
/// The file is started afresh past this size.
const ADDRESSES_MAX_BYTES: u64 = 256 * 1024;

/// The address an earlier connection reached `instance_id` at, directly,
/// with the same address choice: ssh may start there while the lookup
/// confirms it.
pub fn remembered_address(
    state_dir: &std::path::Path,
    instance_id: &str,
    choice: crate::target::AddressChoice,
) -> Option<IpAddr> {
    let text = std::fs::read_to_string(state_dir.join(ADDRESSES)).ok()?;
    let choice = format!("{choice:?}");
    text.lines()
        .rev()
        .find_map(|line| {
            let mut words = line.split(' ');
            let (id, how, ip) = (words.next()?, words.next()?, words.next()?);
            // The latest line for the instance counts; `-` marks an address
            // forgotten (the instance moved).
            (id == instance_id && how == choice).then(|| ip.parse().ok())
        })
        .flatten()
}

/// Remembers that `instance_id` was reached directly at `ip` (`None`:
/// forgets it). Best effort, one write per line.
pub fn remember_address(
    state_dir: &std::path::Path,
    instance_id: &str,
    choice: crate::target::AddressChoice,
    ip: Option<IpAddr>,
) {
    use std::io::Write;
    let path = state_dir.join(ADDRESSES);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > ADDRESSES_MAX_BYTES) {
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::create_dir_all(state_dir);
    let ip = ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
    {
        let _ = file.write_all(format!("{instance_id} {choice:?} {ip}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::AddressChoice;

    #[test]
    fn addresses_are_remembered_per_instance_and_choice_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(
            remembered_address(dir.path(), "i-1", AddressChoice::Auto),
            None
        );
        remember_address(dir.path(), "i-1", AddressChoice::Auto, Some(ip));
        remember_address(
            dir.path(),
            "i-2",
            AddressChoice::Auto,
            Some("10.0.0.1".parse().unwrap()),
        );
        assert_eq!(
            remembered_address(dir.path(), "i-1", AddressChoice::Auto),
            Some(ip)
        );
        assert_eq!(
            remembered_address(dir.path(), "i-1", AddressChoice::Private),
            None
        );
        remember_address(dir.path(), "i-1", AddressChoice::Auto, None);
        assert_eq!(
            remembered_address(dir.path(), "i-1", AddressChoice::Auto),
            None
        );
    }
}
