//! `topotrain analyze selectivity`: per-unit Welch t of one stimulus
//! category against the rest, drawn on each selected layer's sheet, and the
//! correlation and SSIM between that map and other categories' maps.
//!
//! Stimuli are folders, one per category: the repository's `stimuli/`
//! (faces/, nonfaces/, words/, textures/; see its README) or your own.
//! A unit's response to an image is its channel's output averaged over
//! positions.

use std::path::PathBuf;

use analysis::selectivity::{map_correlation, map_ssim, selectivity_maps, MIN_SSIM_SIDE};
use analysis::sheet_image::{render_value_map, value_map_limit};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::data::Stimuli;
use crate::input::InputArgs;
use crate::output::{file_stem, sheet_rows};
use crate::{Analysed, FigurePaths, ModelArgs, ModuleArgs, OutputArgs, Printout, Samples};

#[derive(Args)]
pub struct SelectivityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub modules: ModuleArgs,
    /// Stimulus root: one sub-folder of images per category.
    #[arg(long)]
    pub stimuli: PathBuf,
    /// The category whose selectivity is mapped (default: `faces` if present, else the first).
    #[arg(long)]
    pub category: Option<String>,
    /// Categories whose maps are compared with --category's (default: all the others).
    #[arg(long, value_delimiter = ',')]
    pub versus: Option<Vec<String>>,
    /// Units with t above this count as selective.
    #[arg(long, default_value_t = 3.0)]
    pub threshold: f64,
    /// Use at most this many images per category.
    #[arg(long)]
    pub max_per_category: Option<usize>,
    /// Images per forward pass.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 64)]
    pub batch: usize,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Serialize)]
struct Comparison {
    category: String,
    correlation: f64,
    /// None on sheets too small for SSIM's 3 x 3 window.
    ssim: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LayerSelectivity {
    layer: String,
    sheet_h: usize,
    sheet_w: usize,
    max_t: f64,
    /// Units with t above the threshold.
    selective_units: usize,
    selective_fraction: f64,
    /// The map of --category against each --versus category's map.
    comparisons: Vec<Comparison>,
    /// Each unit's Welch t, `t[row][col]` (unit `row * sheet_w + col`).
    t: Vec<Vec<f32>>,
    /// The figure's colours run from -colour_limit (blue) to +colour_limit (red).
    colour_limit: f64,
    #[serde(flatten)]
    figure: Option<FigurePaths>,
}

#[derive(Debug, Serialize)]
struct SelectivityReport {
    checkpoint: String,
    stimuli: String,
    categories: Vec<String>,
    images_per_category: Vec<usize>,
    category: String,
    threshold: f64,
    resolution: usize,
    layers: Vec<LayerSelectivity>,
}

pub fn run(args: SelectivityArgs) -> Result<Printout> {
    if args.batch == 0 {
        bail!("--batch-size must be at least 1");
    }
    let loaded = args.model.open_vision("selectivity")?;
    let names = loaded.response_modules(&args.modules)?;
    let input = args
        .input
        .resolve(loaded.run.as_ref(), loaded.in_channels())?;
    let stimuli = Stimuli::load(&args.stimuli, &input, args.max_per_category)?;
    let index = |name: &str| -> Result<usize> {
        stimuli
            .categories
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no category '{name}' in {}; found: {}",
                    args.stimuli.display(),
                    stimuli.categories.join(", ")
                )
            })
    };
    let target = match &args.category {
        Some(c) => index(c)?,
        None => index("faces").unwrap_or(0),
    };
    let versus: Vec<usize> = match &args.versus {
        Some(list) => list.iter().map(|c| index(c)).collect::<Result<_>>()?,
        None => (0..stimuli.categories.len())
            .filter(|&c| c != target)
            .collect(),
    };

    // Responses of every layer to every image, [images, units] per layer.
    let mut responses: Vec<Vec<f32>> = vec![Vec::new(); names.len()];
    let mut units = vec![0usize; names.len()];
    let bar = trainer::progress::bar(stimuli.len() as u64, "selectivity");
    let mut start = 0;
    while start < stimuli.len() {
        let end = (start + args.batch).min(stimuli.len());
        let batch = loaded.network.responses(
            stimuli.tensor(start, end, &Default::default()),
            &names,
            Samples::Images,
        )?;
        for ((all, u), layer) in responses.iter_mut().zip(units.iter_mut()).zip(batch) {
            all.extend(layer.values);
            *u = layer.units;
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();

    let dir = args.output.dir()?;
    let category = stimuli.categories[target].clone();
    let mut report_layers = Vec::new();
    for ((name, values), &n_units) in names.iter().zip(&responses).zip(&units) {
        // Unit u of a layer sits where TopoLoss put it: row u / width of the
        // sheet `for_units` gives, the layout every analysis shares.
        let sheet =
            analysis::SheetShape::for_units(n_units).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let maps = selectivity_maps(values, n_units, &stimuli.labels, stimuli.categories.len())?;
        let map = &maps[target];
        let comparisons = versus
            .iter()
            .map(|&c| {
                Ok(Comparison {
                    category: stimuli.categories[c].clone(),
                    correlation: map_correlation(map, &maps[c])?,
                    ssim: if sheet.height.min(sheet.width) >= MIN_SSIM_SIDE {
                        Some(map_ssim(map, &maps[c], sheet)?)
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let selective = map.iter().filter(|&&t| t as f64 > args.threshold).count();
        let figure = match dir {
            Some(dir) => {
                let title = format!("{name}: {category} vs rest");
                let figure = render_value_map(map, sheet, &title, "Welch t")?;
                let stem = format!("selectivity_{}_{}", file_stem(name), file_stem(&category));
                Some(args.output.save_figure(&figure, dir, &stem)?)
            }
            None => None,
        };
        report_layers.push(LayerSelectivity {
            layer: name.clone(),
            sheet_h: sheet.height,
            sheet_w: sheet.width,
            max_t: map.iter().fold(f64::NEG_INFINITY, |m, &t| m.max(t as f64)),
            selective_units: selective,
            selective_fraction: selective as f64 / n_units as f64,
            comparisons,
            t: sheet_rows(map, sheet.width),
            colour_limit: value_map_limit(map),
            figure,
        });
    }
    let report = SelectivityReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        stimuli: args.stimuli.display().to_string(),
        images_per_category: (0..stimuli.categories.len())
            .map(|c| stimuli.labels.iter().filter(|&&l| l == c).count())
            .collect(),
        categories: stimuli.categories.clone(),
        category,
        threshold: args.threshold,
        resolution: input.res,
        layers: report_layers,
    };
    args.output.finish("selectivity", &report, || {
        let mut s = format!(
            "{} vs rest ({} images; t > {})\n{:<32} {:>8} {:>10}  map correlation / SSIM with\n",
            report.category,
            stimuli.len(),
            report.threshold,
            "layer",
            "max t",
            "selective"
        );
        for l in &report.layers {
            let comps: Vec<String> = l
                .comparisons
                .iter()
                .map(|c| {
                    let ssim = c.ssim.map_or("-".to_string(), |v| format!("{v:+.3}"));
                    format!("{} {:+.3}/{ssim}", c.category, c.correlation)
                })
                .collect();
            s += &format!(
                "{:<32} {:>8.2} {:>9.1}%  {}\n",
                l.layer,
                l.max_t,
                100.0 * l.selective_fraction,
                comps.join("  ")
            );
        }
        s
    })
}
