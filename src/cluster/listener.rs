//! The notification listener: one PostgreSQL connection of its own per node (never in
//! a transaction, so that it cannot hold up the server's notification queue), reading
//! the notes of `db::notify` as they arrive.
//!
//! On every (re)connect it LISTENs first and reconciles second, so that no change made
//! in between is missed; then it applies each note as it comes, pings the server every
//! heartbeat (reading `pg_notification_queue_usage()` for the metrics), and reconciles
//! everything every `cluster_reconcile_s`. A lost connection is retried with a growing,
//! jittered delay; while it is down the node's [`Freshness`] runs out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{ClusterStats, Freshness};
use crate::channels::ChannelService;
use crate::db::notify::{CHANNEL_NAME_SQL, Change, Note};
use crate::events::EventService;

/// Notes waiting to be applied; beyond, they are dropped and a full reconcile (plus a
/// broker wake) stands in for them.
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("connecting: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the server did not answer a ping in time")]
    PingTimeout,
    #[error("the connection closed")]
    Closed,
    #[error("catching up: {0}")]
    CatchUp(#[from] crate::channels::ServiceError),
}

/// One domain this node serves, as the listener applies notes to it.
pub struct ListenedDomain {
    pub name: String,
    pub channels: ChannelService,
    pub events: EventService,
    /// Websocket sessions across nodes: pushes from other nodes are applied here.
    pub sessions: Arc<super::sessions::ClusterSessions>,
}

pub struct Listener {
    pub url: String,
    /// Notes of other domains are ignored.
    pub domains: Vec<ListenedDomain>,
    pub freshness: Arc<Freshness>,
    pub stats: Arc<ClusterStats>,
    pub heartbeat: Duration,
    pub reconcile_every: Duration,
    pub registry: Arc<crate::actors::ChannelRegistry>,
    pub logger: slog::Logger,
}

impl Listener {
    /// Listens for as long as the process lives (spawn it on an arbiter).
    pub async fn run(self) {
        let logger = self.logger.new(slog::o!("task" => "cluster_listener"));
        let mut delay = FIRST_RETRY;
        loop {
            let started = Instant::now();
            let result = self.session(&logger).await;
            self.stats.listening.store(false, Ordering::Relaxed);
            if let Err(e) = result {
                slog::warn!(logger, "cluster listener lost; reconnecting"; "error" => %e, "retry_ms" => delay.as_millis() as u64);
            }
            // A session that lasted a while starts the backoff afresh.
            if started.elapsed() > LAST_RETRY * 3 {
                delay = FIRST_RETRY;
            }
            actix_web::rt::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(LAST_RETRY);
        }
    }

    async fn session(&self, logger: &slog::Logger) -> Result<(), ListenError> {
        let (client, mut connection) = actix_web::rt::time::timeout(
            CONNECT_TIMEOUT,
            tokio_postgres::connect(&self.url, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| ListenError::ConnectTimeout(CONNECT_TIMEOUT))??;
        self.stats.listener_connects.fetch_add(1, Ordering::Relaxed);
        // The connection is driven here; its notifications go to a bounded queue.
        let (tx, mut notes) = tokio::sync::mpsc::channel::<String>(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let driver = {
            let overflowed = overflowed.clone();
            let stats = self.stats.clone();
            actix_web::rt::spawn(async move {
                loop {
                    let message =
                        futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await;
                    match message {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            if tx.try_send(n.payload().to_string()).is_err() {
                                overflowed.store(true, Ordering::Relaxed);
                                stats.notes_overflowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    }
                }
            })
        };
        // Dropping the driver's handle does not stop it; it ends with the connection,
        // which ends when `client` is dropped at the end of this function.
        let _driver = driver;

        // LISTEN first, then catch up: a change made in between is seen by both.
        let name: String = client
            .query_one(&format!("SELECT {CHANNEL_NAME_SQL}"), &[])
            .await?
            .get(0);
        client.batch_execute(&format!("LISTEN \"{name}\"")).await?;
        self.catch_up().await?;
        // Directory writes may have failed while the database was away: this node's
        // list is rewritten from its live sessions.
        for d in &self.domains {
            d.sessions.request_resync();
        }
        self.stats.listening.store(true, Ordering::Relaxed);
        self.freshness.touch();
        slog::info!(logger, "cluster listener connected and caught up"; "channel" => &name);

        let mut ping = actix_web::rt::time::interval(self.heartbeat);
        let mut last_catch_up = Instant::now();
        // A note that could not be applied: the node is not in touch until a full
        // catch-up has stood in for it.
        let mut missed = false;
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(payload) => missed |= !self.apply(&payload, logger).await,
                    None => return Err(ListenError::Closed),
                },
                _ = ping.tick() => {
                    let usage: f64 = actix_web::rt::time::timeout(
                        self.heartbeat * 3,
                        client.query_one("SELECT pg_notification_queue_usage()", &[]),
                    )
                    .await
                    .map_err(|_| ListenError::PingTimeout)??
                    .get(0);
                    self.stats
                        .queue_usage_ppm
                        .store((usage * 1_000_000.0) as u64, Ordering::Relaxed);
                    if overflowed.swap(false, Ordering::Relaxed)
                        || std::mem::take(&mut missed)
                        || last_catch_up.elapsed() >= self.reconcile_every
                    {
                        self.catch_up().await?;
                        last_catch_up = Instant::now();
                    }
                    self.freshness.touch();
                }
            }
        }
    }

    /// Reconciles every channel of every domain and wakes the event readers.
    async fn catch_up(&self) -> Result<(), ListenError> {
        for d in &self.domains {
            let changed = d.channels.reconcile_all().await?;
            self.stats
                .reconciled_channels
                .fetch_add(changed as u64, Ordering::Relaxed);
            d.events.wake_readers();
        }
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies one note; false when it could not be (a full catch-up must follow).
    async fn apply(&self, payload: &str, logger: &slog::Logger) -> bool {
        let note: Note = match serde_json::from_str(payload) {
            Ok(n) => n,
            Err(e) => {
                slog::warn!(logger, "ignoring a cluster note that does not parse"; "error" => %e, "bytes" => payload.len());
                return true;
            }
        };
        if note.is_own() {
            return true;
        }
        let Some(domain) = self.domains.iter().find(|d| d.name == note.d) else {
            return true;
        };
        match note.change {
            Change::Channel { id, .. } => {
                self.stats.notes_channel.fetch_add(1, Ordering::Relaxed);
                match domain.channels.reconcile_one(&id).await {
                    Ok(true) => {
                        self.stats
                            .reconciled_channels
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        // A full reconcile stands in for it before the node counts
                        // as in touch again.
                        slog::warn!(logger, "applying a channel change from another node failed"; "channel_id" => &id, "error" => %e);
                        return false;
                    }
                }
            }
            Change::Events { .. } => {
                self.stats.notes_events.fetch_add(1, Ordering::Relaxed);
                domain.events.wake_readers();
            }
            change @ (Change::Push { .. } | Change::Broadcast { .. } | Change::Close { .. }) => {
                self.stats.notes_sessions.fetch_add(1, Ordering::Relaxed);
                domain.sessions.apply(&self.registry, change).await;
            }
        }
        true
    }
}

/// `d` ± 25%, so that nodes that lost the database together do not come back in step.
fn jittered(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let factor = 0.75 + (byte[0] as f64 / 255.0) * 0.5;
    d.mul_f64(factor)
}
