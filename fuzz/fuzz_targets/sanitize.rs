//! Text from the cloud on its way to a terminal: nothing that could drive
//! it survives, and text with nothing to escape is left as it is.
#![no_main]

use eic_connect::sanitize::{needs_escape, terminal_safe};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let safe = terminal_safe(data);
    assert!(!safe.chars().any(needs_escape), "{safe:?}");
    if !data.chars().any(needs_escape) {
        assert_eq!(safe, data);
    }
});
