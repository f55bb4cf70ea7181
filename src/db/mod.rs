//! Storage: one diesel `MultiConnection` over SQLite (the embedded default) and
//! PostgreSQL (clusters), pooled with r2d2. Every call here blocks: callers on async
//! threads go through [`Database::run`], which moves the work to the blocking pool.

pub mod channel_state;
pub mod channel_versions;
pub mod channels;
pub mod directory;
pub mod events;
pub mod executions;
pub mod models;
pub mod nodes;
pub mod notify;
pub mod schema;
pub mod subscriptions;

use std::path::Path;
use std::time::Duration;

use diesel::migration::MigrationSource;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to whichever backend the database URL selected.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// A multi-row insert of `rows` into `table` (one statement). diesel's `MultiConnection`
/// has no multi-row insert, so each backend runs its own.
macro_rules! insert_rows {
    ($conn:expr, $table:expr, $rows:expr) => {
        match $conn {
            $crate::db::AnyConnection::Postgresql(c) => {
                diesel::insert_into($table).values($rows).execute(c)
            }
            $crate::db::AnyConnection::Sqlite(c) => {
                diesel::insert_into($table).values($rows).execute(c)
            }
        }
    };
}
pub(crate) use insert_rows;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migrations: {0}")]
    Migration(String),
    #[error("the code is already used by another channel of this domain")]
    DuplicateCode,
    #[error("background task failed: {0}")]
    Blocking(String),
    #[error("database setup: {0}")]
    Setup(String),
}

impl StoreError {
    /// SQLite's write lock was held by another writer past `busy_timeout`: nothing was
    /// written, and the same call may succeed a moment later.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Query(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("database is locked")
                    || info.message().contains("database is busy")
        )
    }

    /// The connection to the database was lost (server gone, network cut): the
    /// database is unavailable, not the request wrong.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ClosedConnection
                    | diesel::result::DatabaseErrorKind::UnableToSendCommand,
                _
            ))
        ) || matches!(
            self,
            StoreError::Query(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("server closed the connection")
                    || info.message().contains("connection to server")
                    || info.message().contains("no connection to the server")
        )
    }

    pub fn is_unique_violation(err: &diesel::result::Error) -> bool {
        matches!(
            err,
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            )
        )
    }
}

/// Which backend a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// How long a SQLite statement waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5000;

/// Settings applied to every pooled connection. SQLite: WAL so readers never wait for
/// the writer, a busy timeout instead of "database is locked" errors under contention.
/// PostgreSQL: custom plans for prepared statements (below).
#[derive(Debug)]
struct ConnectionSettings;

impl CustomizeConnection<AnyConnection, diesel::r2d2::Error> for ConnectionSettings {
    fn on_acquire(&self, conn: &mut AnyConnection) -> Result<(), diesel::r2d2::Error> {
        match conn {
            AnyConnection::Sqlite(c) => diesel::connection::SimpleConnection::batch_execute(
                c,
                &format!(
                    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA cache_size = -32768;"
                ),
            ),
            // diesel prepares its statements once per connection, and PostgreSQL
            // switches a prepared statement to a generic plan after five runs, costed
            // with the statistics of that moment: an outbox or event log that was tiny
            // then is scanned whole for ever after (a 16 ms `id = ANY(...)` lookup on
            // 75,000 events, measured). Plan each run with its own values instead.
            AnyConnection::Postgresql(c) => diesel::connection::SimpleConnection::batch_execute(
                c,
                "SET plan_cache_mode = force_custom_plan",
            ),
        }
        .map_err(diesel::r2d2::Error::QueryError)?;
        Ok(())
    }
}

pub type DbPool = Pool<ConnectionManager<AnyConnection>>;
pub type DbConn = PooledConnection<ConnectionManager<AnyConnection>>;

/// The pooled database, cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: DbPool,
    backend: Backend,
    waits: std::sync::Arc<PoolWaits>,
    /// SQLite has one writer at a time, and a writer that finds the lock taken sleeps in
    /// growing steps (SQLite's busy handler: 1, 2, 5, 10 ... 100 ms) however soon it is
    /// free again. This node's hot writers (publishing, claiming and recording
    /// deliveries) queue here instead, and take the lock as soon as it is given back.
    write_gate: std::sync::Arc<WriteGate>,
}

