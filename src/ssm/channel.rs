//! The Session Manager data channel's messages and reliable delivery
//! (protocols.md §10), as plain state with no I/O: [`Channel`] takes the
//! agent's messages and the local side's bytes, and says what to send, what
//! to hand to the local side and when to retransmit.
//!
//! A message is a 120-byte header, then the payload:
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 4 | header length (116: up to the payload length) |
//! | 4 | 32 | message type, ASCII, padded with spaces |
//! | 36 | 4 | schema version (1) |
//! | 40 | 8 | created, ms since the epoch |
//! | 48 | 8 | sequence number (signed) |
//! | 56 | 8 | flags |
//! | 64 | 16 | message id: a UUID, its low 8 bytes first, then its high 8 |
//! | 80 | 32 | SHA-256 of the payload |
//! | 112 | 4 | payload type |
//! | 116 | 4 | payload length |
//! | 120 | … | payload |
//!
//! Integers are big-endian. Each direction numbers its stream messages from
//! 0 (the handshake's messages included); every stream message is
//! acknowledged by an `acknowledge` message naming its type, id and
//! sequence number. A sender retransmits what is not acknowledged within a
//! timeout estimated from the round trips seen (Jacobson/Karels); a
//! receiver delivers in sequence order, holding what comes early and
//! dropping (but acknowledging again) what it already has.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const INPUT_STREAM_DATA: &str = "input_stream_data";
pub const OUTPUT_STREAM_DATA: &str = "output_stream_data";
pub const ACKNOWLEDGE: &str = "acknowledge";
pub const CHANNEL_CLOSED: &str = "channel_closed";
pub const START_PUBLICATION: &str = "start_publication";
pub const PAUSE_PUBLICATION: &str = "pause_publication";

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 120;
/// The header length field: everything before the payload length.
const HEADER_LENGTH: u32 = 116;
const TYPE_BYTES: usize = 32;

/// Payload types.
pub mod payload {
    pub const OUTPUT: u32 = 1;
    pub const ERROR: u32 = 2;
    pub const HANDSHAKE_REQUEST: u32 = 5;
    pub const HANDSHAKE_RESPONSE: u32 = 6;
    pub const HANDSHAKE_COMPLETE: u32 = 7;
    pub const FLAG: u32 = 10;
    pub const STDERR: u32 = 11;
}

/// Flag payloads (a big-endian u32).
pub mod flag {
    pub const DISCONNECT_TO_PORT: u32 = 1;
    pub const TERMINATE_SESSION: u32 = 2;
    pub const CONNECT_TO_PORT_ERROR: u32 = 3;
}

/// Largest payload the client puts in one message (what AWS's own client
/// sends).
pub const MAX_PAYLOAD: usize = 1024;
/// Most messages sent and not yet acknowledged; reading the local side
/// waits beyond this.
pub const WINDOW: usize = 2048;
/// Most early messages held for reordering; more are dropped unacknowledged
/// (the agent sends them again).
const MAX_EARLY: usize = 10_000;
/// A message nobody acknowledges for this long ends the session.
pub const GIVE_UP: Duration = Duration::from_secs(300);

const INITIAL_RTT: f64 = 0.1;
const INITIAL_RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(1);
const CLOCK_GRANULARITY: f64 = 0.010;

/// One message of the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: String,
    pub schema_version: u32,
    pub created_ms: u64,
    pub sequence: i64,
    pub flags: u64,
    /// The UUID's bytes in the usual (RFC 4122) order.
    pub id: [u8; 16],
    pub payload_type: u32,
    pub payload: Vec<u8>,
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("the header length is {0}, not 116")]
    HeaderLength(u32),
    #[error("the payload length says {said} bytes, the message has {has}")]
    PayloadLength { said: u32, has: usize },
    #[error("the payload does not match its SHA-256 digest")]
    Digest,
    #[error("the message type is not ASCII")]
    Kind,
}

