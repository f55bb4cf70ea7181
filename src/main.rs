use clap::Parser;

fn main() {
    let cli = oktell_gateway::cli::Cli::parse();
    std::process::exit(oktell_gateway::cli::run(cli));
}
