//! SessionTable: the open websocket sessions of one channel on this node, shared by the
//! channel's actor, its scenarios (`ws_send`, `ws_broadcast`, `ws_close`,
//! `ws_sessions` run on scenario threads) and the admin API. It lives as long as the
//! channel, across versions of its settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use actix::{Message, Recipient};
use dashmap::DashMap;
use serde::Serialize;

use super::ws_backlog::{Frame, OutboundBudget};

/// What the table (for scenarios, the admin API and the channel's lifecycle) sends to a
/// websocket session. The table holds sessions as recipients of these, not as actors of
/// a type, so it does not depend on the session actors (which depend on it).
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A text frame for the client (from `ws_send`, `ws_broadcast` or the admin API),
    /// encoded once: a broadcast's sessions share it.
    Push(Frame),
    Close(CloseSession),
    /// The node's heartbeat (`actors::ws_heartbeat`): ping the client, or close a
    /// session whose client stopped answering.
    Tick,
}

/// Close the session (or event subscriber) with a close code and reason.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: u16,
    pub reason: String,
}

/// One place under a count limit of sessions or event subscribers (a channel's or the
/// node's); given back when dropped.
pub struct SessionSlot(Arc<AtomicUsize>);

impl SessionSlot {
    /// A place in `count` while it is under `max`, or None. Counted before the upgrade
    /// (a session's actor registers only once it runs), so that a burst of upgrades
    /// cannot pass the limit.
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<SessionSlot> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let slot = SessionSlot(count.clone());
        (before < max).then_some(slot)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of one session.
#[derive(Debug, Default)]
pub struct SessionCounters {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
}

pub struct SessionEntry {
    pub addr: Recipient<ToSession>,
    /// Shared with the session (one copy per session).
    pub peer_ip: Arc<str>,
    pub connected_at: i64,
    pub counters: Arc<SessionCounters>,
}

/// One session as the admin API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub code: String,
    /// The node holding the session (absent: this node; its counters are shown only
    /// for sessions on this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub peer_ip: String,
    pub connected_at: String,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
}

/// The channel's sessions on the other nodes of a cluster: where a push, a close or a
/// listing goes when the session is not on this node. Implemented by `crate::cluster`
/// (PostgreSQL); absent on a single node. The blocking calls wait no longer than
/// `deadline`.
pub trait ElsewhereSessions: Send + Sync {
    /// A session of `channel_id` opened (or closed) on this node: recorded so that the
    /// other nodes can find it. Never blocks.
    fn opened(&self, channel_id: &str, code: &str, peer_ip: &str, connected_at: i64);
    fn closed(&self, code: &str);
    /// Sends `text` to session `code` on whichever other node holds it; false when no
    /// live node does.
    fn send(
        &self,
        channel_id: &str,
        code: &str,
        text: &str,
        deadline: std::time::Instant,
    ) -> Result<bool, String>;
    fn close(
        &self,
        channel_id: &str,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: std::time::Instant,
    ) -> Result<bool, String>;
    /// Sends `text` to the channel's sessions on every other node; how many there are.
    fn broadcast(
        &self,
        channel_id: &str,
        text: &str,
        deadline: std::time::Instant,
    ) -> Result<usize, String>;
    /// The channel's sessions on the other live nodes.
    fn sessions(
        &self,
        channel_id: &str,
        deadline: std::time::Instant,
    ) -> Result<Vec<SessionView>, String>;
}

/// The event types an eventing channel exposes now (`event_types`), shared by the
/// filters of its open subscribers: a change applies to the next event they are sent.
#[derive(Default)]
pub struct LiveTypes(std::sync::RwLock<Arc<Vec<String>>>);

