//! `topotrain sweep`: one run per tau, each in `<output.dir>/tau_<tau>`,
//! resumable (finished runs are kept, interrupted ones resumed), then a
//! table of tau, top-1, top-5 and mean TopoLoss as Markdown and JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::classification::Summary;
use crate::config::RunConfig;

/// One row of the sweep table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub tau: f64,
    pub top1: f64,
    pub top5: f64,
    pub mean_topo_loss: Option<f64>,
    /// Validation images behind top1 and top5.
    pub val_images: Option<u64>,
    pub run_dir: PathBuf,
}

/// Parses `0,0.5,1` into taus.
pub fn parse_taus(text: &str) -> Result<Vec<f64>> {
    text.split(',')
        .map(|t| {
            let t = t.trim();
            let v: f64 = t
                .parse()
                .with_context(|| format!("--tau: '{t}' is not a number"))?;
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "--tau: {t} must be a finite number >= 0"
            );
            Ok(v)
        })
        .collect()
}

/// The directory of one tau's run.
pub fn run_dir(base: &Path, tau: f64) -> PathBuf {
    base.join(format!("tau_{tau}"))
}

/// The config of one tau's run.
pub fn config_for(base: &RunConfig, tau: f64) -> Result<RunConfig> {
    let mut config = base.with_tau(tau)?;
    config.output.dir = run_dir(&base.output.dir, tau);
    Ok(config)
}

/// A finished run's summary, if it finished.
pub fn finished(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads every tau's summary and writes `sweep.md` and `sweep.json` in the
/// base output directory. Missing runs are an error naming them.
pub fn collect(base: &RunConfig, taus: &[f64]) -> Result<Vec<SweepRow>> {
    let mut rows = Vec::new();
    for &tau in taus {
        let dir = run_dir(&base.output.dir, tau);
        let summary = finished(&dir).with_context(|| {
            format!("the run for tau {tau} ({}) has not finished", dir.display())
        })?;
        rows.push(SweepRow {
            tau,
            top1: summary.val_top1,
            top5: summary.val_top5,
            mean_topo_loss: summary.mean_topo_loss,
            val_images: summary.val_images,
            run_dir: dir,
        });
    }
    std::fs::create_dir_all(&base.output.dir)?;
    std::fs::write(
        base.output.dir.join("sweep.json"),
        serde_json::to_vec_pretty(&rows)?,
    )?;
    std::fs::write(base.output.dir.join("sweep.md"), markdown(&rows))?;
    Ok(rows)
}

pub fn markdown(rows: &[SweepRow]) -> String {
    let mut out = String::from(
        "| tau | top-1 (%) | top-5 (%) | mean TopoLoss | val images |\n|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {} | {} |\n",
            r.tau,
            100.0 * r.top1,
            100.0 * r.top5,
            r.mean_topo_loss.map_or("-".into(), |l| format!("{l:.4}")),
            r.val_images.map_or("-".into(), |n| n.to_string())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_taus_and_rejects_bad_ones() {
        assert_eq!(
            parse_taus("0,0.5, 1,50").unwrap(),
            vec![0.0, 0.5, 1.0, 50.0]
        );
        assert!(parse_taus("1,x").unwrap_err().to_string().contains("'x'"));
        assert!(parse_taus("-1").is_err());
        assert_eq!(
            run_dir(Path::new("runs/s"), 0.5),
            Path::new("runs/s/tau_0.5")
        );
    }
}
