//! Rows of `channel_state`: small JSON values a channel's scripts keep between runs
//! (`state_get`, `state_set`, `state_del`, `seen_before`), keyed by (channel, key).
//!
//! Every write is one statement, so that it is atomic on both backends without
//! locks of ours: an `INSERT … SELECT … ON CONFLICT DO UPDATE` whose
//! `SELECT` refuses a *new* key when the channel already holds `max_keys` rows, and
//! (for `seen_before`) whose `DO UPDATE` only replaces an expired row. On PostgreSQL
//! concurrent inserts of one key wait for each other on the primary key and the
//! losers take the `DO UPDATE` path, so exactly one of them writes a row; SQLite
//! runs writers one at a time. Expiry is decided on the *database's* clock, so the
//! nodes of a cluster agree on it. Time is milliseconds since the epoch; an
//! `expires_at` of 0 never expires.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::{AnyConnection, StoreError};

/// The database's clock, in milliseconds since the epoch.
const NOW_PG: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
const NOW_SQLITE: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)";

/// The statement `template` for `conn`'s backend: `{now}` is the database clock and
/// `$n` the n-th bound value (`?n` on SQLite, which numbers them the same way).
fn sql(conn: &AnyConnection, template: &str) -> String {
    match conn {
        AnyConnection::Postgresql(_) => template.replace("{now}", NOW_PG),
        AnyConnection::Sqlite(_) => template.replace("{now}", NOW_SQLITE).replace('$', "?"),
    }
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Text)]
    value: String,
    #[diesel(sql_type = BigInt)]
    expires_at: i64,
    #[diesel(sql_type = BigInt)]
    now_ms: i64,
}

#[derive(QueryableByName)]
struct Gone {
    #[diesel(sql_type = BigInt)]
    expires_at: i64,
    #[diesel(sql_type = BigInt)]
    now_ms: i64,
}

fn live(expires_at: i64, now_ms: i64) -> bool {
    expires_at == 0 || expires_at > now_ms
}

/// What a guarded write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The row was written (inserted, or replaced).
    Written,
    /// Nothing was written: the key is new and the channel holds `max_keys` rows, or
    /// (`only_if_expired`) the key is there and has not expired.
    NotWritten,
}

/// Writes `value` under (`channel_id`, `key`), expiring `ttl_ms` from now on the
/// database clock (0: never). A new key is refused while the channel holds
/// `max_keys` rows (expired ones included: see [`purge_expired_of`]). With
/// `only_if_expired`, an existing key is replaced only when it has expired.
pub fn upsert(
    conn: &mut AnyConnection,
    (channel_id, key): (&str, &str),
    value: &str,
    ttl_ms: i64,
    max_keys: i64,
    only_if_expired: bool,
) -> Result<Upsert, StoreError> {
    let guard = if only_if_expired {
        "WHERE channel_state.expires_at > 0 AND channel_state.expires_at <= {now}"
    } else {
        ""
    };
    let template = format!(
        "INSERT INTO channel_state (channel_id, state_key, value, expires_at, updated_at) \
         SELECT $1, $2, $3, CASE WHEN $4 > 0 THEN {{now}} + $4 ELSE 0 END, {{now}} \
         WHERE EXISTS (SELECT 1 FROM channel_state WHERE channel_id = $1 AND state_key = $2) \
            OR (SELECT COUNT(*) FROM channel_state WHERE channel_id = $1) < $5 \
         ON CONFLICT (channel_id, state_key) DO UPDATE SET value = excluded.value, \
            expires_at = excluded.expires_at, updated_at = excluded.updated_at {guard}"
    );
    // Rows written: 1 when inserted or updated, 0 when the SELECT gave no row or the
    // DO UPDATE's WHERE held it back (both backends count it so).
    let written = diesel::sql_query(sql(conn, &template))
        .bind::<Text, _>(channel_id)
        .bind::<Text, _>(key)
        .bind::<Text, _>(value)
        .bind::<BigInt, _>(ttl_ms)
        .bind::<BigInt, _>(max_keys)
        .execute(conn)?;
    Ok(if written == 0 {
        Upsert::NotWritten
    } else {
        Upsert::Written
    })
}

