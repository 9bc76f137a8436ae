//! `topotrain bench ...`: micro-benchmarks whose JSON output feeds BENCHMARKS.md.

use clap::Subcommand;

#[path = "bench_loader.rs"]
mod bench_loader;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Images per second of the data loader's train pipeline on a prepped dataset.
    Loader(bench_loader::BenchLoaderArgs),
    /// Seconds per training step (forward, backward, SGD) on random data.
    Train(crate::bench_train::BenchTrainArgs),
    /// TopoLoss forward+backward time over all Conv2d/Linear layers of a model.
    Topoloss(crate::bench_topoloss::BenchTopolossArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Loader(args) => bench_loader::run(args),
        BenchCommand::Train(args) => crate::bench_train::run(args),
        BenchCommand::Topoloss(args) => crate::bench_topoloss::run(args),
    }
}
