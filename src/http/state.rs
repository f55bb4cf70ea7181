//! What every handler can reach: the node's shared state, built once by
//! `app::Application::build` and handed to actix-web as app data.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use crate::actors::ChannelRegistry;
use crate::actors::broker::EventBroker;
use crate::actors::delivery::{DeliveryStats, DeliveryWorker};
use crate::channels::ChannelService;
use crate::config::Config;
use crate::db::Database;
use crate::events::EventService;
use crate::scenario::dispatch::Dispatcher;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Database,
    pub registry: Arc<ChannelRegistry>,
    /// Memory of all scenario runs together (`scenario_node_memory_bytes`).
    pub node_memory: Arc<crate::alloc::NodeMemory>,
    /// Websocket frames queued for clients, node-wide (`ws_node_max_outbound_bytes`).
    pub outbound: Arc<crate::actors::ws_backlog::OutboundBudget>,
    /// Websocket messages waiting for their scenario, node-wide
    /// (`ws_node_max_inbound_bytes`).
    pub ws_inbound: Arc<crate::actors::ws_session::InboundBudget>,
    pub dispatcher: Arc<Dispatcher>,
    pub channels: ChannelService,
    pub admin_token: String,
    pub logger: slog::Logger,
    pub started: Instant,
    /// Open websocket sessions on this node (all channels).
    pub ws_sessions: Arc<AtomicUsize>,
    /// Open event subscriber websockets on this node (all channels).
    pub event_sockets: Arc<AtomicUsize>,
    pub events: EventService,
    pub broker: actix::Addr<EventBroker>,
    /// The epoch of the domain's event log.
    pub epoch: String,
    pub delivery_stats: Arc<DeliveryStats>,
    pub delivery: actix::Addr<DeliveryWorker>,
    /// This node's id in the node registry.
    pub node_id: String,
    /// Is the node in touch with the cluster (always, on SQLite)?
    pub freshness: Arc<crate::cluster::Freshness>,
    pub cluster_stats: Arc<crate::cluster::ClusterStats>,
    /// Body timeouts, connections closed for unread bodies, websocket frames refused.
    pub conn_stats: Arc<super::body_guard::ConnStats>,
}

/// Why a token route finds no channel to run.
#[derive(Debug, Clone, Copy)]
pub enum TokenMiss {
    /// The node is out of touch with the cluster (503).
    Stale,
    /// No enabled channel of this kind with this token here (404).
    NotServed(&'static str),
}

impl From<TokenMiss> for super::error::ApiError {
    fn from(miss: TokenMiss) -> Self {
        match miss {
            TokenMiss::Stale => super::error::ApiError::overloaded(
                "stale_node",
                "this node has lost touch with the cluster's database; try another node or retry later",
            ),
            TokenMiss::NotServed(kind) => super::error::ApiError::no_channel_for_token(kind),
        }
    }
}

impl AppState {
    /// The live channel of a token, of `kind` (public or eventing), if this node serves
    /// it: the one lookup of every token route. While the node is out of touch with the
    /// cluster (`max_staleness_s`), 503: a token deleted elsewhere must not keep working
    /// here.
    pub fn channel_for_token(
        &self,
        token: &str,
        kind: &'static str,
    ) -> Result<Arc<crate::actors::ChannelHandle>, TokenMiss> {
        if self.freshness.is_stale() {
            return Err(TokenMiss::Stale);
        }
        self.registry
            .get(token)
            .filter(|h| h.channel.enabled && h.channel.kind == kind)
            .ok_or(TokenMiss::NotServed(kind))
    }
}
