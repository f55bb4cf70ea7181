//! Dispatcher: takes a channel's scenario run from an HTTP (or websocket) handler to a
//! scenario thread, enforcing the per-channel in-flight limit and the pool's queue
//! bound, and hands the reply back through a oneshot channel.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::channel_state::StateStore;
use super::dry_run::Ended;
use super::inline;
use super::pool::{Lane, ScenarioPool, Start};
use super::{
    ChannelHost, CompileError, Compiled, RunContext, ScenarioError, ScenarioReply, ScenarioRuntime,
    StartParams,
};
use crate::actors::{ChannelHandle, ChannelStats, ScriptKind};
use crate::db::models::Channel;
use crate::executions::capture::{self, Finished, RecordingHost};
use crate::executions::{ExecutionLog, History, Pending};

pub type RunResult = Result<ScenarioReply, ScenarioError>;

/// A run's start parameters as its caller holds them.
pub enum Params<'a> {
    /// Shared already (a webhook's request, made once for its run).
    Shared(Arc<dyn StartParams>),
    /// Borrowed from the caller (a websocket message and its session): a run that ends
    /// inline reads them where they are; they are made shared ([`ShareParams`]) only
    /// when the run goes to the pool or into the execution history.
    Borrowed(&'a dyn ShareParams),
}

/// Start parameters held by reference that can make a shared copy of themselves.
pub trait ShareParams: StartParams {
    fn share(&self) -> Arc<dyn StartParams>;
}

impl Params<'_> {
    fn get(&self) -> &dyn StartParams {
        match self {
            Params::Shared(params) => &**params,
            Params::Borrowed(params) => *params,
        }
    }

    fn into_shared(self) -> Arc<dyn StartParams> {
        match self {
            Params::Shared(params) => params,
            Params::Borrowed(params) => params.share(),
        }
    }
}

pub struct Dispatcher {
    pool: ScenarioPool,
    /// The event log of each domain this node serves (a run emits into its channel's).
    events: Vec<crate::events::EventService>,
    /// Channel state (`state_get`...), shared by every domain (keyed by channel id).
    state: Option<Arc<StateStore>>,
    runtime: Arc<dyn ScenarioRuntime>,
    timeout: Duration,
    max_in_flight: usize,
    logger: slog::Logger,
    /// Where recorded runs go (the execution history); None: nothing is recorded.
    executions: Option<Arc<ExecutionLog>>,
    /// How long a run may compute inline on the calling thread (`scenario::inline`);
    /// None: every run goes to the pool.
    inline: Option<Duration>,
}

