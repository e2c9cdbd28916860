//! The endpoint's side of a tunnel is hostile: whatever bytes it sends as
//! WebSocket frames, `relay` passes on to the local side exactly the
//! payloads of the binary messages before the first close, text frame or
//! protocol error; ends as the close asks (code 1000 or none: fine; any
//! other: an error naming the code); never hangs or needs a timeout; and
//! every error message it returns is terminal-safe.
//!
//! Input: a flags byte (bit 0: the local side ends after its bytes instead
//! of staying open), a byte giving the length of the local side's input
//! (at most what follows), that input, then the endpoint's wire bytes.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use eic_connect::eice::relay::{Ending, relay};
use eic_connect::sanitize::needs_escape;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The largest frame the client accepts (as in `relay::Connector`).
const MAX_FRAME_SIZE: u64 = 1 << 20;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
}

/// How the endpoint's frames end, as RFC 6455 reads them.
#[derive(Debug)]
enum End {
    /// A close frame: its code (if any) and its reason (valid UTF-8).
    Close { code: Option<u16>, reason: String },
    /// A text message, a protocol error or the end of the bytes without a
    /// close: the tunnel fails.
    Broken,
}

/// A fragmented message being received.
enum Message {
    Binary(Vec<u8>),
    Text(Vec<u8>),
}

/// Whether `bytes` are UTF-8 or the start of it.
fn utf8_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// An independent RFC 6455 reader of unmasked server frames: the binary
/// messages' payloads up to the end, and how it ends.
fn expected(mut wire: &[u8]) -> (Vec<u8>, End) {
    let mut data = Vec::new();
    // The message whose fragments are arriving.
    let mut message: Option<Message> = None;
    loop {
        let Some((&[b0, b1], rest)) = wire.split_first_chunk::<2>() else {
            return (data, End::Broken);
        };
        wire = rest;
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let len = match b1 & 0x7f {
            126 => {
                let Some((n, rest)) = wire.split_first_chunk::<2>() else {
                    return (data, End::Broken);
                };
                wire = rest;
                u64::from(u16::from_be_bytes(*n))
            }
            127 => {
                let Some((n, rest)) = wire.split_first_chunk::<8>() else {
                    return (data, End::Broken);
                };
                wire = rest;
                u64::from_be_bytes(*n)
            }
            n => u64::from(n),
        };
        // Servers never mask; no extension gives the reserved bits a
        // meaning; the client takes frames of at most 1 MiB.
        if masked || rsv != 0 || len > MAX_FRAME_SIZE {
            return (data, End::Broken);
        }
        let Some(payload) = wire.get(..len as usize) else {
            return (data, End::Broken);
        };
        wire = &wire[len as usize..];
        match opcode {
            // Control frames: whole, and at most 125 bytes.
            0x8..=0xa if !fin || len > 125 => return (data, End::Broken),
            0x8 => {
                return match payload {
                    [] => (
                        data,
                        End::Close {
                            code: None,
                            reason: String::new(),
                        },
                    ),
                    [_] => (data, End::Broken),
                    [hi, lo, reason @ ..] => match std::str::from_utf8(reason) {
                        Ok(reason) => (
                            data,
                            End::Close {
                                code: Some(u16::from_be_bytes([*hi, *lo])),
                                reason: reason.to_owned(),
                            },
                        ),
                        Err(_) => (data, End::Broken),
                    },
                };
            }
            0x9 | 0xa => {}
            // Data: a message, maybe in fragments.
            0x0 => match message.as_mut() {
                None => return (data, End::Broken),
                Some(Message::Binary(parts)) => {
                    parts.extend_from_slice(payload);
                    if fin {
                        data.append(parts);
                        message = None;
                    }
                }
                // A text message is no part of the tunnel protocol: it
                // fails once it is complete, or once it cannot be UTF-8
                // (a close may still come between its fragments).
                Some(Message::Text(parts)) => {
                    parts.extend_from_slice(payload);
                    if fin || !utf8_prefix(parts) {
                        return (data, End::Broken);
                    }
                }
            },
            0x1 | 0x2 if message.is_some() => return (data, End::Broken),
            0x1 => {
                if fin || !utf8_prefix(payload) {
                    return (data, End::Broken);
                }
                message = Some(Message::Text(payload.to_vec()));
            }
            0x2 => {
                if fin {
                    data.extend_from_slice(payload);
                } else {
                    message = Some(Message::Binary(payload.to_vec()));
                }
            }
            _ => return (data, End::Broken),
        }
    }
}

/// The local side's input: its bytes, then either the end or nothing more
/// ever (a reader still open).
struct LocalInput<'a> {
    bytes: &'a [u8],
    ends: bool,
}

impl AsyncRead for LocalInput<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.bytes.is_empty() && !self.ends {
            // Nothing will wake this reader: the relay must end otherwise.
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.bytes.len());
        buf.put_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|input: &[u8]| {
    let [flags, local_len, rest @ ..] = input else {
        return;
    };
    let local_ends = flags & 1 != 0;
    let (local, wire) = rest.split_at(usize::from(*local_len).min(rest.len()));
    let (want_data, end) = expected(wire);

    let mut out: Vec<u8> = Vec::new();
    let started = Instant::now();
    let result = RUNTIME.with(|rt| {
        rt.block_on(async {
            // Room for everything either side writes: nothing waits on the
            // other side reading.
            let room = 64 * 1024 + 4 * input.len();
            let (client, mut endpoint) = tokio::io::duplex(room);
            endpoint
                .write_all(wire)
                .await
                .expect("room for the endpoint's bytes");
            endpoint.shutdown().await.expect("the endpoint's end");
            let config = WebSocketConfig::default().max_frame_size(Some(MAX_FRAME_SIZE as usize));
            let ws = WebSocketStream::from_raw_socket(client, Role::Client, Some(config)).await;
            let local_in = LocalInput {
                bytes: local,
                ends: local_ends,
            };
            let result = relay(ws, local_in, &mut out).await;
            drop(endpoint);
            result
        })
    });
    // Every timeout in relay is 1 s or longer: none may have been needed.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "relay waited for a timeout: {result:?}"
    );

    // Whatever ended it, every binary message before the end was passed on.
    assert!(
        out == want_data,
        "passed on {out:?}, expected {want_data:?} ({end:?}, {result:?})"
    );

    match &result {
        Err(err) => {
            let message = format!("{err:#}");
            assert!(
                !message.chars().any(needs_escape),
                "not terminal-safe: {message:?}"
            );
            match &end {
                End::Close {
                    code: None | Some(1000),
                    ..
                } => {
                    panic!("a normal close became an error: {message:?} ({end:?})")
                }
                // Codes an endpoint may send (RFC 6455 §7.4): the message
                // names it.
                End::Close {
                    code: Some(code @ (1001..=1003 | 1007..=1011 | 3000..=4999)),
                    ..
                } => {
                    assert!(
                        message.contains(&format!("code {code}")),
                        "close code {code} not named: {message:?}"
                    );
                }
                _ => {}
            }
        }
        Ok(Ending::RemoteClosed { reason }) => match &end {
            End::Close {
                code: None | Some(1000),
                reason: sent,
            } => {
                assert_eq!(reason, sent, "the close reason");
            }
            _ => panic!("ended as closed normally by the endpoint, but it sent {end:?}"),
        },
        Ok(Ending::LocalClosed) => {
            // Only once the local side has ended, and never over a broken
            // tunnel.
            assert!(
                local_ends,
                "closed locally while the local side was open ({end:?})"
            );
            assert!(
                matches!(end, End::Close { .. }),
                "a broken tunnel ended without error"
            );
        }
    }
});
