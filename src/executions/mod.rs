//! Execution history (issue #13): runs of a channel's scenario recorded according to
//! its `history` setting — `off`, `errors` (the default) or `all` — with their inputs,
//! reply, log lines, outgoing calls, error (line and column), duration (the wait on the
//! outside world apart from compute) and the version that ran, secrets masked
//! ([`crate::scenario::record::Masker`], the redaction of the logs).
//!
//! - [`capture`]: what a run does is captured on its scenario thread by a
//!   [`capture::RecordingHost`]; a run that is not kept pays a branch and a cleared
//!   buffer, no allocation of its own.
//! - [`ExecutionLog`]: a bounded queue (by count and by bytes held) of kept runs as
//!   they ended, with their start parameters (shared, not copied); a full queue drops
//!   the record and counts it, the run is never slowed.
//! - [`writer`]: a task of its own arbiter, a background thread: it makes the records
//!   (masking, JSON) of what was queued and stores them in batches, trimming each
//!   channel to its count bound, purging by age. Making a record costs several times
//!   what a trivial run costs (measured with callgrind), so it stays off the scenario
//!   threads.

pub mod capture;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::actors::ChannelStats;
use crate::db::models::{Channel, Execution};
use crate::scenario::StartParams;
use crate::scenario::record::{CallRecord, ErrorRecord, LogLine, ReplyRecord, Text};

/// Which runs of a channel are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    Off,
    Errors,
    All,
}

impl History {
    pub const NAMES: [&'static str; 3] = ["off", "errors", "all"];

    pub fn parse(raw: &str) -> Option<History> {
        match raw {
            "off" => Some(History::Off),
            "errors" => Some(History::Errors),
            "all" => Some(History::All),
            _ => None,
        }
    }

    /// A channel's setting (`errors` when unset).
    pub fn of(channel: &Channel) -> History {
        History::parse(&channel.history).unwrap_or(History::Errors)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            History::Off => "off",
            History::Errors => "errors",
            History::All => "all",
        }
    }
}

/// What started a run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Inputs {
    /// An incoming webhook: what `startparam(2..=7)` read, the channel's token left
    /// out of the URL (`path` is below `/api/token/v1/{token}`).
    Webhook {
        method: String,
        /// Below the channel's webhook URL, query included (secret-named values masked).
        path: String,
        host: String,
        secure: bool,
        /// Lower-cased names; `authorization`, cookies and secret-named headers masked.
        headers: Vec<(String, String)>,
        body: Text,
        peer_ip: String,
        protocol: String,
    },
    /// A websocket message: the session and its text.
    Websocket {
        session: String,
        text: Text,
        peer_ip: String,
    },
}

impl Inputs {
    /// Whether a replay gets the input as it came (nothing cut; masked values are
    /// replayed masked all the same).
    pub fn complete(&self) -> bool {
        match self {
            Inputs::Webhook { body, .. } => !body.truncated,
            Inputs::Websocket { text, .. } => !text.truncated,
        }
    }
}

/// The recorded part of a run beyond its columns (stored as JSON).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Detail {
    pub inputs: Inputs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
    pub logs: Vec<LogLine>,
    /// Outgoing calls with status (or error) and latency.
    pub calls: Vec<CallRecord>,
}

/// Counters of the node's execution history.
#[derive(Debug, Default)]
pub struct ExecutionStats {
    /// Records queued for the writer.
    pub queued: AtomicU64,
    /// Records dropped: the queue was full.
    pub dropped: AtomicU64,
    /// Records stored.
    pub written: AtomicU64,
    /// Batches that failed to store (their records are lost and counted here).
    pub write_errors: AtomicU64,
    /// Records deleted by the count bound, a channel's deletion or age.
    pub trimmed: AtomicU64,
}

/// A kept run waiting for the writer to make its record: how it ended and what it
/// captured, and its start parameters (shared with the run, not copied).
pub struct Pending {
    pub finished: capture::Finished,
    pub params: Arc<dyn StartParams>,
    /// Bytes it holds (counted against the queue's byte bound).
    held: usize,
}

impl Pending {
    pub fn new(finished: capture::Finished, params: Arc<dyn StartParams>) -> Pending {
        let held = finished.held_bytes() + params.held_bytes();
        Pending {
            finished,
            params,
            held,
        }
    }

    /// The row to store (None: it could not be made, see `Finished::into_row`).
    pub fn into_row(self) -> Option<Execution> {
        self.finished.into_row(self.params.as_ref())
    }
}

/// The records waiting for the writer: a bounded queue the scenario threads push to
/// without waiting, bounded by count and by the bytes its records hold (a request
/// body is held whole until its record is made).
pub struct ExecutionLog {
    queue: ArrayQueue<Pending>,
    bytes: AtomicUsize,
    max_bytes: usize,
    pub stats: ExecutionStats,
    /// Bytes kept of each recorded text.
    pub max_recorded_bytes: usize,
}

impl ExecutionLog {
    pub fn new(capacity: usize, max_bytes: usize, max_recorded_bytes: usize) -> ExecutionLog {
        ExecutionLog {
            queue: ArrayQueue::new(capacity.max(1)),
            bytes: AtomicUsize::new(0),
            max_bytes,
            stats: ExecutionStats::default(),
            max_recorded_bytes,
        }
    }

    /// Whether a record would find room now; when not, it is counted as dropped
    /// (node-wide and for the channel) and should not even be built.
    pub fn has_room(&self, channel: &ChannelStats) -> bool {
        if self.queue.is_full() || self.bytes.load(Ordering::Relaxed) >= self.max_bytes {
            self.dropped(channel);
            return false;
        }
        true
    }

    /// Queues a record; a full queue (filled since [`Self::has_room`]) drops it, as
    /// does one whose bytes would take the queue past its byte bound.
    pub fn push(&self, channel: &ChannelStats, pending: Pending) {
        let held = pending.held;
        let before = self.bytes.fetch_add(held, Ordering::AcqRel);
        if before.saturating_add(held) > self.max_bytes && before > 0 {
            self.bytes.fetch_sub(held, Ordering::AcqRel);
            self.dropped(channel);
            return;
        }
        match self.queue.push(pending) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.bytes.fetch_sub(held, Ordering::AcqRel);
                self.dropped(channel)
            }
        }
    }

    fn dropped(&self, channel: &ChannelStats) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        channel.executions_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Records waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Bytes the waiting records hold, and the bound.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Takes up to `max` waiting records, oldest first.
    pub fn take(&self, max: usize, into: &mut Vec<Pending>) {
        while into.len() < max {
            match self.queue.pop() {
                Some(pending) => {
                    self.bytes.fetch_sub(pending.held, Ordering::AcqRel);
                    into.push(pending)
                }
                None => break,
            }
        }
    }
}
