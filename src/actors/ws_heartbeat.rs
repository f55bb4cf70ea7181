//! One heartbeat for every public websocket session of the node.
//!
//! A session used to keep its own interval timer, and actix polls every item of an
//! actor's context whenever the context runs: each message a session handled also
//! polled its timer (docs/design-notes.md, "A websocket message on the worker
//! thread"). Now one task ticks every `ws_heartbeat_interval_ms` and sends each session
//! a `ToSession::Tick`; the session pings its client, or closes when the client has not
//! answered within `ws_heartbeat_timeout_ms` (`ws_session.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::registry::ChannelRegistry;

/// Ticks the sessions of every channel in `registry` every `every`, forever. The first
/// tick comes one interval after the start, as a session's own timer's did.
pub async fn tick_forever(registry: Arc<ChannelRegistry>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for handle in registry.handles() {
            handle.sessions.tick();
        }
    }
}
