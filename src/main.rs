use clap::Parser;

// The allocator (mimalloc, counting scenario runs' memory) is set in the library:
// oktell_gateway::alloc.

fn main() {
    // (mimalloc's arenas are committed on demand: see .cargo/config.toml.)
    // A scenario thread that retires hands its allocator heap back first; without it,
    // 500 threads that had waited on an upstream left ~440 MB behind (measured).
    oktell_gateway::scenario::pool::set_thread_exit_hook(|| {
        // SAFETY: mi_collect only frees memory this thread's heap no longer uses.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    let cli = oktell_gateway::cli::Cli::parse();
    std::process::exit(oktell_gateway::cli::run(cli));
}
