//! The AWS Systems Manager (Session Manager) stand-in, API side:
//! `StartSession`, `TerminateSession` and `DescribeInstanceInformation`
//! (AWS JSON 1.1, `X-Amz-Target: AmazonSSM.<Operation>`, SigV4 signing
//! name `ssm`), served by the API stand-in on the bed's one endpoint; plus
//! the [`TestBed`] methods that set up and observe Session Manager
//! sessions. The data channel a session's `StreamUrl` leads to — a TLS
//! WebSocket where the stand-in plays the SSM Agent and relays to the bed's
//! sshd — is `ssm_agent.rs`.
//!
//! Which instances are managed: [`InstanceSpec::managed`] (default false)
//! and [`InstanceSpec::ssm_ping`] (default `Online`), changed at run time
//! with [`TestBed::set_managed`] / [`TestBed::set_ssm_ping`]. An unmanaged
//! instance is absent from DescribeInstanceInformation; a managed one that
//! is not running reports `ConnectionLost` where it was set `Online` (its
//! agent stopped pinging). StartSession needs a managed, `Online`, running
//! instance, or answers `TargetNotConnected` as SSM does (`"<id> is not
//! connected."`).
//!
//! The only session document served is `AWS-StartSSHSession` (parameters:
//! `portNumber`, default `["22"]`); any other name is `InvalidDocument`.
//!
//! Errors use the JSON 1.1 shape `{"__type": code, <message>}` where the
//! message member is named as in the service model: `Message` for the
//! modelled SSM exceptions (`TargetNotConnected`, `InvalidDocument`,
//! `InvalidInstanceId`, `InvalidNextToken`, `InternalServerError`,
//! `InvalidParameters`), `message` for `InvalidInstanceInformationFilterValue`
//! and for the errors common to all AWS JSON services (`AccessDeniedException`,
//! `ThrottlingException`, `ValidationException`, signature failures).
//! Statuses: 400 for client faults (SSM sends `AccessDeniedException` and
//! `ThrottlingException` with 400 too), 403 for a bad or expired
//! signature, 500 for `InternalServerError`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::api::{self, Api, InstanceRec, State};
use super::http::Response;
use super::{InstanceSpec, TestBed, timefmt};

/// `X-Amz-Target` prefix of the SSM API.
pub const TARGET_PREFIX: &str = "AmazonSSM.";
/// The document the stand-in serves.
pub const SSH_DOCUMENT: &str = "AWS-StartSSHSession";
/// What the stand-in's agent says it is (in DescribeInstanceInformation
/// and the handshake).
pub const AGENT_VERSION: &str = "3.3.1142.0";
/// The three ping statuses SSM knows.
pub const PING_STATUSES: [&str; 3] = ["Online", "ConnectionLost", "Inactive"];

type ApiError = (u16, String, String);

fn err(status: u16, code: &str, msg: impl Into<String>) -> ApiError {
    (status, code.to_owned(), msg.into())
}

// ------------------------------------------------------------------ state

/// Faults the stand-in's agent applies to a session's data channel, for
/// tests of the client's reliable delivery. Each counts the messages it
/// looks at from 1 and acts on every `n`-th (0 = off), so a run is
/// deterministic; what it did is counted in [`SsmSession::faults_applied`].
/// Set with [`TestBed::set_ssm_faults`]; a session keeps the faults set
/// when it was started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamFaults {
    /// Drop every n-th new client data message (`input_stream_data`,
    /// payload type Output): neither acknowledged nor delivered, so the
    /// client must send it again. Its retransmission is never dropped.
    pub drop_incoming_every: u32,
    /// Hold back every n-th outgoing data message (`output_stream_data`,
    /// payload type Output) and send it right after the next one: the
    /// client sees them out of order. (A held message with no successor
    /// goes out when its retransmission timer fires.)
    pub hold_outgoing_every: u32,
    /// Send every n-th outgoing data message twice.
    pub duplicate_outgoing_every: u32,
    /// Lose every n-th outgoing data message on its first transmission:
    /// it reaches the client only when retransmitted (after later ones).
    pub lose_outgoing_every: u32,
}

