//! The main job: target → instance and address → ephemeral key → pushed → ssh.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::agent::{Agent, RuntimeDir};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::push::{KEY_LIFETIME, push_key};
use crate::aws::{self, Clients};
use crate::error::child_exit_code;
use crate::key::EphemeralKey;
use crate::settings::ConnectSettings;
use crate::ssh::{self, SshInvocation};
use crate::target::{Target, choose_address};

pub async fn run(settings: ConnectSettings) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if settings.dry_run {
        return dry_run(&settings).await;
    }
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let key = EphemeralKey::generate()?;
    tracing::debug!(
        fingerprint = %key.fingerprint(),
        os_user = %settings.os_user,
        chosen_by = settings.os_user_source,
        "generated ephemeral ed25519 key"
    );

    let instance = resolve_and_push(&settings, &clients, &key).await?;
    let pushed_at = Instant::now();
    let address = choose_address(&instance.addresses, settings.address, &settings.target)?;
    tracing::debug!(%address, "chose address");
    if instance.metadata_endpoint.as_deref() == Some("disabled") {
        eprintln!(
            "eic-connect: warning: instance metadata is disabled on {}, so it cannot receive the pushed key; \
             enable it with: aws ec2 modify-instance-metadata-options --instance-id {} --http-endpoint enabled",
            instance.id, instance.id
        );
    }

    let dir = RuntimeDir::create()?;
    let agent = Agent::start(key, &dir, KEY_LIFETIME)?;
    let known_hosts = known_hosts_file(&settings.state_dir)?;
    let host = address.to_string();
    let args = SshInvocation {
        user_options: &settings.ssh_options,
        verbose: settings.verbose,
        os_user: &settings.os_user,
        instance_id: &instance.id,
        host: &host,
        identity_file: agent.identity_file(),
        agent_socket: agent.socket(),
        known_hosts: &known_hosts,
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
    drop(agent);
    drop(dir);
    tracing::debug!(
        ?status,
        "ssh finished; key wiped, runtime directory removed"
    );
    Ok(child_exit_code(status))
}

/// Finds the instance and pushes the key. For an instance id both calls go
/// out at once (the push needs nothing from the lookup); otherwise the lookup
/// must name the instance first.
async fn resolve_and_push(
    settings: &ConnectSettings,
    clients: &Clients,
    key: &EphemeralKey,
) -> anyhow::Result<InstanceInfo> {
    let user = settings.os_user.as_str();
    let t0 = Instant::now();
    if let Target::InstanceId(id) = &settings.target {
        let (found, pushed) = tokio::join!(
            ec2::find(clients, &settings.target),
            push_key(clients, id, user, key.public_openssh())
        );
        // The lookup explains "not found" and "stopped" better than the push.
        let instance = ec2::exactly_one(found?, &settings.target, &clients.scope)?;
        ec2::ensure_running(&instance)?;
        pushed?;
        tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance and pushed key concurrently");
        return Ok(instance);
    }
    let instance = ec2::resolve_running(clients, &settings.target).await?;
    tracing::debug!(instance = %instance.id, elapsed_ms = t0.elapsed().as_millis() as u64, "looked up instance");
    let t1 = Instant::now();
    push_key(clients, &instance.id, user, key.public_openssh()).await?;
    tracing::debug!(elapsed_ms = t1.elapsed().as_millis() as u64, "pushed key");
    Ok(instance)
}

/// The known_hosts file eic-connect owns (entries keyed by instance id).
fn known_hosts_file(state_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
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
    out.push_str(&format!(
        "SendSSHPublicKey InstanceId={instance_ref} InstanceOSUser={user} SSHPublicKey=<ephemeral ed25519 public key>\n"
    ));
    let known_hosts = settings.state_dir.join("known_hosts");
    let host = "<instance address>".to_owned();
    let args: Vec<OsString> = SshInvocation {
        user_options: &settings.ssh_options,
        verbose: settings.verbose,
        os_user: user,
        instance_id: &instance_ref,
        host: &host,
        identity_file: Path::new("<runtime dir>/id.pub"),
        agent_socket: Path::new("<runtime dir>/agent.sock"),
        known_hosts: &known_hosts,
        command: &settings.command,
    }
    .args();
    out.push_str(&ssh::display_command(&settings.ssh_program, &args));
    out.push('\n');
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
