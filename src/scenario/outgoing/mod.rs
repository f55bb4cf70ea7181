//! Calls from scenarios to the channel's outside system (`outgoing_url`), always below
//! that URL ([`paths`]).
//!
//! HTTP(S) ([`http`]): `outgoing_url` + `path`, with `Authorization: Bearer <primary
//! token>`; on 401 or 403 the call is made once more with the secondary token (token
//! rotation). FTP(S) ([`ftp`]): download and upload below the URL's folder.
//!
//! Everything here blocks and runs on scenario threads inside `pool::blocking` (the run
//! gives its compute slot away while it waits), bounded by the run's deadline.

pub mod agents;
pub mod ftp;
pub mod http;
pub mod paths;
pub mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::models::Channel;

pub use http::OutgoingStats;

/// What an outgoing call answered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// How outgoing calls are made (from the node's settings).
#[derive(Debug, Clone)]
pub struct OutgoingSettings {
    /// Longest one call may take (the run's deadline may be sooner).
    pub timeout: Duration,
    pub max_response_bytes: usize,
    /// Connections in use to one host:port at most; as many idle ones are kept.
    pub max_connections_per_host: usize,
    /// An origin not called for this long closes its idle connections.
    pub idle_timeout: Duration,
}

pub struct OutgoingClient {
    timeout: Duration,
    http: http::HttpCaller,
    ftp: ftp::FtpCaller,
}

/// What is left of the call's time, or an error when none.
pub(crate) fn time_left(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("no time left for an outgoing request".into())
    } else {
        Ok(left)
    }
}

impl OutgoingClient {
    pub fn new(settings: &OutgoingSettings, tls: Arc<rustls::ClientConfig>) -> OutgoingClient {
        OutgoingClient {
            timeout: settings.timeout,
            http: http::HttpCaller::new(
                settings.max_connections_per_host,
                settings.max_response_bytes,
                settings.idle_timeout,
                tls.clone(),
            ),
            ftp: ftp::FtpCaller {
                max_response_bytes: settings.max_response_bytes,
                tls,
            },
        }
    }

    pub fn stats(&self) -> &Arc<OutgoingStats> {
        &self.http.stats
    }

    /// Every few seconds, forever: origins idle past the idle timeout close their
    /// connections, and what those connections held goes back to the system (their
    /// memory was often allocated by scenario threads that have retired since, and
    /// mimalloc returns such pages only when some thread collects).
    pub async fn tidy_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.http.sweep_idle() > 0 {
                crate::alloc::collect_abandoned();
            }
        }
    }

    /// One call to the channel's outside system.
    pub fn request(
        &self,
        channel: &Channel,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Result<OutgoingResponse, String> {
        let base = channel.outgoing_url.as_str();
        if base.is_empty() {
            return Err("the channel has no outgoing_url".into());
        }
        // The call's own budget: the run's deadline or the outgoing timeout.
        let deadline = deadline.min(Instant::now() + self.timeout);
        time_left(deadline)?;
        let lower = base.to_ascii_lowercase();
        if lower.starts_with("ftp://") || lower.starts_with("ftps://") {
            return self.ftp.call(channel, method, path, body, deadline);
        }
        let url = paths::join_url(base, path)?;
        let tokens = [
            channel.outgoing_token_primary.as_str(),
            channel.outgoing_token_secondary.as_str(),
        ];
        let mut last = None;
        for (attempt, token) in tokens.iter().enumerate() {
            if attempt == 1 && token.is_empty() {
                break;
            }
            let response = self
                .http
                .call(&url, method, body, headers, token, deadline)?;
            let refused = matches!(response.status, 401 | 403);
            last = Some(response);
            if !refused {
                break;
            }
        }
        last.ok_or_else(|| "no request was made".to_string())
    }
}
