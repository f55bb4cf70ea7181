//! Queries on `executions`: the recorded runs of channels' scenarios. Written in
//! batches by the node's executions writer (`executions::writer`), which trims each
//! channel it wrote to its count bound in the same transaction; read by the admin API.

use std::collections::BTreeSet;

use diesel::prelude::*;

use super::models::Execution;
use super::schema::executions::dsl;
use super::{AnyConnection, StoreError};

/// Rows per INSERT statement on PostgreSQL (binds at most 65,535 values; a row has 10).
const ROWS_PER_STATEMENT: usize = 500;

/// Stores a batch, then keeps the newest `keep` rows of each channel written to; a
/// channel deleted meanwhile loses the rows just written. One transaction. Returns the
/// rows trimmed.
pub fn insert_batch(
    conn: &mut AnyConnection,
    rows: &[Execution],
    keep: i64,
) -> Result<usize, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        match c {
            // A row at a time with one prepared statement (cached): SQLite has no round
            // trip to save, and a statement of many rows is built and prepared anew
            // for each batch size.
            AnyConnection::Sqlite(c) => {
                for row in rows {
                    diesel::insert_into(dsl::executions)
                        .values(row)
                        .execute(c)?;
                }
            }
            AnyConnection::Postgresql(c) => {
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    diesel::insert_into(dsl::executions)
                        .values(chunk)
                        .execute(c)?;
                }
            }
        }
        let channels: BTreeSet<(&str, &str)> = rows
            .iter()
            .map(|r| (r.domain.as_str(), r.channel_id.as_str()))
            .collect();
        let mut trimmed = 0;
        for (domain, channel_id) in channels {
            trimmed += if super::channels::find(c, domain, channel_id)?.is_none() {
                delete_for_channel(c, domain, channel_id)?
            } else {
                trim(c, channel_id, keep)?
            };
        }
        Ok(trimmed)
    })
}

/// Rows one trim or purge deletes at most (one short transaction; the rest goes with
/// the next batch or pass).
pub const DELETE_CHUNK: i64 = 1000;

/// The id of a channel's execution `skip` places below its newest, if there is one.
fn nth_newest(
    conn: &mut AnyConnection,
    channel_id: &str,
    skip: i64,
) -> Result<Option<String>, StoreError> {
    Ok(dsl::executions
        .filter(dsl::channel_id.eq(channel_id))
        .select(dsl::id)
        .order(dsl::id.desc())
        .offset(skip)
        .first(conn)
        .optional()?)
}

/// Keeps the newest `keep` executions of a channel (at least one), deleting at most
/// [`DELETE_CHUNK`] older ones now (after `keep` was lowered, the next batches take
/// the rest).
fn trim(conn: &mut AnyConnection, channel_id: &str, keep: i64) -> Result<usize, StoreError> {
    let Some(oldest_kept) = nth_newest(conn, channel_id, keep.max(1) - 1)? else {
        return Ok(0);
    };
    let older = dsl::executions
        .filter(dsl::channel_id.eq(channel_id))
        .filter(dsl::id.lt(oldest_kept));
    Ok(
        match nth_newest(conn, channel_id, keep.max(1) - 1 + DELETE_CHUNK)? {
            // More than a chunk to delete: the chunk next to what is kept.
            Some(bound) => diesel::delete(older.filter(dsl::id.gt(bound))).execute(conn)?,
            None => diesel::delete(older).execute(conn)?,
        },
    )
}

/// Deletes up to [`DELETE_CHUNK`] of the executions that started before `before` (Unix
/// ms), the oldest first: how many were deleted, and whether there may be more (a
/// full chunk was found).
pub fn purge(conn: &mut AnyConnection, before: i64) -> Result<(usize, bool), StoreError> {
    let oldest: Vec<String> = dsl::executions
        .filter(dsl::started_at.lt(before))
        .order(dsl::started_at.asc())
        .select(dsl::id)
        .limit(DELETE_CHUNK)
        .load(conn)?;
    let more = oldest.len() as i64 == DELETE_CHUNK;
    if oldest.is_empty() {
        return Ok((0, false));
    }
    let deleted = diesel::delete(dsl::executions.filter(dsl::id.eq_any(&oldest))).execute(conn)?;
    Ok((deleted, more))
}

/// Deletes every execution of a channel (with the channel, in its transaction).
pub fn delete_for_channel(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        dsl::executions
            .filter(dsl::domain.eq(domain))
            .filter(dsl::channel_id.eq(channel_id)),
    )
    .execute(conn)?)
}

/// Filters and page of a listing (newest first).
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub outcome: Option<String>,
    pub trigger: Option<String>,
    /// Started at or after (Unix ms).
    pub since: Option<i64>,
    /// Older than this id (the previous page's cursor).
    pub before_id: Option<String>,
    pub limit: i64,
}

pub fn list(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
    filter: &ExecutionFilter,
) -> Result<Vec<Execution>, StoreError> {
    let mut q = dsl::executions
        .filter(dsl::domain.eq(domain))
        .filter(dsl::channel_id.eq(channel_id))
        .into_boxed();
    if let Some(outcome) = &filter.outcome {
        q = q.filter(dsl::outcome.eq(outcome.clone()));
    }
    if let Some(trigger) = &filter.trigger {
        q = q.filter(dsl::trigger_kind.eq(trigger.clone()));
    }
    if let Some(since) = filter.since {
        q = q.filter(dsl::started_at.ge(since));
    }
    if let Some(before) = &filter.before_id {
        q = q.filter(dsl::id.lt(before.clone()));
    }
    Ok(q.order(dsl::id.desc())
        .limit(filter.limit)
        .select(Execution::as_select())
        .load(conn)?)
}

pub fn find(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
    id: &str,
) -> Result<Option<Execution>, StoreError> {
    Ok(dsl::executions
        .filter(dsl::domain.eq(domain))
        .filter(dsl::channel_id.eq(channel_id))
        .filter(dsl::id.eq(id))
        .select(Execution::as_select())
        .first(conn)
        .optional()?)
}
