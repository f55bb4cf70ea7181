//! WsSession: one websocket of a public channel (actix-web-actors).
//!
//! Each text message runs the channel's websocket scenario with (session code, text):
//! the session submits it to the scenario pool itself, with the channel's published
//! handle, and keeps its own bounded queue so that its messages are handled one at a
//! time, in order, while different sessions run in parallel. The scenario's `response_content` comes back as a text frame; a scenario
//! error comes back as `{"error": {"code": ..., "message": ...}}` and the session stays.
//!
//! Kept behind this file so that a move to `actix-ws` stays local (see DESIGN §7).

use std::collections::VecDeque;

use bytestring::ByteString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};

use super::close_code;
use super::handle::{ChannelHandle, ChannelStats, ScriptKind};
use super::registry::ChannelRegistry;
use super::sessions::{SessionCounters, SessionEntry, SessionSlot, SessionTable, ToSession};
use super::ws_backlog::Frame;
use crate::scenario::ScenarioError;
use crate::scenario::dispatch::RunResult;
use crate::scenario::dispatch::{Dispatcher, Params, ShareParams, Submitted};

/// Messages a session runs inline in one turn of its actor before it yields.
const INLINE_PER_TURN: usize = 16;

/// How long a session waits before trying a refused message again: the first time,
/// then doubling per refusal (with jitter, so that sessions refused together do not
/// come back together) up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MOST: Duration = Duration::from_secs(1);

/// What a waiting message counts besides its text (queue entry, string header).
const MESSAGE_OVERHEAD: u64 = 64;

/// Bytes of messages waiting for their scenario on this node, all sessions together
/// (`ws_node_max_inbound_bytes`).
#[derive(Debug)]
pub struct InboundBudget {
    bytes: AtomicU64,
    limit: u64,
}

impl InboundBudget {
    pub fn new(limit: u64) -> Arc<InboundBudget> {
        Arc::new(InboundBudget {
            bytes: AtomicU64::new(0),
            limit,
        })
    }

