//! Dry runs (issue #13): a channel's script — saved, or a draft not yet saved — run on a
//! sample webhook request or websocket message, in the same pool, sandbox, limits and
//! budgets as real runs, and reported whole: the reply it would give, its log lines, the
//! outgoing calls, websocket pushes/closes and events it made or would have made,
//! duration and operations, or the error with line and column.
//!
//! What a script does to the outside world goes through its [`ChannelHost`]; a dry run
//! hands it a [`DryHost`], which records every effect and performs it only when the run
//! is `live` (through the channel's real host and the node's outgoing client). Outgoing
//! calls answered by a mock (by method and path) are never made, live or not. Reads
//! (`ws_sessions`) always look at the real sessions: they change nothing.
//!
//! Channel state writes (`state_set`, `state_del`, `seen_before`'s record) are
//! recorded and never performed, live or not; state reads see the writes recorded
//! earlier in the same dry run, else the channel's real state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::channel_state::{self, StateError, StateStore};
use super::outgoing::OutgoingResponse;
use super::record::Masker;
pub use super::record::{CallRecord, ErrorRecord, LogLine, ReplyRecord, Text};
use super::{ChannelHost, OutgoingCall, ScenarioError, ScenarioReply, StartParams};
use crate::db::models::Channel;

/// What a dry run is run on.
#[derive(Debug, Clone)]
pub enum Sample {
    Webhook(WebhookSample),
    Websocket(WebsocketSample),
}

/// A sample incoming webhook: what `startparam(2..=7)` will read.
#[derive(Debug, Clone)]
pub struct WebhookSample {
    pub method: String,
    /// Below the channel's webhook URL (`/api/token/v1/{token}`), query included.
    pub path: String,
    /// Lower-cased names, in order; repeated names are joined as HTTP allows.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub peer_ip: String,
    pub protocol: String,
    /// `host` and scheme of the URL in `startparam(3)`.
    pub host: String,
    pub secure: bool,
}

/// A sample websocket message: what `startparam(1..=4)` of the websocket script read.
#[derive(Debug, Clone)]
pub struct WebsocketSample {
    pub session: String,
    pub text: String,
    pub peer_ip: String,
}

/// A canned answer to the outgoing calls of a dry run that match it.
#[derive(Debug, Clone)]
pub struct Mock {
    /// Any method when `None`.
    pub method: Option<String>,
    /// The path the script passes to `outgoing_request`; without a query, calls match
    /// whatever their query.
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Mock {
    fn matches(&self, method: &str, path: &str) -> bool {
        let trim = |p: &str| p.trim_start_matches('/').to_string();
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let wanted = trim(&self.path);
        let given = if wanted.contains('?') {
            trim(path)
        } else {
            trim(path.split(['?', '#']).next().unwrap_or_default())
        };
        method_ok && wanted == given
    }
}

/// A sample webhook's start parameters; its body (a string) is also its raw bytes.
struct DryWebhookParams(Vec<String>);

impl StartParams for DryWebhookParams {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn get_str(&self, n: usize) -> Option<std::borrow::Cow<'_, str>> {
        self.0.get_str(n)
    }
    fn body_bytes(&self) -> Option<&[u8]> {
        self.0.as_slice().get(3).map(String::as_bytes)
    }
}

impl Sample {
    /// The start parameters a real run on this sample would get.
    pub fn params(&self, channel: &Channel) -> Arc<dyn StartParams> {
        let channel_json = crate::channels::scenario_json(channel);
        match self {
            Sample::Webhook(s) => {
                let scheme = if s.secure { "https" } else { "http" };
                let path = match s.path.chars().next() {
                    None => String::new(),
                    Some('/' | '?') => s.path.clone(),
                    Some(_) => format!("/{}", s.path),
                };
                let mut headers = serde_json::Map::new();
                for (name, value) in &s.headers {
                    match headers.get_mut(name) {
                        Some(serde_json::Value::String(existing)) => {
                            existing.push_str(", ");
                            existing.push_str(value);
                        }
                        _ => {
                            headers.insert(name.clone(), value.clone().into());
                        }
                    }
                }
                Arc::new(DryWebhookParams(vec![
                    channel_json,
                    s.method.clone(),
                    format!("{scheme}://{}/api/token/v1/{}{path}", s.host, channel.token),
                    s.body.clone(),
                    serde_json::Value::Object(headers).to_string(),
                    s.peer_ip.clone(),
                    s.protocol.clone(),
                ]))
            }
            Sample::Websocket(s) => Arc::new(vec![
                s.session.clone(),
                s.text.clone(),
                channel_json,
                s.peer_ip.clone(),
            ]),
        }
    }