impl StreamFaults {
    pub fn none() -> StreamFaults {
        StreamFaults::default()
    }
    pub fn is_none(&self) -> bool {
        *self == StreamFaults::default()
    }
}

/// How often each [`StreamFaults`] fault was applied to a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub dropped_incoming: u64,
    pub held_outgoing: u64,
    pub duplicated_outgoing: u64,
    pub lost_outgoing: u64,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsmEnd {
    /// sshd closed the TCP connection: the agent's port session ends
    /// (after waiting up to 2 s for its messages to be acknowledged), then
    /// `channel_closed` goes to the client.
    SshdClosed,
    /// The client sent the TerminateSession flag (payload type Flag, 2).
    ClientTerminateFlag,
    /// The client sent the DisconnectToPort flag (1): for an SSH session
    /// the agent closes its TCP connection and the session ends.
    ClientDisconnectFlag,
    /// The client sent a `channel_closed` message.
    ClientChannelClosed,
    /// The client closed the WebSocket (close frame with this code; 1005:
    /// none given).
    ClientClosed(u16),
    /// The WebSocket broke without a close handshake.
    ClientDropped,
    /// `TerminateSession` was called.
    TerminateApi,
    /// [`TestBed::ssm_agent_close`].
    AgentClosed,
    /// The open frame's token was wrong or missing.
    BadToken,
    /// No open frame came (or something else came first).
    NoOpenFrame,
    /// The handshake failed (no or a failed HandshakeResponse).
    HandshakeFailed,
    /// The agent could not connect to the port on the instance.
    InstanceUnreachable,
}

/// One session, from StartSession on: what the client asked for and
/// everything the stand-in's agent saw on its data channel.
#[derive(Debug, Clone)]
pub struct SsmSession {
    pub session_id: String,
    /// The instance id (StartSession's `Target`).
    pub target: String,
    pub document_name: String,
    /// StartSession's `Parameters`, as sent.
    pub parameters: BTreeMap<String, Vec<String>>,
    pub reason: Option<String>,
    /// The `TokenValue` handed out.
    pub token: String,
    pub stream_url: String,
    pub started: SystemTime,
    /// Faults in force for this session.
    pub faults: StreamFaults,
    /// WebSocket connections accepted for the session (1 normally; a
    /// second one is refused).
    pub connections: u32,
    /// The client's first (text) frame, parsed, if it was JSON.
    pub open_frame: Option<Value>,
    /// Whether the open frame carried the session's token (None: no open
    /// frame yet).
    pub token_ok: Option<bool>,
    pub handshake_request_sent: bool,
    /// The client's HandshakeResponse payload.
    pub handshake_response: Option<Value>,
    pub handshake_complete_sent: bool,
    /// The agent's TCP connection to the instance's port was made.
    pub connected_to_instance: bool,
    /// Bytes client → sshd (delivered in order) and sshd → client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Client stream messages accepted (each sequence number once).
    pub messages_up: u64,
    /// Stream messages the agent sent (each sequence number once).
    pub messages_down: u64,
    pub acks_sent: u64,
    /// Acknowledgements from the client of the agent's messages (first
    /// ones; see `duplicate_acks_received`).
    pub acks_received: u64,
    /// Acknowledgements for messages already acknowledged or unknown.
    pub duplicate_acks_received: u64,
    /// Client stream messages whose sequence number had been received
    /// before (the client sent it again).
    pub client_retransmissions: u64,
    /// Client stream messages that arrived ahead of sequence and were
    /// buffered until the gap was filled.
    pub out_of_order_received: u64,
    /// The agent's own retransmissions (no acknowledgement in time).
    pub retransmissions: u64,
    pub faults_applied: FaultCounts,
    /// Flag payloads the client sent (1 DisconnectToPort, 2 TerminateSession).
    pub client_flags: Vec<u32>,
    pub client_terminate_flag: bool,
    pub client_disconnect_flag: bool,
    pub client_channel_closed: bool,
    pub terminate_api_called: bool,
    /// The `Output` of the `channel_closed` the agent sent, if it sent one.
    pub channel_closed_sent: Option<String>,
    /// The close code of the client's WebSocket close frame, if any.
    pub client_close_code: Option<u16>,
    pub ended_by: Option<SsmEnd>,
    /// The session is over (terminated, or its channel closed).
    pub terminated: bool,
    pub ended: Option<SystemTime>,
    /// Protocol errors by the client: malformed or rejected messages,
    /// fields not as the session-manager-plugin writes them, a wrong ack.
    /// Tests of a client should assert this is empty.
    pub violations: Vec<String>,
}