    /// Bytes waiting now (a gauge).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        if self.bytes.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

fn cost(text: &str) -> u64 {
    text.len() as u64 + MESSAGE_OVERHEAD
}

/// Limits of one session.
#[derive(Debug, Clone)]
pub struct WsLimits {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub max_message_bytes: usize,
    /// Messages waiting at most: by count and by bytes (`ws_session_queue*`).
    pub queue: usize,
    pub queue_bytes: usize,
    /// A run's own deadline, plus a margin: how long a session waits for a reply.
    pub run_timeout: Duration,
}

pub struct WsSession {
    code: Arc<str>,
    peer_ip: Arc<str>,
    hello: bool,
    /// The channel's version its last message ran with; a message runs with the
    /// version published now (`ChannelRegistry::current`: no lookup while this one is
    /// still it), so that an update applies to the next message.
    handle: Arc<ChannelHandle>,
    registry: Arc<ChannelRegistry>,
    dispatcher: Arc<Dispatcher>,
    sessions: Arc<SessionTable>,
    stats: Arc<ChannelStats>,
    counters: Arc<SessionCounters>,
    limits: WsLimits,
    last_pong: Instant,
    /// Waiting messages as the codec handed them over (shared, not copied).
    pending: VecDeque<ByteString>,
    /// Bytes of `pending` and of the message running, charged to `inbound` too.
    queued_bytes: u64,
    inbound: Arc<InboundBudget>,
    /// A message is running, or waits to be tried again.
    busy: bool,
    /// The message whose run is in flight.
    running: Option<Running>,
    /// Set while a timer is armed to end the running message at its bound.
    watchdog: Option<SpawnHandle>,
    /// When the heartbeat ticks next (it arms the watchdog of a long run).
    next_tick: Instant,
    /// The delay before the next try of a refused message (zero: not refused).
    retry_delay: Duration,
    /// A fragmented text message being put together.
    fragment: Option<Vec<u8>>,
    /// The close code that ended the session, when one was sent or received.
    closed_with: Option<u16>,
    logger: slog::Logger,
    backlog: Arc<super::ws_backlog::Backlog>,
    max_backlog_bytes: u64,
    /// Set when a frame was refused on its declared length (close 1009).
    frame_refused: crate::http::ws_frames::Refused,
    _slot: SessionSlot,
    _channel_slot: SessionSlot,
}

/// A message whose run is in flight: its text (its bytes stay counted until it ends),
/// when it started, and the future that waits for its outcome.
struct Running {
    text: ByteString,
    started: Instant,
    outcome: SpawnHandle,
}

/// What a session needs to start.
pub struct WsSessionParts {
    pub peer_ip: String,
    pub hello: bool,
    pub handle: Arc<ChannelHandle>,
    pub registry: Arc<ChannelRegistry>,
    pub dispatcher: Arc<Dispatcher>,
    pub sessions: Arc<SessionTable>,
    pub stats: Arc<ChannelStats>,
    pub limits: WsLimits,
    pub logger: slog::Logger,
    pub slot: SessionSlot,
    pub channel_slot: SessionSlot,
    pub backlog: Arc<super::ws_backlog::Backlog>,
    pub max_backlog_bytes: usize,
    pub inbound: Arc<InboundBudget>,
    pub frame_refused: crate::http::ws_frames::Refused,
}

impl WsSession {
    pub fn new(parts: WsSessionParts) -> WsSession {
        let code = uuid::Uuid::now_v7().to_string();
        WsSession {
            logger: parts.logger,
            code: code.into(),
            peer_ip: parts.peer_ip.into(),
            hello: parts.hello,
            handle: parts.handle,
            registry: parts.registry,
            dispatcher: parts.dispatcher,
            sessions: parts.sessions,
            stats: parts.stats,
            counters: Arc::new(SessionCounters::default()),
            limits: parts.limits,
            last_pong: Instant::now(),
            pending: VecDeque::new(),
            queued_bytes: 0,
            inbound: parts.inbound,
            busy: false,
            running: None,
            watchdog: None,
            next_tick: Instant::now(),
            retry_delay: Duration::ZERO,
            fragment: None,
            closed_with: None,
            backlog: parts.backlog,
            max_backlog_bytes: parts.max_backlog_bytes as u64,
            frame_refused: parts.frame_refused,
            _slot: parts.slot,
            _channel_slot: parts.channel_slot,
        }
    }

    /// A text of this session's own (a reply, an error, the hello), written while its
    /// actor runs: straight into the context's response stream, which encodes it in
    /// the same poll (one buffer, as actix's `ctx.text`), when nothing is queued ahead
    /// of it and the poll's direct bytes stay within `SLICE` (`Backlog::take_direct`);
    /// else behind what is queued, counted against the budgets and sliced like any
    /// queued frame. Direct bytes need no count of their own: the context yields them
    /// at the end of the poll that wrote them, at most `SLICE` per poll, and the HTTP
    /// layer polls the stream only while its write buffer has room.
    fn send_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: ByteString) {
        if self.closed_with.is_some() {
            return;
        }
        // The frame's header: counted as the queued path counts a frame.
        let framed = text.len() + frame_header_len(text.len());
        if self.backlog.pending() != 0
            || self.backlog.is_evicted()
            || !self.backlog.take_direct(framed)
        {
            let frame = self.backlog.budget().text(&text);
            self.send_frame(ctx, &frame);
            return;
        }
        self.counted_out(framed);
        ctx.write_raw(ws::Message::Text(text));
    }