/// Holds one in-flight slot of a channel; gives it back however the run ends (also
/// when the job is refused or dropped before it runs).
struct InFlight(Arc<ChannelStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Dispatcher {
    pub fn new(
        pool: ScenarioPool,
        events: Vec<crate::events::EventService>,
        state: Option<Arc<StateStore>>,
        runtime: Arc<dyn ScenarioRuntime>,
        timeout: Duration,
        max_in_flight: usize,
        logger: slog::Logger,
    ) -> Dispatcher {
        Dispatcher {
            pool,
            events,
            state,
            runtime,
            timeout,
            max_in_flight,
            logger,
            executions: None,
            inline: None,
        }
    }

    /// Lets runs that touch nothing outside themselves run inline for up to `bound`
    /// (zero: never).
    pub fn with_inline(mut self, bound: Duration) -> Dispatcher {
        self.inline = (!bound.is_zero()).then_some(bound);
        self
    }

    /// Records runs in `log` according to each channel's `history`.
    pub fn with_executions(mut self, log: Arc<ExecutionLog>) -> Dispatcher {
        self.executions = Some(log);
        self
    }

    /// The execution history's queue, when runs are recorded.
    pub fn executions(&self) -> Option<&Arc<ExecutionLog>> {
        self.executions.as_ref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn pool(&self) -> &ScenarioPool {
        &self.pool
    }

    pub fn runtime(&self) -> &Arc<dyn ScenarioRuntime> {
        &self.runtime
    }

    /// The node's channel state store.
    pub fn state(&self) -> Option<&Arc<StateStore>> {
        self.state.as_ref()
    }

    /// The event log a run of a channel of `domain` emits into (this node's first
    /// domain's when it does not serve that one).
    pub fn events_for(&self, domain: &str) -> Option<&crate::events::EventService> {
        self.events
            .iter()
            .find(|e| e.domain() == domain)
            .or(self.events.first())
    }

    /// Queues a dry run of `source` (compiled on the scenario thread) in `lane`, with
    /// the deadline and limits of a real run and `host` recording what it does. Not
    /// counted in the channel's in-flight runs or statistics; admitted like any run
    /// (refused when the node is at its bound).
    pub fn dry_run(
        &self,
        lane: &Arc<Lane>,
        channel: Arc<Channel>,
        source: String,
        params: Arc<dyn StartParams>,
        host: Arc<dyn ChannelHost>,
    ) -> Result<oneshot::Receiver<Ended>, ScenarioError> {
        let deadline = Instant::now() + self.timeout;
        let runtime = self.runtime.clone();
        let secrets = Arc::new(crate::channels::run_secrets(&channel));
        let logger = self
            .logger
            .new(slog::o!("channel" => channel.code.clone(), "dry_run" => true));
        let (tx, rx) = oneshot::channel();
        let job = move |start: Start| {
            let ended = match start {
                Start::Refused(refused) => Ended {
                    outcome: Err(ScenarioError::QueueFull {
                        retry_after_secs: retry_secs(refused.retry_after),
                    }),
                    duration: Duration::ZERO,
                    operations: None,
                },
                Start::Run => match runtime.compile(&source) {
                    Err(e) => Ended {
                        outcome: Err(ScenarioError::Compile(e)),
                        duration: Duration::ZERO,
                        operations: None,
                    },
                    Ok(script) => {
                        let started = Instant::now();
                        let outcome = runtime.run(
                            &script,
                            RunContext {
                                channel: &channel,
                                secrets: &secrets,
                                params: &*params,
                                deadline,
                                logger: &logger,
                                host: &host,
                            },
                        );
                        Ended {
                            outcome,
                            duration: started.elapsed(),
                            operations: runtime.last_operations(),
                        }
                    }
                },
            };
            let _ = tx.send(ended);
        };
        self.pool
            .submit(lane, deadline, job)
            .map_err(|refused| ScenarioError::QueueFull {
                retry_after_secs: retry_secs(refused.retry_after),
            })?;
        Ok(rx)
    }

    /// Compiles a script the way runs will (used to validate on save).
    pub fn compile(&self, source: &str) -> Result<Compiled, CompileError> {
        self.runtime.compile(source)
    }

    /// Starts a run of one of the channel's scripts: inline on this thread when it can
    /// (`scenario::inline`), else queued on the pool. With `wait`, a queued run's
    /// outcome comes through the returned receiver; without, it goes on in the
    /// background and its failure is only logged. Refusals (queue full, channel busy)
    /// come back at once.
    pub fn submit(
        &self,
        handle: Arc<ChannelHandle>,
        kind: ScriptKind,
        params: Params<'_>,
        wait: bool,
    ) -> Result<Submitted, ScenarioError> {
        let before = handle.stats.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(handle.stats.clone());
        if before >= self.max_in_flight {
            handle.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ScenarioError::ChannelBusy);
        }
        let Some(events) = self.events_for(&handle.channel.domain) else {
            return Err(ScenarioError::Unavailable(
                "no event log for the channel's domain".into(),
            ));
        };
        // A channel with history records its runs: its recording host notes what they
        // do. Without, this is the one branch a run pays.
        let history = handle.history;
        let recording = match &self.executions {
            Some(log) if history != History::Off => Some((
                log.clone(),
                handle.recording_host(events, self.state.as_ref(), log.max_recorded_bytes),
            )),
            _ => None,
        };
        let host: Arc<dyn ChannelHost> = match &recording {
            Some((_, recorder)) => recorder.clone(),
            None => handle.host(events, self.state.as_ref()),
        };
        let submitted = Instant::now();
        let run = Run {
            submitted,
            deadline: submitted + self.timeout,
            handle,
            kind,
            params,
            host,
            recording,
            slot,
        };
        let run = match self.try_inline(run, wait) {
            Ok(outcome) => return Ok(Submitted::Ran(outcome)),
            Err(run) => run.shared(),
        };
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let runtime = self.runtime.clone();
        let base_logger = self.logger.clone();
        let stats = run.handle.stats.clone();
        let deadline = run.deadline;
        let job = move |start: Start| {
            // A waiting caller that already gave up (timeout, disconnect) needs no run.
            if tx.as_ref().is_some_and(|tx| tx.is_closed()) {
                if start == Start::Run {
                    crate::scenario::pool::not_run();
                }
                return;
            }
            // Refused in the queue (past its deadline, or its channel's runs cost more
            // than the queue left it time for): answered 503, not run.
            if let Start::Refused(refused) = start {
                run.handle.stats.rejected.fetch_add(1, Ordering::Relaxed);
                drop(run);
                if let Some(tx) = tx {
                    let _ = tx.send(Err(ScenarioError::QueueFull {
                        retry_after_secs: retry_secs(refused.retry_after),
                    }));
                }
                return;
            }
            let logger = run.handle.logger(&base_logger);
            let (outcome, duration) = match run.handle.script(run.kind, runtime.as_ref()) {
                Ok(script) => run.execute(runtime.as_ref(), script, logger),
                Err(e) => (Err(ScenarioError::Compile(e.clone())), Duration::ZERO),
            };
            let (outcome, record) = run.finish(outcome, duration, &base_logger, tx.is_some());
            if let Some(tx) = tx {
                let _ = tx.send(outcome);
            }
            record.queue();
        };
        // A refused job is dropped unrun; its slot is given back on drop.
        self.pool
            .submit(&stats.lane, deadline, job)
            .map_err(|refused| {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                ScenarioError::QueueFull {
                    retry_after_secs: retry_secs(refused.retry_after),
                }
            })?;
        Ok(match rx {
            Some(rx) => Submitted::Queued(rx),
            None => Submitted::Background,
        })
    }

    /// Runs `run` here when its script may run inline and ends so; gives it back
    /// untouched (nothing it did was seen) when it must go to the pool.
    fn try_inline<'p>(&self, run: Run<'p>, waiting: bool) -> Result<RunResult, Run<'p>> {
        let Some(bound) = self.inline else {
            return Err(run);
        };
        let strikes = run.handle.inline_strikes(run.kind);
        if !strikes.allowed() || run.params.get().input_bytes() > inline::INLINE_MAX_INPUT_BYTES {
            return Err(run);
        }
        // Compiling is left to the pool (a long script compiles for a while).
        let Some(Ok(script)) = run.handle.compiled(run.kind) else {
            return Err(run);
        };
        let logger = run.handle.logger(&self.logger);
        let stats = self.pool.stats();
        let ran = catch_unwind(AssertUnwindSafe(|| {
            run.execute_inline(self.runtime.as_ref(), script, logger, bound)
        }));
        let (outcome, duration) = match ran {
            Ok(Ok(ran)) => ran,
            Ok(Err(stop)) => {
                strikes.note(stop);
                stats.inline_stopped.fetch_add(1, Ordering::Relaxed);
                return Err(run);
            }
            Err(_) => {
                // What the run left on this worker thread goes (the runtime's run
                // state is dropped by its own guard); the script runs on the pool from
                // now on.
                capture::end(false);
                strikes.note(inline::Stop::Effect);
                stats.panicked.fetch_add(1, Ordering::Relaxed);
                slog::error!(
                    logger,
                    "an inline scenario run panicked; the thread goes on"
                );
                (Err(ScenarioError::Panicked), Duration::ZERO)
            }
        };
        // A run that ended well past its bound (its last operations were long ones)
        // counts as a stop by the bound: such a script soon goes to the pool.
        if duration > bound * 2 {
            strikes.note(inline::Stop::Bound);
        } else {
            strikes.ended_in_time();
        }
        stats.inline.fetch_add(1, Ordering::Relaxed);
        let (outcome, record) = run.finish(outcome, duration, &self.logger, waiting);
        record.queue();
        Ok(outcome)
    }
}

