//! Wake-ups between the nodes of a cluster, through PostgreSQL's LISTEN/NOTIFY.
//!
//! The tables stay the truth; a note only tells the other nodes to look. A note is
//! sent with `pg_notify` inside the transaction of the change it announces, so it
//! leaves at commit or not at all (no window where the change is stored and the note
//! lost in a crash). One note per transaction: NOTIFY takes a global lock at commit.
//! On SQLite (one node) nothing is sent.
//!
//! The notification channel is named after the database schema (`oktell_` and 20 hex
//! digits of its md5: lower case, far below the 63-byte limit), evaluated by
//! PostgreSQL on the connection itself, so that gateways in different schemas of one
//! database never wake each other and the sender and the listener always agree.

use diesel::prelude::*;
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

use super::{AnyConnection, StoreError};

/// SQL for this connection's notification channel name.
pub const CHANNEL_NAME_SQL: &str = "'oktell_' || substr(md5(current_schema()), 1, 20)";

/// Largest payload PostgreSQL takes is 8,000 bytes; ours are far below (ids, a domain
/// of at most 200 bytes).
pub const MAX_PAYLOAD: usize = 7_900;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Change {
    /// A channel was created, changed or deleted (`v`: its version now, 0 when gone).
    Channel { id: String, v: i64 },
    /// Events were appended to the domain's log, up to id `last`.
    Events { last: i64 },
    /// A text frame for session `code` of channel `ch`, held by node `to`. The text
    /// travels inline, or (when too large for a note) in `ws_pushes` under `r`. `u`
    /// makes every note unique (PostgreSQL folds identical payloads of a transaction).
    Push {
        to: String,
        ch: String,
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r: Option<String>,
        u: String,
    },
    /// A text frame for every session of channel `ch` on every other node.
    Broadcast {
        ch: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r: Option<String>,
        u: String,
    },
    /// Close session `code` of channel `ch`, held by node `to`.
    Close {
        to: String,
        ch: String,
        code: String,
        cc: u16,
        reason: String,
        u: String,
    },
}

/// A note as sent: the change, its domain, and the process that made it (a node skips
/// its own notes: it applied the change already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The sending process (`instance_id`).
    pub o: String,
    /// The domain.
    pub d: String,
    #[serde(flatten)]
    pub change: Change,
}

/// This process's id in notes, random per start.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

impl Note {
    pub fn new(domain: &str, change: Change) -> Note {
        Note {
            o: instance_id().to_string(),
            d: domain.to_string(),
            change,
        }
    }

    /// Did this process send it?
    pub fn is_own(&self) -> bool {
        self.o == instance_id()
    }
}

/// A note's payload as sent, if it fits NOTIFY's limit.
pub fn encode(domain: &str, change: Change) -> Result<Option<String>, StoreError> {
    let payload = serde_json::to_string(&Note::new(domain, change))
        .map_err(|e| StoreError::Setup(format!("encoding a note: {e}")))?;
    Ok((payload.len() <= MAX_PAYLOAD).then_some(payload))
}

/// Sends `change` to the other nodes when the current transaction commits (PostgreSQL;
/// nothing on SQLite). Call it inside the change's own transaction.
pub fn notify(conn: &mut AnyConnection, domain: &str, change: Change) -> Result<(), StoreError> {
    if !matches!(conn, AnyConnection::Postgresql(_)) {
        return Ok(());
    }
    let payload = encode(domain, change)?.ok_or_else(|| {
        StoreError::Setup("a cluster note is over NOTIFY's 8,000-byte limit".into())
    })?;
    send(conn, payload)
}

/// Sends an encoded note ([`encode`]).
pub fn send(conn: &mut AnyConnection, payload: String) -> Result<(), StoreError> {
    let AnyConnection::Postgresql(pg) = conn else {
        return Ok(());
    };
    diesel::sql_query(format!("SELECT pg_notify({CHANNEL_NAME_SQL}, $1)"))
        .bind::<Text, _>(payload)
        .execute(pg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_know_their_sender() {
        let note = Note::new(
            "d1",
            Change::Channel {
                id: "c".into(),
                v: 3,
            },
        );
        let text = serde_json::to_string(&note).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"o":"{}","d":"d1","k":"channel","id":"c","v":3}}"#,
                instance_id()
            )
        );
        let back: Note = serde_json::from_str(&text).unwrap();
        assert_eq!(back, note);
        assert!(back.is_own());
        let foreign: Note =
            serde_json::from_str(r#"{"o":"other","d":"d1","k":"events","last":7}"#).unwrap();
        assert!(!foreign.is_own());
        assert_eq!(foreign.change, Change::Events { last: 7 });
    }
}
