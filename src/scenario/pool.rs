//! ScenarioPool: compute slots held by threads, one lane per channel served round-robin,
//! and waits that give their slot away.
//!
//! Rhai cannot yield mid-script, so a run that waits on the outside world (an outgoing
//! call, a name lookup, a database write, `sleep_ms`) keeps its thread. What it gives up
//! is its *compute slot*: the pool has `threads` slots ("roles"), and only a thread
//! holding one takes new runs. [`blocking`] hands the caller's slot to a spare thread
//! (parked, or started when none is), runs the wait, then queues for a slot again.
//! Threads holding a slot look at those returning runs before they take a new one, so a
//! run coming back from a wait finishes before new runs start.
//!
//! Admission bounds everything that grows: at most `max_admitted` runs are queued,
//! computing or waiting at once, and the thread count is bounded by `threads +
//! max_admitted`, so a run that starts waiting never blocks on a permit mid-run. A run
//! whose estimated end (queue ahead of it × recent compute time ÷ slots, plus its own)
//! is past its budget is refused at once with that estimate (the caller answers 503 +
//! Retry-After). Only runs that run teach a lane its cost, so a lane that refused for
//! a while lets one run through on its start time alone (a *probe*, [`misses`]):
//! otherwise a channel whose runs once timed out would be refused for good.
//!
//! Fairness: every channel has a [`Lane`]; lanes with work sit in a ring and each turn
//! takes one run from the lane at the head, so one channel's flood delays another
//! channel's run by at most one run per busy channel.
//!
//! The hot path stays as measured before (benches/RESULTS.md): a job is a push onto
//! lock-free queues, and the producer wakes a thread only when a slot holder has been
//! idle long enough to sleep for good; slot holders nap and poll while recently busy.
//! Spare threads (no slot) sleep on a condition variable and retire after
//! [`SPARE_RETIRE_AFTER`] idle, giving their stacks back.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

/// Weight of a new sample in a lane's compute estimate (1/4: learns a channel's cost
/// within a few runs) and in the node-wide one, the prior of lanes without history.
const LANE_SMOOTHING: i64 = 4;
const NODE_SMOOTHING: i64 = 16;

/// A queued run: called once, to run (`Start::Run`) or to be told it was refused.
type Job = Box<dyn FnOnce(Start) + Send + 'static>;

/// What a queued run is told when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    Run,
    /// It could not finish before its deadline: refused unrun, with the estimated wait.
    Refused(Refused),
}

/// A run in its lane.
struct Queued {
    job: Job,
    deadline: Instant,
    /// The compute it was expected to take (µs), counted in `Shared::queued_cost`.
    cost: u64,
    /// Admitted on its start time alone, to learn its lane's cost again.
    probe: bool,
}

/// Whether a run expected to start in `start` and compute for `cost` misses a deadline
/// `remaining` away. A probe misses only when it cannot even start in time.
///
/// Why probes: a lane's cost is learnt only from runs that run. After runs that timed
/// out, the estimate can fill the whole budget, and every later run would be refused on
/// it, for good (seen: a websocket session retried its message for as long as a test
/// waited, after one run of its channel had timed out). So a lane that has not started
/// a run for [`Lane::claim_probe`]'s period admits one on its start time alone.
fn misses(start: Duration, cost: Duration, remaining: Duration, probe: bool) -> bool {
    if probe {
        start > remaining
    } else {
        start.saturating_add(cost) > remaining
    }
}

/// The shortest time between two probes of one lane.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Doublings of the time between probes after probes that ran out of time: a channel
/// whose runs always time out gets a probe every 8 × max(its cost, 1 s) at most, not a
/// compute slot for good.
const MAX_PROBE_BACKOFF: u8 = 3;

/// Scripts recurse on the native stack: give them room.
const THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;
/// How long an idle slot holder naps between looks at the queue.
const NAP: Duration = Duration::from_micros(50);
/// Idle this long, a slot holder sleeps until a producer wakes it.
const DEEP_SLEEP_AFTER: Duration = Duration::from_millis(2);
/// A spare thread idle this long ends.
pub const SPARE_RETIRE_AFTER: Duration = Duration::from_secs(10);
/// How often a run waiting for its slot back looks whether the pool is shutting down.
const RETURN_CHECK: Duration = Duration::from_millis(100);

/// Counters of the pool, readable at any time.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Runs holding a compute slot now.
    pub busy: AtomicUsize,
    /// Runs inside a wait (their slot given away) now.
    pub waiting: AtomicUsize,
    /// Runs back from a wait, queued for a slot.
    pub returning: AtomicUsize,
    /// Threads alive (slot holders, waiting runs and spares).
    pub threads: AtomicUsize,
    /// Threads parked without a slot.
    pub spare: AtomicUsize,
    pub completed: AtomicU64,
    /// Runs refused at admission (too many admitted, or could not start in time).
    pub rejected: AtomicU64,
    pub panicked: AtomicU64,
    /// Runs that ran inline on the thread that received them (`scenario::inline`),
    /// and inline runs stopped (then run here from their start).
    pub inline: AtomicU64,
    pub inline_stopped: AtomicU64,
    /// Wake-ups producers had to make (a measure of how often the pool went idle).
    pub wakeups: AtomicU64,
    /// Waits that gave their slot away.
    pub handoffs: AtomicU64,
    /// Queued runs refused because they could no longer finish in time.
    pub shed: AtomicU64,
    /// Spare threads started, and retired after idling.
    pub spawned: AtomicU64,
    pub retired: AtomicU64,
}

