//! Builds a node: storage, scenario runtime and pool, channel actors, and the HTTP
//! server. `serve` and the tests start the gateway the same way, through
//! [`Application::build`].

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use actix::Arbiter;
use actix_web::dev::Server;
use actix_web::http::KeepAlive;
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};

use crate::actors::ChannelRegistry;
use crate::actors::broker::EventBroker;
use crate::actors::delivery::{DeliveryConfig, DeliveryStats, DeliveryWorker, UseEvents};
use crate::channels::{ChannelService, LiveNode, generate_token};
use crate::config::{Config, RuntimeKind};
use crate::db::Database;
use crate::events::EventService;
use crate::http;
use crate::http::error::ApiError;
use crate::http::state::{AppState, DomainState};
use crate::scenario::ScenarioRuntime;
use crate::scenario::dispatch::Dispatcher;
use crate::scenario::http_runtime::HttpRuntime;
use crate::scenario::outgoing::{OutgoingClient, OutgoingSettings};
use crate::scenario::pool::ScenarioPool;
use crate::scenario::rhai_runtime::{RhaiLimits, RhaiRuntime};
use actix::Actor;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::db::StoreError),
    #[error("loading channels: {0}")]
    Load(#[from] crate::channels::ServiceError),
    #[error("admin token file {path}: {source}")]
    AdminToken {
        path: String,
        source: std::io::Error,
    },
    #[error("starting: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A built node, listening, not yet running.
pub struct Application {
    port: u16,
    metrics_port: Option<u16>,
    metrics_server: Option<Server>,
    server: Server,
    pub state: web::Data<AppState>,
}

impl Application {
    pub async fn build(config: Config, logger: slog::Logger) -> Result<Application, StartError> {
        let config = Arc::new(config);
        let admin_token = resolve_admin_token(&config, &logger)?;
        // Secrets of this node that must never be written down (crate::redact).
        crate::redact::redactor().add_secret(&admin_token);
        if let Ok(url) = url::Url::parse(&config.database_url)
            && let Some(password) = url.password()
        {
            crate::redact::redactor().add_secret(password);
        }
        crate::redact::redactor()
            .add_patterns(&config.redact_patterns)
            .map_err(|e| StartError::Io(std::io::Error::other(format!("redact_patterns: {e}"))))?;

        let db = Database::connect(&config.database_url, config.db_pool_size)?;
        let migrator = db.clone();
        let ran = actix_web::rt::task::spawn_blocking(move || migrator.migrate())
            .await
            .map_err(|e| crate::db::StoreError::Blocking(e.to_string()))??;
        slog::info!(logger, "database ready"; "backend" => format!("{:?}", db.backend()), "migrations_applied" => ran);

        // The broker and the delivery worker of each domain have a thread of their own;
        // channel actors are spread over one thread per core (`ChannelArbiters`), so
        // that websocket messages of different channels do not queue behind each other
        // or behind eventing. Arbiters live as long as the process.
        let eventing_arbiter = Arbiter::new().handle();
        let channel_arbiters = crate::channels::ChannelArbiters::start(crate::config::cores());
        let mut eventing = Vec::new();
        for domain in config.domains() {
            eventing.push(start_eventing(&db, &config, &domain, &eventing_arbiter, &logger).await?);
        }
        if !crate::alloc::counting() {
            slog::warn!(
                logger,
                "allocations are not counted (another global allocator is linked in): scenario memory budgets do not hold"
            );
        }
        let node_memory = crate::alloc::NodeMemory::new(config.scenario_node_memory_bytes);
        let state_store =
            crate::scenario::channel_state::StateStore::new(db.clone(), config.as_ref().into());
        eventing_arbiter.spawn(crate::scenario::channel_state::sweep_forever(
            db.clone(),
            Duration::from_secs(config.channel_state_sweep_s),
            config.channel_state_sweep_batch,
            logger.clone(),
        ));
        // The execution history: runs queue records, a writer of its own stores them.
        let executions = Arc::new(crate::executions::ExecutionLog::new(
            config.executions_queue,
            config.executions_queue_bytes,
            config.executions_max_recorded_bytes,
        ));
        let executions_writer = crate::executions::writer::start(
            executions.clone(),
            db.clone(),
            crate::executions::writer::WriterSettings {
                flush: Duration::from_millis(config.executions_flush_ms),
                keep_per_channel: i64::try_from(config.executions_kept_per_channel)
                    .unwrap_or(i64::MAX),
                retention: Duration::from_secs(
                    config.executions_retention_days.saturating_mul(24 * 3600),
                ),
            },
            logger.clone(),
        );
        // Scenarios' outgoing calls; idle connections are closed and their memory given
        // back on the eventing arbiter.
        let outgoing = outgoing_client(&config)?;
        eventing_arbiter.spawn(
            outgoing.clone().tidy_forever(
                (Duration::from_secs(config.outgoing_idle_timeout_s) / 3)
                    .clamp(Duration::from_millis(200), OUTGOING_TIDY_EVERY),
            ),
        );
        let dispatcher = Arc::new(
            build_dispatcher(
                &config,
                node_memory.clone(),
                outgoing.clone(),
                (
                    eventing.iter().map(|d| d.events.clone()).collect(),
                    state_store,
                ),
                &logger,
            )?
            .with_executions(executions),
        );
        let registry = Arc::new(ChannelRegistry::new());
        // The websocket sessions' heartbeat: one task for the node, not a timer per
        // session (actors::ws_heartbeat).
        eventing_arbiter.spawn(crate::actors::ws_heartbeat::tick_forever(
            registry.clone(),
            Duration::from_millis(config.ws_heartbeat_interval_ms),
        ));
        let outbound = Arc::new(crate::actors::ws_backlog::OutboundBudget::with_limit(
            config.ws_node_max_outbound_bytes,
        ));
        let tokens: Arc<dyn crate::redact::TokenIndex> = registry.clone();
        crate::redact::redactor().add_index(Arc::downgrade(&tokens));
        let node_id = config.effective_node_id();
        let first = ChannelService::new(db.clone(), config.clone(), dispatcher.clone(), None);
        let mut domains = Vec::new();
        let mut cluster_domains = Vec::new();
        for d in eventing {
            // A cluster's websocket session directory (PostgreSQL only).
            let sessions = (db.backend() == crate::db::Backend::Postgres).then(|| {
                let (sessions, writer) = crate::cluster::sessions::ClusterSessions::start(
                    db.clone(),
                    &d.name,
                    &node_id,
                    Duration::from_millis(config.node_heartbeat_ms),
                    &logger,
                );
                eventing_arbiter.spawn(writer.run(registry.clone()));
                sessions
            });
            let channels = first.for_domain(
                &d.name,
                Some(LiveNode {
                    registry: registry.clone(),
                    arbiters: channel_arbiters.clone(),
                    logger: logger.clone(),
                    outbound: outbound.clone(),
                    elsewhere: sessions.clone().map(|s| {
                        let s: Arc<dyn crate::actors::sessions::ElsewhereSessions> = s;
                        s
                    }),
                }),
            );
            let load_started = Instant::now();
            let served = channels.load_all().await?;
            slog::info!(logger, "channels loaded"; "domain" => &d.name, "served" => served, "ms" => load_started.elapsed().as_millis() as u64);
            if let Some(sessions) = sessions {
                cluster_domains.push(crate::cluster::listener::ListenedDomain {
                    name: d.name.clone(),
                    channels: channels.clone(),
                    events: d.events.clone(),
                    sessions,
                });
            }
            spawn_event_purge(d.events.clone(), &config, &logger);
            domains.push(DomainState {
                name: d.name,
                channels,
                events: d.events,
                broker: d.broker,
                epoch: d.epoch,
                delivery_stats: d.delivery_stats,
                delivery: d.delivery,
            });
        }
        let mut domains = domains.into_iter();
        let default_domain = domains
            .next()
            .ok_or_else(|| StartError::Io(std::io::Error::other("no domain to serve")))?;
        let more_domains: Vec<DomainState> = domains.collect();

        let cluster_stats = Arc::new(crate::cluster::ClusterStats::default());
        let freshness = Arc::new(match db.backend() {
            crate::db::Backend::Postgres => {
                crate::cluster::Freshness::clustered(Duration::from_secs(config.max_staleness_s))
            }
            crate::db::Backend::Sqlite => crate::cluster::Freshness::single_node(),
        });
        let stats_history = Arc::new(crate::actors::stats_history::StatsHistory::new());
        eventing_arbiter.spawn(crate::actors::stats_history::sample_forever(
            stats_history.clone(),
            registry.clone(),
            Duration::from_millis(config.status_sample_ms),
        ));
        start_cluster(
            &eventing_arbiter,
            &config,
            &node_id,
            (&db, &registry, cluster_domains),
            (&freshness, &cluster_stats),
            &logger,
        );

        let state = web::Data::new(AppState {
            config: config.clone(),
            db,
            registry,
            dispatcher,
            outgoing: outgoing.stats().clone(),
            admin_token,
            logger: logger.clone(),
            started: Instant::now(),
            ws_sessions: Arc::new(AtomicUsize::new(0)),
            event_sockets: Arc::new(AtomicUsize::new(0)),
            default_domain,
            more_domains,
            arbiters: std::iter::once(eventing_arbiter.clone())
                .chain(std::iter::once(executions_writer))
                .chain(channel_arbiters.handles().iter().cloned())
                .collect(),
            node_memory,
            outbound: outbound.clone(),
            ws_inbound: crate::actors::ws_session::InboundBudget::new(
                config.ws_node_max_inbound_bytes,
            ),
            conn_stats: Arc::default(),
            node_id,
            freshness,
            cluster_stats,
            stats_history,
        });

        let app_state = state.clone();
        let access_log = config.access_log;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(web::QueryConfig::default().error_handler(|err, _| {
                    ApiError::bad_request("invalid_query", err.to_string()).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|err, _| {
                    ApiError::bad_request("invalid_path", err.to_string()).into()
                }))
                // Innermost: the access log and the request id see its 408s.
                .wrap(from_fn(http::body_guard::guard_bodies))
                .wrap(Condition::new(
                    access_log,
                    from_fn(http::request_log::log_requests),
                ))
                // The access log and error causes carry the request id.
                .wrap(from_fn(http::request_id::tag_requests))
                // Outside even that: the header values leave the connection's read
                // buffer before anything clones the request.
                .wrap(from_fn(http::own_headers::own_headers))
                .configure(http::routes)
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::not_found(
                        "not_found",
                        "no such route",
                    ))
                }))
        })
        .shutdown_timeout(config.shutdown_timeout_s)
        // Signals are ours (see `run_until_stopped`): websockets get a 1001 first.
        .disable_signals()
        // Slow and half-finished requests (issue #10); the body timeout is
        // `http::body_guard`'s.
        .client_request_timeout(Duration::from_millis(config.http_head_timeout_ms))
        .keep_alive(match config.http_keep_alive_s {
            0 => KeepAlive::Disabled,
            s => KeepAlive::Timeout(Duration::from_secs(s)),
        })
        .max_connections(config.http_max_connections);
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let server = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                server.bind_rustls_0_23(&config.listen, tls_server_config(cert, key)?)?
            }
            _ => server.bind(&config.listen)?,
        };
        let port = server.addrs().first().map(|a| a.port()).unwrap_or_default();
        // A separate small server for scrapers: only the operations routes.
        let (metrics_server, metrics_port) = match &config.metrics_listen {
            Some(addr) => {
                let ops_state = state.clone();
                let ops = HttpServer::new(move || {
                    App::new()
                        .app_data(ops_state.clone())
                        .app_data(http::ops::MetricsListener)
                        .configure(http::ops::routes)
                        .default_service(web::to(|| async {
                            Err::<actix_web::HttpResponse, _>(ApiError::not_found(
                                "not_found",
                                "this address serves only /metrics, /healthz and /readyz",
                            ))
                        }))
                })
                .workers(1)
                .disable_signals()
                .bind(addr)?;
                let port = ops.addrs().first().map(|a| a.port());
                (Some(ops.run()), port)
            }
            None => (None, None),
        };
        slog::info!(logger, "listening"; "address" => format!("{:?}", server.addrs()), "domain" => &config.domain, "roles" => config.roles.join(","));
        let server = server.run();
        Ok(Application {
            port,
            metrics_port,
            metrics_server,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `metrics_listen`, when set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully: websockets are closed
    /// with 1001 (going away), the listener stops, in-flight requests may finish within
    /// `shutdown_timeout_s`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let metrics = self.metrics_server.map(|s| {
            let h = s.handle();
            actix_web::rt::spawn(s);
            h
        });
        actix_web::rt::spawn(async move {
            wait_for_stop_signal().await;
            if let Some(m) = metrics {
                m.stop(true).await;
            }
            slog::info!(
                state.logger,
                "stopping: closing websockets, draining requests"
            );
            http::websocket::close_all_sessions(&state, "server shutting down");
            drain_deliveries(&state).await;
            leave_the_registry(&state).await;
            handle.stop(true).await;
            state.stop_background();
        });
        self.server.await
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Splits into the server future (to spawn) and the shared state; the metrics
    /// server, if any, is spawned on the current runtime.
    pub fn into_parts(self) -> (Server, web::Data<AppState>) {
        if let Some(m) = self.metrics_server {
            actix_web::rt::spawn(m);
        }
        (self.server, self.state)
    }
}

