//! ScenarioPool: a fixed set of threads with a bounded queue in front.
//!
//! Scripts must never run on an async worker, and the hop to a script thread is on the
//! hot path of every webhook. Measured on a 2-core VM: a `web::block` per request cost
//! 43-89 µs and grew the blocking pool to ~70 threads; a crossbeam channel cost the
//! HTTP worker a futex wake (an IPI under virtualisation) per request, ~15% of its CPU.
//! So here a job is one push onto a lock-free bounded queue, and the producer wakes a
//! thread only when one has been idle long enough to sleep for good. Busy or
//! recently busy threads poll the queue themselves, so under load the wake-ups are
//! amortised over every job that arrived meanwhile, and they cost the scenario side,
//! not the HTTP workers. A full queue refuses work at once (the caller answers 503).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Scripts recurse on the native stack: give them room.
const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;
/// How long an idle thread naps between looks at the queue.
const NAP: Duration = Duration::from_micros(50);
/// Idle this long, a thread sleeps until a producer wakes it.
const DEEP_SLEEP_AFTER: Duration = Duration::from_millis(2);

/// Counters of the pool, readable at any time.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub busy: AtomicUsize,
    pub completed: AtomicU64,
    pub rejected: AtomicU64,
    pub panicked: AtomicU64,
    /// Wake-ups producers had to make (a measure of how often the pool went idle).
    pub wakeups: AtomicU64,
}

struct Sleeper {
    thread: Thread,
    /// Set while the thread sleeps without a timeout: only then must a producer wake it.
    deep: AtomicBool,
}

struct Shared {
    queue: ArrayQueue<Job>,
    sleepers: Vec<Sleeper>,
    shutdown: AtomicBool,
    stats: PoolStats,
}

/// Stops the threads (after the queue drains) when the last pool handle goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown.store(true, Ordering::SeqCst);
        for s in &self.0.sleepers {
            s.thread.unpark();
        }
    }
}

#[derive(Clone)]
pub struct ScenarioPool {
    owner: Arc<Owner>,
}

/// The queue was full; the job was not taken.
#[derive(Debug)]
pub struct QueueFull;

impl ScenarioPool {
    /// Starts `threads` threads behind a queue of `capacity` jobs.
    pub fn start(
        threads: usize,
        capacity: usize,
        logger: slog::Logger,
    ) -> std::io::Result<ScenarioPool> {
        let threads = threads.max(1);
        // Threads need the shared state, and the shared state names the threads: start
        // them parked on a one-shot handover.
        let (handover_tx, handover_rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let handover_rx = Arc::new(std::sync::Mutex::new(handover_rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = handover_rx.clone();
            let logger = logger.clone();
            let handle = std::thread::Builder::new()
                .name(format!("scenario-{i}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || {
                    let shared = match rx.lock().map(|r| r.recv()) {
                        Ok(Ok(shared)) => shared,
                        _ => return,
                    };
                    drop(rx);
                    work(&shared, i, &logger);
                })?;
            handles.push(handle);
        }
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(capacity.max(1)),
            sleepers: handles
                .iter()
                .map(|h| Sleeper {
                    thread: h.thread().clone(),
                    deep: AtomicBool::new(false),
                })
                .collect(),
            shutdown: AtomicBool::new(false),
            stats: PoolStats::default(),
        });
        for _ in 0..threads {
            let _ = handover_tx.send(shared.clone());
        }
        Ok(ScenarioPool {
            owner: Arc::new(Owner(shared)),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.0
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn try_execute(&self, job: impl FnOnce() + Send + 'static) -> Result<(), QueueFull> {
        let shared = self.shared();
        if shared.queue.push(Box::new(job)).is_err() {
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(QueueFull);
        }
        // Napping threads look at the queue by themselves; a deep sleeper must be woken
        // (a busy thread may be busy for long).
        // Claiming the flag makes back-to-back jobs wake different sleepers.
        if let Some(s) = shared.sleepers.iter().find(|s| {
            s.deep
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        }) {
            shared.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            s.thread.unpark();
        }
        Ok(())
    }

    pub fn queued(&self) -> usize {
        self.shared().queue.len()
    }

    pub fn capacity(&self) -> usize {
        self.shared().queue.capacity()
    }

    pub fn threads(&self) -> usize {
        self.shared().sleepers.len()
    }

    pub fn stats(&self) -> &PoolStats {
        &self.shared().stats
    }
}

fn work(shared: &Shared, index: usize, logger: &slog::Logger) {
    let me = &shared.sleepers[index];
    let mut idle_since: Option<Instant> = None;
    loop {
        if let Some(job) = shared.queue.pop() {
            idle_since = None;
            shared.stats.busy.fetch_add(1, Ordering::Relaxed);
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
                slog::error!(logger, "a scenario job panicked; the thread goes on");
            }
            shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
            shared.stats.completed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < DEEP_SLEEP_AFTER {
            std::thread::park_timeout(NAP);
            continue;
        }
        // Announce the deep sleep, then look once more: a producer that pushed before
        // seeing the flag left a job we find here; one that pushed after unparks us.
        me.deep.store(true, Ordering::SeqCst);
        if shared.queue.is_empty() && !shared.shutdown.load(Ordering::SeqCst) {
            std::thread::park();
        }
        me.deep.store(false, Ordering::SeqCst);
        idle_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_jobs_after_deep_sleep_and_refuses_when_full() {
        let pool =
            ScenarioPool::start(2, 4, slog::Logger::root(slog::Discard, slog::o!())).unwrap();
        let (tx, rx) = mpsc::channel();
        for round in 0..3 {
            let tx = tx.clone();
            pool.try_execute(move || tx.send(round).unwrap()).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), round);
            // Long enough for both threads to fall into deep sleep.
            std::thread::sleep(DEEP_SLEEP_AFTER * 3);
        }
        // Block both threads, fill the queue, and one more is refused.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let (started_tx, started_rx) = mpsc::channel();
        for _ in 0..2 {
            let (r, s) = (release_rx.clone(), started_tx.clone());
            pool.try_execute(move || {
                s.send(()).unwrap();
                let _ = r.lock().unwrap().recv();
            })
            .unwrap();
        }
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        for _ in 0..4 {
            pool.try_execute(|| {}).unwrap();
        }
        assert!(pool.try_execute(|| {}).is_err());
        assert_eq!(pool.stats().rejected.load(Ordering::Relaxed), 1);
        drop(release_tx);
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_thread() {
        let pool =
            ScenarioPool::start(1, 4, slog::Logger::root(slog::Discard, slog::o!())).unwrap();
        pool.try_execute(|| panic!("boom")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.try_execute(move || tx.send(42).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 42);
        assert_eq!(pool.stats().panicked.load(Ordering::Relaxed), 1);
    }
}