impl LiveTypes {
    pub fn get(&self) -> Arc<Vec<String>> {
        match self.0.read() {
            Ok(types) => types.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, types: Vec<String>) {
        let types = Arc::new(types);
        match self.0.write() {
            Ok(mut current) => *current = types,
            Err(poisoned) => *poisoned.into_inner() = types,
        }
    }
}

#[derive(Default)]
pub struct SessionTable {
    /// By session code (the key shared with the session: one copy per session).
    sessions: DashMap<Arc<str>, SessionEntry>,
    /// Places taken, counted from before the upgrade (the table itself only knows a
    /// session once its actor runs), so that a burst of upgrades cannot pass the limit.
    reserved: Arc<AtomicUsize>,
    /// Open event subscribers (`/ws/token/v1/{token}/subscribe`) of an eventing
    /// channel: closed with the channel, like sessions, and limited the same way.
    subscribers: DashMap<u64, Recipient<CloseSession>>,
    subscribers_reserved: Arc<AtomicUsize>,
    event_types: Arc<LiveTypes>,
    /// The node's outbound budget: frames pushed to sessions are encoded against it.
    outbound: Arc<OutboundBudget>,
    /// The channel's sessions on other nodes, and the channel's id there.
    elsewhere: Option<(Arc<dyn ElsewhereSessions>, String)>,
}

impl SessionTable {
    pub fn new(outbound: Arc<OutboundBudget>) -> SessionTable {
        SessionTable {
            outbound,
            ..SessionTable::default()
        }
    }

    /// A place under `max` sessions, or None when the channel is full.
    pub fn reserve(&self, max: usize) -> Option<SessionSlot> {
        SessionSlot::take(&self.reserved, max)
    }

    /// A place under `max` event subscribers, or None when the channel is full.
    pub fn reserve_subscriber(&self, max: usize) -> Option<SessionSlot> {
        SessionSlot::take(&self.subscribers_reserved, max)
    }

    pub fn insert_subscriber(&self, id: u64, addr: Recipient<CloseSession>) {
        self.subscribers.insert(id, addr);
    }

    pub fn remove_subscriber(&self, id: u64) {
        self.subscribers.remove(&id);
    }

    /// Open event subscribers of the channel on this node.
    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// The channel's exposed event types, as its subscribers' filters read them.
    pub fn event_types(&self) -> Arc<LiveTypes> {
        self.event_types.clone()
    }

    pub fn close_subscribers(&self, close_code: u16, reason: &str) {
        for entry in self.subscribers.iter() {
            entry.value().do_send(CloseSession {
                code: close_code,
                reason: reason.to_string(),
            });
        }
    }

    /// The same table, telling `elsewhere` (a cluster's directory) about its sessions.
    pub fn reachable_from(
        mut self,
        elsewhere: Option<Arc<dyn ElsewhereSessions>>,
        channel_id: &str,
    ) -> SessionTable {
        self.elsewhere = elsewhere.map(|e| (e, channel_id.to_string()));
        self
    }

    pub fn insert(&self, code: Arc<str>, entry: SessionEntry) {
        if let Some((elsewhere, channel_id)) = &self.elsewhere {
            elsewhere.opened(channel_id, &code, &entry.peer_ip, entry.connected_at);
        }
        self.sessions.insert(code, entry);
    }

    pub fn remove(&self, code: &str) -> bool {
        let removed = self.sessions.remove(code).is_some();
        if removed && let Some((elsewhere, _)) = &self.elsewhere {
            elsewhere.closed(code);
        }
        removed
    }

    /// [`SessionTable::send`], else to the node that holds the session. Blocks on a
    /// remote session (the database), at most until `deadline`.
    pub fn send_anywhere(
        &self,
        code: &str,
        text: &str,
        deadline: std::time::Instant,
    ) -> Result<bool, String> {
        if self.send(code, text) {
            return Ok(true);
        }
        match &self.elsewhere {
            Some((e, channel_id)) => e.send(channel_id, code, text, deadline),
            None => Ok(false),
        }
    }

    /// [`SessionTable::close`], else on the node that holds the session.
    pub fn close_anywhere(
        &self,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: std::time::Instant,
    ) -> Result<bool, String> {
        if self.close(code, close_code, reason) {
            return Ok(true);
        }
        match &self.elsewhere {
            Some((e, channel_id)) => e.close(channel_id, code, close_code, reason, deadline),
            None => Ok(false),
        }
    }

