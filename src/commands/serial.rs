//! `eic-connect serial TARGET`: the instance's serial console over SSH.
//!
//! SendSerialConsoleSSHPublicKey pushes the ephemeral key (60 s), then ssh
//! logs in as `<instance id>.port0` at the region's serial-console host. The
//! host is AWS's, not the instance's, and AWS publishes its host-key
//! fingerprint per region: that fingerprint is pinned (see `serial` and
//! `hostkeys`), so the first connection is as safe as any later one.
//!
//! For tests, `EIC_CONNECT_SERIAL_HOST=HOST[:PORT]` points the ssh step at
//! another server; it must come with `EIC_CONNECT_SERIAL_FINGERPRINT` (or
//! `--host-key-fingerprint`), so there is never an unpinned connection.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::aws::{self, Clients, diag, ec2};
use crate::error::{Failure, child_exit_code, fail};
use crate::hostkeys::{Pins, Verdict};
use crate::key::EphemeralKey;
use crate::session::{HostKeys, Session, Spec};
use crate::settings::Serial;
use crate::ssh;
use crate::target::Target;

pub async fn run(settings: Serial) -> anyhow::Result<ExitCode> {
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let host_override = std::env::var("EIC_CONNECT_SERIAL_HOST")
        .ok()
        .filter(|h| !h.is_empty());
    let endpoint = crate::serial::endpoint(
        &clients.scope.region,
        host_override.as_deref(),
        settings.host_key_fingerprint.as_deref(),
    )?;
    if endpoint.overridden {
        eprintln!(
            "eic-connect: warning: serial console endpoint overridden: {} pinned to {} \
             (EIC_CONNECT_SERIAL_HOST / --host-key-fingerprint)",
            endpoint.host, endpoint.fingerprint
        );
    }

    // An instance id needs no lookup: the push itself says "not found" or
    // "not running". Other targets must be named first.
    let instance_id = match &settings.target {
        Target::InstanceId(id) => id.clone(),
        other => ec2::resolve_running(&clients, other).await?.id,
    };
    let key = EphemeralKey::generate()?;
    let pushed = diag::push_serial_key(&clients, &instance_id, key.public_openssh()).await?;
    tracing::debug!(instance = %instance_id, host = %endpoint.host, "pushed serial console key");

    let mut options: Vec<OsString> = Vec::new();
    if let Some(port) = endpoint.port {
        options.extend(["-p".into(), port.to_string().into()]);
    }
    let user = format!("{instance_id}.port0");
    let spec = Spec {
        user_options: &options,
        path_options: Vec::new(),
        verbose: settings.verbose,
        os_user: &user,
        // The known_hosts name for the pinned key: the endpoint, never the instance.
        host_key_alias: &endpoint.host,
        host: &endpoint.host,
        host_keys: HostKeys::Pinned(Pins {
            keys: Vec::new(),
            fingerprints: vec![endpoint.fingerprint.clone()],
        }),
        command: &[],
    };
    let session = Session::prepare(key, crate::agent::pushed_at(pushed), &spec)?;
    tracing::debug!(command = %ssh::display_command(&settings.ssh_program, session.args()), "starting ssh");
    eprintln!(
        "eic-connect: serial console of {instance_id} (one session at a time; press Enter if the screen stays blank, Enter ~ . to leave)"
    );
    let status = ssh::run(&settings.ssh_program, session.args()).await?;
    let verdicts = session.verdicts();
    drop(session);
    if status.code() == Some(255)
        && let Some(failure) = refusal(&endpoint, &clients.scope.region, &verdicts)
    {
        return fail(failure);
    }
    Ok(child_exit_code(status))
}

/// When the endpoint offered a key other than the pinned one.
fn refusal(
    endpoint: &crate::serial::Endpoint,
    region: &str,
    verdicts: &[Verdict],
) -> Option<Failure> {
    if verdicts.iter().any(|v| matches!(v, Verdict::Match { .. })) {
        return None;
    }
    let Some(Verdict::Mismatch {
        fingerprint,
        algorithm,
    }) = verdicts.first()
    else {
        return None;
    };
    let source = if endpoint.overridden {
        "the fingerprint given to pin".to_owned()
    } else {
        format!("AWS's published fingerprint for {region}")
    };
    Some(
        Failure::new(format!(
            "the serial console host {} offered host key {algorithm} {fingerprint}, not {source} ({})",
            endpoint.host, endpoint.fingerprint
        ))
        .hint("something may be intercepting the connection (a proxy, or DNS pointing elsewhere): do not log in")
        .hint("compare with the EC2 User Guide, \"Connect to the EC2 Serial Console\"; if AWS has rotated the key, pin the new one with --host-key-fingerprint"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_is_explained_and_a_match_is_not() {
        let endpoint = crate::serial::endpoint("us-east-1", None, None).unwrap();
        let mismatch = Verdict::Mismatch {
            fingerprint: "SHA256:J3l0XHTYf4ERjL5hPz3rslrK3RciaEDbhPTzxK1t8sg".into(),
            algorithm: "ecdsa-sha2-nistp256".into(),
        };
        let f = refusal(&endpoint, "us-east-1", std::slice::from_ref(&mismatch)).unwrap();
        assert!(
            f.message
                .contains("AWS's published fingerprint for us-east-1"),
            "{}",
            f.message
        );
        assert!(f.message.contains(&endpoint.fingerprint));
        let matched = Verdict::Match {
            fingerprint: endpoint.fingerprint.clone(),
        };
        assert!(refusal(&endpoint, "us-east-1", &[mismatch, matched]).is_none());
        assert!(refusal(&endpoint, "us-east-1", &[]).is_none());
    }
}
