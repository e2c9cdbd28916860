//! The main job: target → instance and address → ephemeral key → pushed → ssh.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use crate::agent::{Push, PushWatch};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::{self, Clients};
use crate::dirs;
use crate::eice::ConnectVia;
use crate::eice::route::{self, Request};
use crate::error::{Failure, child_exit_code};
use crate::hostkeys::Pins;
use crate::key::EphemeralKey;
use crate::resolve::{Progress, Want, remember_address, remembered_address, resolve_push_and_tell};
use crate::reuse;
use crate::session::{self, HostKeys, Session, Spec};
use crate::settings::{Connect, HostKeyPolicy};
use crate::ssh;
use crate::target::{Target, choose_address};

pub async fn run(settings: Connect) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let reach = &settings.reach;
    if settings.dry_run {
        if let Some(jump) = crate::jump::requested(&settings.ssh_options)?
            && jump.hops.len() == 1
        {
            return crate::jump::dry_run(&settings, &jump).await;
        }
        return dry_run(&settings).await;
    }
    if settings.ssh_options.iter().any(|o| o == "-G") {
        // `ssh -G` only prints its configuration (git runs it to learn what
        // kind of ssh it has): nothing to look up, no key to push.
        let mut args = settings.ssh_options.clone();
        args.extend([
            "-l".into(),
            settings.user.name.clone().into(),
            "--".into(),
            settings.target.host_text().into(),
        ]);
        let status = ssh::run(&reach.ssh_program, &args).await?;
        return Ok(child_exit_code(status));
    }
    if reach.reuse.is_some()
        && let Some(status) = through_master(&settings).await?
    {
        return Ok(child_exit_code(status));
    }
    // -J naming an EC2 instance: a hop with its own key; any other -J
    // goes to ssh unchanged, below.
    if let Some(jump) = crate::jump::requested(&settings.ssh_options)?
        && let Some(code) = crate::jump::connect(&settings, &jump).await?
    {
        return Ok(code);
    }
    if let Some((way, user)) = early_start(&settings)
        && let Some(code) = speculative(&settings, way, user).await?
    {
        return Ok(code);
    }
    // Ctrl-C, SIGTERM and SIGHUP stop the preparation promptly (the
    // picker, if it runs, would otherwise leave SIGINT caught and unheard):
    // dropping it drops whatever it made. Once ssh runs, ssh handles them.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let config = aws::load_config(&reach.aws).await?;
    let clients = Clients::new(&config, &reach.aws);
    let key = EphemeralKey::generate()?;
    tracing::debug!(
        fingerprint = %key.fingerprint(),
        "generated ephemeral ed25519 key"
    );
    let public_key = key.public_openssh().to_owned();
    let want = Want {
        reach,
        target: &settings.target,
        user: &settings.user,
        ssh_port: ssh::port(&settings.ssh_options),
        picker: true,
    };
    // The lookup and the push run from here until done. ssh starts as soon
    // as the instance, its OS user and the route are known: the agent holds
    // the key back until the push is done.
    let (push_tx, push_rx) = watch::channel(Push::InFlight);
    let (found_tx, found_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let progress = Progress {
        instance: Some(found_tx),
        ready: Some(ready_tx),
    };
    let mut resolving = std::pin::pin!(resolve_push_and_tell(
        &want,
        &clients,
        &public_key,
        progress,
        push_tx
    ));
    let mut setup = std::pin::pin!(prepare(
        &settings, &config, &clients, key, push_rx, found_rx, ready_rx
    ));
    let mut resolved = None;
    let prepared = loop {
        tokio::select! {
            biased;
            result = &mut resolving, if resolved.is_none() => resolved = Some(result?),
            prepared = &mut setup => break prepared?,
            _ = interrupt.recv() => return crate::error::fail(Failure::interrupted()),
            _ = terminate.recv() => return crate::error::fail(Failure::interrupted()),
            _ = hangup.recv() => return crate::error::fail(Failure::interrupted()),
        }
    };
    let Prepared {
        session,
        instance_id,
        pins,
    } = prepared;
    tracing::debug!(
        command = %ssh::display_command(&reach.ssh_program, session.args()),
        since_start_ms = started.elapsed().as_millis() as u64,
        push_done = resolved.is_some(),
        "starting ssh"
    );
    let push = async {
        if resolved.is_none() {
            let done = (&mut resolving).await?;
            tracing::debug!(
                since_start_ms = started.elapsed().as_millis() as u64,
                since_push_ms = done.pushed.elapsed().as_millis() as u64,
                "push done while ssh started"
            );
        }
        Ok(())
    };
    let status = ssh::run_beside(&reach.ssh_program, session.args(), push, None).await?;
    let refused = match &pins {
        Some(pins) if status.code() == Some(255) => {
            session::host_key_refusal(&instance_id, pins, &session.verdicts())
        }
        _ => None,
    };
    drop(session);
    tracing::debug!(
        ?status,
        "ssh finished; key wiped, runtime directory removed"
    );
    match refused {
        Some(failure) => crate::error::fail(failure),
        None => Ok(child_exit_code(status)),
    }
}

