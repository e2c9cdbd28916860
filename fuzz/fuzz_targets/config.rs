//! The config file and the `EIC_CONNECT_*` variables: no panic, and every
//! error message is safe to print on a terminal.
#![no_main]

use eic_connect::sanitize::needs_escape;
use eic_connect::settings::{Defaults, Layers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let safe = |text: &str| !text.chars().any(|c| c != '\n' && needs_escape(c));
    match Layers::parse(data, std::path::Path::new("/cfg/config.toml")) {
        Ok(layers) => {
            for name in layers.aliases.keys() {
                let _ = layers.expand(name);
            }
        }
        Err(failure) => assert!(safe(&failure.message), "{:?}", failure.message),
    }
    // The same text as environment values, line by line.
    let lines: Vec<&str> = data.lines().collect();
    let get = |name: &str| {
        let i = name.len() % lines.len().max(1);
        lines.get(i).map(|s| (*s).to_owned())
    };
    if let Err(failure) = Defaults::from_env(get) {
        assert!(safe(&failure.message), "{:?}", failure.message);
    }
});
