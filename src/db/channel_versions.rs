//! Queries on `channel_versions`: the scripts of each saved version of a channel.
//! Rows are written by `db::channels` inside the channel's own write transaction, so a
//! version exists exactly when its channel write does.

use diesel::prelude::*;

use super::models::{Channel, ChannelVersion};
use super::schema::channel_versions::dsl;
use super::{AnyConnection, StoreError};

/// What a save records besides the channel: its note, and how many versions of the
/// channel are kept (the oldest beyond are deleted in the same transaction).
#[derive(Debug, Clone)]
pub struct Save<'a> {
    pub note: &'a str,
    pub keep: i64,
}

/// Records `channel`'s scripts as its current version, then trims the oldest versions
/// beyond `save.keep`.
pub fn record(conn: &mut AnyConnection, channel: &Channel, save: &Save) -> Result<(), StoreError> {
    let row = ChannelVersion {
        channel_id: channel.id.clone(),
        version: channel.version,
        domain: channel.domain.clone(),
        webhook_scenario: channel.webhook_scenario.clone(),
        websocket_scenario: channel.websocket_scenario.clone(),
        note: save.note.to_string(),
        saved_at: channel.updated_at,
    };
    diesel::insert_into(dsl::channel_versions)
        .values(&row)
        .execute(conn)?;
    trim(conn, &channel.id, save.keep)
}

/// Keeps the newest `keep` versions of a channel (at least one).
fn trim(conn: &mut AnyConnection, channel_id: &str, keep: i64) -> Result<(), StoreError> {
    let oldest_kept: Option<i64> = dsl::channel_versions
        .filter(dsl::channel_id.eq(channel_id))
        .select(dsl::version)
        .order(dsl::version.desc())
        .offset(keep.max(1) - 1)
        .first(conn)
        .optional()?;
    if let Some(oldest) = oldest_kept {
        diesel::delete(
            dsl::channel_versions
                .filter(dsl::channel_id.eq(channel_id))
                .filter(dsl::version.lt(oldest)),
        )
        .execute(conn)?;
    }
    Ok(())
}

/// A channel's kept versions, newest first.
pub fn list(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
) -> Result<Vec<ChannelVersion>, StoreError> {
    Ok(dsl::channel_versions
        .filter(dsl::domain.eq(domain))
        .filter(dsl::channel_id.eq(channel_id))
        .order(dsl::version.desc())
        .select(ChannelVersion::as_select())
        .load(conn)?)
}

pub fn find(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
    version: i64,
) -> Result<Option<ChannelVersion>, StoreError> {
    Ok(dsl::channel_versions
        .filter(dsl::domain.eq(domain))
        .filter(dsl::channel_id.eq(channel_id))
        .filter(dsl::version.eq(version))
        .select(ChannelVersion::as_select())
        .first(conn)
        .optional()?)
}

/// Deletes every version of a channel (with the channel, in its transaction).
pub fn delete_for_channel(
    conn: &mut AnyConnection,
    domain: &str,
    channel_id: &str,
) -> Result<(), StoreError> {
    diesel::delete(
        dsl::channel_versions
            .filter(dsl::domain.eq(domain))
            .filter(dsl::channel_id.eq(channel_id)),
    )
    .execute(conn)?;
    Ok(())
}
