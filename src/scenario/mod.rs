//! Scenario runtimes. A runtime compiles a channel's script once per channel version
//! and runs it on a [`pool::ScenarioPool`] thread, never on an async worker.
//! Two runtimes: embedded Rhai (default) and `http` (a remote scenario engine).

pub mod budget;
pub mod channel_state;
pub mod dispatch;
pub mod dry_run;
pub mod http_runtime;
pub mod inline;
pub mod outgoing;
pub mod pool;
pub mod record;
pub mod reply;
pub mod rhai_json;
pub mod rhai_runtime;
pub mod script_crypto;

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use crate::db::models::Channel;

pub use reply::ScenarioReply;

/// Number of webhook start parameters, as in Oktell.
pub const WEBHOOK_PARAMS: usize = 7;

/// A script compiled by some runtime; opaque to everyone else.
#[derive(Clone)]
pub struct Compiled(pub Arc<dyn Any + Send + Sync>);

/// A script that does not compile, with where (1-based) when the runtime knows.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// A script that failed while it ran: the message (the runtime's own, with its
/// channel's secrets hidden) and, when the runtime knows, where (1-based).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ScriptFault {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl From<String> for ScriptFault {
    fn from(message: String) -> Self {
        ScriptFault {
            message,
            line: None,
            column: None,
        }
    }
}

impl From<&str> for ScriptFault {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// Why a scenario run did not end correctly.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario does not compile: {0}")]
    Compile(CompileError),
    #[error("scenario failed: {0}")]
    Script(ScriptFault),
    #[error("scenario ran out of time")]
    Timeout,
    #[error("scenario exceeded its {0} limit")]
    Limit(String),
    /// A budget of the run (memory, log, events, pushes, outgoing calls) or of the
    /// node (memory of all runs) was broken.
    #[error("scenario exceeded its {0} budget")]
    Budget(budget::BudgetKind),
    #[error("scenario set an invalid reply: {0}")]
    InvalidReply(String),
    /// Refused before it ran: the node is at its admission bound, or the run could not
    /// start before its deadline. The estimated wait, for `Retry-After`.
    #[error("the node is busy, try again in {retry_after_secs} s")]
    QueueFull { retry_after_secs: u64 },
    #[error("channel has too many scenarios in flight")]
    ChannelBusy,
    #[error("scenario runner crashed")]
    Panicked,
    #[error("scenario engine unavailable: {0}")]
    Unavailable(String),
}

/// A run's start parameters, rendered on demand: a script that never asks for the
/// headers does not pay for turning them into JSON, and the rendering happens on the
/// scenario thread rather than on the HTTP worker.
pub trait StartParams: Send + Sync {
    /// How many there are (`startparam(1..=count)`).
    fn count(&self) -> usize;
    /// `startparam(n)`, 1-based, borrowed where the parameters hold it as text
    /// already: the runtime makes its own string of it, so a copy made here first
    /// would be dropped at once.
    fn get_str(&self, n: usize) -> Option<std::borrow::Cow<'_, str>>;
    /// `startparam(n)`, 1-based, as a string of its own.
    fn get(&self, n: usize) -> Option<String> {
        self.get_str(n).map(std::borrow::Cow::into_owned)
    }
    /// The request body exactly as it arrived (`body_bytes()`), where the trigger has
    /// one: `startparam(4)` is its text, invalid UTF-8 replaced.
    fn body_bytes(&self) -> Option<&[u8]> {
        None
    }
    /// All of them, in order.
    fn to_vec(&self) -> Vec<String> {
        (1..=self.count()).filter_map(|n| self.get(n)).collect()
    }
    /// The webhook request as it arrived, borrowed, for its execution record: what
    /// `startparam(2..=7)` render, without rendering them (no JSON of the headers, no
    /// URL to parse back). None for other triggers; a webhook run whose parameters
    /// lack it gets no record.
    fn request(&self) -> Option<RequestParts<'_>> {
        None
    }
    /// Bytes these parameters hold of their own (what a queued execution record keeps
    /// alive until it is made), roughly.
    fn held_bytes(&self) -> usize {
        0
    }
    /// The biggest input a script can take in one operation (a body, a message), to
    /// decide whether it may run inline (`scenario::inline`).
    fn input_bytes(&self) -> usize {
        0
    }
}