impl Message {
    /// A new message of `kind` with a fresh id, created now.
    pub fn new(kind: &str, sequence: i64, payload_type: u32, payload: Vec<u8>) -> Message {
        Message {
            kind: kind.to_owned(),
            schema_version: 1,
            created_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            sequence,
            flags: 0,
            id: new_uuid(),
            payload_type,
            payload,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.payload.len());
        out.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        let mut kind = [b' '; TYPE_BYTES];
        let n = self.kind.len().min(TYPE_BYTES);
        kind[..n].copy_from_slice(&self.kind.as_bytes()[..n]);
        out.extend_from_slice(&kind);
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.id[8..]);
        out.extend_from_slice(&self.id[..8]);
        out.extend_from_slice(&Sha256::digest(&self.payload));
        out.extend_from_slice(&self.payload_type.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses one message; the digest is checked when there is a payload.
    pub fn decode(raw: &[u8]) -> Result<Message, Malformed> {
        if raw.len() < HEADER_BYTES {
            return Err(Malformed::Short(raw.len()));
        }
        let u32_at = |at: usize| u32::from_be_bytes(raw[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_be_bytes(raw[at..at + 8].try_into().unwrap_or_default());
        let header_length = u32_at(0);
        if header_length != HEADER_LENGTH {
            return Err(Malformed::HeaderLength(header_length));
        }
        let kind = &raw[4..4 + TYPE_BYTES];
        if !kind.is_ascii() {
            return Err(Malformed::Kind);
        }
        let kind = String::from_utf8_lossy(kind)
            .trim_end_matches([' ', '\0'])
            .to_owned();
        let said = u32_at(116);
        let payload = &raw[HEADER_BYTES..];
        if said as usize != payload.len() {
            return Err(Malformed::PayloadLength {
                said,
                has: payload.len(),
            });
        }
        if !payload.is_empty() && Sha256::digest(payload).as_slice() != &raw[80..112] {
            return Err(Malformed::Digest);
        }
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&raw[64..72]);
        id[..8].copy_from_slice(&raw[72..80]);
        Ok(Message {
            kind,
            schema_version: u32_at(36),
            created_ms: u64_at(40),
            sequence: u64_at(48) as i64,
            flags: u64_at(56),
            id,
            payload_type: u32_at(112),
            payload: payload.to_vec(),
        })
    }
}

/// A random (version 4) UUID.
pub fn new_uuid() -> [u8; 16] {
    let mut id = [0u8; 16];
    ssh_key::rand_core::RngCore::fill_bytes(&mut ssh_key::rand_core::OsRng, &mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_text(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The payload of an `acknowledge` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    #[serde(rename = "AcknowledgedMessageType")]
    pub kind: String,
    #[serde(rename = "AcknowledgedMessageId")]
    pub id: String,
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub sequence: i64,
    #[serde(rename = "IsSequentialMessage", default)]
    pub sequential: bool,
}

#[derive(Debug, Deserialize)]
struct HandshakeRequest {
    #[serde(rename = "AgentVersion", default)]
    agent_version: String,
    #[serde(rename = "RequestedClientActions", default)]
    actions: Vec<RequestedAction>,
}

#[derive(Debug, Deserialize)]
struct RequestedAction {
    #[serde(rename = "ActionType", default)]
    kind: String,
    #[serde(rename = "ActionParameters", default)]
    parameters: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct HandshakeComplete {
    #[serde(rename = "CustomerMessage", default)]
    customer_message: String,
}

#[derive(Debug, Deserialize)]
struct ChannelClosed {
    #[serde(rename = "Output", default)]
    output: String,
}

/// What the channel asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send this binary message.
    Send(Vec<u8>),
    /// Bytes from the instance's port, in order: to the local side.
    Data(Vec<u8>),
    /// The handshake is done: the local side's bytes may flow.
    Ready {
        agent_version: String,
        message: String,
    },
    /// The agent asked for something this client cannot do (KMS
    /// encryption): the session cannot work.
    Refused(String),
    /// The agent could not connect to the port.
    PortUnreachable,
    /// The agent reported an error in the stream (payload type Error/StdErr).
    AgentError(String),
    /// The agent closed the channel, maybe saying why.
    Closed(String),
}

struct Unacked {
    sequence: i64,
    bytes: Vec<u8>,
    first_sent: Instant,
    last_sent: Instant,
    resent: bool,
}

/// The client's side of one data channel.
pub struct Channel {
    next_sequence: i64,
    expected: i64,
    early: BTreeMap<i64, Message>,
    unacked: VecDeque<Unacked>,
    rtt: f64,
    rtt_variation: f64,
    rto: Duration,
    ready: bool,
    paused: bool,
    agent_version: String,
    /// Counters, for `-v` and tests.
    pub retransmitted: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            next_sequence: 0,
            expected: 0,
            early: BTreeMap::new(),
            unacked: VecDeque::new(),
            rtt: INITIAL_RTT,
            rtt_variation: 0.0,
            rto: INITIAL_RTO,
            ready: false,
            paused: false,
            agent_version: String::new(),
            retransmitted: 0,
            reordered: 0,
            duplicates: 0,
            malformed: 0,
        }
    }
}

impl Channel {
    /// Whether the local side's bytes may be sent now: the handshake is
    /// done, the agent has not paused publication, and the window has room.
    pub fn accepts_data(&self) -> bool {
        self.ready && !self.paused && self.unacked.len() < WINDOW
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked.len()
    }

    /// One binary message from the agent.
    pub fn receive(&mut self, raw: &[u8], now: Instant) -> Vec<Event> {
        let message = match Message::decode(raw) {
            Ok(m) => m,
            Err(err) => {
                // Not acknowledged: the agent sends it again.
                tracing::debug!(%err, "dropped a malformed message");
                self.malformed += 1;
                return Vec::new();
            }
        };
        let mut events = Vec::new();
        match message.kind.as_str() {
            OUTPUT_STREAM_DATA => self.stream_message(message, now, &mut events),
            ACKNOWLEDGE => match serde_json::from_slice::<Acknowledgement>(&message.payload) {
                Ok(ack) => self.acknowledged(ack.sequence, now),
                Err(err) => tracing::debug!(%err, "unreadable acknowledgement"),
            },
            CHANNEL_CLOSED => {
                let output = serde_json::from_slice::<ChannelClosed>(&message.payload)
                    .map(|c| c.output)
                    .unwrap_or_default();
                events.push(Event::Closed(output));
            }
            START_PUBLICATION => self.paused = false,
            PAUSE_PUBLICATION => self.paused = true,
            other => tracing::debug!(kind = other, "ignored a message of an unknown type"),
        }
        events
    }

    fn stream_message(&mut self, message: Message, now: Instant, events: &mut Vec<Event>) {
        let sequence = message.sequence;
        if sequence < self.expected {
            // Ours already: the acknowledgement was lost, send it again.
            self.duplicates += 1;
            events.push(Event::Send(acknowledge(&message)));
            return;
        }
        if sequence > self.expected {
            if self.early.len() >= MAX_EARLY {
                return;
            }
            if self.early.contains_key(&sequence) {
                self.duplicates += 1;
            } else {
                self.reordered += 1;
            }
            events.push(Event::Send(acknowledge(&message)));
            self.early.insert(sequence, message);
            return;
        }
        events.push(Event::Send(acknowledge(&message)));
        self.deliver(message, now, events);
        self.expected += 1;
        while let Some(next) = self.early.remove(&self.expected) {
            self.deliver(next, now, events);
            self.expected += 1;
        }
    }

    /// Acts on one stream message, in sequence order.
    fn deliver(&mut self, message: Message, now: Instant, events: &mut Vec<Event>) {
        match message.payload_type {
            payload::OUTPUT => {
                if !message.payload.is_empty() {
                    events.push(Event::Data(message.payload));
                }
            }
            payload::HANDSHAKE_REQUEST => self.handshake(&message.payload, now, events),
            payload::HANDSHAKE_COMPLETE => {
                let said = serde_json::from_slice::<HandshakeComplete>(&message.payload)
                    .map(|c| c.customer_message)
                    .unwrap_or_default();
                self.ready = true;
                events.push(Event::Ready {
                    agent_version: self.agent_version.clone(),
                    message: said,
                });
            }
            payload::FLAG => {
                let value = message
                    .payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes);
                if value == Some(flag::CONNECT_TO_PORT_ERROR) {
                    events.push(Event::PortUnreachable);
                }
            }
            payload::ERROR | payload::STDERR => events.push(Event::AgentError(
                String::from_utf8_lossy(&message.payload).into_owned(),
            )),
            other => tracing::debug!(payload_type = other, "ignored a stream message"),
        }
    }

    /// Answers the agent's HandshakeRequest: a port session is what this
    /// client does; KMS encryption (a Session Manager preference) it cannot.
    fn handshake(&mut self, payload: &[u8], now: Instant, events: &mut Vec<Event>) {
        let request: HandshakeRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(err) => {
                events.push(Event::Refused(format!(
                    "the agent's handshake request is unreadable: {err}"
                )));
                return;
            }
        };
        let mut processed = Vec::new();
        let mut errors = Vec::new();
        let mut refused = None;
        for action in &request.actions {
            let (status, error) = match action.kind.as_str() {
                "SessionType" => {
                    let kind = action.parameters["SessionType"]
                        .as_str()
                        .unwrap_or_default();
                    if kind == "Port" {
                        (1, String::new())
                    } else {
                        let e = format!("session type {kind:?} is not a port session");
                        refused.get_or_insert_with(|| e.clone());
                        (2, e)
                    }
                }
                "KMSEncryption" => {
                    let e = "KMS encryption of sessions is not supported by this client".to_owned();
                    refused.get_or_insert_with(|| {
                        "the account's Session Manager preferences require KMS encryption of sessions, which eic-connect does not do".to_owned()
                    });
                    (2, e)
                }
                other => (3, format!("Unsupported action {other}")),
            };
            if !error.is_empty() {
                errors.push(error.clone());
            }
            processed.push(serde_json::json!({
                "ActionType": action.kind,
                "ActionStatus": status,
                "ActionResult": null,
                "Error": error,
            }));
        }
        let response = serde_json::json!({
            "ClientVersion": env!("CARGO_PKG_VERSION"),
            "ProcessedClientActions": processed,
            "Errors": errors,
        });
        let bytes = serde_json::to_vec(&response).unwrap_or_default();
        events.push(Event::Send(self.stream(
            payload::HANDSHAKE_RESPONSE,
            bytes,
            now,
        )));
        tracing::debug!(agent_version = %request.agent_version, "answered the agent's handshake");
        self.agent_version = request.agent_version;
        if let Some(reason) = refused {
            events.push(Event::Refused(reason));
        }
    }

