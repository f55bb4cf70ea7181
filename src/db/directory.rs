//! The websocket session directory (`ws_directory`) and oversized pushes (`ws_pushes`)
//! of a PostgreSQL cluster: which node holds which session. All blocking; call through
//! `Database::run` or from a scenario thread.

use diesel::prelude::*;

use super::schema::{nodes, ws_directory as dir, ws_pushes};
use super::{AnyConnection, StoreError};

/// One open session as the directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::ws_directory)]
pub struct DirEntry {
    pub code: String,
    pub domain: String,
    pub channel_id: String,
    pub node_id: String,
    pub peer_ip: String,
    pub connected_at: i64,
}

/// Records sessions (already recorded ones are left as they are).
pub fn insert(conn: &mut AnyConnection, rows: &[DirEntry]) -> Result<(), StoreError> {
    for chunk in rows.chunks(super::events::INSERT_CHUNK) {
        match conn {
            AnyConnection::Postgresql(c) => {
                diesel::insert_into(dir::table)
                    .values(chunk)
                    .on_conflict_do_nothing()
                    .execute(c)?;
            }
            AnyConnection::Sqlite(c) => {
                diesel::insert_or_ignore_into(dir::table)
                    .values(chunk)
                    .execute(c)?;
            }
        }
    }
    Ok(())
}

/// Forgets sessions by code.
pub fn remove(conn: &mut AnyConnection, codes: &[String]) -> Result<(), StoreError> {
    for chunk in codes.chunks(super::events::INSERT_CHUNK) {
        diesel::delete(dir::table.filter(dir::code.eq_any(chunk))).execute(conn)?;
    }
    Ok(())
}

/// Forgets every session a node recorded (it starts again, or rewrites its list).
pub fn reset_node(conn: &mut AnyConnection, domain: &str, node_id: &str) -> Result<(), StoreError> {
    diesel::delete(
        dir::table
            .filter(dir::domain.eq(domain))
            .filter(dir::node_id.eq(node_id)),
    )
    .execute(conn)?;
    Ok(())
}

/// Forgets sessions of nodes that are gone from the node registry or silent since
/// `alive_after` (database milliseconds; a crashed node's sessions are gone with it).
pub fn forget_gone_nodes(
    conn: &mut AnyConnection,
    domain: &str,
    alive_after: i64,
) -> Result<usize, StoreError> {
    let known = nodes::table
        .filter(nodes::domain.eq(domain))
        .filter(nodes::heartbeat_at.gt(alive_after))
        .select(nodes::node_id);
    Ok(diesel::delete(
        dir::table
            .filter(dir::domain.eq(domain))
            .filter(dir::node_id.ne_all(known)),
    )
    .execute(conn)?)
}

/// Sessions of a channel held by live nodes other than `me` (heartbeat after
/// `alive_after`, database milliseconds); `code` narrows it to one session.
pub fn elsewhere(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
    me: &str,
    alive_after: i64,
    code: Option<&str>,
) -> Result<Vec<DirEntry>, StoreError> {
    let live = nodes::table
        .filter(nodes::domain.eq(domain))
        .filter(nodes::heartbeat_at.gt(alive_after))
        .select(nodes::node_id);
    let mut query = dir::table
        .filter(dir::domain.eq(domain))
        .filter(dir::channel_id.eq(channel_id))
        .filter(dir::node_id.ne(me))
        .filter(dir::node_id.eq_any(live))
        .into_boxed();
    if let Some(code) = code {
        query = query.filter(dir::code.eq(code));
    }
    Ok(query
        .order(dir::code.asc())
        .select(DirEntry::as_select())
        .load(conn)?)
}

/// Keeps a push too large for a notification; the note carries `id`.
pub fn store_push(
    conn: &mut AnyConnection,
    id: &str,
    domain: &str,
    payload: &str,
    now: i64,
) -> Result<(), StoreError> {
    diesel::insert_into(ws_pushes::table)
        .values((
            ws_pushes::id.eq(id),
            ws_pushes::domain.eq(domain),
            ws_pushes::payload.eq(payload),
            ws_pushes::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// A stored push (read by every node it concerns; purged by age).
pub fn read_push(conn: &mut AnyConnection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(ws_pushes::table
        .filter(ws_pushes::id.eq(id))
        .select(ws_pushes::payload)
        .first(conn)
        .optional()?)
}

/// Deletes stored pushes older than `before`.
pub fn purge_pushes(conn: &mut AnyConnection, before: i64) -> Result<usize, StoreError> {
    Ok(diesel::delete(ws_pushes::table.filter(ws_pushes::created_at.lt(before))).execute(conn)?)
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = diesel::sql_types::Text)]
    node_id: String,
}

/// PostgreSQL, one statement: finds the live node (heartbeat younger than
/// `alive_window_ms` by the database's clock; not `me`) that holds session `code` of
/// `channel_id`, and sends it `note` (a JSON object) with its node id set as `to`.
/// Returns that node, or None when no live node holds the session (nothing is sent).
pub fn notify_holder(
    conn: &mut AnyConnection,
    (domain, channel_id, code): (&str, &str, &str),
    me: &str,
    alive_window_ms: i64,
    note: &str,
) -> Result<Option<String>, StoreError> {
    use diesel::sql_types::{BigInt, Text};
    let AnyConnection::Postgresql(pg) = conn else {
        return Err(StoreError::Setup(
            "sessions on other nodes need PostgreSQL".into(),
        ));
    };
    let sql = format!(
        "WITH target AS ( \
           SELECT d.node_id FROM ws_directory d \
           JOIN nodes n ON n.domain = d.domain AND n.node_id = d.node_id \
           WHERE d.domain = $1 AND d.channel_id = $2 AND d.code = $3 AND d.node_id <> $4 \
             AND n.heartbeat_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) - $5 \
           LIMIT 1) \
         SELECT node_id, pg_notify({}, (CAST($6 AS jsonb) || jsonb_build_object('to', node_id))::text) \
         FROM target",
        super::notify::CHANNEL_NAME_SQL
    );
    let found: Vec<Holder> = diesel::sql_query(sql)
        .bind::<Text, _>(domain)
        .bind::<Text, _>(channel_id)
        .bind::<Text, _>(code)
        .bind::<Text, _>(me)
        .bind::<BigInt, _>(alive_window_ms)
        .bind::<Text, _>(note)
        .load(pg)?;
    Ok(found.into_iter().next().map(|h| h.node_id))
}
