//! Websocket sessions across the nodes of a cluster: a directory of which node holds
//! which session (`ws_directory`), and pushes, closes and broadcasts sent to that node
//! as notes (`db::notify`).
//!
//! - A session that opens or closes here is queued to a writer task that records it in
//!   batches (so that 10,000 handshakes are a few multi-row statements, not 10,000
//!   round trips). The queue is bounded; when it overflows, or the listener
//!   (re)connects, the writer rewrites this node's whole list instead.
//! - `ws_send` to a session not on this node looks it up among live nodes (heartbeat
//!   within three intervals, database clock) and sends the node a note; `true` means a
//!   live node holds it. Texts too large for a note go through `ws_pushes` (purged
//!   after a minute).
//! - The listener hands push, close and broadcast notes to [`ClusterSessions::apply`].

use diesel::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::actors::ChannelRegistry;
use crate::actors::sessions::{ElsewhereSessions, SessionView};
use crate::db::directory::{self as dir, DirEntry};
use crate::db::notify::{self, Change};
use crate::db::{AnyConnection, Database, StoreError};

/// Directory changes waiting to be written; beyond, the node's list is rewritten.
const QUEUE: usize = 65_536;
/// Rows per write.
const BATCH: usize = 2_000;
/// Stored pushes are kept this long for the nodes to read.
pub const PUSH_KEEP_MS: i64 = 60_000;
/// Sessions of a node silent this long are forgotten (it crashed; its sessions went
/// with it).
const FORGET_SILENT_MS: i64 = 10 * 60 * 1000;

enum Op {
    Open(DirEntry),
    Close(String),
}

/// Counters (metrics).
#[derive(Debug, Default)]
pub struct SessionStats {
    pub directory_writes: AtomicU64,
    pub directory_overflows: AtomicU64,
    pub directory_resyncs: AtomicU64,
    pub remote_pushes: AtomicU64,
    pub remote_received: AtomicU64,
}

/// This node's side of the cluster's websocket sessions.
pub struct ClusterSessions {
    db: Database,
    domain: String,
    node_id: String,
    /// Heartbeats a node may miss and still count as alive, in database milliseconds.
    alive_window_ms: i64,
    queue: tokio::sync::mpsc::Sender<Op>,
    resync: Arc<(AtomicBool, tokio::sync::Notify)>,
    pub stats: Arc<SessionStats>,
}

impl ClusterSessions {
    /// This node's side, and the directory writer to spawn (its first act is to
    /// rewrite this node's list, dropping what an earlier run of the node left).
    pub fn start(
        db: Database,
        domain: &str,
        node_id: &str,
        heartbeat: Duration,
        logger: &slog::Logger,
    ) -> (Arc<ClusterSessions>, DirectoryWriter) {
        let (queue, ops) = tokio::sync::mpsc::channel(QUEUE);
        let resync = Arc::new((AtomicBool::new(true), tokio::sync::Notify::new()));
        let stats = Arc::new(SessionStats::default());
        let sessions = Arc::new(ClusterSessions {
            db: db.clone(),
            domain: domain.to_string(),
            node_id: node_id.to_string(),
            alive_window_ms: 3 * heartbeat.as_millis() as i64,
            queue,
            resync: resync.clone(),
            stats: stats.clone(),
        });
        let writer = DirectoryWriter {
            db,
            domain: domain.to_string(),
            node_id: node_id.to_string(),
            ops: Some(ops),
            resync,
            stats,
            logger: logger.new(slog::o!("task" => "ws_directory")),
        };
        (sessions, writer)
    }

    /// Rewrite this node's list from its live sessions soon (listener reconnected).
    pub fn request_resync(&self) {
        self.resync.0.store(true, Ordering::Release);
        self.resync.1.notify_one();
    }