    pub fn trigger(&self) -> &'static str {
        match self {
            Sample::Webhook(_) => "webhook",
            Sample::Websocket(_) => "websocket",
        }
    }
}

/// A websocket push, broadcast or close the script made or would have made.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WsRecord {
    /// `send`, `broadcast` or `close`.
    pub op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    pub performed: bool,
}

/// An event the script emitted or would have emitted.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventRecord {
    pub event_type: String,
    pub data: Text,
    pub performed: bool,
    /// The stored event's id (live runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
}

/// A channel state write the script made (recorded, never performed).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StateRecord {
    /// `set`, `del` or `seen_before`.
    pub op: &'static str,
    pub key: String,
    /// The value as stored (JSON), for `set`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Text>,
    /// Seconds until it expires (0: never), for `set` and `seen_before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<i64>,
    /// What the script was told: whether the key was there (`del`, `seen_before`).
    /// A `seen_before` told true writes nothing and is not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<bool>,
    /// Always false: a dry run never writes channel state.
    pub performed: bool,
}

/// Everything a dry run did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// `webhook` or `websocket`.
    pub trigger: &'static str,
    /// `draft` (the request's `script`) or `saved` (the channel's, at `version`).
    pub script: &'static str,
    pub version: i64,
    pub live: bool,
    /// The run ended correctly (`reply` is set) or not (`error` is).
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
    pub logs: Vec<LogLine>,
    pub calls: Vec<CallRecord>,
    pub websocket: Vec<WsRecord>,
    pub events: Vec<EventRecord>,
    /// Channel state writes (recorded, not performed).
    pub state: Vec<StateRecord>,
    /// Wall time of the run (waits included), compilation excluded.
    pub duration_ms: f64,
    /// Operations the runtime counted (absent for the `http` runtime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operations: Option<u64>,
}

#[derive(Default)]
struct Recorded {
    logs: Vec<LogLine>,
    calls: Vec<CallRecord>,
    websocket: Vec<WsRecord>,
    events: Vec<EventRecord>,
    state: Vec<StateRecord>,
    /// The state as this run's recorded writes left it, by key (None: deleted).
    state_overlay: HashMap<String, Option<Pending>>,
}

/// A value a dry run's script wrote (not stored).
#[derive(Clone)]
struct Pending {
    json: String,
    expires: Option<Instant>,
}

/// The host of a dry run: records what the script does, performs it when live.
pub struct DryHost {
    /// The channel's real host: performs effects when live, answers reads always.
    real: Arc<dyn ChannelHost>,
    live: bool,
    mocks: Vec<Mock>,
    masker: Masker,
    recorded: Mutex<Recorded>,
    /// Where state reads not answered by this run's own writes go.
    state: Option<Arc<StateStore>>,
}

impl DryHost {
    pub fn new(
        channel: Arc<Channel>,
        real: Arc<dyn ChannelHost>,
        live: bool,
        mocks: Vec<Mock>,
        max_recorded: usize,
    ) -> DryHost {
        DryHost {
            real,
            live,
            mocks,
            masker: Masker::new(channel, max_recorded),
            recorded: Mutex::new(Recorded::default()),
            state: None,
        }
    }

    /// State reads see `state` (the channel's real state) where the run wrote nothing.
    pub fn with_state(mut self, state: Option<Arc<StateStore>>) -> DryHost {
        self.state = state;
        self
    }

    fn state_store(&self) -> Result<&StateStore, StateError> {
        self.state.as_deref().ok_or(StateError::Unavailable)
    }

    /// Records a state write, applying it to what later reads of this run see.
    fn record_state(&self, record: StateRecord, key: &str, after: Option<Pending>) {
        channel_state::count(
            match record.op {
                "set" => channel_state::Op::Set,
                "del" => channel_state::Op::Del,
                _ => channel_state::Op::SeenBefore,
            },
            channel_state::Outcome::Recorded,
        );
        self.record(|r| {
            r.state.push(record);
            r.state_overlay.insert(key.to_string(), after);
        });
    }

    /// When a ttl given now would end (None: never).
    fn expiry(ttl_s: i64) -> Option<Instant> {
        (ttl_s > 0).then(|| Instant::now() + Duration::from_secs(ttl_s.unsigned_abs()))
    }

