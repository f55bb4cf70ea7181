//! Outgoing HTTP(S) calls: keep-alive agents per origin ([`super::agents`]), at most
//! `max_per_host` connections to one host:port at once (callers over the cap wait for
//! one, within their deadline), the idle ones kept for reuse until `idle_timeout`;
//! redirects are not followed.
//!
//! ureq 2 (already used by the remote scenario runtime) was kept over an async client:
//! calls run on scenario threads that wait anyway (the compute slot is given away
//! around the call), its pool keeps up to `max_idle_connections_per_host` connections
//! per host for reuse, and the one thing it lacks, a cap on connections being used, is
//! the [`HostLimiter`] here.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::OutgoingResponse;
use super::agents::Agents;
use crate::net::dns;

/// Counters of outgoing HTTP calls, for metrics.
#[derive(Debug, Default)]
pub struct OutgoingStats {
    pub requests: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Calls that had to wait for a connection (the host was at its cap).
    pub waited_for_connection: AtomicU64,
    pub failed: AtomicU64,
    /// Origins keeping an agent (and its idle connections) now.
    pub origins: AtomicUsize,
}

/// Bounds the connections in use per host:port.
struct HostLimiter {
    cap: usize,
    in_use: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

struct HostPermit<'a> {
    limiter: &'a HostLimiter,
    key: String,
}

impl HostLimiter {
    fn acquire(
        &self,
        key: &str,
        deadline: Instant,
        stats: &OutgoingStats,
    ) -> Result<HostPermit<'_>, String> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let mut counted = false;
        loop {
            let n = in_use.get(key).copied().unwrap_or(0);
            if n < self.cap {
                in_use.insert(key.to_string(), n + 1);
                return Ok(HostPermit {
                    limiter: self,
                    key: key.to_string(),
                });
            }
            if !counted {
                stats.waited_for_connection.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no connection to {key} became free in time ({} in use)",
                    self.cap
                ));
            }
            in_use = self
                .freed
                .wait_timeout(in_use, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        let mut in_use = self
            .limiter
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_use.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.key);
            }
        }
        drop(in_use);
        self.limiter.freed.notify_all();
    }
}

thread_local! {
    /// The running call's deadline, for name resolution inside ureq.
    static CALL_DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

pub struct HttpCaller {
    agents: Agents,
    limiter: HostLimiter,
    max_response_bytes: usize,
    pub stats: Arc<OutgoingStats>,
}

impl HttpCaller {
    pub fn new(
        max_per_host: usize,
        max_response_bytes: usize,
        idle_timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> HttpCaller {
        let max_per_host = max_per_host.max(1);
        HttpCaller {
            agents: Agents::new(idle_timeout, move || {
                ureq::AgentBuilder::new()
                    .timeout_connect(Duration::from_secs(5))
                    .redirects(0)
                    // One origin per agent: its pool holds that origin's idle connections.
                    .max_idle_connections_per_host(max_per_host)
                    .max_idle_connections(max_per_host)
                    .tls_config(tls.clone())
                    // ureq's own timeouts do not cover name resolution.
                    .resolver(|netloc: &str| {
                        let left = CALL_DEADLINE.get().map_or(dns::DNS_TIMEOUT, |d| {
                            d.saturating_duration_since(Instant::now())
                        });
                        dns::resolve(netloc, left)
                    })
                    .build()
            }),
            limiter: HostLimiter {
                cap: max_per_host,
                in_use: Mutex::new(HashMap::new()),
                freed: Condvar::new(),
            },
            max_response_bytes,
            stats: Arc::new(OutgoingStats::default()),
        }
    }

    /// Drops the agents (and idle connections) of origins not called for the idle
    /// timeout; returns how many went.
    pub fn sweep_idle(&self) -> usize {
        let gone = self.agents.sweep(Instant::now());
        self.stats
            .origins
            .store(self.agents.len(), Ordering::Relaxed);
        gone
    }

    /// One request; `deadline` bounds the whole call (waiting for a connection included).
    pub fn call(
        &self,
        url: &str,
        method: &str,
        body: &[u8],
        headers: &[(String, String)],
        token: &str,
        deadline: Instant,
    ) -> Result<OutgoingResponse, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("outgoing URL: {e}"))?;
        let key = format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or(0)
        );
        let _permit = self.limiter.acquire(&key, deadline, &self.stats)?;
        let (agent, origins) = self.agents.get(&key);
        if let Some(n) = origins {
            self.stats.origins.store(n, Ordering::Relaxed);
        }
        let mut req = agent
            .request(&method.to_ascii_uppercase(), url)
            .timeout(super::time_left(deadline)?);
        for (name, value) in headers {
            // The channel's token is the credential: a script's own `Authorization` in
            // another case would otherwise go out beside it (ureq replaces a header
            // only when the name's case matches).
            if !token.is_empty() && name.eq_ignore_ascii_case("authorization") {
                continue;
            }
            req = req.set(name, value);
        }
        if !token.is_empty() {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        CALL_DEADLINE.set(Some(deadline));
        let out = self.send(req, body);
        CALL_DEADLINE.set(None);
        self.agents.touch(&key);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if out.is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Sends and reads the answer whole (up to the size cap), which gives the
    /// connection back to the pool for reuse.
    fn send(&self, req: ureq::Request, body: &[u8]) -> Result<OutgoingResponse, String> {
        let response = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // The transport error says what failed (refused, TLS, timeout...).
                return Err(format!("outgoing request failed: {t}"));
            }
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                response
                    .header(&name)
                    .map(|v| (name.clone(), v.to_string()))
            })
            .collect();
        let mut body = Vec::new();
        response
            .into_reader()
            .take(self.max_response_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the outgoing response: {e}"))?;
        if body.len() > self.max_response_bytes {
            return Err(format!(
                "the outgoing response is larger than {} bytes",
                self.max_response_bytes
            ));
        }
        Ok(OutgoingResponse {
            status,
            body,
            headers,
        })
    }
}
