//! ScenarioPool: a fixed set of threads with a bounded queue in front.
//!
//! Scripts must never run on an async worker, and the hop to a script thread is on the
//! hot path of every webhook: a `web::block` per request was measured at 43-89 µs of
//! overhead and grew the blocking pool to ~70 threads. Here the hop is one bounded
//! crossbeam send and a oneshot reply; threads are fixed and keep their engines warm.
//! A full queue refuses work at once (the caller answers 503) instead of growing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Sender, TrySendError};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Scripts recurse on the native stack: give them room.
const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;

/// Counters of the pool, readable at any time.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub busy: AtomicUsize,
    pub completed: AtomicU64,
    pub rejected: AtomicU64,
    pub panicked: AtomicU64,
}

#[derive(Clone)]
pub struct ScenarioPool {
    tx: Sender<Job>,
    threads: usize,
    capacity: usize,
    stats: Arc<PoolStats>,
}

/// The queue was full; the job was not taken.
#[derive(Debug)]
pub struct QueueFull;

impl ScenarioPool {
    /// Starts `threads` threads behind a queue of `capacity` jobs. The threads end when
    /// the last handle to the pool is dropped and the queue has drained.
    pub fn start(
        threads: usize,
        capacity: usize,
        logger: slog::Logger,
    ) -> std::io::Result<ScenarioPool> {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        let stats = Arc::new(PoolStats::default());
        for i in 0..threads {
            let rx = rx.clone();
            let stats = stats.clone();
            let logger = logger.clone();
            std::thread::Builder::new()
                .name(format!("scenario-{i}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        stats.busy.fetch_add(1, Ordering::Relaxed);
                        if catch_unwind(AssertUnwindSafe(job)).is_err() {
                            stats.panicked.fetch_add(1, Ordering::Relaxed);
                            slog::error!(logger, "a scenario job panicked; the thread goes on");
                        }
                        stats.busy.fetch_sub(1, Ordering::Relaxed);
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                })?;
        }
        Ok(ScenarioPool {
            tx,
            threads,
            capacity: capacity.max(1),
            stats,
        })
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn try_execute(&self, job: impl FnOnce() + Send + 'static) -> Result<(), QueueFull> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }
}
