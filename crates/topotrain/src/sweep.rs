//! `topotrain sweep --config BASE.toml --tau 0,0.5,1,5,10,20,50`: one run
//! per tau (in `<output.dir>/tau_<tau>`), resumable, then the results table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use trainer::sweep;
use trainer::FitOptions;

#[derive(Args)]
pub struct SweepArgs {
    /// The base run config; its output.dir holds one directory per tau.
    #[arg(long)]
    pub config: PathBuf,
    /// Comma-separated taus.
    #[arg(long, default_value = "0,0.5,1,5,10,20,50")]
    pub tau: String,
    /// "cpu", "cuda[:N]" or "wgpu" (overrides training.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Base output directory (overrides output.dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override training.epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Only write the table from finished runs (e.g. after a SLURM array).
    #[arg(long)]
    pub collect: bool,
    /// CPU threads (overrides training.threads; 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub overrides: crate::fit::OverrideArgs,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let taus = sweep::parse_taus(&args.tau)?;
    let (task, text) = args.overrides.read(&args.config)?;
    if task != trainer::config::TaskKind::Classification {
        anyhow::bail!(
            "{}: sweep trains image-classification configs; run language configs with fit --tau",
            args.config.display()
        );
    }
    let mut base = trainer::RunConfig::parse(&text)
        .with_context(|| format!("invalid config {}", args.config.display()))?;
    if let Some(device) = &args.device {
        base.training.device = device.clone();
    }
    if let Some(out) = &args.out {
        base.output.dir = out.clone();
    }
    if let Some(epochs) = args.epochs {
        base.training.epochs = epochs;
    }
    if let Some(threads) = args.threads {
        base.training.threads = threads;
    }
    base.validate()?;
    if !args.collect {
        let interrupter = crate::signals::interrupter()?;
        for &tau in &taus {
            let config = sweep::config_for(&base, tau)?;
            if sweep::finished(&config.output.dir).is_some() {
                eprintln!(
                    "tau {tau}: finished earlier ({})",
                    config.output.dir.display()
                );
                continue;
            }
            let resume = trainer::checkpoint::latest(&config.output.dir)?.is_some();
            eprintln!(
                "tau {tau}: {} {}",
                if resume { "resuming" } else { "training" },
                config.output.dir.display()
            );
            let options = FitOptions {
                resume,
                progress: !args.quiet,
                interrupter: interrupter.clone(),
                ..Default::default()
            };
            crate::fit::fit_on_device(&config, options)?;
        }
    }
    let rows = sweep::collect(&base, &taus)?;
    print!("{}", sweep::markdown(&rows));
    eprintln!(
        "wrote {} and {}",
        base.output.dir.join("sweep.md").display(),
        base.output.dir.join("sweep.json").display()
    );
    Ok(())
}
