//! The cluster: the nodes of a domain sharing one PostgreSQL act as one gateway.
//!
//! PostgreSQL is both the shared store and the coordination channel; there is no other
//! service and no consensus of our own. The tables stay the truth, and notes sent with
//! NOTIFY inside each change's transaction (`db::notify`) only wake the other nodes:
//!
//! - [`listener`]: one dedicated connection per node LISTENs; a channel note makes the
//!   node reconcile that channel with the database (through its channel actor), an
//!   events note wakes its event broker and delivery worker. On every (re)connect it
//!   LISTENs first and then reconciles everything, and it does so periodically too, so
//!   that a missed note heals.
//! - [`heartbeat`]: every node records itself in the node registry (`nodes`), on the
//!   database's clock.
//! - [`Freshness`]: a node that lost its listener cannot learn that a token was deleted
//!   elsewhere. It keeps serving what it has loaded for `max_staleness_s`, then token
//!   routes answer 503 and its websockets close (1013) until it is back and caught up.
//!
//! - [`sessions`]: a directory of which node holds which websocket session, so that
//!   `ws_send`, `ws_broadcast`, `ws_close`, `ws_sessions` and the admin session routes
//!   reach sessions on any node.
//!
//! On SQLite (one node) there is no listener and a node is never stale.

pub mod heartbeat;
pub mod listener;
pub mod sessions;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Is this node in touch with the rest of the cluster?
pub struct Freshness {
    clustered: bool,
    max: Duration,
    origin: Instant,
    /// Milliseconds since `origin` until which the node counts as in touch.
    fresh_until: AtomicU64,
}

impl Freshness {
    /// A node alone on its database: always fresh.
    pub fn single_node() -> Freshness {
        Freshness {
            clustered: false,
            max: Duration::ZERO,
            origin: Instant::now(),
            fresh_until: AtomicU64::new(u64::MAX),
        }
    }

    /// A node of a cluster, fresh for `max` from now (it has just loaded its channels).
    pub fn clustered(max: Duration) -> Freshness {
        let f = Freshness {
            clustered: true,
            max,
            origin: Instant::now(),
            fresh_until: AtomicU64::new(0),
        };
        f.touch();
        f
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The node is listening and caught up now: fresh for `max_staleness` more.
    pub fn touch(&self) {
        if self.clustered {
            let until = self.now_ms() + self.max.as_millis() as u64;
            self.fresh_until.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Too long out of touch: token routes answer 503.
    pub fn is_stale(&self) -> bool {
        self.clustered && self.now_ms() > self.fresh_until.load(Ordering::Relaxed)
    }

    pub fn is_clustered(&self) -> bool {
        self.clustered
    }
}

/// Counters of the cluster machinery on this node (metrics).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Is the notification listener connected and caught up?
    pub listening: AtomicBool,
    pub listener_connects: AtomicU64,
    pub notes_channel: AtomicU64,
    pub notes_events: AtomicU64,
    /// Pushes, closes and broadcasts for this node's websocket sessions.
    pub notes_sessions: AtomicU64,
    /// Notes dropped because the listener's queue was full (each triggers a full
    /// reconcile).
    pub notes_overflowed: AtomicU64,
    pub reconciles: AtomicU64,
    /// Channels changed on this node by reconciling (started, updated, retired).
    pub reconciled_channels: AtomicU64,
    /// `pg_notification_queue_usage()` × 1,000,000, as last read.
    pub queue_usage_ppm: AtomicU64,
    /// Times this node went stale (lost touch for longer than `max_staleness_s`).
    pub went_stale: AtomicU64,
    /// The node is stopping: the heartbeat stops before the node leaves the registry
    /// (else its next beat would put the row back).
    pub leaving: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_is_never_stale_and_a_cluster_node_goes_stale_untouched() {
        assert!(!Freshness::single_node().is_stale());
        let f = Freshness::clustered(Duration::ZERO);
        // Fresh "until now": stale as soon as a millisecond passes without a touch.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !f.is_stale() {
            assert!(Instant::now() < deadline, "never went stale");
            std::hint::spin_loop();
        }
        let g = Freshness::clustered(Duration::from_secs(3600));
        assert!(!g.is_stale());
    }
}
