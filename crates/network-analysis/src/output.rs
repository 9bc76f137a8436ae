//! Where an analysis's results go: figures (PNG and SVG) and its JSON under
//! `--out`, and the text the caller prints (a table, or the JSON).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

/// Where results go.
#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Print the result as JSON on stdout (instead of a table).
    #[arg(long)]
    pub json: bool,
    /// Directory for the figures (PNG and SVG) and `<analysis>.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub png: PngScale,
}

/// `--png-scale`: the size of the PNG beside each SVG.
#[derive(Args, Clone, Debug)]
pub struct PngScale {
    /// PNG pixels per figure pixel (the SVG is vector; 2 gives 1600 x 1120
    /// charts).
    #[arg(long, default_value_t = analysis::DEFAULT_PNG_SCALE,
          value_parser = clap::value_parser!(u32).range(1..=analysis::MAX_PNG_SCALE as i64))]
    pub png_scale: u32,
}

/// Where a figure went: the PNG and the SVG beside it.
#[derive(Debug, Clone, Serialize)]
pub struct FigurePaths {
    pub png: String,
    pub svg: String,
}

impl std::fmt::Display for FigurePaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} and {}", self.png, self.svg)
    }
}

/// What an analysis gives its caller to print: its table, or its JSON
/// with `--json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Printout(pub String);

impl OutputArgs {
    /// Creates the output directory, if any.
    pub fn dir(&self) -> Result<Option<&Path>> {
        if let Some(dir) = &self.out {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(self.out.as_deref())
    }

    /// Writes `figure` as `dir/<stem>.png` (at `--png-scale`) and `.svg`.
    pub fn save_figure(
        &self,
        figure: &analysis::Figure,
        dir: &Path,
        stem: &str,
    ) -> Result<FigurePaths> {
        let files = figure.save(&dir.join(format!("{stem}.png")), self.png.png_scale)?;
        Ok(FigurePaths {
            png: files.png.display().to_string(),
            svg: files.svg.display().to_string(),
        })
    }

    /// Writes `value` to `--out/<name>.json` and returns what to print: the
    /// JSON (`--json`) or `table`.
    pub fn finish<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> Result<Printout> {
        if let Some(dir) = self.dir()? {
            let path = dir.join(format!("{name}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(value)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(Printout(if self.json {
            serde_json::to_string_pretty(value)? + "\n"
        } else {
            table()
        }))
    }
}

/// One "wrote PATH" line per file written.
pub fn wrote_lines(paths: &[&Option<String>]) -> String {
    paths
        .iter()
        .filter_map(|p| p.as_deref())
        .map(|p| format!("wrote {p}\n"))
        .collect()
}

/// Rows of a sheet `width` units wide from per-unit values in unit order
/// (unit `u` at row `u / width`, column `u % width`), as the JSON reports
/// carry maps: `rows[r][c]`.
pub fn sheet_rows<T: Clone>(values: &[T], width: usize) -> Vec<Vec<T>> {
    values.chunks(width.max(1)).map(<[T]>::to_vec).collect()
}

/// A file name for a layer (dots kept, anything odd replaced).
pub fn file_stem(layer: &str) -> String {
    layer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A short name of a checkpoint for figure titles: its file name, with the
/// run directory for a run's `model` / `step*` / `epoch*` checkpoints.
pub fn display_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "model" || name.starts_with("step") || name.starts_with("epoch") {
        path.parent()
            .and_then(|p| p.file_name())
            .map(|p| format!("{}/{name}", p.to_string_lossy()))
            .unwrap_or(name)
    } else {
        name
    }
}
