//! slog setup: human-readable lines on a terminal, or one JSON object per line, both
//! written by [`format::LineDrain`] so that secrets and control characters never reach
//! the log (`crate::redact`). Logging is asynchronous; under a flood lines are dropped
//! (and counted) rather than slowing requests down.

pub mod format;

use std::io::Write;

use slog::{Drain, Level, Logger, o};

use crate::config::{Config, LogFormat};
use format::{LineDrain, Shape};

pub fn build(config: &Config) -> Logger {
    let shape = match config.log_format {
        LogFormat::Json => Shape::Json,
        LogFormat::Human => Shape::Human,
    };
    let drain = slog_async::Async::new(LineDrain::new(shape, std::io::stderr()).fuse())
        .chan_size(8192)
        .build()
        .filter_level(parse_level(&config.log_level))
        .fuse();
    Logger::root(drain, o!("node_domain" => config.domain.clone()))
}

/// A synchronous logger writing every level to `out` (tests that read the log).
pub fn to_writer(shape: Shape, out: impl Write + Send + 'static) -> Logger {
    Logger::root(LineDrain::new(shape, out).fuse(), o!())
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
