//! Channel state (issue #14): small values a channel's scripts keep between runs,
//! shared by every run on every node of the domain — `state_get(key)`,
//! `state_set(key, value, ttl_s)`, `state_del(key)` and `seen_before(key, ttl_s)`.
//!
//! Stored in the database (`db::channel_state`), never cached on a node: every call
//! reads or writes the table, so a value set on one node is what the next run on any
//! node reads, and `seen_before` is decided by one atomic statement. The calls are
//! database waits on scenario threads: the runtime makes them inside
//! `pool::blocking` (the compute slot goes to another run meanwhile) and
//! [`Database::within`] bounds them by the run's deadline.
//!
//! Bounds (settings, see config.default.toml): a key's bytes, a value's bytes (as
//! JSON), and keys per channel; expired rows are removed when read, when a channel is
//! at its key limit, and by the node's periodic sweep ([`sweep_forever`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::db::channel_state::{self as rows, Upsert};
use crate::db::{Database, StoreError};

/// The longest ttl: 100 years.
pub const MAX_TTL_S: i64 = 100 * 365 * 24 * 3600;

/// Why a state call failed; the script gets it as an error it can catch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {0} bytes, over channel_state_max_key_bytes ({1})")]
    KeyTooLong(usize, usize),
    #[error("the value is {0} bytes as JSON, over channel_state_max_value_bytes ({1})")]
    ValueTooLarge(usize, usize),
    #[error(
        "the channel already keeps channel_state_max_keys ({0}) keys: delete some, or give them a ttl"
    )]
    TooManyKeys(u64),
    #[error("ttl_s must be 0 (no expiry) or between 1 and {MAX_TTL_S} seconds, not {0}")]
    BadTtl(i64),
    #[error("{0}")]
    BadValue(String),
    #[error("the channel no longer exists")]
    NoChannel,
    #[error("storage: {0}")]
    Store(String),
    #[error("channel state is not available here")]
    Unavailable,
}

impl StateError {
    fn is_limit(&self) -> bool {
        matches!(
            self,
            StateError::KeyTooLong(..) | StateError::ValueTooLarge(..) | StateError::TooManyKeys(_)
        )
    }
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _,
            )) => StateError::NoChannel,
            other => StateError::Store(other.to_string()),
        }
    }
}

/// The bounds of channel state (settings `channel_state_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_keys: u64,
}

impl From<&crate::config::Config> for StateLimits {
    fn from(c: &crate::config::Config) -> Self {
        StateLimits {
            max_key_bytes: c.channel_state_max_key_bytes,
            max_value_bytes: c.channel_state_max_value_bytes,
            max_keys: c.channel_state_max_keys,
        }
    }
}

impl StateLimits {
    pub fn check_key(&self, key: &str) -> Result<(), StateError> {
        if key.is_empty() {
            return Err(StateError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(StateError::KeyTooLong(key.len(), self.max_key_bytes));
        }
        Ok(())
    }

    pub fn check_value(&self, json: &str) -> Result<(), StateError> {
        if json.len() > self.max_value_bytes {
            return Err(StateError::ValueTooLarge(json.len(), self.max_value_bytes));
        }
        Ok(())
    }

    /// A ttl in milliseconds (0: never expires).
    pub fn check_ttl(&self, ttl_s: i64) -> Result<i64, StateError> {
        if !(0..=MAX_TTL_S).contains(&ttl_s) {
            return Err(StateError::BadTtl(ttl_s));
        }
        Ok(ttl_s * 1000)
    }
}

/// What a state call is, for the metric's `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
    Del,
    SeenBefore,
}

/// How it ended, for the metric's `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// get: found; set: written; del: deleted; seen_before: seen (true).
    Hit,
    /// get: absent; del: absent; seen_before: first (false, recorded now).
    Miss,
    /// A bound (key, value, keys per channel) refused it.
    Limit,
    /// The database failed or did not answer in time.
    Error,
    /// A dry run's write, recorded and not performed.
    Recorded,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Get, Op::Set, Op::Del, Op::SeenBefore];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Del => "del",
            Op::SeenBefore => "seen_before",
        }
    }
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Limit,
        Outcome::Error,
        Outcome::Recorded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Limit => "limit",
            Outcome::Error => "error",
            Outcome::Recorded => "recorded",
        }
    }
}

