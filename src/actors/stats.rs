//! Counters of one channel, kept as plain atomics on the hot paths and read by the admin
//! API and the `/metrics` scrape. They live as long as the channel, across versions of
//! its settings and restarts of its actor.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the scenario duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Close codes counted by name; any other code counts as "other".
pub const CLOSE_CODES: [u16; 7] = [1000, 1001, 1002, 1003, 1007, 1008, 1009];

#[derive(Debug, Default)]
pub struct ChannelStats {
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    /// Webhook responses by status class: index 1 = 1xx ... 5 = 5xx.
    pub responses: [AtomicU64; 6],
    /// Scenario runs that ended correctly.
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub rejected: AtomicU64,
    pub restarts: AtomicU64,
    /// Scenario run durations: one counter per bucket (not cumulative), the rest above.
    pub duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    pub duration_micros_sum: AtomicU64,
    pub ws_opened: AtomicU64,
    pub ws_closed: AtomicU64,
    /// Closed sessions by close code (`CLOSE_CODES`, then "other").
    pub ws_closed_by_code: [AtomicU64; CLOSE_CODES.len() + 1],
    pub ws_messages_in: AtomicU64,
    pub ws_messages_out: AtomicU64,
    pub ws_errors: AtomicU64,
    /// Websocket messages put back because the scenario queue or channel was full.
    pub ws_retries: AtomicU64,
    /// Requests refused before any scenario, by `channels::guards::Refusal`.
    pub refused: [AtomicU64; 4],
    /// Client IPs forgotten by the per-client rate-limit table to stay within
    /// `rate_limit_max_clients_per_channel`.
    pub rate_clients_evicted: AtomicU64,
    /// Runs not recorded in the execution history: its queue was full.
    pub executions_dropped: AtomicU64,
    /// The channel's queue of scenario runs (served round-robin with other channels').
    pub lane: std::sync::Arc<crate::scenario::pool::Lane>,
}

impl ChannelStats {
    pub fn record_response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_refusal(&self, kind: crate::channels::guards::Refusal) {
        self.refused[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_duration(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.duration_micros_sum
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn record_close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.ws_closed_by_code[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "requests": load(&self.requests),
            "completed": load(&self.completed),
            "errors": load(&self.errors),
            "timeouts": load(&self.timeouts),
            "rejected": load(&self.rejected),
            "restarts": load(&self.restarts),
            "ws_opened": load(&self.ws_opened),
            "ws_closed": load(&self.ws_closed),
            "ws_messages_in": load(&self.ws_messages_in),
            "ws_messages_out": load(&self.ws_messages_out),
            "ws_errors": load(&self.ws_errors),
            "refused": crate::channels::guards::Refusal::ALL
                .iter()
                .map(|k| (k.as_str().to_string(), load(&self.refused[*k as usize]).into()))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_their_bucket() {
        let s = ChannelStats::default();
        s.record_duration(Duration::from_micros(300));
        s.record_duration(Duration::from_millis(1));
        s.record_duration(Duration::from_secs(60));
        assert_eq!(s.duration_buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.duration_buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(
            s.duration_buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed),
            1
        );
        s.record_response(204);
        s.record_response(503);
        s.record_response(999);
        assert_eq!(s.responses[2].load(Ordering::Relaxed), 1);
        assert_eq!(s.responses[5].load(Ordering::Relaxed), 2);
        s.record_close(1001);
        s.record_close(4000);
        assert_eq!(s.ws_closed_by_code[1].load(Ordering::Relaxed), 1);
        assert_eq!(
            s.ws_closed_by_code[CLOSE_CODES.len()].load(Ordering::Relaxed),
            1
        );
    }
}