impl SsmSession {
    /// The HandshakeResponse's `ClientVersion`, if one came.
    pub fn client_version(&self) -> Option<&str> {
        self.handshake_response
            .as_ref()?
            .get("ClientVersion")?
            .as_str()
    }
}

/// A refused WebSocket upgrade on the stream server.
#[derive(Debug, Clone)]
pub struct StreamRejection {
    pub status: u16,
    pub path: String,
    pub query: String,
    pub reason: String,
}

/// Something a test asks a live session's agent to do.
#[derive(Debug, Clone)]
pub enum Control {
    /// TerminateSession was called.
    Terminate,
    /// Send `channel_closed` with this `Output`, then close.
    AgentClose(String),
}

/// The stand-in's Session Manager state (inside the API state).
#[derive(Debug, Default)]
pub struct SsmState {
    pub sessions: Vec<SsmSession>,
    /// Live data channels, by session id.
    pub controls: HashMap<String, tokio::sync::mpsc::UnboundedSender<Control>>,
    pub faults: StreamFaults,
    /// Force DescribeInstanceInformation pages of at most this many.
    pub page_size: Option<usize>,
    /// The stream server's port (0 until it runs).
    pub stream_port: u16,
    /// The port StreamUrls name, when not the stream server's own: a delay
    /// proxy in front of it (`BedOptions::api_latency`).
    pub url_port: Option<u16>,
    pub rejections: Vec<StreamRejection>,
}

// ------------------------------------------------------------------- API

/// Statuses of SSM's error codes (AWS JSON 1.1).
pub fn status(code: &str) -> u16 {
    match code {
        "InternalServerError" | "InternalFailure" | "ServiceUnavailable" => 500,
        "InvalidSignatureException"
        | "MissingAuthenticationTokenException"
        | "IncompleteSignatureException" => 403,
        _ => 400,
    }
}

/// The message an injected failure (`TestBed::fail_next`) carries.
pub fn injected_message(code: &str, action: &str, params: &BTreeMap<String, String>) -> String {
    let resource = params
        .get("Target")
        .map(|t| format!("arn:aws:ec2:us-east-1:123456789012:instance/{t}"))
        .unwrap_or_else(|| "*".into());
    match code {
        "AccessDeniedException" => format!(
            "User: arn:aws:iam::123456789012:user/test is not authorized to perform: ssm:{action} on resource: {resource} because no identity-based policy allows the ssm:{action} action"
        ),
        "ThrottlingException" => "Rate exceeded".into(),
        "InternalServerError" => "An internal error has occurred".into(),
        "TargetNotConnected" => format!(
            "{} is not connected.",
            params.get("Target").map_or("", String::as_str)
        ),
        other => format!("Injected failure {other}"),
    }
}

/// The JSON 1.1 error answer, with the message member named as in the
/// service model.
pub fn error_response(status: u16, code: &str, msg: &str) -> Response {
    let key = match code {
        "TargetNotConnected"
        | "InvalidDocument"
        | "InvalidInstanceId"
        | "InvalidNextToken"
        | "InternalServerError"
        | "InvalidParameters"
        | "DoesNotExistException" => "Message",
        _ => "message",
    };
    let mut body = serde_json::Map::new();
    body.insert("__type".into(), Value::String(code.to_owned()));
    // InvalidFilterKey has no message member at all.
    if code != "InvalidFilterKey" {
        body.insert(key.into(), Value::String(msg.to_owned()));
    }
    let mut r = Response::new(
        status,
        "application/x-amz-json-1.1",
        Value::Object(body).to_string(),
    );
    r.headers
        .push(("x-amzn-RequestId".into(), api::uuid_like()));
    r
}

fn json_response(v: Value) -> Response {
    let mut r = Response::new(200, "application/x-amz-json-1.1", v.to_string());
    r.headers
        .push(("x-amzn-RequestId".into(), api::uuid_like()));
    r
}

