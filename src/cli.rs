//! The command line: `serve`, `migrate`, and `channel ...`, `scenario run`, `events ...`
//! and `subscriptions ...` (the admin API's operations, through the same services and
//! validation, straight against the database).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::channels::{ChannelInput, ChannelService, ChannelView, ServiceError};
use crate::config::{Config, ConfigArgs};
use crate::db::Database;
use crate::db::channels::ChannelFilter;
use crate::events::subscriptions::{SubscriptionError, SubscriptionService};
use crate::events::webhooks::{SubscriptionInput, SubscriptionView};
use crate::events::{EventInput, EventService, EventView};
use crate::scenario::dispatch::Dispatcher;
use crate::scenario::pool::ScenarioPool;

#[derive(Debug, Parser)]
#[command(
    name = "oktell-gateway",
    version,
    about = "Integration gateway of Oktell Studio: webhooks, websockets and events for integration channels"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage channels in the database (a running node picks changes up on restart;
    /// the admin API applies them live).
    #[command(subcommand)]
    Channel(Box<ChannelCommand>),
    /// Work on channels' scenarios (dry runs) straight against the database.
    #[command(subcommand)]
    Scenario(Box<ScenarioCommand>),
    /// Publish and read the domain's events (the admin API's /admin/v1/events), straight
    /// against the database.
    #[command(subcommand)]
    Events(Box<EventsCommand>),
    /// Webhook subscriptions of eventing channels (what the subscribe endpoint and
    /// /admin/v1/subscriptions do), straight against the database.
    #[command(subcommand)]
    Subscriptions(Box<SubscriptionsCommand>),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Store one event in the domain's log and print it (JSON).
    Publish {
        /// Dotted lower-case type, e.g. call.ended.
        #[arg(long = "type")]
        event_type: String,
        /// A JSON object, or `@file` to read it from a file.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Publishing again with this key within 24 h prints the stored event.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// RFC 3339; default: now.
        #[arg(long)]
        occurred_at: Option<String>,
    },
    /// Print the log's events after an id, oldest first (JSON, as GET /admin/v1/events).
    List {
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// 1 to 1000.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// List the domain's webhook subscriptions (id, channel code, url, enabled).
    List {
        /// Only this eventing channel's (code or id).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Show one subscription (JSON, without its secret).
    Show { id: String },
    /// Subscribe a URL to an eventing channel's events; prints it with its signing
    /// secret, which is shown only here.
    Create {
        /// The eventing channel, by code or id.
        #[arg(long)]
        channel: String,
        #[arg(long)]
        url: String,
        /// Event type patterns, comma-separated (e.g. `call.*,order.paid`); none: all
        /// the channel exposes.
        #[arg(long, value_delimiter = ',')]
        event_types: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Unsubscribe; pending deliveries are dropped.
    Delete { id: String },
    /// Re-enable a disabled subscription.
    Enable { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Dry-run a channel's webhook script (or, with --ws-text, its websocket script) on
    /// a sample, in this process, with the node's limits: outgoing calls, websocket
    /// pushes and events are recorded, not performed. Prints the report (JSON); exits 1
    /// when the script did not end correctly.
    Run(RunFlags),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunFlags {
    /// The channel, by code or id.
    #[arg(long)]
    channel: String,
    /// The sample request's method.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Below the channel's webhook URL, query included (`/orders?x=1`).
    #[arg(long, default_value = "")]
    path: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// The request body, or `@file` to read it from a file.
    #[arg(long, default_value = "")]
    body: String,
    /// The sender's IP (`startparam(6)`).
    #[arg(long)]
    peer_ip: Option<String>,
    /// A websocket message instead of a request (`@file` reads a file).
    #[arg(long)]
    ws_text: Option<String>,
    /// The websocket session code (with --ws-text).
    #[arg(long)]
    ws_session: Option<String>,
    /// A draft script to run instead of the saved one.
    #[arg(long)]
    script: Option<PathBuf>,
    /// A JSON file holding an array of mock responses
    /// (`[{"method": "GET", "path": "orders/1", "status": 200, "body": "..."}]`).
    #[arg(long)]
    mocks: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Create a channel and print it (with its generated token).
    Create(ChannelFlags),
    /// List the channels of the domain.
    List {
        #[arg(long)]
        kind: Option<String>,
    },
    /// Show one channel, by id or code.
    Show {
        channel: String,
        #[arg(long)]
        reveal_secrets: bool,
    },
    /// Change a channel, by id or code.
    Update {
        channel: String,
        #[command(flatten)]
        flags: ChannelFlags,
    },
    /// Delete a channel, by id or code.
    Delete { channel: String },
    /// List a channel's recorded runs (execution history), newest first: id, time,
    /// trigger, outcome, version, duration, and the error's position.
    Executions {
        channel: String,
        /// ok or error
        #[arg(long)]
        outcome: Option<String>,
        /// webhook or websocket
        #[arg(long)]
        trigger: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one recorded run whole (JSON, secrets masked).
    Execution { channel: String, id: String },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChannelFlags {
    #[arg(long)]
    code: Option<String>,
    /// public or eventing
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    wait_for_completion: Option<bool>,
    #[arg(long)]
    ws_role: Option<String>,
    #[arg(long)]
    outgoing_url: Option<String>,
    #[arg(long)]
    outgoing_token_primary: Option<String>,
    #[arg(long)]
    outgoing_token_secondary: Option<String>,
    /// File holding the webhook scenario.
    #[arg(long)]
    webhook_scenario_file: Option<PathBuf>,
    /// File holding the websocket scenario.
    #[arg(long)]
    websocket_scenario_file: Option<PathBuf>,
    #[arg(long)]
    comment: Option<String>,
    #[arg(long)]
    enabled: Option<bool>,
    /// Greet each new websocket with its session code.
    #[arg(long)]
    ws_hello: Option<bool>,
    /// Which runs are recorded in the execution history: off, errors (default), all.
    #[arg(long)]
    history: Option<String>,
    /// Why this save is made, kept with the version it creates.
    #[arg(long)]
    note: Option<String>,
    /// Eventing channels: the event types they expose, comma-separated patterns
    /// (`call.*,order.paid`); an empty value exposes every type.
    #[arg(long, value_delimiter = ',')]
    event_types: Option<Vec<String>>,
    /// Networks callers must come from: comma-separated CIDRs or addresses
    /// (`10.0.0.0/8,192.0.2.7`); "" removes the list.
    #[arg(long)]
    allow_ips: Option<String>,
    /// Webhook rate limit per node, JSON: '{"per_second": 5, "burst": 5,
    /// "per_client_ip": false}'; '{}' removes it.
    #[arg(long)]
    rate_limit: Option<String>,
    /// Signature every webhook request must carry, JSON:
    /// '{"scheme": "standard-webhooks", "secret": "whsec_…"}' or '{"scheme":
    /// "hmac-sha256-header", "header": "X-Hub-Signature-256", "prefix": "sha256=",
    /// "secret": "…"}'; '{}' removes it.
    #[arg(long)]
    verify: Option<String>,
    /// CORS, JSON: '{"allowed_origins": ["https://app.example.com"]}'; '{}' removes it.
    #[arg(long)]
    cors: Option<String>,
}

/// A JSON flag's value, checked as the admin API checks the same field.
fn json_flag(flag: &str, value: Option<String>) -> Result<Option<serde_json::Value>, String> {
    value
        .map(|v| serde_json::from_str(&v).map_err(|e| format!("--{flag}: not JSON: {e}")))
        .transpose()
}

impl ChannelFlags {
    fn into_input(self) -> Result<ChannelInput, String> {
        let read = |p: Option<PathBuf>| -> Result<Option<String>, String> {
            p.map(|p| {
                std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))
            })
            .transpose()
        };
        Ok(ChannelInput {
            code: self.code,
            kind: self.kind,
            wait_for_completion: self.wait_for_completion,
            ws_role: self.ws_role,
            outgoing_url: self.outgoing_url,
            outgoing_token_primary: self.outgoing_token_primary,
            outgoing_token_secondary: self.outgoing_token_secondary,
            webhook_scenario: read(self.webhook_scenario_file)?,
            websocket_scenario: read(self.websocket_scenario_file)?,
            comment: self.comment,
            enabled: self.enabled,
            ws_hello: self.ws_hello,
            event_types: self
                .event_types
                .map(|types| types.into_iter().filter(|t| !t.is_empty()).collect()),
            allow_ips: self.allow_ips.map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            rate_limit: json_flag("rate-limit", self.rate_limit)?,
            verify: json_flag("verify", self.verify)?,
            cors: json_flag("cors", self.cors)?,
            history: self.history,
            note: self.note,
            token: None,
        })
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let config = match cli.config.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let system = actix_web::rt::System::new();
    let outcome = system.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(&config),
            Command::Channel(cmd) => channel(config, *cmd).await,
            Command::Scenario(cmd) => scenario(config, *cmd).await,
            Command::Events(cmd) => events(config, *cmd).await,
            Command::Subscriptions(cmd) => subscriptions(config, *cmd).await,
        }
    });
    match outcome {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let logger = crate::logging::build(&config);
    let app = Application::build(config, logger.clone())
        .await
        .map_err(|e| e.to_string())?;
    let result = app.run_until_stopped().await.map_err(|e| e.to_string());
    slog::info!(logger, "stopped");
    // Give the async log drain a moment to flush its last lines.
    std::thread::sleep(Duration::from_millis(50));
    result
}

fn migrate(config: &Config) -> Result<(), String> {
    let db = Database::connect(&config.database_url, 1).map_err(|e| e.to_string())?;
    let ran = db.migrate().map_err(|e| e.to_string())?;
    println!("{ran} migration(s) applied");
    Ok(())
}

/// The database, migrated.
fn offline_db(config: &Config) -> Result<Database, String> {
    let db = Database::connect(&config.database_url, 2).map_err(|e| e.to_string())?;
    db.migrate().map_err(|e| e.to_string())?;
    Ok(db)
}

/// A channel service over the database, with a scenario pool of its own (no live node).
async fn offline_service(config: Config) -> Result<ChannelService, String> {
    let db = offline_db(&config)?;
    let logger = crate::logging::discard();
    let runtime = crate::app::scenario_runtime(
        &config,
        crate::alloc::NodeMemory::new(config.scenario_node_memory_bytes),
        crate::app::outgoing_client(&config).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let pool = ScenarioPool::start(1, 1, logger.clone()).map_err(|e| e.to_string())?;
    let dispatcher = Arc::new(Dispatcher::new(
        pool,
        vec![crate::events::EventService::new(db.clone(), &config.domain)],
        Some(crate::scenario::channel_state::StateStore::new(
            db.clone(),
            (&config).into(),
        )),
        runtime,
        Duration::from_millis(config.scenario_timeout_ms),
        1,
        logger,
    ));
    Ok(ChannelService::new(db, Arc::new(config), dispatcher, None))
}

/// `@file` is the file's text, anything else itself.
fn text_or_file(value: &str) -> Result<String, String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}")),
        None => Ok(value.to_string()),
    }
}

async fn scenario(config: Config, cmd: ScenarioCommand) -> Result<(), String> {
    let ScenarioCommand::Run(flags) = cmd;
    let service = offline_service(config).await?;
    let channel = find(&service, &flags.channel).await?;
    let mut input = serde_json::Map::new();
    match &flags.ws_text {
        Some(text) => {
            input.insert(
                "websocket".into(),
                serde_json::json!({
                    "text": text_or_file(text)?,
                    "session": flags.ws_session,
                    "peer_ip": flags.peer_ip,
                }),
            );
        }
        None => {
            let mut headers = serde_json::Map::new();
            for h in &flags.headers {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| format!("--header {h:?}: `Name: value` is expected"))?;
                headers.insert(name.trim().to_string(), value.trim().into());
            }
            input.insert(
                "request".into(),
                serde_json::json!({
                    "method": flags.method,
                    "path": flags.path,
                    "headers": headers,
                    "body": text_or_file(&flags.body)?,
                    "peer_ip": flags.peer_ip,
                }),
            );
        }
    }
    if let Some(path) = &flags.script {
        let draft = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        input.insert("script".into(), draft.into());
    }
    if let Some(path) = &flags.mocks {
        let raw = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mocks: serde_json::Value =
            serde_json::from_str(&raw).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        input.insert("mocks".into(), mocks);
    }
    let body = serde_json::Value::Object(input).to_string();
    let (sample, draft, live, mocks) = crate::channels::DryRunInput::from_json(body.as_bytes())
        .and_then(|i| i.checked("localhost", false))
        .map_err(|v| format!("{}: {}", v.field, v.message))?;
    let report = service
        .dry_run(&channel.id, sample, draft, live, mocks)
        .await
        .map_err(describe)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if report.ok {
        Ok(())
    } else {
        Err(match &report.error {
            Some(e) => match (e.line, e.column) {
                (Some(l), Some(c)) => format!("{} (line {l}, column {c})", e.message),
                _ => e.message.clone(),
            },
            None => "the scenario did not end correctly".into(),
        })
    }
}

async fn channel(config: Config, cmd: ChannelCommand) -> Result<(), String> {
    let service = offline_service(config).await?;
    let show = |c: &crate::db::models::Channel, reveal: bool| {
        println!(
            "{}",
            serde_json::to_string_pretty(&ChannelView::new(c, reveal)).unwrap_or_default()
        );
    };
    match cmd {
        ChannelCommand::Create(flags) => {
            let channel = service
                .create(flags.into_input()?)
                .await
                .map_err(describe)?;
            show(&channel, false);
        }
        ChannelCommand::List { kind } => {
            let (items, total) = service
                .list(ChannelFilter {
                    kind,
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .map_err(describe)?;
            for c in &items {
                println!(
                    "{}\t{}\t{}\t{}",
                    c.id,
                    c.code,
                    c.kind,
                    if c.enabled { "enabled" } else { "disabled" }
                );
            }
            eprintln!("{total} channel(s)");
        }
        ChannelCommand::Show {
            channel,
            reveal_secrets,
        } => {
            let c = find(&service, &channel).await?;
            show(&c, reveal_secrets);
        }
        ChannelCommand::Update { channel, flags } => {
            let c = find(&service, &channel).await?;
            let updated = service
                .update(&c.id, flags.into_input()?)
                .await
                .map_err(describe)?;
            show(&updated, false);
        }
        ChannelCommand::Delete { channel } => {
            let c = find(&service, &channel).await?;
            service.delete(&c.id).await.map_err(describe)?;
            println!("deleted {}", c.code);
        }
        ChannelCommand::Executions {
            channel,
            outcome,
            trigger,
            limit,
        } => {
            let c = find(&service, &channel).await?;
            let filter = crate::http::executions::ListQuery::new(outcome, trigger, limit)
                .filter()
                .map_err(|v| format!("{}: {}", v.field, v.message))?;
            let (rows, _) = service.executions(&c.id, filter).await.map_err(describe)?;
            for row in rows {
                let v = crate::http::executions::view(row, false);
                let at = v
                    .error
                    .as_ref()
                    .map(|e| match (e.line, e.column) {
                        (Some(l), Some(c)) => format!("\t{} (line {l}, column {c})", e.code),
                        _ => format!("\t{}", e.code),
                    })
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{}\tv{}\t{:.1} ms{at}",
                    v.id, v.time, v.trigger, v.outcome, v.version, v.duration_ms
                );
            }
        }
        ChannelCommand::Execution { channel, id } => {
            let c = find(&service, &channel).await?;
            let row = service.execution(&c.id, &id).await.map_err(describe)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::http::executions::view(row, true))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

async fn events(config: Config, cmd: EventsCommand) -> Result<(), String> {
    let db = offline_db(&config)?;
    let service = EventService::new(db, &config.domain);
    service.ensure_log().await.map_err(|e| e.to_string())?;
    match cmd {
        EventsCommand::Publish {
            event_type,
            data,
            idempotency_key,
            occurred_at,
        } => {
            let data: serde_json::Value = serde_json::from_str(&text_or_file(&data)?)
                .map_err(|e| format!("data: not JSON: {e}"))?;
            let new = EventInput {
                event_type,
                data,
                occurred_at,
                idempotency_key,
            }
            .validate(None, crate::db::now_millis())
            .map_err(|v| format!("{}: {}", v.field, v.message))?;
            let stored = service
                .publish(vec![new])
                .await
                .map_err(|e| e.to_string())?;
            let (event, duplicate) = stored.first().ok_or("no event was stored")?;
            if *duplicate {
                eprintln!("already stored under this idempotency key");
            }
            print_json(&EventView::from(event));
        }
        EventsCommand::List { after, limit } => {
            if !(1..=1000).contains(&limit) {
                return Err("limit: must be between 1 and 1000".into());
            }
            let (events, head) = service
                .list_after(after.max(0), limit)
                .await
                .map_err(|e| e.to_string())?;
            let items: Vec<EventView> = events.iter().map(EventView::from).collect();
            print_json(&serde_json::json!({
                "items": items,
                "epoch": head.as_ref().map(|h| h.epoch.clone()),
                "last_id": head.map(|h| h.last_id).unwrap_or(0),
            }));
        }
    }
    Ok(())
}

async fn subscriptions(config: Config, cmd: SubscriptionsCommand) -> Result<(), String> {
    let allow_private = config.allow_private_targets;
    let db = offline_db(&config)?;
    let subs = SubscriptionService::new(db, &config.domain);
    let channels = offline_service(config).await?;
    let view = |s: &crate::db::models::Subscription| {
        let mut v = serde_json::to_value(SubscriptionView::new(s, false)).unwrap_or_default();
        v["channel_id"] = s.channel_id.clone().into();
        v
    };
    match cmd {
        SubscriptionsCommand::List { channel } => {
            let channel_id = match channel {
                Some(key) => Some(find(&channels, &key).await?.id),
                None => None,
            };
            let items = subs
                .list(channel_id.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            for s in &items {
                let code = channels
                    .get(&s.channel_id)
                    .await
                    .map(|c| c.code)
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{}",
                    s.id,
                    code,
                    s.url,
                    if s.enabled { "enabled" } else { "disabled" }
                );
            }
            eprintln!("{} subscription(s)", items.len());
        }
        SubscriptionsCommand::Show { id } => {
            let s = subs.find(&id).await.map_err(|e| e.to_string())?;
            print_json(&view(&s));
        }
        SubscriptionsCommand::Create {
            channel,
            url,
            event_types,
            description,
        } => {
            let c = find(&channels, &channel).await?;
            if c.kind != crate::channels::KIND_EVENTING {
                return Err(format!("{} is not an eventing channel", c.code));
            }
            let input = SubscriptionInput {
                url,
                event_types: event_types.into_iter().filter(|t| !t.is_empty()).collect(),
                description,
            };
            let s = subs
                .create(&c.id, input, allow_private)
                .await
                .map_err(|e| match e {
                    SubscriptionError::Invalid(v) => format!("{}: {}", v.field, v.message),
                    other => other.to_string(),
                })?;
            let mut v = view(&s);
            v["secret"] = s.secret.clone().into();
            print_json(&v);
        }
        SubscriptionsCommand::Delete { id } => {
            subs.delete(&id).await.map_err(|e| e.to_string())?;
            println!("deleted {id}");
        }
        SubscriptionsCommand::Enable { id } => {
            let s = subs.enable(&id).await.map_err(|e| e.to_string())?;
            print_json(&view(&s));
        }
    }
    Ok(())
}

async fn find(service: &ChannelService, key: &str) -> Result<crate::db::models::Channel, String> {
    match service.get(key).await {
        Ok(c) => Ok(c),
        Err(ServiceError::NotFound) => service.get_by_code(key).await.map_err(describe),
        Err(e) => Err(describe(e)),
    }
}

fn describe(e: ServiceError) -> String {
    match e {
        ServiceError::Invalid(v) => match (v.line, v.column) {
            (Some(l), Some(c)) => format!("{}: {} (line {l}, column {c})", v.field, v.message),
            _ => format!("{}: {}", v.field, v.message),
        },
        other => other.to_string(),
    }
}
