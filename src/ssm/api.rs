//! The Session Manager calls: is an instance managed (and online), start a
//! port session to it, end one.

use crate::aws::Clients;
use crate::aws::errors::from_sdk;
use crate::error::{Failure, fail};

/// The document that forwards a session to the instance's sshd port.
pub const SSH_DOCUMENT: &str = "AWS-StartSSHSession";

/// What Session Manager knows of a managed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// `Online`, `ConnectionLost` or `Inactive`.
    pub ping_status: String,
    pub agent_version: Option<String>,
    pub platform: Option<String>,
}

impl Managed {
    pub fn online(&self) -> bool {
        self.ping_status == "Online"
    }
}

/// A started session: where its data channel is and the token it takes.
pub struct Started {
    pub session_id: String,
    pub stream_url: String,
    pub token: Token,
}

/// The data channel's token: a secret for as long as the session lives.
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

/// `DescribeInstanceInformation` for one instance: `None` when Session
/// Manager does not manage it.
pub async fn managed(clients: &Clients, instance_id: &str) -> anyhow::Result<Option<Managed>> {
    let filter = aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
        .key("InstanceIds")
        .values(instance_id)
        .build()?;
    let out = clients
        .ssm
        .describe_instance_information()
        .filters(filter)
        .send()
        .await
        .map_err(|err| {
            from_sdk(
                err,
                &clients.attempt("DescribeInstanceInformation", Some(instance_id)),
            )
        })?;
    Ok(out
        .instance_information_list()
        .iter()
        .find(|info| info.instance_id() == Some(instance_id))
        .map(|info| Managed {
            ping_status: info
                .ping_status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            agent_version: info.agent_version().map(str::to_owned),
            platform: info.platform_name().map(str::to_owned),
        }))
}

/// `StartSession` with [`SSH_DOCUMENT`] to `port` on `instance_id`.
pub async fn start(clients: &Clients, instance_id: &str, port: u16) -> anyhow::Result<Started> {
    let out = clients
        .ssm
        .start_session()
        .target(instance_id)
        .document_name(SSH_DOCUMENT)
        .parameters("portNumber", vec![port.to_string()])
        .reason("eic-connect")
        .send()
        .await
        .map_err(|err| from_sdk(err, &clients.attempt("StartSession", Some(instance_id))))?;
    match (out.session_id(), out.stream_url(), out.token_value()) {
        (Some(id), Some(url), Some(token)) if !url.is_empty() && !token.is_empty() => Ok(Started {
            session_id: id.to_owned(),
            stream_url: url.to_owned(),
            token: Token(token.to_owned()),
        }),
        _ => fail(
            Failure::new(format!(
                "Session Manager started no usable session to {instance_id}: its answer lacks the stream URL or token"
            ))
            .hint("this is unexpected from AWS: try again, and report it with the output of -v if it persists"),
        ),
    }
}

/// `TerminateSession`, so the session ends in Session Manager's history
/// now rather than when the agent notices.
pub async fn terminate(clients: &Clients, session_id: &str) -> anyhow::Result<()> {
    clients
        .ssm
        .terminate_session()
        .session_id(session_id)
        .send()
        .await
        .map_err(|err| from_sdk(err, &clients.attempt("TerminateSession", None)))?;
    Ok(())
}
