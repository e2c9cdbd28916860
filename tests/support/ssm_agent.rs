//! The Session Manager data channel stand-in: a TLS WebSocket server at the
//! `StreamUrl`s StartSession hands out, where the stand-in plays what sits
//! behind the real one (the service's message gateway and the SSM Agent on
//! the instance) for a port session of `AWS-StartSSHSession`, relaying to
//! the bed's sshd on the instance's private address.
//!
//! Written from the behaviour of AWS's session-manager-plugin and
//! amazon-ssm-agent (both Apache-2.0); no code of theirs is used. The wire
//! format, as they serialise it:
//!
//! - The client's first frame is a text frame, JSON
//!   `{MessageSchemaVersion: "1.0", RequestId, TokenValue, ClientId,
//!   ClientVersion}`; a wrong or missing token closes the connection
//!   (policy violation, 1008).
//! - Every other message is a binary frame: a 120-byte header, then the
//!   payload. Offsets: 0 `HeaderLength` u32 = 116 (the header without the
//!   `PayloadLength` field); 4 `MessageType`, 32 bytes of ASCII padded with
//!   spaces; 36 `SchemaVersion` u32 (1); 40 `CreatedDate` u64, epoch
//!   milliseconds; 48 `SequenceNumber` i64; 56 `Flags` u64; 64 `MessageId`,
//!   16 bytes: a UUID written as two big-endian 64-bit halves, the
//!   *least*-significant half (UUID bytes 8-15) first, then bytes 0-7; 80
//!   `PayloadDigest`, SHA-256 of the payload (32 bytes); 112 `PayloadType`
//!   u32; 116 `PayloadLength` u32; 120 the payload. All integers are
//!   big-endian.
//! - Stream messages (`input_stream_data` from the client,
//!   `output_stream_data` from the agent) are numbered per direction from
//!   0, handshake messages included: the agent's HandshakeRequest is its
//!   0 (with `Flags` 1, SYN, as the agent sets on its first message),
//!   HandshakeComplete 1, data from 2; the client's HandshakeResponse is
//!   its 0, its data from 1. Other stream messages carry `Flags` 0.
//! - Every stream message is acknowledged with an `acknowledge` message
//!   (`SequenceNumber` 0, `Flags` 3, `SchemaVersion` 1, `PayloadType` 0)
//!   whose payload is JSON `{AcknowledgedMessageType,
//!   AcknowledgedMessageId (the UUID as lowercase hyphenated text),
//!   AcknowledgedMessageSequenceNumber, IsSequentialMessage: true}`. The
//!   agent processes the expected message, then acknowledges it; one ahead
//!   of sequence is acknowledged and buffered; one already processed is
//!   acknowledged again. Unacknowledged messages are sent again after a
//!   retransmission timeout (Jacobson/Karels: RTT 100 ms, variation 0 and
//!   timeout 200 ms to start; timeout = RTT + max(10 ms, 4 × variation),
//!   at most 1 s).
//! - Handshake: the agent sends HandshakeRequest (payload type 5) with
//!   `{AgentVersion, RequestedClientActions: [{ActionType: "SessionType",
//!   ActionParameters: {SessionType: "Port", Properties: {portNumber:
//!   "22"}}}]}` (no KMSEncryption action), waits up to 15 s for the
//!   client's HandshakeResponse (6) `{ClientVersion,
//!   ProcessedClientActions: [{ActionType, ActionStatus: 1, ...}], Errors}`,
//!   then sends HandshakeComplete (7) `{HandshakeTimeToComplete
//!   (nanoseconds), CustomerMessage}` and connects to the port. Client data
//!   that arrives before that is acknowledged and discarded, as the agent
//!   discards it (and recorded as a violation).
//! - Data: payload type Output (1) both ways; the agent reads the port in
//!   chunks of at most 1,024 bytes, one message each. The client's Flag
//!   messages (10) carry a big-endian u32: DisconnectToPort (1) makes the
//!   agent close its TCP connection, which for an SSH session ends the
//!   session; TerminateSession (2) ends it.
//! - The end of a session: when sshd closes the connection (or a flag, a
//!   `channel_closed` from the client, TerminateSession or
//!   [`TestBed::ssm_agent_close`] ends it), the agent stops relaying,
//!   waits up to 2 s for its messages to be acknowledged, then sends
//!   `channel_closed` (`SequenceNumber` 0, `Flags` 3; payload JSON
//!   `{MessageId, CreatedDate, DestinationId, SessionId, MessageType:
//!   "channel_closed", SchemaVersion: 1, Output}`) and closes the
//!   WebSocket (1000).
//!
//! Everything the client gets wrong is recorded in
//! [`SsmSession::violations`]: a message shorter than the header, a wrong
//! `HeaderLength` or `PayloadLength`, a wrong digest, a `MessageType` not
//! padded with spaces or a zero `CreatedDate` make the agent drop the
//! message (no acknowledgement); other deviations from what the plugin
//! writes (schema version, flags, a message id that is not a version-4
//! UUID in the plugin's byte order, an acknowledgement naming the wrong
//! message id) are recorded and the message is processed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::api::{self, Api, State};
use super::ssm::{Control, SsmEnd, SsmSession, StreamFaults, StreamRejection};
use super::tls::TestCa;

/// `HeaderLength`: the header up to, not including, `PayloadLength`.
pub const HEADER_LENGTH: u32 = 116;
/// Bytes before the payload.
pub const HEADER_SIZE: usize = 120;
const TYPE_LEN: usize = 32;

