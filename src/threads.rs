//! CPU priority of threads that do background work (the execution history's writer):
//! on a busy node the request threads get the cores first, and recording takes the time
//! left over instead of adding to the requests' latency. The work is bounded by a queue
//! that drops and counts when it falls behind (`executions`).
//!
//! [`idle`] is Linux's `SCHED_IDLE`: the thread runs when no other thread wants the
//! core, and a request thread that wakes takes the core from it at once. Measured
//! (`benches/history_run.sh`, 10,000 webhooks/s, every run recorded): webhook p99 1.08×
//! that without history; 1.33× with the writer at nice 19 and 1.39× at nice 10 (the
//! kernel lets a niced thread finish its slice before a woken one runs). Taken once
//! for the thread's life (an unprivileged thread cannot raise its priority back:
//! `RLIMIT_NICE`) and inherited by the threads it starts (the blocking threads of its
//! runtime). Where the kernel refuses, the thread keeps its priority: a cost in latency
//! under load, never an error.
//!
//! The price: such a thread may hold what others wait for — SQLite's write gate and a
//! pooled connection during one of its transactions — and on a node whose cores are
//! saturated by request threads it runs only in slivers, so a writer that comes
//! meanwhile waits longer. Its transactions are kept small for that (200 records, about
//! 2 ms of CPU), the gate lets waiting callers go before it takes its next turn, and
//! the waits of scenario writes are bounded by their run's deadline.

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
    fn idle_priority_is_per_thread_and_inherited() {
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
        assert_eq!(policy(), before, "the caller's thread is left as it was");
    }
}
