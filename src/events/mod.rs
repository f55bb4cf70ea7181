//! Events: the per-domain event log that eventing channels expose. An event is stored
//! before anyone is told; publishing is acknowledged only after the write.
//! (Subscriptions — webhook and websocket — build on this; see docs/eventing.md.)

pub mod patterns;
pub mod protocol;
pub mod signing;
pub mod subscriptions;
pub mod webhooks;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::channels::{ValidationError, rfc3339_millis};
use crate::db::events::{self as log, LogHead, NewEvent};
use crate::db::models::Event;
use crate::db::{AnyConnection, Database, StoreError, now_millis};

/// Idempotency keys dedupe for this long.
pub const DEDUPE_MS: i64 = 24 * 60 * 60 * 1000;
/// Most events in one publish.
pub const MAX_BATCH: usize = 1000;
/// Largest `data` of one event, serialized.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
const MAX_TYPE_LEN: usize = 128;
/// Deliveries rows per transaction when the purge catches the outbox up.
const PURGE_FAN_OUT_ROWS: usize = 2048;
const MAX_KEY_LEN: usize = 256;

/// An event to publish, as the admin API and scenarios give it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Dotted lowercase segments, e.g. `call.started`.
    #[serde(rename = "type")]
    #[schema(pattern = r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$", max_length = 128)]
    pub event_type: String,
    /// A JSON object (null or absent: `{}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: serde_json::Value,
    /// RFC 3339 in UTC, from 1970 on; default: now.
    #[schema(
        pattern = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z$"
    )]
    pub occurred_at: Option<String>,
    /// Publishing again with the same key within 24 h returns the stored event.
    /// At most 256 characters, none of them control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$", max_length = 256)]
    pub idempotency_key: Option<String>,
}

/// An event as readers see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub domain: String,
    pub occurred_at: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView {
            id: e.id,
            event_type: e.event_type.clone(),
            domain: e.domain.clone(),
            occurred_at: rfc3339_millis(e.occurred_at),
            data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
            idempotency_key: e.idempotency_key.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `call.started`: lowercase segments of letters, digits, `_` and `-`, joined by dots.
pub fn validate_type(field: &str, t: &str) -> Result<(), ValidationError> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "must be 1 to {MAX_TYPE_LEN} characters of dotted lowercase segments, e.g. call.started"
            ),
        ))
    }
}

/// An idempotency key (field or header): 1 to 256 characters, none of them control.
pub fn validate_idempotency_key(field: &str, key: &str) -> Result<(), ValidationError> {
    if key.is_empty() || key.chars().count() > MAX_KEY_LEN || key.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {MAX_KEY_LEN} printable characters"),
        ));
    }
    Ok(())
}

impl EventInput {
    /// Checks and converts; `index` names the item of a batch in errors.
    pub fn validate(self, index: Option<usize>, now: i64) -> Result<NewEvent, ValidationError> {
        let at = |f: &str| match index {
            Some(i) => format!("events[{i}].{f}"),
            None => f.to_string(),
        };
        validate_type(&at("type"), &self.event_type)?;
        let data = match self.data {
            serde_json::Value::Null => serde_json::json!({}),
            serde_json::Value::Object(map) => serde_json::Value::Object(map),
            _ => return Err(ValidationError::new(&at("data"), "must be a JSON object")),
        }
        .to_string();
        if data.len() > MAX_DATA_BYTES {
            return Err(ValidationError::new(
                &at("data"),
                format!("must be at most {MAX_DATA_BYTES} bytes as JSON"),
            ));
        }
        let occurred_at = match &self.occurred_at {
            None => now,
            Some(s) => humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .ok_or_else(|| {
                    ValidationError::new(&at("occurred_at"), "must be an RFC 3339 time")
                })?,
        };
        if let Some(key) = &self.idempotency_key {
            validate_idempotency_key(&at("idempotency_key"), key)?;
        }
        Ok(NewEvent {
            event_type: self.event_type,
            occurred_at,
            data,
            idempotency_key: self.idempotency_key,
        })
    }
}

/// Counters of the event log and its subscribers on this node.
#[derive(Debug, Default)]
pub struct EventStats {
    pub published: std::sync::atomic::AtomicU64,
    pub duplicates: std::sync::atomic::AtomicU64,
    pub subscribers: std::sync::atomic::AtomicUsize,
    pub pushed: std::sync::atomic::AtomicU64,
    pub slow_closed: std::sync::atomic::AtomicU64,
    /// Subscribe upgrades refused at a subscriber limit.
    pub subscribers_refused: std::sync::atomic::AtomicU64,
}

/// Something was stored in the event log: its reader (the broker) reads on. The log
/// tells its readers through these messages, not through their actor types, so that
/// `events` does not depend on `actors`.
#[derive(actix::Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Published;

/// Deliveries may be due now: the delivery worker looks.
#[derive(actix::Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct DeliveriesDue;

