//! Queries on the `channels` table. All blocking; call through `Database::run`.

use diesel::prelude::*;

use super::channel_versions::{self, Save};
use super::models::Channel;
use super::notify::{Change, notify};
use super::schema::channels::dsl;
use super::{AnyConnection, StoreError};

/// Filters and page of a channel listing.
#[derive(Debug, Clone, Default)]
pub struct ChannelFilter {
    pub domain: String,
    pub kind: Option<String>,
    pub code: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// The other nodes of the domain are told in the same transaction (`db::notify`), on
/// every write below.
fn told(conn: &mut AnyConnection, channel: &Channel) -> Result<(), StoreError> {
    notify(
        conn,
        &channel.domain,
        Change::Channel {
            id: channel.id.clone(),
            v: channel.version,
        },
    )
}

/// Stores a new channel and its first version (`channel_versions`).
pub fn insert(conn: &mut AnyConnection, channel: &Channel, save: &Save) -> Result<(), StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        diesel::insert_into(dsl::channels)
            .values(channel)
            .execute(c)
            .map_err(map_unique)?;
        channel_versions::record(c, channel, save)?;
        told(c, channel)
    })
}

/// Writes every field of `channel` where the stored version is `expected_version`, and
/// records its scripts as the new version (trimming the oldest past `save.keep`).
/// Returns false when the row changed in between (or is gone).
pub fn update(
    conn: &mut AnyConnection,
    channel: &Channel,
    expected_version: i64,
    save: &Save,
) -> Result<bool, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        let n = diesel::update(
            dsl::channels
                .filter(dsl::id.eq(&channel.id))
                .filter(dsl::version.eq(expected_version)),
        )
        .set(channel)
        .execute(c)
        .map_err(map_unique)?;
        if n == 1 {
            channel_versions::record(c, channel, save)?;
            told(c, channel)?;
        }
        Ok(n == 1)
    })
}

/// Deletes a channel and, in the same transaction, its saved versions and its webhook
/// subscriptions with their deliveries and attempts (nothing of a deleted channel keeps
/// being sent).
pub fn delete(conn: &mut AnyConnection, domain: &str, id: &str) -> Result<bool, StoreError> {
    conn.transaction::<_, StoreError, _>(|c| {
        let n = diesel::delete(
            dsl::channels
                .filter(dsl::id.eq(id))
                .filter(dsl::domain.eq(domain)),
        )
        .execute(c)?;
        if n == 1 {
            super::subscriptions::delete_for_channel(c, domain, id)?;
            channel_versions::delete_for_channel(c, domain, id)?;
            super::executions::delete_for_channel(c, domain, id)?;
            notify(
                c,
                domain,
                Change::Channel {
                    id: id.to_string(),
                    v: 0,
                },
            )?;
        }
        Ok(n == 1)
    })
}

pub fn find(
    conn: &mut AnyConnection,
    domain: &str,
    id: &str,
) -> Result<Option<Channel>, StoreError> {
    Ok(dsl::channels
        .filter(dsl::id.eq(id))
        .filter(dsl::domain.eq(domain))
        .select(Channel::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_code(
    conn: &mut AnyConnection,
    domain: &str,
    code: &str,
) -> Result<Option<Channel>, StoreError> {
    Ok(dsl::channels
        .filter(dsl::code.eq(code))
        .filter(dsl::domain.eq(domain))
        .select(Channel::as_select())
        .first(conn)
        .optional()?)
}

/// One page of channels, ordered by code, and the total count matching the filter.
pub fn list(
    conn: &mut AnyConnection,
    f: &ChannelFilter,
) -> Result<(Vec<Channel>, i64), StoreError> {
    let mut query = dsl::channels.filter(dsl::domain.eq(&f.domain)).into_boxed();
    let mut count = dsl::channels.filter(dsl::domain.eq(&f.domain)).into_boxed();
    if let Some(kind) = &f.kind {
        query = query.filter(dsl::kind.eq(kind.clone()));
        count = count.filter(dsl::kind.eq(kind.clone()));
    }
    if let Some(code) = &f.code {
        query = query.filter(dsl::code.eq(code.clone()));
        count = count.filter(dsl::code.eq(code.clone()));
    }
    let total: i64 = count.count().get_result(conn)?;
    let items = query
        .order(dsl::code.asc())
        .limit(f.limit)
        .offset(f.offset)
        .select(Channel::as_select())
        .load(conn)?;
    Ok((items, total))
}

/// Id, version and WS role of every channel of a domain (what a node compares with the
/// channels it serves).
pub fn versions(
    conn: &mut AnyConnection,
    domain: &str,
) -> Result<Vec<(String, i64, String)>, StoreError> {
    Ok(dsl::channels
        .filter(dsl::domain.eq(domain))
        .select((dsl::id, dsl::version, dsl::ws_role))
        .load(conn)?)
}

/// Every channel of a domain, for loading the registry at start.
pub fn load_domain(conn: &mut AnyConnection, domain: &str) -> Result<Vec<Channel>, StoreError> {
    Ok(dsl::channels
        .filter(dsl::domain.eq(domain))
        .select(Channel::as_select())
        .load(conn)?)
}

fn map_unique(err: diesel::result::Error) -> StoreError {
    if StoreError::is_unique_violation(&err) {
        if let diesel::result::Error::DatabaseError(_, info) = &err {
            // The token index can only collide by a 1-in-2^192 chance; report it plainly.
            if info.message().contains("token") {
                return StoreError::Query(err);
            }
        }
        StoreError::DuplicateCode
    } else {
        StoreError::Query(err)
    }
}
