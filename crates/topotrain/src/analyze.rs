//! `topotrain analyze ...`: the TopoNets analyses of a checkpoint, run by
//! crate `network-analysis`; this module only dispatches and prints.

use anyhow::Result;
use clap::{Args, Subcommand};
use network_analysis::{
    dimensionality, prune, selectivity, sheets, smoothness, sweep_report, Printout,
};

/// `topotrain analyze [--threads N] <analysis> ...`.
#[derive(Args)]
pub struct AnalyzeArgs {
    /// CPU threads (0 = all cores, the default); also after the analysis's name.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: AnalyzeCommand,
}

#[derive(Subcommand)]
pub enum AnalyzeCommand {
    /// Cortical sheet pictures: units coloured by the first 3 PCs of their weights.
    Sheets(sheets::SheetsArgs),
    /// Weight similarity against sheet distance, per layer, and its score.
    Smoothness(smoothness::SmoothnessArgs),
    /// Effective dimensionality of layer responses over a dataset (streaming).
    Dimensionality(dimensionality::DimensionalityArgs),
    /// Category selectivity (Welch t) maps from labelled stimulus folders.
    Selectivity(selectivity::SelectivityArgs),
    /// Accuracy (a GPT: loss) after L1 pruning and after sheet down-sampling.
    Prune(prune::PruneArgs),
    /// Accuracy vs smoothness (Pareto) and ED vs tau over a `topotrain sweep` directory.
    SweepReport(sweep_report::SweepReportArgs),
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    trainer::device::set_cpu_threads(args.threads.unwrap_or(0));
    let Printout(text) = match args.command {
        AnalyzeCommand::Sheets(args) => sheets::run(args),
        AnalyzeCommand::Smoothness(args) => smoothness::run(args),
        AnalyzeCommand::Dimensionality(args) => dimensionality::run(args),
        AnalyzeCommand::Selectivity(args) => selectivity::run(args),
        AnalyzeCommand::Prune(args) => prune::run(args),
        AnalyzeCommand::SweepReport(args) => sweep_report::run(args),
    }?;
    print!("{text}");
    Ok(())
}
