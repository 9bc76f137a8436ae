//! `topotrain analyze ...`: the TopoNets analyses of a checkpoint, wired from
//! the `analysis` crate (backend-independent maths and figures) to models,
//! datasets and stimulus folders.
//!
//! Every subcommand takes `--json` (print the result as JSON on stdout instead
//! of a table) and `--out DIR` (write its figures, each as PNG and SVG, and
//! the same JSON, with the numbers behind every figure, as
//! `DIR/<analysis>.json`). Checkpoints are anything `topotrain eval` takes: a
//! run directory, one of its checkpoints, a safetensors file or a PyTorch
//! state dict (`.pt`, e.g. the published TopoNets checkpoints).
//!
//! Layers default to the `[topography]` layers of the run's `config.toml`
//! when the checkpoint sits in a run directory, else to every Conv2d and
//! Linear layer (as `topotrain inspect`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::validation::run_config;

pub mod data;
pub mod dimensionality;
pub mod prune;
mod selectivity;
mod sheets;
mod smoothness;
mod sweep_report;

/// The CPU inference backend every analysis runs on.
pub type Cpu = trainer::Cpu;
/// Its device.
pub type CpuDevice = <Cpu as burn::tensor::backend::BackendTypes>::Device;

/// `topotrain analyze [--threads N] <analysis> ...`.
#[derive(Args)]
pub struct AnalyzeArgs {
    /// CPU threads (0 = all cores, the default); also after the analysis's name.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: AnalyzeCommand,
}

#[derive(Subcommand)]
pub enum AnalyzeCommand {
    /// Cortical sheet pictures: units coloured by the first 3 PCs of their weights.
    Sheets(sheets::SheetsArgs),
    /// Weight similarity against sheet distance, per layer, and its score.
    Smoothness(smoothness::SmoothnessArgs),
    /// Effective dimensionality of layer responses over a dataset (streaming).
    Dimensionality(dimensionality::DimensionalityArgs),
    /// Category selectivity (Welch t) maps from labelled stimulus folders.
    Selectivity(selectivity::SelectivityArgs),
    /// Accuracy after L1 pruning and after sheet down-sampling.
    Prune(prune::PruneArgs),
    /// Accuracy vs smoothness (Pareto) and ED vs tau over a `topotrain sweep` directory.
    SweepReport(sweep_report::SweepReportArgs),
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    trainer::device::set_cpu_threads(args.threads.unwrap_or(0));
    match args.command {
        AnalyzeCommand::Sheets(args) => sheets::run(args),
        AnalyzeCommand::Smoothness(args) => smoothness::run(args),
        AnalyzeCommand::Dimensionality(args) => dimensionality::run(args),
        AnalyzeCommand::Selectivity(args) => selectivity::run(args),
        AnalyzeCommand::Prune(args) => prune::run(args),
        AnalyzeCommand::SweepReport(args) => sweep_report::run(args),
    }
}

