//! Capturing what one run does, for its execution record.
//!
//! A channel whose history is not `off` runs with a [`RecordingHost`] (made once per
//! channel version): it passes every effect to the channel's real host and notes the
//! script's log lines and outgoing calls (status, latency) in a buffer of the scenario
//! thread. Whether the run is kept is known only when it ends (`errors` keeps failures):
//! a run that is not kept clears the buffer, and masking and serialising happen only for
//! runs that are kept ([`Finished::into_row`]), with the same [`Masker`] as dry runs.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Detail, Inputs};
use crate::actors::ScriptKind;
use crate::db::models::Execution;
use crate::scenario::channel_state::StateError;
use crate::scenario::outgoing::OutgoingResponse;
use crate::scenario::record::{CallRecord, Masker, SECRET_HEADERS, secret_name};
use crate::scenario::{ChannelHost, OutgoingCall, ScenarioError, ScenarioReply, StartParams};

/// An outgoing call as it happened, raw (masked when the run is kept).
struct RawCall {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// The first bytes of the body (the masker's bound and margin) and its length.
    body: Vec<u8>,
    body_len: usize,
    outcome: Result<(u16, Vec<u8>, usize), String>,
    latency: Duration,
}

#[derive(Default)]
struct Buffer {
    active: bool,
    /// Bytes of each captured body kept raw.
    keep_bytes: usize,
    logs: Vec<(String, String)>,
    calls: Vec<RawCall>,
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
}

/// Starts capturing the run about to start on this thread.
pub fn begin(keep_bytes: usize) {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        b.active = true;
        b.keep_bytes = keep_bytes;
        b.logs.clear();
        b.calls.clear();
    });
}

/// What a kept run captured.
pub struct Captured {
    logs: Vec<(String, String)>,
    calls: Vec<RawCall>,
}

/// Ends the capture of this thread's run: what it captured when `keep`, else nothing
/// (the buffer is cleared, its room kept for the next run).
pub fn end(keep: bool) -> Option<Captured> {
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        b.active = false;
        if keep {
            Some(Captured {
                logs: std::mem::take(&mut b.logs),
                calls: std::mem::take(&mut b.calls),
            })
        } else {
            b.logs.clear();
            b.calls.clear();
            None
        }
    })
}

fn with_active(f: impl FnOnce(&mut Buffer)) {
    BUFFER.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut()
            && b.active
        {
            f(&mut b)
        }
    });
}

/// The host of a channel whose runs are recorded: the channel's real host, plus a note
/// of each log line and outgoing call in the running thread's capture buffer.
pub struct RecordingHost {
    real: Arc<dyn ChannelHost>,
    masker: Masker,
}

impl RecordingHost {
    pub fn new(real: Arc<dyn ChannelHost>, masker: Masker) -> RecordingHost {
        RecordingHost { real, masker }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }
}

impl ChannelHost for RecordingHost {
    fn ws_send(&self, code: &str, text: &str, deadline: Instant) -> Result<bool, String> {
        self.real.ws_send(code, text, deadline)
    }

    fn ws_broadcast(&self, text: &str, deadline: Instant) -> Result<usize, String> {
        self.real.ws_broadcast(text, deadline)
    }

    fn ws_close(
        &self,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: Instant,
    ) -> Result<bool, String> {
        self.real.ws_close(code, close_code, reason, deadline)
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
        self.real.emit_event(event_type, data, deadline)
    }

    fn outgoing(
        &self,
        call: &OutgoingCall<'_>,
        perform: &mut dyn FnMut() -> Result<OutgoingResponse, String>,
    ) -> Result<OutgoingResponse, String> {
        let started = Instant::now();
        let outcome = self.real.outgoing(call, perform);
        let latency = started.elapsed();
        with_active(|b| {
            let keep = b.keep_bytes;
            let prefix = |bytes: &[u8]| bytes[..bytes.len().min(keep)].to_vec();
            b.calls.push(RawCall {
                method: call.method.to_ascii_uppercase(),
                path: call.path.to_string(),
                headers: call.headers.to_vec(),
                body: prefix(call.body),
                body_len: call.body.len(),
                outcome: match &outcome {
                    Ok(r) => Ok((r.status, prefix(&r.body), r.body.len())),
                    Err(e) => Err(e.clone()),
                },
                latency,
            });
        });
        outcome
    }

