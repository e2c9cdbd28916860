//! Session Manager as a byte transport to an instance's port: the API calls
//! (`api`), the data channel's messages and reliable delivery (`channel`),
//! and here the driver that carries standard input and output (ssh's
//! ProxyCommand) or one local connection over a session.
//!
//! Only the bytes travel this way: the key is still pushed with
//! SendSSHPublicKey, and ssh still checks the host key end to end.

pub mod api;
pub mod channel;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use self::channel::{Channel, Event};
use crate::aws::Clients;
use crate::eice::relay::{Connector, StdinReader, Ws, stdout};
use crate::error::{Failure, fail};
use crate::sanitize::terminal_safe;

/// How often a quiet data channel is pinged, as AWS's own client does.
const PING_EVERY: Duration = Duration::from_secs(300);
/// How long unacknowledged data may take to drain once the local side ended.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long TerminateSession may take when the session ends.
const TERMINATE_WAIT: Duration = Duration::from_secs(3);
/// Local reads per message batch.
const READ_CHUNK: usize = 16 * 1024;

/// One port session, from StartSession to TerminateSession.
pub struct Session<'a> {
    pub clients: &'a Clients,
    pub instance_id: &'a str,
    pub port: u16,
    pub connector: &'a Connector,
    /// The first bytes from the instance (ssh's banner) are a step towards
    /// letting standard error go (see `proxy --master`).
    pub quiet: Option<Arc<crate::ssh::QuietWhen>>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The local side closed (ssh is done).
    LocalClosed,
    /// The agent closed the channel, maybe saying why.
    AgentClosed(String),
}

