//! Language-model commands (see `trainer::language`): `fit` with a language
//! config, `finetune` (LoRA on a base checkpoint) and `analyze prune`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use trainer::language::{
    fit_language, open_tokens, prune_curve, LanguageConfig, LanguageSummary, PruneRow,
};
use trainer::DeviceSpec;

use crate::fit::FitArgs;

/// `topotrain fit` on a language config.
pub fn run_fit(args: &FitArgs) -> Result<()> {
    if args.resume || args.epochs.is_some() {
        bail!("--resume and --epochs do not apply to language configs (set training.steps)");
    }
    let mut config = LanguageConfig::load(&args.config)?;
    if let Some(tau) = args.tau {
        config = config.with_tau(tau)?;
    }
    apply_common(&mut config, &args.device, &args.out, args.threads)?;
    print_summary(&fit_on_device(&config)?)
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
    /// "cpu" or "cuda[:N]" (overrides training.device).
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
    print_summary(&fit_on_device(&config)?)
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

fn fit_on_device(config: &LanguageConfig) -> Result<LanguageSummary> {
    trainer::device::set_cpu_threads(config.training.threads);
    match DeviceSpec::parse(&config.training.device)? {
        DeviceSpec::Cpu => fit_language::<trainer::CpuTrain>(config, Default::default(), false),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => {
            let device = burn::backend::cuda::CudaDevice::new(index);
            fit_language::<burn::backend::Autodiff<burn::backend::Cuda>>(config, device, true)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => {
            bail!("this topotrain was built without CUDA; rebuild with `--features cuda`")
        }
    }
}

/// `topotrain analyze ...` for language models.
#[derive(Subcommand)]
pub enum AnalyzeCommand {
    /// L1 unstructured pruning of a GPT's c_fc layers: validation loss per sparsity.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// GPT checkpoint (ours or NanoGPT's).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Token dataset folder (`topotrain prep kjv`); its val.bin is evaluated.
    #[arg(long)]
    pub data: PathBuf,
    /// Sparsities in [0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.5,0.8")]
    pub sparsity: Vec<f64>,
    /// Layers to prune (dotted glob patterns).
    #[arg(long, default_value = "transformer.h.*.mlp.c_fc")]
    pub layers: Vec<String>,
    /// Tokens per window (default: the model's block size).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Windows per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Batches of validation windows.
    #[arg(long, default_value_t = 20)]
    pub eval_batches: usize,
    /// Write the rows as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run_analyze(command: AnalyzeCommand) -> Result<()> {
    match command {
        AnalyzeCommand::Prune(args) => run_prune(args),
    }
}

fn run_prune(args: PruneArgs) -> Result<()> {
    if args.batch_size == 0 || args.eval_batches == 0 {
        bail!("--batch-size and --eval-batches must be at least 1");
    }
    let device = Default::default();
    let model: models::Gpt<trainer::Cpu> = models::load_gpt(&args.checkpoint, &device)
        .with_context(|| format!("cannot load {}", args.checkpoint.display()))?;
    let block = args.block_size.unwrap_or(model.config().block_size);
    let (_, val) = open_tokens(&args.data, model.config().vocab_size)?;
    let patterns: Vec<&str> = args.layers.iter().map(String::as_str).collect();
    let rows = prune_curve(
        &model,
        &patterns,
        &args.sparsity,
        &val,
        block,
        args.batch_size,
        args.eval_batches,
    )?;
    println!("{}", args.checkpoint.display());
    println!("| sparsity | val loss | val perplexity | weights pruned |");
    println!("|---:|---:|---:|---:|");
    for PruneRow {
        sparsity,
        val_loss,
        val_perplexity,
        pruned_weights,
    } in &rows
    {
        println!(
            "| {:.0}% | {val_loss:.4} | {val_perplexity:.1} | {pruned_weights} |",
            100.0 * sparsity
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
