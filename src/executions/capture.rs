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
use crate::scenario::record::{CallRecord, Masker, secret_header, secret_name};
use crate::scenario::{
    ChannelHost, OutgoingCall, RequestParts, ScenarioError, ScenarioReply, StartParams,
};

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

    /// Bytes this holds beyond its size (reply, log lines, calls), roughly.
    pub fn held_bytes(&self) -> usize {
        let reply = match &self.outcome {
            Ok((reply, _)) => reply.content.len(),
            Err(_) => 0,
        };
        let logs: usize = self
            .captured
            .logs
            .iter()
            .map(|(l, t)| l.len() + t.len())
            .sum();
        let calls: usize = self
            .captured
            .calls
            .iter()
            .map(|c| {
                c.method.len()
                    + c.path.len()
                    + c.body.len()
                    + c.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
                    + match &c.outcome {
                        Ok((_, body, _)) => body.len(),
                        Err(e) => e.len(),
                    }
            })
            .sum();
        reply + logs + calls
    }

    /// The row to store: inputs read from the start parameters, everything masked
    /// (None: it could not be serialised, or a webhook's parameters lack its request).
    pub fn into_row(self, params: &dyn StartParams) -> Option<Execution> {
        // The credentials the request came with are hidden wherever the script may
        // have copied them (its log lines, calls, reply), like the channel's tokens.
        let request = match self.kind {
            // A webhook's parameters carry its request (`WebhookParams::request`).
            ScriptKind::Webhook => Some(params.request()?),
            ScriptKind::Websocket => None,
        };
        let request_secrets = request.as_ref().map(request_secrets).unwrap_or_default();
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
        let inputs = match &request {
            Some(request) => webhook_inputs(m, request),
            None => Inputs::Websocket {
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
fn request_secrets(request: &RequestParts<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in &request.headers {
        if !secret_header(name) {
            continue;
        }
        let value = String::from_utf8_lossy(value);
        for part in value.split([';', ',', ' ']) {
            let part = part.trim();
            out.push(part.to_string());
            if let Some((_, v)) = part.split_once('=') {
                out.push(v.to_string());
            }
        }
        out.push(value.into_owned());
    }
    // Credentials in the authority (`user:password@host`, an absolute-form request).
    if let Some((userinfo, _)) = request.host.rsplit_once('@') {
        out.push(userinfo.to_string());
        if let Some((_, password)) = userinfo.split_once(':') {
            out.push(password.to_string());
        }
    }
    if let Some((_, query)) = request.path_and_query.split_once('?') {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
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

/// A webhook's inputs: the path below the channel's token, secret-named query values,
/// credential headers and everything the masker finds masked. Headers sorted by name,
/// a repeated one joined with ", " as `startparam(5)` has it.
fn webhook_inputs(m: &Masker, request: &RequestParts<'_>) -> Inputs {
    let (path, query) = match request.path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path_and_query, None),
    };
    let below = below_token(path);
    let path = match query {
        // Rewritten only when a value is to be masked.
        Some(q) if url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| secret_name(&k)) => {
            let masked = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| {
                    let v = if secret_name(&k) {
                        std::borrow::Cow::Borrowed(crate::redact::MASK)
                    } else {
                        v
                    };
                    (k, v)
                }))
                .finish();
            format!("{below}?{masked}")
        }
        Some(q) => format!("{below}?{q}"),
        None => below.to_string(),
    };
    let mut headers: Vec<(String, String)> = Vec::with_capacity(request.headers.len());
    let mut sorted: Vec<&(&str, &[u8])> = request.headers.iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    for (name, value) in sorted {
        let value = String::from_utf8_lossy(value);
        match headers.last_mut() {
            Some((last, joined)) if last.eq_ignore_ascii_case(name) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => headers.push((name.to_string(), value.into_owned())),
        }
    }
    Inputs::Webhook {
        method: request.method.to_string(),
        path: m.text(&path).text,
        // Without credentials in the authority (`user:password@`), if any.
        host: request
            .host
            .rsplit_once('@')
            .map_or(request.host, |(_, host)| host)
            .to_string(),
        secure: request.secure,
        headers: headers
            .iter()
            .map(|(name, value)| m.header(name, value))
            .collect(),
        body: m.text_bytes(request.body),
        peer_ip: request.peer_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        protocol: request.protocol.to_string(),
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
    use std::sync::Arc;

    use super::*;
    use crate::db::models::Channel;

    #[test]
    fn a_webhook_is_recorded_without_its_token_or_credentials() {
        let masker = Masker::new(
            Arc::new(Channel {
                token: "tok-0123456789abcdef".into(),
                ..Channel::default()
            }),
            4096,
        );
        let request = RequestParts {
            method: "POST",
            secure: false,
            host: "user:hunter2-password@gw.example:8080",
            path_and_query: "/api/token/v1/tok-0123456789abcdef/orders?Api_Key=k-123456789&x=1",
            headers: vec![
                ("x-b", b"2".as_slice()),
                ("authorization", b"Bearer sk-live-abcdefgh".as_slice()),
                ("x-b", b"3".as_slice()),
                ("x-a", b"1".as_slice()),
            ],
            body: b"{\"n\":1}",
            peer_ip: Some("10.0.0.1".parse().unwrap()),
            protocol: "HTTP/1.1",
        };
        let secrets = request_secrets(&request);
        for s in ["hunter2-password", "sk-live-abcdefgh", "k-123456789"] {
            assert!(secrets.iter().any(|x| x == s), "{s} in {secrets:?}");
        }
        let Inputs::Webhook {
            host,
            path,
            headers,
            body,
            ..
        } = webhook_inputs(&masker, &request)
        else {
            panic!("a webhook");
        };
        assert_eq!(host, "gw.example:8080");
        assert_eq!(path, "/orders?Api_Key=***&x=1");
        assert_eq!(
            headers,
            vec![
                ("authorization".to_string(), "***".to_string()),
                ("x-a".to_string(), "1".to_string()),
                ("x-b".to_string(), "2, 3".to_string()),
            ]
        );
        assert_eq!(body.text, "{\"n\":1}");
    }

    #[test]
    fn the_token_is_left_out_of_the_path() {
        assert_eq!(below_token("/api/token/v1/TOKEN/orders/1"), "/orders/1");
        assert_eq!(below_token("/api/token/v1/TOKEN"), "");
        assert_eq!(below_token("/elsewhere"), "");
    }
}
