use clap::Parser;

// mimalloc: measurably faster than glibc malloc for actix's many small allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = oktell_gateway::cli::Cli::parse();
    std::process::exit(oktell_gateway::cli::run(cli));
}
