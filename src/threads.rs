//! CPU priority of threads that do background work (the execution history's writer):
//! on a busy node the request threads get the cores first, and recording takes the time
//! left over instead of adding to the requests' latency. The work is bounded by a queue
//! that drops and counts when it falls behind (`executions`).
//!
//! Two levels, each taken once for the thread's life (an unprivileged thread cannot
//! raise its priority back: `RLIMIT_NICE`) and inherited by the threads it starts
//! (the blocking threads of its runtime). Where the kernel refuses, the thread keeps
//! its priority: a cost in latency under load, never an error.
//! - [`idle`], Linux's `SCHED_IDLE`: the thread runs when no other thread wants the
//!   core, and a request thread that wakes takes the core from it at once. Under full
//!   load it runs only in slivers, so it must hold nothing others wait for: pure
//!   computing (making execution records).
//! - [`background`], `SCHED_OTHER` at nice [`BACKGROUND_NICE`]: below request threads
//!   yet never starved, for a thread that holds what others wait for while it works
//!   (SQLite's write lock, a pooled connection: storing the records).
//!
//! Measured (`benches/history_run.sh`, 10,000 webhooks/s, every run recorded, p99 over
//! p99 without history): see docs/design-notes.md ("Execution history").

/// The niceness of a [`background`] thread (0 is normal, 19 the lowest): about a tenth
/// of a request thread's share of a busy core.
pub const BACKGROUND_NICE: i32 = 10;

/// Makes the calling thread a background thread (see the module).
pub fn background() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain integers; touches only the calling thread's niceness.
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            BACKGROUND_NICE,
        );
    }
}

/// Makes the calling thread an idle-priority thread (see the module).
pub fn idle() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain integers and a pointer to a local; touches only the calling
    // thread's scheduling attributes.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(libc::gettid()) }
    }

    #[test]
    fn priorities_are_per_thread_and_inherited() {
        let before = policy();
        std::thread::spawn(|| {
            idle();
            assert_eq!(policy(), libc::SCHED_IDLE);
            // A thread it starts (a blocking-pool thread) is idle too.
            std::thread::spawn(|| assert_eq!(policy(), libc::SCHED_IDLE))
                .join()
                .unwrap();
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            background();
            // SAFETY: reads the calling thread's niceness.
            let nice =
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            assert_eq!((policy(), nice), (libc::SCHED_OTHER, BACKGROUND_NICE));
        })
        .join()
        .unwrap();
        assert_eq!(policy(), before, "the caller's thread is left as it was");
    }
}
