//! The recent traffic of every channel this node serves, for the status page's
//! sparklines (`GET /admin/v1/stats/history`). Every `status_sample_ms` (10 s) the
//! sampler reads each channel's counters ([`ChannelStats`]) and keeps how far they
//! moved in a ring of [`BUCKETS`] samples (90: the last 15 minutes at the default).
//!
//! Bounds: one ring per channel served here (a channel no longer served loses its ring
//! at the next sample), each 90 pairs of `u32`: under 1 KiB a channel with its names.
//! The hot paths pay nothing: the sampler reads the atomics they already add to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{ChannelHandle, ChannelRegistry, ChannelStats};

/// Samples kept per channel.
pub const BUCKETS: usize = 90;

/// What a sample counts of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Webhook requests and websocket messages received.
    pub requests: u64,
    /// Runs that failed: script errors, timeouts, and runs refused because the node or
    /// the channel was busy.
    pub errors: u64,
}

impl Counts {
    /// The channel's counters now (they only grow).
    pub fn of(stats: &ChannelStats) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            requests: load(&stats.requests).saturating_add(load(&stats.ws_messages_in)),
            errors: load(&stats.errors)
                .saturating_add(load(&stats.timeouts))
                .saturating_add(load(&stats.rejected)),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(before.requests),
            errors: self.errors.saturating_sub(before.errors),
        }
    }
}

/// One channel's ring.
struct Series {
    /// The counters sampled: a channel started again on this node gets new ones.
    stats: Arc<ChannelStats>,
    domain: String,
    code: String,
    /// The counters at the last sample.
    last: Counts,
    /// Requests and errors per sample, oldest first; at most [`BUCKETS`].
    buckets: VecDeque<(u32, u32)>,
}

/// One channel's recent traffic, as [`StatsHistory::channels`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSeries {
    pub id: String,
    pub code: String,
    /// Per sample, oldest first (the last ended at the last sample).
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    /// Since the last sample.
    pub now: Counts,
}

/// A channel as a sample reads it.
struct Sampled<'a> {
    id: &'a str,
    domain: &'a str,
    code: &'a str,
    stats: &'a Arc<ChannelStats>,
}

/// The rings of the channels served here.
#[derive(Default)]
pub struct StatsHistory {
    series: Mutex<HashMap<String, Series>>,
    /// When the last sample was taken (ms since the epoch); 0 before the first.
    sampled_at: AtomicI64,
}