    /// Runs `work` on a pooled connection with all of it bounded by `deadline`: the
    /// wait for a connection, and every statement (a transaction whose
    /// `statement_timeout` is the time left). Notes sent in it leave at its commit.
    fn within<T>(
        &self,
        deadline: Instant,
        work: impl FnOnce(&mut AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, String> {
        self.db.within(deadline, work).map_err(|e| e.to_string())
    }

    /// The live node (not this one) holding session `code` of `channel_id`.
    fn holder(
        &self,
        c: &mut AnyConnection,
        channel_id: &str,
        code: &str,
    ) -> Result<Option<String>, StoreError> {
        let alive_after = crate::db::nodes::db_now_ms(c)? - self.alive_window_ms;
        Ok(dir::elsewhere(
            c,
            &self.domain,
            channel_id,
            &self.node_id,
            alive_after,
            Some(code),
        )?
        .into_iter()
        .next()
        .map(|e| e.node_id))
    }

    /// A text for a note: inline when it fits, else stored and referenced.
    fn carry(
        &self,
        c: &mut AnyConnection,
        text: &str,
        build: impl Fn(Option<String>, Option<String>) -> Change,
    ) -> Result<String, StoreError> {
        if let Some(payload) = notify::encode(&self.domain, build(Some(text.to_string()), None))? {
            return Ok(payload);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The database's clock, like the purge's: nodes' clocks may disagree.
        let now = crate::db::nodes::db_now_ms(c)?;
        dir::store_push(c, &id, &self.domain, text, now)?;
        notify::encode(&self.domain, build(None, Some(id)))?
            .ok_or_else(|| StoreError::Setup("a push reference is over NOTIFY's limit".into()))
    }

    /// Applies a push, close or broadcast note from another node to this node's
    /// sessions.
    pub async fn apply(&self, registry: &ChannelRegistry, change: Change) {
        let (ch, text, r) = match &change {
            Change::Push {
                to, ch, text, r, ..
            } if *to == self.node_id => (ch, text, r),
            Change::Broadcast { ch, text, r, .. } => (ch, text, r),
            Change::Close {
                to,
                ch,
                code,
                cc,
                reason,
                ..
            } if *to == self.node_id => {
                if let Some(h) = registry.get_by_id(ch) {
                    h.sessions.close(code, *cc, reason);
                }
                return;
            }
            _ => return,
        };
        let Some(handle) = registry.get_by_id(ch) else {
            return;
        };
        let text = match (text, r) {
            (Some(t), _) => t.clone(),
            (None, Some(id)) => {
                let id = id.clone();
                match self.db.run(move |c| dir::read_push(c, &id)).await {
                    Ok(Some(t)) => t,
                    _ => return,
                }
            }
            (None, None) => return,
        };
        self.stats.remote_received.fetch_add(1, Ordering::Relaxed);
        match change {
            Change::Push { code, .. } => {
                handle.sessions.send(&code, &text);
            }
            _ => {
                handle.sessions.broadcast(&text);
            }
        }
    }
}

impl ElsewhereSessions for ClusterSessions {
    fn opened(&self, channel_id: &str, code: &str, peer_ip: &str, connected_at: i64) {
        let entry = DirEntry {
            code: code.to_string(),
            domain: self.domain.clone(),
            channel_id: channel_id.to_string(),
            node_id: self.node_id.clone(),
            peer_ip: peer_ip.to_string(),
            connected_at,
        };
        if self.queue.try_send(Op::Open(entry)).is_err() {
            self.stats
                .directory_overflows
                .fetch_add(1, Ordering::Relaxed);
            self.request_resync();
        }
    }

    fn closed(&self, code: &str) {
        if self.queue.try_send(Op::Close(code.to_string())).is_err() {
            self.stats
                .directory_overflows
                .fetch_add(1, Ordering::Relaxed);
            self.request_resync();
        }
    }

    fn send(
        &self,
        channel_id: &str,
        code: &str,
        text: &str,
        deadline: Instant,
    ) -> Result<bool, String> {
        let sent = self.within(deadline, |c| -> Result<bool, StoreError> {
            // A text that fits a note (nearly all): found and sent in one statement.
            let inline = notify::encode(
                &self.domain,
                Change::Push {
                    to: String::new(),
                    ch: channel_id.to_string(),
                    code: code.to_string(),
                    text: Some(text.to_string()),
                    r: None,
                    u: uuid::Uuid::new_v4().simple().to_string(),
                },
            )?
            // Room for the holder's node id (added as `to`) and the spaces of jsonb's
            // text form.
            .filter(|p| p.len() + 256 + crate::config::MAX_NODE_ID_BYTES <= notify::MAX_PAYLOAD);
            if let Some(note) = inline {
                return Ok(dir::notify_holder(
                    c,
                    (&self.domain, channel_id, code),
                    &self.node_id,
                    self.alive_window_ms,
                    &note,
                )?
                .is_some());
            }
            let Some(to) = self.holder(c, channel_id, code)? else {
                return Ok(false);
            };
            let u = uuid::Uuid::new_v4().simple().to_string();
            let payload = self.carry(c, text, |text, r| Change::Push {
                to: to.clone(),
                ch: channel_id.to_string(),
                code: code.to_string(),
                text,
                r,
                u: u.clone(),
            })?;
            notify::send(c, payload)?;
            Ok(true)
        })?;
        if sent {
            self.stats.remote_pushes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(sent)
    }

    fn close(
        &self,
        channel_id: &str,
        code: &str,
        close_code: u16,
        reason: &str,
        deadline: Instant,
    ) -> Result<bool, String> {
        self.within(deadline, |c| -> Result<bool, StoreError> {
            let reason: String = reason.chars().take(120).collect();
            let note = notify::encode(
                &self.domain,
                Change::Close {
                    to: String::new(),
                    ch: channel_id.to_string(),
                    code: code.to_string(),
                    cc: close_code,
                    reason,
                    u: uuid::Uuid::new_v4().simple().to_string(),
                },
            )?
            .ok_or_else(|| StoreError::Setup("a close note is over NOTIFY's limit".into()))?;
            Ok(dir::notify_holder(
                c,
                (&self.domain, channel_id, code),
                &self.node_id,
                self.alive_window_ms,
                &note,
            )?
            .is_some())
        })
    }

    fn broadcast(&self, channel_id: &str, text: &str, deadline: Instant) -> Result<usize, String> {
        self.within(deadline, |c| -> Result<usize, StoreError> {
            let alive_after = crate::db::nodes::db_now_ms(c)? - self.alive_window_ms;
            let there = dir::elsewhere(
                c,
                &self.domain,
                channel_id,
                &self.node_id,
                alive_after,
                None,
            )?
            .len();
            if there == 0 {
                return Ok(0);
            }
            let u = uuid::Uuid::new_v4().simple().to_string();
            let payload = self.carry(c, text, |text, r| Change::Broadcast {
                ch: channel_id.to_string(),
                text,
                r,
                u: u.clone(),
            })?;
            notify::send(c, payload)?;
            self.stats.remote_pushes.fetch_add(1, Ordering::Relaxed);
            Ok(there)
        })
    }

    fn sessions(&self, channel_id: &str, deadline: Instant) -> Result<Vec<SessionView>, String> {
        self.within(deadline, |c| -> Result<Vec<SessionView>, StoreError> {
            let alive_after = crate::db::nodes::db_now_ms(c)? - self.alive_window_ms;
            let rows = dir::elsewhere(
                c,
                &self.domain,
                channel_id,
                &self.node_id,
                alive_after,
                None,
            )?;
            Ok(rows
                .into_iter()
                .map(|e| SessionView {
                    code: e.code,
                    node_id: Some(e.node_id),
                    peer_ip: e.peer_ip,
                    connected_at: crate::channels::rfc3339_millis(e.connected_at),
                    messages_in: 0,
                    messages_out: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    errors: 0,
                })
                .collect())
        })
    }
}

/// The task that writes this node's sessions into the directory.
pub struct DirectoryWriter {
    db: Database,
    domain: String,
    node_id: String,
    ops: Option<tokio::sync::mpsc::Receiver<Op>>,
    resync: Arc<(AtomicBool, tokio::sync::Notify)>,
    stats: Arc<SessionStats>,
    logger: slog::Logger,
}

impl DirectoryWriter {
    /// Writes for as long as the process lives; `registry` is read for a rewrite.
    pub async fn run(mut self, registry: Arc<ChannelRegistry>) {
        let Some(mut ops) = self.ops.take() else {
            return;
        };
        let mut tidy = actix_web::rt::time::interval(Duration::from_millis(PUSH_KEEP_MS as u64));
        loop {
            if self.resync.0.swap(false, Ordering::AcqRel) {
                // Ops queued before this snapshot are applied after it: an open is
                // then a no-op, a close deletes a row the snapshot may have had.
                if let Err(e) = self.rewrite(&registry).await {
                    slog::warn!(self.logger, "rewriting this node's session list failed; retrying"; "error" => %e);
                    self.resync.0.store(true, Ordering::Release);
                    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                self.stats.directory_resyncs.fetch_add(1, Ordering::Relaxed);
            }
            let first = tokio::select! {
                op = ops.recv() => match op {
                    Some(op) => op,
                    None => return,
                },
                _ = self.resync.1.notified() => continue,
                _ = tidy.tick() => {
                    self.tidy().await;
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let (mut opened, mut closed) = (Vec::new(), Vec::new());
            for op in batch {
                match op {
                    Op::Open(e) => opened.push(e),
                    Op::Close(code) => {
                        // Opened and closed within the batch: neither is written.
                        match opened.iter().position(|e| e.code == code) {
                            Some(i) => {
                                opened.swap_remove(i);
                            }
                            None => closed.push(code),
                        }
                    }
                }
            }
            let written = self
                .db
                .run(move |c| {
                    dir::insert(c, &opened)?;
                    dir::remove(c, &closed)
                })
                .await;
            match written {
                Ok(()) => {
                    self.stats.directory_writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    slog::warn!(self.logger, "writing the session directory failed; rewriting it"; "error" => %e);
                    self.resync.0.store(true, Ordering::Release);
                    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Forgets sessions of nodes gone from the registry and old stored pushes.
    async fn tidy(&self) {
        let domain = self.domain.clone();
        let done = self
            .db
            .run(move |c| {
                let now = crate::db::nodes::db_now_ms(c)?;
                dir::forget_gone_nodes(c, &domain, now - FORGET_SILENT_MS)?;
                dir::purge_pushes(c, now - PUSH_KEEP_MS)
            })
            .await;
        if let Err(e) = done {
            slog::warn!(self.logger, "tidying the session directory failed"; "error" => %e);
        }
    }

    async fn rewrite(&self, registry: &ChannelRegistry) -> Result<(), StoreError> {
        let mut rows = Vec::new();
        // The registry holds every domain's channels: this writer's only.
        for handle in registry
            .handles()
            .into_iter()
            .filter(|h| h.channel.domain == self.domain)
        {
            for (code, peer_ip, connected_at) in handle.sessions.entries() {
                rows.push(DirEntry {
                    code,
                    domain: self.domain.clone(),
                    channel_id: handle.channel.id.clone(),
                    node_id: self.node_id.clone(),
                    peer_ip,
                    connected_at,
                });
            }
        }
        let (domain, node) = (self.domain.clone(), self.node_id.clone());
        self.db
            .run(move |c| {
                c.transaction::<_, StoreError, _>(|c| {
                    dir::reset_node(c, &domain, &node)?;
                    dir::insert(c, &rows)
                })
            })
            .await
    }
}