/// The configured scenario runtime (also used by the CLI to validate scripts on save).
/// Runs' memory counts against `node` (the node's scenario memory budget).
pub fn scenario_runtime(
    config: &Config,
    node: Arc<crate::alloc::NodeMemory>,
    outgoing: Arc<OutgoingClient>,
) -> Result<Arc<dyn ScenarioRuntime>, StartError> {
    Ok(match config.scenario_runtime {
        RuntimeKind::Rhai => Arc::new(RhaiRuntime::new(
            &RhaiLimits {
                max_operations: config.scenario_max_operations,
                max_call_depth: config.scenario_max_call_depth,
                max_string_bytes: config.scenario_max_string_bytes,
                max_array_len: config.scenario_max_array_len,
                max_map_len: config.scenario_max_map_len,
                budgets: crate::scenario::budget::Budgets::of_node(config, node),
            },
            outgoing,
        )),
        RuntimeKind::Http => Arc::new(HttpRuntime::new(
            config.scenario_http_url.clone().unwrap_or_default(),
        )),
    })
}

/// The node's part in the cluster, on the eventing arbiter: the heartbeat in the node
/// registry, one row per domain (every backend), and on PostgreSQL (where `domains`
/// holds each domain's cluster side) the notification listener that applies other
/// nodes' changes here.
fn start_cluster(
    arbiter: &actix::ArbiterHandle,
    config: &Config,
    node_id: &str,
    (db, registry, domains): (
        &Database,
        &Arc<crate::actors::ChannelRegistry>,
        Vec<crate::cluster::listener::ListenedDomain>,
    ),
    (freshness, stats): (
        &Arc<crate::cluster::Freshness>,
        &Arc<crate::cluster::ClusterStats>,
    ),
    logger: &slog::Logger,
) {
    let started_at = crate::db::now_millis();
    let heartbeat = crate::cluster::heartbeat::Heartbeat {
        db: db.clone(),
        nodes: config
            .domains()
            .into_iter()
            .map(|domain| crate::db::nodes::NodeRow {
                domain,
                node_id: node_id.to_string(),
                roles: config.roles.join(","),
                listen: config.listen.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at,
                heartbeat_at: 0,
            })
            .collect(),
        every: Duration::from_millis(config.node_heartbeat_ms),
        freshness: freshness.clone(),
        stats: stats.clone(),
        registry: registry.clone(),
        logger: logger.clone(),
    };
    arbiter.spawn(heartbeat.run());
    if db.backend() == crate::db::Backend::Postgres {
        let listener = crate::cluster::listener::Listener {
            url: config
                .cluster_listen_url
                .clone()
                .unwrap_or_else(|| config.database_url.clone()),
            domains,
            freshness: freshness.clone(),
            stats: stats.clone(),
            heartbeat: Duration::from_millis(config.node_heartbeat_ms),
            reconcile_every: Duration::from_secs(config.cluster_reconcile_s),
            registry: registry.clone(),
            logger: logger.clone(),
        };
        arbiter.spawn(listener.run());
    }
}