/// Whose turn it is to write (SQLite): one writer at a time, and writers someone is
/// waiting on (a publish being acknowledged) before background ones (deliveries).
#[derive(Default)]
pub struct WriteGate {
    state: std::sync::Mutex<GateState>,
    turn: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    writing: bool,
    urgent_waiting: usize,
}

/// How soon a write is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A caller waits for it.
    Now,
    /// Background work (delivery bookkeeping): after the waiting callers.
    Background,
}

/// A writer's turn; the next writer goes when it is dropped.
pub struct Turn<'a>(&'a WriteGate);

impl WriteGate {
    pub fn enter(&self, urgency: Urgency) -> Turn<'_> {
        // A writer that panicked left nothing half-done in SQLite (its transaction
        // rolled back): the state is still good.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if urgency == Urgency::Now {
            state.urgent_waiting += 1;
        }
        loop {
            let blocked =
                state.writing || (urgency == Urgency::Background && state.urgent_waiting > 0);
            if !blocked {
                break;
            }
            state = self.turn.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if urgency == Urgency::Now {
            state.urgent_waiting -= 1;
        }
        state.writing = true;
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.writing = false;
        drop(state);
        self.0.turn.notify_all();
    }
}

/// Time spent waiting for a pooled connection (for metrics).
#[derive(Debug, Default)]
pub struct PoolWaits {
    pub count: std::sync::atomic::AtomicU64,
    pub micros: std::sync::atomic::AtomicU64,
    pub timeouts: std::sync::atomic::AtomicU64,
}

