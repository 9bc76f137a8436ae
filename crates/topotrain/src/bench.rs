//! `topotrain bench ...`: micro-benchmarks whose JSON output feeds BENCHMARKS.md.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {}
}