/// Where ssh may start before the lookup answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// The address an earlier direct connection remembered.
    Address(IpAddr),
    /// Through Session Manager (`--connect ssm`), which needs no address.
    SessionManager,
}

/// Where and as whom ssh may start before the lookup: an instance id, with
/// the user known without a call (given or remembered), host keys on first
/// use, nothing to start, and either `--connect ssm` or an address an
/// earlier direct connection remembered.
fn early_start(settings: &Connect) -> Option<(Early, String)> {
    let reach = &settings.reach;
    let Target::InstanceId(id) = &settings.target else {
        return None;
    };
    if reach.start
        || reach.path.via == ConnectVia::Eice
        || !matches!(reach.host_keys, HostKeyPolicy::FirstUse)
    {
        return None;
    }
    let user = if settings.user.source.is_given() {
        settings.user.name.clone()
    } else {
        crate::osuser::remembered(&reach.state_dir, id)?
    };
    if reach.path.via == ConnectVia::Ssm {
        return Some((Early::SessionManager, user));
    }
    let ip = remembered_address(&reach.state_dir, id, reach.address)?;
    Some((Early::Address(ip), user))
}

/// The lookup showed the instance elsewhere than remembered.
#[derive(Debug)]
struct Moved;

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the instance is no longer at its remembered address")
    }
}

impl std::error::Error for Moved {}

