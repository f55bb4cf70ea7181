use clap::Parser;

// The allocator (mimalloc, counting scenario runs' memory) is set in the library:
// oktell_gateway::alloc.

fn main() {
    oktell_gateway::alloc::give_back_freed_memory_at_once();
    let cli = oktell_gateway::cli::Cli::parse();
    std::process::exit(oktell_gateway::cli::run(cli));
}
