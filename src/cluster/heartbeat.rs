//! The node registry's heartbeat: every `node_heartbeat_ms` the node records that it
//! is alive (on the database's clock). The same beat watches [`Freshness`]: when the
//! node goes stale, its websockets are closed with 1013 (try again later) so that
//! clients reconnect to a node that is in touch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ClusterStats, Freshness};
use crate::actors::ChannelRegistry;
use crate::db::Database;
use crate::db::nodes::{self, NodeRow};

/// Close code for websockets of a node that lost touch with the cluster.
pub const TRY_AGAIN_LATER: u16 = 1013;

pub struct Heartbeat {
    pub db: Database,
    /// This node's row in each domain it serves.
    pub nodes: Vec<NodeRow>,
    pub every: Duration,
    pub freshness: Arc<Freshness>,
    pub stats: Arc<ClusterStats>,
    pub registry: Arc<ChannelRegistry>,
    pub logger: slog::Logger,
}

impl Heartbeat {
    /// Beats for as long as the process lives (spawn it on an arbiter).
    pub async fn run(self) {
        let logger = self.logger.new(slog::o!("task" => "node_heartbeat"));
        let mut tick = actix_web::rt::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut stale = false;
        loop {
            tick.tick().await;
            if self.stats.leaving.load(Ordering::Acquire) {
                return;
            }
            // Staleness first, on its own: a beat stuck on an unreachable database
            // must not delay closing the websockets of a node out of touch.
            self.watch_staleness(&mut stale, &logger);
            let rows = self.nodes.clone();
            let beat = self.db.run(move |c| {
                for row in &rows {
                    nodes::heartbeat(c, row)?;
                }
                Ok(())
            });
            let beat = actix_web::rt::time::timeout(self.every * 3, beat).await;
            match beat {
                Ok(Ok(())) if failing => {
                    failing = false;
                    slog::info!(logger, "node heartbeat recorded again");
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) if !failing => {
                    failing = true;
                    slog::warn!(logger, "recording the node heartbeat failed"; "error" => %e);
                }
                Err(_) if !failing => {
                    failing = true;
                    slog::warn!(
                        logger,
                        "recording the node heartbeat did not finish in time"
                    );
                }
                _ => {}
            }
        }
    }

    /// While the node is stale, every beat closes its websockets (also those opened
    /// just before it went stale).
    fn watch_staleness(&self, stale: &mut bool, logger: &slog::Logger) {
        match (*stale, self.freshness.is_stale()) {
            (_, true) => {
                if !*stale {
                    *stale = true;
                    self.stats.went_stale.fetch_add(1, Ordering::Relaxed);
                    slog::error!(
                        logger,
                        "out of touch with the cluster for longer than max_staleness_s: token routes answer 503 and websockets are closed until the listener is back"
                    );
                }
                for handle in self.registry.handles() {
                    handle
                        .sessions
                        .close_all(TRY_AGAIN_LATER, "node out of touch with the cluster");
                }
            }
            (true, false) => {
                *stale = false;
                slog::info!(logger, "back in touch with the cluster: serving again");
            }
            (false, false) => {}
        }
    }
}
