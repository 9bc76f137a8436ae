//! `topotrain analyze sheets`: each selected layer's cortical sheet, units
//! coloured by the first three principal components of their weights, as one
//! picture of a chosen layer and a grid of all the layers.

use analysis::sheet_image::{render_sheet_grid_png, render_sheet_png, SheetPanel};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{display_name, file_stem, ModelArgs, OutputArgs};

#[derive(Args)]
pub struct SheetsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The layer drawn on its own (default: the last selected layer).
    #[arg(long)]
    pub layer: Option<String>,
    /// Columns of the grid of all layers.
    #[arg(long, default_value_t = 5)]
    pub columns: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Serialize)]
struct SheetInfo {
    layer: String,
    sheet_h: usize,
    sheet_w: usize,
    weights_per_unit: usize,
}

#[derive(Debug, Serialize)]
struct SheetsReport {
    checkpoint: String,
    layers: Vec<SheetInfo>,
    layer_png: Option<String>,
    grid_png: Option<String>,
}

pub fn run(args: SheetsArgs) -> Result<()> {
    let layers = args.model.layer_weights()?;
    let chosen = match &args.layer {
        Some(name) => match layers.iter().find(|l| &l.name == name) {
            Some(l) => l,
            None => bail!(
                "--layer {name} is not among the selected layers: {}",
                layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => layers.last().expect("selection is never empty"),
    };
    let (mut layer_png, mut grid_png) = (None, None);
    if let Some(dir) = args.output.dir()? {
        analysis::ensure_font()?;
        let colors = analysis::pca::sheet_pca_colors(&chosen.weights, chosen.e, chosen.sheet)?;
        let path = dir.join(format!("sheet_{}.png", file_stem(&chosen.name)));
        let title = format!(
            "{} ({}x{})",
            chosen.name, chosen.sheet.height, chosen.sheet.width
        );
        render_sheet_png(&colors, &title, &path)?;
        layer_png = Some(path.display().to_string());
        let panels = layers
            .iter()
            .map(|l| {
                Ok(SheetPanel {
                    title: l.name.clone(),
                    image: analysis::pca::sheet_pca_colors(&l.weights, l.e, l.sheet)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join("sheets.png");
        let title = format!(
            "{}: weight PCs 1-3 as RGB",
            display_name(&args.model.checkpoint)
        );
        render_sheet_grid_png(&panels, &title, args.columns.max(1), &path)?;
        grid_png = Some(path.display().to_string());
    }
    let report = SheetsReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        layers: layers
            .iter()
            .map(|l| SheetInfo {
                layer: l.name.clone(),
                sheet_h: l.sheet.height,
                sheet_w: l.sheet.width,
                weights_per_unit: l.e,
            })
            .collect(),
        layer_png,
        grid_png,
    };
    args.output.finish("sheets", &report, || {
        let mut s = format!(
            "{:<32} {:>7} {:>7} {:>8}\n",
            "layer", "sheet_h", "sheet_w", "e"
        );
        for l in &report.layers {
            s += &format!(
                "{:<32} {:>7} {:>7} {:>8}\n",
                l.layer, l.sheet_h, l.sheet_w, l.weights_per_unit
            );
        }
        for p in report.layer_png.iter().chain(&report.grid_png) {
            s += &format!("wrote {p}\n");
        }
        s
    })
}