    // Channel state: the real host's (a recorded run keeps state as any run does).
    fn state_get(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, StateError> {
        self.real.state_get(channel_id, key, deadline)
    }

    fn state_set(
        &self,
        channel_id: &str,
        key: &str,
        json: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<(), StateError> {
        self.real.state_set(channel_id, key, json, ttl_s, deadline)
    }

    fn state_del(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        self.real.state_del(channel_id, key, deadline)
    }

    fn seen_before(
        &self,
        channel_id: &str,
        key: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        self.real.seen_before(channel_id, key, ttl_s, deadline)
    }

    /// Noted for the record, and written to the node's log as without history.
    fn capture_log(&self, level: &str, text: &str) -> bool {
        with_active(|b| b.logs.push((level.to_string(), text.to_string())));
        self.real.capture_log(level, text)
    }
}

/// A kept run: how it ended (the reply's body cut to what is recorded), and what it
/// captured.
pub struct Finished {
    /// Taken before the caller hears back (UUIDv7, in creation order): a caller's next
    /// request cannot get an earlier id than this one.
    pub id: uuid::Uuid,
    pub host: Arc<RecordingHost>,
    pub kind: ScriptKind,
    pub started_at: i64,
    pub duration: Duration,
    pub waited: Duration,
    /// The reply with its body cut (and the body's whole length), or the error.
    pub outcome: Result<(ScenarioReply, usize), ScenarioError>,
    pub captured: Captured,
}

impl Finished {
    /// What a kept run's record needs of its outcome, taken before the outcome goes to
    /// the caller: the reply's body only as far as it is recorded.
    pub fn keep_outcome(
        host: &RecordingHost,
        outcome: &Result<ScenarioReply, ScenarioError>,
    ) -> Result<(ScenarioReply, usize), ScenarioError> {
        match outcome {
            Ok(reply) => {
                let keep = reply.content.len().min(host.masker.scan_bytes());
                Ok((
                    ScenarioReply {
                        code: reply.code,
                        content: reply.content[..keep].to_vec(),
                        headers: reply.headers.clone(),
                    },
                    reply.content.len(),
                ))
            }
            Err(e) => Err(e.clone()),
        }
    }

    /// The row to store: inputs read from the start parameters, everything masked.
    pub fn into_row(self, params: &dyn StartParams) -> Option<Execution> {
        // The credentials the request came with are hidden wherever the script may
        // have copied them (its log lines, calls, reply), like the channel's tokens.
        let request_secrets = match self.kind {
            ScriptKind::Webhook => request_secrets(params),
            ScriptKind::Websocket => Vec::new(),
        };
        let masker = self
            .host
            .masker
            .with_secrets(request_secrets.iter().map(String::as_str));
        let m = &masker;
        let channel = m.channel();
        let failed = self.outcome.is_err();
        let (reply, error) = match &self.outcome {
            Ok((reply, len)) => {
                let mut r = m.reply(reply, self.kind == ScriptKind::Webhook);
                r.body.truncated |= reply.content.len() < *len;
                r.body.bytes = *len;
                (Some(r), None)
            }
            Err(e) => (None, Some(m.error(e))),
        };
        let inputs = match self.kind {
            ScriptKind::Webhook => webhook_inputs(m, params),
            ScriptKind::Websocket => Inputs::Websocket {
                session: m.text(&params.get(1).unwrap_or_default()).text,
                text: m.text(&params.get(2).unwrap_or_default()),
                peer_ip: params.get(4).unwrap_or_default(),
            },
        };
        let calls = self
            .captured
            .calls
            .into_iter()
            .map(|c| {
                let (status, response, error) = match c.outcome {
                    Ok((status, body, len)) => {
                        let mut t = m.text_bytes(&body);
                        t.truncated |= body.len() < len;
                        t.bytes = len;
                        (Some(status), Some(t), None)
                    }
                    Err(e) => (None, None, Some(m.text(&e).text)),
                };
                let mut body = m.text_bytes(&c.body);
                body.truncated |= c.body.len() < c.body_len;
                body.bytes = c.body_len;
                CallRecord {
                    method: c.method,
                    url: m.target(&c.path).unwrap_or_else(|_| m.text(&c.path).text),
                    headers: c.headers.iter().map(|(k, v)| m.header(k, v)).collect(),
                    body,
                    answered_by: "performed".to_string(),
                    status,
                    response,
                    error,
                    duration_ms: c.latency.as_secs_f64() * 1000.0,
                }
            })
            .collect();
        let detail = Detail {
            inputs,
            reply,
            error,
            logs: self
                .captured
                .logs
                .iter()
                .map(|(level, text)| m.log_line(level, text))
                .collect(),
            calls,
        };
        let detail = serde_json::to_string(&detail).ok()?;
        Some(Execution {
            id: self.id.to_string(),
            domain: channel.domain.clone(),
            channel_id: channel.id.clone(),
            started_at: self.started_at,
            trigger_kind: match self.kind {
                ScriptKind::Webhook => "webhook",
                ScriptKind::Websocket => "websocket",
            }
            .to_string(),
            outcome: if failed { "error" } else { "ok" }.to_string(),
            version: channel.version,
            duration_us: micros(self.duration),
            wait_us: micros(self.waited.min(self.duration)),
            detail,
        })
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The credentials of a webhook request: its `Authorization`-like and cookie header
/// values (whole, their parts after a scheme, each cookie's value), secret-named header
/// values, and secret-named query values.
fn request_secrets(params: &dyn StartParams) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(map) = params
        .get(5)
        .and_then(|h| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&h).ok())
    {
        for (name, value) in &map {
            let Some(value) = value.as_str() else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            if !(SECRET_HEADERS.contains(&name.as_str()) || secret_name(&name)) {
                continue;
            }
            out.push(value.to_string());
            for part in value.split([';', ',', ' ']) {
                let part = part.trim();
                out.push(part.to_string());
                if let Some((_, v)) = part.split_once('=') {
                    out.push(v.to_string());
                }
            }
        }
    }
    if let Some(url) = params.get(3).and_then(|u| url::Url::parse(&u).ok()) {
        for (k, v) in url.query_pairs() {
            if secret_name(&k) {
                out.push(v.into_owned());
            }
        }
    }
    // Longest first: a whole value goes before its parts.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// A webhook's inputs from its start parameters: the URL below the channel's token,
/// headers and body masked.
fn webhook_inputs(m: &Masker, params: &dyn StartParams) -> Inputs {
    let url = params.get(3).unwrap_or_default();
    let (host, secure, path) = match url::Url::parse(&url) {
        Ok(u) => {
            let host = match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => String::new(),
            };
            let below = below_token(u.path());
            let query = u.query().map(|_| {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret_name(&k) {
                            crate::redact::MASK.to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish()
            });
            let path = match query {
                Some(q) => format!("{below}?{q}"),
                None => below.to_string(),
            };
            (host, u.scheme() == "https", m.text(&path).text)
        }
        Err(_) => (String::new(), false, String::new()),
    };
    let headers = params
        .get(5)
        .and_then(|h| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&h).ok())
        .map(|map| {
            map.iter()
                .map(|(k, v)| m.header(k, v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let body = match params.body_bytes() {
        Some(bytes) => m.text_bytes(bytes),
        None => m.text(&params.get(4).unwrap_or_default()),
    };
    Inputs::Webhook {
        method: params.get(2).unwrap_or_default(),
        path,
        host,
        secure,
        headers,
        body,
        peer_ip: params.get(6).unwrap_or_default(),
        protocol: params.get(7).unwrap_or_default(),
    }
}

/// The part of a webhook path below `/api/token/v1/{token}` (the token left out).
fn below_token(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/api/token/v1/") else {
        return "";
    };
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::below_token;

    #[test]
    fn the_token_is_left_out_of_the_path() {
        assert_eq!(below_token("/api/token/v1/TOKEN/orders/1"), "/orders/1");
        assert_eq!(below_token("/api/token/v1/TOKEN"), "");
        assert_eq!(below_token("/elsewhere"), "");
    }
}
