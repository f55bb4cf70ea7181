//! The executions writer: a task on an arbiter of its own that takes what the scenario
//! threads queued ([`ExecutionLog`]) every `executions_flush_ms`, makes the records
//! (masked, serialised) and stores them in batches, one transaction each (on SQLite behind the node's other writers, as
//! background work). Each batch trims the channels it wrote to their count bound
//! (`executions_kept_per_channel`); hourly, executions older than
//! `executions_retention_days` are purged (in chunks). The arbiter stops with the node.
//! Records are made on a thread of idle priority, stored from background ones
//! ([`crate::threads`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{ExecutionLog, Pending};
use crate::db::models::Execution;
use crate::db::{Database, Urgency, executions as rows, now_millis};

/// Records stored in one transaction, at most; a fuller queue is drained in several
/// batches without waiting for the next tick. Small: a transaction holds SQLite's write
/// lock, which request-side writers (`emit_event`, `state_set`) wait for, and the
/// kernel lets a niced thread finish its slice before a woken request thread runs, so
/// short bursts delay requests less (measured: p99 1.21x that without history with
/// 200, 1.05x with 50; docs/design-notes.md).
pub const BATCH_MAX: usize = 50;

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
        // The blocking threads its writes run on are started from here: background too.
        crate::threads::background();
        let maker = Maker::start(&logger);
        run(log, db, maker, settings, logger).await
    });
    arbiter
}

/// One record-making job: the runs taken, and where their rows go.
type MakeJob = (Vec<Pending>, oneshot::Sender<Vec<Option<Execution>>>);

/// The thread that makes the records (masking, JSON) at idle priority: it holds
/// nothing other threads wait for, so it may wait for a free core. The writer's own
/// threads, which hold SQLite's write lock and a pooled connection while they store,
/// are background ones (see [`crate::threads`]).
struct Maker {
    jobs: Option<std::sync::mpsc::SyncSender<MakeJob>>,
}

impl Maker {
    fn start(logger: &slog::Logger) -> Maker {
        let (tx, rx) = std::sync::mpsc::sync_channel::<MakeJob>(1);
        let started = std::thread::Builder::new()
            .name("executions-maker".into())
            .spawn(move || {
                crate::threads::idle();
                // Ends when the writer (the sender) is gone.
                while let Ok((pending, rows)) = rx.recv() {
                    let _ = rows.send(pending.into_iter().map(Pending::into_row).collect());
                }
            });
        match started {
            Ok(_) => Maker { jobs: Some(tx) },
            Err(e) => {
                slog::warn!(logger, "no thread for making execution records; the writer makes them"; "error" => %e);
                Maker { jobs: None }
            }
        }
    }

    /// The rows of `pending` (None for a record that could not be made; all None
    /// when the maker is gone).
    async fn make(&self, pending: Vec<Pending>) -> Vec<Option<Execution>> {
        let Some(jobs) = &self.jobs else {
            return pending.into_iter().map(Pending::into_row).collect();
        };
        let taken = pending.len();
        let (tx, rx) = oneshot::channel();
        // One job at a time (the writer awaits each): the channel never blocks.
        if jobs.send((pending, tx)).is_err() {
            return vec![None; taken];
        }
        rx.await.unwrap_or_else(|_| vec![None; taken])
    }
}

async fn run(
    log: Arc<ExecutionLog>,
    db: Database,
    maker: Maker,
    settings: WriterSettings,
    logger: slog::Logger,
) {
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
            // Made on the maker thread, not on the scenario threads.
            let taken = pending.len();
            let batch: Vec<Execution> = maker.make(pending).await.into_iter().flatten().collect();
            if batch.len() < taken {
                let lost = (taken - batch.len()) as u64;
                log.stats.write_errors.fetch_add(lost, Ordering::Relaxed);
                slog::warn!(logger, "execution records could not be made; they are lost"; "records" => lost);
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
                    .write(Urgency::Background, move |c| rows::purge(c, before))
                    .await
                {
                    Ok((n, more)) => {
                        purged += n;
                        log.stats.trimmed.fetch_add(n as u64, Ordering::Relaxed);
                        if !more {
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
