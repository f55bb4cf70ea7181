//! Queries on the event log (`event_logs`, `events`). All blocking.

use std::collections::HashMap;

use diesel::prelude::*;

use super::models::Event;
use super::schema::{event_logs, events, outbox_cursors};
use super::{AnyConnection, StoreError};

/// The log's identity and head.
#[derive(Debug, Clone, PartialEq)]
pub struct LogHead {
    pub epoch: String,
    pub last_id: i64,
}

/// Creates the domain's log row and its outbox cursor if there are none (nodes may
/// race: the loser's insert fails on the primary key and it reads the winner's row).
pub fn ensure_log(conn: &mut AnyConnection, domain: &str) -> Result<LogHead, StoreError> {
    let head = ensure_log_row(conn, domain)?;
    let cursor = diesel::insert_into(outbox_cursors::table)
        .values((
            outbox_cursors::domain.eq(domain),
            outbox_cursors::last_id.eq(head.last_id),
        ))
        .execute(conn);
    match cursor {
        Ok(_) => {}
        Err(e) if StoreError::is_unique_violation(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(head)
}

fn ensure_log_row(conn: &mut AnyConnection, domain: &str) -> Result<LogHead, StoreError> {
    if let Some(head) = head(conn, domain)? {
        return Ok(head);
    }
    let inserted = diesel::insert_into(event_logs::table)
        .values((
            event_logs::domain.eq(domain),
            event_logs::epoch.eq(uuid::Uuid::new_v4().simple().to_string()),
            event_logs::last_id.eq(0_i64),
        ))
        .execute(conn);
    match inserted {
        Ok(_) => {}
        Err(e) if StoreError::is_unique_violation(&e) => {}
        Err(e) => return Err(e.into()),
    }
    head(conn, domain)?.ok_or_else(|| StoreError::Setup("the event log row vanished".into()))
}

pub fn head(conn: &mut AnyConnection, domain: &str) -> Result<Option<LogHead>, StoreError> {
    Ok(event_logs::table
        .filter(event_logs::domain.eq(domain))
        .select((event_logs::epoch, event_logs::last_id))
        .first::<(String, i64)>(conn)
        .optional()?
        .map(|(epoch, last_id)| LogHead { epoch, last_id }))
}

/// An event to append (validated by the caller).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub occurred_at: i64,
    pub data: String,
    pub idempotency_key: Option<String>,
}

/// Appends events in one transaction (the publish transaction). An event whose
/// idempotency key was used within `dedupe_ms` (or earlier in the same batch) is not
/// appended again: the stored one comes back, marked `true`. The batch costs a fixed
/// number of statements whatever its size and however many subscriptions match: one id
/// allocation for all its events and multi-row inserts of the events. Their deliveries
/// rows are written after the commit, behind the outbox cursor
/// (`subscriptions::fan_out`).
pub fn append(
    conn: &mut AnyConnection,
    domain: &str,
    new: &[NewEvent],
    now: i64,
    dedupe_ms: i64,
) -> Result<Vec<(Event, bool)>, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        // Write first: on SQLite this takes the write lock at once (waiting on the busy
        // timeout) instead of reading an older snapshot and failing to upgrade later.
        diesel::update(event_logs::table.filter(event_logs::domain.eq(domain)))
            .set(event_logs::last_id.eq(event_logs::last_id))
            .execute(c)?;
        // Earlier uses of the batch's idempotency keys.
        let keys: Vec<&str> = new
            .iter()
            .filter_map(|e| e.idempotency_key.as_deref())
            .collect();
        let mut known: HashMap<String, Event> = HashMap::new();
        if !keys.is_empty() {
            for existing in events::table
                .filter(events::domain.eq(domain))
                .filter(events::idempotency_key.eq_any(&keys))
                .select(Event::as_select())
                .load(c)?
            {
                let Some(key) = existing.idempotency_key.clone() else {
                    continue;
                };
                if existing.created_at >= now - dedupe_ms {
                    known.insert(key, existing);
                } else {
                    // An old use of the key: it no longer dedupes.
                    diesel::update(
                        events::table
                            .filter(events::domain.eq(domain))
                            .filter(events::id.eq(existing.id)),
                    )
                    .set(events::idempotency_key.eq(None::<String>))
                    .execute(c)?;
                }
            }
        }
        // What becomes of each event: appended (the n-th new one), or a repeat.
        enum Plan {
            Known(Event),
            New(usize),
            RepeatOf(usize),
        }
        let mut plan: Vec<Plan> = Vec::with_capacity(new.len());
        let mut appended: Vec<&NewEvent> = Vec::with_capacity(new.len());
        let mut batch_keys: HashMap<&str, usize> = HashMap::new();
        for ev in new {
            let key = ev.idempotency_key.as_deref();
            if let Some(existing) = key.and_then(|k| known.get(k)) {
                plan.push(Plan::Known(existing.clone()));
            } else if let Some(&n) = key.and_then(|k| batch_keys.get(k)) {
                plan.push(Plan::RepeatOf(n));
            } else {
                if let Some(k) = key {
                    batch_keys.insert(k, appended.len());
                }
                plan.push(Plan::New(appended.len()));
                appended.push(ev);
            }
        }
        // The row lock taken by this update serializes id allocation across nodes.
        let count = appended.len() as i64;
        let mut stored: Vec<Event> = Vec::with_capacity(appended.len());
        if count > 0 {
            let bumped = diesel::update(event_logs::table.filter(event_logs::domain.eq(domain)))
                .set(event_logs::last_id.eq(event_logs::last_id + count))
                .execute(c)?;
            if bumped != 1 {
                return Err(StoreError::Setup(format!(
                    "no event log for domain {domain}"
                )));
            }
            let last: i64 = event_logs::table
                .filter(event_logs::domain.eq(domain))
                .select(event_logs::last_id)
                .first(c)?;
            for (n, ev) in appended.iter().enumerate() {
                stored.push(Event {
                    domain: domain.to_string(),
                    id: last - count + 1 + n as i64,
                    event_type: ev.event_type.clone(),
                    occurred_at: ev.occurred_at,
                    data: ev.data.clone(),
                    idempotency_key: ev.idempotency_key.clone(),
                    created_at: now,
                });
            }
            for chunk in stored.chunks(INSERT_CHUNK) {
                super::insert_rows!(c, events::table, chunk)?;
            }
            // No outbox rows here: the stored events are owed their deliveries from
            // now on (they are above the domain's outbox cursor), and the delivery
            // workers write those rows behind the log (`subscriptions::fan_out`).
            // The other nodes' brokers and delivery workers: at commit, one note.
            super::notify::notify(c, domain, super::notify::Change::Events { last })?;
        }
        let mut out = Vec::with_capacity(new.len());
        for p in plan {
            let (event, duplicate) = match p {
                Plan::Known(existing) => (Some(existing), true),
                Plan::New(n) => (stored.get(n).cloned(), false),
                Plan::RepeatOf(n) => (stored.get(n).cloned(), true),
            };
            let event =
                event.ok_or_else(|| StoreError::Setup("an appended event went missing".into()))?;
            out.push((event, duplicate));
        }
        Ok(out)
    })
}

