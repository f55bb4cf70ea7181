//! The event-subscription websocket protocol: any text frame a subscriber sends is
//! parsed without panicking, and every pattern the parser accepts behaves as one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oktell_gateway::events::patterns;
use oktell_gateway::events::protocol::{self, ClientOp};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientOp::Subscribe { types, .. }) = protocol::parse(text) {
        for p in &types {
            let _ = patterns::matches(p, "call.started");
            // An accepted pattern names types: an exact one matches itself, a prefix
            // `x.*` matches `x.y`.
            match p.strip_suffix(".*") {
                _ if p == "*" => assert!(patterns::matches(p, "any.type")),
                Some(prefix) => assert!(patterns::matches(p, &format!("{prefix}.y"))),
                None => assert!(patterns::matches(p, p)),
            }
        }
    }
});