/// One domain's event log, broker and delivery worker (on the eventing arbiter).
struct Eventing {
    name: String,
    events: EventService,
    broker: actix::Addr<EventBroker>,
    epoch: String,
    delivery_stats: Arc<DeliveryStats>,
    delivery: actix::Addr<DeliveryWorker>,
}

async fn start_eventing(
    db: &Database,
    config: &Config,
    domain: &str,
    arbiter: &actix::ArbiterHandle,
    logger: &slog::Logger,
) -> Result<Eventing, StartError> {
    let events = EventService::new(db.clone(), domain);
    let head = events.ensure_log().await?;
    slog::info!(logger, "event log ready"; "domain" => domain, "epoch" => &head.epoch, "last_id" => head.last_id);
    let broker = {
        let (db, domain, logger) = (db.clone(), domain.to_string(), logger.clone());
        let (last_id, max_pending) = (head.last_id, config.event_subscriber_buffer);
        let stats = events.stats.clone();
        EventBroker::start_in_arbiter(arbiter, move |_| {
            EventBroker::new(db, &domain, last_id, max_pending, stats, &logger)
        })
    };
    let delivery_stats = Arc::new(DeliveryStats::default());
    let delivery = {
        let (db, domain, logger, stats) = (
            db.clone(),
            domain.to_string(),
            logger.clone(),
            delivery_stats.clone(),
        );
        let delivery_config = DeliveryConfig {
            retry_delays_ms: config.delivery_retry_delays_ms.clone(),
            timeout: Duration::from_millis(config.delivery_timeout_ms),
            disable_after_ms: config.delivery_disable_after_ms as i64,
            concurrency: config.delivery_concurrency.max(1),
            per_subscription: config.delivery_max_in_flight_per_subscription.max(1),
            poll: Duration::from_millis(config.delivery_poll_ms.max(10)),
            allow_private: config.allow_private_targets,
            tls: client_tls(config)?,
        };
        DeliveryWorker::start_in_arbiter(arbiter, move |_| {
            DeliveryWorker::new(db, &domain, delivery_config, stats, &logger)
        })
    };
    let events = events
        .with_broker(broker.clone().recipient())
        .with_delivery(delivery.clone().recipient());
    delivery.do_send(UseEvents(events.clone()));
    Ok(Eventing {
        name: domain.to_string(),
        events,
        broker,
        epoch: head.epoch,
        delivery_stats,
        delivery,
    })
}

