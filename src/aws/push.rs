//! SendSSHPublicKey: makes the instance accept a public key for 60 seconds.

use std::time::Duration;

use aws_runtime::retries::classifiers::AwsErrorCodeClassifier;
use aws_sdk_ec2instanceconnect::operation::send_ssh_public_key::SendSSHPublicKeyError;

use super::Clients;
use super::errors::{Attempt, from_sdk};

/// How long the instance accepts a pushed key for new logins.
pub const KEY_LIFETIME: Duration = Duration::from_secs(60);

/// Pushes `public_key` for `os_user` on `instance_id`. The availability zone
/// is optional in the API and deliberately not sent: needing it would force a
/// DescribeInstances round trip first.
pub async fn push_key(
    clients: &Clients,
    instance_id: &str,
    os_user: &str,
    public_key: &str,
) -> anyhow::Result<()> {
    let result = clients
        .eic
        .send_ssh_public_key()
        .instance_id(instance_id)
        .instance_os_user(os_user)
        .ssh_public_key(public_key)
        .send()
        .await;
    match result {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => anyhow::bail!(
            "EC2 Instance Connect did not accept the key (request {})",
            out.request_id().unwrap_or("unknown")
        ),
        Err(err) => Err(from_sdk(
            err,
            &Attempt {
                op: "SendSSHPublicKey",
                scope: &clients.scope,
                instance_id: Some(instance_id),
                os_user: Some(os_user),
            },
        )),
    }
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
