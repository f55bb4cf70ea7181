//! The node registry (`nodes` table): each node of a domain records itself and a
//! heartbeat. Times come from the database's clock, so that nodes whose clocks disagree
//! still agree on who is alive. All blocking; call through `Database::run`.

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::schema::nodes::dsl;
use super::{AnyConnection, StoreError};

/// Rows of nodes silent this long are removed (by any live node's heartbeat).
pub const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// A node as it records itself.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = super::schema::nodes)]
pub struct NodeRow {
    pub domain: String,
    pub node_id: String,
    /// Comma list; empty: every role.
    pub roles: String,
    pub listen: String,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

#[derive(QueryableByName)]
struct Now {
    #[diesel(sql_type = BigInt)]
    now_ms: i64,
}

/// The database's clock, in milliseconds since the Unix epoch.
pub fn db_now_ms(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    let sql = match conn {
        AnyConnection::Postgresql(_) => {
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms"
        }
        AnyConnection::Sqlite(_) => {
            "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT) AS now_ms"
        }
    };
    let row: Now = diesel::sql_query(sql).get_result(conn)?;
    Ok(row.now_ms)
}

/// Records the node (first call) or its heartbeat, at the database's time; forgets
/// nodes of the domain silent for a day. Returns the database's time.
pub fn heartbeat(conn: &mut AnyConnection, node: &NodeRow) -> Result<i64, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        let now = db_now_ms(c)?;
        let row = NodeRow {
            heartbeat_at: now,
            ..node.clone()
        };
        // One upsert (a plain insert that lost a race would abort the transaction on
        // PostgreSQL).
        match c {
            AnyConnection::Postgresql(pg) => diesel::insert_into(dsl::nodes)
                .values(&row)
                .on_conflict((dsl::domain, dsl::node_id))
                .do_update()
                .set(&row)
                .execute(pg)?,
            AnyConnection::Sqlite(lite) => diesel::insert_into(dsl::nodes)
                .values(&row)
                .on_conflict((dsl::domain, dsl::node_id))
                .do_update()
                .set(&row)
                .execute(lite)?,
        };
        diesel::delete(
            dsl::nodes
                .filter(dsl::domain.eq(&row.domain))
                .filter(dsl::heartbeat_at.lt(now - FORGET_AFTER_MS)),
        )
        .execute(c)?;
        Ok(now)
    })
}

/// Removes the node's row (clean shutdown).
pub fn forget(conn: &mut AnyConnection, domain: &str, node_id: &str) -> Result<(), StoreError> {
    diesel::delete(
        dsl::nodes
            .filter(dsl::domain.eq(domain))
            .filter(dsl::node_id.eq(node_id)),
    )
    .execute(conn)?;
    Ok(())
}

/// The nodes of a domain, by id, and the database's time now.
pub fn list(conn: &mut AnyConnection, domain: &str) -> Result<(Vec<NodeRow>, i64), StoreError> {
    let now = db_now_ms(conn)?;
    let rows = dsl::nodes
        .filter(dsl::domain.eq(domain))
        .order(dsl::node_id.asc())
        .select(NodeRow::as_select())
        .load(conn)?;
    Ok((rows, now))
}