    /// The local side's bytes, as messages of at most [`MAX_PAYLOAD`].
    pub fn send_data(&mut self, data: &[u8], now: Instant) -> Vec<Vec<u8>> {
        data.chunks(MAX_PAYLOAD)
            .map(|chunk| self.stream(payload::OUTPUT, chunk.to_vec(), now))
            .collect()
    }

    /// A flag message (e.g. [`flag::TERMINATE_SESSION`]).
    pub fn send_flag(&mut self, value: u32, now: Instant) -> Vec<u8> {
        self.stream(payload::FLAG, value.to_be_bytes().to_vec(), now)
    }

    /// A stream message with the next sequence number, kept until
    /// acknowledged.
    fn stream(&mut self, payload_type: u32, payload: Vec<u8>, now: Instant) -> Vec<u8> {
        let message = Message::new(INPUT_STREAM_DATA, self.next_sequence, payload_type, payload);
        self.next_sequence += 1;
        let bytes = message.encode();
        self.unacked.push_back(Unacked {
            sequence: message.sequence,
            bytes: bytes.clone(),
            first_sent: now,
            last_sent: now,
            resent: false,
        });
        bytes
    }

    fn acknowledged(&mut self, sequence: i64, now: Instant) {
        let Some(at) = self.unacked.iter().position(|u| u.sequence == sequence) else {
            return;
        };
        let Some(done) = self.unacked.remove(at) else {
            return;
        };
        // Karn: a retransmitted message's round trip is ambiguous.
        if !done.resent {
            self.measured(now.saturating_duration_since(done.first_sent).as_secs_f64());
        }
    }

