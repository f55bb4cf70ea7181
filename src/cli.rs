//! The command line: `serve`, `migrate`, and `channel ...` (the admin API's channel
//! operations, with the same validation, straight against the database).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::channels::{ChannelInput, ChannelService, ChannelView, ServiceError};
use crate::config::{Config, ConfigArgs};
use crate::db::Database;
use crate::db::channels::ChannelFilter;
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
            event_types: None,
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

/// A channel service over the database, with a scenario pool of its own (no live node).
async fn offline_service(config: Config) -> Result<ChannelService, String> {
    let db = Database::connect(&config.database_url, 2).map_err(|e| e.to_string())?;
    db.migrate().map_err(|e| e.to_string())?;
    let logger = crate::logging::discard();
    let runtime = crate::app::scenario_runtime(
        &config,
        crate::alloc::NodeMemory::new(config.scenario_node_memory_bytes),
    )
    .map_err(|e| e.to_string())?;
    let pool = ScenarioPool::start(1, 1, logger.clone()).map_err(|e| e.to_string())?;
    let dispatcher = Arc::new(Dispatcher::new(
        pool,
        vec![crate::events::EventService::new(db.clone(), &config.domain)],
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
