//! Settings: command-line flags beat environment variables, which beat the TOML file
//! given by `--config`, which beats the defaults below. `config.default.toml` at the
//! top of the repository lists every setting with its default and meaning.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Which scenario runtime runs the channels' scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Embedded sandboxed Rhai scripts (the default).
    Rhai,
    /// A remote scenario engine reached over HTTP (`scenario_http_url`).
    Http,
}

/// The longest `node_id` (it travels in cluster notes).
pub const MAX_NODE_ID_BYTES: usize = 200;

/// The effective configuration of one node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    /// The domain this node serves; `domain = "a,b"` (or `--domain a,b`) serves several,
    /// the first being the one admin calls use unless they name another
    /// (`X-Oktell-Domain`). After `resolve`, `domain` holds the first only.
    pub domain: String,
    /// The further domains of `domain = "a,b"` (filled by `resolve`).
    #[serde(skip)]
    pub more_domains: Vec<String>,
    pub roles: Vec<String>,
    /// This node's name in the node registry (`GET /admin/v1/nodes`); default
    /// `<hostname>:<listen port>`.
    pub node_id: Option<String>,
    /// How often a node records that it is alive; it is shown down after three
    /// missed heartbeats.
    pub node_heartbeat_ms: u64,
    /// PostgreSQL only: how long a node cut off from the database (its notification
    /// listener down) keeps serving the channels it has loaded; then token routes
    /// answer 503 until it is back in touch.
    pub max_staleness_s: u64,
    /// PostgreSQL only: how often each node compares its channels with the database
    /// (besides every notification and every listener reconnect).
    pub cluster_reconcile_s: u64,
    /// PostgreSQL only: a direct URL for the notification listener when
    /// `database_url` goes through a pooler in transaction mode (which breaks LISTEN).
    pub cluster_listen_url: Option<String>,
    pub workers: usize,
    pub db_pool_size: u32,
    pub max_body_bytes: usize,
    pub admin_max_body_bytes: usize,
    pub scenario_timeout_ms: u64,
    pub scenario_threads: usize,
    /// Runs admitted at once (queued, computing or waiting); `scenario_queue` is its
    /// old name.
    #[serde(alias = "scenario_queue")]
    pub scenario_max_admitted: usize,
    pub channel_max_in_flight: usize,
    /// How long a run may compute inline on the HTTP worker that received it, µs,
    /// counted from its submit (`scenario::inline`); 0: every run goes to the pool.
    pub scenario_inline_us: u64,
    pub scenario_max_operations: u64,
    pub scenario_max_call_depth: usize,
    pub scenario_max_string_bytes: usize,
    pub scenario_max_array_len: usize,
    pub scenario_max_map_len: usize,
    /// Budgets of one run (`scenario::budget`), and memory of all runs together.
    pub scenario_max_memory_bytes: u64,
    pub scenario_node_memory_bytes: u64,
    pub scenario_max_log_bytes: u64,
    pub scenario_max_events: u64,
    pub scenario_max_event_bytes: u64,
    pub scenario_max_pushes: u64,
    pub scenario_max_push_bytes: u64,
    pub scenario_max_outgoing_calls: u64,
    pub scenario_runtime: RuntimeKind,
    pub scenario_http_url: Option<String>,
    pub outgoing_timeout_ms: u64,
    pub outgoing_max_response_bytes: usize,
    pub outgoing_max_connections_per_host: usize,
    pub outgoing_idle_timeout_s: u64,
    /// Saved versions of a channel's scripts kept (`GET /admin/v1/channels/{id}/versions`);
    /// the oldest beyond are deleted on the next save.
    pub channel_versions_kept: usize,
    /// Bytes of each text a dry run reports (a call's body, a push, an event's data,
    /// the reply's body); longer ones are cut and marked.
    pub dry_run_max_recorded_bytes: usize,
    /// Channel state (`state_get`/`state_set`/`state_del`/`seen_before`): the longest
    /// key, the largest value (bytes of its JSON), and keys per channel.
    pub channel_state_max_key_bytes: usize,
    pub channel_state_max_value_bytes: usize,
    pub channel_state_max_keys: u64,
    /// How often each node deletes expired state rows, and at most how many a pass.
    pub channel_state_sweep_s: u64,
    pub channel_state_sweep_batch: u64,
    /// Execution history (`executions`): records waiting for the writer, at most;
    /// beyond, records are dropped and counted (`oktell_executions_dropped_total`).
    pub executions_queue: usize,
    /// ... and at most this many bytes held by them (a queued record holds its request
    /// body whole until the writer makes it; beyond, dropped and counted alike).
    pub executions_queue_bytes: usize,
    /// How often the writer stores what is queued (one transaction per batch).
    pub executions_flush_ms: u64,
    /// Bytes of each recorded text (a body, a log line, a header); longer is cut.
    pub executions_max_recorded_bytes: usize,
    /// Executions kept per channel (the newest); older are trimmed on each write.
    pub executions_kept_per_channel: usize,
    /// Executions older than this are purged.
    pub executions_retention_days: u64,
    /// How often each channel's requests and errors are sampled for the status page's
    /// sparklines (90 samples kept: 15 minutes at the default 10 s).
    pub status_sample_ms: u64,
    /// Regular expressions whose matches are masked in logs and execution records
    /// (the first capture group when there is one, else the whole match).
    pub redact_patterns: Vec<String>,
    pub ws_heartbeat_interval_ms: u64,
    pub ws_heartbeat_timeout_ms: u64,
    pub ws_max_message_bytes: usize,
    pub ws_session_queue: usize,
    /// Bytes of messages waiting for the scenario, per session and node-wide.
    pub ws_session_queue_bytes: usize,
    pub ws_node_max_inbound_bytes: u64,
    pub ws_max_sessions_per_channel: usize,
    pub ws_max_sessions_per_node: usize,
    /// Bytes queued for a websocket client that it has not read yet; beyond, it is
    /// closed (1008 on public channels, 1013 on event subscriptions).
    pub ws_max_backlog_bytes: usize,
    /// Websocket frames queued for clients on this node, all sessions together.
    pub ws_node_max_outbound_bytes: u64,
    /// Open event subscriptions (`/ws/token/v1/{token}/subscribe`) per eventing
    /// channel and per node; beyond, the upgrade is refused with 503.
    pub ws_max_subscribers_per_channel: usize,
    pub ws_max_subscribers_per_node: usize,
    /// Client IPs whose rate-limit bucket a channel with `rate_limit.per_client_ip`
    /// keeps on this node; beyond, the least recently seen is forgotten.
    pub rate_limit_max_clients_per_channel: usize,
    /// Events older than this are purged (hourly).
    pub event_retention_days: u64,
    /// Events a websocket subscriber may have queued before it is closed (1013).
    pub event_subscriber_buffer: usize,
    /// Waits before each retry of a failed webhook delivery (the first try is at once).
    pub delivery_retry_delays_ms: Vec<u64>,
    /// Time one delivery request may take.
    pub delivery_timeout_ms: u64,
    /// A subscription failing this long is disabled (and `subscription.disabled` emitted).
    pub delivery_disable_after_ms: u64,
    /// Deliveries sent at once by this node.
    pub delivery_concurrency: usize,
    /// Deliveries of one subscription sent at once by this node (so that one slow
    /// receiver cannot hold every slot).
    pub delivery_max_in_flight_per_subscription: usize,
    /// How often this node looks for due deliveries (publishes also wake it).
    pub delivery_poll_ms: u64,
    /// Delivered and failed deliveries (and their attempts) are purged this many days
    /// after they ended; pending ones are kept.
    pub delivery_retention_days: u64,
    /// Allow webhook targets on loopback and private networks (tests, closed networks).
    pub allow_private_targets: bool,
    pub trusted_proxies: Vec<IpAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// PEM certificate chain and private key: serve https and wss when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A PEM file of extra CA certificates trusted (besides the public web roots) by
    /// webhook deliveries to https:// receivers.
    pub tls_ca_file: Option<PathBuf>,
    /// A second address serving only /metrics, /healthz and /readyz (optional).
    pub metrics_listen: Option<String>,
    /// Per-channel metrics (channel codes) on the main listener without the admin token.
    pub metrics_public_channels: bool,
    /// One log line per request.
    pub access_log: bool,
    pub shutdown_timeout_s: u64,
    // Connection hygiene (issue #10): slow and half-finished requests.
    /// Time a request body may take to arrive in full, from the request head on; then
    /// 408 and the connection is closed.
    pub http_body_timeout_ms: u64,
    /// Time an idle keep-alive connection is kept open between requests (0: no
    /// keep-alive).
    pub http_keep_alive_s: u64,
    /// Time the head of a connection's first request may take to arrive; then 408.
    pub http_head_timeout_ms: u64,
    /// Connections each HTTP worker holds at once; beyond, new ones wait in the
    /// listen backlog.
    pub http_max_connections: usize,
    /// Test-only hooks (e.g. making a channel actor panic). Never enable in production.
    pub fault_injection: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "./data/oktell-gateway.db".into(),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            domain: "default".into(),
            more_domains: Vec::new(),
            roles: Vec::new(),
            node_id: None,
            node_heartbeat_ms: 1000,
            max_staleness_s: 10,
            cluster_reconcile_s: 30,
            cluster_listen_url: None,
            workers: 0,
            db_pool_size: 8,
            max_body_bytes: 1024 * 1024,
            admin_max_body_bytes: 4 * 1024 * 1024,
            scenario_timeout_ms: 30_000,
            scenario_threads: 0,
            scenario_max_admitted: 1024,
            channel_max_in_flight: 512,
            scenario_inline_us: 200,
            scenario_max_operations: 10_000_000,
            scenario_max_call_depth: 64,
            scenario_max_string_bytes: 4 * 1024 * 1024,
            scenario_max_array_len: 100_000,
            scenario_max_map_len: 100_000,
            scenario_max_memory_bytes: 64 * 1024 * 1024,
            scenario_node_memory_bytes: 1024 * 1024 * 1024,
            scenario_max_log_bytes: 64 * 1024,
            scenario_max_events: 100,
            scenario_max_event_bytes: 1024 * 1024,
            scenario_max_pushes: 1000,
            scenario_max_push_bytes: 8 * 1024 * 1024,
            scenario_max_outgoing_calls: 32,
            scenario_runtime: RuntimeKind::Rhai,
            scenario_http_url: None,
            outgoing_timeout_ms: 15_000,
            outgoing_max_response_bytes: 4 * 1024 * 1024,
            outgoing_max_connections_per_host: 512,
            outgoing_idle_timeout_s: 15,
            channel_versions_kept: 50,
            dry_run_max_recorded_bytes: 64 * 1024,
            channel_state_max_key_bytes: 256,
            channel_state_max_value_bytes: 16 * 1024,
            channel_state_max_keys: 10_000,
            channel_state_sweep_s: 60,
            channel_state_sweep_batch: 1000,
            executions_queue: 10_000,
            executions_queue_bytes: 64 * 1024 * 1024,
            executions_flush_ms: 100,
            executions_max_recorded_bytes: 4096,
            executions_kept_per_channel: 1000,
            executions_retention_days: 7,
            status_sample_ms: 10_000,
            redact_patterns: Vec::new(),
            ws_heartbeat_interval_ms: 10_000,
            ws_heartbeat_timeout_ms: 30_000,
            ws_max_message_bytes: 64 * 1024,
            ws_session_queue: 10_000,
            ws_session_queue_bytes: 1024 * 1024,
            ws_node_max_inbound_bytes: 64 * 1024 * 1024,
            ws_max_sessions_per_channel: 10_000,
            ws_max_sessions_per_node: 50_000,
            ws_max_backlog_bytes: 1024 * 1024,
            ws_node_max_outbound_bytes: 256 * 1024 * 1024,
            ws_max_subscribers_per_channel: 50_000,
            ws_max_subscribers_per_node: 50_000,
            rate_limit_max_clients_per_channel: 10_000,
            event_retention_days: 7,
            event_subscriber_buffer: 1000,
            delivery_retry_delays_ms: vec![
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            delivery_timeout_ms: 15_000,
            delivery_disable_after_ms: 5 * 24 * 3600 * 1000,
            delivery_concurrency: 64,
            delivery_max_in_flight_per_subscription: 16,
            delivery_poll_ms: 1000,
            delivery_retention_days: 7,
            allow_private_targets: false,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Human,
            log_level: "info".into(),
            tls_cert: None,
            tls_key: None,
            tls_ca_file: None,
            metrics_listen: None,
            metrics_public_channels: false,
            access_log: true,
            shutdown_timeout_s: 30,
            http_body_timeout_ms: 10_000,
            http_keep_alive_s: 5,
            http_head_timeout_ms: 30_000,
            http_max_connections: 25_000,
            fault_injection: false,
        }
    }
}

