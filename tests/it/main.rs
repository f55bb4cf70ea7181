//! Black-box tests: each starts the real gateway on a random port (SQLite in a temp
//! folder, or a fresh PostgreSQL schema) and talks HTTP to it.
//! One test binary on purpose: each file in tests/ would link its own.

mod admin;
mod authoring;
mod broadcast;
mod budgets;
mod channel_guards;
mod channel_state;
mod chaos;
mod cli;
mod cluster;
mod deliveries;
mod deploy;
mod doc_examples;
mod events;
mod executions;
mod helpers;
mod inline;
mod log_hygiene;
mod ops;
mod outgoing;
mod receiver;
mod scenarios;
mod schema;
mod script_crypto;
mod slow_requests;
mod status_page;
mod storage_errors;
mod subscribe;
mod waiting;
mod webhook;
mod websocket;
mod ws_bursts;
