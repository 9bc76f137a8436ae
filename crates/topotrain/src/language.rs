//! Language-model commands (see `trainer::language`): `fit` with a language
//! config, `finetune` (LoRA on a base checkpoint), and the GPT side of
//! `analyze prune`, `sheets`, `smoothness` and `dimensionality`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use models::{Taps, Topographic};
use serde::Serialize;
use trainer::language::{
    eval_windows, fit_language, open_tokens, prune_curve, window_batch, LanguageConfig,
    LanguageSummary, PruneRow,
};
use trainer::FitOptions;

use crate::backend::{run_on, BackendJob, DeviceChoice};

use crate::analyze::data::{unit_responses, Samples};
use crate::analyze::dimensionality::{Accumulator, DatasetDimensionality, DimensionalityArgs};
use crate::analyze::prune::PruneArgs;
use crate::analyze::ModelArgs;
use crate::fit::FitArgs;

/// `topotrain fit` on a language config.
/// `text` is the config file with `--set` applied.
pub fn run_fit(args: &FitArgs, text: &str, options: FitOptions) -> Result<()> {
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
    apply_common(&mut config, &args.device, &args.out, args.threads)?;
    print_summary(&fit_on_device(&config, options)?)
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// The fine-tuning config (see configs/gpt_tiny_lora.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Base checkpoint (overrides `base`).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// LoRA rank (overrides lora.rank).
    #[arg(long)]
    pub rank: Option<usize>,
    /// LoRA alpha (overrides lora.alpha).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Run directory (overrides output.dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// "cpu", "cuda[:N]" or "wgpu" (overrides training.device).
    #[arg(long)]
    pub device: Option<String>,
    /// CPU threads (overrides training.threads; 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `topotrain finetune`: LoRA adapters on a frozen base model.
pub fn run_finetune(args: FinetuneArgs) -> Result<()> {
    let mut config = LanguageConfig::load(&args.config)?;
    if let Some(base) = args.base {
        config.base = Some(base);
        config.gpt = None;
    }
    let Some(lora) = config.lora.as_mut() else {
        bail!(
            "{} has no [lora] section; `finetune` trains LoRA adapters",
            args.config.display()
        );
    };
    if let Some(rank) = args.rank {
        lora.rank = rank;
    }
    if let Some(alpha) = args.alpha {
        lora.alpha = alpha;
    }
    apply_common(&mut config, &args.device, &args.out, args.threads)?;
    let options = FitOptions {
        progress: true,
        interrupter: crate::signals::interrupter()?,
        ..FitOptions::default()
    };
    print_summary(&fit_on_device(&config, options)?)
}

fn apply_common(
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

fn print_summary(summary: &LanguageSummary) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(summary)?);
    Ok(())
}

fn fit_on_device(config: &LanguageConfig, options: FitOptions) -> Result<LanguageSummary> {
    trainer::device::set_cpu_threads(config.training.threads);
    let choice: DeviceChoice = config.training.device.parse().map_err(anyhow::Error::msg)?;
    run_on(choice, LanguageFit { config, options })
}

/// A language run on whichever backend the config names.
struct LanguageFit<'a> {
    config: &'a LanguageConfig,
    options: FitOptions,
}

impl BackendJob for LanguageFit<'_> {
    type Output = LanguageSummary;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        choice: DeviceChoice,
    ) -> Result<Self::Output> {
        let options = FitOptions {
            accelerator: !choice.is_cpu(),
            ..self.options
        };
        fit_language::<B>(self.config, device, &options)
    }
}

/// Options of `topotrain analyze prune` that only language models use.
#[derive(Args, Clone, Debug)]
pub struct LanguagePruneArgs {
    /// Language models: tokens per validation window (default: the model's block size).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Language models: batches of `--batch-size` validation windows evaluated per sparsity.
    #[arg(long, default_value_t = 20)]
    pub eval_batches: usize,
}

#[derive(Serialize)]
struct LanguagePruneReport {
    checkpoint: String,
    data: String,
    layers: Vec<String>,
    block_size: usize,
    windows: usize,
    rows: Vec<PruneRow>,
}

/// The paper's topographic layers of a GPT: every block's MLP input projection.
const GPT_TOPOGRAPHIC_LAYERS: &str = "transformer.h.*.mlp.c_fc";

/// Whether `path` is a GPT checkpoint (a file holding a token embedding).
pub fn is_gpt_checkpoint(path: &Path) -> bool {
    path.is_file() && models::inspect_gpt_checkpoint(path).is_ok()
}