/// Flags shared by every subcommand. Each one can also come from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML file with settings (see config.default.toml).
    #[arg(long, global = true, env = "OKTELL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, global = true, env = "OKTELL_LISTEN")]
    pub listen: Option<String>,
    /// SQLite file path (default) or postgres://... URL.
    #[arg(long, global = true, env = "OKTELL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder for the SQLite file and the generated admin token.
    #[arg(long, global = true, env = "OKTELL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bearer token of the admin API; generated and stored in the data folder if unset.
    #[arg(
        long,
        global = true,
        env = "OKTELL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Domain this node serves; a comma list serves several (the first is the admin
    /// API's default; others are named with the X-Oktell-Domain header).
    #[arg(long, global = true, env = "OKTELL_DOMAIN")]
    pub domain: Option<String>,
    /// WS roles this node serves (comma list); empty serves channels of every role.
    #[arg(long, global = true, env = "OKTELL_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// This node's name in the node registry (default: hostname:port).
    #[arg(long, global = true, env = "OKTELL_NODE_ID")]
    pub node_id: Option<String>,
    /// PostgreSQL: seconds a node cut off from the database keeps serving.
    #[arg(long, global = true, env = "OKTELL_MAX_STALENESS_S")]
    pub max_staleness_s: Option<u64>,
    /// Database connections in the pool, at most.
    #[arg(long, global = true, env = "OKTELL_DB_POOL_SIZE")]
    pub db_pool_size: Option<u32>,
    /// HTTP worker threads (0 = one per core).
    #[arg(long, global = true, env = "OKTELL_WORKERS")]
    pub workers: Option<usize>,
    /// Largest webhook body accepted, in bytes.
    #[arg(long, global = true, env = "OKTELL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Time a scenario may run (and a waiting caller may wait), in milliseconds.
    #[arg(long, global = true, env = "OKTELL_SCENARIO_TIMEOUT_MS")]
    pub scenario_timeout_ms: Option<u64>,
    /// Scenario threads (0 = one per core).
    #[arg(long, global = true, env = "OKTELL_SCENARIO_THREADS")]
    pub scenario_threads: Option<usize>,
    /// Scenario runs admitted at once (queued, computing or waiting on the outside
    /// world); beyond, callers get 503 + Retry-After.
    #[arg(
        long,
        global = true,
        env = "OKTELL_SCENARIO_MAX_ADMITTED",
        alias = "scenario-queue"
    )]
    pub scenario_max_admitted: Option<usize>,
    /// Scenario runs one channel may have queued or running at once.
    #[arg(long, global = true, env = "OKTELL_CHANNEL_MAX_IN_FLIGHT")]
    pub channel_max_in_flight: Option<usize>,
    /// Scenario runtime: rhai (embedded) or http (remote engine).
    #[arg(long, global = true, env = "OKTELL_SCENARIO_RUNTIME")]
    pub scenario_runtime: Option<RuntimeKind>,
    /// URL of the remote scenario engine for `--scenario-runtime http`.
    #[arg(long, global = true, env = "OKTELL_SCENARIO_HTTP_URL")]
    pub scenario_http_url: Option<String>,
    /// Proxies whose X-Forwarded-For is believed (comma list of IPs).
    #[arg(
        long,
        global = true,
        env = "OKTELL_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<IpAddr>>,
    /// Log format.
    #[arg(long, global = true, env = "OKTELL_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, env = "OKTELL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// PEM certificate chain: with --tls-key, serve https and wss.
    #[arg(long, global = true, env = "OKTELL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "OKTELL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of extra CA certificates the gateway's clients trust (deliveries to
    /// https://, outgoing calls to https:// and ftps://).
    #[arg(long, global = true, env = "OKTELL_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Serve /metrics (and health) on this address too, e.g. 127.0.0.1:9090.
    #[arg(long, global = true, env = "OKTELL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Allow webhook subscription targets on loopback and private networks.
    #[arg(long, global = true, env = "OKTELL_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,
    /// Time a request body may take to arrive, in milliseconds; then 408 and close.
    #[arg(long, global = true, env = "OKTELL_HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<u64>,
    /// Idle keep-alive connections are closed after this many seconds (0: no keep-alive).
    #[arg(long, global = true, env = "OKTELL_HTTP_KEEP_ALIVE_S")]
    pub http_keep_alive_s: Option<u64>,
    /// Time the first request head of a connection may take, in milliseconds; then 408.
    #[arg(long, global = true, env = "OKTELL_HTTP_HEAD_TIMEOUT_MS")]
    pub http_head_timeout_ms: Option<u64>,
    /// Connections each HTTP worker holds at once.
    #[arg(long, global = true, env = "OKTELL_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
}

