//! Rows as stored.

use diesel::prelude::*;

use super::schema::{channels, events};

/// One integration channel, as stored in `channels`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = channels)]
pub struct Channel {
    pub id: String,
    pub domain: String,
    pub code: String,
    pub kind: String,
    pub wait_for_completion: bool,
    pub ws_role: String,
    pub token: String,
    pub outgoing_url: String,
    pub outgoing_token_primary: String,
    pub outgoing_token_secondary: String,
    pub webhook_scenario: String,
    pub websocket_scenario: String,
    pub comment: String,
    pub enabled: bool,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Greet each new websocket with its session code.
    pub ws_hello: bool,
    /// Event type patterns an eventing channel exposes (JSON array); empty: all.
    pub event_types: String,
}

/// One stored event of a domain's log.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = events)]
pub struct Event {
    pub domain: String,
    pub id: i64,
    pub event_type: String,
    pub occurred_at: i64,
    pub data: String,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
}
