//! `rate_limit`: a token bucket (governor's GCRA) for the channel's webhook on this
//! node, or one per client IP in a table of bounded size that forgets the least
//! recently seen client first.

use std::net::{IpAddr, Ipv4Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use lru::LruCache;

use super::settings::RateLimitSettings;
use crate::actors::ChannelStats;

/// The client buckets of a channel: at most `max` client IPs, the least recently seen
/// forgotten first (counted in the channel's stats).
struct ClientTable {
    table: Mutex<LruCache<IpAddr, Nanos>>,
    max: NonZeroUsize,
    stats: Arc<ChannelStats>,
}

/// Lets governor count the table (`RateLimiter::len`); nothing calls `retain_recent`:
/// the table's bound and eviction keep it small.
impl ShrinkableKeyedStateStore<IpAddr> for ClientTable {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<IpAddr> = table
            .iter()
            .filter(|(_, at)| **at < drop_below)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale {
            table.pop(&ip);
        }
    }

    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for ClientTable {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let (outcome, next) = f(table.get(key).copied())?;
        table.put(*key, next);
        // Unbounded cache, bounded here: no table of `max` entries is allocated up
        // front for a channel that sees few clients.
        while table.len() > self.max.get() {
            table.pop_lru();
            self.stats
                .rate_clients_evicted
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }
}

enum Buckets {
    Channel(RateLimiter<NotKeyed, InMemoryState, MonotonicClock>),
    PerClient(RateLimiter<IpAddr, ClientTable, MonotonicClock>),
}

pub struct Limiter {
    buckets: Buckets,
    clock: MonotonicClock,
}

impl Limiter {
    pub fn new(s: &RateLimitSettings, max_clients: usize, stats: &Arc<ChannelStats>) -> Limiter {
        let one = NonZeroU32::MIN;
        let per_second = NonZeroU32::new(s.per_second).unwrap_or(one);
        let burst = s.burst.and_then(NonZeroU32::new).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);

        let buckets = if s.per_client_ip {
            let table = ClientTable {
                table: Mutex::new(LruCache::unbounded()),
                max: NonZeroUsize::new(max_clients).unwrap_or(NonZeroUsize::MIN),
                stats: stats.clone(),
            };
            Buckets::PerClient(RateLimiter::new(quota, table, MonotonicClock))
        } else {
            Buckets::Channel(RateLimiter::direct_with_clock(quota, MonotonicClock))
        };
        Limiter {
            buckets,
            clock: MonotonicClock,
        }
    }

    /// Takes a token for this request, or tells how long until one is there.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let refused = match &self.buckets {
            Buckets::Channel(limiter) => limiter.check().err(),
            Buckets::PerClient(limiter) => limiter
                .check_key(&client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
                .err(),
        };
        match refused {
            None => Ok(()),
            Some(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Client IPs with a bucket now (0 without `per_client_ip`).
    pub fn clients(&self) -> usize {
        match &self.buckets {
            Buckets::Channel(_) => 0,
            Buckets::PerClient(limiter) => limiter.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_second: u32, burst: u32, per_client_ip: bool) -> RateLimitSettings {
        RateLimitSettings {
            per_second,
            burst: Some(burst),
            per_client_ip,
        }
    }

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let stats = Arc::new(ChannelStats::default());
        let limiter = Limiter::new(&settings(1, 2, false), 10, &stats);
        assert!(limiter.check(None).is_ok());
        assert!(limiter.check(None).is_ok());
        let wait = limiter.check(None).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn clients_have_their_own_buckets_in_a_bounded_table() {
        let stats = Arc::new(ChannelStats::default());
        let limiter = Limiter::new(&settings(1, 1, true), 2, &stats);
        let ip = |n: u8| Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)));
        assert!(limiter.check(ip(1)).is_ok());
        assert!(limiter.check(ip(1)).is_err());
        assert!(limiter.check(ip(2)).is_ok());
        assert!(limiter.check(ip(3)).is_ok());
        assert_eq!(limiter.clients(), 2);
        assert_eq!(stats.rate_clients_evicted.load(Ordering::Relaxed), 1);
        // 10.0.0.1 was the least recently seen: forgotten, it starts afresh.
        assert!(limiter.check(ip(1)).is_ok());
    }
}