/// One channel's queue of runs and what its runs cost. Lanes with work are in the
/// pool's ring exactly once (`scheduled`, changed under the lane's lock).
#[derive(Default)]
pub struct Lane {
    queue: Mutex<LaneQueue>,
    /// Recent compute time of this channel's runs (µs, smoothed; 0 = none measured).
    cost_micros: AtomicU64,
    /// Runs queued in this lane (readable without the lock).
    len: AtomicUsize,
    /// Deadline of the newest queued run, µs since [`epoch`] (a lock-free look at whether
    /// shedding could refuse anything).
    tail_deadline: AtomicU64,
    /// When a run of this lane last started (or a probe was admitted), µs since
    /// [`epoch`].
    last_start: AtomicU64,
    /// Probes in a row that ran out of their time (each doubles the next probe's wait,
    /// up to [`MAX_PROBE_BACKOFF`] doublings).
    probe_misses: AtomicU8,
}

/// A fixed instant that deadlines are counted from in atomics.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64
}

#[derive(Default)]
struct LaneQueue {
    jobs: VecDeque<Queued>,
    scheduled: bool,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("queued", &self.len()).finish()
    }
}

impl Lane {
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Recent compute time of one run of this channel (zero until one was measured).
    pub fn recent_compute(&self) -> Duration {
        Duration::from_micros(self.cost_micros.load(Ordering::Relaxed))
    }