/// The rustls server configuration from PEM files (ring as the crypto provider).
fn tls_server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |what: &str, e: &dyn std::fmt::Display| StartError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(&cert.display().to_string(), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&cert.display().to_string(), &e))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(&key.display().to_string(), &e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate and key", &e))
}

/// Lets deliveries in flight finish (up to 10 s), then gives back the leases of those
/// that did not, so that another node (or this one, restarted) sends them at once
/// instead of after the lease runs out. Delivery is at least once: receivers dedupe by
/// webhook-id.
async fn drain_deliveries(state: &AppState) {
    for domain in state.domains() {
        drain_domain_deliveries(state, domain).await;
    }
}

async fn drain_domain_deliveries(state: &AppState, domain: &DomainState) {
    use std::sync::atomic::Ordering;
    let _ = domain.delivery.send(crate::actors::delivery::Drain).await;
    let until = Instant::now() + Duration::from_secs(10);
    while domain.delivery_stats.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Ok(left) = domain.delivery.send(crate::actors::delivery::Drain).await else {
        return;
    };
    if left.is_empty() {
        return;
    }
    let count = left.len();
    match state
        .db
        .run(move |c| crate::db::subscriptions::release_leases(c, &left))
        .await
    {
        Ok(()) => slog::info!(state.logger, "released delivery leases"; "count" => count),
        Err(e) => slog::warn!(state.logger, "releasing delivery leases failed"; "error" => %e),
    }
}