impl StatsHistory {
    pub fn new() -> StatsHistory {
        StatsHistory::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Series>> {
        // A panic while holding it cannot leave a ring half-written in a harmful way.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample of every channel in `handles` (the registry's), at `at_ms`;
    /// channels not among them are forgotten.
    pub fn sample(&self, handles: &[Arc<ChannelHandle>], at_ms: i64) {
        self.sample_each(
            handles.iter().map(|h| Sampled {
                id: &h.channel.id,
                domain: &h.channel.domain,
                code: &h.channel.code,
                stats: &h.stats,
            }),
            at_ms,
        );
    }

    fn sample_each<'a>(&self, channels: impl Iterator<Item = Sampled<'a>>, at_ms: i64) {
        let channels: Vec<Sampled<'a>> = channels.collect();
        let mut series = self.lock();
        let live: HashSet<&str> = channels.iter().map(|c| c.id).collect();
        series.retain(|id, _| live.contains(id.as_str()));
        for c in channels {
            let counts = Counts::of(c.stats);
            let s = series.entry(c.id.to_string()).or_insert_with(|| Series {
                stats: c.stats.clone(),
                domain: String::new(),
                code: String::new(),
                // Counters start at zero with the channel on this node.
                last: Counts::default(),
                buckets: VecDeque::with_capacity(BUCKETS),
            });
            if !Arc::ptr_eq(&s.stats, c.stats) {
                s.stats = c.stats.clone();
                s.last = Counts::default();
            }
            if s.code != c.code || s.domain != c.domain {
                c.code.clone_into(&mut s.code);
                c.domain.clone_into(&mut s.domain);
            }
            let moved = counts.since(s.last);
            s.last = counts;
            if s.buckets.len() == BUCKETS {
                s.buckets.pop_front();
            }
            let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            s.buckets
                .push_back((small(moved.requests), small(moved.errors)));
        }
        self.sampled_at.store(at_ms, Ordering::Relaxed);
    }

    /// When the last sample was taken (ms since the epoch), if ever.
    pub fn sampled_at(&self) -> Option<i64> {
        Some(self.sampled_at.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Channels with a ring.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rings of one domain's channels (or of one of them), ordered by code.
    pub fn channels(&self, domain: &str, id: Option<&str>) -> Vec<ChannelSeries> {
        let series = self.lock();
        let mut out: Vec<ChannelSeries> = series
            .iter()
            .filter(|(sid, s)| s.domain == domain && id.is_none_or(|id| id == sid.as_str()))
            .map(|(sid, s)| ChannelSeries {
                id: sid.clone(),
                code: s.code.clone(),
                requests: s.buckets.iter().map(|b| u64::from(b.0)).collect(),
                errors: s.buckets.iter().map(|b| u64::from(b.1)).collect(),
                now: Counts::of(&s.stats).since(s.last),
            })
            .collect();
        out.sort_by(|a, b| a.code.cmp(&b.code));
        out
    }
}

/// Samples the registry's channels every `every`, for as long as the arbiter it runs on.
pub async fn sample_forever(
    history: Arc<StatsHistory>,
    registry: Arc<ChannelRegistry>,
    every: Duration,
) {
    let mut tick = actix_web::rt::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the first sample ends one interval later.
    tick.tick().await;
    loop {
        tick.tick().await;
        history.sample(&registry.handles(), crate::db::now_millis());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_of(h: &StatsHistory, domain: &str) -> Vec<ChannelSeries> {
        h.channels(domain, None)
    }

    /// A sample of these (id, code, counters) of domain "d".
    fn sample_stats(h: &StatsHistory, chans: &[(&str, &str, &Arc<ChannelStats>)], at: i64) {
        h.sample_each(
            chans.iter().map(|(id, code, stats)| Sampled {
                id,
                domain: "d",
                code,
                stats,
            }),
            at,
        );
    }

    #[test]
    fn samples_deltas_and_keeps_ninety() {
        let h = StatsHistory::new();
        let a = Arc::new(ChannelStats::default());
        assert_eq!(h.sampled_at(), None);
        a.requests.fetch_add(3, Ordering::Relaxed);
        a.errors.fetch_add(1, Ordering::Relaxed);
        sample_stats(&h, &[("1", "a", &a)], 1000);
        a.requests.fetch_add(2, Ordering::Relaxed);
        a.ws_messages_in.fetch_add(1, Ordering::Relaxed);
        a.timeouts.fetch_add(1, Ordering::Relaxed);
        a.rejected.fetch_add(1, Ordering::Relaxed);
        sample_stats(&h, &[("1", "a", &a)], 2000);
        a.requests.fetch_add(5, Ordering::Relaxed);
        let s = &series_of(&h, "d")[0];
        assert_eq!(s.requests, vec![3, 3]);
        assert_eq!(s.errors, vec![1, 2]);
        assert_eq!(
            s.now,
            Counts {
                requests: 5,
                errors: 0
            }
        );
        assert_eq!(h.sampled_at(), Some(2000));
        for i in 0..200 {
            sample_stats(&h, &[("1", "a", &a)], 3000 + i);
        }
        let s = &series_of(&h, "d")[0];
        assert_eq!(s.requests.len(), BUCKETS);
        assert_eq!(s.requests[BUCKETS - 1], 0);
        assert!(series_of(&h, "other").is_empty());
    }

    #[test]
    fn forgets_channels_no_longer_served() {
        let h = StatsHistory::new();
        let (a, b) = (
            Arc::new(ChannelStats::default()),
            Arc::new(ChannelStats::default()),
        );
        sample_stats(&h, &[("1", "a", &a), ("2", "b", &b)], 1);
        assert_eq!(h.len(), 2);
        assert_eq!(h.channels("d", Some("2")).len(), 1);
        sample_stats(&h, &[("2", "b", &b)], 2);
        assert_eq!(h.len(), 1);
        assert!(h.channels("d", Some("1")).is_empty());
    }

    #[test]
    fn new_counters_start_from_zero() {
        let h = StatsHistory::new();
        let old = Arc::new(ChannelStats::default());
        old.requests.fetch_add(50, Ordering::Relaxed);
        sample_stats(&h, &[("1", "a", &old)], 1);
        // Started again on this node (same id): counters from zero, renamed.
        let new = Arc::new(ChannelStats::default());
        new.requests.fetch_add(4, Ordering::Relaxed);
        sample_stats(&h, &[("1", "a2", &new)], 2);
        let s = &series_of(&h, "d")[0];
        assert_eq!((s.code.as_str(), s.requests.clone()), ("a2", vec![50, 4]));
    }
}
