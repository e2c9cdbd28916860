//! What an HTTP proxy answers to CONNECT, NO_PROXY entries, and the
//! endpoint's refusal bodies: no panic, lengths within the input, messages
//! safe for a terminal.
#![no_main]

use eic_connect::eice::relay::{no_proxy_matches, parse_connect_head, rejected};
use eic_connect::sanitize::needs_escape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, head))) = parse_connect_head(data) {
        assert!(head <= data.len());
    }
    let text = String::from_utf8_lossy(data);
    let (no_proxy, host) = text.split_once('\u{1}').unwrap_or((&text, "example.com"));
    let port = data.first().map_or(443, |&b| u16::from(b) * 251);
    let _ = no_proxy_matches(Some(no_proxy), host, port);
    let status = data
        .get(..2)
        .map_or(403, |b| u16::from_be_bytes([b[0], b[1]]));
    let failure = rejected(status, data, Some(host));
    for line in std::iter::once(&failure.message).chain(&failure.hints) {
        assert!(!line.chars().any(needs_escape), "{line:?}");
    }
});