/// A node stopping cleanly takes itself out of the node registry (a killed one is
/// shown down after three missed heartbeats).
async fn leave_the_registry(state: &AppState) {
    state
        .cluster_stats
        .leaving
        .store(true, std::sync::atomic::Ordering::Release);
    for domain in state.config.domains() {
        let node = state.node_id.clone();
        if let Err(e) = state
            .db
            .run(move |c| crate::db::nodes::forget(c, &domain, &node))
            .await
        {
            slog::warn!(state.logger, "leaving the node registry failed"; "error" => %e);
        }
    }
}

async fn wait_for_stop_signal() {
    use actix_web::rt::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = actix_web::rt::signal::ctrl_c().await;
        }
    }
}

fn build_dispatcher(
    config: &Config,
    node_memory: Arc<crate::alloc::NodeMemory>,
    outgoing: Arc<OutgoingClient>,
    (events, state): (
        Vec<EventService>,
        Arc<crate::scenario::channel_state::StateStore>,
    ),
    logger: &slog::Logger,
) -> Result<Dispatcher, StartError> {
    let runtime = scenario_runtime(config, node_memory, outgoing)?;
    let pool = ScenarioPool::start(
        config.effective_scenario_threads(),
        config.scenario_max_admitted,
        logger.clone(),
    )?;
    Ok(Dispatcher::new(
        pool,
        events,
        Some(state),
        runtime,
        Duration::from_millis(config.scenario_timeout_ms),
        config.channel_max_in_flight,
        logger.clone(),
    )
    .with_inline(config.effective_inline()))
}