    fn record(&self, f: impl FnOnce(&mut Recorded)) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut recorded)
    }

    fn text(&self, raw: &str) -> Text {
        self.masker.text(raw)
    }

    fn text_bytes(&self, raw: &[u8]) -> Text {
        self.masker.text_bytes(raw)
    }

    /// The report of a finished run.
    pub fn report(&self, ended: Ended, sample: &Sample, draft: bool, version: i64) -> Report {
        let recorded =
            std::mem::take(&mut *self.recorded.lock().unwrap_or_else(|e| e.into_inner()));
        let (reply, error) = match ended.outcome {
            Ok(reply) => (
                Some(
                    self.masker
                        .reply(&reply, matches!(sample, Sample::Webhook(_))),
                ),
                None,
            ),
            Err(e) => (None, Some(self.masker.error(&e))),
        };
        Report {
            trigger: sample.trigger(),
            script: if draft { "draft" } else { "saved" },
            version,
            live: self.live,
            ok: error.is_none(),
            reply,
            error,
            logs: recorded.logs,
            calls: recorded.calls,
            websocket: recorded.websocket,
            events: recorded.events,
            state: recorded.state,
            duration_ms: ended.duration.as_secs_f64() * 1000.0,
            operations: ended.operations,
        }
    }
}

/// How a dry run's script run ended.
pub struct Ended {
    pub outcome: Result<ScenarioReply, ScenarioError>,
    pub duration: Duration,
    pub operations: Option<u64>,
}

impl ChannelHost for DryHost {
    fn ws_send(&self, code: &str, text: &str, deadline: Instant) -> Result<bool, String> {
        let outcome = if self.live {
            self.real.ws_send(code, text, deadline)
        } else {
            // Whether it would have been delivered: the session is open somewhere.
            self.real
                .ws_sessions(deadline)
                .map(|codes| codes.iter().any(|c| c == code))
        };
        self.record(|r| {
            r.websocket.push(WsRecord {
                op: "send",
                session: Some(code.to_string()),
                text: Some(self.text(text)),
                close_code: None,
                performed: self.live,
            })
        });
        outcome
    }

    fn ws_broadcast(&self, text: &str, deadline: Instant) -> Result<usize, String> {
        let outcome = if self.live {
            self.real.ws_broadcast(text, deadline)
        } else {
            self.real.ws_sessions(deadline).map(|codes| codes.len())
        };
        self.record(|r| {
            r.websocket.push(WsRecord {
                op: "broadcast",
                session: None,
                text: Some(self.text(text)),
                close_code: None,
                performed: self.live,
            })
        });
        outcome
    }

    fn ws_close(
        &self,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: Instant,
    ) -> Result<bool, String> {
        let outcome = if self.live {
            self.real.ws_close(code, close_code, reason, deadline)
        } else {
            self.real
                .ws_sessions(deadline)
                .map(|codes| codes.iter().any(|c| c == code))
        };
        self.record(|r| {
            r.websocket.push(WsRecord {
                op: "close",
                session: Some(code.to_string()),
                text: Some(self.text(reason)),
                close_code: Some(close_code),
                performed: self.live,
            })
        });
        outcome
    }

    fn ws_sessions(&self, deadline: Instant) -> Result<Vec<String>, String> {
        self.real.ws_sessions(deadline)
    }

    fn emit_event(
        &self,
        event_type: &str,
        data: serde_json::Value,
        deadline: Instant,
    ) -> Result<i64, String> {
        let shown = self.text(&data.to_string());
        let outcome = if self.live {
            self.real.emit_event(event_type, data, deadline).map(Some)
        } else {
            Ok(None)
        };
        self.record(|r| {
            r.events.push(EventRecord {
                event_type: event_type.to_string(),
                data: shown,
                performed: self.live && outcome.is_ok(),
                id: outcome.as_ref().ok().copied().flatten(),
            })
        });
        outcome.map(|id| id.unwrap_or(0))
    }