/// Whether the key is there and has not expired.
pub fn is_live(conn: &mut AnyConnection, channel_id: &str, key: &str) -> Result<bool, StoreError> {
    let rows: Vec<Gone> = diesel::sql_query(sql(
        conn,
        "SELECT expires_at, {now} AS now_ms FROM channel_state \
         WHERE channel_id = $1 AND state_key = $2",
    ))
    .bind::<Text, _>(channel_id)
    .bind::<Text, _>(key)
    .load(conn)?;
    Ok(rows.first().is_some_and(|r| live(r.expires_at, r.now_ms)))
}

/// The value under the key, unless absent or expired; an expired row is deleted on
/// the way (counted in `removed`).
pub fn get(
    conn: &mut AnyConnection,
    channel_id: &str,
    key: &str,
    removed: &mut usize,
) -> Result<Option<String>, StoreError> {
    let rows: Vec<Found> = diesel::sql_query(sql(
        conn,
        "SELECT value, expires_at, {now} AS now_ms FROM channel_state \
         WHERE channel_id = $1 AND state_key = $2",
    ))
    .bind::<Text, _>(channel_id)
    .bind::<Text, _>(key)
    .load(conn)?;
    let Some(found) = rows.into_iter().next() else {
        return Ok(None);
    };
    if live(found.expires_at, found.now_ms) {
        return Ok(Some(found.value));
    }
    *removed += diesel::sql_query(sql(
        conn,
        "DELETE FROM channel_state WHERE channel_id = $1 AND state_key = $2 \
         AND expires_at > 0 AND expires_at <= {now}",
    ))
    .bind::<Text, _>(channel_id)
    .bind::<Text, _>(key)
    .execute(conn)?;
    Ok(None)
}

/// Deletes the key; whether it was there (and not expired).
pub fn delete(conn: &mut AnyConnection, channel_id: &str, key: &str) -> Result<bool, StoreError> {
    let rows: Vec<Gone> = diesel::sql_query(sql(
        conn,
        "DELETE FROM channel_state WHERE channel_id = $1 AND state_key = $2 \
         RETURNING expires_at, {now} AS now_ms",
    ))
    .bind::<Text, _>(channel_id)
    .bind::<Text, _>(key)
    .load(conn)?;
    Ok(rows.first().is_some_and(|r| live(r.expires_at, r.now_ms)))
}

/// Deletes the channel's expired rows (when it is at its key limit); how many.
pub fn purge_expired_of(conn: &mut AnyConnection, channel_id: &str) -> Result<usize, StoreError> {
    Ok(diesel::sql_query(sql(
        conn,
        "DELETE FROM channel_state WHERE channel_id = $1 \
         AND expires_at > 0 AND expires_at <= {now}",
    ))
    .bind::<Text, _>(channel_id)
    .execute(conn)?)
}

/// Deletes at most `limit` expired rows of any channel, soonest expired first; how
/// many. On PostgreSQL rows another node's sweep holds are skipped, not waited for.
pub fn sweep(conn: &mut AnyConnection, limit: i64) -> Result<usize, StoreError> {
    let lock = match conn {
        AnyConnection::Postgresql(_) => "FOR UPDATE SKIP LOCKED",
        AnyConnection::Sqlite(_) => "",
    };
    let template = format!(
        "DELETE FROM channel_state WHERE (channel_id, state_key) IN ( \
           SELECT channel_id, state_key FROM channel_state \
           WHERE expires_at > 0 AND expires_at <= {{now}} \
           ORDER BY expires_at LIMIT $1 {lock})"
    );
    Ok(diesel::sql_query(sql(conn, &template))
        .bind::<BigInt, _>(limit)
        .execute(conn)?)
}