/// A model constraint violation, as AWS JSON services word it.
fn validation(msg: impl Into<String>) -> ApiError {
    err(
        400,
        "ValidationException",
        format!("1 validation error detected: {}", msg.into()),
    )
}

/// The operations; anything else is `UnknownOperationException`.
pub fn handle(
    api: &Api,
    st: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    match action {
        "StartSession" => start_session(st, params),
        "TerminateSession" => terminate_session(st, params),
        "DescribeInstanceInformation" => describe_instance_information(api, st, params),
        other => Err(err(
            400,
            "UnknownOperationException",
            format!("Unknown operation {other:?}"),
        )),
    }
}

/// A top-level member that was JSON other than a string (the API
/// stand-in keeps those as JSON text).
fn json_member(params: &BTreeMap<String, String>, name: &str) -> Result<Option<Value>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(err(
                400,
                "SerializationException",
                format!("{name} is not valid JSON"),
            )),
        },
    }
}

/// `(^i-(\w{8}|\w{17})$)|(^mi-\w{17}$)`, the SSM model's InstanceId.
pub fn is_ssm_instance_id(id: &str) -> bool {
    let word = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if let Some(rest) = id.strip_prefix("mi-") {
        return rest.len() == 17 && word(rest);
    }
    id.strip_prefix("i-")
        .is_some_and(|rest| (rest.len() == 8 || rest.len() == 17) && word(rest))
}

/// An instance's ping status as SSM reports it now (None: not managed).
pub fn ping_status(i: &InstanceRec) -> Option<&str> {
    if !i.ssm_managed {
        return None;
    }
    if i.ssm_ping == "Online" && i.state != "running" {
        return Some("ConnectionLost");
    }
    Some(i.ssm_ping.as_str())
}

