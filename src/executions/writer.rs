//! The executions writer: a task on an arbiter of its own that takes what the scenario
//! threads queued ([`ExecutionLog`]) every `executions_flush_ms` and stores it in
//! batches, one transaction each (on SQLite behind the node's other writers, as
//! background work). Each batch trims the channels it wrote to their count bound
//! (`executions_kept_per_channel`); hourly, executions older than
//! `executions_retention_days` are purged. The arbiter stops with the node.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ExecutionLog;
use crate::db::{Database, Urgency, executions as rows, now_millis};

/// Records stored in one transaction, at most; a fuller queue is drained in several
/// batches without waiting for the next tick.
pub const BATCH_MAX: usize = 2000;
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
    arbiter.spawn(run(log, db, settings, logger));
    arbiter
}

async fn run(log: Arc<ExecutionLog>, db: Database, settings: WriterSettings, logger: slog::Logger) {
    let mut tick = tokio::time::interval(settings.flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_purge = Instant::now() + FIRST_PURGE_AFTER;
    loop {
        tick.tick().await;
        loop {
            let mut batch = Vec::with_capacity(log.len().min(BATCH_MAX));
            log.take(BATCH_MAX, &mut batch);
            if batch.is_empty() {
                break;
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
            match db
                .write(Urgency::Background, move |c| rows::purge(c, before))
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    log.stats.trimmed.fetch_add(n as u64, Ordering::Relaxed);
                    slog::info!(logger, "purged old executions"; "count" => n);
                }
                Err(e) => slog::warn!(logger, "purging old executions failed"; "error" => %e),
            }
        }
    }
}
