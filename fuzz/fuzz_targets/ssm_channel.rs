//! Session Manager's agent is on the far side of the network: whatever
//! messages it sends, in whatever order, the client's channel never
//! panics, hands the local side each stream message's bytes at most once
//! and in sequence order, sends only well-formed messages, holds at most a
//! bounded number of early messages, and offers data only once the
//! handshake is complete.
//!
//! Input: records of [kind, sequence, payload type, length, payload…];
//! kind picks output_stream_data, acknowledge, channel_closed,
//! start/pause_publication or raw bytes (decoded as they are); one in
//! eight records has a payload byte flipped after encoding (a bad digest).
#![no_main]

use std::time::{Duration, Instant};

use eic_connect::ssm::channel::{
    ACKNOWLEDGE, CHANNEL_CLOSED, Channel, Event, Message, OUTPUT_STREAM_DATA, PAUSE_PUBLICATION,
    START_PUBLICATION, payload,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Message::decode(data);
    let start = Instant::now();
    let mut channel = Channel::default();
    let mut delivered: Vec<u8> = Vec::new();
    let mut complete = false;
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 4 {
        let (kind, seq, ptype, len) = (rest[0], rest[1], rest[2], rest[3] as usize);
        let body = &rest[4..(4 + len).min(rest.len())];
        rest = &rest[(4 + len).min(rest.len())..];
        step += 1;
        let now = start + Duration::from_millis(step * 37);
        let payload_type = match ptype % 6 {
            0 => payload::OUTPUT,
            1 => payload::HANDSHAKE_REQUEST,
            2 => payload::HANDSHAKE_COMPLETE,
            3 => payload::FLAG,
            4 => payload::ERROR,
            _ => u32::from(ptype),
        };
        let raw = match kind % 6 {
            0 | 1 => {
                // The data is the sequence number itself, so order shows.
                let bytes = if payload_type == payload::OUTPUT { vec![seq] } else { body.to_vec() };
                Message::new(OUTPUT_STREAM_DATA, i64::from(seq % 16), payload_type, bytes).encode()
            }
            2 => Message::new(ACKNOWLEDGE, 0, 0, body.to_vec()).encode(),
            3 => Message::new(CHANNEL_CLOSED, 0, 0, body.to_vec()).encode(),
            4 => Message::new(if seq % 2 == 0 { START_PUBLICATION } else { PAUSE_PUBLICATION }, 0, 0, Vec::new()).encode(),
            _ => body.to_vec(),
        };
        let mut raw = raw;
        // A corrupted payload (its digest no longer matches).
        if kind & 0xe0 == 0xe0 && kind % 6 != 5 && raw.len() > 120 {
            let at = 120 + usize::from(seq) % (raw.len() - 120);
            raw[at] ^= 0x55;
        }
        for event in channel.receive(&raw, now) {
            match event {
                Event::Send(bytes) => {
                    let m = Message::decode(&bytes).expect("the client sends well-formed messages");
                    assert!(m.kind == ACKNOWLEDGE || m.kind == "input_stream_data", "{}", m.kind);
                }
                Event::Data(bytes) => delivered.extend(bytes),
                Event::Ready { .. } => complete = true,
                _ => {}
            }
        }
        assert!(!channel.accepts_data() || complete, "data before HandshakeComplete");
        if complete && channel.accepts_data() {
            let frames = channel.send_data(body, now);
            assert_eq!(frames.len(), body.len().div_ceil(1024));
        }
        let _ = channel.due(now);
    }
    // Each Output message carries its own sequence number: delivered in
    // strictly increasing order, each at most once.
    assert!(delivered.windows(2).all(|w| w[0] % 16 < w[1] % 16), "{delivered:?}");
});
