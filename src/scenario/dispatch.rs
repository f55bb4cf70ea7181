//! Dispatcher: takes a channel's scenario run from an HTTP (or websocket) handler to a
//! scenario thread, enforcing the per-channel in-flight limit and the pool's queue
//! bound, and hands the reply back through a oneshot channel.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::channel_state::StateStore;
use super::dry_run::Ended;
use super::pool::{Lane, ScenarioPool, Start};
use super::{
    ChannelHost, CompileError, Compiled, RunContext, ScenarioError, ScenarioReply, ScenarioRuntime,
    StartParams,
};
use crate::actors::{ChannelHandle, ChannelStats, ScriptKind};
use crate::db::models::Channel;
use crate::executions::capture::{self, Finished};
use crate::executions::{ExecutionLog, History, Pending};

pub type RunResult = Result<ScenarioReply, ScenarioError>;

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
        }
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
                                params: &params,
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

    /// Queues a run of one of the channel's scripts. With `wait`, the returned receiver
    /// gets the outcome; without, the run goes on in the background and its failure is
    /// only logged. Refusals (queue full, channel busy) come back at once.
    pub fn submit(
        &self,
        handle: Arc<ChannelHandle>,
        kind: ScriptKind,
        params: Arc<dyn StartParams>,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<RunResult>>, ScenarioError> {
        let before = handle.stats.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(handle.stats.clone());
        if before >= self.max_in_flight {
            handle.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ScenarioError::ChannelBusy);
        }
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let deadline = Instant::now() + self.timeout;
        let runtime = self.runtime.clone();
        let base_logger = self.logger.clone();
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
        let handle_stats = handle.stats.clone();
        let job = move |start: Start| {
            // A waiting caller that already gave up (timeout, disconnect) needs no run.
            if tx.as_ref().is_some_and(|tx| tx.is_closed()) {
                return;
            }
            // Refused in the queue (past its deadline, or its channel's runs cost more
            // than the queue left it time for): answered 503, not run.
            if let Start::Refused(refused) = start {
                handle.stats.rejected.fetch_add(1, Ordering::Relaxed);
                drop(slot);
                if let Some(tx) = tx {
                    let _ = tx.send(Err(ScenarioError::QueueFull {
                        retry_after_secs: retry_secs(refused.retry_after),
                    }));
                }
                return;
            }
            let logger = handle.logger(&base_logger);
            if let Some((_, recorder)) = &recording {
                capture::begin(recorder.masker().scan_bytes());
            }
            let started = Instant::now();
            let outcome = match handle.script(kind, runtime.as_ref()) {
                Ok(script) => runtime.run(
                    script,
                    RunContext {
                        channel: &handle.channel,
                        secrets: handle.secrets(),
                        params: &params,
                        deadline,
                        logger,
                        host: &host,
                    },
                ),
                Err(e) => Err(ScenarioError::Compile(e.clone())),
            };
            let duration = started.elapsed();
            handle.stats.record_duration(duration);
            count_outcome(&handle.stats, &outcome);
            // A run kept in the history: what its record needs of the outcome is copied
            // before the reply goes out; the record is made after.
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
                slog::warn!(logger, "scenario did not end correctly"; "error" => %err, "waiting" => tx.is_some());
            }
            // The in-flight slot is free before the caller hears back, so that a caller
            // sending its next request at once is not refused as channel_busy.
            drop(slot);
            if let Some(tx) = tx {
                let _ = tx.send(outcome);
            }
            // The record is made by the writer, off this thread.
            if let Some((log, finished)) = finished {
                log.push(&handle.stats, Pending::new(finished, params));
            }
        };
        // A refused job is dropped unrun; its slot is given back on drop.
        let stats = handle_stats;
        self.pool
            .submit(&stats.lane, deadline, job)
            .map_err(|refused| {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                ScenarioError::QueueFull {
                    retry_after_secs: retry_secs(refused.retry_after),
                }
            })?;
        Ok(rx)
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
