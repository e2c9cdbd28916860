//! The main job: target → instance and address → ephemeral key → pushed → ssh.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::{Agent, RuntimeDir};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::push::{KEY_LIFETIME, push_key};
use crate::aws::{self, Clients};
use crate::cli::ConnectVia;
use crate::error::{Failure, child_exit_code};
use crate::hostkeys::{self, ConsoleKeys, Pins, Verdict};
use crate::key::EphemeralKey;
use crate::osuser;
use crate::settings::ConnectSettings;
use crate::ssh::{self, SshInvocation};
use crate::target::{Target, choose_address};

pub async fn run(settings: ConnectSettings) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if settings.dry_run {
        return dry_run(&settings).await;
    }
    if settings.ssh_options.iter().any(|o| o == "-G") {
        // `ssh -G` only prints its configuration (git runs it to learn what
        // kind of ssh it has): nothing to look up, no key to push.
        let mut args = settings.ssh_options.clone();
        args.extend([
            "-l".into(),
            settings.os_user.clone().into(),
            "--".into(),
            settings.target.host_text().into(),
        ]);
        let status = ssh::run(&settings.ssh_program, &args).await?;
        return Ok(child_exit_code(status));
    }
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let key = EphemeralKey::generate()?;
    tracing::debug!(
        fingerprint = %key.fingerprint(),
        "generated ephemeral ed25519 key"
    );

    // With --verify-host-key and an instance id, the console output is
    // fetched alongside the lookup and push; otherwise once the id is known.
    let early_console = match (&settings.target, settings.verify_host_key) {
        (Target::InstanceId(id), true) => Some(id.as_str()),
        _ => None,
    };
    // The endpoint lookup (when tunnelling) starts as soon as the instance
    // is known, alongside the key push.
    let (found_tx, found_rx) = tokio::sync::oneshot::channel();
    let (resolved, console, route) = tokio::join!(
        resolve_and_push(&settings, &clients, &key, found_tx),
        async {
            match early_console {
                Some(id) => Some(aws::diag::console_output(&clients, id).await),
                None => None,
            }
        },
        super::tunnel::route_once_found(&settings, &config, &clients, found_rx)
    );
    let (instance, os_user) = resolved?;
    let pushed_at = Instant::now();
    let address = choose_address(&instance.addresses, settings.address, &settings.target)?;
    tracing::debug!(%address, "chose address");
    let route = route?;
    if instance.metadata_endpoint.as_deref() == Some("disabled") {
        eprintln!(
            "eic-connect: warning: instance metadata is disabled on {}, so it cannot receive the pushed key; \
             enable it with: aws ec2 modify-instance-metadata-options --instance-id {} --http-endpoint enabled",
            instance.id, instance.id
        );
    }

    let known_hosts = known_hosts_file(&settings.state_dir)?;
    let pins = if settings.verify_host_key {
        let console = match console {
            Some(fetched) => fetched?,
            None => aws::diag::console_output(&clients, &instance.id).await?,
        };
        console_pins(&settings, &instance.id, &console, &known_hosts)?
    } else {
        None
    };
    let dir = RuntimeDir::create()?;
    let agent = Agent::start(key, &dir, KEY_LIFETIME)?;
    let report = dir.path().join("host-key-report");
    let known_hosts_command = match &pins {
        Some(pins) => Some(super::known_hosts::pinning_command(&report, pins)?),
        None => None,
    };
    let host = route
        .as_ref()
        .map_or_else(|| address.to_string(), |r| r.ssh_host());
    let ssh_options = super::tunnel::ssh_options_for(
        &settings.ssh_options,
        route.as_ref(),
        &clients.scope,
        &instance.id,
    )?;
    let args = SshInvocation {
        user_options: &ssh_options,
        verbose: settings.verbose,
        os_user: &os_user,
        instance_id: &instance.id,
        host: &host,
        identity_file: agent.identity_file(),
        agent_socket: agent.socket(),
        known_hosts: &known_hosts,
        known_hosts_command: known_hosts_command.as_deref(),
        command: &settings.command,
    }
    .args();
    tracing::debug!(
        command = %ssh::display_command(&settings.ssh_program, &args),
        since_start_ms = started.elapsed().as_millis() as u64,
        since_push_ms = pushed_at.elapsed().as_millis() as u64,
        "starting ssh"
    );
    let status = ssh::run(&settings.ssh_program, &args).await?;
    let refused = match &pins {
        Some(pins) if status.code() == Some(255) => host_key_refusal(&instance.id, pins, &report),
        _ => None,
    };
    drop(agent);
    drop(dir);
    tracing::debug!(
        ?status,
        "ssh finished; key wiped, runtime directory removed"
    );
    match refused {
        Some(failure) => crate::error::fail(failure),
        None => Ok(child_exit_code(status)),
    }
}

