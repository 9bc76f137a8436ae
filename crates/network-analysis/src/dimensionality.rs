//! `topotrain analyze dimensionality`: the effective dimensionality
//! (participation ratio of the response covariance's eigenvalues) of each
//! selected layer over a dataset, streamed batch by batch.
//!
//! Units are channels (conv outputs averaged over positions), so a layer's
//! covariance is `channels x channels` whatever the number of images. The
//! forward pass and the covariance updates are timed separately. For a GPT
//! the samples are the token positions of validation windows.

use std::time::Instant;

use analysis::dimensionality::{mean_dimensionality, Dimensionality, StreamingCovariance};
use analysis::plots::{named_line_chart, Labels};
use anyhow::{bail, Context, Result};
use clap::Args;
use models::{Gpt, Model};
use serde::Serialize;
use trainer::data::{DataSet, Split};
use trainer::language::{eval_windows, open_tokens, window_batch};

use crate::data::{batch_tensor, open_dataset, DataArgs};
use crate::input::Input;
use crate::output::display_name;
use crate::{
    Analysed, Cpu, FigurePaths, ModelArgs, ModuleArgs, Opened, OpenedNetwork, OutputArgs, Printout,
    Responses, Samples,
};

#[derive(Args)]
pub struct DimensionalityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub modules: ModuleArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Go over the data this many times (for timing on a small set; the
    /// covariance, hence ED, of repeated images is unchanged).
    #[arg(long, default_value_t = 1)]
    pub passes: usize,
    /// One sample per image (default for vision models), or per image and
    /// position / token (default for GPTs, where each token is a sample).
    #[arg(long, value_enum)]
    pub samples: Option<Samples>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Eigenvalues reported per layer (the largest).
const TOP_EIGENVALUES: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct LayerDimensionality {
    pub layer: String,
    pub features: usize,
    pub effective_dimensionality: f64,
    /// The largest eigenvalues of the response covariance.
    pub top_eigenvalues: Vec<f64>,
}

/// Where the time went.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Images (tokens, for a language model) whose responses were used.
    pub images: u64,
    /// Data loading and normalisation.
    pub data_seconds: f64,
    /// Forward passes, including reducing the tapped outputs to unit
    /// responses and copying them to the host.
    pub forward_seconds: f64,
    /// Streaming covariance updates (all layers).
    pub covariance_seconds: f64,
    /// Final eigendecompositions (all layers).
    pub eigen_seconds: f64,
    pub total_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct DimensionalityReport {
    pub checkpoint: String,
    pub data: String,
    /// Input side in pixels (tokens per window, for a language model).
    pub resolution: usize,
    pub mean_effective_dimensionality: f64,
    pub layers: Vec<LayerDimensionality>,
    pub timing: Timing,
    #[serde(flatten)]
    pub figure: Option<FigurePaths>,
}

/// How many images go through the network, in what batches, and what a
/// sample of a layer's responses is.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub batch: usize,
    pub samples: Samples,
    /// At most this many images (default: all, times `passes`).
    pub max_images: Option<usize>,
    /// Times over the data (for timing on a small set).
    pub passes: usize,
}

/// Effective dimensionality of every layer, their mean and the timing.
#[derive(Debug, Clone)]
pub struct DatasetDimensionality {
    pub layers: Vec<LayerDimensionality>,
    pub mean: f64,
    pub timing: Timing,
}

/// Per-layer response covariances accumulated batch by batch, with the
/// time each part took: the streaming core shared by image and token data.
struct Accumulator {
    layers: Vec<String>,
    covariances: Vec<Option<StreamingCovariance>>,
    start: Instant,
    seen: usize,
    data_seconds: f64,
    forward_seconds: f64,
    covariance_seconds: f64,
}

impl Accumulator {
    fn new(layers: &[String]) -> Self {
        Accumulator {
            layers: layers.to_vec(),
            covariances: vec![None; layers.len()],
            start: Instant::now(),
            seen: 0,
            data_seconds: 0.0,
            forward_seconds: 0.0,
            covariance_seconds: 0.0,
        }
    }

    /// Adds each layer's `[rows, units]` responses (in the order of the
    /// layers) from `inputs` more images (or tokens).
    fn add(&mut self, responses: &[Responses], inputs: usize) -> Result<()> {
        let t = Instant::now();
        for (cov, layer) in self.covariances.iter_mut().zip(responses) {
            let cov = match cov {
                Some(c) => c,
                None => cov.insert(StreamingCovariance::new(layer.units)?),
            };
            cov.update(&layer.values, layer.values.len() / layer.units.max(1))?;
        }
        self.covariance_seconds += t.elapsed().as_secs_f64();
        self.seen += inputs;
        Ok(())
    }

