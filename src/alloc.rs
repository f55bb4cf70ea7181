//! The process's allocator: mimalloc (measurably faster than glibc malloc for actix's
//! many small allocations), wrapped to count what a scenario run allocates.
//!
//! A run's memory budget is counted on its own thread: between [`start_run`] and
//! [`end_run`], every allocation and free on that thread moves a thread-local count of
//! live bytes. The counter never refuses an allocation (a failed allocation aborts the
//! process); it *flags* a breach, and the runtime fails the run at its next check (Rhai
//! checks between operations). Each operation is bounded by the size limits on strings,
//! arrays and maps, so the overshoot is bounded too.
//!
//! The node-wide budget over all runs together ([`NodeMemory`], one per node: tests run
//! several nodes in one process) is kept in chunks: a run reserves [`CHUNK`] bytes of
//! its node's budget at a time (one atomic add per chunk, not per allocation) and gives
//! its reservation back when it ends.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

// The allocator underneath the counting: mimalloc, or the system's for heap profiles
// (feature `system-allocator`, see Cargo.toml).
#[cfg(not(feature = "system-allocator"))]
use mimalloc::MiMalloc as Inner;
#[cfg(feature = "system-allocator")]
use std::alloc::System as Inner;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// mimalloc (or the system allocator), counting allocations of threads that run a
/// scenario.
pub struct Counting;

/// Node budget is reserved in steps of this many bytes.
pub const CHUNK: i64 = 256 * 1024;

/// The memory of one node's runs together: reserved now, and the most allowed.
#[derive(Debug)]
pub struct NodeMemory {
    reserved: AtomicI64,
    limit: i64,
}

impl NodeMemory {
    /// A node budget of `limit` bytes (`scenario_node_memory_bytes`).
    pub fn new(limit: u64) -> Arc<NodeMemory> {
        Arc::new(NodeMemory {
            reserved: AtomicI64::new(0),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
        })
    }

    /// Bytes reserved by the node's runs now (a gauge).
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Which budget a run broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBreach {
    /// The run's own (`scenario_max_memory_bytes`).
    Run,
    /// All runs of the node together (`scenario_node_memory_bytes`).
    Node,
}

const NONE: u8 = 0;
const RUN: u8 = 1;
const NODE: u8 = 2;

thread_local! {
    // `const` cells without destructors: safe to touch from inside the allocator.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static LIMIT: Cell<i64> = const { Cell::new(i64::MAX) };
    static RESERVED: Cell<i64> = const { Cell::new(0) };
    static BREACH: Cell<u8> = const { Cell::new(NONE) };
    /// The most the run held at once, and what the last run on this thread held.
    static PEAK: Cell<i64> = const { Cell::new(0) };
    static LAST_PEAK: Cell<i64> = const { Cell::new(0) };
    /// The node of the run on this thread; valid from `start_run` to `end_run` (the
    /// run holds an `Arc` of it meanwhile).
    static NODE_OF_RUN: Cell<*const NodeMemory> = const { Cell::new(std::ptr::null()) };
}

#[inline]
fn grew(bytes: usize) {
    // `try_with`: a thread being torn down has no locals left; it runs no scenario.
    let _ = ACTIVE.try_with(|active| {
        if !active.get() {
            return;
        }
        let live = LIVE.get() + bytes as i64;
        LIVE.set(live);
        if live > PEAK.get() {
            PEAK.set(live);
        }
        if live > LIMIT.get() {
            BREACH.set(RUN);
        }
        let reserved = RESERVED.get();
        let node = NODE_OF_RUN.get();
        if live > reserved && !node.is_null() {
            let need = (live - reserved + CHUNK - 1) / CHUNK * CHUNK;
            // SAFETY: set by `start_run` from an Arc the run keeps until `end_run`.
            let node = unsafe { &*node };
            let total = node.reserved.fetch_add(need, Ordering::Relaxed) + need;
            RESERVED.set(reserved + need);
            if total > node.limit && BREACH.get() == NONE {
                BREACH.set(NODE);
            }
        }
    });
}

#[inline]
fn shrank(bytes: usize) {
    let _ = ACTIVE.try_with(|active| {
        if active.get() {
            LIVE.set(LIVE.get() - bytes as i64);
        }
    });
}

// SAFETY: every call is forwarded to the inner allocator unchanged; the counting touches only
// `const` thread-locals and an atomic, and never allocates.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { Inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: as above.
        unsafe { Inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: as above.
        unsafe { Inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            shrank(layout.size() - new_size);
        }
        // SAFETY: as above.
        unsafe { Inner.realloc(ptr, layout, new_size) }
    }
}