/// The GPT of `--checkpoint` on the CPU and the layer patterns to analyse:
/// `--layers`, else every block's `c_fc`.
pub fn open_gpt(args: &ModelArgs) -> Result<(models::Gpt<trainer::Cpu>, Vec<String>)> {
    let model = models::load_gpt(&args.checkpoint, &Default::default())
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    let layers = args
        .layers
        .clone()
        .unwrap_or_else(|| vec![GPT_TOPOGRAPHIC_LAYERS.to_string()]);
    Ok((model, layers))
}

/// `topotrain analyze prune` on a GPT checkpoint: L1 unstructured pruning of
/// the selected layers (default every block's `c_fc`), then the validation
/// loss of the token folder `--data` (its val.bin) per sparsity.
pub fn prune(args: &PruneArgs) -> Result<()> {
    let batch_size = args.data.batch;
    let eval_batches = args.language.eval_batches;
    if batch_size == 0 || eval_batches == 0 {
        bail!("--batch-size and --eval-batches must be at least 1");
    }
    let (model, layers) = open_gpt(&args.model)?;
    let block_size = args
        .language
        .block_size
        .unwrap_or(model.config().block_size);
    let (_, val) = open_tokens(&args.data.data, model.config().vocab_size)?;
    let patterns: Vec<&str> = layers.iter().map(String::as_str).collect();
    let rows = prune_curve(
        &model,
        &patterns,
        &args.sparsity,
        &val,
        block_size,
        batch_size,
        eval_batches,
    )?;
    let report = LanguagePruneReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        data: args.data.data.display().to_string(),
        layers,
        block_size,
        windows: batch_size * eval_batches,
        rows,
    };
    args.output.finish("prune", &report, || {
        let mut table = format!(
            "{}\n| sparsity | val loss | val perplexity | weights pruned |\n|---:|---:|---:|---:|\n",
            report.checkpoint
        );
        for row in &report.rows {
            table += &format!(
                "| {:.0}% | {:.4} | {:.1} | {} |\n",
                100.0 * row.sparsity,
                row.val_loss,
                row.val_perplexity,
                row.pruned_weights
            );
        }
        table
    })
}

/// What `analyze dimensionality` measured on a GPT.
pub struct GptDimensionality {
    /// Tokens per window.
    pub block_size: usize,
    pub dimensionality: DatasetDimensionality,
}

/// `topotrain analyze dimensionality` on a GPT checkpoint: the effective
/// dimensionality of the selected layers' outputs (default every block's
/// `c_fc`) over windows of the token folder `--data` (its val.bin), each
/// token position one sample of a layer's units (`--samples images`: one
/// per window, averaged over its tokens). `--max-images` caps the
/// windows (default: as many as fit the file, spread evenly) and `--batch-size`
/// is windows per forward pass.
pub fn dimensionality(args: &DimensionalityArgs) -> Result<GptDimensionality> {
    if args.modules.modules.is_some() {
        bail!("--modules applies to vision models; for a GPT name the layers with --layers");
    }
    let batch = args.data.batch;
    if batch == 0 || args.passes == 0 {
        bail!("--batch-size and --passes must be at least 1");
    }
    let (model, patterns) = open_gpt(&args.model)?;
    let block_size = model.config().block_size;
    let (_, val) = open_tokens(&args.data.data, model.config().vocab_size)?;
    if val.len() <= block_size + 1 {
        bail!(
            "{}: val.bin has {} tokens, fewer than one window of {block_size}",
            args.data.data.display(),
            val.len()
        );
    }
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let names: Vec<String> = model
        .select_layers(&patterns)?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let count = args
        .data
        .max_images
        .unwrap_or(val.len() / block_size)
        .max(1);
    let windows = eval_windows(&val, block_size, count);
    let samples = args.samples.unwrap_or(Samples::Positions);
    let per_window = match samples {
        Samples::Positions => block_size,
        Samples::Images => 1,
    };
    let mut accumulator = Accumulator::new(&names);
    let bar = trainer::progress::bar((windows.len() * args.passes) as u64, "dimensionality");
    for _ in 0..args.passes {
        for starts in windows.chunks(batch) {
            let t = std::time::Instant::now();
            let (x, _) =
                window_batch::<trainer::Cpu>(&val, starts, block_size, &Default::default());
            accumulator.data_seconds += t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let mut taps = Taps::wanting(&names);
            model.forward_tapped(x, &mut taps);
            let responses = taps
                .into_captured()
                .into_iter()
                .map(|(_, activation)| unit_responses(activation, samples))
                .collect::<Result<Vec<_>>>()?;
            accumulator.forward_seconds += t.elapsed().as_secs_f64();
            accumulator.add(&responses, starts.len() * per_window)?;
            bar.inc(starts.len() as u64);
        }
    }
    bar.finish_and_clear();
    Ok(GptDimensionality {
        block_size,
        dimensionality: accumulator.finish()?,
    })
}