    /// Each layer's effective dimensionality, their mean and the timing.
    fn finish(self) -> Result<DatasetDimensionality> {
        let t = Instant::now();
        let results: Vec<Dimensionality> = self
            .covariances
            .iter()
            .zip(&self.layers)
            .map(|(c, name)| {
                c.as_ref()
                    .with_context(|| format!("{name}: no samples reached the layer"))?
                    .dimensionality()
                    .with_context(|| format!("effective dimensionality of {name}"))
            })
            .collect::<Result<_>>()?;
        let eigen_s = t.elapsed().as_secs_f64();
        let mean = mean_dimensionality(&results);
        let layers = self
            .layers
            .iter()
            .zip(results)
            .map(|(name, d)| LayerDimensionality {
                layer: name.clone(),
                features: d.features,
                effective_dimensionality: d.effective_dimensionality,
                top_eigenvalues: d
                    .eigenvalues
                    .iter()
                    .take(TOP_EIGENVALUES)
                    .copied()
                    .collect(),
            })
            .collect();
        Ok(DatasetDimensionality {
            layers,
            mean,
            timing: Timing {
                images: self.seen as u64,
                data_seconds: self.data_seconds,
                forward_seconds: self.forward_seconds,
                covariance_seconds: self.covariance_seconds,
                eigen_seconds: eigen_s,
                total_seconds: self.start.elapsed().as_secs_f64(),
            },
        })
    }
}

/// Effective dimensionality of `layers` of `network` over `batches`, each
/// an input and the images (or windows) it holds, up to `total` of them;
/// each sample is what `samples` says.
pub fn stream_dimensionality<N: Analysed>(
    network: &N,
    layers: &[String],
    samples: Samples,
    total: usize,
    mut batches: impl Iterator<Item = Result<(N::Input, usize)>>,
) -> Result<DatasetDimensionality> {
    let mut accumulator = Accumulator::new(layers);
    let bar = trainer::progress::bar(total as u64, "dimensionality");
    loop {
        let t = Instant::now();
        let Some(next) = batches.next() else {
            break;
        };
        let (input, count) = next?;
        accumulator.data_seconds += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let responses = network.responses(input, layers, samples)?;
        accumulator.forward_seconds += t.elapsed().as_secs_f64();
        accumulator.add(&responses, count)?;
        bar.inc(count as u64);
    }
    bar.finish_and_clear();
    accumulator.finish()
}

/// Effective dimensionality of `layers` of `model` over `data`, each
/// layer's covariance accumulated batch by batch.
pub fn dataset_dimensionality(
    model: &Model<Cpu>,
    layers: &[String],
    data: &DataSet,
    input: &Input,
    sampling: Sampling,
) -> Result<DatasetDimensionality> {
    let Sampling {
        batch,
        samples,
        max_images,
        passes,
    } = sampling;
    if batch == 0 || passes == 0 {
        bail!("--batch-size and --passes must be at least 1");
    }
    let total = max_images
        .unwrap_or(usize::MAX)
        .min(data.len().saturating_mul(passes));
    if total < 2 {
        bail!("effective dimensionality needs at least 2 images, the data gives {total}");
    }
    let split = Split::Val {
        resolution: input.res,
    };
    let device = Default::default();
    let (mut left, mut pass) = (total, 0);
    let mut batches = data.batches(split, 0, batch)?;
    // Passes over the data, the last batch cut at `total` images.
    let images = std::iter::from_fn(move || loop {
        if left == 0 {
            return None;
        }
        match batches.next() {
            Some(Ok(b)) => {
                let keep = b.len().min(left);
                left -= keep;
                let x = batch_tensor(&b, input, &device);
                let x = if keep < b.len() {
                    x.narrow(0, 0, keep)
                } else {
                    x
                };
                return Some(Ok((x, keep)));
            }
            Some(Err(e)) => return Some(Err(e)),
            None => {
                pass += 1;
                if pass == passes {
                    return None;
                }
                match data.batches(split, 0, batch) {
                    Ok(next) => batches = next,
                    Err(e) => return Some(Err(e)),
                }
            }
        }
    });
    stream_dimensionality(model, layers, samples, total, images)
}

