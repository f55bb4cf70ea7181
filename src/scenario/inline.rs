//! Inline runs: a short run that touches nothing outside itself runs on the thread that
//! received its request (the HTTP worker) instead of hopping to the scenario pool and
//! back.
//!
//! The hop is the cost of a trivial run: a job box, a wake-up of a scenario thread, a
//! oneshot and a wake-up back. A run is tried inline when its script is compiled, its
//! input is small (`INLINE_MAX_INPUT_BYTES`) and its script has not been struck off
//! (`Strikes`). It is stopped, before anything it did could be seen, when it
//! - reaches anything with an effect or a wait (an outgoing call, channel state, events,
//!   websocket pushes, `sleep_ms`): the runtime asks [`effect`] first;
//! - runs past its bound (`scenario_inline_us`, checked every 16 operations) or uses
//!   more than [`INLINE_MAX_STACK_BYTES`] of the worker's stack (checked every
//!   operation; workers have the default 2 MiB stack, pool threads 16 MiB).
//!
//! Once stopped, every further operation stops it again: a `try`/`catch` around a
//! callback (`map`, `filter`...) can catch the mark, but not go on computing.
//!
//! A stopped run is then run from its start on the pool, exactly as without this: what
//! it did inline was computing only, its log lines were held back
//! ([`hold_log`]), its record was not kept. So an inline run is never observable except
//! by being faster. A script stopped for an effect is sent to the pool for good (for
//! this version of the channel); one stopped by its bound, after [`MAX_STRIKES`] such
//! stops in a row (see [`Strikes`]), so that a script that computes long costs the
//! workers little.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Instant;

/// Requests with more input than this (a body, a message) go to the pool: one
/// operation on a big input (`parse_json`, a hash) can take long between two checks.
pub const INLINE_MAX_INPUT_BYTES: usize = 64 * 1024;
/// Stack an inline run may use on the worker's thread.
pub const INLINE_MAX_STACK_BYTES: usize = 256 * 1024;
/// The clock is read once every this many operations: a read costs about what a simple
/// operation does (benches/RESULTS.md). A run overshoots its bound by at most this many
/// operations: a few µs for simple ones, more for operations on big values the script
/// built itself (inputs over [`INLINE_MAX_INPUT_BYTES`] never run inline), and a script
/// that overshoots twice its bound earns a strike all the same (`Strikes`).
const TIME_CHECK_EVERY: u64 = 16;
/// Stops by the bound in a row after which a script runs on the pool (but for a try
/// every [`RETRY_EVERY`] runs).
pub const MAX_STRIKES: u8 = 3;

/// Why an inline run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It reached an effect or a wait.
    Effect,
    /// It ran past its time or stack bound.
    Bound,
}

/// Whether a script of one channel version may be tried inline.
///
/// An effect strikes it off for good. Stops by the bound count only in a row (a run that
/// ends inline in time clears them): the bound is wall time, and a worker preempted
/// mid-run by the kernel overruns it now and then (measured: permanent strikes sent a
/// trivial echo script to the pool within seconds of a websocket benchmark). After
/// [`MAX_STRIKES`] in a row the script goes to the pool, and is tried inline again
/// once every [`RETRY_EVERY`] runs, so a script that only had bad luck comes back.
#[derive(Debug, Default)]
pub struct Strikes {
    in_a_row: AtomicU8,
    effect: AtomicBool,
    skipped: AtomicU32,
}

/// Runs of a script struck off by the bound between two inline tries.
pub const RETRY_EVERY: u32 = 256;

impl Strikes {
    pub fn allowed(&self) -> bool {
        if self.effect.load(Ordering::Relaxed) {
            return false;
        }
        if self.in_a_row.load(Ordering::Relaxed) < MAX_STRIKES {
            return true;
        }
        self.skipped.fetch_add(1, Ordering::Relaxed) % RETRY_EVERY == RETRY_EVERY - 1
    }

    pub fn note(&self, stop: Stop) {
        match stop {
            Stop::Effect => self.effect.store(true, Ordering::Relaxed),
            Stop::Bound => {
                let _ = self
                    .in_a_row
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_add(1))
                    });
            }
        }
    }

    /// An inline run ended within its bound.
    pub fn ended_in_time(&self) {
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy)]
struct Bound {
    until: Instant,
    /// Lowest stack address the run may reach (stacks grow down).
    stack_floor: usize,
}

