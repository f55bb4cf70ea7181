//! EventSession: a websocket subscription to an eventing channel
//! (`/ws/token/v1/{token}/subscribe`). The protocol is in docs/eventing.md.
//!
//! Resume without a gap or a duplicate: on `subscribe` with `since`, the session first
//! joins the broker (which answers with the last id it has pushed, L) and buffers what
//! the broker sends from then on; it replays the stored events in (since, L] from the
//! database, then sends the buffered live events with ids above the last one sent, and
//! from there on passes the live stream through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};

use super::broker::{Deliver, EventBroker, Overflowed, Subscribe, Unsubscribe};
use super::sessions::{CloseSession, LiveTypes, SessionSlot, SessionTable};
use crate::channels::rfc3339_millis;
use crate::db::models::Event;
use crate::db::{Database, events as log};
use crate::events::patterns;
use crate::events::protocol::{self, ClientOp};

/// Events read per page while replaying.
const REPLAY_PAGE: i64 = 500;

enum Phase {
    Idle,
    /// Replaying from storage; live events wait here.
    Replaying(Vec<Arc<Event>>),
    Live,
}

/// Numbers event sessions on this node (their key in the channel's table).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct EventSessionParts {
    /// The channel's exposed types as they are now (a channel update changes them).
    pub channel_types: Arc<LiveTypes>,
    /// The channel's websockets: the session registers there so that deleting or
    /// disabling the channel, or shutting down, closes it.
    pub sessions: Arc<SessionTable>,
    /// Places held in the node's and the channel's subscriber limits.
    pub node_slot: SessionSlot,
    pub channel_slot: SessionSlot,
    pub broker: Addr<EventBroker>,
    pub db: Database,
    pub domain: String,
    pub epoch: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub backlog: Arc<super::ws_backlog::Backlog>,
    pub max_backlog_bytes: usize,
    pub stats: Arc<crate::events::EventStats>,
    /// Set when a frame was refused on its declared length (close 1009).
    pub frame_refused: crate::http::ws_frames::Refused,
}

pub struct EventSession {
    id: u64,
    parts: EventSessionParts,
    subscription: Option<u64>,
    /// Bumped on every (re)subscribe, so that answers to an older one are ignored.
    generation: u64,
    pending: Arc<AtomicUsize>,
    phase: Phase,
    last_sent: i64,
    last_pong: Instant,
    closing: bool,
}

fn error_frame(code: &str, message: &str) -> String {
    serde_json::json!({ "op": "error", "code": code, "message": message }).to_string()
}

impl EventSession {
    pub fn new(parts: EventSessionParts) -> EventSession {
        EventSession {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            parts,
            subscription: None,
            generation: 0,
            pending: Arc::new(AtomicUsize::new(0)),
            phase: Phase::Idle,
            last_sent: 0,
            last_pong: Instant::now(),
            closing: false,
        }
    }

    fn event_frame(&self, e: &Event) -> String {
        serde_json::json!({
            "op": "event",
            "id": e.id,
            "epoch": self.parts.epoch,
            "type": e.event_type,
            "occurred_at": rfc3339_millis(e.occurred_at),
            "data": serde_json::from_str::<serde_json::Value>(&e.data).unwrap_or(serde_json::Value::Null),
        })
        .to_string()
    }

    /// Sends one event; `shared` is the frame other subscribers of a live event share.
    fn send_event(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        e: &Event,
        shared: Option<&std::sync::OnceLock<super::ws_backlog::Frame>>,
    ) {
        if e.id <= self.last_sent || self.closing {
            return;
        }
        if self.parts.backlog.pending() > self.parts.max_backlog_bytes as u64 {
            // The client is not reading: drop it with where it got to, so that it can
            // resume from there once it keeps up.
            self.unsubscribe();
            self.parts.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            let reason = format!("slow consumer; last delivered id {}", self.last_sent);
            // What it has not read goes now; the close (with where it got to) next.
            self.parts.backlog.clear();
            self.close(ctx, 1013, reason);
            return;
        }
        let budget = self.parts.backlog.budget();
        let frame = match shared {
            Some(cell) => cell
                .get_or_init(|| budget.text(&self.event_frame(e)))
                .clone(),
            None => budget.text(&self.event_frame(e)),
        };
        if !self.parts.backlog.push(&frame) {
            // Evicted by the node's outbound budget: the stream ends with a 1008.
            self.unsubscribe();
            self.closing = true;
            return;
        }
        self.last_sent = e.id;
    }

    fn unsubscribe(&mut self) {
        if let Some(id) = self.subscription.take() {
            self.parts.broker.do_send(Unsubscribe(id));
        }
        self.phase = Phase::Idle;
    }

