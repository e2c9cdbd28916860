//! Console output from GetConsoleOutput: host-key blocks amid boot noise.
#![no_main]

use eic_connect::hostkeys::{ConsoleKeys, HostKey, parse_console};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let ConsoleKeys::Keys(keys) = parse_console(data) {
        for key in keys {
            // Every key found is a real key, printed back the same.
            let line = key.openssh();
            let mut words = line.split(' ');
            let (alg, b64) = (
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
            );
            assert_eq!(HostKey::parse(alg, b64).as_ref(), Some(&key), "{line}");
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }
});