    fn counted_out(&self, bytes: usize) {
        self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.ws_messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues an encoded text frame (shared with the other sessions of a broadcast).
    fn send_frame(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: &Frame) {
        if self.closed_with.is_some() {
            return;
        }
        if self.backlog.pending() > self.max_backlog_bytes || !self.backlog.push(frame) {
            // Not reading (or evicted by the node's outbound budget): what is queued
            // goes now, the close follows.
            self.backlog.clear();
            self.stats.ws_errors.fetch_add(1, Ordering::Relaxed);
            self.close(
                ctx,
                close_code::POLICY,
                "the client is not reading its messages",
            );
            return;
        }
        self.counted_out(frame.len());
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        self.closed_with.get_or_insert(code);
        slog::debug!(self.logger, "closing websocket";
            "ws_session" => &*self.code, "code" => code, "reason" => reason);
        let reason = CloseReason {
            code: CloseCode::from(code),
            description: (!reason.is_empty()).then(|| reason.to_string()),
        };
        // The close frame is the connection's last: behind the frames still queued
        // (a run's `ws_send` then `ws_close`), else from the context, behind what it
        // holds. The response stream ends once the context has stopped and the queue
        // is written.
        if self.backlog.pending() != 0 && !self.backlog.is_evicted() {
            self.backlog.push_close(reason);
        } else {
            ctx.close(Some(reason));
        }
        ctx.stop();
    }

    /// A complete text message: queue it, and start it if nothing is running.
    fn received(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: ByteString) {
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_in
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        self.stats.ws_messages_in.fetch_add(1, Ordering::Relaxed);
        let cost = cost(&text);
        // A burst waits; a flood (past the session's bytes or count, or the node's
        // bytes) is closed.
        if self.pending.len() >= self.limits.queue
            || self.queued_bytes + cost > self.limits.queue_bytes as u64
            || !self.inbound.take(cost)
        {
            self.stats.ws_errors.fetch_add(1, Ordering::Relaxed);
            self.close(ctx, close_code::POLICY, "message queue overflow");
            return;
        }
        self.queued_bytes += cost;
        self.pending.push_back(text);
        self.run_next(ctx);
    }

    fn run_next(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        // Runs that end inline are answered here and the next message starts; a loop,
        // not recursion, so that a pipelined burst does not grow the stack, and at most
        // INLINE_PER_TURN of them before the session yields to the worker's other
        // connections.
        let mut inline = 0;
        while !self.busy {
            if self.closed_with.is_some() {
                return;
            }
            if inline == INLINE_PER_TURN {
                self.busy = true;
                ctx.spawn(
                    tokio::task::yield_now()
                        .into_actor(self)
                        .map(|(), act, ctx| {
                            act.busy = false;
                            act.run_next(ctx);
                        }),
                );
                return;
            }
            let Some(text) = self.pending.pop_front() else {
                return;
            };
            self.busy = true;
            // Like a webhook, a message goes from here straight to its run (inline, or
            // the scenario pool), with the channel's current published version: at
            // most one cross-thread hop before its scenario starts, and its outcome
            // comes straight back to this session.
            let submitted = match self.registry.current(&self.handle) {
                Some(handle) => {
                    if !Arc::ptr_eq(&handle, &self.handle) {
                        self.handle = handle.clone();
                    }
                    let params = WsParams {
                        code: &self.code,
                        text: &text,
                        channel_json: handle.channel_json(),
                        peer_ip: &self.peer_ip,
                    };
                    self.dispatcher.submit(
                        handle.clone(),
                        ScriptKind::Websocket,
                        Params::Borrowed(&params),
                        true,
                    )
                }
                None => Err(ScenarioError::Unavailable("the channel is gone".into())),
            };
            let rx = match submitted {
                Ok(Submitted::Queued(rx)) => rx,
                Ok(Submitted::Ran(outcome)) => {
                    self.settle(ctx, text, outcome);
                    inline += 1;
                    continue;
                }
                // Answered here as well: counted in the turn (a channel that is gone
                // answers a whole queue at once).
                Ok(Submitted::Background) => {
                    self.settle(ctx, text, Err(ScenarioError::Panicked));
                    inline += 1;
                    continue;
                }
                Err(e) => {
                    self.settle(ctx, text, Err(e));
                    inline += 1;
                    continue;
                }
            };
            // The wait is bounded by the session's watchdog (`watch_run`), not by a
            // timer per message.
            let outcome = async move { rx.await.unwrap_or(Err(ScenarioError::Panicked)) };
            let outcome = ctx.spawn(outcome.into_actor(self).map(
                |outcome: RunResult, act, ctx| {
                    if let Some(run) = act.running.take() {
                        act.finished(ctx, run.text, outcome);
                    }
                },
            ));
            self.running = Some(Running {
                text,
                started: Instant::now(),
                outcome,
            });
            self.watch_run(ctx);
        }
    }

    /// The node's heartbeat ticked (`actors::ws_heartbeat`, every
    /// `heartbeat_interval`): ping the client, or close the session when it has not
    /// answered for `heartbeat_timeout`. The session keeps no timer of its own: actix
    /// polls every timer of a context whenever it runs, so a timer would be polled with
    /// every message.
    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.next_tick = Instant::now() + self.limits.heartbeat_interval;
        if self.last_pong.elapsed() > self.limits.heartbeat_timeout {
            self.close(ctx, close_code::GOING_AWAY, "heartbeat timeout");
        } else {
            ctx.ping(b"");
            self.watch_run(ctx);
        }
    }