/// The effective dimensionality of a GPT's selected layers over windows of
/// the token folder `--data` (its val.bin), each token position one sample
/// (`--samples images`: one per window, averaged over its tokens).
/// `--max-images` caps the windows (default: as many as fit the file,
/// spread evenly) and `--batch-size` is windows per forward pass.
fn gpt_dimensionality(
    args: &DimensionalityArgs,
    opened: &Opened<Gpt<Cpu>>,
) -> Result<DatasetDimensionality> {
    if args.modules.modules.is_some() {
        bail!("--modules applies to vision models; for a GPT name the layers with --layers");
    }
    let (batch, passes) = (args.data.batch, args.passes);
    if batch == 0 || passes == 0 {
        bail!("--batch-size and --passes must be at least 1");
    }
    let model = &opened.network;
    let block = model.config().block_size;
    let (_, val) = open_tokens(&args.data.data, model.config().vocab_size)?;
    if val.len() <= block + 1 {
        bail!(
            "{}: val.bin has {} tokens, fewer than one window of {block}",
            args.data.data.display(),
            val.len()
        );
    }
    let names = opened.response_modules(&args.modules)?;
    let count = args.data.max_images.unwrap_or(val.len() / block).max(1);
    let windows = eval_windows(&val, block, count);
    let samples = args.samples.unwrap_or(Samples::Positions);
    let per_window = match samples {
        Samples::Positions => block,
        Samples::Images => 1,
    };
    let device = Default::default();
    let batches = (0..passes)
        .flat_map(|_| windows.chunks(batch))
        .map(|starts| {
            let (x, _) = window_batch::<Cpu>(&val, starts, block, &device);
            Ok((x, starts.len() * per_window))
        });
    stream_dimensionality(
        model,
        &names,
        samples,
        windows.len() * passes * per_window,
        batches,
    )
}

pub fn run(args: DimensionalityArgs) -> Result<Printout> {
    match args.model.open()? {
        OpenedNetwork::Language(opened) => {
            let result = gpt_dimensionality(&args, &opened)?;
            report(&args, opened.network.config().block_size, result)
        }
        OpenedNetwork::Vision(opened) => {
            let names = opened.response_modules(&args.modules)?;
            let input = args
                .data
                .input
                .resolve(opened.run.as_ref(), opened.in_channels())?;
            let data = open_dataset(&args.data.data, &input)?;
            let sampling = Sampling {
                batch: args.data.batch,
                samples: args.samples.unwrap_or(Samples::Images),
                max_images: args.data.max_images,
                passes: args.passes,
            };
            let result = dataset_dimensionality(&opened.network, &names, &data, &input, sampling)?;
            report(&args, input.res, result)
        }
    }
}

/// Draws the chart (with `--out`) and prints or writes the report;
/// `resolution` is the input size (pixels, or tokens per window).
fn report(
    args: &DimensionalityArgs,
    resolution: usize,
    result: DatasetDimensionality,
) -> Result<Printout> {
    let DatasetDimensionality {
        layers,
        mean,
        timing,
    } = result;
    let mut figure = None;
    if let Some(dir) = args.output.dir()? {
        let title = format!(
            "{}: effective dimensionality, mean {mean:.2}",
            display_name(&args.model.checkpoint)
        );
        let names: Vec<String> = layers.iter().map(|l| l.layer.clone()).collect();
        let values: Vec<f64> = layers.iter().map(|l| l.effective_dimensionality).collect();
        let chart = named_line_chart(
            Labels {
                title: &title,
                x: "layer (forward order)",
                y: "effective dimensionality",
            },
            &names,
            &values,
        )?;
        figure = Some(args.output.save_figure(&chart, dir, "dimensionality")?);
    }
    let report = DimensionalityReport {
        checkpoint: args.model.checkpoint.display().to_string(),
        data: args.data.data.display().to_string(),
        resolution,
        mean_effective_dimensionality: mean,
        layers,
        timing,
        figure,
    };
    args.output.finish("dimensionality", &report, || {
        let mut s = format!("{:<32} {:>9} {:>9}\n", "layer", "features", "ED");
        for l in &report.layers {
            s += &format!("{:<32} {:>9} {:>9.3}\n", l.layer, l.features, l.effective_dimensionality);
        }
        let t = &report.timing;
        s += &format!(
            "mean ED: {:.3} over {} images; forward {:.2} s, covariance {:.2} s, eigen {:.2} s, data {:.2} s, total {:.2} s\n",
            report.mean_effective_dimensionality,
            t.images,
            t.forward_seconds,
            t.covariance_seconds,
            t.eigen_seconds,
            t.data_seconds,
            t.total_seconds
        );
        if let Some(f) = &report.figure {
            s += &format!("wrote {f}\n");
        }
        s
    })
}
