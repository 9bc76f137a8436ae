//! `topotrain plot --run RUN`: a run's training curves from its
//! `metrics.jsonl` (loss, accuracy, TopoLoss, learning rate against the
//! step) as PNG and SVG figures, with the plotted data in `curves.json`.

use std::path::PathBuf;

use analysis::plots::{line_chart, Labels, Series};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

#[derive(Args)]
pub struct PlotArgs {
    /// A run directory (holding metrics.jsonl).
    #[arg(long)]
    pub run: PathBuf,
    /// Directory for the figures and curves.json (default: RUN/plots).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub png: network_analysis::PngScale,
}

/// One figure: its file stem, title, y axis and curves.
#[derive(Debug, Serialize)]
struct Chart {
    stem: &'static str,
    title: &'static str,
    y: &'static str,
    series: Vec<Series>,
}

/// `(step, value)` of `field` on the lines of `kind` that have it as a number.
fn points(lines: &[Value], kind: &str, field: &str, scale: f64) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["kind"] == kind)
        .filter_map(|l| Some((l["step"].as_f64()?, l[field].as_f64()? * scale)))
        .collect()
}

/// The mean of each line's per-layer TopoLoss (tau = 1); lines written
/// before `mean_topo_loss` existed have the layers too.
fn mean_topo_points(lines: &[Value], kind: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["kind"] == kind)
        .filter_map(|l| {
            let layers = l["topo_layers"].as_object().filter(|m| !m.is_empty())?;
            let sum: f64 = layers.values().filter_map(Value::as_f64).sum();
            Some((l["step"].as_f64()?, sum / layers.len() as f64))
        })
        .collect()
}

/// The charts a run's metrics give; series without points are left out,
/// and charts without series.
fn charts(lines: &[Value]) -> Vec<Chart> {
    let series = |label: &str, points: Vec<(f64, f64)>| Series {
        label: label.to_string(),
        points,
    };
    let mut charts = vec![
        Chart {
            stem: "loss",
            title: "Loss",
            y: "cross-entropy",
            series: vec![
                series("train (task)", points(lines, "train", "task_loss", 1.0)),
                series("validation", points(lines, "epoch", "val_loss", 1.0)),
            ],
        },
        Chart {
            stem: "accuracy",
            title: "Accuracy",
            y: "accuracy (%)",
            series: vec![
                series("train", points(lines, "epoch", "train_acc", 100.0)),
                series(
                    "validation top-1",
                    points(lines, "epoch", "val_top1", 100.0),
                ),
                series(
                    "validation top-5",
                    points(lines, "epoch", "val_top5", 100.0),
                ),
            ],
        },
        Chart {
            stem: "topoloss",
            title: "TopoLoss (tau = 1, mean over layers)",
            y: "TopoLoss",
            series: vec![series("train", mean_topo_points(lines, "train"))],
        },
        Chart {
            stem: "lr",
            title: "Learning rate",
            y: "learning rate",
            series: vec![series("lr", points(lines, "train", "lr", 1.0))],
        },
    ];
    for chart in &mut charts {
        chart.series.retain(|s| !s.points.is_empty());
    }
    charts.retain(|c| !c.series.is_empty());
    charts
}

pub fn run(args: PlotArgs) -> Result<()> {
    let path = args.run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: give a run directory (the output.dir of `topotrain fit`)",
            path.display()
        )
    })?;
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {} is not JSON", path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let charts = charts(&lines);
    if charts.is_empty() {
        bail!("{} has no steps or epochs to plot yet", path.display());
    }
    let out = args.out.clone().unwrap_or_else(|| args.run.join("plots"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for chart in &charts {
        let labels = Labels {
            title: chart.title,
            x: "step",
            y: chart.y,
        };
        let figure = line_chart(labels, &chart.series)?;
        let files = figure.save(&out.join(format!("{}.png", chart.stem)), args.png.png_scale)?;
        eprintln!("wrote {} and {}", files.png.display(), files.svg.display());
    }
    let json = out.join("curves.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&charts)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_come_from_the_lines_that_hold_them() {
        let lines: Vec<Value> = [
            r#"{"kind":"eval","step":0,"val_loss":2.3}"#,
            r#"{"kind":"train","step":1,"lr":0.1,"task_loss":2.0,"topo_layers":{"a":0.2,"b":0.4}}"#,
            r#"{"kind":"train","step":2,"lr":0.2,"task_loss":1.5,"topo_layers":{"a":0.1,"b":0.3}}"#,
            r#"{"kind":"epoch","step":2,"train_acc":0.5,"val_top1":0.625,"val_top5":0.875,"val_loss":1.25,"topo_layers":{}}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let charts = charts(&lines);
        let find = |stem: &str| charts.iter().find(|c| c.stem == stem).unwrap();
        let loss = find("loss");
        assert_eq!(loss.series[0].points, vec![(1.0, 2.0), (2.0, 1.5)]);
        assert_eq!(loss.series[1].points, vec![(2.0, 1.25)]);
        let accuracy = find("accuracy");
        assert_eq!(accuracy.series.len(), 3);
        assert_eq!(accuracy.series[1].points, vec![(2.0, 62.5)]);
        let topo = &find("topoloss").series[0].points;
        assert_eq!(topo.len(), 2);
        assert!((topo[0].1 - 0.3).abs() < 1e-12 && (topo[1].1 - 0.2).abs() < 1e-12);
        assert_eq!(find("lr").series[0].points, vec![(1.0, 0.1), (2.0, 0.2)]);
    }

    #[test]
    fn a_run_without_topography_or_accuracy_has_no_such_charts() {
        let lines: Vec<Value> = [
            r#"{"kind":"train","step":1,"lr":0.1,"task_loss":2.0,"topo_layers":{}}"#,
            r#"{"kind":"epoch","step":1,"val_loss":1.9,"val_perplexity":6.7,"topo_layers":{}}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let stems: Vec<&str> = charts(&lines).iter().map(|c| c.stem).collect();
        assert_eq!(stems, vec!["loss", "lr"]);
    }
}