/// State calls by op and outcome, since the process started (`/metrics`).
static CALLS: [[AtomicU64; 5]; 4] = [const { [const { AtomicU64::new(0) }; 5] }; 4];
/// Time state calls spent waiting on the database, µs.
static WAIT_MICROS: AtomicU64 = AtomicU64::new(0);
/// Expired rows removed (on read, at a channel's key limit, by the sweep).
static EXPIRED_REMOVED: AtomicU64 = AtomicU64::new(0);

pub fn calls_total(op: Op, outcome: Outcome) -> u64 {
    CALLS[op as usize][outcome as usize].load(Ordering::Relaxed)
}

pub fn wait_seconds_total() -> f64 {
    WAIT_MICROS.load(Ordering::Relaxed) as f64 / 1e6
}

pub fn expired_removed_total() -> u64 {
    EXPIRED_REMOVED.load(Ordering::Relaxed)
}

pub fn count(op: Op, outcome: Outcome) {
    CALLS[op as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
}

fn count_result<T>(op: Op, result: &Result<T, StateError>, hit: impl FnOnce(&T) -> bool) {
    let outcome = match result {
        Ok(v) if hit(v) => Outcome::Hit,
        Ok(_) => Outcome::Miss,
        Err(e) if e.is_limit() => Outcome::Limit,
        Err(_) => Outcome::Error,
    };
    count(op, outcome);
}

/// The node's access to channel state: the database and the bounds.
pub struct StateStore {
    db: Database,
    limits: StateLimits,
}

impl StateStore {
    pub fn new(db: Database, limits: StateLimits) -> Arc<StateStore> {
        Arc::new(StateStore { db, limits })
    }

    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }

    /// Runs `work` within the run's deadline, counting the wait. `work` answers a
    /// refusal of ours (a bound) as `Ok(Err(..))`: the transaction still ends cleanly.
    fn within<T>(
        &self,
        deadline: Instant,
        work: impl FnOnce(&mut crate::db::AnyConnection) -> Result<Result<T, StateError>, StoreError>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let out = self.db.within(deadline, work);
        WAIT_MICROS.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        out.map_err(StateError::from).and_then(|r| r)
    }

    /// The JSON stored under `key`, or None (absent or expired).
    pub fn get(
        &self,
        channel_id: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, StateError> {
        let result = self.limits.check_key(key).and_then(|()| {
            self.within(deadline, |c| {
                let mut removed = 0;
                let found = rows::get(c, channel_id, key, &mut removed)?;
                EXPIRED_REMOVED.fetch_add(removed as u64, Ordering::Relaxed);
                Ok(Ok(found))
            })
        });
        count_result(Op::Get, &result, Option::is_some);
        result
    }

    /// Stores `json` under `key` for `ttl_s` seconds (0: no expiry).
    pub fn set(
        &self,
        channel_id: &str,
        key: &str,
        json: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<(), StateError> {
        let result = self.checked(key, json, ttl_s).and_then(|ttl_ms| {
            self.within(deadline, |c| {
                Ok(
                    match self.write(c, (channel_id, key), json, ttl_ms, false)? {
                        Wrote::Written | Wrote::Live => Ok(()),
                        Wrote::Full => Err(StateError::TooManyKeys(self.limits.max_keys)),
                    },
                )
            })
        });
        count_result(Op::Set, &result, |_| true);
        result
    }

    /// Deletes `key`; whether it was there.
    pub fn del(&self, channel_id: &str, key: &str, deadline: Instant) -> Result<bool, StateError> {
        let result = self
            .limits
            .check_key(key)
            .and_then(|()| self.within(deadline, |c| Ok(Ok(rows::delete(c, channel_id, key)?))));
        count_result(Op::Del, &result, |deleted| *deleted);
        result
    }

    /// Whether `key` was seen (and has not expired); if not, it is recorded now for
    /// `ttl_s` seconds (0: for ever). Of concurrent calls with one key, on any nodes,
    /// exactly one is told false.
    pub fn seen_before(
        &self,
        channel_id: &str,
        key: &str,
        ttl_s: i64,
        deadline: Instant,
    ) -> Result<bool, StateError> {
        let result = self.checked(key, "true", ttl_s).and_then(|ttl_ms| {
            self.within(deadline, |c| {
                Ok(
                    match self.write(c, (channel_id, key), "true", ttl_ms, true)? {
                        Wrote::Written => Ok(false),
                        Wrote::Live => Ok(true),
                        Wrote::Full => Err(StateError::TooManyKeys(self.limits.max_keys)),
                    },
                )
            })
        });
        count_result(Op::SeenBefore, &result, |seen| *seen);
        result
    }

    fn checked(&self, key: &str, json: &str, ttl_s: i64) -> Result<i64, StateError> {
        self.limits.check_key(key)?;
        self.limits.check_value(json)?;
        self.limits.check_ttl(ttl_s)
    }

    /// A guarded upsert. A channel at its key limit first loses its expired rows, and
    /// the write is tried once more.
    fn write(
        &self,
        c: &mut crate::db::AnyConnection,
        at: (&str, &str),
        json: &str,
        ttl_ms: i64,
        only_if_expired: bool,
    ) -> Result<Wrote, StoreError> {
        let max_keys = i64::try_from(self.limits.max_keys).unwrap_or(i64::MAX);
        for attempt in 0..2 {
            if rows::upsert(c, at, json, ttl_ms, max_keys, only_if_expired)? == Upsert::Written {
                return Ok(Wrote::Written);
            }
            // Not written: the key is there and live (only_if_expired), or the key is
            // new and the channel is full.
            if only_if_expired && rows::is_live(c, at.0, at.1)? {
                return Ok(Wrote::Live);
            }
            if attempt > 0 {
                break;
            }
            let removed = rows::purge_expired_of(c, at.0)?;
            if removed == 0 {
                break;
            }
            EXPIRED_REMOVED.fetch_add(removed as u64, Ordering::Relaxed);
        }
        Ok(Wrote::Full)
    }
}

/// What [`StateStore::write`] did.
enum Wrote {
    Written,
    /// Not replaced: the key is there and has not expired (`only_if_expired`).
    Live,
    /// Not written: the key is new and the channel holds `max_keys` keys.
    Full,
}

/// The node's sweep of expired rows: one bounded batch (`batch` rows) every `every`,
/// and the next batch a second later while batches come back full.
pub async fn sweep_forever(db: Database, every: Duration, batch: u64, logger: slog::Logger) {
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    loop {
        let removed = db
            .run(move |c| crate::db::channel_state::sweep(c, batch))
            .await;
        let next = match removed {
            Ok(n) => {
                EXPIRED_REMOVED.fetch_add(n as u64, Ordering::Relaxed);
                if n as i64 >= batch {
                    Duration::from_secs(1).min(every)
                } else {
                    every
                }
            }
            Err(e) => {
                slog::warn!(logger, "sweeping expired channel state failed"; "error" => %e);
                every
            }
        };
        tokio::time::sleep(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_setting() {
        let limits = StateLimits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_keys: 2,
        };
        assert_eq!(limits.check_key(""), Err(StateError::EmptyKey));
        assert!(limits.check_key("abcd").is_ok());
        let e = limits.check_key("abcde").unwrap_err();
        assert!(
            e.to_string().contains("channel_state_max_key_bytes (4)"),
            "{e}"
        );
        let e = limits.check_value("\"123456789\"").unwrap_err();
        assert!(
            e.to_string().contains("channel_state_max_value_bytes (8)"),
            "{e}"
        );
        assert_eq!(limits.check_ttl(0), Ok(0));
        assert_eq!(limits.check_ttl(2), Ok(2000));
        assert_eq!(limits.check_ttl(-1), Err(StateError::BadTtl(-1)));
        assert!(limits.check_ttl(MAX_TTL_S + 1).is_err());
    }
}
