//! `topotrain fit --config RUN.toml`: train one run (see `trainer::engine`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use trainer::config::TaskKind;
use trainer::language::{LanguageConfig, LanguageSummary};
use trainer::overrides::{self, Override};
use trainer::{FitOptions, RunConfig, Summary};

use crate::backend::{run_on, BackendJob, DeviceChoice};

#[derive(Args)]
pub struct FitArgs {
    /// The run's TOML config (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue the run from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: accept config changes that change what the run trains
    /// (learning rate, batch size, tau, seed, ...); they are recorded in
    /// metrics.jsonl and the earlier config is kept beside the new one.
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,
    /// "cpu", "cuda[:N]" or "wgpu" (overrides training.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Train data parallel on this many devices from --device's index up
    /// (overrides training.devices).
    #[arg(long)]
    pub devices: Option<usize>,
    /// Train one run on this many nodes (one process each, the same config
    /// and command with its own --node-rank; see scripts/slurm/).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// This process's rank in 0..--nodes; rank 0 writes output.dir, rank r
    /// output.dir/node<r>.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// host:port where rank 0 listens for the other nodes.
    #[arg(long, default_value = "127.0.0.1:29511")]
    pub cluster_address: String,
    /// Seconds to wait for all nodes to connect.
    #[arg(long, default_value_t = 600)]
    pub cluster_timeout: u64,
    /// Run directory (overrides output.dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override training.epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Constant tau for every topographic layer (overrides [topography] tau).
    #[arg(long)]
    pub tau: Option<f64>,
    /// CPU threads (overrides training.threads; 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Testing: stop after N steps without a checkpoint, as a kill would.
    #[arg(long, hide = true)]
    pub halt_after_steps: Option<u64>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
}

/// Config overrides on the command line, applied to the file before it is
/// parsed and validated.
#[derive(Args, Clone, Debug, Default)]
pub struct OverrideArgs {
    /// Set any config value: a dotted key and a TOML value, e.g. `--set
    /// training.batch_size=256 --set lr.peak=0.5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<Override>,
    /// Override training.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override training.batch_size (with lr.reference_batch set, the
    /// learning rate follows it and keeps its rate per sample).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the peak learning rate (lr.peak, at lr.reference_batch if
    /// set; optimizer.lr for language runs).
    #[arg(long)]
    pub lr: Option<f64>,
}

impl OverrideArgs {
    /// Every override, the short flags after `--set`; `lr_key` is the
    /// config's peak learning rate.
    pub fn all(&self, lr_key: &str) -> Vec<Override> {
        let mut all = self.set.clone();
        let mut add = |key: &str, value: toml::Value| {
            all.push(Override {
                key: key.to_string(),
                value,
            })
        };
        if let Some(seed) = self.seed {
            add("training.seed", toml::Value::Integer(seed as i64));
        }
        if let Some(batch) = self.batch_size {
            add("training.batch_size", toml::Value::Integer(batch as i64));
        }
        if let Some(lr) = self.lr {
            add(lr_key, toml::Value::Float(lr));
        }
        all
    }

    /// The config file at `path` with these overrides, as TOML text, and
    /// its task (which says which key `--lr` sets).
    pub fn read(&self, path: &std::path::Path) -> Result<(TaskKind, String)> {
        let file = overrides::read(path, &[])?;
        let task = overrides::apply(&file, &self.set)
            .and_then(|text| TaskKind::of(&text))
            .with_context(|| format!("invalid config {}", path.display()))?;
        let text = overrides::apply(&file, &self.all(task.lr_key()))
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok((task, text))
    }
}

/// The vision config `text` (the file with `--set` applied) with the
/// other flags applied, validated.
pub fn load_config(args: &FitArgs, text: &str) -> Result<RunConfig> {
    let mut config = RunConfig::parse(text)
        .with_context(|| format!("invalid config {}", args.config.display()))?;
    if let Some(tau) = args.tau {
        config = config.with_tau(tau)?;
    }
    if let Some(device) = &args.device {
        config.training.device = device.clone();
    }
    if let Some(devices) = args.devices {
        config.training.devices = devices;
    }
    if let Some(out) = &args.out {
        config.output.dir = out.clone();
    }
    if let Some(epochs) = args.epochs {
        config.training.epochs = epochs;
    }
    if let Some(threads) = args.threads {
        config.training.threads = threads;
    }
    config.validate()?;
    Ok(config)
}

