//! `topotrain analyze prune`: the efficiency probes. The selected
//! (topographic) layers are L1-pruned at several sparsities, or their weight
//! sheets down-sampled by several factors, and each variant is scored on
//! held-out data: a classifier's accuracy on a validation set, a GPT's loss
//! on windows of a token folder, against the share of those layers' weights
//! kept.

use analysis::plots::{line_chart, Labels, Series};
use analysis::prune::{apply_mask, downsample_sheet, l1_masks, PruneScope};
use anyhow::{bail, Context, Result};
use burn::module::Module;
use clap::{Args, ValueEnum};
use serde::Serialize;
use trainer::language::{eval_windows, open_tokens};

use crate::data::{open_dataset, DataArgs};
use crate::input::{check_class_count, run_classes};
use crate::network::{ImageScoring, WindowScoring};
use crate::output::display_name;
use crate::{
    check_range, Analysed, FigurePaths, HostWeights, ModelArgs, OpenedNetwork, OutputArgs,
    Printout, Score,
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
    /// Language models: tokens per validation window (default: the model's block size).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Language models: batches of `--batch-size` validation windows scored per variant.
    #[arg(long, default_value_t = 20)]
    pub eval_batches: usize,
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
    #[serde(flatten)]
    pub score: Score,
}

#[derive(Debug, Serialize)]
struct PruneReport {
    checkpoint: String,
    data: String,
    layers: Vec<String>,
    /// All parameters of the model.
    model_params: usize,
    /// The figure plots `100 * kept_fraction` against `100 * top1` (a GPT:
    /// against the loss), one line per method.
    variants: Vec<Variant>,
    #[serde(flatten)]
    figure: Option<FigurePaths>,
}

/// One variant before scoring: its method, amount, weights kept and the
/// layers' new weights.
struct Plan {
    method: &'static str,
    amount: f64,
    kept: usize,
    layers: Vec<HostWeights>,
}

/// Every variant's layers: L1 masks per sparsity, sheet down-sampling per
/// factor (clamped to each layer's sheet sides).
fn plans(args: &PruneArgs, layers: &[HostWeights]) -> Result<Vec<Plan>> {
    let scope = match args.scope {
        Scope::PerLayer => PruneScope::PerLayer,
        Scope::Global => PruneScope::Global,
    };
    let with = |weights: Vec<Vec<f32>>| -> Vec<HostWeights> {
        layers
            .iter()
            .zip(weights)
            .map(|(l, weights)| l.with_weights(weights))
            .collect()
    };
    let slices: Vec<&[f32]> = layers.iter().map(|l| l.weights.as_slice()).collect();
    let mut plans = Vec::new();
    for &sparsity in &args.sparsity {
        let masks = l1_masks(&slices, sparsity, scope)?;
        let weights = layers
            .iter()
            .zip(&masks)
            .map(|(l, m)| apply_mask(&l.weights, m))
            .collect::<analysis::Result<Vec<_>>>()?;
        plans.push(Plan {
            method: "l1",
            amount: sparsity,
            kept: masks.iter().flatten().filter(|&&k| k).count(),
            layers: with(weights),
        });
    }
    for &factor in &args.factors {
        let (mut kept, mut weights) = (0, Vec::new());
        for l in layers {
            let f = factor.min(l.sheet.height.min(l.sheet.width) as f64);
            let d = downsample_sheet(&l.weights, l.e, l.sheet, f)
                .with_context(|| format!("down-sampling {} by {f}", l.name))?;
            kept += d.params_kept;
            weights.push(d.weights);
        }
        plans.push(Plan {
            method: "downsample",
            amount: factor,
            kept,
            layers: with(weights),
        });
    }
    Ok(plans)
}

/// Each variant of `network`'s `layers`, scored on `data`.
fn score_variants<N: Analysed>(
    network: &N,
    layers: &[HostWeights],
    plans: Vec<Plan>,
    data: &N::Scoring,
) -> Result<Vec<Variant>> {
    let params_total: usize = layers.iter().map(|l| l.weights.len()).sum();
    let count = plans.len();
    plans
        .into_iter()
        .enumerate()
        .map(|(index, plan)| {
            // Each evaluation shows its own bar.
            eprintln!(
                "variant {}/{count}: {} {}",
                index + 1,
                plan.method,
                plan.amount
            );
            let score = network.with_layer_weights(&plan.layers)?.evaluate(data)?;
            Ok(Variant {
                method: plan.method.to_string(),
                amount: plan.amount,
                params_kept: plan.kept,
                params_total,
                kept_fraction: plan.kept as f64 / params_total as f64,
                score,
            })
        })
        .collect()
}