/// Counting starts for a run on this thread, with its own budget in bytes and its
/// node's. The caller keeps `node` alive until [`end_run`].
pub fn start_run(limit: u64, node: Option<&Arc<NodeMemory>>) {
    NODE_OF_RUN.set(node.map_or(std::ptr::null(), Arc::as_ptr));
    LIVE.set(0);
    PEAK.set(0);
    RESERVED.set(0);
    BREACH.set(NONE);
    LIMIT.set(i64::try_from(limit).unwrap_or(i64::MAX));
    ACTIVE.set(true);
}

/// Counting ends; the run's share of the node budget is given back.
pub fn end_run() {
    ACTIVE.set(false);
    let reserved = RESERVED.replace(0);
    let node = NODE_OF_RUN.replace(std::ptr::null());
    if reserved > 0 && !node.is_null() {
        // SAFETY: as in `grew`: the run still holds its Arc.
        unsafe { &*node }
            .reserved
            .fetch_sub(reserved, Ordering::Relaxed);
    }
    LIVE.set(0);
    LAST_PEAK.set(PEAK.replace(0));
    BREACH.set(NONE);
}

/// mimalloc's `mi_option_purge_delay` (v2 header order).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Pages freed go back to the system at once rather than after mimalloc's default
/// 10 ms delay. The delayed purge runs only when the thread that owns the pages
/// allocates again, and an idle HTTP worker does not: after 1,000 websocket sessions
/// closed, RSS stayed 30% over its baseline for good (56 vs 43 MiB); with this it
/// returns (tests/it/broadcast.rs). (Arenas are committed on demand as well: see
/// .cargo/config.toml.) Called first thing in `main`.
pub fn give_back_freed_memory_at_once() {
    // SAFETY: setting an option is allowed at any time; it is read when purging.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// A thread that ends hands its heap's free memory back first (scenario threads that
/// retire).
pub fn give_back_thread_heap() {
    // SAFETY: mi_collect only frees memory this thread's heap no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Frees pages of ended threads' heaps that have no live block left: mimalloc leaves
/// an ended thread's memory to whichever thread collects or allocates from it next, and
/// blocks freed there after the thread ended (by other threads) stay in use until then.
pub fn collect_abandoned() {
    // SAFETY: mi_collect only frees memory no longer in use.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Runs that held more than this at once have their thread's free memory handed back
/// to the system when they are over ([`give_back_after_big_run`]).
pub const GIVE_BACK_ABOVE: i64 = 4 * 1024 * 1024;

/// After a run that held a lot (and once its values are dropped): the thread's heap
/// returns its free pages to the system. mimalloc would keep them for the thread's
/// next allocations, and a scenario thread that computes small runs afterwards never
/// needs them: 2,000 runs near their memory budget left RSS ~40–80 MB above where it
/// started without this (tests/it/budgets.rs).
pub fn give_back_after_big_run() {
    if LAST_PEAK.replace(0) > GIVE_BACK_ABOVE {
        // SAFETY: mi_collect only frees memory this thread's heap no longer uses.
        unsafe { libmimalloc_sys::mi_collect(true) }
    }
}

/// Whether the run on this thread has broken a budget (cheap: one thread-local read).
#[inline]
pub fn breach() -> Option<MemoryBreach> {
    match BREACH.get() {
        RUN => Some(MemoryBreach::Run),
        NODE => Some(MemoryBreach::Node),
        _ => None,
    }
}

/// Whether this process counts allocations (false when another global allocator was
/// linked in, e.g. a benchmark's own): the memory budget cannot hold then.
pub fn counting() -> bool {
    start_run(u64::MAX, None);
    let probe = std::hint::black_box(vec![0u8; 4096]);
    let seen = LIVE.get() >= 4096;
    drop(probe);
    end_run();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_over_its_budget_is_flagged_not_refused() {
        start_run(1 << 20, None);
        let small = vec![1u8; 1000];
        assert_eq!(breach(), None);
        let big = vec![1u8; 2 << 20];
        assert_eq!(breach(), Some(MemoryBreach::Run));
        assert_eq!(big.len(), 2 << 20);
        drop((small, big));
        end_run();
        assert_eq!(breach(), None);
        assert!(counting());
    }

    #[test]
    fn freed_memory_is_given_back_to_the_run() {
        let node = NodeMemory::new(4 << 20);
        start_run(1 << 20, Some(&node));
        for _ in 0..100 {
            let v = vec![1u8; 512 * 1024];
            std::hint::black_box(&v);
        }
        assert_eq!(breach(), None);
        assert!(node.reserved() > 0);
        end_run();
        assert_eq!(node.reserved(), 0);
    }

    #[test]
    fn runs_together_are_held_to_their_nodes_budget() {
        let node = NodeMemory::new(1 << 20);
        start_run(u64::MAX, Some(&node));
        let big = vec![1u8; 2 << 20];
        assert_eq!(breach(), Some(MemoryBreach::Node));
        drop(big);
        end_run();
        assert_eq!(node.reserved(), 0);
    }
}
