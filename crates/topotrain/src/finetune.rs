//! `topotrain finetune`: LoRA adapters trained on a frozen GPT (see
//! `trainer::language`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use trainer::language::LanguageConfig;
use trainer::FitOptions;

use crate::fit::{apply_language_flags, fit_on_device, print_summary};

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
pub fn run(args: FinetuneArgs) -> Result<()> {
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
    apply_language_flags(&mut config, &args.device, &args.out, args.threads)?;
    let options = FitOptions {
        progress: true,
        interrupter: crate::signals::interrupter()?,
        ..FitOptions::default()
    };
    print_summary(&fit_on_device(&config, options)?)
}
