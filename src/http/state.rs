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

/// One domain this node serves: its channels, event log, broker and delivery worker.
#[derive(Clone)]
pub struct DomainState {
    pub name: String,
    pub channels: ChannelService,
    pub events: EventService,
    pub broker: actix::Addr<EventBroker>,
    pub epoch: String,
    pub delivery_stats: Arc<DeliveryStats>,
    pub delivery: actix::Addr<DeliveryWorker>,
}

/// The header naming the domain an admin call acts on (a node serving several).
pub const DOMAIN_HEADER: &str = "X-Oktell-Domain";

/// What every handler can reach. [`AppState::domain_of`] finds the domain a request
/// names, [`AppState::domain_named`] a channel's.
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
    /// Counters of scenarios' outgoing HTTP calls (metrics).
    pub outgoing: Arc<crate::scenario::outgoing::OutgoingStats>,
    pub admin_token: String,
    pub logger: slog::Logger,
    pub started: Instant,
    /// Open websocket sessions on this node (all channels).
    pub ws_sessions: Arc<AtomicUsize>,
    /// Open event subscriber websockets on this node (all channels).
    pub event_sockets: Arc<AtomicUsize>,
    /// The domain admin calls act on unless they name another (the first of
    /// `--domain`).
    pub default_domain: DomainState,
    /// The further domains of `--domain a,b`.
    pub more_domains: Vec<DomainState>,
    /// The threads of the node's actors and background tasks (eventing, channels):
    /// stopped last, when the node shuts down ([`AppState::stop_background`]).
    pub arbiters: Vec<actix::ArbiterHandle>,
    /// This node's id in the node registry.
    pub node_id: String,
    /// Is the node in touch with the cluster (always, on SQLite)?
    pub freshness: Arc<crate::cluster::Freshness>,
    pub cluster_stats: Arc<crate::cluster::ClusterStats>,
    /// Body timeouts, connections closed for unread bodies, websocket frames refused.
    pub conn_stats: Arc<super::body_guard::ConnStats>,
    /// Each channel's recent requests and errors, sampled (the status page's
    /// sparklines).
    pub stats_history: Arc<crate::actors::stats_history::StatsHistory>,
}

/// The domain an admin call names is not served here (404).
#[derive(Debug, Clone, Copy)]
pub enum DomainMiss {
    NotServed,
}

impl From<DomainMiss> for super::error::ApiError {
    fn from(_: DomainMiss) -> Self {
        super::error::ApiError::not_found(
            "domain_not_served",
            format!("this node does not serve the domain named in {DOMAIN_HEADER}"),
        )
    }
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
    /// Stops the node's arbiters: its actors, listener, heartbeat and writers end, and
    /// with them their database connections (a node shutting down, a test's node
    /// going away).
    pub fn stop_background(&self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }

    /// The domain an admin call acts on: the one `X-Oktell-Domain` names, else the
    /// default one. 404 for a domain this node does not serve.
    pub fn domain_of(&self, req: &actix_web::HttpRequest) -> Result<&DomainState, DomainMiss> {
        match req.headers().get(DOMAIN_HEADER) {
            Some(value) => self
                .domain_named(value.to_str().unwrap_or_default())
                .ok_or(DomainMiss::NotServed),
            None => Ok(&self.default_domain),
        }
    }

    /// A domain of this node by name (a channel's, say).
    pub fn domain_named(&self, name: &str) -> Option<&DomainState> {
        self.domains().find(|d| d.name == name)
    }

    /// Every domain this node serves, the default one first.
    pub fn domains(&self) -> impl Iterator<Item = &DomainState> {
        std::iter::once(&self.default_domain).chain(&self.more_domains)
    }

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

/// The domain an admin call acts on, as an extractor: the one `X-Oktell-Domain`
/// names, else the node's default domain (404 `domain_not_served` for another).
pub struct InDomain(pub DomainState);

impl actix_web::FromRequest for InDomain {
    type Error = super::error::ApiError;
    type Future = std::future::Ready<Result<InDomain, super::error::ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let found = match req.app_data::<actix_web::web::Data<AppState>>() {
            Some(state) => state
                .domain_of(req)
                .map(|d| InDomain(d.clone()))
                .map_err(Into::into),
            None => Err(super::error::ApiError::internal("no application state")),
        };
        std::future::ready(found)
    }
}

impl std::ops::Deref for InDomain {
    type Target = DomainState;
    fn deref(&self) -> &DomainState {
        &self.0
    }
}
