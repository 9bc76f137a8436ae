//! `topotrain analyze smoothness`: cosine similarity of unit weights against
//! sheet distance for each selected layer, its score, and the model's mean.

use analysis::plots::{line_chart, Labels, Series};
use analysis::smoothness::{mean_score, smoothness, SmoothnessCurve};
use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::output::display_name;
use crate::{FigurePaths, HostWeights, ModelArgs, OutputArgs, Printout};

#[derive(Args)]
pub struct SmoothnessArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSmoothness {
    pub layer: String,
    pub sheet_h: usize,
    pub sheet_w: usize,
    #[serde(flatten)]
    pub curve: SmoothnessCurve,
}

#[derive(Debug, Serialize)]
pub struct SmoothnessReport {
    pub checkpoint: String,
    /// Mean of the layers' scores.
    pub mean_score: f64,
    pub layers: Vec<LayerSmoothness>,
    /// The curves drawn: one per layer, or with many layers one per stage
    /// (bins pooled, weighted by their pairs; bins of few pairs left off).
    pub plotted: Vec<Series>,
    #[serde(flatten)]
    pub figure: Option<FigurePaths>,
}

/// Each layer's curve and score.
pub fn layers_smoothness(layers: &[HostWeights]) -> Result<Vec<LayerSmoothness>> {
    let bar = trainer::progress::bar(layers.len() as u64, "smoothness");
    let result = layers
        .iter()
        .map(|l| {
            bar.inc(1);
            Ok(LayerSmoothness {
                layer: l.name.clone(),
                sheet_h: l.sheet.height,
                sheet_w: l.sheet.width,
                curve: smoothness(&l.weights, l.e, l.sheet)?,
            })
        })
        .collect();
    bar.finish_and_clear();
    result
}

/// Layers drawn one curve each; more are pooled per stage.
const MAX_CURVES: usize = 6;
/// Distance bins with fewer pairs are left off the chart (noise).
const MIN_PAIRS: u64 = 20;

/// One curve per layer, or with many layers one per stage (the module name
/// before the first dot), pooling bins weighted by their pairs.
fn chart_series(layers: &[LayerSmoothness]) -> Vec<Series> {
    let mut groups: Vec<(String, Vec<&LayerSmoothness>)> = Vec::new();
    for l in layers {
        let key = if layers.len() > MAX_CURVES {
            l.layer.split('.').next().unwrap_or(&l.layer).to_string()
        } else {
            l.layer.clone()
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(l),
            None => groups.push((key, vec![l])),
        }
    }
    groups
        .into_iter()
        .map(|(key, members)| {
            let mut bins: std::collections::BTreeMap<u64, (f64, u64)> = Default::default();
            for l in &members {
                for ((&d, &c), &n) in l
                    .curve
                    .distances
                    .iter()
                    .zip(&l.curve.mean_cosine)
                    .zip(&l.curve.pairs)
                {
                    let bin = bins.entry(d.round() as u64).or_default();
                    bin.0 += c * n as f64;
                    bin.1 += n;
                }
            }
            let score = members.iter().map(|l| l.curve.score).sum::<f64>() / members.len() as f64;
            let label = if members.len() > 1 {
                format!("{key} ({} layers, score {score:.2})", members.len())
            } else {
                format!("{key} (score {score:.2})")
            };
            Series {
                label,
                points: bins
                    .into_iter()
                    .filter(|(_, (_, n))| *n >= MIN_PAIRS)
                    .map(|(d, (sum, n))| (d as f64, sum / n as f64))
                    .collect(),
            }
        })
        .collect()
}

pub fn run(args: SmoothnessArgs) -> Result<Printout> {
    let layers = layers_smoothness(&args.model.layer_weights()?)?;
    let curves: Vec<SmoothnessCurve> = layers.iter().map(|l| l.curve.clone()).collect();
    let mean = mean_score(&curves);
    let plotted = chart_series(&layers);
    let mut figure = None;
    if let Some(dir) = args.output.dir()? {
        let title = format!(
            "{}: weight smoothness {mean:.3}",
            display_name(&args.model.checkpoint)
        );
        let chart = line_chart(
            Labels {
                title: &title,
                x: "distance on the sheet (units)",
                y: "mean cosine similarity of weights",
            },
            &plotted,
        )?;
        figure = Some(args.output.save_figure(&chart, dir, "smoothness")?);
    }
    let report = SmoothnessReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        mean_score: mean,
        layers,
        plotted,
        figure,
    };
    args.output.finish("smoothness", &report, || {
        let mut s = format!(
            "{:<32} {:>9} {:>8} {:>8} {:>8}\n",
            "layer", "sheet", "near", "far", "score"
        );
        for l in &report.layers {
            s += &format!(
                "{:<32} {:>9} {:>8.4} {:>8.4} {:>8.4}\n",
                l.layer,
                format!("{}x{}", l.sheet_h, l.sheet_w),
                l.curve.near,
                l.curve.far,
                l.curve.score
            );
        }
        s += &format!("mean smoothness score: {:.4}\n", report.mean_score);
        if let Some(f) = &report.figure {
            s += &format!("wrote {f}\n");
        }
        s
    })
}