/// Purges events and ended webhook deliveries (with their attempts) past their
/// retentions, hourly (first run a minute after start).
fn spawn_event_purge(events: EventService, config: &Config, logger: &slog::Logger) {
    let day_ms: i64 = 24 * 60 * 60 * 1000;
    let retention_ms = (config.event_retention_days as i64).saturating_mul(day_ms);
    let delivery_retention_ms = (config.delivery_retention_days as i64).saturating_mul(day_ms);
    let logger = logger.clone();
    actix_web::rt::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            match events.purge(retention_ms).await {
                Ok(0) => {}
                Ok(n) => slog::info!(logger, "purged old events"; "count" => n),
                Err(e) => slog::warn!(logger, "purging old events failed"; "error" => %e),
            }
            match events.purge_deliveries(delivery_retention_ms).await {
                Ok((0, _)) => {}
                Ok((deliveries, attempts)) => slog::info!(logger, "purged old deliveries";
                    "deliveries" => deliveries, "attempts" => attempts),
                Err(e) => slog::warn!(logger, "purging old deliveries failed"; "error" => %e),
            }
        }
    });
}

/// How often idle outgoing connections are looked for at most (they close after
/// `outgoing_idle_timeout_s`, give or take this; a third of it when that is shorter).
const OUTGOING_TIDY_EVERY: Duration = Duration::from_secs(5);

/// The client scenarios use for `outgoing_request`.
pub fn outgoing_client(config: &Config) -> Result<Arc<OutgoingClient>, StartError> {
    let settings = OutgoingSettings {
        timeout: Duration::from_millis(config.outgoing_timeout_ms),
        max_response_bytes: config.outgoing_max_response_bytes,
        max_connections_per_host: config.outgoing_max_connections_per_host,
        idle_timeout: Duration::from_secs(config.outgoing_idle_timeout_s),
    };
    Ok(Arc::new(OutgoingClient::new(
        &settings,
        client_tls(config)?,
    )))
}

/// The TLS trust of the node's clients (deliveries, scenario calls): web roots plus
/// `tls_ca_file`.
pub fn client_tls(config: &Config) -> Result<Arc<rustls::ClientConfig>, StartError> {
    crate::net::tls::client_config(config.tls_ca_file.as_deref())
        .map_err(|e| StartError::Tls(e.to_string()))
}

/// The admin token: configured, or read from (or first written to) `admin-token` in
/// the data folder with mode 0600. Only the file's path is ever logged.
fn resolve_admin_token(config: &Config, logger: &slog::Logger) -> Result<String, StartError> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    let path = config.data_dir.join("admin-token");
    let err = |source| StartError::AdminToken {
        path: path.display().to_string(),
        source,
    };
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let token = existing.trim().to_string();
        if token.len() >= 16 {
            slog::info!(logger, "admin token read from file"; "path" => path.display().to_string());
            return Ok(token);
        }
    }
    std::fs::create_dir_all(&config.data_dir).map_err(err)?;
    let token = generate_token();
    write_secret(&path, &token).map_err(err)?;
    slog::warn!(logger, "no admin token configured: generated one"; "path" => path.display().to_string());
    Ok(token)
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")
}