impl Session<'_> {
    /// Carries standard input and output (a ProxyCommand).
    pub async fn stdio(&self) -> anyhow::Result<ExitCode> {
        let out = stdout()?;
        match self.carry(StdinReader::spawn(), out).await? {
            Ending::LocalClosed => Ok(ExitCode::SUCCESS),
            Ending::AgentClosed(said) => {
                let said = terminal_safe(said.trim()).into_owned();
                if !said.is_empty() {
                    eprintln!("eic-connect: Session Manager closed the session: {said}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    /// Starts a session, carries `local_in`/`local_out` over it until one
    /// side ends, then terminates it.
    pub async fn carry<R, W>(&self, local_in: R, local_out: W) -> anyhow::Result<Ending>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let started = api::start(self.clients, self.instance_id, self.port).await?;
        tracing::debug!(session = %started.session_id, "started a Session Manager session");
        let result = async {
            let mut ws = self
                .connector
                .open_url(&started.stream_url, "Session Manager's data channel at")
                .await?;
            let open = serde_json::json!({
                "MessageSchemaVersion": "1.0",
                "RequestId": channel::uuid_text(&channel::new_uuid()),
                "TokenValue": started.token.0,
                "ClientId": channel::uuid_text(&channel::new_uuid()),
                "ClientVersion": env!("CARGO_PKG_VERSION"),
            });
            ws.send(WsMessage::text(open.to_string()))
                .await
                .map_err(|e| broke(&e))?;
            self.relay(ws, local_in, local_out).await
        }
        .await;
        // Ended here rather than when the agent notices; best effort (the
        // identity may lack ssm:TerminateSession).
        match tokio::time::timeout(
            TERMINATE_WAIT,
            api::terminate(self.clients, &started.session_id),
        )
        .await
        {
            Ok(Ok(())) => tracing::debug!(session = %started.session_id, "terminated the session"),
            Ok(Err(err)) => tracing::debug!(error = %format!("{err:#}"), "TerminateSession failed"),
            Err(_) => tracing::debug!("TerminateSession took too long"),
        }
        result
    }

    async fn relay<R, W>(&self, ws: Ws, mut local_in: R, mut local_out: W) -> anyhow::Result<Ending>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (mut sink, mut stream) = ws.split();
        let mut channel = Channel::default();
        let mut buf = vec![0u8; READ_CHUNK];

        let mut answered = false;
        let opened = Instant::now();
        // An ssh server speaks first: a session to port 22 that stays
        // silent is stalled.
        let silence_limit = (self.port == 22).then_some(self.connector.timeout());
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let ending = loop {
            let due = channel
                .next_due()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let silent_until = match silence_limit {
                Some(limit) if !answered => tokio::time::Instant::from_std(opened + limit),
                _ => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                incoming = stream.next() => {
                    let raw = match incoming {
                        Some(Ok(WsMessage::Binary(raw))) => raw,
                        Some(Ok(WsMessage::Close(frame))) => {
                            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                            break Ending::AgentClosed(reason);
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(broke(&err)),
                        None => break Ending::AgentClosed(String::new()),
                    };
                    let mut closed = None;
                    for event in channel.receive(&raw, Instant::now()) {
                        match event {
                            Event::Send(bytes) => sink.send(WsMessage::binary(bytes)).await.map_err(|e| broke(&e))?,
                            Event::Data(bytes) => {
                                if !answered {
                                    answered = true;
                                    if let Some(quiet) = &self.quiet {
                                        quiet.done();
                                    }
                                }
                                if let Err(err) = local_out.write_all(&bytes).await {
                                    // ssh went away while data was coming: its way of closing.
                                    tracing::debug!(%err, "the local side stopped reading");
                                    closed = Some(Ending::LocalClosed);
                                    break;
                                }
                            }
                            Event::Ready { agent_version, message } => {
                                tracing::debug!(%agent_version, "the data channel is ready");
                                let message = terminal_safe(message.trim()).into_owned();
                                if !message.is_empty() {
                                    eprintln!("eic-connect: Session Manager: {message}");
                                }
                            }
                            Event::Refused(reason) => return fail(
                                Failure::new(format!("Session Manager session to {} failed: {}", self.instance_id, terminal_safe(&reason)))
                                    .hint("connect through the EC2 Instance Connect Endpoint or directly instead (--connect eice or --connect direct)"),
                            ),
                            Event::PortUnreachable => return fail(
                                Failure::new(format!("the SSM agent on {} could not connect to port {}", self.instance_id, self.port))
                                    .hint("check that sshd runs on the instance and listens on that port"),
                            ),
                            Event::AgentError(text) => eprintln!(
                                "eic-connect: the SSM agent on {} reported: {}",
                                self.instance_id,
                                terminal_safe(text.trim())
                            ),
                            Event::Closed(output) => {
                                closed = Some(Ending::AgentClosed(output));
                                break;
                            }
                        }
                    }
                    if let Some(ending) = closed {
                        break ending;
                    }
                }
                read = local_in.read(&mut buf), if channel.accepts_data() => {
                    match read {
                        Ok(0) => break Ending::LocalClosed,
                        Ok(n) => {
                            for frame in channel.send_data(&buf[..n], Instant::now()) {
                                sink.send(WsMessage::binary(frame)).await.map_err(|e| broke(&e))?;
                            }
                        }
                        Err(err) => {
                            return Err(anyhow::Error::new(err).context("reading from the local side of the session"));
                        }
                    }
                }
                () = tokio::time::sleep_until(due) => {
                    match channel.due(Instant::now()) {
                        Ok(again) => for frame in again {
                            sink.send(WsMessage::binary(frame)).await.map_err(|e| broke(&e))?;
                        },
                        Err(waited) => return fail(
                            Failure::new(format!(
                                "the Session Manager session to {} stalled: data sent {:.0?} ago was never acknowledged",
                                self.instance_id, waited
                            ))
                            .hint("check your network connection; the SSM agent on the instance may have stopped"),
                        ),
                    }
                }
                () = tokio::time::sleep_until(silent_until) => {
                    return fail(
                        Failure::new(format!(
                            "the Session Manager session to port 22 of {} stayed silent for {:.0?}: nothing came from the instance",
                            self.instance_id,
                            silence_limit.unwrap_or_default()
                        ))
                        .hint("the session started, but sshd did not answer through the SSM agent: check that sshd runs on the instance")
                        .hint("raise the limit with --api-timeout SECONDS if the network is slow"),
                    );
                }
                _ = ping.tick() => {
                    sink.send(WsMessage::Ping(b"keepalive".to_vec().into())).await.map_err(|e| broke(&e))?;
                }
                _ = terminate.recv() => break Ending::LocalClosed,
                _ = hangup.recv() => break Ending::LocalClosed,
            }
        };
        tracing::debug!(
            retransmitted = channel.retransmitted,
            reordered = channel.reordered,
            duplicates = channel.duplicates,
            malformed = channel.malformed,
            "the data channel ended"
        );
        if ending == Ending::LocalClosed {
            // What was sent reaches the instance before the session ends.
            let drained = tokio::time::timeout(DRAIN_WAIT, async {
                while channel.in_flight() > 0 {
                    let due = channel.next_due().map(tokio::time::Instant::from_std);
                    tokio::select! {
                        incoming = stream.next() => match incoming {
                            Some(Ok(WsMessage::Binary(raw))) => {
                                for event in channel.receive(&raw, Instant::now()) {
                                    if let Event::Send(bytes) = event {
                                        let _ = sink.send(WsMessage::binary(bytes)).await;
                                    }
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)) => {
                            for frame in channel.due(Instant::now()).unwrap_or_default() {
                                let _ = sink.send(WsMessage::binary(frame)).await;
                            }
                        }
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::debug!(
                    unacknowledged = channel.in_flight(),
                    "ending with data unacknowledged"
                );
            }
            let flag = channel.send_flag(channel::flag::TERMINATE_SESSION, Instant::now());
            let _ = sink.send(WsMessage::binary(flag)).await;
        }
        let _ = local_out.shutdown().await;
        if let Ok(mut ws) = sink.reunite(stream) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        Ok(ending)
    }
}

fn broke(err: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(
        Failure::new(format!(
            "the Session Manager data channel broke: {}",
            terminal_safe(&err.to_string())
        ))
        .hint("this usually passes: try again; if it keeps happening, check your network and proxy, and the instance with: eic-connect doctor TARGET"),
    )
}