thread_local! {
    static ACTIVE: Cell<Option<Bound>> = const { Cell::new(None) };
    static STOPPED: Cell<Option<Stop>> = const { Cell::new(None) };
    /// Log lines of the inline run, written when it ends (dropped when it is stopped).
    static HELD_LOG: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

/// The address of a local of the caller's frame: where its stack is now.
#[inline(always)]
fn stack_here() -> usize {
    let probe = 0u8;
    std::hint::black_box(&probe) as *const u8 as usize
}

/// An inline run on this thread, for as long as it lives.
pub struct Inline(());

impl Inline {
    /// An inline run that must end by `until`.
    pub fn begin(until: Instant) -> Inline {
        ACTIVE.set(Some(Bound {
            until,
            stack_floor: stack_here().saturating_sub(INLINE_MAX_STACK_BYTES),
        }));
        STOPPED.set(None);
        HELD_LOG.with(|l| l.borrow_mut().clear());
        Inline(())
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        ACTIVE.set(None);
        STOPPED.set(None);
        // Freed, not kept: a worker thread should not keep a run's log budget.
        HELD_LOG.with(|l| drop(std::mem::take(&mut *l.borrow_mut())));
    }
}

/// Whether the run on this thread is inline.
#[inline]
pub fn active() -> bool {
    ACTIVE.get().is_some()
}

/// Why the inline run on this thread was stopped, if it was.
#[inline]
pub fn stopped() -> Option<Stop> {
    STOPPED.get()
}

/// Asked before anything with an effect or a wait: `Err` stops an inline run (which is
/// then run on the pool); elsewhere, go on.
#[inline]
pub fn effect() -> Result<(), Stop> {
    if active() {
        STOPPED.set(Some(Stop::Effect));
        return Err(Stop::Effect);
    }
    Ok(())
}

/// Checked between operations: `Err` when an inline run is past its bound.
#[inline]
pub fn progress(ops: u64) -> Result<(), Stop> {
    let Some(bound) = ACTIVE.get() else {
        return Ok(());
    };
    if let Some(stop) = STOPPED.get() {
        return Err(stop);
    }
    if stack_here() < bound.stack_floor
        || (ops.is_multiple_of(TIME_CHECK_EVERY) && Instant::now() >= bound.until)
    {
        STOPPED.set(Some(Stop::Bound));
        return Err(Stop::Bound);
    }
    Ok(())
}

/// Holds a log line of an inline run back until the run ends; false (the caller
/// writes it) when no inline run is on.
pub fn hold_log(level: &str, text: &str) -> bool {
    if !active() {
        return false;
    }
    HELD_LOG.with(|l| l.borrow_mut().push((level.to_string(), text.to_string())));
    true
}

/// The held log lines of an inline run that ended, to be written now.
pub fn take_held_log() -> Vec<(String, String)> {
    HELD_LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn strikes_send_a_script_to_the_pool() {
        let s = Strikes::default();
        for _ in 0..MAX_STRIKES {
            assert!(s.allowed());
            s.note(Stop::Bound);
        }
        assert!(!s.allowed());
        let tries = (0..RETRY_EVERY * 2).filter(|_| s.allowed()).count();
        assert_eq!(tries, 2, "tried again once every RETRY_EVERY runs");
        s.ended_in_time();
        assert!(s.allowed(), "a run in time clears the strikes");
        s.note(Stop::Bound);
        s.ended_in_time();
        s.note(Stop::Bound);
        s.note(Stop::Bound);
        assert!(s.allowed(), "only stops in a row count");
        let s = Strikes::default();
        s.note(Stop::Effect);
        assert!(!s.allowed());
        assert_eq!((0..RETRY_EVERY * 2).filter(|_| s.allowed()).count(), 0);
    }

    #[test]
    fn effects_and_bounds_stop_only_inline_runs() {
        assert_eq!(effect(), Ok(()));
        assert_eq!(progress(16), Ok(()));
        let run = Inline::begin(Instant::now());
        assert_eq!(progress(1), Ok(()), "time is looked at every 16 operations");
        assert_eq!(progress(4), Ok(()));
        assert_eq!(progress(8), Ok(()));
        assert_eq!(progress(15), Ok(()));
        assert_eq!(progress(16), Err(Stop::Bound));
        assert_eq!(progress(17), Err(Stop::Bound), "stopped for good");
        drop(run);
        let run = Inline::begin(Instant::now() + Duration::from_secs(60));
        assert_eq!(effect(), Err(Stop::Effect));
        assert_eq!(
            progress(1),
            Err(Stop::Effect),
            "a caught stop stops the next operation"
        );
        assert_eq!(stopped(), Some(Stop::Effect));
        assert!(hold_log("info", "x"));
        drop(run);
        assert!(!active());
        assert!(!hold_log("info", "x"));
        assert!(take_held_log().is_empty());
    }

    #[test]
    fn deep_recursion_stops_an_inline_run() {
        fn dive(n: usize) -> Result<(), Stop> {
            let pad = std::hint::black_box([0u8; 1024]);
            progress(1)?;
            if n == 0 {
                return Ok(());
            }
            dive(n - 1).map(|_| {
                std::hint::black_box(&pad);
            })
        }
        let _run = Inline::begin(Instant::now() + Duration::from_secs(60));
        assert_eq!(dive(1024), Err(Stop::Bound));
    }
}