/// Errors of reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl ConfigArgs {
    /// Layers file, environment and flags over the defaults.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { cfg.$field = v.clone(); } )* };
        }
        take!(
            listen,
            database_url,
            data_dir,
            domain,
            roles,
            max_staleness_s,
            db_pool_size,
            workers,
            max_body_bytes,
            scenario_timeout_ms,
            scenario_threads,
            scenario_max_admitted,
            channel_max_in_flight,
            scenario_runtime,
            trusted_proxies,
            log_format,
            log_level,
            http_body_timeout_ms,
            http_keep_alive_s,
            http_head_timeout_ms,
            http_max_connections
        );
        if self.admin_token.is_some() {
            cfg.admin_token = self.admin_token.clone();
        }
        if self.node_id.is_some() {
            cfg.node_id = self.node_id.clone();
        }
        if self.scenario_http_url.is_some() {
            cfg.scenario_http_url = self.scenario_http_url.clone();
        }
        if self.tls_cert.is_some() {
            cfg.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            cfg.tls_key = self.tls_key.clone();
        }
        if self.tls_ca_file.is_some() {
            cfg.tls_ca_file = self.tls_ca_file.clone();
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen.clone();
        }
        if self.allow_private_targets {
            cfg.allow_private_targets = true;
        }
        // A data folder given without a database URL moves the SQLite file along (from a
        // flag, the environment or the file alike).
        let defaults = Config::default();
        if cfg.database_url == defaults.database_url && cfg.data_dir != defaults.data_dir {
            cfg.database_url = cfg.data_dir.join("oktell-gateway.db").display().to_string();
        }
        cfg.roles.retain(|r| !r.trim().is_empty());
        cfg.split_domains();
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| ConfigError::Invalid {
            field,
            message: message.to_string(),
        };
        for domain in self.domains() {
            if domain.trim().is_empty() {
                return Err(invalid(
                    "domain",
                    "must not be empty (nor hold an empty item)",
                ));
            }
            if domain.len() > 200 || domain.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    "domain",
                    "each domain must be at most 200 bytes, without control characters",
                ));
            }
        }
        if let Some(id) = &self.node_id
            && (id.trim().is_empty() || id.len() > MAX_NODE_ID_BYTES)
        {
            return Err(invalid("node_id", "must be 1 to 200 bytes"));
        }
        if self.node_heartbeat_ms == 0 || self.max_staleness_s == 0 || self.cluster_reconcile_s == 0
        {
            return Err(invalid(
                "node_heartbeat_ms",
                "node_heartbeat_ms, max_staleness_s and cluster_reconcile_s must be above 0",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be above 0"));
        }
        if self.rate_limit_max_clients_per_channel == 0 {
            return Err(invalid(
                "rate_limit_max_clients_per_channel",
                "must be above 0",
            ));
        }
        if self.executions_queue == 0
            || self.executions_queue_bytes == 0
            || self.executions_flush_ms == 0
            || self.executions_kept_per_channel == 0
            || self.executions_retention_days == 0
        {
            return Err(invalid(
                "executions_queue",
                "executions_queue, executions_queue_bytes, executions_flush_ms, executions_kept_per_channel and executions_retention_days must be above 0",
            ));
        }
        for p in &self.redact_patterns {
            if let Err(e) = regex::Regex::new(p) {
                return Err(invalid(
                    "redact_patterns",
                    &format!("{p:?} is not a valid regular expression: {e}"),
                ));
            }
        }
        if self.status_sample_ms < 100 {
            return Err(invalid("status_sample_ms", "must be at least 100"));
        }
        if self.channel_versions_kept == 0 {
            return Err(invalid("channel_versions_kept", "must be above 0"));
        }
        for (name, value) in [
            (
                "channel_state_max_key_bytes",
                self.channel_state_max_key_bytes as u64,
            ),
            (
                "channel_state_max_value_bytes",
                self.channel_state_max_value_bytes as u64,
            ),
            ("channel_state_max_keys", self.channel_state_max_keys),
            ("channel_state_sweep_s", self.channel_state_sweep_s),
            ("channel_state_sweep_batch", self.channel_state_sweep_batch),
            ("outgoing_idle_timeout_s", self.outgoing_idle_timeout_s),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be above 0"));
            }
        }
        if self.scenario_timeout_ms == 0 {
            return Err(invalid("scenario_timeout_ms", "must be above 0"));
        }
        if self.ws_heartbeat_interval_ms == 0
            || self.ws_heartbeat_timeout_ms <= self.ws_heartbeat_interval_ms
        {
            return Err(invalid(
                "ws_heartbeat_timeout_ms",
                "must be above ws_heartbeat_interval_ms (and the interval above 0)",
            ));
        }
        if self.ws_max_message_bytes == 0
            || self.ws_session_queue == 0
            || self.ws_session_queue_bytes < self.ws_max_message_bytes
        {
            return Err(invalid(
                "ws_max_message_bytes",
                "websocket message size and queue must be above 0, ws_session_queue_bytes at least ws_max_message_bytes",
            ));
        }
        if self.scenario_inline_us > 10_000 {
            return Err(invalid(
                "scenario_inline_us",
                "at most 10000 (10 ms): an inline run holds up the HTTP worker's other connections",
            ));
        }
        if self.scenario_max_admitted == 0 || self.channel_max_in_flight == 0 {
            return Err(invalid(
                "scenario_max_admitted",
                "admission bounds must be at least 1",
            ));
        }
        if let Some(token) = &self.admin_token
            && token.len() < 16
        {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
        }
        if self.http_body_timeout_ms == 0 || self.http_head_timeout_ms == 0 {
            // Zero would mean "wait forever": the hole these settings close.
            return Err(invalid(
                "http_body_timeout_ms",
                "http_body_timeout_ms and http_head_timeout_ms must be above 0",
            ));
        }
        if self.http_max_connections == 0 {
            return Err(invalid("http_max_connections", "must be at least 1"));
        }
        if self.scenario_runtime == RuntimeKind::Http && self.scenario_http_url.is_none() {
            return Err(invalid(
                "scenario_http_url",
                "is required with scenario_runtime = http",
            ));
        }
        Ok(())
    }

    /// `domain = "a,b"`: `domain` becomes `a`, `more_domains` `[b]`.
    pub fn split_domains(&mut self) {
        let listed: Vec<String> = self
            .domain
            .split(',')
            .map(|d| d.trim().to_string())
            .chain(std::mem::take(&mut self.more_domains))
            .collect();
        let mut all = listed.into_iter();
        self.domain = all.next().unwrap_or_default();
        let mut more: Vec<String> = Vec::new();
        for d in all {
            if d != self.domain && !more.contains(&d) {
                more.push(d);
            }
        }
        self.more_domains = more;
    }

    /// Every domain this node serves, the default one first.
    pub fn domains(&self) -> Vec<String> {
        std::iter::once(self.domain.clone())
            .chain(self.more_domains.iter().cloned())
            .collect()
    }

    /// Threads for scenarios: the configured number, or one per core.
    pub fn effective_scenario_threads(&self) -> usize {
        if self.scenario_threads > 0 {
            self.scenario_threads
        } else {
            cores()
        }
    }

    /// How long a run may compute inline on the HTTP worker (`scenario::inline`):
    /// `scenario_inline_us`, except with fewer HTTP workers than cores. Then a scenario
    /// thread has a core of its own, and the hop to it buys parallelism rather than
    /// costing the worker (measured: benches/RESULTS.md, 2026-11-29 #8/#11).
    pub fn effective_inline(&self) -> std::time::Duration {
        if self.workers > 0 && self.workers < cores() {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_micros(self.scenario_inline_us)
    }

    /// This node's id in the node registry: `node_id`, or `<hostname>:<listen port>`
    /// (`<hostname>:pid-<pid>` when the port is left to the system).
    pub fn effective_node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        match self.listen.rsplit(':').next().unwrap_or("") {
            // A port picked by the system is not known yet: the process stands in.
            "" | "0" => format!("{host}:pid-{}", std::process::id()),
            port => format!("{host}:{port}"),
        }
    }

    /// Does this node serve a channel with this WS role?
    pub fn serves_role(&self, role: &str) -> bool {
        role.is_empty() || self.roles.is_empty() || self.roles.iter().any(|r| r == role)
    }
}