    /// Jacobson/Karels: smoothed round trip and its variation give the
    /// retransmission timeout, at most [`MAX_RTO`].
    fn measured(&mut self, rtt: f64) {
        self.rtt_variation = 0.75 * self.rtt_variation + 0.25 * (self.rtt - rtt).abs();
        self.rtt = 0.875 * self.rtt + 0.125 * rtt;
        let rto = self.rtt + (4.0 * self.rtt_variation).max(CLOCK_GRANULARITY);
        self.rto = Duration::from_secs_f64(rto).min(MAX_RTO);
    }

    pub fn retransmission_timeout(&self) -> Duration {
        self.rto
    }

    /// When the next retransmission is due, if anything waits for an
    /// acknowledgement.
    pub fn next_due(&self) -> Option<Instant> {
        self.unacked.iter().map(|u| u.last_sent + self.rto).min()
    }

    /// Messages whose acknowledgement is overdue, to send again; an error
    /// once one has waited [`GIVE_UP`].
    pub fn due(&mut self, now: Instant) -> Result<Vec<Vec<u8>>, Duration> {
        let rto = self.rto;
        let mut again = Vec::new();
        for unacked in &mut self.unacked {
            if now.saturating_duration_since(unacked.first_sent) >= GIVE_UP {
                return Err(GIVE_UP);
            }
            if unacked.last_sent + rto <= now {
                unacked.last_sent = now;
                unacked.resent = true;
                again.push(unacked.bytes.clone());
            }
        }
        self.retransmitted += again.len() as u64;
        Ok(again)
    }
}

