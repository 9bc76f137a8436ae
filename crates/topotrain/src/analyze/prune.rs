//! `topotrain analyze prune`: the efficiency probes. The selected
//! (topographic) layers are L1-pruned at several sparsities, or their weight
//! sheets down-sampled by several factors, and each variant is evaluated:
//! accuracy against the share of those layers' weights kept.
//!
//! A GPT checkpoint goes to [`crate::language::prune`] instead: L1 pruning
//! of its `c_fc` layers, scored by validation loss on a token folder.

use std::collections::HashMap;

use analysis::plots::{line_chart, Labels, Series};
use analysis::prune::{apply_mask, downsample_sheet, l1_masks, PruneScope};
use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use clap::{Args, ValueEnum};
use models::{Model, NativeGradient, Topographic};
use serde::Serialize;

use super::data::{open_dataset, DataArgs};
use super::{
    check_range, display_name, Cpu, CpuDevice, FigurePaths, Loaded, ModelArgs, OutputArgs,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scope {
    /// Each layer loses the same fraction of its weights.
    PerLayer,
    /// The smallest weights of all the layers together go.
    Global,
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// L1 unstructured sparsities (fractions pruned).
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.5,0.8")]
    pub sparsity: Vec<f64>,
    /// Sheet down-sampling factors (each clamped to a layer's sheet sides).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub factors: Vec<f64>,
    #[arg(long, value_enum, default_value = "per-layer")]
    pub scope: Scope,
    #[command(flatten)]
    pub language: crate::language::LanguagePruneArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// "l1" or "downsample".
    pub method: String,
    /// Sparsity (l1) or factor (downsample).
    pub amount: f64,
    /// Weights of the selected layers that are kept (non-zero, or stored).
    pub params_kept: usize,
    pub params_total: usize,
    pub kept_fraction: f64,
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
}

#[derive(Debug, Serialize)]
struct PruneReport {
    checkpoint: String,
    data: String,
    images: usize,
    layers: Vec<String>,
    /// All parameters of the model.
    model_params: usize,
    /// The figure plots `100 * kept_fraction` against `100 * top1`, one
    /// line per method.
    variants: Vec<Variant>,
    #[serde(flatten)]
    figure: Option<FigurePaths>,
}

/// Replaces float parameters by id.
struct Replace {
    values: HashMap<ParamId, TensorData>,
}

impl ModuleMapper<Cpu> for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Cpu, D>>) -> Param<Tensor<Cpu, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.values.remove(&id) {
            Some(data) => Tensor::from_data(data, &tensor.device()),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `model` with the selected layers' `[out, e]` weights replaced (mapped
/// back to Burn's layout as TopoLoss gradients are).
fn with_weights(
    model: &Model<Cpu>,
    candidates: &[models::TopoCandidate<Cpu>],
    weights: &[Vec<f32>],
    device: &CpuDevice,
) -> Result<Model<Cpu>> {
    let mut values = HashMap::new();
    for (c, w) in candidates.iter().zip(weights) {
        let flat = Tensor::<Cpu, 2>::from_data(TensorData::new(w.clone(), c.flat_shape()), device);
        let native = match c.native_gradient(flat)? {
            NativeGradient::Conv2d(t) => t.into_data(),
            NativeGradient::Linear(t) => t.into_data(),
        };
        values.insert(c.param_id, native);
    }
    let mut mapper = Replace { values };
    let mapped = model.clone().map(&mut mapper);
    if !mapper.values.is_empty() {
        bail!(
            "{} selected layer(s) were not found among the model's parameters",
            mapper.values.len()
        );
    }
    Ok(mapped)
}

pub fn run(args: PruneArgs) -> Result<()> {
    for &s in &args.sparsity {
        check_range("--sparsity", s, 0.0, 1.0)?;
    }
    if crate::language::is_gpt_checkpoint(&args.model.checkpoint) {
        return crate::language::prune(&args);
    }
    for &f in &args.factors {
        check_range("--factors", f, 1.0, f64::MAX)?;
    }
    if args.data.batch == 0 {
        bail!("--batch-size must be at least 1");
    }
    let loaded = Loaded::open(&args.model)?;
    let layers = loaded.layers()?;
    let patterns: Vec<&str> = loaded.patterns.iter().map(String::as_str).collect();
    let candidates = loaded.model.select_layers(&patterns)?;
    let input = args
        .data
        .input
        .resolve(loaded.run.as_ref(), loaded.in_channels())?;
    let data = open_dataset(&args.data.data, &input)?;
    let batch = match args.data.max_images {
        Some(m) => args.data.batch.min(m.max(1)),
        None => args.data.batch,
    };
    let max_batches = args.data.max_images.map(|m| m.div_ceil(batch));
    let params_total: usize = layers.iter().map(|l| l.weights.len()).sum();

    // Every variant's weights, then one evaluation each.
    let mut plans: Vec<(String, f64, usize, Vec<Vec<f32>>)> = Vec::new();
    let scope = match args.scope {
        Scope::PerLayer => PruneScope::PerLayer,
        Scope::Global => PruneScope::Global,
    };
    let slices: Vec<&[f32]> = layers.iter().map(|l| l.weights.as_slice()).collect();
    for &sparsity in &args.sparsity {
        let masks = l1_masks(&slices, sparsity, scope)?;
        let kept = masks.iter().flatten().filter(|&&k| k).count();
        let weights = layers
            .iter()
            .zip(&masks)
            .map(|(l, m)| apply_mask(&l.weights, m))
            .collect::<analysis::Result<Vec<_>>>()?;
        plans.push(("l1".into(), sparsity, kept, weights));
    }
    for &factor in &args.factors {
        let (mut kept, mut weights) = (0, Vec::new());
        for l in &layers {
            let f = factor.min(l.sheet.height.min(l.sheet.width) as f64);
            let d = downsample_sheet(&l.weights, l.e, l.sheet, f)
                .with_context(|| format!("down-sampling {} by {f}", l.name))?;
            kept += d.params_kept;
            weights.push(d.weights);
        }
        plans.push(("downsample".into(), factor, kept, weights));
    }
    let (mut variants, mut images) = (Vec::new(), 0);
    let count = plans.len();
    for (index, (method, amount, kept, weights)) in plans.into_iter().enumerate() {
        // Each evaluation shows its own bar.
        eprintln!("variant {}/{count}: {method} {amount}", index + 1);
        let model = with_weights(&loaded.model, &candidates, &weights, &loaded.device)?;
        let settings = trainer::eval::EvalSettings {
            resolution: input.res,
            batch_size: batch,
            mean: &input.mean,
            std: &input.std,
            max_batches,
            tta: trainer::eval::Tta::None,
        };
        let result = trainer::eval::evaluate(&model, &data, &settings, &loaded.device)?;
        images = result.images;
        variants.push(Variant {
            method,
            amount,
            params_kept: kept,
            params_total,
            kept_fraction: kept as f64 / params_total as f64,
            top1: result.top1,
            top5: result.top5,
            loss: result.loss,
        });
    }

    let mut figure = None;
    if let Some(dir) = args.output.dir()? {
        let series = |method: &str, label: &str| Series {
            label: label.to_string(),
            points: {
                let mut p: Vec<(f64, f64)> = variants
                    .iter()
                    .filter(|v| v.method == method)
                    .map(|v| (100.0 * v.kept_fraction, 100.0 * v.top1))
                    .collect();
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                p
            },
        };
        let title = format!(
            "{}: accuracy vs weights kept",
            display_name(&args.model.checkpoint)
        );
        let curves = [
            series("l1", "L1 unstructured pruning"),
            series("downsample", "sheet down-sampling"),
        ];
        let chart = line_chart(
            Labels {
                title: &title,
                x: "weights of the topographic layers kept (%)",
                y: "top-1 accuracy (%)",
            },
            &curves,
        )?;
        figure = Some(args.output.save_figure(&chart, dir, "prune")?);
    }
    let report = PruneReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        data: args.data.data.display().to_string(),
        images,
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        model_params: loaded.model.num_params(),
        variants,
        figure,
    };
    args.output.finish("prune", &report, || {
        let mut s = format!(
            "{:<11} {:>7} {:>12} {:>7} {:>7}\n",
            "method", "amount", "kept", "top-1", "top-5"
        );
        for v in &report.variants {
            s += &format!(
                "{:<11} {:>7} {:>11.1}% {:>6.2}% {:>6.2}%\n",
                v.method,
                v.amount,
                100.0 * v.kept_fraction,
                100.0 * v.top1,
                100.0 * v.top5
            );
        }
        s += &format!(
            "({} images, {} layers)\n",
            report.images,
            report.layers.len()
        );
        if let Some(f) = &report.figure {
            s += &format!("wrote {f}\n");
        }
        s
    })
}
