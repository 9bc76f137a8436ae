//! `topotrain inspect CHECKPOINT`: each topographic layer's sheet and its
//! TopoLoss at tau = 1, for our checkpoints and PyTorch state dicts alike.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use models::topography::{TopoLayer, Topography, TopographyConfig};
use models::{inspect_checkpoint, load_weights, Architecture};
use serde::Serialize;

use crate::device::CpuBackend;

#[derive(Args)]
pub struct InspectArgs {
    /// A checkpoint: PyTorch `.pt`/`.pth`, safetensors, or one of ours.
    checkpoint: PathBuf,
    /// Architecture (resnet18, resnet50, vit_b_32); inferred from the checkpoint when omitted.
    #[arg(long)]
    arch: Option<String>,
    /// Blur factor, clamped per layer to min(factor, sheet height, sheet width).
    #[arg(long, default_value_t = 3.0)]
    factor: f64,
    /// Layer patterns (dotted globs, comma-separated); default: every Conv2d and Linear.
    #[arg(long, value_delimiter = ',', default_value = "**")]
    layers: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct LayerSummary {
    pub name: String,
    pub sheet_h: usize,
    pub sheet_w: usize,
    pub factor: f64,
    pub topo_loss: f64,
}

/// Short torchvision-style name of an architecture, as `--arch` takes it.
fn arch_name(architecture: &Architecture) -> String {
    match architecture {
        Architecture::ResNet(config) => config.depth_name(),
        Architecture::Vit(_) => "vit_b_32".to_string(),
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    let info = inspect_checkpoint(&args.checkpoint)?;
    if let Some(arch) = &args.arch {
        let found = arch_name(&info.architecture);
        if *arch != found {
            bail!(
                "{}: --arch {arch} was given, but the checkpoint holds a {}; \
                 leave --arch out to use the checkpoint's architecture",
                args.checkpoint.display(),
                info.architecture.describe()
            );
        }
    }
    let device = Default::default();
    let mut model = info.architecture.init::<CpuBackend>(&device)?;
    load_weights(&mut model, &info)?;
    let summaries = summarise_layers(&model, args.factor, &args.layers)
        .with_context(|| format!("inspecting {}", args.checkpoint.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        println!(
            "{} ({})",
            args.checkpoint.display(),
            info.architecture.describe()
        );
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

/// Sheet and TopoLoss (tau = 1) of each layer matching `patterns`.
pub fn summarise_layers<B: burn::tensor::backend::Backend>(
    model: &impl models::Topographic<B>,
    factor: f64,
    patterns: &[String],
) -> Result<Vec<LayerSummary>> {
    if !(factor.is_finite() && factor >= 1.0) {
        bail!("--factor must be a number >= 1, got {factor}");
    }
    let topography = Topography::new(model, &TopographyConfig::uniform(patterns, factor, 1.0))?;
    let report = topography.report(model, 0)?;
    Ok(topography
        .layers
        .iter()
        .zip(report.layers)
        .map(|(layer, loss): (&TopoLayer, _)| LayerSummary {
            name: layer.name.clone(),
            sheet_h: layer.loss.sheet().height,
            sheet_w: layer.loss.sheet().width,
            factor: layer.factor_h.min(layer.factor_w),
            topo_loss: loss.unscaled_loss,
        })
        .collect())
}
