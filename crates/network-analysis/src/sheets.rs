//! `topotrain analyze sheets`: each selected layer's cortical sheet, units
//! coloured by the first three principal components of their weights, as one
//! picture of a chosen layer and a grid of all the layers. The report holds
//! every unit's colour and component scores, row by row of its sheet.

use analysis::pca::{sheet_pca, SheetColours};
use analysis::sheet_image::{render_sheet, render_sheet_grid, SheetPanel};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::output::{display_name, file_stem, sheet_rows, wrote_lines};
use crate::{HostWeights, ModelArgs, OutputArgs, Printout};

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
    /// Each unit's colour, `rgb[row][col]` (unit `row * sheet_w + col`).
    rgb: Vec<Vec<[u8; 3]>>,
    /// Each unit's scores on the first (up to three) principal components
    /// of the layer's unit weights, `pc_scores[row][col][component]`; red,
    /// green and blue are these scaled from their 2% to 98% quantiles.
    pc_scores: Vec<Vec<Vec<f32>>>,
    /// Variance of the unit weights along each component.
    pc_variances: Vec<f64>,
}

impl SheetInfo {
    fn new(layer: &HostWeights, colours: &SheetColours) -> Self {
        let rgb: Vec<[u8; 3]> = colours.image.pixels().map(|p| p.0).collect();
        let pcs = &colours.components;
        let scores: Vec<Vec<f32>> = pcs
            .scores
            .chunks(pcs.k.max(1))
            .map(|unit| unit.iter().map(|&v| v as f32).collect())
            .collect();
        SheetInfo {
            layer: layer.name.clone(),
            sheet_h: layer.sheet.height,
            sheet_w: layer.sheet.width,
            weights_per_unit: layer.e,
            rgb: sheet_rows(&rgb, layer.sheet.width),
            pc_scores: sheet_rows(&scores, layer.sheet.width),
            pc_variances: pcs.variances.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
struct SheetsReport {
    checkpoint: String,
    layers: Vec<SheetInfo>,
    layer_png: Option<String>,
    layer_svg: Option<String>,
    grid_png: Option<String>,
    grid_svg: Option<String>,
}

pub fn run(args: SheetsArgs) -> Result<Printout> {
    let layers = args.model.layer_weights()?;
    let chosen = match &args.layer {
        Some(name) => match layers.iter().position(|l| &l.name == name) {
            Some(i) => i,
            None => bail!(
                "--layer {name} is not among the selected layers: {}",
                layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => match layers.len().checked_sub(1) {
            Some(last) => last,
            None => bail!("no layer selected"),
        },
    };
    let bar = trainer::progress::bar(layers.len() as u64, "sheets");
    let colours = layers
        .iter()
        .map(|l| {
            bar.inc(1);
            sheet_pca(&l.weights, l.e, l.sheet)
        })
        .collect::<analysis::Result<Vec<_>>>()?;
    bar.finish_and_clear();
    let mut report = SheetsReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        layers: layers
            .iter()
            .zip(&colours)
            .map(|(l, c)| SheetInfo::new(l, c))
            .collect(),
        layer_png: None,
        layer_svg: None,
        grid_png: None,
        grid_svg: None,
    };
    if let Some(dir) = args.output.dir()? {
        let layer = &layers[chosen];
        let title = format!(
            "{} ({}x{})",
            layer.name, layer.sheet.height, layer.sheet.width
        );
        let figure = render_sheet(&colours[chosen].image, &title);
        let paths =
            args.output
                .save_figure(&figure, dir, &format!("sheet_{}", file_stem(&layer.name)))?;
        (report.layer_png, report.layer_svg) = (Some(paths.png), Some(paths.svg));
        let panels: Vec<SheetPanel> = layers
            .iter()
            .zip(&colours)
            .map(|(l, c)| SheetPanel {
                title: l.name.clone(),
                image: c.image.clone(),
            })
            .collect();
        let title = format!(
            "{}: weight PCs 1-3 as RGB",
            display_name(&args.model.checkpoint)
        );
        let figure = render_sheet_grid(&panels, &title, args.columns.max(1))?;
        let paths = args.output.save_figure(&figure, dir, "sheets")?;
        (report.grid_png, report.grid_svg) = (Some(paths.png), Some(paths.svg));
    }
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
        s += &wrote_lines(&[
            &report.layer_png,
            &report.layer_svg,
            &report.grid_png,
            &report.grid_svg,
        ]);
        s
    })
}
