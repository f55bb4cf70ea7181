//! slog setup: human-readable lines on a terminal, or one JSON object per line.
//! Logging is asynchronous; under a flood lines are dropped (and counted) rather than
//! slowing requests down.

use slog::{Drain, Level, Logger, o};

use crate::config::{Config, LogFormat};

pub fn build(config: &Config) -> Logger {
    let level = parse_level(&config.log_level);
    let keys = o!("node_domain" => config.domain.clone());
    match config.log_format {
        LogFormat::Json => {
            let json = slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build()
                .fuse();
            let drain = slog_async::Async::new(json)
                .chan_size(8192)
                .build()
                .filter_level(level)
                .fuse();
            Logger::root(drain, keys)
        }
        LogFormat::Human => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let fmt = slog_term::FullFormat::new(decorator).build().fuse();
            let drain = slog_async::Async::new(fmt)
                .chan_size(8192)
                .build()
                .filter_level(level)
                .fuse();
            Logger::root(drain, keys)
        }
    }
}

fn parse_level(s: &str) -> Level {
    match s.to_ascii_lowercase().as_str() {
        "error" => Level::Error,
        "warn" | "warning" => Level::Warning,
        "debug" => Level::Debug,
        "trace" => Level::Trace,
        "off" | "critical" => Level::Critical,
        _ => Level::Info,
    }
}

/// A logger that writes nothing (tests that do not look at logs).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