    /// Arms the watchdog of the running message when its bound comes before the next
    /// heartbeat tick (which calls this again): a run that does not end within
    /// `run_timeout` is answered `timeout` at that bound, and the session goes on.
    fn watch_run(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(run) = &self.running else {
            return;
        };
        let bound = run.started + self.limits.run_timeout;
        if self.watchdog.is_some() || bound > self.next_tick {
            return;
        }
        let wait = bound.saturating_duration_since(Instant::now());
        self.watchdog = Some(ctx.run_later(wait, |act, ctx| {
            act.watchdog = None;
            let overdue = act
                .running
                .as_ref()
                .is_some_and(|run| run.started.elapsed() >= act.limits.run_timeout);
            if !overdue {
                // Ended; a later message may be running: its own bound.
                act.watch_run(ctx);
                return;
            }
            if let Some(run) = act.running.take() {
                ctx.cancel_future(run.outcome);
                act.finished(ctx, run.text, Err(ScenarioError::Timeout));
            }
        }));
    }

    /// The running message's outcome: its reply (or error frame) goes out and the next
    /// message starts; a refusal puts it back at the head of the queue for a retry.
    fn finished(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        text: ByteString,
        outcome: RunResult,
    ) {
        self.settle(ctx, text, outcome);
        self.run_next(ctx);
    }