/// The checkpoint and the layers to analyse.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A run directory, one of its checkpoints, a .safetensors or a PyTorch .pt.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Layer patterns (dotted globs, comma-separated); default: the run's
    /// [topography] layers, else every Conv2d and Linear layer.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
}

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

    /// Writes `value` to `--out/<name>.json` and prints it (`--json`) or
    /// `table` (otherwise).
    pub fn finish<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> Result<()> {
        if let Some(dir) = self.dir()? {
            let path = dir.join(format!("{name}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(value)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            print!("{}", table());
        }
        Ok(())
    }
}

/// Layer patterns: the explicit ones, else the run's topographic layers,
/// else every Conv2d and Linear layer.
pub fn layer_patterns(
    explicit: Option<&[String]>,
    run: Option<&trainer::RunConfig>,
) -> Vec<String> {
    if let Some(patterns) = explicit {
        return patterns.to_vec();
    }
    let from_run: Vec<String> = run
        .and_then(|r| r.topography.as_ref())
        .map(|t| t.layers.iter().flat_map(|l| l.patterns.clone()).collect())
        .unwrap_or_default();
    if from_run.is_empty() {
        vec!["**".to_string()]
    } else {
        from_run
    }
}

/// Which module outputs count as unit responses.
#[derive(Args, Clone, Debug)]
pub struct ModuleArgs {
    /// Measure the outputs of these modules instead of the selected layers'
    /// (dotted globs over every named module, comma-separated): e.g.
    /// `layer*.*` for the rectified outputs of a ResNet's residual blocks,
    /// whose channels are the units of each block's last conv.
    #[arg(long, value_delimiter = ',')]
    pub modules: Option<Vec<String>>,
}

/// The named modules of `model` matching any of `patterns`, in forward order;
/// a pattern that matches nothing is an error listing the module names.
pub fn module_names<B: burn::tensor::backend::Backend>(
    model: &models::Model<B>,
    patterns: &[String],
) -> Result<Vec<String>> {
    use models::Topographic;
    let modules = model.modules();
    let mut chosen = vec![false; modules.len()];
    for text in patterns {
        let pattern = models::LayerPattern::new(text)?;
        let mut any = false;
        for (module, chosen) in modules.iter().zip(chosen.iter_mut()) {
            if pattern.matches(&module.name) {
                *chosen = true;
                any = true;
            }
        }
        if !any {
            bail!(
                "--modules {text} matches no module; the modules are: {}",
                modules
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(modules
        .into_iter()
        .zip(chosen)
        .filter_map(|(m, chosen)| chosen.then_some(m.name))
        .collect())
}

/// One selected layer's weights on the host.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub name: String,
    /// `[units, e]` row-major, PyTorch layout.
    pub weights: Vec<f32>,
    pub e: usize,
    pub sheet: analysis::SheetShape,
}

/// A loaded model and its selected layers.
pub struct Loaded {
    pub model: models::Model<Cpu>,
    pub run: Option<trainer::RunConfig>,
    pub patterns: Vec<String>,
    pub device: CpuDevice,
}

impl ModelArgs {
    /// The selected layers' weights, for the analyses that need nothing else
    /// (sheets, smoothness). A GPT checkpoint's layers default to every
    /// block's `mlp.c_fc`, the paper's topographic layers.
    pub fn layer_weights(&self) -> Result<Vec<LayerWeights>> {
        if !crate::language::is_gpt_checkpoint(&self.checkpoint) {
            return Loaded::open(self)?.layers();
        }
        let (model, patterns) = crate::language::open_gpt(self)?;
        layer_weights(&model, &patterns)
    }
}

impl Loaded {
    pub fn open(args: &ModelArgs) -> Result<Self> {
        let device = Default::default();
        // Its errors name the file.
        let model = trainer::eval::load_model::<Cpu>(&args.checkpoint, &device)?;
        let run = run_config(&args.checkpoint)?;
        let patterns = layer_patterns(args.layers.as_deref(), run.as_ref());
        Ok(Loaded {
            model,
            run,
            patterns,
            device,
        })
    }

    /// The selected layers' weights.
    pub fn layers(&self) -> Result<Vec<LayerWeights>> {
        layer_weights(&self.model, &self.patterns)
    }

    /// The modules whose outputs are the unit responses: those matching
    /// `--modules` when given, else the selected layers.
    pub fn response_modules(&self, modules: &ModuleArgs) -> Result<Vec<String>> {
        match &modules.modules {
            Some(patterns) => module_names(&self.model, patterns),
            None => {
                use models::Topographic;
                let patterns: Vec<&str> = self.patterns.iter().map(String::as_str).collect();
                Ok(self
                    .model
                    .select_layers(&patterns)?
                    .into_iter()
                    .map(|c| c.name)
                    .collect())
            }
        }
    }

    /// Input channels of the network.
    pub fn in_channels(&self) -> usize {
        input_channels(&self.model)
    }
}

/// Input channels of a network.
pub fn input_channels<B: burn::tensor::backend::Backend>(model: &models::Model<B>) -> usize {
    match model.architecture() {
        models::Architecture::ResNet(config) => config.in_channels,
        models::Architecture::Vit(config) => config.in_channels,
    }
}

/// The host weights of the layers of `model` matching `patterns`.
pub fn layer_weights<B: burn::tensor::backend::Backend>(
    model: &impl models::Topographic<B>,
    patterns: &[String],
) -> Result<Vec<LayerWeights>> {
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let candidates = model.select_layers(&patterns)?;
    candidates
        .into_iter()
        .map(|c| {
            let [units, e] = c.flat_shape();
            let weights = c
                .weight
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|err| anyhow::anyhow!("cannot read the weights of {}: {err:?}", c.name))?;
            let sheet = analysis::SheetShape::for_units(units)
                .map_err(|err| anyhow::anyhow!("{}: {err}", c.name))?;
            Ok(LayerWeights {
                name: c.name,
                weights,
                e,
                sheet,
            })
        })
        .collect()
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

/// Fails unless `value` is finite and within `range`.
pub fn check_range(name: &str, value: f64, low: f64, high: f64) -> Result<()> {
    if !(value.is_finite() && value >= low && value <= high) {
        bail!("{name} must be in [{low}, {high}], got {value}");
    }
    Ok(())
}
