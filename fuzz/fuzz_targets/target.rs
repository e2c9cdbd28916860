//! The destination parser: `[USER@]TARGET` as typed, or from ssh's `%h`.
#![no_main]

use eic_connect::target::{Target, parse_destination, parse_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let Ok((user, target)) = parse_destination(data) else {
        return;
    };
    // Whatever is accepted can be handed to ssh as one word.
    let host = target.host_text();
    assert!(!host.starts_with('-'), "{host:?}");
    assert!(!host.chars().any(char::is_control), "{host:?}");
    if let Some(user) = user {
        assert!(
            eic_connect::target::validate_user(&user).is_ok(),
            "{user:?}"
        );
    }
    if let Target::InstanceId(id) = &target {
        assert!(eic_connect::target::is_instance_id(id), "{id:?}");
    }
    // Parse → print → parse.
    assert_eq!(parse_target(&host).ok(), Some(target), "{data:?}");
});