/// `--verify-host-key`: the keys the instance printed on its console, also
/// recorded for it in eic-connect's known_hosts. With none there, an error,
/// or (`--allow-unverified`) a warning and the usual first-use policy.
fn console_pins(
    settings: &ConnectSettings,
    instance_id: &str,
    console: &str,
    known_hosts: &Path,
) -> anyhow::Result<Option<Pins>> {
    let why = match hostkeys::parse_console(console) {
        ConsoleKeys::Keys(keys) => {
            let shown: Vec<String> = keys
                .iter()
                .map(|k| format!("{} {}", k.kind(), k.fingerprint))
                .collect();
            tracing::debug!(keys = %shown.join(", "), "pinning host keys from the console output");
            if let Err(err) = hostkeys::record(known_hosts, instance_id, &keys) {
                eprintln!(
                    "eic-connect: warning: could not record the host keys in {}: {err}",
                    known_hosts.display()
                );
            }
            return Ok(Some(Pins {
                keys,
                fingerprints: Vec::new(),
            }));
        }
        ConsoleKeys::Empty => "its console output has an empty host-key block",
        ConsoleKeys::NotFound if console.trim().is_empty() => "its console output is empty",
        ConsoleKeys::NotFound => "its console output has no host-key block",
    };
    if settings.allow_unverified {
        eprintln!(
            "eic-connect: warning: cannot verify the host key of {instance_id}: {why}; \
             accepting it on first use (--allow-unverified)"
        );
        return Ok(None);
    }
    crate::error::fail(
        Failure::new(format!("cannot verify the host key of {instance_id}: {why}"))
            .hint(format!(
                "cloud-init prints the keys once, on first boot, and the output can lag boot by minutes; \
                 look at it with: aws ec2 get-console-output --instance-id {instance_id} --output text"
            ))
            .hint("to connect anyway, trusting the key on first use, add --allow-unverified"),
    )
}

/// After ssh exited 255: whether it was because the instance offered a key
/// the console did not list, and what to say.
fn host_key_refusal(instance_id: &str, pins: &Pins, report: &Path) -> Option<Failure> {
    let verdicts = hostkeys::read_report(report);
    if verdicts.iter().any(|v| matches!(v, Verdict::Match { .. })) {
        return None;
    }
    let Verdict::Mismatch {
        fingerprint,
        algorithm,
    } = verdicts.first()?
    else {
        return None;
    };
    let mut failure = Failure::new(format!(
        "{instance_id} answered with host key {algorithm} {fingerprint}, which is not among the keys it printed on its console"
    ));
    for key in &pins.keys {
        failure = failure.detail(format!("console: {} {}", key.kind(), key.fingerprint));
    }
    Some(
        failure
            .hint("something may be intercepting the connection: do not log in until you know why")
            .hint("if the instance's host keys were replaced after first boot, the console no longer shows the current ones; \
                   connect without --verify-host-key only if you can confirm the new key another way"),
    )
}

/// Finds the instance and pushes the key for the OS user, which it returns.
/// With a user given and an instance id, both calls go out at once (the push
/// needs nothing from the lookup); otherwise the lookup must name the
/// instance first, and without a user, DescribeImages must name its AMI.
async fn resolve_and_push(
    settings: &ConnectSettings,
    clients: &Clients,
    key: &EphemeralKey,
    instance_known: tokio::sync::oneshot::Sender<InstanceInfo>,
) -> anyhow::Result<(InstanceInfo, String)> {
    let t0 = Instant::now();
    let remembered = match &settings.target {
        Target::InstanceId(id) if !settings.os_user_explicit => {
            osuser::remembered(&settings.state_dir, id)
        }
        _ => None,
    };
    if !settings.os_user_explicit && remembered.is_none() {
        let instance = ready(settings, clients, pick_one(settings, clients).await?).await?;
        let _ = instance_known.send(instance.clone());
        tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance");
        let t1 = Instant::now();
        let choice = osuser::choose_for_image(clients, instance.image_id.as_deref()).await;
        tracing::debug!(
            os_user = %choice.user,
            chosen_by = %choice.rule,
            elapsed_ms = t1.elapsed().as_millis() as u64,
            "chose OS user"
        );
        let t2 = Instant::now();
        push_key(clients, &instance.id, &choice.user, key.public_openssh()).await?;
        tracing::debug!(elapsed_ms = t2.elapsed().as_millis() as u64, "pushed key");
        if choice.rule.starts_with("guessed") {
            osuser::remember(&settings.state_dir, &instance.id, &choice.user);
        }
        return Ok((instance, choice.user));
    }
    let (user, source) = match &remembered {
        Some(user) => (user.as_str(), "the AMI guess remembered for this instance"),
        None => (settings.os_user.as_str(), settings.os_user_source.as_str()),
    };
    tracing::debug!(os_user = user, chosen_by = source, "OS user given");
    if let Target::InstanceId(id) = &settings.target {
        let (found, pushed) = tokio::join!(
            ec2::find(clients, &settings.target),
            push_key(clients, id, user, key.public_openssh())
        );
        // The lookup explains "not found" and "stopped" better than the push.
        let found = ec2::exactly_one(found?, &settings.target, &clients.scope)?;
        let was_running = found.state == "running";
        let instance = ready(settings, clients, found).await?;
        let _ = instance_known.send(instance.clone());
        if was_running {
            pushed?;
        } else {
            // Started just now: the first push went to a stopped instance.
            push_key(clients, id, user, key.public_openssh()).await?;
        }
        tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance and pushed key concurrently");
        return Ok((instance, user.to_owned()));
    }
    let instance = ready(settings, clients, pick_one(settings, clients).await?).await?;
    let _ = instance_known.send(instance.clone());
    tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance");
    let t1 = Instant::now();
    push_key(clients, &instance.id, user, key.public_openssh()).await?;
    tracing::debug!(elapsed_ms = t1.elapsed().as_millis() as u64, "pushed key");
    Ok((instance, user.to_owned()))
}