    /// Whether a run that its cost estimate would refuse may go as a probe: no run of
    /// this lane started for the longer of its cost and [`PROBE_EVERY`] (doubled for
    /// each probe in a row that ran out of time). One claim per period, however many
    /// callers ask at once.
    fn claim_probe(&self, cost: Duration, now: Instant) -> bool {
        let now = micros_since_epoch(now);
        let last = self.last_start.load(Ordering::Relaxed);
        let backoff = self
            .probe_misses
            .load(Ordering::Relaxed)
            .min(MAX_PROBE_BACKOFF);
        let period = (cost.max(PROBE_EVERY).as_micros() as u64) << backoff;
        now.saturating_sub(last) >= period
            && self
                .last_start
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// One compute slot: who holds it, and whether that holder sleeps until woken.
struct Slot {
    deep: AtomicBool,
    thread: Mutex<Option<Thread>>,
}

/// Where a thread without a slot receives one.
#[derive(Default)]
struct Grant {
    state: Mutex<GrantState>,
    cv: Condvar,
}

#[derive(Default)]
struct GrantState {
    role: Option<usize>,
    stop: bool,
}

impl Grant {
    fn give(&self, role: usize) {
        lock(&self.state).role = Some(role);
        self.cv.notify_one();
    }
}

#[derive(Default)]
struct Handoff {
    /// Runs back from a wait, oldest first.
    returners: VecDeque<Arc<Grant>>,
    /// Parked threads without a slot.
    spares: Vec<Arc<Grant>>,
}

struct Shared {
    ring: SegQueue<Arc<Lane>>,
    /// Jobs in all lanes.
    queued: AtomicUsize,
    /// Their expected compute, µs.
    queued_cost: AtomicU64,
    /// Lanes in the ring.
    active_lanes: AtomicUsize,
    /// Runs admitted and not yet ended (queued, computing or waiting).
    admitted: AtomicUsize,
    max_admitted: usize,
    max_threads: usize,
    slots: Vec<Slot>,
    handoff: Mutex<Handoff>,
    returners_waiting: AtomicUsize,
    shutdown: AtomicBool,
    /// Recent compute time of a run (slot held, waits excluded), µs, smoothed.
    compute_micros: AtomicU64,
    stats: PoolStats,
    logger: slog::Logger,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops the threads (after the queue drains) when the last pool handle goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.shutdown.store(true, Ordering::SeqCst);
        for s in &shared.slots {
            if let Some(t) = lock(&s.thread).as_ref() {
                t.unpark();
            }
        }
        let handoff = lock(&shared.handoff);
        for g in &handoff.spares {
            lock(&g.state).stop = true;
            g.cv.notify_one();
        }
    }
}

#[derive(Clone)]
pub struct ScenarioPool {
    owner: Arc<Owner>,
}

/// The run was not taken: the node is at its admission bound, or the run could not
/// start before its deadline. `retry_after` is the estimated wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// What the thread running a job knows about itself (set on pool threads only).
struct WorkerCtx {
    shared: Arc<Shared>,
    grant: Arc<Grant>,
    role: Option<usize>,
    /// Time spent in waits during the current job that gave the slot away.
    waited: Duration,
    /// Time spent in all waits during the current job (also those that kept the slot:
    /// no spare thread), as execution records report it.
    waited_all: Duration,
    /// The current job said it did not run after all ([`not_run`]).
    not_run: bool,
}

thread_local! {
    static WORKER: RefCell<Option<WorkerCtx>> = const { RefCell::new(None) };
}

impl ScenarioPool {
    /// Starts `threads` compute slots (one thread each) admitting at most
    /// `max_admitted` runs at once.
    pub fn start(
        threads: usize,
        max_admitted: usize,
        logger: slog::Logger,
    ) -> std::io::Result<ScenarioPool> {
        let threads = threads.max(1);
        let max_admitted = max_admitted.max(1);
        let shared = Arc::new(Shared {
            ring: SegQueue::new(),
            queued: AtomicUsize::new(0),
            queued_cost: AtomicU64::new(0),
            active_lanes: AtomicUsize::new(0),
            admitted: AtomicUsize::new(0),
            max_admitted,
            max_threads: threads + max_admitted,
            slots: (0..threads)
                .map(|_| Slot {
                    deep: AtomicBool::new(false),
                    thread: Mutex::new(None),
                })
                .collect(),
            handoff: Mutex::new(Handoff::default()),
            returners_waiting: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            compute_micros: AtomicU64::new(0),
            stats: PoolStats::default(),
            logger,
        });
        for role in 0..threads {
            spawn_worker(&shared, role)?;
        }
        Ok(ScenarioPool {
            owner: Arc::new(Owner(shared)),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.0
    }

    /// Admits a run into `lane` that should end by `deadline`, or refuses it at once
    /// with the estimated wait. `job` is later called with `Start::Run`, or with
    /// `Start::Refused` when the channel's runs turn out to cost more than the queue
    /// leaves it time for.
    pub fn submit(
        &self,
        lane: &Arc<Lane>,
        deadline: Instant,
        job: impl FnOnce(Start) + Send + 'static,
    ) -> Result<(), Refused> {
        let shared = self.shared();
        let before = shared.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(shared.clone());
        let cost = shared.lane_cost(lane);
        let start = shared.start_estimate(lane.len(), cost);
        let own = Duration::from_micros(cost);
        let now = Instant::now();
        let budget = deadline.saturating_duration_since(now);
        let full = before >= shared.max_admitted;
        let hopeless = misses(start, own, budget, false);
        // A run the estimate refuses may go as a probe if it can start in time; the
        // probe is claimed only by a run that is then admitted (a refusal must not use
        // it up).
        let probe =
            hopeless && !full && !misses(start, own, budget, true) && lane.claim_probe(own, now);
        if full || (hopeless && !probe) {
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            drop(admission);
            return Err(Refused {
                retry_after: (start + own).max(Duration::from_secs(1)),
            });
        }
        let job: Job = Box::new(move |start| {
            let _admission = admission;
            job(start)
        });
        let schedule = {
            let mut q = lock(&lane.queue);
            q.jobs.push_back(Queued {
                job,
                deadline,
                cost,
                probe,
            });
            lane.len.fetch_add(1, Ordering::Relaxed);
            lane.tail_deadline
                .store(micros_since_epoch(deadline), Ordering::Relaxed);
            shared.queued_cost.fetch_add(cost, Ordering::Relaxed);
            shared.queued.fetch_add(1, Ordering::SeqCst);
            !std::mem::replace(&mut q.scheduled, true)
        };
        if schedule {
            shared.active_lanes.fetch_add(1, Ordering::Relaxed);
            shared.ring.push(lane.clone());
        }
        shared.wake_one();
        Ok(())
    }

    /// Runs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.shared().queued.load(Ordering::Relaxed)
    }

    /// Runs admitted and not ended (queued, computing, waiting).
    pub fn admitted(&self) -> usize {
        self.shared().admitted.load(Ordering::Relaxed)
    }

    pub fn max_admitted(&self) -> usize {
        self.shared().max_admitted
    }

    /// Compute slots.
    pub fn slots(&self) -> usize {
        self.shared().slots.len()
    }

    /// Runs back from a wait, queued for a compute slot.
    pub fn returning(&self) -> usize {
        self.shared().returners_waiting.load(Ordering::Relaxed)
    }

    /// Recent compute time of one run.
    pub fn recent_compute(&self) -> Duration {
        Duration::from_micros(self.shared().compute_micros.load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> &PoolStats {
        &self.shared().stats
    }
}

/// Holds one admission; given back however the run ends (also when it is dropped unrun).
struct Admission(Arc<Shared>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// What a run of `lane` is expected to compute: the lane's own history, else the
    /// node's recent runs.
    fn lane_cost(&self, lane: &Lane) -> u64 {
        match lane.cost_micros.load(Ordering::Relaxed) {
            0 => self.compute_micros.load(Ordering::Relaxed),
            c => c,
        }
    }

    /// When a run behind `ahead_in_lane` runs of its own lane (each costing `own_cost`)
    /// would start. The lanes are served round-robin, so before it also run at most
    /// (ahead_in_lane + 1) runs of each other active lane (at the queue's average cost),
    /// and at most the whole queue; plus what the runs holding the slots have left (half
    /// a run on average).
    fn start_estimate(&self, ahead_in_lane: usize, own_cost: u64) -> Duration {
        let ahead = ahead_in_lane as u64;
        let queued = self.queued.load(Ordering::Relaxed) as u64;
        let queued_cost = self.queued_cost.load(Ordering::Relaxed);
        let others = (self.active_lanes.load(Ordering::Relaxed) as u64).saturating_sub(1);
        let average = queued_cost.checked_div(queued).unwrap_or(own_cost);
        let other_lanes = (ahead + 1)
            .saturating_mul(others)
            .saturating_mul(average)
            .min(queued_cost);
        let own_lane = ahead.saturating_mul(own_cost);
        let slots = self.slots.len() as u64;
        let busy = self.stats.busy.load(Ordering::Relaxed) as u64 >= slots;
        let residual = if busy {
            self.compute_micros.load(Ordering::Relaxed) / 2
        } else {
            0
        };
        Duration::from_micros(own_lane.saturating_add(other_lanes) / slots + residual)
    }

    /// Refuses the runs at the end of `lane` that can no longer finish by their
    /// deadline, now that its runs are known to cost `cost` (the newest runs have the
    /// latest deadlines, so they go first and quickly, instead of timing out later).
    fn shed_hopeless(&self, lane: &Lane, cost: u64, now: Instant) {
        // Without the lock first: can even the newest run still finish in time?
        let len = lane.len();
        if len == 0 {
            return;
        }
        let own = Duration::from_micros(cost);
        let finish = self.start_estimate(len - 1, cost) + own;
        if micros_since_epoch(now + finish) <= lane.tail_deadline.load(Ordering::Relaxed) {
            return;
        }
        let mut refused = Vec::new();
        {
            let mut q = lock(&lane.queue);
            while let Some(last) = q.jobs.back() {
                let start = self.start_estimate(q.jobs.len() - 1, cost);
                let remaining = last.deadline.saturating_duration_since(now);
                if !misses(start, own, remaining, last.probe) {
                    break;
                }
                let finish = start + own;
                if let Some(last) = q.jobs.pop_back() {
                    lane.len.fetch_sub(1, Ordering::Relaxed);
                    self.queued_cost.fetch_sub(last.cost, Ordering::Relaxed);
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    refused.push((last.job, finish));
                }
            }
            // An emptied lane stays in the ring until popped (pop copes with that).
        }
        for (job, finish) in refused {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            job(Start::Refused(Refused {
                retry_after: finish.max(Duration::from_secs(1)),
            }));
        }
    }

    /// Wakes one slot holder that sleeps for good (napping ones look by themselves).
    fn wake_one(&self) {
        // Claiming the flag makes back-to-back jobs wake different sleepers.
        if let Some(s) = self.slots.iter().find(|s| {
            s.deep
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        }) {
            self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = lock(&s.thread).as_ref() {
                t.unpark();
            }
        }
    }

    /// The next run, round-robin over the lanes, with its lane.
    fn pop(&self) -> Option<(Queued, Arc<Lane>)> {
        loop {
            let lane = self.ring.pop()?;
            let (next, more) = {
                let mut q = lock(&lane.queue);
                let next = q.jobs.pop_front();
                let more = !q.jobs.is_empty();
                if !more {
                    q.scheduled = false;
                }
                (next, more)
            };
            if more {
                // More work: back to the end of the ring (still scheduled).
                self.ring.push(lane.clone());
            } else {
                self.active_lanes.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(next) = next {
                lane.len.fetch_sub(1, Ordering::Relaxed);
                self.queued_cost.fetch_sub(next.cost, Ordering::Relaxed);
                self.queued.fetch_sub(1, Ordering::SeqCst);
                return Some((next, lane));
            }
            // A lane emptied by shedding: look at the next one.
        }
    }

    /// Gives `role` to a returning run, else a spare thread, else a new thread. False
    /// when none could take it (thread bound reached, or the OS refused a thread).
    fn hand_off(self: &Arc<Self>, role: usize) -> bool {
        let mut handoff = lock(&self.handoff);
        if let Some(ret) = self.take_returner(&mut handoff) {
            drop(handoff);
            ret.give(role);
            return true;
        }
        if let Some(spare) = handoff.spares.pop() {
            self.stats.spare.fetch_sub(1, Ordering::Relaxed);
            drop(handoff);
            spare.give(role);
            return true;
        }
        drop(handoff);
        if self.stats.threads.load(Ordering::Relaxed) >= self.max_threads {
            return false;
        }
        match spawn_worker(self, role) {
            Ok(()) => {
                self.stats.spawned.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                slog::warn!(self.logger, "could not start a scenario thread; the run keeps its slot while it waits"; "error" => %e);
                false
            }
        }
    }

    /// The oldest run back from a wait, off the list.
    fn take_returner(&self, handoff: &mut Handoff) -> Option<Arc<Grant>> {
        let ret = handoff.returners.pop_front();
        if ret.is_some() {
            self.returners_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        ret
    }

    /// Queues for a slot after a wait; None when the pool shuts down (the run then
    /// finishes without one).
    fn reacquire(&self, grant: &Arc<Grant>) -> Option<usize> {
        {
            let mut handoff = lock(&self.handoff);
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            handoff.returners.push_back(grant.clone());
            self.returners_waiting.fetch_add(1, Ordering::SeqCst);
        }
        // An idle slot holder may sleep for good: wake it to hand its slot over.
        self.wake_one();
        loop {
            let state = lock(&grant.state);
            let (mut state, _) = grant
                .cv
                .wait_timeout_while(state, RETURN_CHECK, |s| s.role.is_none())
                .unwrap_or_else(|e| e.into_inner());
            if let Some(role) = state.role.take() {
                return Some(role);
            }
            drop(state);
            if self.shutdown.load(Ordering::SeqCst) {
                let mut handoff = lock(&self.handoff);
                if let Some(i) = handoff.returners.iter().position(|g| Arc::ptr_eq(g, grant)) {
                    handoff.returners.remove(i);
                    self.returners_waiting.fetch_sub(1, Ordering::SeqCst);
                    return None;
                }
                // Someone took us off the list: the slot is on its way.
            }
        }
    }

    /// Parks a thread that gave its slot away until it gets one (Some) or retires /
    /// the pool stops (None).
    fn park_spare(&self, grant: &Arc<Grant>) -> Option<usize> {
        {
            let mut handoff = lock(&self.handoff);
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            handoff.spares.push(grant.clone());
            self.stats.spare.fetch_add(1, Ordering::Relaxed);
        }
        let mut retire_at = Some(Instant::now() + SPARE_RETIRE_AFTER);
        loop {
            let mut state = lock(&grant.state);
            if let Some(role) = state.role.take() {
                return Some(role);
            }
            if state.stop {
                return None;
            }
            match retire_at {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        drop(state);
                        let mut handoff = lock(&self.handoff);
                        if let Some(i) = handoff.spares.iter().position(|g| Arc::ptr_eq(g, grant)) {
                            handoff.spares.remove(i);
                            self.stats.spare.fetch_sub(1, Ordering::Relaxed);
                            self.stats.retired.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                        // Taken off the list by someone about to give us a slot.
                        retire_at = None;
                        continue;
                    }
                    drop(grant.cv.wait_timeout(state, left));
                }
                None => {
                    drop(grant.cv.wait(state));
                }
            }
        }
    }

    /// Adds a run's compute time to the node's and its lane's estimates; a probe's
    /// replaces its lane's (the estimate it was admitted against was in doubt).
    fn record_compute(&self, lane: &Lane, took: Duration, probe: bool) -> u64 {
        let sample = took.as_micros().min(u128::from(u32::MAX)) as i64;
        // fetch_update: a run ending at the same moment on another thread does not
        // overwrite this sample with one computed from the value before it.
        let smooth = |cell: &AtomicU64, weight: i64| {
            let step = |old: u64| {
                let old = old as i64;
                let new = if old == 0 || weight == 1 {
                    sample
                } else {
                    old + (sample - old) / weight
                };
                new.max(1) as u64
            };
            match cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some(step(old))) {
                Ok(old) | Err(old) => step(old),
            }
        };
        smooth(&self.compute_micros, NODE_SMOOTHING);
        smooth(&lane.cost_micros, if probe { 1 } else { LANE_SMOOTHING })
    }
}

fn spawn_worker(shared: &Arc<Shared>, role: usize) -> std::io::Result<()> {
    let n = shared.stats.threads.fetch_add(1, Ordering::Relaxed);
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("scenario-{n}"))
        .stack_size(THREAD_STACK_BYTES)
        .spawn(move || {
            let stats_shared = thread_shared.clone();
            work(thread_shared, role);
            WORKER.with(|w| w.borrow_mut().take());
            // Without this, 500 threads that had waited on an upstream left ~440 MB
            // behind when they retired (measured).
            crate::alloc::give_back_thread_heap();
            stats_shared.stats.threads.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        shared.stats.threads.fetch_sub(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

fn current_role() -> Option<usize> {
    WORKER.with(|w| w.borrow().as_ref().and_then(|w| w.role))
}

fn set_role(role: Option<usize>) {
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.role = role;
        }
    });
}

fn take_slot(shared: &Shared, role: usize) {
    *lock(&shared.slots[role].thread) = Some(std::thread::current());
}

// Not inlined into the thread's start: profiles name scenario threads by this frame
// (benches/callgrind_run.sh), and a release build optimised across crates inlined it.
#[inline(never)]
fn work(shared: Arc<Shared>, role: usize) {
    let grant = Arc::new(Grant::default());
    take_slot(&shared, role);
    WORKER.with(|w| {
        *w.borrow_mut() = Some(WorkerCtx {
            shared: shared.clone(),
            grant: grant.clone(),
            role: Some(role),
            waited: Duration::ZERO,
            waited_all: Duration::ZERO,
            not_run: false,
        })
    });
    let mut idle_since: Option<Instant> = None;
    loop {
        let Some(role) = current_role() else {
            return; // finished a run without a slot (shutdown)
        };
        // Runs back from a wait go before new runs.
        if shared.returners_waiting.load(Ordering::SeqCst) > 0 {
            let returner = shared.take_returner(&mut lock(&shared.handoff));
            if let Some(returner) = returner {
                set_role(None);
                returner.give(role);
                idle_since = None;
                match shared.park_spare(&grant) {
                    Some(new_role) => {
                        take_slot(&shared, new_role);
                        set_role(Some(new_role));
                        continue;
                    }
                    None => return,
                }
            }
        }
        if let Some((queued, lane)) = shared.pop() {
            idle_since = None;
            run_job(&shared, queued, &lane);
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
        // Announce the deep sleep, then look once more: a producer (or returning run)
        // that came before seeing the flag left work we find here; one that came after
        // unparks us.
        let me = &shared.slots[role];
        me.deep.store(true, Ordering::SeqCst);
        if shared.queued.load(Ordering::SeqCst) == 0
            && shared.returners_waiting.load(Ordering::SeqCst) == 0
            && !shared.shutdown.load(Ordering::SeqCst)
        {
            std::thread::park();
        }
        me.deep.store(false, Ordering::SeqCst);
        idle_since = None;
    }
}

fn run_job(shared: &Shared, queued: Queued, lane: &Lane) {
    // A run past its deadline, or that can no longer finish in time (its channel's runs
    // cost more than the queue left it), is refused now, quickly, not run into a timeout.
    let cost = lane.cost_micros.load(Ordering::Relaxed);
    let own = Duration::from_micros(cost);
    let now = Instant::now();
    let remaining = queued.deadline.saturating_duration_since(now);
    if remaining.is_zero() || misses(Duration::ZERO, own, remaining, queued.probe) {
        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        shared.stats.shed.fetch_add(1, Ordering::Relaxed);
        (queued.job)(Start::Refused(Refused {
            retry_after: (shared.start_estimate(lane.len(), cost) + own)
                .max(Duration::from_secs(1)),
        }));
        return;
    }
    // fetch_max: a probe claimed a moment ago keeps its (later) mark.
    lane.last_start
        .fetch_max(micros_since_epoch(now), Ordering::Relaxed);
    shared.stats.busy.fetch_add(1, Ordering::Relaxed);
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.waited = Duration::ZERO;
            w.waited_all = Duration::ZERO;
            w.not_run = false;
        }
    });
    let (job, probe, deadline) = (queued.job, queued.probe, queued.deadline);
    if catch_unwind(AssertUnwindSafe(move || job(Start::Run))).is_err() {
        shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
        slog::error!(shared.logger, "a scenario job panicked; the thread goes on");
    }
    let (waited, ran) = WORKER.with(|w| {
        w.borrow()
            .as_ref()
            .map_or((Duration::ZERO, true), |w| (w.waited, !w.not_run))
    });
    let ended = Instant::now();
    // A job that did not run (its caller had gone) teaches nothing about its lane.
    let cost = if ran {
        if probe {
            let missed = ended >= deadline;
            let _ = lane
                .probe_misses
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(if missed { n.saturating_add(1) } else { 0 })
                });
        }
        shared.record_compute(
            lane,
            ended.saturating_duration_since(now).saturating_sub(waited),
            probe,
        )
    } else {
        lane.cost_micros.load(Ordering::Relaxed)
    };
    shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
    shared.stats.completed.fetch_add(1, Ordering::Relaxed);
    shared.shed_hopeless(lane, cost, ended);
}