/// Payload types.
pub mod payload {
    pub const OUTPUT: u32 = 1;
    pub const ERROR: u32 = 2;
    pub const SIZE: u32 = 3;
    pub const PARAMETER: u32 = 4;
    pub const HANDSHAKE_REQUEST: u32 = 5;
    pub const HANDSHAKE_RESPONSE: u32 = 6;
    pub const HANDSHAKE_COMPLETE: u32 = 7;
    pub const ENC_CHALLENGE_REQUEST: u32 = 8;
    pub const ENC_CHALLENGE_RESPONSE: u32 = 9;
    pub const FLAG: u32 = 10;
    pub const STDERR: u32 = 11;
    pub const EXIT_CODE: u32 = 12;
}

/// Flag payload values.
pub const FLAG_DISCONNECT_TO_PORT: u32 = 1;
pub const FLAG_TERMINATE_SESSION: u32 = 2;

/// The agent's reads from the port, and so its largest data message.
pub const STREAM_DATA_PAYLOAD_SIZE: usize = 1024;
/// How long the agent waits for the HandshakeResponse.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the client has for its open frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent waits, at the end, for its messages to be
/// acknowledged (the agent's PrepareToCloseChannel).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(10);
const INITIAL_RTT: f64 = 0.100;
const INITIAL_RTO: Duration = Duration::from_millis(200);
const CLOCK_GRANULARITY: f64 = 0.010;
const MAX_RTO: Duration = Duration::from_secs(1);

// --------------------------------------------------------------- codec

/// One message of the data channel, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    pub message_type: String,
    pub schema_version: u32,
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    /// The UUID's 16 bytes in their usual (RFC 4122) order.
    pub message_id: [u8; 16],
    pub payload_type: u32,
    pub payload: Vec<u8>,
}

impl AgentMessage {
    pub fn new(
        message_type: &str,
        sequence_number: i64,
        flags: u64,
        payload_type: u32,
        payload: Vec<u8>,
    ) -> Self {
        AgentMessage {
            message_type: message_type.to_owned(),
            schema_version: 1,
            created_date: now_millis(),
            sequence_number,
            flags,
            message_id: new_uuid(),
            payload_type,
            payload,
        }
    }