/// A webhook request's parts, borrowed from it ([`StartParams::request`]).
#[derive(Debug)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub secure: bool,
    /// The host the request was sent to (`Host`), port included when given.
    pub host: &'a str,
    /// The path (below it the channel's token) and the query, as sent.
    pub path_and_query: &'a str,
    /// Names lower-cased, in arrival order, a repeated header once per value.
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
    pub peer_ip: Option<std::net::IpAddr>,
    pub protocol: &'a str,
}

impl StartParams for Vec<String> {
    fn count(&self) -> usize {
        self.len()
    }
    fn get_str(&self, n: usize) -> Option<std::borrow::Cow<'_, str>> {
        n.checked_sub(1)
            .and_then(|i| self.as_slice().get(i))
            .map(|s| std::borrow::Cow::Borrowed(s.as_str()))
    }
}

/// What scenarios can do to the channel's websocket sessions on this node.
pub trait ChannelHost: Send + Sync {
    /// Queues a text frame to one session (on whichever node of the cluster holds
    /// it); false if no such session is open anywhere. A session on another node is a
    /// database wait, bounded by `deadline`; an error is the reason it failed.
    fn ws_send(&self, code: &str, text: &str, deadline: Instant) -> Result<bool, String>;
    /// Queues a text frame to every session of the channel, on every node; how many.
    fn ws_broadcast(&self, text: &str, deadline: Instant) -> Result<usize, String>;
    /// Closes one session with a close code and reason; false if not open anywhere.
    fn ws_close(
        &self,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: Instant,
    ) -> Result<bool, String>;
    /// Codes of the channel's open sessions, on every node.
    fn ws_sessions(&self, deadline: Instant) -> Result<Vec<String>, String>;
    /// Stores an event in the domain's log (waiting no longer than `deadline`); its id.
    fn emit_event(
        &self,
        event_type: &str,
        data: serde_json::Value,
        deadline: Instant,
    ) -> Result<i64, String>;
    /// One `outgoing_request` of a run; `perform` makes it with the node's client.
    /// Hosts make it as it is; a dry run's host ([`dry_run::DryHost`]) records it and
    /// may answer it itself (a mock, or "not performed").
    fn outgoing(
        &self,
        call: &OutgoingCall<'_>,
        perform: &mut dyn FnMut() -> Result<outgoing::OutgoingResponse, String>,
    ) -> Result<outgoing::OutgoingResponse, String> {
        let _ = call;
        perform()
    }
    /// `state_get`: the JSON stored under `key` in the channel's state, None when
    /// absent or expired. A database wait bounded by `deadline` (the runtime calls it
    /// without holding a compute slot), as are the three below. No default bodies: a
    /// host that wraps another must pass these on, not answer "unavailable".
    fn state_get(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, channel_state::StateError>;
    /// `state_set`: stores `json` under `key` for `ttl_s` seconds (0: no expiry).
    fn state_set(
        &self,
        channel_id: &str,
        key: &str,
        json: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<(), channel_state::StateError>;
    /// `state_del`: whether the key was there.
    fn state_del(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<bool, channel_state::StateError>;
    /// `seen_before`: whether `key` was seen within its ttl; if not, records it
    /// (atomically: of concurrent calls with one key, exactly one is told false).
    fn seen_before(
        &self,
        channel_id: &str,
        key: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<bool, channel_state::StateError>;
    /// A line the script logs (its channel's secrets already hidden): true when the
    /// host took it (a dry run reports it), false to write it to the node's log.
    fn capture_log(&self, level: &str, text: &str) -> bool {
        let _ = (level, text);
        false
    }
}

/// An outgoing call a script asks for, before it is made.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingCall<'a> {
    pub channel: &'a Channel,
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    pub headers: &'a [(String, String)],
}

/// A host with no sessions and no event log: scenarios run on their own (unit tests,
/// `benches/script_profile.rs`).
pub struct NoHost;

impl ChannelHost for NoHost {
    fn ws_send(&self, _: &str, _: &str, _: Instant) -> Result<bool, String> {
        Ok(false)
    }
    fn ws_broadcast(&self, _: &str, _: Instant) -> Result<usize, String> {
        Ok(0)
    }
    fn ws_close(&self, _: &str, _: u16, _: &str, _: Instant) -> Result<bool, String> {
        Ok(false)
    }
    fn ws_sessions(&self, _: Instant) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    fn emit_event(&self, _: &str, _: serde_json::Value, _: Instant) -> Result<i64, String> {
        Err("no event log here".into())
    }
    fn state_get(
        &self,
        _: &str,
        _: &str,
        _: Instant,
    ) -> Result<Option<String>, channel_state::StateError> {
        Err(channel_state::StateError::Unavailable)
    }
    fn state_set(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: i64,
        _: Instant,
    ) -> Result<(), channel_state::StateError> {
        Err(channel_state::StateError::Unavailable)
    }
    fn state_del(&self, _: &str, _: &str, _: Instant) -> Result<bool, channel_state::StateError> {
        Err(channel_state::StateError::Unavailable)
    }
    fn seen_before(
        &self,
        _: &str,
        _: &str,
        _: i64,
        _: Instant,
    ) -> Result<bool, channel_state::StateError> {
        Err(channel_state::StateError::Unavailable)
    }
}

impl ScenarioError {
    /// The machine-readable code callers see.
    pub fn code(&self) -> &'static str {
        match self {
            ScenarioError::Timeout => "scenario_timeout",
            ScenarioError::QueueFull { .. } => "scenario_queue_full",
            ScenarioError::ChannelBusy => "channel_busy",
            ScenarioError::Limit(_) => "scenario_limit_exceeded",
            ScenarioError::Budget(_) => "scenario_budget_exceeded",
            ScenarioError::Unavailable(_) => "scenario_engine_unavailable",
            ScenarioError::Compile(_)
            | ScenarioError::Script(_)
            | ScenarioError::InvalidReply(_)
            | ScenarioError::Panicked => "scenario_error",
        }
    }

    /// The message callers see: script details (text, positions) stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            ScenarioError::Compile(_)
            | ScenarioError::Script(_)
            | ScenarioError::InvalidReply(_)
            | ScenarioError::Panicked => "the channel's scenario ended with an error".into(),
            ScenarioError::Unavailable(_) => "the scenario engine is unavailable".into(),
            other => other.to_string(),
        }
    }
}