/// Rows per multi-row insert: well under SQLite's bound parameters per statement
/// (32,766) and PostgreSQL's (65,535) with the widest row (12 columns).
pub(crate) const INSERT_CHUNK: usize = 500;

/// Events after `after`, oldest first, at most `limit`.
pub fn list_after(
    conn: &mut AnyConnection,
    domain: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>, StoreError> {
    Ok(events::table
        .filter(events::domain.eq(domain))
        .filter(events::id.gt(after))
        .order(events::id.asc())
        .limit(limit)
        .select(Event::as_select())
        .load(conn)?)
}

/// The oldest id still stored (None: the log is empty).
pub fn oldest_id(conn: &mut AnyConnection, domain: &str) -> Result<Option<i64>, StoreError> {
    Ok(events::table
        .filter(events::domain.eq(domain))
        .select(diesel::dsl::min(events::id))
        .first::<Option<i64>>(conn)?)
}

/// Deletes events stored before `before_ms` whose deliveries rows are written (at or
/// below the outbox cursor); returns how many.
pub fn purge(conn: &mut AnyConnection, domain: &str, before_ms: i64) -> Result<usize, StoreError> {
    let Some(fanned_out) = outbox_cursor(conn, domain)? else {
        return Ok(0);
    };
    Ok(diesel::delete(
        events::table
            .filter(events::domain.eq(domain))
            .filter(events::created_at.lt(before_ms))
            .filter(events::id.le(fanned_out)),
    )
    .execute(conn)?)
}

/// The last event id whose deliveries rows are written (None: no cursor yet).
pub fn outbox_cursor(conn: &mut AnyConnection, domain: &str) -> Result<Option<i64>, StoreError> {
    Ok(outbox_cursors::table
        .filter(outbox_cursors::domain.eq(domain))
        .select(outbox_cursors::last_id)
        .first::<i64>(conn)
        .optional()?)
}

/// Patterns stored as a JSON array ('' = every type).
pub fn parse_types(stored: &str) -> Vec<String> {
    if stored.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(stored).unwrap_or_default()
    }
}

/// One event by id.
pub fn find(conn: &mut AnyConnection, domain: &str, id: i64) -> Result<Option<Event>, StoreError> {
    Ok(events::table
        .filter(events::domain.eq(domain))
        .filter(events::id.eq(id))
        .select(Event::as_select())
        .first(conn)
        .optional()?)
}

/// Events by id (those still in the log).
pub fn find_many(
    conn: &mut AnyConnection,
    domain: &str,
    ids: &[i64],
) -> Result<Vec<Event>, StoreError> {
    Ok(events::table
        .filter(events::domain.eq(domain))
        .filter(events::id.eq_any(ids))
        .select(Event::as_select())
        .load(conn)?)
}
