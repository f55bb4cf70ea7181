//! The executions writer: a task on an arbiter of its own that takes what the scenario
//! threads queued ([`ExecutionLog`]) every `executions_flush_ms`, makes the records
//! (masked, serialised) and stores them in batches, one transaction each (on SQLite behind the node's other writers, as
//! background work). Each batch trims the channels it wrote to their count bound
//! (`executions_kept_per_channel`); hourly, executions older than
//! `executions_retention_days` are purged. The arbiter stops with the node. Records are
//! made on a thread of idle priority, stored from background ones ([`crate::threads`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{ExecutionLog, Pending};
use crate::db::models::Execution;
use crate::db::{Database, Urgency, executions as rows, now_millis};

/// Records stored in one transaction, at most; a fuller queue is drained in several
/// batches without waiting for the next tick. Small: this idle-priority thread holds
/// SQLite's write gate for one transaction, and a request-side writer that comes
/// meanwhile waits behind it (see [`crate::threads`]).
pub const BATCH_MAX: usize = 200;
/// Rows deleted by age in one transaction, at most (the same reason).
const PURGE_CHUNK: i64 = 1000;
/// How often executions past their age are purged (the first a minute after start).
const PURGE_EVERY: Duration = Duration::from_secs(3600);
const FIRST_PURGE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub flush: Duration,
    pub keep_per_channel: i64,
    pub retention: Duration,
}

/// Starts the writer on an arbiter of its own; stop the arbiter to end it.
pub fn start(
    log: Arc<ExecutionLog>,
    db: Database,
    settings: WriterSettings,
    logger: slog::Logger,
) -> actix::ArbiterHandle {
    let arbiter = actix::Arbiter::new().handle();
    arbiter.spawn(async move {
        // The blocking threads its writes run on are started from here: idle too.
        crate::threads::idle();
        run(log, db, settings, logger).await
    });
    arbiter
}

async fn run(log: Arc<ExecutionLog>, db: Database, settings: WriterSettings, logger: slog::Logger) {
    let mut tick = tokio::time::interval(settings.flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_purge = Instant::now() + FIRST_PURGE_AFTER;
    loop {
        tick.tick().await;
        loop {
            let mut pending = Vec::with_capacity(log.len().min(BATCH_MAX));
            log.take(BATCH_MAX, &mut pending);
            if pending.is_empty() {
                break;
            }
            // Made here, at idle priority, not on the scenario threads.
            let taken = pending.len();
            let batch: Vec<Execution> = pending.into_iter().filter_map(Pending::into_row).collect();
            if batch.len() < taken {
                let lost = (taken - batch.len()) as u64;
                log.stats.write_errors.fetch_add(lost, Ordering::Relaxed);
                slog::warn!(logger, "execution records could not be serialised; they are lost"; "records" => lost);
            }
            let n = batch.len() as u64;
            let keep = settings.keep_per_channel;
            match db
                .write(Urgency::Background, move |c| {
                    rows::insert_batch(c, &batch, keep)
                })
                .await
            {
                Ok(trimmed) => {
                    log.stats.written.fetch_add(n, Ordering::Relaxed);
                    log.stats
                        .trimmed
                        .fetch_add(trimmed as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    log.stats.write_errors.fetch_add(n, Ordering::Relaxed);
                    slog::warn!(logger, "storing executions failed; the batch is lost"; "records" => n, "error" => %e);
                }
            }
            if log.len() < BATCH_MAX {
                break;
            }
        }
        if Instant::now() >= next_purge {
            next_purge = Instant::now() + PURGE_EVERY;
            let before = now_millis()
                .saturating_sub(i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX));
            let mut purged = 0;
            loop {
                match db
                    .write(Urgency::Background, move |c| {
                        rows::purge(c, before, PURGE_CHUNK)
                    })
                    .await
                {
                    Ok(n) => {
                        purged += n;
                        log.stats.trimmed.fetch_add(n as u64, Ordering::Relaxed);
                        if (n as i64) < PURGE_CHUNK {
                            break;
                        }
                    }
                    Err(e) => {
                        slog::warn!(logger, "purging old executions failed"; "error" => %e);
                        break;
                    }
                }
            }
            if purged > 0 {
                slog::info!(logger, "purged old executions"; "count" => purged);
            }
        }
    }
}
