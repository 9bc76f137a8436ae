//! `topotrain`: train, inspect and analyse topographic vision models (TopoNets).
//!
//! Each subcommand lives in its own module; `main` only parses arguments and
//! turns errors into a readable message and a non-zero exit code.

use clap::{Parser, Subcommand};

mod bench;
mod bench_topoloss;
mod device;
mod inspect;
mod prep;

#[derive(Parser)]
#[command(
    name = "topotrain",
    version,
    about = "Train and analyse topographic (TopoNets) vision models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a dataset (ImageNet, an image folder, Fashion-MNIST) into topotrain's memory-mapped format.
    #[command(subcommand)]
    Prep(prep::PrepCommand),
    /// Micro-benchmarks printing JSON (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Each topographic layer's sheet and TopoLoss (tau = 1) in a checkpoint.
    Inspect(inspect::InspectArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prep(cmd) => prep::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Inspect(args) => inspect::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