/// Everything one run needs besides the script.
pub struct RunContext<'a> {
    pub channel: &'a Arc<Channel>,
    /// What the run keeps out of its log lines and errors (`channels::run_secrets`).
    pub secrets: &'a Arc<crate::redact::Secrets>,
    pub params: &'a dyn StartParams,
    pub deadline: Instant,
    pub logger: &'a slog::Logger,
    pub host: &'a Arc<dyn ChannelHost>,
}

/// A scenario language or engine.
pub trait ScenarioRuntime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Compiles a script; an empty script is valid and does nothing.
    fn compile(&self, source: &str) -> Result<Compiled, CompileError>;
    /// Runs a compiled script to its end, within the deadline and the runtime's limits.
    fn run(&self, script: &Compiled, ctx: RunContext<'_>) -> Result<ScenarioReply, ScenarioError>;
    /// Runs a script on the calling thread if it ends by `until` touching nothing
    /// outside itself (`scenario::inline`); `Err` when it was stopped before any effect
    /// (it is then run on the pool). A runtime that cannot stop a run says `Effect`.
    fn run_inline(
        &self,
        _script: &Compiled,
        _ctx: RunContext<'_>,
        _until: std::time::Instant,
    ) -> Result<Result<ScenarioReply, ScenarioError>, inline::Stop> {
        Err(inline::Stop::Effect)
    }
    /// Operations counted by the last run on this thread, when the runtime counts them
    /// (dry runs report it).
    fn last_operations(&self) -> Option<u64> {
        None
    }
}