    /// One queued event is out of the mailbox (written, or dropped as stale).
    fn took_one(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(1))
            });
    }

    fn subscribe(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        types: Vec<String>,
        since: Option<i64>,
        epoch: Option<String>,
    ) {
        // The type patterns were checked by `protocol::parse`.
        if epoch.as_ref().is_some_and(|e| *e != self.parts.epoch) {
            self.send_text(error_frame(
                "not_recovered",
                "the event log has another epoch: reload from your source of truth, then subscribe without since",
            ));
            return;
        }
        self.unsubscribe();
        self.generation += 1;
        let generation = self.generation;
        let channel_types = self.parts.channel_types.clone();
        let client_types = types.clone();
        // The channel's types are read at each event: an update of the channel applies
        // to open subscriptions from the next event on.
        let filter: Arc<dyn Fn(&str) -> bool + Send + Sync> = Arc::new(move |t: &str| {
            patterns::any_matches(&client_types, t)
                && patterns::any_matches(&channel_types.get(), t)
        });
        self.phase = Phase::Replaying(Vec::new());
        // A fresh counter: nothing queued for an older subscription counts against it.
        self.pending = Arc::new(AtomicUsize::new(0));
        let join = self.parts.broker.send(Subscribe {
            deliver: ctx.address().recipient(),
            overflow: ctx.address().recipient(),
            pending: self.pending.clone(),
            filter: filter.clone(),
        });
        ctx.wait(join.into_actor(self).map(move |joined, act, ctx| {
            let Ok(joined) = joined else {
                act.send_text(error_frame(
                    "unavailable",
                    "the event broker is not running",
                ));
                act.phase = Phase::Idle;
                return;
            };
            if generation != act.generation {
                act.parts.broker.do_send(Unsubscribe(joined.id));
                return;
            }
            act.subscription = Some(joined.id);
            let live_from = joined.last_id;
            let Some(since) = since else {
                act.last_sent = live_from;
                act.send_text(act.subscribed_frame(&types, live_from));
                act.go_live(ctx);
                return;
            };
            if since < 0 {
                act.not_an_id();
                return;
            }
            if since > live_from {
                // Read up to `since` through another node whose broker is ahead of
                // this one's: an id the log has is good (the broker, woken, catches up
                // and pushes what follows; ids up to `since` are skipped).
                act.resume_ahead_of_the_broker(ctx, generation, types, since);
                return;
            }
            act.last_sent = since;
            act.send_text(act.subscribed_frame(&types, live_from));
            act.replay(ctx, generation, since, live_from, filter);
        }));
    }

    fn not_an_id(&mut self) {
        self.unsubscribe();
        self.send_text(error_frame(
            "not_recovered",
            "since is not an id of this log",
        ));
    }

    /// `subscribe` with a `since` past what this node's broker has pushed: good if the
    /// stored log has that id (it was read through another node), else not_recovered.
    fn resume_ahead_of_the_broker(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        generation: u64,
        types: Vec<String>,
        since: i64,
    ) {
        let (db, domain) = (self.parts.db.clone(), self.parts.domain.clone());
        let read = async move { db.run(move |c| log::head(c, &domain)).await };
        ctx.spawn(read.into_actor(self).map(move |head, act, ctx| {
            if generation != act.generation {
                return;
            }
            match head {
                Ok(Some(head)) if since <= head.last_id => {
                    act.last_sent = since;
                    act.send_text(act.subscribed_frame(&types, since));
                    act.parts.broker.do_send(crate::events::Published);
                    act.go_live(ctx);
                }
                Ok(_) => act.not_an_id(),
                Err(_) => {
                    act.unsubscribe();
                    act.send_text(error_frame(
                        "unavailable",
                        "the event log cannot be read right now; subscribe again",
                    ));
                    act.phase = Phase::Idle;
                }
            }
        }));
    }

    /// A text frame of this session alone, queued behind what it already sent.
    fn send_text(&self, text: String) {
        self.parts.backlog.push_text(&text);
    }

    fn subscribed_frame(&self, types: &[String], last_id: i64) -> String {
        serde_json::json!({
            "op": "subscribed",
            "types": types,
            "last_id": last_id,
            "epoch": self.parts.epoch,
        })
        .to_string()
    }

    /// Sends the stored events in (after, until], a page at a time, then goes live.
    fn replay(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        generation: u64,
        after: i64,
        until: i64,
        filter: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) {
        if after >= until {
            self.go_live(ctx);
            return;
        }
        let (db, domain) = (self.parts.db.clone(), self.parts.domain.clone());
        let read = async move {
            db.run(move |c| {
                let oldest = log::oldest_id(c, &domain)?;
                Ok((oldest, log::list_after(c, &domain, after, REPLAY_PAGE)?))
            })
            .await
        };
        ctx.spawn(read.into_actor(self).map(move |result, act, ctx| {
            if generation != act.generation {
                return;
            }
            match result {
                Ok((oldest, page)) => {
                    // Events after `after` were purged: the gap cannot be filled.
                    if oldest.is_none_or(|o| o > after + 1) {
                        act.unsubscribe();
                        act.send_text(error_frame(
                            "not_recovered",
                            "events after since are no longer kept: reload from your source of truth, then subscribe without since",
                        ));
                        return;
                    }
                    let mut next = after;
                    for e in page.iter().take_while(|e| e.id <= until) {
                        next = e.id;
                        if filter(&e.event_type) {
                            act.send_event(ctx, e, None);
                        }
                    }
                    let more = page.len() as i64 == REPLAY_PAGE && next < until;
                    if more {
                        act.replay(ctx, generation, next, until, filter);
                    } else {
                        act.go_live(ctx);
                    }
                }
                Err(_) => {
                    act.unsubscribe();
                    act.send_text(error_frame("unavailable", "reading the event log failed; subscribe again"));
                }
            }
        }));
    }

    fn go_live(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let waiting = match std::mem::replace(&mut self.phase, Phase::Live) {
            Phase::Replaying(buffer) => buffer,
            _ => Vec::new(),
        };
        for e in waiting {
            self.took_one();
            self.send_event(ctx, &e, None);
        }
    }

    fn handle_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: &str) {
        match protocol::parse(text) {
            Ok(ClientOp::Subscribe {
                types,
                since,
                epoch,
            }) => self.subscribe(ctx, types, since, epoch),
            Ok(ClientOp::Unsubscribe) => {
                self.unsubscribe();
                self.send_text(serde_json::json!({ "op": "unsubscribed" }).to_string());
            }
            Ok(ClientOp::Ping) => self.send_text(serde_json::json!({ "op": "pong" }).to_string()),
            Err(refusal) => self.send_text(error_frame(refusal.code, &refusal.message)),
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: String) {
        self.closing = true;
        ctx.close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason),
        }));
        ctx.stop();
    }
}

