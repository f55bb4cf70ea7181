//! Rows as stored.

use diesel::prelude::*;

use super::schema::{channels, events};

/// One integration channel, as stored in `channels`.
#[derive(Debug, Clone, Default, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
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
    /// The checks before any scenario runs (`channels::guards::GuardSettings` as JSON);
    /// empty: none.
    pub guards: String,
    /// Which runs are recorded in the execution history: `off`, `errors`, `all`.
    pub history: String,
}

/// One recorded run of a channel's scenario (`executions`), secrets masked.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::executions)]
pub struct Execution {
    /// A UUIDv7 (ordered by time).
    pub id: String,
    pub domain: String,
    pub channel_id: String,
    /// Unix ms.
    pub started_at: i64,
    /// `webhook` or `websocket`.
    pub trigger_kind: String,
    /// `ok` or `error`.
    pub outcome: String,
    /// The channel version whose script ran.
    pub version: i64,
    pub duration_us: i64,
    /// Of which waiting on the outside world (outgoing calls, lookups, writes).
    pub wait_us: i64,
    /// JSON of `executions::Detail`.
    pub detail: String,
}

/// The scripts of one saved version of a channel (`channel_versions`).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::channel_versions)]
pub struct ChannelVersion {
    pub channel_id: String,
    pub version: i64,
    pub domain: String,
    pub webhook_scenario: String,
    pub websocket_scenario: String,
    /// Why it was saved (the update's `note`), or empty.
    pub note: String,
    pub saved_at: i64,
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

/// A webhook subscription of an eventing channel.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = super::schema::subscriptions)]
pub struct Subscription {
    pub id: String,
    pub domain: String,
    pub channel_id: String,
    pub url: String,
    pub event_types: String,
    pub description: String,
    pub secret: String,
    pub previous_secret: String,
    pub previous_secret_until: i64,
    pub enabled: bool,
    pub disabled_reason: String,
    pub failing_since: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The log's last event id when the subscription was made: it gets the events
    /// after it.
    pub after_event_id: i64,
}

/// One event to deliver to one subscription (the outbox).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::deliveries)]
pub struct Delivery {
    pub id: String,
    pub domain: String,
    pub subscription_id: String,
    pub event_id: i64,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub lease_until: i64,
    pub last_status: i32,
    pub last_error: String,
    pub created_at: i64,
    pub delivered_at: i64,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::delivery_attempts)]
pub struct DeliveryAttempt {
    pub delivery_id: String,
    pub attempt: i32,
    pub at: i64,
    pub status: i32,
    pub latency_ms: i64,
    pub response: String,
    pub error: String,
}
