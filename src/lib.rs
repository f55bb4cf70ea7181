//! oktell-gateway: the integration gateway of Oktell Studio.
//!
//! Map of the crate (see ../shared/DESIGN.md for the whole picture):
//! - [`alloc`]: the allocator, counting what scenario runs allocate (memory budgets);
//! - [`config`]: settings from flags, environment and file;
//! - [`app`]: builds a node (storage, actors, HTTP server) — used by `serve` and tests;
//! - [`http`]: the HTTP surfaces (webhook, admin, ops) and the one error type;
//! - [`actors`]: channel registry and the supervised per-channel actors;
//! - [`scenario`]: the runtime trait, Rhai and HTTP runtimes, the scenario pool;
//! - [`channels`]: channel input validation and the service that applies changes live;
//! - [`cluster`]: nodes of a domain on one PostgreSQL acting as one gateway (LISTEN/NOTIFY
//!   listener, node registry heartbeat, staleness);
//! - [`db`]: diesel over SQLite or PostgreSQL, embedded migrations;
//! - [`net`]: what outgoing connections share: DNS with timeouts, client TLS trust.
//! - [`redact`]: what keeps secrets and control characters out of logs and error bodies;
//! - [`signatures`]: webhook signatures (Standard Webhooks, HMAC headers) as pure functions;
//! - [`threads`]: background threads at idle CPU priority, below request threads.

pub mod actors;
pub mod alloc;
pub mod app;
pub mod channels;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod events;
pub mod executions;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod redact;
pub mod scenario;
pub mod signatures;
pub mod threads;
