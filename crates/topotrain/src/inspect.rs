//! `topotrain inspect --checkpoint CKPT`: each topographic layer's sheet and
//! its TopoLoss at tau = 1, for run directories, our checkpoints and
//! PyTorch state dicts alike.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use models::topography::TopographyConfig;
use models::Architecture;

use crate::backend::CpuBackend;
use network_analysis::input::run_config;
use network_analysis::topo_loss::summarise_layers;

#[derive(Args)]
pub struct InspectArgs {
    /// A run directory, one of its checkpoints, a .safetensors or a PyTorch .pt.
    #[arg(long, required_unless_present = "checkpoint_path")]
    checkpoint: Option<PathBuf>,
    /// The checkpoint, given without --checkpoint (as before).
    #[arg(hide = true, conflicts_with = "checkpoint")]
    checkpoint_path: Option<PathBuf>,
    /// Architecture (resnet18, resnet50, vit_b_32); inferred from the checkpoint when omitted.
    #[arg(long)]
    arch: Option<String>,
    /// Blur factor, clamped per layer to min(factor, sheet height, sheet width)
    /// (default: the run's [topography] factors, else 3).
    #[arg(long)]
    factor: Option<f64>,
    /// Layer patterns (dotted globs, comma-separated); default: the run's
    /// [topography] layers, else every Conv2d and Linear layer.
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    threads: crate::threads::ThreadsArg,
}

/// Short torchvision-style name of an architecture, as `--arch` takes it.
fn arch_name(architecture: &Architecture) -> String {
    match architecture {
        Architecture::ResNet(config) => config.depth_name(),
        Architecture::Vit(_) => "vit_b_32".to_string(),
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    args.threads.apply();
    let checkpoint = args
        .checkpoint
        .as_ref()
        .or(args.checkpoint_path.as_ref())
        .context("give the checkpoint with --checkpoint")?;
    let run = run_config(checkpoint)?;
    let model = trainer::eval::load_model::<CpuBackend>(checkpoint, &Default::default())?;
    let architecture = model.architecture();
    if let Some(arch) = &args.arch {
        let found = arch_name(&architecture);
        if *arch != found {
            bail!(
                "{}: --arch {arch} was given, but the checkpoint holds a {}; \
                 leave --arch out to use the checkpoint's architecture",
                checkpoint.display(),
                architecture.describe()
            );
        }
    }
    let run_topography = run.as_ref().and_then(|r| r.topography.clone());
    let selection = match (run_topography, &args.layers, args.factor) {
        // The run's own layers and factors, unless told otherwise.
        (Some(topography), None, None) => topography,
        (run_topography, layers, factor) => {
            let patterns = network_analysis::layer_patterns(layers.as_deref(), run.as_ref());
            let factor = factor.unwrap_or(3.0);
            if run_topography.is_some() && layers.is_none() {
                eprintln!("the run's layers, each at --factor {factor}");
            }
            TopographyConfig::uniform(&patterns, factor, 1.0)
        }
    };
    let summaries = summarise_layers(&model, &selection)
        .with_context(|| format!("inspecting {}", checkpoint.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        println!("{} ({})", checkpoint.display(), architecture.describe());
        println!(
            "{:<32} {:>7} {:>7} {:>7} {:>10}",
            "layer", "sheet_h", "sheet_w", "factor", "topo_loss"
        );
        for s in &summaries {
            println!(
                "{:<32} {:>7} {:>7} {:>7} {:>10.6}",
                s.name, s.sheet_h, s.sheet_w, s.factor, s.topo_loss
            );
        }
    }
    Ok(())
}
