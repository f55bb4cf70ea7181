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

async fn channel(config: Config, cmd: ChannelCommand) -> Result<(), String> {
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
        Duration::from_secs(1),
        1,
        logger,
    ));
    let service = ChannelService::new(db, Arc::new(config), dispatcher, None);
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
