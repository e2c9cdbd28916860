//! known_hosts editing and the `__known-hosts` answers: no panic, lines for
//! other hosts are kept, and nothing answered for ssh breaks a line.
#![no_main]

use eic_connect::hostkeys::{
    ConsoleKeys, Pins, answer, first_use_answer, known_hosts_with, missing_lines, parse_console,
};
use libfuzzer_sys::fuzz_target;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fuzz_target!(|data: &str| {
    let mut parts = data.splitn(5, '\u{1}');
    let existing = parts.next().unwrap_or_default();
    let alias = parts.next().unwrap_or("i-0123456789abcdef0");
    let reason = parts.next().unwrap_or("HOSTNAME");
    let host = parts.next().unwrap_or("i-0123456789abcdef0");
    let offered = parts.next().unwrap_or(KEY);
    let block =
        format!("-----BEGIN SSH HOST KEY KEYS-----\n{KEY}\n-----END SSH HOST KEY KEYS-----\n");
    let ConsoleKeys::Keys(keys) = parse_console(&block) else {
        panic!("the fixed key parses");
    };
    if let Some(updated) = known_hosts_with(existing, alias, &keys) {
        // Other hosts' lines, byte for byte (a last line gains its newline).
        let kept: Vec<&str> = updated.split_inclusive('\n').collect();
        for line in existing.split_inclusive('\n') {
            let for_alias = line
                .split_ascii_whitespace()
                .next()
                .is_some_and(|h| h.split(',').any(|p| p == alias));
            if !for_alias {
                let found = kept
                    .iter()
                    .any(|k| *k == line || k.strip_suffix('\n') == Some(line));
                assert!(found, "lost {line:?}");
            }
        }
    }
    let _ = missing_lines(existing, alias, &keys);
    let (kt, kb) = offered.split_once(' ').unwrap_or((offered, ""));
    let (lines, append) = first_use_answer(existing, alias, reason, host, kt, kb);
    for line in lines.iter().chain(append.iter()) {
        assert!(!line.trim_end_matches('\n').contains('\n'), "{line:?}");
    }
    let pins = Pins {
        keys,
        fingerprints: Vec::new(),
    };
    let (lines, _) = answer(&pins, reason, host, kt, kb);
    for line in lines {
        assert!(!line.contains('\n'), "{line:?}");
    }
});
