//! SendSSHPublicKey: makes the instance accept a public key for 60 seconds.

use std::time::Duration;

use aws_runtime::retries::classifiers::AwsErrorCodeClassifier;
use aws_sdk_ec2instanceconnect::operation::send_ssh_public_key::SendSSHPublicKeyError;

use super::Clients;
use super::errors::{Attempt, from_sdk};

/// How long the instance accepts a pushed key for new logins.
pub const KEY_LIFETIME: Duration = Duration::from_secs(60);

/// Pushes `public_key` for `os_user` on `instance_id`, and returns when the
/// accepted request was sent: the key can log in for [`KEY_LIFETIME`] from
/// then, at most. The availability zone
/// is optional in the API and deliberately not sent: needing it would force a
/// DescribeInstances round trip first.
pub async fn push_key(
    clients: &Clients,
    instance_id: &str,
    os_user: &str,
    public_key: &str,
) -> anyhow::Result<std::time::Instant> {
    push_key_within(clients, instance_id, os_user, public_key, Duration::ZERO).await
}

/// [`push_key`], but a push still throttled after the SDK's own retries is
/// sent again, after a growing, jittered pause, until `patience` has
/// passed. For fleets: a hundred pushes at once outlast the SDK's retry
/// budget, and waiting a little beats failing.
pub async fn push_key_within(
    clients: &Clients,
    instance_id: &str,
    os_user: &str,
    public_key: &str,
    patience: Duration,
) -> anyhow::Result<std::time::Instant> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        // The instance's 60 seconds start no earlier than this request.
        let sent = std::time::Instant::now();
        let result = clients
            .eic
            .send_ssh_public_key()
            .instance_id(instance_id)
            .instance_os_user(os_user)
            .ssh_public_key(public_key)
            .send()
            .await;
        let err = match result {
            Ok(out) if out.success() => return Ok(sent),
            Ok(out) => anyhow::bail!(
                "EC2 Instance Connect did not accept the key (request {})",
                out.request_id().unwrap_or("unknown")
            ),
            Err(err) => err,
        };
        let throttled =
            err.as_service_error().and_then(|e| e.meta().code()) == Some("ThrottlingException");
        if throttled && started.elapsed() + pause < patience {
            tracing::debug!(
                instance = instance_id,
                pause_ms = pause.as_millis() as u64,
                "push throttled; waiting"
            );
            tokio::time::sleep(jittered(pause)).await;
            pause = (pause * 2).min(Duration::from_secs(4));
            continue;
        }
        return Err(from_sdk(
            err,
            &Attempt {
                op: "SendSSHPublicKey",
                scope: &clients.scope,
                instance_id: Some(instance_id),
                os_user: Some(os_user),
            },
        ));
    }
}

/// Between half and all of `pause`, so that many waiting pushes spread out.
fn jittered(pause: Duration) -> Duration {
    let fraction = f64::from(ssh_key::rand_core::RngCore::next_u32(
        &mut ssh_key::rand_core::OsRng,
    )) / f64::from(u32::MAX);
    pause.mul_f64(0.5 + fraction / 2.0)
}

/// Retries the service's transient errors besides the SDK's defaults
/// (throttling codes and 5xx statuses are already covered there).
pub fn retry_classifier() -> AwsErrorCodeClassifier<SendSSHPublicKeyError> {
    const TRANSIENT: &[&str] = &[
        "RequestTimeout",
        "RequestTimeoutException",
        "EC2InstanceUnavailableException",
        "ServiceException",
    ];
    AwsErrorCodeClassifier::builder()
        .transient_errors(TRANSIENT)
        .build()
}