    /// The message id as the plugin and agent print it.
    pub fn id_string(&self) -> String {
        uuid_string(&self.message_id)
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        out.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        let mut ty = [b' '; TYPE_LEN];
        let name = self.message_type.as_bytes();
        ty[..name.len().min(TYPE_LEN)].copy_from_slice(&name[..name.len().min(TYPE_LEN)]);
        out.extend_from_slice(&ty);
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&self.created_date.to_be_bytes());
        out.extend_from_slice(&self.sequence_number.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.message_id[8..16]);
        out.extend_from_slice(&self.message_id[0..8]);
        out.extend_from_slice(&Sha256::digest(&self.payload));
        out.extend_from_slice(&self.payload_type.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decode and check a message. `Err` is a reason to drop it (lengths,
    /// digest, type padding, creation date); the notes list deviations
    /// from what the plugin writes that the agent tolerates.
    pub fn decode(b: &[u8]) -> Result<(AgentMessage, Vec<String>), String> {
        if b.len() < HEADER_SIZE {
            return Err(format!(
                "a message of {} bytes is shorter than the {HEADER_SIZE}-byte header",
                b.len()
            ));
        }
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(a)
        };
        let header_length = u32_at(0);
        if header_length != HEADER_LENGTH {
            return Err(format!(
                "HeaderLength is {header_length}, not {HEADER_LENGTH}"
            ));
        }
        let payload_length = u32_at(116) as usize;
        let payload = &b[HEADER_SIZE..];
        if payload_length != payload.len() {
            return Err(format!(
                "PayloadLength is {payload_length} but {} bytes follow the header",
                payload.len()
            ));
        }
        let digest = &b[80..112];
        if digest != Sha256::digest(payload).as_slice() {
            return Err(format!(
                "PayloadDigest {} is not the SHA-256 of the {}-byte payload",
                hex::encode(digest),
                payload.len()
            ));
        }
        let ty = &b[4..4 + TYPE_LEN];
        let end = ty.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
        let name = &ty[..end];
        if name.is_empty() || !name.iter().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "MessageType {:?} is not ASCII text padded with spaces",
                String::from_utf8_lossy(ty)
            ));
        }
        let created_date = u64_at(40);
        if created_date == 0 {
            return Err("CreatedDate is 0".into());
        }
        let mut message_id = [0u8; 16];
        message_id[0..8].copy_from_slice(&b[72..80]);
        message_id[8..16].copy_from_slice(&b[64..72]);
        let m = AgentMessage {
            message_type: String::from_utf8_lossy(name).into_owned(),
            schema_version: u32_at(36),
            created_date,
            sequence_number: u64_at(48) as i64,
            flags: u64_at(56),
            message_id,
            payload_type: u32_at(112),
            payload: payload.to_vec(),
        };
        let mut notes = Vec::new();
        if m.schema_version != 1 {
            notes.push(format!(
                "{} seq {}: SchemaVersion {} (the plugin writes 1)",
                m.message_type, m.sequence_number, m.schema_version
            ));
        }
        // Version 4, RFC 4122 variant, read with the halves in the
        // plugin's order: a UUID written most-significant half first fails
        // this 63 times in 64.
        if message_id[6] >> 4 != 4 || message_id[8] >> 6 != 0b10 {
            notes.push(format!(
                "{} seq {}: MessageId {} is not a version-4 UUID read least-significant half first (the plugin's order)",
                m.message_type,
                m.sequence_number,
                uuid_string(&message_id)
            ));
        }
        let now = now_millis();
        if m.created_date + 86_400_000 < now || m.created_date > now + 86_400_000 {
            notes.push(format!(
                "{} seq {}: CreatedDate {} is not epoch milliseconds of today",
                m.message_type, m.sequence_number, m.created_date
            ));
        }
        Ok((m, notes))
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase.
pub fn uuid_string(id: &[u8; 16]) -> String {
    let h = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random version-4 UUID.
pub fn new_uuid() -> [u8; 16] {
    let mut b = api::random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

// ------------------------------------------------------------ the server

/// The TLS WebSocket server of a bed's Session Manager data channels.
pub struct StreamServer {
    pub port: u16,
    thread: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StreamServer {
    /// Serves on 127.0.0.1:0, on a thread of its own, with a certificate
    /// for 127.0.0.1, localhost and `ssmmessages.<region>.amazonaws.com`
    /// issued by `ca` (the one in the bed's `AWS_CA_BUNDLE`). Records its
    /// port in the API state, for StreamUrls.
    pub fn start(api: Arc<Api>, ca: &TestCa, sshd_port: u16) -> StreamServer {
        let region = api.config.region.clone();
        let config = ca.server_config_named(
            &[
                "127.0.0.1",
                "localhost",
                &format!("ssmmessages.{region}.amazonaws.com"),
            ],
            "ssmmessages stand-in",
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the SSM stream stand-in");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("stream server address").port();
        api.lock().ssm.stream_port = port;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("testbed-ssm-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the SSM stream stand-in's runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register listener with tokio");
                    let serve = async {
                        loop {
                            let Ok((tcp, _peer)) = listener.accept().await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let api = api.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                connection(api, acceptor, tcp, sshd_port).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = rx => {}
                    }
                });
            })
            .expect("spawn the SSM stream stand-in thread");
        StreamServer {
            port,
            thread: Some(thread),
            stop: Some(tx),
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.stop();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// What the upgrade callback decided: the session's index and its control
/// channel, or a refusal.
type Verdict = Option<(usize, UnboundedReceiver<Control>)>;

// tungstenite's handshake callback returns its (large) error response.
#[allow(clippy::result_large_err)]
async fn connection(
    api: Arc<Api>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    sshd_port: u16,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let verdict: Arc<std::sync::Mutex<Verdict>> = Arc::default();
    let callback = {
        let verdict = verdict.clone();
        let api = api.clone();
        move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            match check_upgrade(&api, req) {
                Ok(accepted) => {
                    *verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(accepted);
                    Ok(resp)
                }
                Err(refusal) => Err(refusal),
            }
        }
    };
    let config = WebSocketConfig::default().max_frame_size(Some(16 << 20));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tls, callback, Some(config)).await;
    let accepted = verdict.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some((index, control)) = accepted else {
        return;
    };
    let Ok(ws) = ws else {
        // The upgrade was accepted but the handshake broke: nothing ran.
        finish(&api, index, SsmEnd::ClientDropped);
        return;
    };
    Channel::new(api, index, ws, sshd_port).run(control).await;
}

/// Accept `/v1/data-channel/<session id>?role=publish_subscribe&...` for a
/// session that is not over and has no channel yet.
#[allow(clippy::result_large_err)]
fn check_upgrade(
    api: &Api,
    req: &Request,
) -> Result<(usize, UnboundedReceiver<Control>), ErrorResponse> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let mut st = api.lock();
    match accept_upgrade(&mut st, &path, &query) {
        Ok(index) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let s = &mut st.ssm.sessions[index];
            s.connections += 1;
            let id = s.session_id.clone();
            st.ssm.controls.insert(id, tx);
            Ok((index, rx))
        }
        Err((status, reason)) => {
            st.ssm.rejections.push(StreamRejection {
                status,
                path,
                query,
                reason: reason.clone(),
            });
            let body = json!({ "message": reason }).to_string();
            let length = http::HeaderValue::from(body.len());
            let mut r = http::Response::new(Some(body));
            r.headers_mut().insert("content-length", length);
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            *r.status_mut() =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
            Err(r)
        }
    }
}

/// The session an upgrade is for, or (status, reason) to refuse it.
fn accept_upgrade(st: &mut State, path: &str, query: &str) -> Result<usize, (u16, String)> {
    let Some(session_id) = path.strip_prefix("/v1/data-channel/") else {
        return Err((404, format!("unknown path {path}")));
    };
    let params = query_map(query);
    if params.get("role").map(String::as_str) != Some("publish_subscribe") {
        return Err((
            400,
            format!(
                "role must be publish_subscribe, not {:?}",
                params.get("role")
            ),
        ));
    }
    let Some(index) = st
        .ssm
        .sessions
        .iter()
        .position(|s| s.session_id == session_id)
    else {
        return Err((404, format!("no session {session_id}")));
    };
    let s = &st.ssm.sessions[index];
    let issued = query_map(s.stream_url.split_once('?').map_or("", |(_, q)| q));
    if params.get("cell-number") != issued.get("cell-number") {
        return Err((
            400,
            format!(
                "cell-number {:?} is not the StreamUrl's",
                params.get("cell-number")
            ),
        ));
    }
    if s.terminated {
        return Err((400, format!("session {session_id} is terminated")));
    }
    if s.connections > 0 {
        return Err((
            400,
            format!("session {session_id} already has a data channel"),
        ));
    }
    Ok(index)
}