    /// A message's outcome: its reply (or error frame) goes out; a refusal puts it back
    /// at the head of the queue and schedules a retry (the session stays busy).
    fn settle(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        text: ByteString,
        outcome: RunResult,
    ) {
        // A full scenario queue or a busy channel is back-pressure, not a failure: the
        // message goes back to the head of this session's queue and is tried again
        // after a growing delay (the session's queue limits still bound what waits
        // meanwhile).
        if matches!(
            outcome,
            Err(ScenarioError::QueueFull { .. } | ScenarioError::ChannelBusy)
        ) {
            self.pending.push_front(text);
            self.stats.ws_retries.fetch_add(1, Ordering::Relaxed);
            self.retry_delay = next_retry_delay(self.retry_delay);
            ctx.run_later(jittered(self.retry_delay), |act, ctx| {
                act.busy = false;
                act.run_next(ctx);
            });
            return;
        }
        self.retry_delay = Duration::ZERO;
        let done = cost(&text);
        self.queued_bytes = self.queued_bytes.saturating_sub(done);
        self.inbound.give_back(done);
        self.busy = false;
        match outcome {
            Ok(reply) => {
                if !reply.content.is_empty() {
                    // The reply's own bytes, not copied: the check alone is word at a
                    // time; `from_utf8_lossy` walks the text a character at a time
                    // even when it is valid.
                    let text = match String::from_utf8(reply.content) {
                        Ok(text) => ByteString::from(text),
                        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned().into(),
                    };
                    self.send_text(ctx, text);
                }
            }
            Err(err) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.stats.ws_errors.fetch_add(1, Ordering::Relaxed);
                let frame = serde_json::json!({
                    "error": { "code": err.code(), "message": err.public_message() }
                });
                self.send_text(ctx, frame.to_string().into());
            }
        }
    }

    fn fragment(&mut self, ctx: &mut ws::WebsocketContext<Self>, item: Item) {
        let (bytes, last) = match item {
            Item::FirstText(b) => {
                self.fragment = Some(Vec::new());
                (b, false)
            }
            Item::FirstBinary(_) => {
                self.close(
                    ctx,
                    close_code::UNSUPPORTED,
                    "binary messages are not supported",
                );
                return;
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some(buf) = self.fragment.as_mut() else {
            // A continuation of a binary message (already refused) or of nothing.
            self.close(ctx, close_code::PROTOCOL, "continuation without a start");
            return;
        };
        if buf.len() + bytes.len() > self.limits.max_message_bytes {
            self.close(ctx, close_code::TOO_BIG, "message too big");
            return;
        }
        buf.extend_from_slice(&bytes);
        if last {
            let whole = self.fragment.take().unwrap_or_default();
            match String::from_utf8(whole) {
                Ok(text) => self.received(ctx, text.into()),
                Err(_) => self.close(ctx, close_code::INVALID_DATA, "text is not UTF-8"),
            }
        }
    }
}

/// The length of an unmasked server frame's header for a payload of `len` bytes.
fn frame_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// The delay after one more refusal: doubled, from the first to the most.
fn next_retry_delay(previous: Duration) -> Duration {
    if previous.is_zero() {
        RETRY_FIRST
    } else {
        (previous * 2).min(RETRY_MOST)
    }
}

/// Between half and all of `delay`, at random.
fn jittered(delay: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(u32::MAX);
    delay.mul_f64(0.5 + 0.5 * (f64::from(r) / f64::from(u32::MAX)))
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.sessions.insert(
            self.code.clone(),
            SessionEntry {
                addr: ctx.address().recipient(),
                peer_ip: self.peer_ip.clone(),
                connected_at: crate::db::now_millis(),
                counters: self.counters.clone(),
            },
        );
        self.stats.ws_opened.fetch_add(1, Ordering::Relaxed);
        // The channel may have been removed between the upgrade and now, its sessions
        // closed before this one was in its table: nothing would ever tick or close it.
        // (Removal takes the channel out of the registry before closing its sessions,
        // so a session either is closed by it or sees it here.)
        if self.registry.current(&self.handle).is_none() {
            self.close(ctx, close_code::GOING_AWAY, "channel removed");
            return;
        }
        if self.hello {
            let hello = serde_json::json!({ "type": "hello", "code": &*self.code });
            self.send_text(ctx, hello.to_string().into());
        }
        // The node's heartbeat ticks within one interval from now (`heartbeat`).
        self.next_tick = Instant::now() + self.limits.heartbeat_interval;
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.sessions.remove(&self.code);
        self.inbound
            .give_back(std::mem::take(&mut self.queued_bytes));
        self.stats.ws_closed.fetch_add(1, Ordering::Relaxed);
        // 1006: the connection ended without a close frame.
        self.stats.record_close(self.closed_with.unwrap_or(1006));
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => self.received(ctx, text),
            Ok(ws::Message::Binary(_)) => self.close(
                ctx,
                close_code::UNSUPPORTED,
                "binary messages are not supported",
            ),
            Ok(ws::Message::Continuation(item)) => self.fragment(ctx, item),
            Ok(ws::Message::Ping(payload)) => {
                self.last_pong = Instant::now();
                ctx.pong(&payload);
            }
            Ok(ws::Message::Pong(_)) => self.last_pong = Instant::now(),
            Ok(ws::Message::Close(reason)) => {
                // 1005: closed without a code.
                let code = reason.as_ref().map(|r| u16::from(r.code)).unwrap_or(1005);
                self.closed_with.get_or_insert(code);
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Nop) => {}
            Err(ProtocolError::Overflow) => self.close(ctx, close_code::TOO_BIG, "message too big"),
            // The frame guard refused a frame on its declared length before buffering it.
            Err(_) if self.frame_refused.is_set() => {
                self.close(ctx, close_code::TOO_BIG, "message too big")
            }
            Err(e) => {
                slog::debug!(self.logger, "websocket protocol error";
                    "ws_session" => &*self.code, "error" => %e);
                self.close(ctx, close_code::PROTOCOL, "protocol error");
            }
        }
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();
    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Push(frame) => self.send_frame(ctx, &frame),
            ToSession::Close(close) => self.close(ctx, close.code, &close.reason),
            ToSession::Tick => self.heartbeat(ctx),
        }
    }
}