/// ssh starts at once — at the remembered address, or through Session
/// Manager (whose session then starts alongside the lookup and the push) —
/// while the lookup and the push run. ssh's messages are held until the
/// lookup confirms the way (host keys are kept under the instance id, so an
/// address now another instance's cannot be trusted by mistake either
/// way). If the lookup shows another address, a route other than direct,
/// or no running instance, this ssh is stopped unheard and `None`
/// returned: the caller connects the usual way (and reports the lookup's
/// error).
async fn speculative(
    settings: &Connect,
    way: Early,
    user: String,
) -> anyhow::Result<Option<ExitCode>> {
    let reach = &settings.reach;
    match way {
        Early::Address(ip) => {
            tracing::debug!(%ip, os_user = %user, "starting ssh at the remembered address while the lookup confirms it")
        }
        Early::SessionManager => {
            tracing::debug!(os_user = %user, "starting ssh through Session Manager while the lookup and the push run")
        }
    }
    let config = aws::load_config(&reach.aws).await?;
    let clients = Clients::new(&config, &reach.aws);
    let key = EphemeralKey::generate()?;
    let public_key = key.public_openssh().to_owned();
    let ssh_port = ssh::port(&settings.ssh_options);
    // The same user: given, or remembered for this instance.
    let want = Want {
        reach,
        target: &settings.target,
        user: &settings.user,
        ssh_port,
        picker: false,
    };
    let (push_tx, push_rx) = watch::channel(Push::InFlight);
    let (ready_tx, ready_rx) = oneshot::channel();
    let progress = Progress {
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
    let Target::InstanceId(id) = &settings.target else {
        return Ok(None);
    };
    let mut path_options = Vec::new();
    if let Some(persist) = reach.reuse {
        dirs::ensure_private_dir(&reach.reuse_dir)?;
        let key = master_key(settings, &user);
        path_options.extend(reuse::master_options(
            &key.path_in(&reach.reuse_dir),
            persist,
        )?);
    }
    let host = match way {
        Early::Address(ip) => ip.to_string(),
        Early::SessionManager => {
            let route = route::Route::SessionManager {
                instance_id: id.clone(),
                port: ssh_port.unwrap_or(22),
            };
            let (host, options) = route::ssh_target(
                Some(&route),
                IpAddr::from([0, 0, 0, 0]),
                &clients.scope,
                &reach.aws,
                id,
                reach.reuse.is_some(),
            )?;
            path_options.splice(0..0, options);
            host
        }
    };
    let spec = Spec {
        user_options: &settings.ssh_options,
        path_options,
        verbose: settings.verbose,
        os_user: &user,
        host_key_alias: id,
        host: &host,
        host_keys: HostKeys::FirstUse {
            known_hosts: dirs::known_hosts_file(&reach.state_dir)?,
        },
        command: &settings.command,
    };
    let session = Session::prepare(key, push_rx, &spec)?;
    let (show_tx, show_rx) = oneshot::channel();
    let confirm = async {
        // The lookup and push run here: the answer about the instance
        // comes from them.
        let mut ready_rx = ready_rx;
        let mut done = None;
        let ready = loop {
            tokio::select! {
                ready = &mut ready_rx => break ready,
                result = &mut resolving, if done.is_none() => done = Some(result),
            }
        };
        let confirmed = match (ready, way) {
            // The lookup named the running instance: Session Manager
            // reaches it by its id.
            (Ok(_), Early::SessionManager) => true,
            (Ok((instance, _)), Early::Address(ip)) => {
                let chosen = choose_address(&instance.addresses, reach.address, &settings.target);
                let direct = reach.path.via == ConnectVia::Direct
                    || instance.addresses.public_ip.map(IpAddr::V4) == Some(ip);
                chosen.ok() == Some(ip) && direct
            }
            // The lookup failed: its error is what the user sees.
            (Err(_), _) => false,
        };
        tracing::debug!(
            confirmed,
            "the lookup answered about the remembered address"
        );
        let _ = show_tx.send(confirmed);
        match done {
            Some(result) => result?,
            None => (&mut resolving).await?,
        };
        if confirmed {
            Ok(())
        } else {
            Err(anyhow::Error::new(Moved))
        }
    };
    let outcome = ssh::run_beside(&reach.ssh_program, session.args(), confirm, Some(show_rx)).await;
    drop(session);
    match outcome {
        Ok(status) => Ok(Some(child_exit_code(status))),
        Err(err) => {
            if let Early::Address(_) = way {
                remember_address(&reach.state_dir, id, reach.address, None);
            }
            if err.is::<Moved>() {
                tracing::debug!("the remembered address was stale; connecting the usual way");
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// The master a connection to the target as `user` joins or becomes: named
/// by the instance id, else by the target as typed (so a Name finds its
/// master without a lookup), the port and the path setting.
fn master_key(settings: &Connect, user: &str) -> reuse::Key {
    reuse::Key {
        user: user.to_owned(),
        host: settings.target.host_text(),
        port: ssh::port(&settings.ssh_options).unwrap_or(22),
        route: settings.reach.path.via.as_str().to_owned(),
    }
}

/// With reuse: runs the session through a live master for this target, OS
/// user (given or remembered; else whichever the master has), port and
/// route — no lookup, no push, no handshake. `None` if there is none.
async fn through_master(settings: &Connect) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let reach = &settings.reach;
    if std::fs::symlink_metadata(&reach.reuse_dir).is_err() {
        return Ok(None);
    }
    dirs::ensure_private_dir(&reach.reuse_dir)?;
    let host = settings.target.host_text();
    let user = match &settings.target {
        _ if settings.user.source.is_given() => Some(settings.user.name.clone()),
        Target::InstanceId(id) => crate::osuser::remembered(&reach.state_dir, id),
        _ => None,
    };
    let port = ssh::port(&settings.ssh_options).unwrap_or(22);
    let Some((key, path)) = reuse::find(
        &reach.reuse_dir,
        user.as_deref(),
        &host,
        port,
        reach.path.via.as_str(),
    ) else {
        return Ok(None);
    };
    tracing::debug!(master = %path.display(), "joining a live master connection: no lookup, no push, no handshake");
    let mut args = settings.ssh_options.clone();
    for _ in 0..settings.verbose {
        args.push("-v".into());
    }
    args.extend(reuse::client_options(&path)?);
    args.extend(["-l".into(), key.user.into(), "--".into(), host.into()]);
    if let Some(command) = ssh::remote_command(&settings.command) {
        args.push(command);
    }
    Ok(Some(ssh::run(&reach.ssh_program, &args).await?))
}

/// A session ready for ssh.
struct Prepared {
    session: Session,
    instance_id: String,
    pins: Option<Pins>,
}

/// Everything ssh needs besides the push: the instance and its OS user
/// (from the lookup), the route, the host keys, and the session whose agent
/// offers `key` once `push` is done.
async fn prepare(
    settings: &Connect,
    config: &aws_config::SdkConfig,
    clients: &Clients,
    key: EphemeralKey,
    push: PushWatch,
    found: oneshot::Receiver<InstanceInfo>,
    ready: oneshot::Receiver<(InstanceInfo, String)>,
) -> anyhow::Result<Prepared> {
    let reach = &settings.reach;
    let verify = matches!(reach.host_keys, HostKeyPolicy::Console { .. });
    // With --verify-host-key and an instance id, the console output is
    // fetched alongside the lookup and push; otherwise once the id is known.
    let early_console = match (&settings.target, verify) {
        (Target::InstanceId(id), true) => Some(id.as_str()),
        _ => None,
    };
    let ssh_port = ssh::port(&settings.ssh_options);
    let request = Request {
        path: &reach.path,
        address: reach.address,
        target: &settings.target,
        ssh_port,
    };
    // The endpoint lookup (when tunnelling) starts as soon as the instance
    // is known, alongside the OS user's choice and the key push.
    let (ready, console, route) = tokio::join!(
        ready,
        async {
            match early_console {
                Some(id) => Some(aws::diag::console_output(clients, id).await),
                None => None,
            }
        },
        route::route_once_found(&request, config, clients, found)
    );
    let Ok((instance, user)) = ready else {
        // The lookup failed: its error is reported, not this.
        anyhow::bail!("the lookup ended without naming an instance");
    };
    let address = choose_address(&instance.addresses, reach.address, &settings.target)?;
    tracing::debug!(%address, "chose address");
    let route = route?;
    if instance.metadata_endpoint.as_deref() == Some("disabled") {
        eprintln!(
            "eic-connect: warning: instance metadata is disabled on {}, so it cannot receive the pushed key; \
             enable it with: aws ec2 modify-instance-metadata-options --instance-id {} --http-endpoint enabled",
            instance.id, instance.id
        );
    }
    if route.is_none()
        && let Target::InstanceId(id) = &settings.target
    {
        // Reached directly: the next connection may start ssh here at once.
        remember_address(&reach.state_dir, id, reach.address, Some(address));
    }
    let console = match console {
        Some(fetched) => Some(fetched?),
        None => None,
    };
    let host_keys = session::host_keys(reach, clients, &instance.id, console).await?;
    let (host, mut path_options) = route::ssh_target(
        route.as_ref(),
        address,
        &clients.scope,
        &reach.aws,
        &instance.id,
        reach.reuse.is_some(),
    )?;
    if let Some(persist) = reach.reuse {
        // This connection becomes the master later ones join.
        dirs::ensure_private_dir(&reach.reuse_dir)?;
        let key = master_key(settings, &user);
        path_options.extend(reuse::master_options(
            &key.path_in(&reach.reuse_dir),
            persist,
        )?);
    }
    let spec = Spec {
        user_options: &settings.ssh_options,
        path_options,
        verbose: settings.verbose,
        os_user: &user,
        host_key_alias: &instance.id,
        host: &host,
        host_keys,
        command: &settings.command,
    };
    let session = Session::prepare(key, push, &spec)?;
    let pins = match spec.host_keys {
        HostKeys::Pinned(pins) => Some(pins),
        HostKeys::FirstUse { .. } => None,
    };
    Ok(Prepared {
        session,
        instance_id: instance.id,
        pins,
    })
}

/// Prints what would be done: the AWS calls and the ssh command line. Makes
/// no API call and creates no key.
async fn dry_run(settings: &Connect) -> anyhow::Result<ExitCode> {
    let reach = &settings.reach;
    let scope = aws::scope_for_dry_run(&reach.aws).await?;
    let user = &settings.user.name;
    let mut out = format!("# dry run ({}): nothing below is run\n", scope.describe());
    let (lookup, instance_ref) = match &settings.target {
        Target::InstanceId(id) => (format!("DescribeInstances InstanceId.1={id}"), id.clone()),
        other => {
            let sets: Vec<String> = ec2::filter_sets(other)
                .into_iter()
                .map(|set| {
                    let filters: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "DescribeInstances Filter {} instance-state-name=pending,running,stopping,stopped",
                        crate::sanitize::terminal_safe(&filters.join(" "))
                    )
                })
                .collect();
            (sets.join("\n"), "<instance id>".to_owned())
        }
    };
    out.push_str(&lookup);
    out.push('\n');
    if reach.start {
        out.push_str(&format!(
            "StartInstances InstanceId.1={instance_ref}  # only if it is stopped (--start); then DescribeInstances until it runs\n"
        ));
    }
    let guessed;
    let user: &str = if settings.user.source.is_given() {
        user
    } else {
        out.push_str(&format!(
            "DescribeImages ImageId.1=<AMI of {instance_ref}>  # OS user guessed from the AMI, else ec2-user\n"
        ));
        guessed = "<OS user from the AMI>".to_owned();
        &guessed
    };
    out.push_str(&format!(
        "SendSSHPublicKey InstanceId={instance_ref} InstanceOSUser={user} SSHPublicKey=<ephemeral ed25519 public key>\n"
    ));
    let verify = matches!(reach.host_keys, HostKeyPolicy::Console { .. });
    if verify {
        out.push_str(&format!(
            "GetConsoleOutput InstanceId={instance_ref}  # host keys to pin\n"
        ));
    }
    let request = Request {
        path: &reach.path,
        address: reach.address,
        target: &settings.target,
        ssh_port: ssh::port(&settings.ssh_options),
    };
    let mut path_options =
        route::dry_run_route(&request, &scope, &reach.aws, &instance_ref, &mut out);
    if let Some(persist) = reach.reuse {
        let path = master_key(settings, user).path_in(&reach.reuse_dir);
        out.push_str(&format!(
            "# reuse: if a master answers at {}, ssh joins it and nothing above is called; else ssh becomes one, kept {} s after its last session\n",
            crate::sanitize::terminal_safe(&path.display().to_string()),
            persist.as_secs()
        ));
        path_options.extend(reuse::master_options(&path, persist)?);
    }
    let spec = Spec {
        user_options: &settings.ssh_options,
        path_options,
        verbose: settings.verbose,
        os_user: user,
        host_key_alias: &instance_ref,
        host: "<instance address>",
        host_keys: if verify {
            HostKeys::Pinned(Pins::default())
        } else {
            HostKeys::FirstUse {
                known_hosts: dirs::known_hosts_in(&reach.state_dir),
            }
        },
        command: &settings.command,
    };
    out.push_str(&session::dry_run_command(&reach.ssh_program, &spec)?);
    out.push('\n');
    crate::error::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