/// `^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$`:
/// a port number without leading zeros, 1-65535 (the document's pattern).
fn is_port_number(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('0')
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

fn start_session(st: &mut State, params: &BTreeMap<String, String>) -> Result<Response, ApiError> {
    let target = params
        .get("Target")
        .ok_or_else(|| {
            validation(
                "Value null at 'target' failed to satisfy constraint: Member must not be null",
            )
        })?
        .clone();
    if !(1..=400).contains(&target.len()) {
        return Err(validation(format!(
            "Value '{target}' at 'target' failed to satisfy constraint: Member must have length less than or equal to 400"
        )));
    }
    let reason = params.get("Reason").cloned();
    if let Some(r) = &reason
        && (r.is_empty() || r.chars().count() > 256 || r.contains('\n'))
    {
        return Err(validation(format!(
            "Value '{r}' at 'reason' failed to satisfy constraint: Member must satisfy regular expression pattern: ^.{{1,256}}$"
        )));
    }
    let document = params.get("DocumentName").cloned();
    if let Some(d) = &document {
        let ok = (3..=128).contains(&d.len())
            && d.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/')
            });
        if !ok {
            return Err(validation(format!(
                "Value '{d}' at 'documentName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.:/]{{3,128}}$"
            )));
        }
    }
    // The parameters, as sent: {"name": ["value", ...]}.
    let mut parameters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match json_member(params, "Parameters")? {
        None => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let Value::Array(items) = v else {
                    return Err(err(
                        400,
                        "SerializationException",
                        format!("Parameters.{k} must be a list of strings"),
                    ));
                };
                let mut values = Vec::new();
                for item in items {
                    let Value::String(s) = item else {
                        return Err(err(
                            400,
                            "SerializationException",
                            format!("Parameters.{k} must be a list of strings"),
                        ));
                    };
                    values.push(s);
                }
                parameters.insert(k, values);
            }
        }
        Some(_) => {
            return Err(err(
                400,
                "SerializationException",
                "Parameters must be a map of lists of strings",
            ));
        }
    }

    // The document first (a static resource), then its parameters, then
    // the target.
    match document.as_deref() {
        Some(SSH_DOCUMENT) => {}
        Some(other) => {
            return Err(err(
                400,
                "InvalidDocument",
                format!("Document with name {other} does not exist."),
            ));
        }
        None => {
            return Err(err(
                400,
                "InvalidDocument",
                format!(
                    "The test bed serves {SSH_DOCUMENT} sessions only; no DocumentName means a shell session"
                ),
            ));
        }
    }
    for (name, values) in &parameters {
        if name != "portNumber" {
            return Err(err(
                400,
                "InvalidParameters",
                format!("Parameter {name} is not defined in document {SSH_DOCUMENT}."),
            ));
        }
        match values.as_slice() {
            [one] if is_port_number(one) => {}
            _ => {
                return Err(err(
                    400,
                    "InvalidParameters",
                    format!(
                        "Parameter portNumber of document {SSH_DOCUMENT} must be one port number (1-65535), got {values:?}."
                    ),
                ));
            }
        }
    }
    let connected = st
        .instances
        .iter()
        .find(|i| i.id == target)
        .is_some_and(|i| i.state == "running" && ping_status(i) == Some("Online"));
    if !connected {
        return Err(err(
            400,
            "TargetNotConnected",
            format!("{target} is not connected."),
        ));
    }

    // Session ids start with the caller's name (an IAM user's name, or an
    // assumed role's session name).
    let caller = match &st.diag.iam.caller {
        super::iam::CallerSpec::User { name, .. } => name.clone(),
        super::iam::CallerSpec::AssumedRole { session, .. } => session.clone(),
    };
    let session_id = format!("{caller}-{}", api::random_hex(17));
    let token = format!(
        "AAEAA{}",
        base64_std(&api::random_bytes::<96>()).trim_end_matches('=')
    );
    let cell = base64_std(&api::random_bytes::<32>()).replace('=', "%3D");
    let stream_url = format!(
        "wss://127.0.0.1:{}/v1/data-channel/{session_id}?role=publish_subscribe&cell-number={cell}",
        st.ssm.url_port.unwrap_or(st.ssm.stream_port)
    );
    st.ssm.sessions.push(SsmSession {
        session_id: session_id.clone(),
        target,
        document_name: SSH_DOCUMENT.to_owned(),
        parameters,
        reason,
        token: token.clone(),
        stream_url: stream_url.clone(),
        started: SystemTime::now(),
        faults: st.ssm.faults,
        connections: 0,
        open_frame: None,
        token_ok: None,
        handshake_request_sent: false,
        handshake_response: None,
        handshake_complete_sent: false,
        connected_to_instance: false,
        bytes_up: 0,
        bytes_down: 0,
        messages_up: 0,
        messages_down: 0,
        acks_sent: 0,
        acks_received: 0,
        duplicate_acks_received: 0,
        client_retransmissions: 0,
        out_of_order_received: 0,
        retransmissions: 0,
        faults_applied: FaultCounts::default(),
        client_flags: Vec::new(),
        client_terminate_flag: false,
        client_disconnect_flag: false,
        client_channel_closed: false,
        terminate_api_called: false,
        channel_closed_sent: None,
        client_close_code: None,
        ended_by: None,
        terminated: false,
        ended: None,
        violations: Vec::new(),
    });
    Ok(json_response(json!({
        "SessionId": session_id,
        "TokenValue": token,
        "StreamUrl": stream_url,
    })))
}

/// Ends a session: its live data channel (if any) is told to close. An
/// unknown or already terminated id is answered with success, as the
/// service does (its model lists only InternalServerError).
fn terminate_session(
    st: &mut State,
    params: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let id = params
        .get("SessionId")
        .ok_or_else(|| {
            validation(
                "Value null at 'sessionId' failed to satisfy constraint: Member must not be null",
            )
        })?
        .clone();
    if !(1..=96).contains(&id.len()) {
        return Err(validation(format!(
            "Value '{id}' at 'sessionId' failed to satisfy constraint: Member must have length less than or equal to 96"
        )));
    }
    if let Some(s) = st.ssm.sessions.iter_mut().find(|s| s.session_id == id) {
        s.terminate_api_called = true;
        match st.ssm.controls.get(&id) {
            Some(tx) if !s.terminated => {
                let _ = tx.send(Control::Terminate);
            }
            _ => {
                if !s.terminated {
                    s.terminated = true;
                    s.ended_by = Some(SsmEnd::TerminateApi);
                    s.ended = Some(SystemTime::now());
                }
            }
        }
    }
    Ok(json_response(json!({ "SessionId": id })))
}