/// How a run was started.
pub enum Submitted {
    /// It ran inline, on the calling thread, and this is its outcome.
    Ran(RunResult),
    /// It is queued; its outcome will come through this.
    Queued(oneshot::Receiver<RunResult>),
    /// It is queued and nobody waits for it.
    Background,
}

/// A run about to start, wherever it runs.
struct Run<'p> {
    handle: Arc<ChannelHandle>,
    kind: ScriptKind,
    params: Params<'p>,
    /// When it was submitted (an inline run's start).
    submitted: Instant,
    deadline: Instant,
    host: Arc<dyn ChannelHost>,
    /// Where its record goes, when its channel keeps history.
    recording: Option<(Arc<ExecutionLog>, Arc<RecordingHost>)>,
    /// Its place in its channel's in-flight runs (given back when dropped).
    slot: InFlight,
}

impl Run<'_> {
    /// The run with its parameters shared, to go to the pool.
    fn shared(self) -> Run<'static> {
        Run {
            handle: self.handle,
            kind: self.kind,
            params: Params::Shared(self.params.into_shared()),
            submitted: self.submitted,
            deadline: self.deadline,
            host: self.host,
            recording: self.recording,
            slot: self.slot,
        }
    }

    /// Runs the script on the pool's thread.
    fn execute(
        &self,
        runtime: &dyn ScenarioRuntime,
        script: &Compiled,
        logger: &slog::Logger,
    ) -> (RunResult, Duration) {
        self.begin_capture();
        let started = Instant::now();
        let outcome = runtime.run(script, self.context(logger));
        (outcome, started.elapsed())
    }

    /// Runs the script here within `bound`; `Err` when it was stopped, with nothing
    /// it did kept.
    fn execute_inline(
        &self,
        runtime: &dyn ScenarioRuntime,
        script: &Compiled,
        logger: &slog::Logger,
        bound: Duration,
    ) -> Result<(RunResult, Duration), inline::Stop> {
        self.begin_capture();
        match runtime.run_inline(script, self.context(logger), self.submitted + bound) {
            Ok(outcome) => Ok((outcome, self.submitted.elapsed())),
            Err(stop) => {
                capture::end(false);
                Err(stop)
            }
        }
    }

    fn begin_capture(&self) {
        if let Some((_, recorder)) = &self.recording {
            capture::begin(recorder.masker().scan_bytes());
        }
    }

    fn context<'a>(&'a self, logger: &'a slog::Logger) -> RunContext<'a> {
        RunContext {
            channel: &self.handle.channel,
            secrets: self.handle.secrets(),
            params: self.params.get(),
            deadline: self.deadline,
            logger,
            host: &self.host,
        }
    }

    /// Counts the run and gives its in-flight slot back. Returns its outcome and its
    /// record, which the caller queues (`Record::queue`): a pool job after sending the
    /// outcome to the waiting thread, an inline run before returning it.
    fn finish(
        self,
        outcome: RunResult,
        duration: Duration,
        base_logger: &slog::Logger,
        waiting: bool,
    ) -> (RunResult, Record) {
        let Run {
            handle,
            kind,
            params,
            recording,
            slot,
            ..
        } = self;
        handle.stats.record_duration(duration);
        count_outcome(&handle.stats, &outcome);
        // A run kept in the history: what its record needs of the outcome is copied
        // before the reply goes out; the record is made after.
        let history = handle.history;
        let finished = recording.and_then(|(log, recorder)| {
            let wanted = history == History::All || outcome.is_err();
            let captured = capture::end(wanted && log.has_room(&handle.stats))?;
            let kept = Finished::keep_outcome(&recorder, &outcome);
            Some((
                log,
                Finished {
                    id: uuid::Uuid::now_v7(),
                    host: recorder,
                    kind,
                    started_at: crate::db::now_millis()
                        .saturating_sub(i64::try_from(duration.as_millis()).unwrap_or(0)),
                    duration,
                    waited: super::pool::waited(),
                    outcome: kept,
                    captured,
                },
            ))
        });
        if let Err(err) = &outcome {
            let logger = handle.logger(base_logger);
            slog::warn!(logger, "scenario did not end correctly"; "error" => %err, "waiting" => waiting);
        }
        // The in-flight slot is free before the caller hears back, so that a caller
        // sending its next request at once is not refused as channel_busy.
        drop(slot);
        let record = finished
            .map(|(log, finished)| (log, handle, Pending::new(finished, params.into_shared())));
        (outcome, Record(record))
    }
}

/// A kept run's record, queued once its caller has the outcome.
#[must_use = "a run's record is lost unless queued"]
struct Record(Option<(Arc<ExecutionLog>, Arc<ChannelHandle>, Pending)>);

impl Record {
    /// The record is made by the writer, off this thread.
    fn queue(self) {
        if let Some((log, handle, pending)) = self.0 {
            log.push(&handle.stats, pending);
        }
    }
}

/// Whole seconds for `Retry-After`, at least 1.
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

fn count_outcome(stats: &ChannelStats, outcome: &RunResult) {
    match outcome {
        Ok(_) => stats.completed.fetch_add(1, Ordering::Relaxed),
        Err(ScenarioError::Timeout) => stats.timeouts.fetch_add(1, Ordering::Relaxed),
        Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
    };
}
