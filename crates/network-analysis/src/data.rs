//! Images for the analyses: a validation set (as `topotrain eval` reads it)
//! and labelled stimulus folders.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use trainer::data::DataSet;

use crate::input::{open_validation, Input, InputArgs};
use crate::{Cpu, CpuDevice};

/// A validation set and how to present it.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Validation data: a prepared `.topo` file, a directory holding
    /// `val.topo`, or a directory of Fashion-MNIST IDX files.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Images per forward pass.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 64)]
    pub batch: usize,
    /// Use at most this many images (default: all).
    #[arg(long)]
    pub max_images: Option<usize>,
}

/// Opens the validation set at `path` as `input` presents it, checking that
/// its channels are the network's.
pub fn open_dataset(path: &Path, input: &Input) -> Result<DataSet> {
    let (data, file) = open_validation(path, input.res, input.crop_ratio, input.val_transform)?;
    if data.channels() != input.mean.len() {
        bail!(
            "{} has {} channel(s) but the network takes {}",
            file.display(),
            data.channels(),
            input.mean.len()
        );
    }
    Ok(data)
}

/// Labelled stimulus images: one sub-folder per category.
pub struct Stimuli {
    pub categories: Vec<String>,
    /// `[n, channels, res, res]` normalised.
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    pub channels: usize,
    pub res: usize,
}

impl Stimuli {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Reads every image under `root/<category>/` (sorted), resized to
    /// `res x res` (bicubic) in `channels` channels (1: luma, 3: RGB, grey
    /// images replicated) and normalised with `input`'s mean and std; files
    /// other than PNG / JPEG (e.g. a README) are not stimuli and are skipped.
    /// `max_per_category` keeps the first images of each category.
    pub fn load(root: &Path, input: &Input, max_per_category: Option<usize>) -> Result<Self> {
        let channels = input.mean.len();
        if channels != 1 && channels != 3 {
            bail!("stimuli can feed networks of 1 or 3 input channels, not {channels}");
        }
        let mut categories: Vec<(String, PathBuf)> = list_dir(root)?
            .into_iter()
            .filter(|path| path.is_dir())
            .map(|path| {
                let name = path.file_name().unwrap_or_default();
                (name.to_string_lossy().into_owned(), path)
            })
            .collect();
        categories.sort();
        if categories.len() < 2 {
            bail!(
                "{} needs at least two category sub-folders (e.g. faces/, words/), found {}",
                root.display(),
                categories.len()
            );
        }
        let res = input.res;
        let plane = res * res;
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for (label, (name, dir)) in categories.iter().enumerate() {
            let mut files: Vec<PathBuf> = list_dir(dir)?
                .into_iter()
                .filter(|p| {
                    p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                        matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                    })
                })
                .collect();
            files.sort();
            if let Some(max) = max_per_category {
                files.truncate(max);
            }
            if files.len() < 2 {
                bail!(
                    "category '{name}' ({}) has {} image(s); Welch t needs at least 2",
                    dir.display(),
                    files.len()
                );
            }
            for file in files {
                let image = image::open(&file)
                    .with_context(|| format!("cannot decode {}", file.display()))?;
                let image = image.resize_exact(
                    res as u32,
                    res as u32,
                    image::imageops::FilterType::CatmullRom,
                );
                if channels == 1 {
                    let grey = image.to_luma8();
                    pixels.extend(
                        grey.as_raw()
                            .iter()
                            .map(|&p| (p as f32 - input.mean[0]) / input.std[0]),
                    );
                } else {
                    let rgb = image.to_rgb8();
                    let raw = rgb.as_raw();
                    for c in 0..3 {
                        pixels.extend(
                            (0..plane)
                                .map(|i| (raw[3 * i + c] as f32 - input.mean[c]) / input.std[c]),
                        );
                    }
                }
                labels.push(label);
            }
        }
        Ok(Stimuli {
            categories: categories.into_iter().map(|(name, _)| name).collect(),
            pixels,
            labels,
            channels,
            res,
        })
    }

    /// Images `start..end` as a tensor.
    pub fn tensor(&self, start: usize, end: usize, device: &CpuDevice) -> Tensor<Cpu, 4> {
        let per = self.channels * self.res * self.res;
        Tensor::from_data(
            TensorData::new(
                self.pixels[start * per..end * per].to_vec(),
                [end - start, self.channels, self.res, self.res],
            ),
            device,
        )
    }
}

/// The entries of a directory; an unreadable one is an error, not skipped.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let context = || format!("cannot read the stimulus folder {}", dir.display());
    std::fs::read_dir(dir)
        .with_context(context)?
        .map(|entry| entry.map(|e| e.path()).with_context(context))
        .collect()
}

/// Normalised images of a dataset batch as a tensor.
pub fn batch_tensor(
    batch: &trainer::data::Batch,
    input: &Input,
    device: &CpuDevice,
) -> Tensor<Cpu, 4> {
    trainer::data::to_tensors::<Cpu>(batch, &input.mean, &input.std, device).0
}
