//! `topotrain analyze sweep-report`: over a `topotrain sweep` directory (one
//! `tau_<tau>/` run per tau, each with `summary.json`, `config.toml` and
//! checkpoints), accuracy against mean weight smoothness with its Pareto
//! front (TopoNets' Fig. 2), and, given `--data`, effective dimensionality
//! against tau.

use std::path::{Path, PathBuf};

use analysis::plots::{line_chart, pareto_front, pareto_plot, LabelledPoint, Labels, Series};
use analysis::smoothness::SmoothnessCurve;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::data::open_dataset;
use crate::dimensionality::{dataset_dimensionality, Sampling};
use crate::input::{run_config, InputArgs};
use crate::output::wrote_lines;
use crate::smoothness::layers_smoothness;
use crate::{input_channels, layer_patterns, Analysed, Cpu, OutputArgs, Printout, Samples};

#[derive(Args)]
pub struct SweepReportArgs {
    /// The sweep's directory (the base config's output.dir).
    #[arg(long)]
    pub sweep: PathBuf,
    /// Layer patterns; default: the runs' [topography] layers.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
    /// Validation data for effective dimensionality (skipped without it).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images for effective dimensionality.
    #[arg(long, default_value_t = 1000)]
    pub max_images: usize,
    #[arg(long = "batch-size", alias = "batch", default_value_t = 64)]
    pub batch: usize,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One run; the Pareto plot puts it at (mean_smoothness, 100 * top1), the
/// ED plot at (tau, mean_effective_dimensionality).
#[derive(Debug, Serialize)]
struct Row {
    tau: f64,
    top1: f64,
    top5: f64,
    mean_smoothness: f64,
    mean_effective_dimensionality: Option<f64>,
    /// No other run is both smoother and more accurate.
    on_pareto_front: bool,
    run_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct SweepReport {
    sweep: String,
    layers: Vec<String>,
    rows: Vec<Row>,
    pareto_png: Option<String>,
    pareto_svg: Option<String>,
    ed_png: Option<String>,
    ed_svg: Option<String>,
}

/// Tau of a run: from its directory name `tau_<tau>`, else its summary.
fn run_tau(dir: &Path, summary: &trainer::Summary) -> f64 {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("tau_"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(summary.tau)
}

pub fn run(args: SweepReportArgs) -> Result<Printout> {
    let mut runs: Vec<(f64, PathBuf, trainer::Summary)> = std::fs::read_dir(&args.sweep)
        .with_context(|| format!("cannot read the sweep directory {}", args.sweep.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| trainer::sweep::finished(&p).map(|s| (run_tau(&p, &s), p, s)))
        .collect();
    if runs.is_empty() {
        bail!(
            "{} holds no finished run (a tau_<tau>/ directory with summary.json); run `topotrain sweep` first",
            args.sweep.display()
        );
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // One layer selection for every run, so tau = 0 is measured where tau > 0 acts.
    let configs: Vec<Option<trainer::RunConfig>> = runs
        .iter()
        .map(|(_, dir, _)| run_config(dir))
        .collect::<Result<_>>()?;
    let topographic = configs
        .iter()
        .flatten()
        .find(|c| c.topography.as_ref().is_some_and(|t| !t.layers.is_empty()));
    let patterns = layer_patterns(
        args.layers.as_deref(),
        topographic.or(configs.iter().flatten().next()),
    );

    let device = Default::default();
    let mut rows = Vec::new();
    let mut names = Vec::new();
    for ((tau, dir, summary), run) in runs.iter().zip(&configs) {
        let model = trainer::eval::load_model::<Cpu>(dir, &device)
            .with_context(|| format!("cannot load the run {}", dir.display()))?;
        let layers = model.layer_weights(&patterns)?;
        names = layers.iter().map(|l| l.name.clone()).collect();
        let curves: Vec<SmoothnessCurve> = layers_smoothness(&layers)?
            .into_iter()
            .map(|l| l.curve)
            .collect();
        let mean_smoothness = analysis::smoothness::mean_score(&curves);
        let ed = match &args.data {
            Some(path) => {
                let input = args.input.resolve(run.as_ref(), input_channels(&model))?;
                let data = open_dataset(path, &input)?;
                let result = dataset_dimensionality(
                    &model,
                    &names,
                    &data,
                    &input,
                    Sampling {
                        batch: args.batch,
                        samples: Samples::Images,
                        max_images: Some(args.max_images),
                        passes: 1,
                    },
                )?;
                Some(result.mean)
            }
            None => None,
        };
        rows.push(Row {
            tau: *tau,
            top1: summary.val_top1,
            top5: summary.val_top5,
            mean_smoothness,
            mean_effective_dimensionality: ed,
            on_pareto_front: false,
            run_dir: dir.clone(),
        });
    }
    let accuracy_smoothness: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.mean_smoothness, 100.0 * r.top1))
        .collect();
    for i in pareto_front(&accuracy_smoothness) {
        rows[i].on_pareto_front = true;
    }

    let mut report = SweepReport {
        sweep: args.sweep.display().to_string(),
        layers: names,
        rows,
        pareto_png: None,
        pareto_svg: None,
        ed_png: None,
        ed_svg: None,
    };
    if let Some(dir) = args.output.dir()? {
        let points: Vec<LabelledPoint> = report
            .rows
            .iter()
            .zip(&accuracy_smoothness)
            .map(|(r, &(x, y))| LabelledPoint {
                x,
                y,
                label: format!("tau={}", r.tau),
            })
            .collect();
        let chart = pareto_plot(
            Labels {
                title: "accuracy vs weight smoothness",
                x: "mean weight smoothness",
                y: "top-1 accuracy (%)",
            },
            &points,
        )?;
        let paths = args.output.save_figure(&chart, dir, "pareto")?;
        (report.pareto_png, report.pareto_svg) = (Some(paths.png), Some(paths.svg));
        let eds: Option<Vec<(f64, f64)>> = report
            .rows
            .iter()
            .map(|r| r.mean_effective_dimensionality.map(|ed| (r.tau, ed)))
            .collect();
        if let Some(points) = eds {
            let series = [Series {
                label: String::new(),
                points,
            }];
            let chart = line_chart(
                Labels {
                    title: "effective dimensionality vs tau",
                    x: "tau",
                    y: "mean effective dimensionality",
                },
                &series,
            )?;
            let paths = args.output.save_figure(&chart, dir, "ed_vs_tau")?;
            (report.ed_png, report.ed_svg) = (Some(paths.png), Some(paths.svg));
        }
    }
    args.output.finish("sweep_report", &report, || {
        let mut s = format!(
            "{:>8} {:>8} {:>8} {:>11} {:>8}\n",
            "tau", "top-1", "top-5", "smoothness", "ED"
        );
        for r in &report.rows {
            s += &format!(
                "{:>8} {:>7.2}% {:>7.2}% {:>11.4} {:>8}\n",
                r.tau,
                100.0 * r.top1,
                100.0 * r.top5,
                r.mean_smoothness,
                r.mean_effective_dimensionality
                    .map_or("-".into(), |e| format!("{e:.3}"))
            );
        }
        s += &wrote_lines(&[
            &report.pareto_png,
            &report.pareto_svg,
            &report.ed_png,
            &report.ed_svg,
        ]);
        s
    })
}