/// The one instance the target names. Several: on a terminal, the user picks
/// one; otherwise (scripts, CI) an error lists them, so nothing ever waits
/// for an answer that cannot come.
async fn pick_one(settings: &ConnectSettings, clients: &Clients) -> anyhow::Result<InstanceInfo> {
    let found = ec2::find(clients, &settings.target).await?;
    if found.len() > 1 && crate::picker::available() {
        return crate::picker::pick(found, &settings.target, &clients.scope);
    }
    ec2::exactly_one(found, &settings.target, &clients.scope)
}

/// A running instance, or with `--start` one started and waited for (and,
/// when ssh will go straight to it, until its port answers); otherwise an
/// error saying what state it is in.
async fn ready(
    settings: &ConnectSettings,
    clients: &Clients,
    instance: InstanceInfo,
) -> anyhow::Result<InstanceInfo> {
    if !settings.start || instance.state == "running" {
        ec2::ensure_running(&instance)?;
        return Ok(instance);
    }
    let instance = ec2::ensure_started(clients, instance, true).await?;
    let direct = match choose_address(&instance.addresses, settings.address, &settings.target) {
        Ok(address) if settings.path.via() == ConnectVia::Direct => Some(address),
        Ok(address)
            if settings.path.via() == ConnectVia::Auto
                && instance.addresses.public_ip.map(IpAddr::V4) == Some(address) =>
        {
            Some(address)
        }
        _ => None,
    };
    if let Some(address) = direct {
        let port = super::tunnel::ssh_port(&settings.ssh_options).unwrap_or(22);
        wait_for_port(std::net::SocketAddr::new(address, port)).await;
    }
    Ok(instance)
}

/// After a start, sshd comes up some seconds after the instance is
/// `running`: waits (up to two minutes) until the port accepts connections,
/// so the 60-second key is not spent on "connection refused".
async fn wait_for_port(addr: std::net::SocketAddr) {
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

/// The known_hosts file eic-connect owns (entries keyed by instance id).
pub fn known_hosts_file(state_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("could not create {}", state_dir.display()))?;
    Ok(state_dir.join("known_hosts"))
}

/// Prints what would be done: the AWS calls and the ssh command line. Makes
/// no API call and creates no key.
async fn dry_run(settings: &ConnectSettings) -> anyhow::Result<ExitCode> {
    let scope = aws::scope_for_dry_run(&settings.aws).await?;
    let user = &settings.os_user;
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
    if settings.start {
        out.push_str(&format!(
            "StartInstances InstanceId.1={instance_ref}  # only if it is stopped (--start); then DescribeInstances until it runs\n"
        ));
    }
    let guessed;
    let user: &str = if settings.os_user_explicit {
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
    let pinning = settings.verify_host_key.then(|| {
        out.push_str(&format!(
            "GetConsoleOutput InstanceId={instance_ref}  # host keys to pin\n"
        ));
        OsString::from("<eic-connect> __known-hosts --report <runtime dir>/host-key-report --key <console keys> -- %I %H %t %K")
    });
    let ssh_options = super::tunnel::dry_run_route(settings, &scope, &instance_ref, &mut out);
    let known_hosts = settings.state_dir.join("known_hosts");
    let host = "<instance address>".to_owned();
    let args: Vec<OsString> = SshInvocation {
        user_options: &ssh_options,
        verbose: settings.verbose,
        os_user: user,
        instance_id: &instance_ref,
        host: &host,
        identity_file: Path::new("<runtime dir>/id.pub"),
        agent_socket: Path::new("<runtime dir>/agent.sock"),
        known_hosts: &known_hosts,
        known_hosts_command: pinning.as_deref(),
        command: &settings.command,
    }
    .args();
    out.push_str(&ssh::display_command(&settings.ssh_program, &args));
    out.push('\n');
    crate::error::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
