//! Every message an ssh client could send to eic-connect's agent socket:
//! an answer for each, never a panic, a signature only for its own key.
#![no_main]

use std::sync::OnceLock;

use eic_connect::agent::respond;
use eic_connect::key::EphemeralKey;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static EphemeralKey {
    static KEY: OnceLock<EphemeralKey> = OnceLock::new();
    KEY.get_or_init(|| EphemeralKey::generate().expect("a key"))
}

fuzz_target!(|data: &[u8]| {
    for held in [Some(key()), None] {
        let reply = respond(data, held);
        let kind = reply.first().copied().expect("an answer");
        // FAILURE, SUCCESS, IDENTITIES_ANSWER or SIGN_RESPONSE only.
        assert!(matches!(kind, 5 | 6 | 12 | 14), "{kind}");
        if held.is_none() {
            assert_ne!(kind, 14, "signed without a key");
        }
    }
});