fn query_map(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Mark a session over.
fn finish(api: &Api, index: usize, how: SsmEnd) {
    let mut st = api.lock();
    let id = st.ssm.sessions[index].session_id.clone();
    st.ssm.controls.remove(&id);
    let s = &mut st.ssm.sessions[index];
    if !s.terminated {
        s.terminated = true;
        s.ended = Some(SystemTime::now());
        s.ended_by.get_or_insert(how);
    }
}

// ------------------------------------------------------------ the agent

/// One of the agent's messages not yet acknowledged.
struct Pending {
    bytes: Vec<u8>,
    id: [u8; 16],
    /// When it was last sent (or lost, or held back).
    last_sent: Instant,
    /// Times sent, a transmission lost on purpose included; 0 while held.
    transmissions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's open (token) frame.
    Open,
    /// HandshakeRequest sent; waiting for the response.
    Handshake,
    /// Relaying.
    Relay,
    /// Ending: waiting for acknowledgements before `channel_closed`.
    Drain,
}

enum Processed {
    Done,
    /// The message could not be processed yet (no connection to the
    /// port): neither acknowledged nor counted as received.
    NotReady,
}

struct Channel {
    api: Arc<Api>,
    index: usize,
    session_id: String,
    target: String,
    port_number: String,
    token: String,
    faults: StreamFaults,
    sshd_port: u16,
    ws: Ws,
    phase: Phase,
    opened: Instant,
    handshake_started: Instant,
    /// Outgoing stream messages.
    next_seq: i64,
    unacked: BTreeMap<i64, Pending>,
    held: Option<i64>,
    rtt: f64,
    rttvar: f64,
    rto: Duration,
    data_out: u64,
    /// Incoming stream messages.
    expected: i64,
    buffered: BTreeMap<i64, AgentMessage>,
    seen: HashSet<i64>,
    data_in: u64,
    tcp_r: Option<OwnedReadHalf>,
    tcp_w: Option<OwnedWriteHalf>,
    /// Why the session is ending, and the `channel_closed` Output.
    ending: Option<(SsmEnd, String)>,
    drain_deadline: Instant,
    /// The WebSocket is gone (nothing more can be sent).
    gone: bool,
}

impl Channel {
    fn new(api: Arc<Api>, index: usize, ws: Ws, sshd_port: u16) -> Channel {
        let (session_id, target, port_number, token, faults) = {
            let st = api.lock();
            let s = &st.ssm.sessions[index];
            let port = s
                .parameters
                .get("portNumber")
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_else(|| "22".into());
            (
                s.session_id.clone(),
                s.target.clone(),
                port,
                s.token.clone(),
                s.faults,
            )
        };
        let now = Instant::now();
        Channel {
            api,
            index,
            session_id,
            target,
            port_number,
            token,
            faults,
            sshd_port,
            ws,
            phase: Phase::Open,
            opened: now,
            handshake_started: now,
            next_seq: 0,
            unacked: BTreeMap::new(),
            held: None,
            rtt: INITIAL_RTT,
            rttvar: 0.0,
            rto: INITIAL_RTO,
            data_out: 0,
            expected: 0,
            buffered: BTreeMap::new(),
            seen: HashSet::new(),
            data_in: 0,
            tcp_r: None,
            tcp_w: None,
            ending: None,
            drain_deadline: now,
            gone: false,
        }
    }

    /// Change the session's record.
    fn rec(&self, f: impl FnOnce(&mut SsmSession)) {
        let mut st = self.api.lock();
        f(&mut st.ssm.sessions[self.index]);
    }

    fn violation(&self, what: String) {
        self.rec(|s| s.violations.push(what));
    }

    async fn run(mut self, mut control: UnboundedReceiver<Control>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; STREAM_DATA_PAYLOAD_SIZE];
        let mut control_open = true;
        loop {
            enum Ev {
                Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
                Tcp(std::io::Result<usize>),
                Tick,
                Control(Option<Control>),
            }
            let reading_port = self.tcp_r.is_some() && self.phase == Phase::Relay;
            let ev = tokio::select! {
                m = self.ws.next() => Ev::Ws(m),
                r = read_port(&mut self.tcp_r, &mut buf), if reading_port => Ev::Tcp(r),
                _ = tick.tick() => Ev::Tick,
                c = control.recv(), if control_open => Ev::Control(c),
            };
            match ev {
                Ev::Ws(None) | Ev::Ws(Some(Err(_))) => {
                    self.gone = true;
                    self.end_now(SsmEnd::ClientDropped);
                    return;
                }
                Ev::Ws(Some(Ok(msg))) => {
                    if let Some(end) = self.on_frame(msg).await {
                        self.close_port();
                        self.end_now(end);
                        return;
                    }
                }
                Ev::Tcp(Ok(0)) | Ev::Tcp(Err(_)) => {
                    // sshd closed: the port session is over.
                    self.close_port();
                    self.begin_end(SsmEnd::SshdClosed, String::new());
                }
                Ev::Tcp(Ok(n)) => {
                    self.rec(|s| s.bytes_down += n as u64);
                    let data = buf[..n].to_vec();
                    self.send_stream(payload::OUTPUT, data).await;
                }
                Ev::Tick => {
                    if let Some(end) = self.on_tick().await {
                        self.close_port();
                        self.end_now(end);
                        return;
                    }
                }
                Ev::Control(None) => control_open = false,
                Ev::Control(Some(Control::Terminate)) => {
                    self.close_port();
                    self.begin_end(SsmEnd::TerminateApi, String::new());
                }
                Ev::Control(Some(Control::AgentClose(output))) => {
                    self.close_port();
                    self.begin_end(SsmEnd::AgentClosed, output);
                }
            }
            if self.gone {
                let end = self
                    .ending
                    .as_ref()
                    .map_or(SsmEnd::ClientDropped, |(e, _)| e.clone());
                self.end_now(end);
                return;
            }
        }
    }

    fn close_port(&mut self) {
        self.tcp_r = None;
        self.tcp_w = None;
    }

    /// Start ending the session (the first reason counts): stop relaying,
    /// wait for acknowledgements, then `channel_closed`.
    fn begin_end(&mut self, how: SsmEnd, output: String) {
        if self.ending.is_none() {
            self.ending = Some((how, output));
            self.phase = Phase::Drain;
            self.drain_deadline = Instant::now() + DRAIN_TIMEOUT;
        }
    }

    fn end_now(&self, how: SsmEnd) {
        finish(&self.api, self.index, how);
    }

    /// Send `channel_closed` with `output` and close the WebSocket.
    async fn close_channel(&mut self, output: &str) {
        let payload = json!({
            "MessageId": uuid_string(&new_uuid()),
            "CreatedDate": super::ssm::iso8601_millis(SystemTime::now()),
            "DestinationId": self.target,
            "SessionId": self.session_id,
            "MessageType": "channel_closed",
            "SchemaVersion": 1,
            "Output": output,
        });
        let m = AgentMessage::new("channel_closed", 0, 3, 0, payload.to_string().into_bytes());
        let sent = self.ws.send(Message::binary(m.encode())).await.is_ok();
        if sent {
            let output = output.to_owned();
            self.rec(|s| s.channel_closed_sent = Some(output));
        }
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        // The session is over now; then drive the close handshake briefly
        // (the plugin exits instead of answering).
        if let Some((how, _)) = self.ending.clone() {
            self.end_now(how);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if let Message::Close(frame) = msg {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    self.rec(|s| s.client_close_code = Some(code));
                }
            }
        })
        .await;
        self.gone = true;
    }

    /// Timers: the open frame's and the handshake's deadlines,
    /// retransmissions, the end of draining.
    async fn on_tick(&mut self) -> Option<SsmEnd> {
        let now = Instant::now();
        match self.phase {
            Phase::Open if now.duration_since(self.opened) > OPEN_TIMEOUT => {
                self.violation(format!("no open frame within {OPEN_TIMEOUT:?}"));
                let _ = self
                    .ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "no open frame".into(),
                    })))
                    .await;
                return Some(SsmEnd::NoOpenFrame);
            }
            Phase::Handshake if now.duration_since(self.handshake_started) > HANDSHAKE_TIMEOUT => {
                self.violation(format!("no HandshakeResponse within {HANDSHAKE_TIMEOUT:?}"));
                self.begin_end(
                    SsmEnd::HandshakeFailed,
                    "Encountered error while initiating handshake. Handshake timed out. Please ensure that you have the latest version of the session manager plugin.".into(),
                );
            }
            _ => {}
        }
        self.retransmit().await;
        if self.phase == Phase::Drain && (self.unacked.is_empty() || now >= self.drain_deadline) {
            let (how, output) = self
                .ending
                .clone()
                .unwrap_or((SsmEnd::AgentClosed, String::new()));
            self.close_channel(&output).await;
            return Some(how);
        }
        None
    }

    /// Send again what is unacknowledged past its timeout (a held message
    /// included: it goes now).
    async fn retransmit(&mut self) {
        let now = Instant::now();
        let due: Vec<i64> = self
            .unacked
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_sent) > self.rto)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            if self.held == Some(seq) {
                self.held = None;
            }
            let Some(p) = self.unacked.get_mut(&seq) else {
                continue;
            };
            let bytes = p.bytes.clone();
            let again = p.transmissions > 0;
            p.transmissions += 1;
            p.last_sent = now;
            if again {
                self.rec(|s| s.retransmissions += 1);
            }
            if self.ws.send(Message::binary(bytes)).await.is_err() {
                self.gone = true;
                return;
            }
        }
    }

    /// Number, record and send one stream message, applying the faults to
    /// data messages.
    async fn send_stream(&mut self, payload_type: u32, payload: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let flags = if seq == 0 { 1 } else { 0 };
        let m = AgentMessage::new("output_stream_data", seq, flags, payload_type, payload);
        let bytes = m.encode();
        let now = Instant::now();
        let (mut lose, mut hold, mut duplicate) = (false, false, false);
        if payload_type == payload::OUTPUT {
            self.data_out += 1;
            let nth = |n: u32| n > 0 && self.data_out.is_multiple_of(u64::from(n));
            let f = self.faults;
            lose = nth(f.lose_outgoing_every);
            hold = !lose && self.held.is_none() && nth(f.hold_outgoing_every);
            duplicate = !lose && !hold && nth(f.duplicate_outgoing_every);
        }
        self.unacked.insert(
            seq,
            Pending {
                bytes: bytes.clone(),
                id: m.message_id,
                last_sent: now,
                transmissions: if hold { 0 } else { 1 },
            },
        );
        self.rec(|s| {
            s.messages_down += 1;
            if lose {
                s.faults_applied.lost_outgoing += 1;
            }
            if hold {
                s.faults_applied.held_outgoing += 1;
            }
            if duplicate {
                s.faults_applied.duplicated_outgoing += 1;
            }
        });
        if hold {
            self.held = Some(seq);
            return;
        }
        if !lose {
            let copies = if duplicate { 2 } else { 1 };
            for _ in 0..copies {
                if self.ws.send(Message::binary(bytes.clone())).await.is_err() {
                    self.gone = true;
                    return;
                }
            }
        }
        // Release a held message after its successor.
        if let Some(h) = self.held.take()
            && let Some(p) = self.unacked.get_mut(&h)
        {
            p.transmissions += 1;
            p.last_sent = Instant::now();
            let bytes = p.bytes.clone();
            if self.ws.send(Message::binary(bytes)).await.is_err() {
                self.gone = true;
            }
        }
    }

    /// Acknowledge a client stream message.
    async fn ack(&mut self, m: &AgentMessage) {
        let content = json!({
            "AcknowledgedMessageType": m.message_type,
            "AcknowledgedMessageId": m.id_string(),
            "AcknowledgedMessageSequenceNumber": m.sequence_number,
            "IsSequentialMessage": true,
        });
        let a = AgentMessage::new("acknowledge", 0, 3, 0, content.to_string().into_bytes());
        if self.ws.send(Message::binary(a.encode())).await.is_err() {
            self.gone = true;
            return;
        }
        self.rec(|s| s.acks_sent += 1);
    }

    /// One frame from the client. `Some` ends the session at once.
    async fn on_frame(&mut self, msg: Message) -> Option<SsmEnd> {
        match msg {
            Message::Text(text) => {
                if self.phase == Phase::Open {
                    return self.on_open(text.as_str()).await;
                }
                self.violation(format!(
                    "a text frame after the open frame: {:?}",
                    truncate(text.as_str())
                ));
                None
            }
            Message::Binary(data) => {
                if self.phase == Phase::Open {
                    self.violation("a binary frame before the open frame".into());
                    self.rec(|s| s.token_ok = Some(false));
                    let _ = self
                        .ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Policy,
                            reason: "the first frame must be the open frame".into(),
                        })))
                        .await;
                    return Some(SsmEnd::NoOpenFrame);
                }
                self.on_binary(&data).await
            }
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                self.rec(|s| s.client_close_code = Some(code));
                // tungstenite queues the answer; send it.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.flush()).await;
                self.gone = true;
                Some(SsmEnd::ClientClosed(code))
            }
            _ => None,
        }
    }

    /// The client's open frame: check the token, then start the handshake.
    async fn on_open(&mut self, text: &str) -> Option<SsmEnd> {
        let parsed: Option<Value> = serde_json::from_str(text).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let token_ok = field("TokenValue").as_deref() == Some(self.token.as_str());
        let mut notes = Vec::new();
        if parsed.is_none() {
            notes.push(format!("the open frame is not JSON: {:?}", truncate(text)));
        } else {
            if field("MessageSchemaVersion").as_deref() != Some("1.0") {
                notes.push(format!(
                    "open frame: MessageSchemaVersion {:?}, not \"1.0\"",
                    field("MessageSchemaVersion")
                ));
            }
            for k in ["RequestId", "ClientId", "ClientVersion"] {
                if field(k).is_none_or(|v| v.is_empty()) {
                    notes.push(format!("open frame: no {k}"));
                }
            }
            if !token_ok {
                notes.push("open frame: wrong or missing TokenValue".into());
            }
        }
        self.rec(|s| {
            s.open_frame = parsed.clone();
            s.token_ok = Some(token_ok);
            s.violations.extend(notes);
        });
        if !token_ok {
            let _ = self
                .ws
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: "invalid token".into(),
                })))
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(_)) = self.ws.next().await {}
            })
            .await;
            self.gone = true;
            return Some(SsmEnd::BadToken);
        }
        let request = json!({
            "AgentVersion": super::ssm::AGENT_VERSION,
            "RequestedClientActions": [{
                "ActionType": "SessionType",
                "ActionParameters": {
                    "SessionType": "Port",
                    "Properties": { "portNumber": self.port_number },
                },
            }],
        });
        self.phase = Phase::Handshake;
        self.handshake_started = Instant::now();
        self.send_stream(payload::HANDSHAKE_REQUEST, request.to_string().into_bytes())
            .await;
        self.rec(|s| s.handshake_request_sent = true);
        None
    }

    async fn on_binary(&mut self, data: &[u8]) -> Option<SsmEnd> {
        let (m, notes) = match AgentMessage::decode(data) {
            Ok(ok) => ok,
            Err(why) => {
                self.violation(format!("message dropped: {why}"));
                return None;
            }
        };
        if !notes.is_empty() {
            self.rec(|s| s.violations.extend(notes));
        }
        match m.message_type.as_str() {
            "input_stream_data" => {
                self.on_stream(m).await;
                None
            }
            "acknowledge" => {
                self.on_ack(&m);
                None
            }
            "channel_closed" => {
                self.rec(|s| s.client_channel_closed = true);
                self.gone = true;
                Some(SsmEnd::ClientChannelClosed)
            }
            other => {
                self.violation(format!(
                    "unexpected message type {other:?} (seq {})",
                    m.sequence_number
                ));
                None
            }
        }
    }

    /// The client acknowledges one of the agent's messages.
    fn on_ack(&mut self, m: &AgentMessage) {
        let mut notes = Vec::new();
        if m.sequence_number != 0 || m.flags != 3 || m.payload_type != 0 {
            notes.push(format!(
                "acknowledge: SequenceNumber {}, Flags {}, PayloadType {} (the plugin writes 0, 3, 0)",
                m.sequence_number, m.flags, m.payload_type
            ));
        }
        let content: Option<Value> = serde_json::from_slice(&m.payload).ok();
        let seq = content
            .as_ref()
            .and_then(|c| c.get("AcknowledgedMessageSequenceNumber"))
            .and_then(Value::as_i64);
        let Some(seq) = seq else {
            notes.push(format!(
                "acknowledge without AcknowledgedMessageSequenceNumber: {:?}",
                truncate(&String::from_utf8_lossy(&m.payload))
            ));
            self.rec(|s| s.violations.extend(notes));
            return;
        };
        let content = content.unwrap_or_default();
        let ack_type = content
            .get("AcknowledgedMessageType")
            .and_then(Value::as_str);
        if ack_type != Some("output_stream_data") {
            notes.push(format!(
                "acknowledge of seq {seq}: AcknowledgedMessageType {ack_type:?}, not \"output_stream_data\""
            ));
        }
        if content.get("IsSequentialMessage").and_then(Value::as_bool) != Some(true) {
            notes.push(format!(
                "acknowledge of seq {seq}: IsSequentialMessage is not true"
            ));
        }
        let ack_id = content
            .get("AcknowledgedMessageId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match self.unacked.remove(&seq) {
            Some(p) => {
                let want = uuid_string(&p.id);
                if ack_id.as_deref() != Some(want.as_str()) {
                    notes.push(format!(
                        "acknowledge of seq {seq}: AcknowledgedMessageId {ack_id:?}, but that message's id is {want} (UUID halves read in the wrong order?)"
                    ));
                }
                if p.transmissions == 0 {
                    notes.push(format!("acknowledge of seq {seq}, a message not sent yet"));
                }
                if self.held == Some(seq) {
                    self.held = None;
                }
                // Karn: only an unambiguous round trip is a sample.
                if p.transmissions == 1 {
                    self.sample_rtt(p.last_sent.elapsed().as_secs_f64());
                }
                self.rec(|s| {
                    s.acks_received += 1;
                    s.violations.extend(notes);
                });
            }
            None => {
                if seq >= self.next_seq || seq < 0 {
                    notes.push(format!(
                        "acknowledge of seq {seq}, which the agent never sent"
                    ));
                }
                self.rec(|s| {
                    s.duplicate_acks_received += 1;
                    s.violations.extend(notes);
                });
            }
        }
    }

    fn sample_rtt(&mut self, r: f64) {
        self.rttvar = 0.75 * self.rttvar + 0.25 * (self.rtt - r).abs();
        self.rtt = 0.875 * self.rtt + 0.125 * r;
        let rto = self.rtt + CLOCK_GRANULARITY.max(4.0 * self.rttvar);
        self.rto = Duration::from_secs_f64(rto).min(MAX_RTO);
    }

    /// A client stream message: drop (fault), deliver in order, buffer or
    /// acknowledge again.
    async fn on_stream(&mut self, m: AgentMessage) {
        let seq = m.sequence_number;
        if seq < 0 {
            self.violation(format!("input_stream_data with SequenceNumber {seq}"));
            return;
        }
        if m.flags != 0 {
            self.violation(format!(
                "input_stream_data seq {seq}: Flags {} (the plugin writes 0)",
                m.flags
            ));
        }
        if !self.seen.insert(seq) {
            self.rec(|s| s.client_retransmissions += 1);
        } else if m.payload_type == payload::OUTPUT {
            self.data_in += 1;
            let n = self.faults.drop_incoming_every;
            if n > 0 && self.data_in.is_multiple_of(u64::from(n)) {
                self.rec(|s| s.faults_applied.dropped_incoming += 1);
                return;
            }
        }
        if seq == self.expected {
            if let Processed::NotReady = self.process(&m).await {
                return;
            }
            self.ack(&m).await;
            self.expected += 1;
            self.rec(|s| s.messages_up += 1);
            while let Some(next) = self.buffered.remove(&self.expected) {
                if let Processed::NotReady = self.process(&next).await {
                    self.buffered.insert(next.sequence_number, next);
                    break;
                }
                self.expected += 1;
                self.rec(|s| s.messages_up += 1);
            }
        } else if seq > self.expected {
            self.ack(&m).await;
            if !self.buffered.contains_key(&seq) {
                self.rec(|s| s.out_of_order_received += 1);
                self.buffered.insert(seq, m);
            }
        } else {
            // Already processed: acknowledge again.
            self.ack(&m).await;
        }
    }

    /// Act on a client stream message taken in sequence.
    async fn process(&mut self, m: &AgentMessage) -> Processed {
        let seq = m.sequence_number;
        match m.payload_type {
            payload::HANDSHAKE_RESPONSE => {
                if self.phase != Phase::Handshake {
                    self.violation(format!(
                        "a HandshakeResponse (seq {seq}) outside the handshake"
                    ));
                    return Processed::Done;
                }
                self.on_handshake_response(m).await;
                Processed::Done
            }
            payload::OUTPUT => {
                if self.phase == Phase::Handshake {
                    self.violation(format!(
                        "data (seq {seq}) before HandshakeComplete: the agent discards it"
                    ));
                    return Processed::Done;
                }
                match &mut self.tcp_w {
                    Some(w) => {
                        if w.write_all(&m.payload).await.is_ok() {
                            let n = m.payload.len() as u64;
                            self.rec(|s| s.bytes_up += n);
                        } else {
                            self.close_port();
                            self.begin_end(SsmEnd::SshdClosed, String::new());
                        }
                        Processed::Done
                    }
                    // Ending: the port is closed; the data goes nowhere.
                    None if self.phase == Phase::Drain => Processed::Done,
                    None => Processed::NotReady,
                }
            }
            payload::FLAG => {
                let flag = match m.payload.as_slice() {
                    [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                    other => {
                        self.violation(format!(
                            "Flag (seq {seq}) payload of {} bytes, not a 4-byte big-endian integer",
                            other.len()
                        ));
                        return Processed::Done;
                    }
                };
                self.rec(|s| {
                    s.client_flags.push(flag);
                    match flag {
                        FLAG_DISCONNECT_TO_PORT => s.client_disconnect_flag = true,
                        FLAG_TERMINATE_SESSION => s.client_terminate_flag = true,
                        _ => {}
                    }
                });
                match flag {
                    FLAG_DISCONNECT_TO_PORT => {
                        self.close_port();
                        self.begin_end(SsmEnd::ClientDisconnectFlag, String::new());
                    }
                    FLAG_TERMINATE_SESSION => {
                        self.close_port();
                        self.begin_end(SsmEnd::ClientTerminateFlag, String::new());
                    }
                    other => self.violation(format!("unknown Flag {other} (seq {seq})")),
                }
                Processed::Done
            }
            other => {
                self.violation(format!(
                    "input_stream_data seq {seq} with payload type {other}, which a port session does not take"
                ));
                Processed::Done
            }
        }
    }

    /// The HandshakeResponse: check it, send HandshakeComplete, connect to
    /// the port.
    async fn on_handshake_response(&mut self, m: &AgentMessage) {
        let response: Option<Value> = serde_json::from_slice(&m.payload).ok();
        let Some(response) = response else {
            self.violation(format!(
                "HandshakeResponse is not JSON: {:?}",
                truncate(&String::from_utf8_lossy(&m.payload))
            ));
            self.begin_end(
                SsmEnd::HandshakeFailed,
                "Encountered error while initiating handshake. Unmarshalling of HandshakeResponse message failed".into(),
            );
            return;
        };
        let mut problems = Vec::new();
        if response
            .get("ClientVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push("HandshakeResponse without ClientVersion".to_owned());
        }
        let actions = response
            .get("ProcessedClientActions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let session_type = actions
            .iter()
            .find(|a| a.get("ActionType").and_then(Value::as_str) == Some("SessionType"));
        let mut failure = None;
        match session_type {
            None => {
                problems.push("HandshakeResponse does not answer the SessionType action".to_owned())
            }
            Some(a) if a.get("ActionStatus").and_then(Value::as_i64) != Some(1) => {
                failure = Some(format!(
                    "SessionType failed on client with status {} error: {}",
                    a.get("ActionStatus").unwrap_or(&Value::Null),
                    a.get("Error").and_then(Value::as_str).unwrap_or_default()
                ));
            }
            Some(_) => {}
        }
        for a in &actions {
            let t = a.get("ActionType").and_then(Value::as_str);
            if t != Some("SessionType") {
                problems.push(format!(
                    "HandshakeResponse answers an action the agent did not request: {t:?}"
                ));
            }
        }
        self.rec(|s| {
            s.handshake_response = Some(response.clone());
            s.violations.extend(problems);
        });
        if let Some(f) = failure {
            self.violation(format!("the handshake failed: {f}"));
            self.begin_end(
                SsmEnd::HandshakeFailed,
                format!("Encountered error while initiating handshake. {f}"),
            );
            return;
        }
        let took = self.handshake_started.elapsed().as_nanos() as u64;
        let complete = json!({ "HandshakeTimeToComplete": took, "CustomerMessage": "" });
        self.send_stream(
            payload::HANDSHAKE_COMPLETE,
            complete.to_string().into_bytes(),
        )
        .await;
        self.rec(|s| s.handshake_complete_sent = true);
        self.phase = Phase::Relay;
        // The port on the instance: the bed's sshd stands for port 22.
        let ip = {
            let st = self.api.lock();
            st.instances
                .iter()
                .find(|i| i.id == self.target)
                .map(|i| i.private_ip.clone())
        };
        let port = if self.port_number == "22" {
            Some(self.sshd_port)
        } else {
            self.port_number.parse::<u16>().ok()
        };
        let conn = match (ip, port) {
            (Some(ip), Some(port)) => TcpStream::connect((ip.as_str(), port))
                .await
                .map_err(|e| format!("dial tcp {ip}:{port}: {e}")),
            _ => Err(format!("no instance {}", self.target)),
        };
        match conn {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let (r, w) = tcp.into_split();
                self.tcp_r = Some(r);
                self.tcp_w = Some(w);
                self.rec(|s| s.connected_to_instance = true);
            }
            Err(e) => {
                self.begin_end(
                    SsmEnd::InstanceUnreachable,
                    format!("Unable to connect to specified port: {e}"),
                );
            }
        }
    }
}

async fn read_port(r: &mut Option<OwnedReadHalf>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}