    fn outgoing(
        &self,
        call: &OutgoingCall<'_>,
        perform: &mut dyn FnMut() -> Result<OutgoingResponse, String>,
    ) -> Result<OutgoingResponse, String> {
        let started = Instant::now();
        let target = self.masker.target(call.path);
        let mock = self
            .mocks
            .iter()
            .find(|m| m.matches(call.method, call.path));
        let (answered_by, outcome) = match (&target, mock) {
            (Err(e), _) => ("not_performed", Err(e.clone())),
            (Ok(_), Some(m)) => (
                "mock",
                Ok(OutgoingResponse {
                    status: m.status,
                    body: m.body.as_bytes().to_vec(),
                    headers: m.headers.clone(),
                }),
            ),
            (Ok(_), None) if self.live => ("performed", perform()),
            (Ok(_), None) => (
                "not_performed",
                Ok(OutgoingResponse {
                    status: 200,
                    body: Vec::new(),
                    headers: Vec::new(),
                }),
            ),
        };
        let record = CallRecord {
            method: call.method.to_ascii_uppercase(),
            url: target.unwrap_or_else(|_| self.text(call.path).text),
            headers: call
                .headers
                .iter()
                .map(|(k, v)| self.masker.header(k, v))
                .collect(),
            body: self.text_bytes(call.body),
            answered_by: answered_by.to_string(),
            status: outcome.as_ref().ok().map(|r| r.status),
            response: outcome.as_ref().ok().map(|r| self.text_bytes(&r.body)),
            error: outcome.as_ref().err().map(|e| self.text(e).text),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        self.record(|r| r.calls.push(record));
        outcome
    }

    fn state_get(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, StateError> {
        let store = self.state_store()?;
        store.limits().check_key(key)?;
        let written = {
            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            recorded.state_overlay.get(key).cloned()
        };
        match written {
            Some(Some(p)) if p.expires.is_none_or(|at| at > Instant::now()) => Ok(Some(p.json)),
            Some(_) => Ok(None),
            None => store.get(channel_id, key, deadline),
        }
    }

    fn state_set(
        &self,
        _channel_id: &str,
        key: &str,
        json: &str,
        ttl_s: i64,
        _deadline: Instant,
    ) -> Result<(), StateError> {
        let limits = self.state_store()?.limits();
        limits.check_key(key)?;
        limits.check_value(json)?;
        limits.check_ttl(ttl_s)?;
        let record = StateRecord {
            op: "set",
            key: self.text(key).text,
            value: Some(self.text(json)),
            ttl_s: Some(ttl_s),
            result: None,
            performed: false,
        };
        let after = Pending {
            json: json.to_string(),
            expires: Self::expiry(ttl_s),
        };
        self.record_state(record, key, Some(after));
        Ok(())
    }

    fn state_del(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        let was = self.state_get(channel_id, key, deadline)?.is_some();
        let record = StateRecord {
            op: "del",
            key: self.text(key).text,
            value: None,
            ttl_s: None,
            result: Some(was),
            performed: false,
        };
        self.record_state(record, key, None);
        Ok(was)
    }

    fn seen_before(
        &self,
        channel_id: &str,
        key: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        self.state_store()?.limits().check_ttl(ttl_s)?;
        let seen = self.state_get(channel_id, key, deadline)?.is_some();
        if seen {
            channel_state::count(channel_state::Op::SeenBefore, channel_state::Outcome::Hit);
            return Ok(true);
        }
        let record = StateRecord {
            op: "seen_before",
            key: self.text(key).text,
            value: None,
            ttl_s: Some(ttl_s),
            result: Some(false),
            performed: false,
        };
        let after = Pending {
            json: "true".to_string(),
            expires: Self::expiry(ttl_s),
        };
        self.record_state(record, key, Some(after));
        Ok(false)
    }

    fn capture_log(&self, level: &str, text: &str) -> bool {
        let line = self.masker.log_line(level, text);
        self.record(|r| r.logs.push(line));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock(method: Option<&str>, path: &str) -> Mock {
        Mock {
            method: method.map(str::to_string),
            path: path.into(),
            status: 200,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    #[test]
    fn mocks_match_by_method_and_path() {
        assert!(mock(Some("get"), "/orders/1").matches("GET", "orders/1?x=2"));
        assert!(mock(None, "orders/1").matches("POST", "/orders/1"));
        assert!(!mock(Some("POST"), "orders/1").matches("GET", "orders/1"));
        assert!(mock(None, "orders?x=1").matches("GET", "/orders?x=1"));
        assert!(!mock(None, "orders?x=1").matches("GET", "orders?x=2"));
        assert!(!mock(None, "orders").matches("GET", "orders/1"));
    }

    #[test]
    fn reported_urls_and_texts_hide_secrets_and_are_cut() {
        let channel = Arc::new(Channel {
            token: "tok-0123456789abcdef".into(),
            outgoing_url: "https://user:pw-secret@example.com/api".into(),
            outgoing_token_primary: "primary-secret-1".into(),
            ..Channel::default()
        });
        let host = |max| {
            DryHost::new(
                channel.clone(),
                Arc::new(super::super::NoHost),
                false,
                vec![],
                max,
            )
        };
        let url = host(1024).masker.target("orders?api_key=k1&x=1").unwrap();
        assert!(!url.contains("pw-secret") && !url.contains("k1"), "{url}");
        assert!(
            url.contains("example.com/api/orders?") && url.contains("x=1"),
            "{url}"
        );
        let host = host(7);
        let t = host.text("say primary-secret-1 twice");
        assert_eq!(t.text, "say ***");
        assert!(t.truncated);
        assert_eq!(t.bytes, 26);
        assert!(host.masker.target("../up").is_err());
    }
}