pub fn run(args: FitArgs) -> Result<()> {
    let options = FitOptions {
        resume: args.resume,
        halt_after_steps: args.halt_after_steps,
        progress: !args.quiet,
        cluster: cluster_config(&args)?,
        interrupter: crate::signals::interrupter()?,
        allow_config_change: args.allow_config_change,
        accelerator: false,
    };
    let (task, text) = args.overrides.read(&args.config)?;
    if task == TaskKind::Language {
        return run_language(&args, &text, options);
    }
    let config = load_config(&args, &text)?;
    print_summary(&fit_on_device(&config, options)?)
}

/// Prints a run's summary as JSON.
pub fn print_summary(summary: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(summary)?);
    Ok(())
}

/// The multi-node settings of a `--nodes N` run (none for one node).
fn cluster_config(args: &FitArgs) -> Result<Option<trainer::cluster::ClusterConfig>> {
    if args.nodes <= 1 {
        if args.node_rank != 0 {
            anyhow::bail!("--node-rank {} needs --nodes above it", args.node_rank);
        }
        return Ok(None);
    }
    let config = trainer::cluster::ClusterConfig {
        nodes: args.nodes,
        rank: args.node_rank,
        address: args.cluster_address.clone(),
        timeout: std::time::Duration::from_secs(args.cluster_timeout),
    };
    config.validate()?;
    Ok(Some(config))
}

/// A validated config of either task, as the trainer takes it.
pub trait FitConfig {
    type Summary;
    fn threads(&self) -> usize;
    fn device(&self) -> &str;
    fn fit<B: AutodiffBackend>(
        &self,
        device: B::Device,
        options: &FitOptions,
    ) -> Result<Self::Summary>;
}

impl FitConfig for RunConfig {
    type Summary = Summary;
    fn threads(&self) -> usize {
        self.training.threads
    }
    fn device(&self) -> &str {
        &self.training.device
    }
    fn fit<B: AutodiffBackend>(&self, device: B::Device, options: &FitOptions) -> Result<Summary> {
        trainer::fit::<B>(self, device, options)
    }
}

impl FitConfig for LanguageConfig {
    type Summary = LanguageSummary;
    fn threads(&self) -> usize {
        self.training.threads
    }
    fn device(&self) -> &str {
        &self.training.device
    }
    fn fit<B: AutodiffBackend>(
        &self,
        device: B::Device,
        options: &FitOptions,
    ) -> Result<LanguageSummary> {
        trainer::language::fit_language::<B>(self, device, options)
    }
}

/// Trains on the config's device.
pub fn fit_on_device<C: FitConfig>(config: &C, options: FitOptions) -> Result<C::Summary> {
    trainer::device::set_cpu_threads(config.threads());
    let choice: DeviceChoice = config.device().parse().map_err(anyhow::Error::msg)?;
    run_on(choice, Fit { config, options })
}

/// A run on whichever backend its config names.
struct Fit<'a, C> {
    config: &'a C,
    options: FitOptions,
}

impl<C: FitConfig> BackendJob for Fit<'_, C> {
    type Output = C::Summary;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        choice: DeviceChoice,
    ) -> Result<C::Summary> {
        let options = FitOptions {
            accelerator: !choice.is_cpu(),
            ..self.options
        };
        self.config.fit::<B>(device, &options)
    }
}

/// `topotrain fit` on a language config.
/// `text` is the config file with `--set` applied.
fn run_language(args: &FitArgs, text: &str, options: FitOptions) -> Result<()> {
    if args.epochs.is_some() {
        bail!("--epochs does not apply to language configs (set training.steps)");
    }
    let mut config = LanguageConfig::parse(text)
        .with_context(|| format!("invalid config {}", args.config.display()))?;
    if let Some(tau) = args.tau {
        config = config.with_tau(tau)?;
    }
    if let Some(devices) = args.devices {
        config.training.devices = devices;
    }
    apply_language_flags(&mut config, &args.device, &args.out, args.threads)?;
    print_summary(&fit_on_device(&config, options)?)
}

/// The command-line values shared by `fit` and `finetune`, then validation.
pub fn apply_language_flags(
    config: &mut LanguageConfig,
    device: &Option<String>,
    out: &Option<PathBuf>,
    threads: Option<usize>,
) -> Result<()> {
    if let Some(device) = device {
        config.training.device = device.clone();
    }
    if let Some(out) = out {
        config.output.dir = out.clone();
    }
    if let Some(threads) = threads {
        config.training.threads = threads;
    }
    config.validate()
}
