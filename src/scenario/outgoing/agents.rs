//! Keep-alive connections of outgoing calls: one ureq agent, and so one pool of idle
//! connections, per origin (`scheme://host:port`).
//!
//! ureq 2 keeps an idle connection until it is reused, however long that takes: after
//! a burst of 500 calls to one upstream, its 500 connections (sockets the upstream had
//! long closed, and their buffers, ~30 MB with the allocator pages they pinned) stayed
//! for good. Here an origin not called for `idle_timeout` loses its agent, and its idle
//! connections with it ([`Agents::sweep`], run every few seconds by
//! `OutgoingClient::tidy_forever`). At most [`MAX_ORIGINS`] origins keep an agent; the
//! least recently used one goes first.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// Origins that keep an agent (and idle connections) at most.
pub const MAX_ORIGINS: usize = 1024;

struct Kept {
    agent: ureq::Agent,
    last_used: Instant,
}

pub struct Agents {
    build: Box<dyn Fn() -> ureq::Agent + Send + Sync>,
    idle_timeout: Duration,
    by_origin: Mutex<LruCache<String, Kept>>,
}

impl Agents {
    /// `build` makes the agent of a new origin.
    pub fn new(
        idle_timeout: Duration,
        build: impl Fn() -> ureq::Agent + Send + Sync + 'static,
    ) -> Agents {
        Agents {
            build: Box::new(build),
            idle_timeout,
            by_origin: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_ORIGINS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Kept>> {
        self.by_origin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent of `origin` (made when it has none), marked as used now; and the
    /// number of origins kept when this call added one (None when it was known).
    pub fn get(&self, origin: &str) -> (ureq::Agent, Option<usize>) {
        let now = Instant::now();
        let mut kept = self.lock();
        if let Some(k) = kept.get_mut(origin) {
            k.last_used = now;
            return (k.agent.clone(), None);
        }
        let agent = (self.build)();
        // Over MAX_ORIGINS the least recently used origin's agent goes (dropped outside
        // the lock: closing its sockets is a system call each).
        let evicted = kept.push(
            origin.to_string(),
            Kept {
                agent: agent.clone(),
                last_used: now,
            },
        );
        let origins = kept.len();
        drop(kept);
        drop(evicted);
        (agent, Some(origins))
    }

    /// Marks `origin` as used now (a call that ended: its connection went back idle).
    pub fn touch(&self, origin: &str) {
        if let Some(k) = self.lock().peek_mut(origin) {
            k.last_used = Instant::now();
        }
    }

    /// Drops the agents of origins idle for `idle_timeout` or longer (their idle
    /// connections close; calls still running keep theirs until they end). Returns how
    /// many went.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut gone = Vec::new();
        {
            let mut kept = self.lock();
            // The least recently used come first: stop at the first one still fresh.
            while let Some((_, k)) = kept.peek_lru() {
                if now.saturating_duration_since(k.last_used) < self.idle_timeout {
                    break;
                }
                if let Some(entry) = kept.pop_lru() {
                    gone.push(entry);
                }
            }
        }
        gone.len()
    }

    /// Origins keeping an agent now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(idle: Duration) -> Agents {
        Agents::new(idle, || ureq::AgentBuilder::new().build())
    }

    #[test]
    fn an_origin_keeps_its_agent_until_idle_long_enough() {
        let a = agents(Duration::from_secs(10));
        a.get("http://a:80");
        a.get("http://b:80");
        assert_eq!(a.len(), 2);
        let now = Instant::now();
        assert_eq!(a.sweep(now), 0);
        assert_eq!(a.sweep(now + Duration::from_secs(11)), 2);
        assert!(a.is_empty());
    }

    #[test]
    fn a_used_origin_stays_while_an_idle_one_goes() {
        let a = agents(Duration::from_secs(10));
        a.get("http://old:80");
        let later = Instant::now() + Duration::from_secs(11);
        {
            // "new" was used at `later - 1 s`: simulate by touching it after the sweep
            // point would have dropped "old" only.
            let mut kept = a.lock();
            kept.push(
                "http://new:80".to_string(),
                Kept {
                    agent: ureq::AgentBuilder::new().build(),
                    last_used: later - Duration::from_secs(1),
                },
            );
        }
        assert_eq!(a.sweep(later), 1);
        assert_eq!(a.len(), 1);
        assert!(a.lock().peek("http://new:80").is_some());
    }

    #[test]
    fn origins_are_bounded() {
        let a = agents(Duration::from_secs(10));
        for i in 0..MAX_ORIGINS + 5 {
            a.get(&format!("http://h{i}:80"));
        }
        assert_eq!(a.len(), MAX_ORIGINS);
        // The least recently used went first.
        assert!(a.lock().peek("http://h0:80").is_none());
    }
}