impl Actor for EventSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.parts
            .sessions
            .insert_subscriber(self.id, ctx.address().recipient());
        ctx.run_interval(self.parts.heartbeat_interval, |act, ctx| {
            if act.last_pong.elapsed() > act.parts.heartbeat_timeout {
                act.close(ctx, 1001, "heartbeat timeout".into());
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.unsubscribe();
        self.parts.sessions.remove_subscriber(self.id);
    }
}

/// The channel was deleted or disabled, or the node shuts down: close (1001).
impl Handler<CloseSession> for EventSession {
    type Result = ();
    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.unsubscribe();
        self.close(ctx, msg.code, msg.reason);
    }
}

impl Handler<Deliver> for EventSession {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        if self.subscription != Some(msg.subscription) {
            return;
        }
        match &mut self.phase {
            Phase::Replaying(buffer) => buffer.push(msg.event),
            Phase::Live => {
                self.took_one();
                self.send_event(ctx, &msg.event, Some(&msg.frame));
            }
            Phase::Idle => self.took_one(),
        }
    }
}

impl Handler<Overflowed> for EventSession {
    type Result = ();
    fn handle(&mut self, _: Overflowed, ctx: &mut Self::Context) {
        self.subscription = None;
        let reason = format!("slow consumer; last delivered id {}", self.last_sent);
        self.close(ctx, 1013, reason);
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for EventSession {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => self.handle_text(ctx, &text),
            Ok(ws::Message::Binary(_)) => {
                self.close(ctx, 1003, "binary messages are not supported".into())
            }
            Ok(ws::Message::Ping(p)) => {
                self.last_pong = Instant::now();
                ctx.pong(&p);
            }
            Ok(ws::Message::Pong(_)) => self.last_pong = Instant::now(),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) => self.close(
                ctx,
                1003,
                "fragmented messages are not supported here".into(),
            ),
            Ok(ws::Message::Nop) => {}
            // Overflow from the codec, or a frame the frame guard refused on its
            // declared length before buffering it.
            Err(ProtocolError::Overflow) => self.close(ctx, 1009, "message too big".into()),
            Err(_) if self.parts.frame_refused.is_set() => {
                self.close(ctx, 1009, "message too big".into())
            }
            Err(_) => self.close(ctx, 1002, "protocol error".into()),
        }
    }
}
