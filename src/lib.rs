//! oktell-gateway: the integration gateway of Oktell Studio.
//!
//! Map of the crate (see ../shared/DESIGN.md for the whole picture):
//! - [`config`]: settings from flags, environment and file;
//! - [`app`]: builds a node (storage, actors, HTTP server) — used by `serve` and tests;
//! - [`http`]: the HTTP surfaces (webhook, admin, ops) and the one error type;
//! - [`actors`]: channel registry and the supervised per-channel actors;
//! - [`scenario`]: the runtime trait, Rhai and HTTP runtimes, the scenario pool;
//! - [`channels`]: channel input validation and the service that applies changes live;
//! - [`db`]: diesel over SQLite or PostgreSQL, embedded migrations;
//! - [`net`]: what outgoing connections share: DNS with timeouts, client TLS trust.

pub mod actors;
pub mod app;
pub mod channels;
pub mod cli;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod scenario;
