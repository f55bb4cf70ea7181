//! Admin JSON inputs: a channel's create/update body, an event to publish and a
//! webhook subscription are parsed and validated without panicking, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oktell_gateway::channels::ChannelInput;
use oktell_gateway::db::models::Channel;
use oktell_gateway::events::EventInput;
use oktell_gateway::events::webhooks::SubscriptionInput;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = ChannelInput::from_json(data) {
        let mut channel = Channel::default();
        if input.apply(&mut channel).is_ok() {
            // What validation let through is what a channel may hold.
            assert!(!channel.code.is_empty() || input_has_no_code(data));
        }
    }
    if let Ok(event) = serde_json::from_slice::<EventInput>(data) {
        let _ = event.validate(Some(0), 1_764_324_000_000);
    }
    if let Ok(sub) = serde_json::from_slice::<SubscriptionInput>(data) {
        // Literal addresses only (no DNS in a fuzz run): allow_private false.
        let _ = sub.validate(false);
    }
});

fn input_has_no_code(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("code").cloned())
        .is_none()
}