/// A websocket message's start parameters: `startparam(1)` the session code, `(2)` the
/// message, `(3)` the channel as JSON, `(4)` the peer IP. Borrowed from the session
/// for a run that ends inline; shared (`SharedWsParams`: the same strings, not
/// copied) only for a run on the pool or in the history.
pub struct WsParams<'a> {
    pub code: &'a Arc<str>,
    pub text: &'a ByteString,
    pub channel_json: &'a Arc<str>,
    pub peer_ip: &'a Arc<str>,
}

/// [`WsParams`] held by a run of its own.
struct SharedWsParams {
    code: Arc<str>,
    text: ByteString,
    channel_json: Arc<str>,
    peer_ip: Arc<str>,
}

impl<'a> WsParams<'a> {
    fn get(&self, n: usize) -> Option<&'a str> {
        Some(match n {
            1 => self.code,
            2 => self.text,
            3 => self.channel_json,
            4 => self.peer_ip,
            _ => return None,
        })
    }
}

impl SharedWsParams {
    fn borrowed(&self) -> WsParams<'_> {
        WsParams {
            code: &self.code,
            text: &self.text,
            channel_json: &self.channel_json,
            peer_ip: &self.peer_ip,
        }
    }
}

impl crate::scenario::StartParams for WsParams<'_> {
    fn count(&self) -> usize {
        4
    }

    fn get_str(&self, n: usize) -> Option<std::borrow::Cow<'_, str>> {
        self.get(n).map(std::borrow::Cow::Borrowed)
    }

    fn held_bytes(&self) -> usize {
        self.code.len() + self.text.len() + self.peer_ip.len()
    }

    fn input_bytes(&self) -> usize {
        self.text.len()
    }
}

impl ShareParams for WsParams<'_> {
    fn share(&self) -> Arc<dyn crate::scenario::StartParams> {
        Arc::new(SharedWsParams {
            code: self.code.clone(),
            text: self.text.clone(),
            channel_json: self.channel_json.clone(),
            peer_ip: self.peer_ip.clone(),
        })
    }
}

impl crate::scenario::StartParams for SharedWsParams {
    fn count(&self) -> usize {
        4
    }

    fn get_str(&self, n: usize) -> Option<std::borrow::Cow<'_, str>> {
        self.borrowed().get(n).map(std::borrow::Cow::Borrowed)
    }

    fn held_bytes(&self) -> usize {
        self.borrowed().held_bytes()
    }

    fn input_bytes(&self) -> usize {
        self.borrowed().input_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a session's actor and its context weigh inline (docs/design-notes.md,
    /// "Memory per websocket session"): kept small, since 10,000 sessions hold 10,000.
    #[test]
    fn a_session_stays_small() {
        let actor = std::mem::size_of::<WsSession>();
        let context = std::mem::size_of::<ws::WebsocketContext<WsSession>>();
        println!(
            "WsSession {actor} B, WebsocketContext<WsSession> {context} B, Running {} B, SessionEntry {} B",
            std::mem::size_of::<Running>(),
            std::mem::size_of::<SessionEntry>(),
        );
        assert!(actor <= 448, "WsSession is {actor} bytes");
        assert!(context <= 256, "WebsocketContext is {context} bytes");
    }
}