/// The domain's event log on this node.
#[derive(Clone)]
pub struct EventService {
    db: Database,
    domain: Arc<str>,
    /// Told after each write that stored something new (the domain's event broker).
    broker: Option<actix::Recipient<Published>>,
    /// Told too: new events may have outbox rows due now (the delivery worker).
    delivery: Option<actix::Recipient<DeliveriesDue>>,
    pub stats: Arc<EventStats>,
}

impl EventService {
    pub fn new(db: Database, domain: &str) -> EventService {
        EventService {
            db,
            domain: domain.into(),
            broker: None,
            delivery: None,
            stats: Arc::default(),
        }
    }

    /// The same service, waking this broker after each write.
    pub fn with_broker(mut self, broker: actix::Recipient<Published>) -> EventService {
        self.broker = Some(broker);
        self
    }

    /// The same service, waking this delivery worker after each write.
    pub fn with_delivery(mut self, worker: actix::Recipient<DeliveriesDue>) -> EventService {
        self.delivery = Some(worker);
        self
    }

    /// Tells the broker and the delivery worker to look at the log (events were
    /// published through another node, or this node caught up after a reconnect).
    pub fn wake_readers(&self) {
        if let Some(broker) = &self.broker {
            broker.do_send(Published);
        }
        self.wake_delivery();
    }

    /// Tells the delivery worker that rows may be due now.
    pub fn wake_delivery(&self) {
        if let Some(worker) = &self.delivery {
            worker.do_send(DeliveriesDue);
        }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn told(&self, stored: &[(Event, bool)]) {
        use std::sync::atomic::Ordering::Relaxed;
        let duplicates = stored.iter().filter(|(_, d)| *d).count() as u64;
        self.stats.duplicates.fetch_add(duplicates, Relaxed);
        self.stats
            .published
            .fetch_add(stored.len() as u64 - duplicates, Relaxed);
        if stored.iter().any(|(_, duplicate)| !duplicate) {
            self.wake_readers();
        }
    }

    /// Creates the log row on start.
    pub async fn ensure_log(&self) -> Result<LogHead, StoreError> {
        let domain = self.domain.clone();
        self.db.run(move |c| log::ensure_log(c, &domain)).await
    }

    /// Stores events (one transaction); each comes back with whether it was a duplicate.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<(Event, bool)>, StoreError> {
        let domain = self.domain.clone();
        let stored = self
            .db
            .write(crate::db::Urgency::Now, move |c| {
                log::append(c, &domain, &events, now_millis(), DEDUPE_MS)
            })
            .await?;
        self.told(&stored);
        Ok(stored)
    }

    /// The same from a thread that may block (scenario threads).
    /// Stores events from a scenario thread, waiting for a connection no longer than
    /// `deadline` allows.
    pub fn publish_blocking(
        &self,
        events: &[NewEvent],
        deadline: std::time::Instant,
    ) -> Result<Vec<(Event, bool)>, StoreError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(StoreError::Pool("no time left for a database write".into()));
        }
        let mut conn = self.db.conn_within(Some(left))?;
        let conn: &mut AnyConnection = &mut conn;
        let stored = log::append(conn, &self.domain, events, now_millis(), DEDUPE_MS)?;
        self.told(&stored);
        Ok(stored)
    }

    pub async fn list_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<Event>, Option<LogHead>), StoreError> {
        let domain = self.domain.clone();
        self.db
            .run(move |c| {
                Ok((
                    log::list_after(c, &domain, after, limit)?,
                    log::head(c, &domain)?,
                ))
            })
            .await
    }

    /// Deletes ended (delivered or failed) webhook deliveries older than the retention,
    /// with their attempts, a batch per transaction so that writers are not held up;
    /// pending ones are kept whatever their age. Returns (deliveries, attempts) removed.
    pub async fn purge_deliveries(&self, retention_ms: i64) -> Result<(usize, usize), StoreError> {
        const BATCH: i64 = 1000;
        let before = now_millis().saturating_sub(retention_ms);
        let mut total = (0, 0);
        loop {
            let domain = self.domain.clone();
            let round = self
                .db
                .run(move |c| crate::db::subscriptions::purge_ended(c, &domain, before, BATCH))
                .await?;
            total.0 += round.deliveries;
            total.1 += round.attempts;
            if !round.more {
                return Ok(total);
            }
        }
    }

    /// Deletes events older than the retention; returns how many. The deliveries rows
    /// still owed (events above the outbox cursor) are written first, so that no event
    /// goes before its deliveries are promised (an event above the cursor is kept).
    pub async fn purge(&self, retention_ms: i64) -> Result<usize, StoreError> {
        loop {
            let domain = self.domain.clone();
            let gate_db = self.db.clone();
            let fanned = self
                .db
                .run(move |c| {
                    crate::db::subscriptions::fan_out(
                        c,
                        &domain,
                        PURGE_FAN_OUT_ROWS,
                        now_millis(),
                        gate_db.write_gate(),
                    )
                })
                .await?;
            if !fanned.more {
                break;
            }
        }
        let domain = self.domain.clone();
        let before = now_millis() - retention_ms;
        self.db.run(move |c| log::purge(c, &domain, before)).await
    }
}