/// The acknowledgement of `message`.
pub fn acknowledge(message: &Message) -> Vec<u8> {
    let content = Acknowledgement {
        kind: message.kind.clone(),
        id: uuid_text(&message.id),
        sequence: message.sequence,
        sequential: true,
    };
    let mut ack = Message::new(
        ACKNOWLEDGE,
        0,
        0,
        serde_json::to_vec(&content).unwrap_or_default(),
    );
    ack.flags = 3;
    ack.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_agent(sequence: i64, payload_type: u32, payload: &[u8]) -> Vec<u8> {
        Message::new(OUTPUT_STREAM_DATA, sequence, payload_type, payload.to_vec()).encode()
    }

    fn handshake_request() -> Vec<u8> {
        let request = serde_json::json!({
            "AgentVersion": "3.3.0.0",
            "RequestedClientActions": [{
                "ActionType": "SessionType",
                "ActionParameters": {"SessionType": "Port", "Properties": {"portNumber": "22"}}
            }]
        });
        from_agent(
            0,
            payload::HANDSHAKE_REQUEST,
            &serde_json::to_vec(&request).unwrap(),
        )
    }

    fn sent(events: &[Event]) -> Vec<Message> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Send(b) => Some(Message::decode(b).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn data(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn ready(channel: &mut Channel, now: Instant) {
        channel.receive(&handshake_request(), now);
        let complete = from_agent(
            1,
            payload::HANDSHAKE_COMPLETE,
            br#"{"HandshakeTimeToComplete":1000,"CustomerMessage":""}"#,
        );
        let events = channel.receive(&complete, now);
        assert!(events.iter().any(|e| matches!(e, Event::Ready { .. })));
        assert!(channel.accepts_data());
    }

    #[test]
    fn header_layout_round_trips() {
        let mut m = Message::new(INPUT_STREAM_DATA, 7, payload::OUTPUT, b"hello".to_vec());
        m.id = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        m.created_ms = 0x0102_0304_0506_0708;
        let raw = m.encode();
        assert_eq!(raw.len(), 125);
        assert_eq!(&raw[..4], &[0, 0, 0, 116]);
        assert_eq!(&raw[4..21], b"input_stream_data");
        assert!(raw[21..36].iter().all(|&b| b == b' '));
        assert_eq!(&raw[36..40], &[0, 0, 0, 1]);
        assert_eq!(&raw[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&raw[48..56], &[0, 0, 0, 0, 0, 0, 0, 7]);
        // The UUID's low half first.
        assert_eq!(
            &raw[64..80],
            &[8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(&raw[80..112], Sha256::digest(b"hello").as_slice());
        assert_eq!(&raw[112..116], &[0, 0, 0, 1]);
        assert_eq!(&raw[116..120], &[0, 0, 0, 5]);
        assert_eq!(Message::decode(&raw).unwrap(), m);
        assert_eq!(uuid_text(&m.id), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let raw = Message::new(OUTPUT_STREAM_DATA, 0, 1, b"abc".to_vec()).encode();
        assert_eq!(Message::decode(&raw[..100]), Err(Malformed::Short(100)));
        let mut bad = raw.clone();
        bad[121] ^= 1;
        assert_eq!(Message::decode(&bad), Err(Malformed::Digest));
        let mut long = raw.clone();
        long.push(0);
        assert!(matches!(
            Message::decode(&long),
            Err(Malformed::PayloadLength { .. })
        ));
        let mut hl = raw;
        hl[3] = 120;
        assert_eq!(Message::decode(&hl), Err(Malformed::HeaderLength(120)));
    }

    #[test]
    fn the_handshake_is_answered_and_acknowledged() {
        let now = Instant::now();
        let mut channel = Channel::default();
        assert!(!channel.accepts_data());
        let events = channel.receive(&handshake_request(), now);
        let out = sent(&events);
        assert_eq!(out[0].kind, ACKNOWLEDGE);
        let ack: Acknowledgement = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!((ack.kind.as_str(), ack.sequence), (OUTPUT_STREAM_DATA, 0));
        assert_eq!(out[1].kind, INPUT_STREAM_DATA);
        assert_eq!(out[1].payload_type, payload::HANDSHAKE_RESPONSE);
        assert_eq!(out[1].sequence, 0);
        let response: serde_json::Value = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!(response["ProcessedClientActions"][0]["ActionStatus"], 1);
        assert!(!channel.accepts_data(), "not before HandshakeComplete");
        ready(&mut channel, now);
        let frames = channel.send_data(&[7u8; 2500], now);
        let seqs: Vec<i64> = frames
            .iter()
            .map(|f| Message::decode(f).unwrap().sequence)
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3],
            "1024-byte messages after the handshake response"
        );
    }

    #[test]
    fn kms_encryption_is_refused_with_a_reason() {
        let request = serde_json::json!({
            "RequestedClientActions": [
                {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "k"}},
                {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Port"}}
            ]
        });
        let mut channel = Channel::default();
        let events = channel.receive(
            &from_agent(
                0,
                payload::HANDSHAKE_REQUEST,
                &serde_json::to_vec(&request).unwrap(),
            ),
            Instant::now(),
        );
        let response: serde_json::Value =
            serde_json::from_slice(&sent(&events)[1].payload).unwrap();
        assert_eq!(response["ProcessedClientActions"][0]["ActionStatus"], 2);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Refused(r) if r.contains("KMS")))
        );
    }

    #[test]
    fn out_of_order_and_duplicate_messages_are_delivered_once_in_order() {
        let now = Instant::now();
        let mut channel = Channel::default();
        ready(&mut channel, now);
        let m2 = from_agent(2, payload::OUTPUT, b"ab");
        let m3 = from_agent(3, payload::OUTPUT, b"cd");
        let m4 = from_agent(4, payload::OUTPUT, b"ef");
        let mut got = Vec::new();
        for raw in [&m4, &m3, &m4, &m2, &m3, &m2] {
            let events = channel.receive(raw, now);
            // Everything is acknowledged, early, late or in order.
            assert_eq!(
                sent(&events)
                    .iter()
                    .filter(|m| m.kind == ACKNOWLEDGE)
                    .count(),
                1
            );
            got.extend(data(&events));
        }
        assert_eq!(got, b"abcdef");
        assert_eq!(channel.reordered, 2);
        assert_eq!(channel.duplicates, 3);
    }

    #[test]
    fn unacknowledged_messages_are_sent_again_until_acknowledged() {
        let t0 = Instant::now();
        let mut channel = Channel::default();
        ready(&mut channel, t0);
        // The handshake response is acknowledged at once.
        let response_ack = ack_for(INPUT_STREAM_DATA, 0);
        channel.receive(&response_ack, t0 + Duration::from_millis(20));
        let frames = channel.send_data(b"x", t0);
        assert_eq!(channel.in_flight(), 1);
        assert!(
            channel
                .due(t0 + Duration::from_millis(50))
                .unwrap()
                .is_empty()
        );
        let rto = channel.retransmission_timeout();
        let again = channel.due(t0 + rto).unwrap();
        assert_eq!(again, frames, "the same bytes again");
        assert_eq!(channel.retransmitted, 1);
        channel.receive(&ack_for(INPUT_STREAM_DATA, 1), t0 + rto);
        assert_eq!(channel.in_flight(), 0);
        assert_eq!(channel.next_due(), None);
        // One that is never acknowledged ends the session.
        channel.send_data(b"y", t0);
        assert!(channel.due(t0 + GIVE_UP).is_err());
    }

    #[test]
    fn the_timeout_follows_the_round_trips() {
        let mut channel = Channel::default();
        for _ in 0..50 {
            channel.measured(0.020);
        }
        let rto = channel.retransmission_timeout();
        assert!(
            rto >= Duration::from_millis(29) && rto < Duration::from_millis(40),
            "{rto:?}"
        );
        for _ in 0..50 {
            channel.measured(5.0);
        }
        assert_eq!(channel.retransmission_timeout(), MAX_RTO);
    }

    #[test]
    fn flow_control_and_closing() {
        let now = Instant::now();
        let mut channel = Channel::default();
        ready(&mut channel, now);
        channel.receive(
            &Message::new(PAUSE_PUBLICATION, 0, 0, Vec::new()).encode(),
            now,
        );
        assert!(!channel.accepts_data());
        channel.receive(
            &Message::new(START_PUBLICATION, 0, 0, Vec::new()).encode(),
            now,
        );
        assert!(channel.accepts_data());
        let flag = from_agent(2, payload::FLAG, &flag::CONNECT_TO_PORT_ERROR.to_be_bytes());
        assert!(
            channel
                .receive(&flag, now)
                .contains(&Event::PortUnreachable)
        );
        let closed = Message::new(
            CHANNEL_CLOSED,
            0,
            0,
            br#"{"Output":"bye","SessionId":"s"}"#.to_vec(),
        );
        assert_eq!(
            channel.receive(&closed.encode(), now),
            vec![Event::Closed("bye".into())]
        );
    }

    proptest::proptest! {
        /// Whatever arrives from the network, decoding never panics, and
        /// the channel takes any bytes without panicking.
        #[test]
        fn any_bytes_are_refused_or_taken_calmly(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Message::decode(&raw);
            let mut channel = Channel::default();
            let _ = channel.receive(&raw, Instant::now());
        }

        /// A message with a valid header but any payload and fields round-trips.
        #[test]
        fn messages_round_trip(
            kind in "[a-z_]{1,32}",
            sequence in proptest::num::i64::ANY,
            flags in proptest::num::u64::ANY,
            payload_type in proptest::num::u32::ANY,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
        ) {
            let mut m = Message::new(&kind, sequence, payload_type, payload);
            m.flags = flags;
            proptest::prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }

        /// Stream messages in any order, with any duplicates, come out once
        /// each and in sequence.
        #[test]
        fn any_arrival_order_delivers_in_sequence(order in proptest::collection::vec(0usize..12, 0..60)) {
            let now = Instant::now();
            let mut channel = Channel::default();
            ready(&mut channel, now);
            let mut got = Vec::new();
            for n in order.iter().copied().chain(0..12usize) {
                let raw = from_agent(n as i64 + 2, payload::OUTPUT, &[n as u8]);
                got.extend(data(&channel.receive(&raw, now)));
            }
            proptest::prop_assert_eq!(got, (0..12u8).collect::<Vec<_>>());
        }
    }

    fn ack_for(kind: &str, sequence: i64) -> Vec<u8> {
        let content = Acknowledgement {
            kind: kind.into(),
            id: String::new(),
            sequence,
            sequential: true,
        };
        Message::new(ACKNOWLEDGE, 0, 0, serde_json::to_vec(&content).unwrap()).encode()
    }
}