    /// [`SessionTable::broadcast`] here and on every other node; how many sessions.
    pub fn broadcast_everywhere(
        &self,
        text: &str,
        deadline: std::time::Instant,
    ) -> Result<usize, String> {
        let here = self.broadcast(text);
        match &self.elsewhere {
            Some((e, channel_id)) => Ok(here + e.broadcast(channel_id, text, deadline)?),
            None => Ok(here),
        }
    }

    /// The sessions here and on the other live nodes, by code.
    pub fn views_everywhere(
        &self,
        deadline: std::time::Instant,
    ) -> Result<Vec<SessionView>, String> {
        let mut views = self.views();
        if let Some((e, channel_id)) = &self.elsewhere {
            views.extend(e.sessions(channel_id, deadline)?);
            views.sort_by(|a, b| a.code.cmp(&b.code));
        }
        Ok(views)
    }

    /// (code, peer IP, connected at) of each open session (the cluster's directory).
    pub fn entries(&self) -> Vec<(String, String, i64)> {
        self.sessions
            .iter()
            .map(|e| {
                (
                    e.key().to_string(),
                    e.value().peer_ip.to_string(),
                    e.value().connected_at,
                )
            })
            .collect()
    }

    /// Does this table reach other nodes (a cluster)?
    pub fn is_clustered(&self) -> bool {
        self.elsewhere.is_some()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn codes(&self) -> Vec<String> {
        self.sessions.iter().map(|e| e.key().to_string()).collect()
    }

    /// Queues a text frame to one session; false if it is not open here.
    pub fn send(&self, code: &str, text: &str) -> bool {
        match self.sessions.get(code) {
            Some(entry) => {
                entry
                    .addr
                    .do_send(ToSession::Push(self.outbound.text(text)));
                true
            }
            None => false,
        }
    }

    /// Queues one text frame to every session: encoded once, shared by all of them.
    pub fn broadcast(&self, text: &str) -> usize {
        if self.sessions.is_empty() {
            return 0;
        }
        let frame = self.outbound.text(text);
        self.send_each(|| ToSession::Push(frame.clone()))
    }

    /// Sends every session a message of its own (made by `message`); returns how many.
    fn send_each(&self, message: impl Fn() -> ToSession) -> usize {
        let mut n = 0;
        for entry in self.sessions.iter() {
            entry.addr.do_send(message());
            n += 1;
        }
        n
    }

    pub fn close(&self, code: &str, close_code: u16, reason: &str) -> bool {
        match self.sessions.get(code) {
            Some(entry) => {
                entry.addr.do_send(ToSession::Close(CloseSession {
                    code: close_code,
                    reason: reason.to_string(),
                }));
                true
            }
            None => false,
        }
    }

    /// Sends the heartbeat's tick to every session.
    pub fn tick(&self) {
        self.send_each(|| ToSession::Tick);
    }

    /// Closes the public websocket sessions.
    pub fn close_sessions(&self, close_code: u16, reason: &str) {
        self.send_each(|| {
            ToSession::Close(CloseSession {
                code: close_code,
                reason: reason.to_string(),
            })
        });
    }

    /// Closes every websocket of the channel: sessions and event subscribers.
    pub fn close_all(&self, close_code: u16, reason: &str) {
        self.close_sessions(close_code, reason);
        self.close_subscribers(close_code, reason);
    }

    pub fn views(&self) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = self
            .sessions
            .iter()
            .map(|e| {
                let c = &e.value().counters;
                SessionView {
                    code: e.key().to_string(),
                    node_id: None,
                    peer_ip: e.value().peer_ip.to_string(),
                    connected_at: crate::channels::rfc3339_millis(e.value().connected_at),
                    messages_in: c.messages_in.load(Ordering::Relaxed),
                    messages_out: c.messages_out.load(Ordering::Relaxed),
                    bytes_in: c.bytes_in.load(Ordering::Relaxed),
                    bytes_out: c.bytes_out.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                }
            })
            .collect();
        views.sort_by(|a, b| a.code.cmp(&b.code));
        views
    }
}