/// One filter: key and values, from `Filters` or the older
/// `InstanceInformationFilterList`.
struct Filter {
    key: String,
    values: Vec<String>,
}

fn parse_filters(
    list: Option<Value>,
    key_name: &str,
    values_name: &str,
    member: &str,
) -> Result<Vec<Filter>, ApiError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = list else {
        return Err(err(
            400,
            "SerializationException",
            format!("{member} must be a list"),
        ));
    };
    let mut out = Vec::new();
    for item in items {
        let key = item.get(key_name).and_then(Value::as_str);
        let values = item.get(values_name).and_then(Value::as_array);
        let (Some(key), Some(values)) = (key, values) else {
            return Err(validation(format!(
                "Value null at '{member}.member.{}' failed to satisfy constraint: Member must not be null",
                if key.is_none() { key_name } else { values_name }
            )));
        };
        if values.is_empty() || values.len() > 100 {
            return Err(validation(format!(
                "Value '[]' at '{member}.member.{values_name}' failed to satisfy constraint: Member must have length between 1 and 100"
            )));
        }
        let mut vals = Vec::new();
        for v in values {
            match v.as_str() {
                Some(s) if !s.is_empty() => vals.push(s.to_owned()),
                _ => {
                    return Err(err(
                        400,
                        "InvalidInstanceInformationFilterValue",
                        format!("The filter value {v} is not valid."),
                    ));
                }
            }
        }
        out.push(Filter {
            key: key.to_owned(),
            values: vals,
        });
    }
    Ok(out)
}

