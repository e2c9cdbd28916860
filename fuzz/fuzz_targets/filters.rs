//! The filter grammar of `list` and `run`: no panic, and refusals are safe
//! to print on a terminal.
#![no_main]

use eic_connect::fleet::parse_filters;
use eic_connect::sanitize::needs_escape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let words: Vec<String> = data.split('\0').map(str::to_owned).collect();
    match parse_filters(&words) {
        Ok(filters) => {
            for (name, values) in &filters {
                assert!(!name.is_empty());
                assert!(!values.is_empty(), "{name}");
            }
            let _ = eic_connect::fleet::describe(&filters);
        }
        Err(failure) => assert!(
            !failure.message.chars().any(needs_escape),
            "{:?}",
            failure.message
        ),
    }
});