/// Called by a job that was told to run but did not (its caller had gone): its time is
/// not its lane's cost.
pub fn not_run() {
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.not_run = true;
        }
    });
}

/// Time the job running on this thread has spent in waits so far ([`blocking`]):
/// zero off pool threads.
pub fn waited() -> Duration {
    WORKER.with(|w| w.borrow().as_ref().map_or(Duration::ZERO, |w| w.waited_all))
}

/// Runs `wait` without holding a compute slot: on a pool thread holding one, the slot
/// goes to another thread for the length of the wait and is queued for (ahead of new
/// runs) afterwards. Anywhere else (tests, the CLI, a nested wait) it just runs `wait`.
/// Every wait must be bounded by the run's deadline: this only moves who computes.
pub fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    let ctx = WORKER.with(|w| {
        w.borrow()
            .as_ref()
            .and_then(|w| w.role.map(|r| (w.shared.clone(), w.grant.clone(), r)))
    });
    let Some((shared, grant, role)) = ctx else {
        return wait();
    };
    if !shared.hand_off(role) {
        let started = Instant::now();
        let out = wait();
        let waited = started.elapsed();
        WORKER.with(|w| {
            if let Some(w) = w.borrow_mut().as_mut() {
                w.waited_all += waited;
            }
        });
        return out;
    }
    set_role(None);
    shared.stats.handoffs.fetch_add(1, Ordering::Relaxed);
    shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
    shared.stats.waiting.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let out = wait();
    shared.stats.waiting.fetch_sub(1, Ordering::Relaxed);
    let role = shared.reacquire(&grant);
    if let Some(role) = role {
        take_slot(&shared, role);
    }
    shared.stats.busy.fetch_add(1, Ordering::Relaxed);
    let waited = started.elapsed();
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().as_mut() {
            w.role = role;
            w.waited += waited;
            w.waited_all += waited;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    const LONG: Duration = Duration::from_secs(30);

    fn later() -> Instant {
        Instant::now() + LONG
    }

    #[test]
    fn runs_jobs_after_deep_sleep_and_refuses_past_admission() {
        let pool = ScenarioPool::start(2, 6, logger()).unwrap();
        let lane = Arc::new(Lane::default());
        let (tx, rx) = mpsc::channel();
        for round in 0..3 {
            let tx = tx.clone();
            pool.submit(&lane, later(), move |_| tx.send(round).unwrap())
                .unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), round);
            // Long enough for both threads to fall into deep sleep.
            std::thread::sleep(DEEP_SLEEP_AFTER * 3);
        }
        // Block both slots, queue four more, and one more is refused.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (started_tx, started_rx) = mpsc::channel();
        for _ in 0..2 {
            let (r, s) = (release_rx.clone(), started_tx.clone());
            pool.submit(&lane, later(), move |_| {
                s.send(()).unwrap();
                let _ = r.lock().unwrap().recv();
            })
            .unwrap();
        }
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        for _ in 0..4 {
            pool.submit(&lane, later(), |_| {}).unwrap();
        }
        assert!(pool.submit(&lane, later(), |_| {}).is_err());
        assert_eq!(pool.stats().rejected.load(Ordering::Relaxed), 1);
        drop(release_tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.admitted() > 0 {
            assert!(Instant::now() < deadline, "admissions were not given back");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_thread() {
        let pool = ScenarioPool::start(1, 4, logger()).unwrap();
        let lane = Arc::new(Lane::default());
        pool.submit(&lane, later(), |_| panic!("boom")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.submit(&lane, later(), move |_| tx.send(42).unwrap())
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 42);
        assert_eq!(pool.stats().panicked.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn waiting_runs_give_their_slot_away() {
        // One slot; eight runs wait on a gate; a ninth run still computes and answers.
        let pool = ScenarioPool::start(1, 64, logger()).unwrap();
        let lane = Arc::new(Lane::default());
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..8 {
            let (gate, done) = (gate.clone(), done_tx.clone());
            pool.submit(&lane, later(), move |_| {
                blocking(|| {
                    let (open, cv) = &*gate;
                    let mut open = open.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                });
                done.send(i).unwrap();
            })
            .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().waiting.load(Ordering::Relaxed) < 8 {
            assert!(Instant::now() < deadline, "the eight runs did not all wait");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (tx, rx) = mpsc::channel();
        let other = Arc::new(Lane::default());
        pool.submit(&other, later(), move |_| tx.send("other").unwrap())
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "other");
        assert!(done_rx.try_recv().is_err(), "the gate is still closed");
        assert_eq!(pool.stats().waiting.load(Ordering::Relaxed), 8);
        assert_eq!(pool.stats().threads.load(Ordering::Relaxed), 9);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let mut seen: Vec<i32> = (0..8)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn runs_that_cannot_finish_in_time_are_refused_early() {
        // One slot; a channel whose runs compute 50 ms floods it before any run has
        // been measured. Once the first run teaches the pool its cost, the runs that
        // cannot finish by their deadline are refused at once, not run into a timeout.
        let pool = ScenarioPool::start(1, 64, logger()).unwrap();
        let lane = Arc::new(Lane::default());
        let started = Instant::now();
        let deadline = started + Duration::from_millis(600);
        let (tx, rx) = mpsc::channel();
        for i in 0..20 {
            let tx = tx.clone();
            pool.submit(&lane, deadline, move |start| {
                if start == Start::Run {
                    std::thread::sleep(Duration::from_millis(50));
                }
                tx.send((i, start, Instant::now())).unwrap();
            })
            .unwrap();
        }
        let outcomes: Vec<_> = (0..20)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        let ran = outcomes.iter().filter(|o| o.1 == Start::Run).count();
        let refused: Vec<_> = outcomes.iter().filter(|o| o.1 != Start::Run).collect();
        assert!((5..=12).contains(&ran), "ran {ran}");
        assert_eq!(ran + refused.len(), 20);
        // The refused ones heard so well before their deadline, and the runs that
        // ran all ended by it.
        for (i, _, at) in &refused {
            assert!(
                *at < deadline - Duration::from_millis(200),
                "run {i} refused late"
            );
        }
        for (i, start, at) in &outcomes {
            if *start == Start::Run {
                assert!(
                    *at <= deadline + Duration::from_millis(60),
                    "run {i} ended late"
                );
            }
        }
        assert!(lane.recent_compute() >= Duration::from_millis(45));
        assert_eq!(
            pool.stats().shed.load(Ordering::Relaxed),
            refused.len() as u64
        );
    }

    #[test]
    fn a_lane_whose_runs_timed_out_is_not_refused_for_good() {
        // A run that computes past its whole budget teaches its lane a cost no later
        // run could meet. Later runs are refused on that estimate for a while, then one
        // goes as a probe, runs, and teaches the lane its cost again.
        let pool = ScenarioPool::start(1, 64, logger()).unwrap();
        let lane = Arc::new(Lane::default());
        let budget = Duration::from_millis(300);
        let (tx, rx) = mpsc::channel();
        let job = |tx: mpsc::Sender<Start>, work: Duration| {
            move |start| {
                if start == Start::Run {
                    std::thread::sleep(work);
                }
                tx.send(start).unwrap();
            }
        };
        let first = Instant::now();
        pool.submit(
            &lane,
            first + budget,
            job(tx.clone(), Duration::from_millis(400)),
        )
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Start::Run);
        let deadline = Instant::now() + Duration::from_secs(10);
        // A run's cost is recorded once its job has returned.
        let cost_becomes = |what: &str, ok: &dyn Fn(Duration) -> bool| {
            while !ok(lane.recent_compute()) {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        cost_becomes("the run's cost was recorded", &|c| c >= budget);
        let submit = || {
            pool.submit(
                &lane,
                Instant::now() + budget,
                job(tx.clone(), Duration::ZERO),
            )
            .is_ok()
        };
        let refused = !submit();
        // The first probe may go once the first run started a period (1 s) ago.
        if first.elapsed() < PROBE_EVERY {
            assert!(refused, "refused on the estimate at first");
        }
        // Until a run runs: refused at admission, or (on a slow machine) at its turn.
        loop {
            assert!(Instant::now() < deadline, "no probe ever ran");
            if submit() && rx.recv_timeout(Duration::from_secs(5)).unwrap() == Start::Run {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cost_becomes("the probe taught the lane its cost", &|c| c < budget);
    }

    #[test]
    fn probes_are_one_per_period_and_back_off_after_misses() {
        let lane = Lane::default();
        let ms = Duration::from_millis;
        let t0 = epoch() + Duration::from_secs(100);
        lane.last_start
            .store(micros_since_epoch(t0), Ordering::Relaxed);
        let cost = ms(1500);
        assert!(
            !lane.claim_probe(cost, t0 + ms(1499)),
            "a period is the cost"
        );
        assert!(lane.claim_probe(cost, t0 + ms(1500)));
        assert!(
            !lane.claim_probe(cost, t0 + ms(1500)),
            "one claim per period"
        );
        let t1 = t0 + ms(1500);
        assert!(
            lane.claim_probe(ms(10), t1 + PROBE_EVERY),
            "at least PROBE_EVERY apart"
        );
        let t2 = t1 + PROBE_EVERY;
        lane.probe_misses.store(2, Ordering::Relaxed);
        assert!(
            !lane.claim_probe(cost, t2 + ms(5999)),
            "two misses: 4 periods"
        );
        assert!(lane.claim_probe(cost, t2 + ms(6000)));
        let t3 = t2 + ms(6000);
        lane.probe_misses.store(200, Ordering::Relaxed);
        assert!(
            !lane.claim_probe(cost, t3 + ms(11_999)),
            "at most 8 periods"
        );
        assert!(lane.claim_probe(cost, t3 + ms(12_000)));
    }

    #[test]
    fn lanes_are_served_round_robin() {
        let pool = ScenarioPool::start(1, 64, logger()).unwrap();
        let (a, b) = (Arc::new(Lane::default()), Arc::new(Lane::default()));
        // Hold the only slot so that everything below queues.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel();
        pool.submit(&a, later(), move |_| {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv();
        })
        .unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..10 {
            let order = order.clone();
            pool.submit(&a, later(), move |_| {
                order.lock().unwrap().push(format!("a{i}"))
            })
            .unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let o = order.clone();
        pool.submit(&b, later(), move |_| {
            o.lock().unwrap().push("b".into());
            tx.send(()).unwrap();
        })
        .unwrap();
        drop(release_tx);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let order = order.lock().unwrap();
        let at = order.iter().position(|s| s == "b").unwrap();
        assert!(at <= 1, "b ran after {at} runs of a: {order:?}");
    }
}