/// Cores this process may use (2 when the system does not say).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// config.default.toml is the reference of every setting: it must parse and hold
    /// exactly the defaults.
    #[test]
    fn reference_file_matches_the_defaults() {
        let text = include_str!("../config.default.toml");
        let parsed: Config = toml::from_str(text).expect("config.default.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn flags_beat_the_file() {
        let dir =
            std::env::temp_dir().join(format!("oktell-cfg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:1\"\ndomain = \"from-file\"\n").unwrap();
        let args = ConfigArgs {
            config: Some(file),
            domain: Some("from-flag".into()),
            ..ConfigArgs::default()
        };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.domain, "from-flag");
        assert_eq!(cfg.listen, "0.0.0.0:1");
        // --data-dir moves the SQLite file even when a config file is given.
        let moved = ConfigArgs {
            config: Some(dir.join("c.toml")),
            data_dir: Some(dir.join("d")),
            ..ConfigArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            moved.database_url,
            dir.join("d")
                .join("oktell-gateway.db")
                .display()
                .to_string()
        );
        std::fs::write(dir.join("bad.toml"), "lisen = 1").unwrap();
        let bad = ConfigArgs {
            config: Some(dir.join("bad.toml")),
            ..ConfigArgs::default()
        };
        assert!(matches!(bad.resolve(), Err(ConfigError::Parse { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