fn describe_instance_information(
    api: &Api,
    st: &mut State,
    params: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let max_results = match json_member(params, "MaxResults")? {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if (5..=50).contains(&n) => Some(n as usize),
            _ => {
                return Err(validation(format!(
                    "Value '{v}' at 'maxResults' failed to satisfy constraint: Member must have value between 5 and 50"
                )));
            }
        },
    };
    let mut filters = parse_filters(json_member(params, "Filters")?, "Key", "Values", "filters")?;
    let old = parse_filters(
        json_member(params, "InstanceInformationFilterList")?,
        "key",
        "valueSet",
        "instanceInformationFilterList",
    )?;
    for f in &old {
        // The older list's key is an enum.
        if !matches!(
            f.key.as_str(),
            "InstanceIds"
                | "AgentVersion"
                | "PingStatus"
                | "PlatformTypes"
                | "ActivationIds"
                | "IamRole"
                | "ResourceType"
                | "AssociationStatus"
        ) {
            return Err(err(400, "InvalidFilterKey", ""));
        }
    }
    filters.extend(old);
    for f in &filters {
        match f.key.as_str() {
            "InstanceIds" => {
                let bad: Vec<&String> =
                    f.values.iter().filter(|v| !is_ssm_instance_id(v)).collect();
                if !bad.is_empty() {
                    return Err(err(
                        400,
                        "InvalidInstanceId",
                        format!(
                            "Invalid instance id(s): {}",
                            bad.iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            "PingStatus" => {
                if let Some(v) = f
                    .values
                    .iter()
                    .find(|v| !PING_STATUSES.contains(&v.as_str()))
                {
                    return Err(err(
                        400,
                        "InvalidInstanceInformationFilterValue",
                        format!("{v} is not a valid PingStatus."),
                    ));
                }
            }
            "PlatformTypes" | "ResourceType" | "AgentVersion" => {}
            k if k.starts_with("tag:") => {}
            _ => return Err(err(400, "InvalidFilterKey", "")),
        }
    }

    let matching: Vec<&InstanceRec> = st
        .instances
        .iter()
        .filter(|i| ping_status(i).is_some())
        .filter(|i| {
            filters.iter().all(|f| {
                let field: Vec<String> = match f.key.as_str() {
                    "InstanceIds" => vec![i.id.clone()],
                    "PingStatus" => ping_status(i).map(str::to_owned).into_iter().collect(),
                    "PlatformTypes" => vec![platform(i).0.to_owned()],
                    "ResourceType" => vec!["EC2Instance".to_owned()],
                    "AgentVersion" => vec![AGENT_VERSION.to_owned()],
                    k => {
                        let tag = k.strip_prefix("tag:").unwrap_or_default();
                        i.tags
                            .iter()
                            .filter(|(tk, _)| tk == tag)
                            .map(|(_, v)| v.clone())
                            .collect()
                    }
                };
                f.values.iter().any(|v| field.contains(v))
            })
        })
        .collect();

    let fingerprint = format!(
        "ssm|{:?}|{max_results:?}",
        filters
            .iter()
            .map(|f| (&f.key, &f.values))
            .collect::<Vec<_>>()
    );
    let offset = match params.get("NextToken") {
        None => 0,
        Some(tok) => match st.tokens.get(tok) {
            Some((fp, off)) if *fp == fingerprint => *off,
            _ => {
                return Err(err(
                    400,
                    "InvalidNextToken",
                    "The specified token isn't valid.",
                ));
            }
        },
    };
    let page = match (max_results, st.ssm.page_size) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => 50,
    }
    .max(1);
    let end = offset.saturating_add(page).min(matching.len());
    let now = SystemTime::now();
    let clock = api.now(st);
    let list: Vec<Value> = matching[offset.min(end)..end]
        .iter()
        .map(|i| instance_information(i, now, clock))
        .collect();
    let next = (end < matching.len()).then(|| {
        let tok = format!("AAEAAdGVzdGJlZC1zc20t{}", api::random_hex(48));
        st.tokens.insert(tok.clone(), (fingerprint.clone(), end));
        tok
    });
    let mut out = json!({ "InstanceInformationList": list });
    if let Some(tok) = next {
        out["NextToken"] = Value::String(tok);
    }
    Ok(json_response(out))
}

/// (PlatformType, PlatformName, PlatformVersion) for an instance.
fn platform(i: &InstanceRec) -> (&'static str, &'static str, &'static str) {
    if i.platform_details.contains("Windows") {
        (
            "Windows",
            "Microsoft Windows Server 2022 Datacenter",
            "10.0.20348",
        )
    } else {
        ("Linux", "Amazon Linux", "2023")
    }
}

fn instance_information(i: &InstanceRec, now: SystemTime, clock: i64) -> Value {
    let ping = ping_status(i).unwrap_or("Inactive");
    // Online: pinged a moment ago; otherwise an hour ago. Epoch seconds
    // with milliseconds, as the JSON protocol sends timestamps.
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let secs = if ping == "Online" {
        clock - 7
    } else {
        clock - 3600
    };
    let last_ping = secs as f64 + f64::from(millis) / 1000.0;
    let (ptype, pname, pversion) = platform(i);
    json!({
        "InstanceId": i.id,
        "PingStatus": ping,
        "LastPingDateTime": last_ping,
        "AgentVersion": AGENT_VERSION,
        "IsLatestVersion": true,
        "PlatformType": ptype,
        "PlatformName": pname,
        "PlatformVersion": pversion,
        "ResourceType": "EC2Instance",
        "IPAddress": i.private_ip,
        "ComputerName": i.private_dns,
        "AssociationStatus": "Success",
        "LastAssociationExecutionDate": (clock - 1800) as f64,
        "LastSuccessfulAssociationExecutionDate": (clock - 1800) as f64,
        "SourceId": i.id,
        "SourceType": "AWS::EC2::Instance",
    })
}

/// Standard base64 with padding.
pub fn base64_std(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// ISO 8601 with milliseconds, `2024-05-01T12:00:00.123Z`.
pub fn iso8601_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = timefmt::civil_secs(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

// --------------------------------------------------------------- TestBed

impl InstanceSpec {
    /// Make the instance managed by Systems Manager (default false): it
    /// appears in DescribeInstanceInformation and takes sessions.
    pub fn managed(mut self, yes: bool) -> Self {
        self.managed = yes;
        self
    }
    /// The instance's SSM `PingStatus` (Online, ConnectionLost or
    /// Inactive; default Online). Makes it managed.
    pub fn ssm_ping(mut self, status: &str) -> Self {
        assert!(
            PING_STATUSES.contains(&status),
            "unknown PingStatus {status:?}"
        );
        self.ssm_ping = status.to_owned();
        self.managed = true;
        self
    }
}

impl TestBed {
    /// Make an instance managed by Systems Manager or not (an unmanaged
    /// one is absent from DescribeInstanceInformation; StartSession says
    /// TargetNotConnected). Live sessions go on.
    pub fn set_managed(&self, instance_id: &str, yes: bool) {
        let mut st = self.api.lock();
        let rec = st
            .instances
            .iter_mut()
            .find(|i| i.id == instance_id)
            .unwrap_or_else(|| panic!("no instance {instance_id}"));
        rec.ssm_managed = yes;
    }

    /// Change an instance's SSM PingStatus (Online, ConnectionLost,
    /// Inactive). Makes it managed. Live sessions go on.
    pub fn set_ssm_ping(&self, instance_id: &str, status: &str) {
        assert!(
            PING_STATUSES.contains(&status),
            "unknown PingStatus {status:?}"
        );
        let mut st = self.api.lock();
        let rec = st
            .instances
            .iter_mut()
            .find(|i| i.id == instance_id)
            .unwrap_or_else(|| panic!("no instance {instance_id}"));
        rec.ssm_managed = true;
        rec.ssm_ping = status.to_owned();
    }

    /// Faults for the data channels of sessions started from now on
    /// ([`StreamFaults::none`] to stop).
    pub fn set_ssm_faults(&self, faults: StreamFaults) {
        self.api.lock().ssm.faults = faults;
    }

    /// Force DescribeInstanceInformation pages of at most `n` (0: off).
    pub fn set_ssm_page_size(&self, n: usize) {
        self.api.lock().ssm.page_size = (n > 0).then_some(n);
    }

    /// Every session started (StartSession accepted), in order.
    pub fn ssm_sessions(&self) -> Vec<SsmSession> {
        self.api.lock().ssm.sessions.clone()
    }

    /// One session, by id.
    pub fn ssm_session(&self, session_id: &str) -> Option<SsmSession> {
        self.api
            .lock()
            .ssm
            .sessions
            .iter()
            .find(|s| s.session_id == session_id)
            .cloned()
    }

    /// Refused WebSocket upgrades on the stream server (unknown session,
    /// bad path, a second connection...).
    pub fn ssm_stream_rejections(&self) -> Vec<StreamRejection> {
        self.api.lock().ssm.rejections.clone()
    }

    /// `wss://127.0.0.1:PORT`, the stream server (StreamUrls lead there).
    pub fn ssm_stream_endpoint(&self) -> String {
        format!("wss://127.0.0.1:{}", self.api.lock().ssm.stream_port)
    }

    /// Make the agent of a live session send `channel_closed` (with this
    /// `Output`) and close the channel, as when the instance ends the
    /// session. Returns false if the session has no live data channel.
    pub fn ssm_agent_close(&self, session_id: &str, output: &str) -> bool {
        let st = self.api.lock();
        match st.ssm.controls.get(session_id) {
            Some(tx) => tx.send(Control::AgentClose(output.to_owned())).is_ok(),
            None => false,
        }
    }

    /// Wait until the session has ended (see [`SsmSession::terminated`]);
    /// panics after `timeout`.
    pub fn wait_for_ssm_session_closed(&self, session_id: &str, timeout: Duration) -> SsmSession {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.ssm_session(session_id);
            if let Some(s) = &s
                && s.terminated
            {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "SSM session {session_id} did not close in {timeout:?}: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `n` sessions have been started and all of them have
    /// ended; panics after `timeout`.
    pub fn wait_for_ssm_sessions_closed(&self, n: usize, timeout: Duration) -> Vec<SsmSession> {
        let deadline = Instant::now() + timeout;
        loop {
            let sessions = self.ssm_sessions();
            if sessions.len() >= n && sessions.iter().all(|s| s.terminated) {
                return sessions;
            }
            assert!(
                Instant::now() < deadline,
                "SSM sessions did not close in {timeout:?}: {sessions:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Protocol violations of every session so far, each prefixed with its
    /// session id: tests of the client should assert this is empty.
    pub fn ssm_violations(&self) -> Vec<String> {
        self.api
            .lock()
            .ssm
            .sessions
            .iter()
            .flat_map(|s| {
                s.violations
                    .iter()
                    .map(move |v| format!("{}: {v}", s.session_id))
            })
            .collect()
    }
}