impl Database {
    /// Opens the pool. A SQLite path (plain, or `sqlite://path`) gets its folder created.
    pub fn connect(url: &str, pool_size: u32) -> Result<Database, StoreError> {
        let backend = Backend::of_url(url);
        let conn_url = match backend {
            Backend::Postgres => url.to_string(),
            Backend::Sqlite => {
                let path = url.strip_prefix("sqlite://").unwrap_or(url);
                if let Some(parent) = Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::Setup(format!("creating {}: {e}", parent.display()))
                    })?;
                }
                path.to_string()
            }
        };
        let manager = ConnectionManager::<AnyConnection>::new(conn_url);
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            // Connections are opened as needed (and kept), not all at start: a cluster
            // of nodes would otherwise hold nodes × db_pool_size sessions of
            // PostgreSQL's max_connections from the first second.
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .connection_customizer(Box::new(ConnectionSettings))
            .build(manager)
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(Database {
            pool,
            backend,
            waits: Default::default(),
            write_gate: Default::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Connections of the pool right now.
    pub fn pool_state(&self) -> PoolState {
        let s = self.pool.state();
        PoolState {
            idle: s.idle_connections,
            in_use: s.connections.saturating_sub(s.idle_connections),
            max: self.pool.max_size(),
        }
    }

    /// Is every migration this binary embeds applied? (Readiness.)
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        let expected = match self.backend {
            Backend::Sqlite => {
                MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE_MIGRATIONS)
                    .map(|m| m.len())
            }
            Backend::Postgres => {
                MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES_MIGRATIONS).map(|m| m.len())
            }
        }
        .map_err(|e| StoreError::Migration(e.to_string()))?;
        let applied = self
            .run(|conn| {
                #[derive(QueryableByName)]
                struct Count {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let row: Count =
                    diesel::sql_query("SELECT COUNT(*) AS n FROM __diesel_schema_migrations")
                        .get_result(conn)?;
                Ok(row.n)
            })
            .await?;
        Ok(applied as usize >= expected)
    }

    pub fn conn(&self) -> Result<DbConn, StoreError> {
        self.conn_within(None)
    }

    /// A connection, waiting for one at most `limit` (the pool's own timeout if None):
    /// a scenario's database wait stays inside its deadline.
    pub fn conn_within(&self, limit: Option<std::time::Duration>) -> Result<DbConn, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let got = match limit {
            Some(limit) => self.pool.get_timeout(limit),
            None => self.pool.get(),
        };
        self.waits.count.fetch_add(1, Relaxed);
        self.waits
            .micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        got.map_err(|e| {
            self.waits.timeouts.fetch_add(1, Relaxed);
            StoreError::Pool(e.to_string())
        })
    }

    /// Runs `work` on a pooled connection with all of it bounded by `deadline` (a
    /// scenario's database wait): the wait for a connection, and every statement. On
    /// PostgreSQL `work` runs in a transaction whose `statement_timeout` is the time
    /// left; on SQLite the busy timeout (how long a statement waits for the write
    /// lock) is cut to the time left for the length of `work`.
    pub fn within<T>(
        &self,
        deadline: std::time::Instant,
        work: impl FnOnce(&mut AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let left = |what: &str| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                Err(StoreError::Pool(format!("no time left for {what}")))
            } else {
                Ok(left)
            }
        };
        let mut conn = self.conn_within(Some(left("a database connection")?))?;
        let ms = left("the database")?.as_millis().max(1);
        match &mut *conn {
            c @ AnyConnection::Postgresql(_) => c.transaction::<T, StoreError, _>(|c| {
                diesel::sql_query(format!("SET LOCAL statement_timeout = {ms}")).execute(c)?;
                work(c)
            }),
            c @ AnyConnection::Sqlite(_) => {
                let busy_timeout = |c: &mut AnyConnection, ms| {
                    diesel::connection::SimpleConnection::batch_execute(
                        c,
                        &format!("PRAGMA busy_timeout = {ms}"),
                    )
                };
                busy_timeout(c, ms.min(u128::from(SQLITE_BUSY_TIMEOUT_MS)))?;
                let out = work(c);
                busy_timeout(c, u128::from(SQLITE_BUSY_TIMEOUT_MS))?;
                out
            }
        }
    }

    pub fn pool_waits(&self) -> &PoolWaits {
        &self.waits
    }

    /// Applies the pending migrations of this backend; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let ran = match &mut *conn {
            AnyConnection::Sqlite(c) => {
                c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len())
            }
            // Nodes starting together on an empty database take turns: the first
            // migrates, the others then find nothing pending (a session-level
            // advisory lock, released right after, also if migrating failed).
            AnyConnection::Postgresql(c) => {
                diesel::sql_query("SELECT pg_advisory_lock(7236419851)").execute(c)?;
                let ran = c
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len());
                diesel::sql_query("SELECT pg_advisory_unlock(7236419851)").execute(c)?;
                ran
            }
        };
        ran.map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// Runs blocking database work off the async threads.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.on_blocking_thread(None, work).await
    }

    /// The gate SQLite writers of this node take turns at (None on PostgreSQL).
    pub fn write_gate(&self) -> Option<&WriteGate> {
        match self.backend {
            Backend::Sqlite => Some(&self.write_gate),
            Backend::Postgres => None,
        }
    }

    /// [`Database::run`] for work that writes: on SQLite it waits its turn behind this
    /// node's other writers first (see `write_gate`; `urgency` orders the waiting),
    /// then takes a connection.
    pub async fn write<T, F>(&self, urgency: Urgency, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.on_blocking_thread(Some(urgency), work).await
    }

    /// Runs `work` with a pooled connection on the blocking pool; a write (`urgency`)
    /// first waits its turn at the SQLite write gate.
    async fn on_blocking_thread<T, F>(
        &self,
        urgency: Option<Urgency>,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let _turn = match (urgency, db.write_gate()) {
                (Some(urgency), Some(gate)) => Some(gate.enter(urgency)),
                _ => None,
            };
            let mut conn = db.conn()?;
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Blocking(e.to_string()))?
    }

    /// Cheap liveness probe used by readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }
}

/// Database pool connections, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolState {
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
}

/// Milliseconds since the Unix epoch: timestamps are stored as BIGINT so that both
/// backends share one schema.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