pub fn run(args: PruneArgs) -> Result<Printout> {
    for &s in &args.sparsity {
        check_range("--sparsity", s, 0.0, 1.0)?;
    }
    for &f in &args.factors {
        check_range("--factors", f, 1.0, f64::MAX)?;
    }
    if args.data.batch == 0 || args.eval_batches == 0 {
        bail!("--batch-size and --eval-batches must be at least 1");
    }
    let (layers, model_params, variants) = match args.model.open()? {
        OpenedNetwork::Vision(opened) => {
            let layers = opened.layers()?;
            let input = args
                .data
                .input
                .resolve(opened.run.as_ref(), opened.in_channels())?;
            let batch = match args.data.max_images {
                Some(m) => args.data.batch.min(m.max(1)),
                None => args.data.batch,
            };
            let data = open_dataset(&args.data.data, &input)?;
            if run_classes(opened.run.as_ref(), &data, &args.data.data)?.is_none() {
                let classes = opened.network.architecture().num_classes();
                check_class_count(&data, classes, &args.model.checkpoint)?;
            }
            let scoring = ImageScoring {
                data,
                input,
                batch,
                max_batches: args.data.max_images.map(|m| m.div_ceil(batch)),
            };
            let plans = plans(&args, &layers)?;
            let variants = score_variants(&opened.network, &layers, plans, &scoring)?;
            (layers, opened.network.num_params(), variants)
        }
        OpenedNetwork::Language(opened) => {
            let model = &opened.network;
            let block = args.block_size.unwrap_or(model.config().block_size);
            let (_, tokens) = open_tokens(&args.data.data, model.config().vocab_size)?;
            let windows = eval_windows(&tokens, block, args.data.batch * args.eval_batches);
            let scoring = WindowScoring {
                tokens,
                windows,
                block,
                batch: args.data.batch,
            };
            let layers = opened.layers()?;
            let plans = plans(&args, &layers)?;
            let variants = score_variants(model, &layers, plans, &scoring)?;
            (layers, model.num_params(), variants)
        }
    };
    let figure = match args.output.dir()? {
        Some(dir) => Some(draw(&args, &variants, dir)?),
        None => None,
    };
    let report = PruneReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        data: args.data.data.display().to_string(),
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        model_params,
        variants,
        figure,
    };
    args.output.finish("prune", &report, || table(&report))
}

/// Accuracy (a GPT: loss) against the weights kept, one line per method.
fn draw(args: &PruneArgs, variants: &[Variant], dir: &std::path::Path) -> Result<FigurePaths> {
    let classifier = variants.iter().all(|v| v.score.top1.is_some());
    let y = |v: &Variant| match v.score.top1 {
        Some(top1) if classifier => 100.0 * top1,
        _ => v.score.loss,
    };
    let series = |method: &str, label: &str| Series {
        label: label.to_string(),
        points: {
            let mut p: Vec<(f64, f64)> = variants
                .iter()
                .filter(|v| v.method == method)
                .map(|v| (100.0 * v.kept_fraction, y(v)))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            p
        },
    };
    let (what, y_label) = if classifier {
        ("accuracy", "top-1 accuracy (%)")
    } else {
        ("validation loss", "validation loss (nats per token)")
    };
    let title = format!(
        "{}: {what} vs weights kept",
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
            y: y_label,
        },
        &curves,
    )?;
    args.output.save_figure(&chart, dir, "prune")
}

fn table(report: &PruneReport) -> String {
    let mut s = format!(
        "{:<11} {:>7} {:>12} {:>9} {:>9}\n",
        "method", "amount", "kept", "top-1", "top-5"
    );
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let mut samples = 0;
    for v in &report.variants {
        samples = v.score.samples;
        s += &format!(
            "{:<11} {:>7} {:>11.1}% {:>9} {:>9}  loss {:.4}\n",
            v.method,
            v.amount,
            100.0 * v.kept_fraction,
            percent(v.score.top1),
            percent(v.score.top5),
            v.score.loss
        );
    }
    s += &format!(
        "({samples} images or windows scored, {} layers)\n",
        report.layers.len()
    );
    if let Some(f) = &report.figure {
        s += &format!("wrote {f}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::tiny_gpt;
    use data_prep::text::{write_tokens, TokenFile};

    #[test]
    fn a_gpt_loses_what_l1_pruning_removes_and_keeps_its_loss_unpruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.bin");
        let ids: Vec<u16> = (0..400u32).map(|i| ((i * 7 + i / 5) % 64) as u16).collect();
        write_tokens(&path, &ids).unwrap();
        let tokens = TokenFile::open(&path, 64).unwrap();
        let windows = eval_windows(&tokens, 8, 6);
        let scoring = WindowScoring {
            tokens,
            windows,
            block: 8,
            batch: 3,
        };
        let gpt = tiny_gpt();
        let layers = gpt
            .layer_weights(&["transformer.h.*.mlp.c_fc".to_string()])
            .unwrap();
        let slices: Vec<&[f32]> = layers.iter().map(|l| l.weights.as_slice()).collect();
        let plans: Vec<Plan> = [0.0, 0.8]
            .iter()
            .map(|&sparsity| {
                let masks = l1_masks(&slices, sparsity, PruneScope::PerLayer).unwrap();
                let weights = apply_mask(&layers[0].weights, &masks[0]).unwrap();
                Plan {
                    method: "l1",
                    amount: sparsity,
                    kept: masks[0].iter().filter(|&&k| k).count(),
                    layers: vec![layers[0].with_weights(weights)],
                }
            })
            .collect();
        let variants = score_variants(&gpt, &layers, plans, &scoring).unwrap();
        let unpruned = gpt.evaluate(&scoring).unwrap();
        assert_eq!(variants[0].score, unpruned);
        assert_eq!(variants[0].params_kept, 16 * 64);
        assert_eq!(
            variants[1].params_kept,
            16 * 64 - (0.8f64 * 16.0 * 64.0).round() as usize
        );
        assert_eq!(unpruned.samples, 6);
        assert!(unpruned.top1.is_none());
        assert_ne!(variants[1].score.loss, unpruned.loss);
    }
}
