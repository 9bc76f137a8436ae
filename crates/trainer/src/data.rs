//! Batches for training and evaluation.
//!
//! A [`DataSet`] hands out u8 NCHW batches that depend only on
//! `(seed, epoch, batch index)`, so a resumed run sees exactly the batches an
//! uninterrupted run would. [`Prefetcher`] produces them on a background
//! thread while the model trains.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::{DataFormat, DataSection};

/// One batch: `images` is `[n, channels, height, width]` u8, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl crate::step::TaskBatch for Batch {
    fn len(&self) -> usize {
        Batch::len(self)
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Batch {
        let image_len = self.channels * self.height * self.width;
        Batch {
            images: self.images[range.start * image_len..range.end * image_len].to_vec(),
            labels: self.labels[range].to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }
}

/// One node's share of the training data: rank `rank` of `nodes` takes
/// every `nodes`-th sample of each epoch's order from position `rank` (as
/// PyTorch's `DistributedSampler`), in batches of `batch_size / nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeShard {
    pub rank: usize,
    pub nodes: usize,
}

impl NodeShard {
    /// A single process: all of the data.
    pub const WHOLE: NodeShard = NodeShard { rank: 0, nodes: 1 };
}

/// data-prep's loader settings for one node's share of a training epoch:
/// both data sources take the epoch order and the shard from them.
fn train_config(
    seed: u64,
    epoch: u64,
    node: NodeShard,
    batch_size: usize,
    resolution: usize,
) -> data_prep::LoaderConfig {
    let mut config = data_prep::LoaderConfig::train(batch_size, resolution);
    config.seed = seed;
    config.epoch = epoch;
    config.rank = node.rank;
    config.world_size = node.nodes;
    config
}

/// Which split and how to transform it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Shuffled per (seed, epoch), augmented, at a resolution; `node`
    /// picks this process's share when several nodes train one run.
    Train {
        seed: u64,
        epoch: u64,
        resolution: usize,
        node: NodeShard,
    },
    /// In order, centre-cropped to a resolution.
    Val { resolution: usize },
}

impl Split {
    /// data-prep's loader settings for this split (without its pipeline):
    /// for training, the epoch order and this node's share.
    fn loader_config(self, batch_size: usize) -> data_prep::LoaderConfig {
        match self {
            Split::Train {
                seed,
                epoch,
                resolution,
                node,
            } => train_config(seed, epoch, node, batch_size, resolution),
            Split::Val { resolution } => data_prep::LoaderConfig::val(batch_size, resolution),
        }
    }
}

/// A training or validation set.
#[derive(Clone)]
pub enum DataSet {
    /// A small set held in memory (Fashion-MNIST IDX files).
    InMemory(Arc<InMemory>),
    /// A `topotrain prep` file, read by data-prep's parallel loader.
    Prepared {
        dataset: Arc<data_prep::Dataset>,
        flip: bool,
        crop_scale: [f64; 2],
        crop_ratio: f64,
        val_transform: data_prep::ValTransform,
        threads: usize,
    },
}

impl DataSet {
    pub fn len(&self) -> usize {
        match self {
            Self::InMemory(m) => m.len(),
            Self::Prepared { dataset, .. } => dataset.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn channels(&self) -> usize {
        match self {
            Self::InMemory(m) => m.channels,
            Self::Prepared { dataset, .. } => dataset.channels(),
        }
    }
    pub fn num_classes(&self) -> usize {
        match self {
            Self::InMemory(m) => m.num_classes,
            Self::Prepared { dataset, .. } => dataset.num_classes(),
        }
    }

    /// The class names a prepared data set recorded (in label order);
    /// `None` for Fashion-MNIST's IDX files, whose classes are fixed.
    pub fn class_names(&self) -> Option<&[String]> {
        match self {
            Self::InMemory(_) => None,
            Self::Prepared { dataset, .. } => Some(dataset.class_names()),
        }
    }

    /// Batches `start..` of one epoch (training: full batches only; val:
    /// the last may be short), produced ahead on other threads.
    pub fn batches(
        &self,
        split: Split,
        start: usize,
        batch_size: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Batch>> + Send>> {
        match self {
            Self::InMemory(m) => {
                let end = match split {
                    Split::Train { .. } => {
                        data_prep::EpochPlan::new(m.len(), &split.loader_config(batch_size))?
                            .num_batches()
                    }
                    Split::Val { .. } => m.len().div_ceil(batch_size),
                };
                let mut prefetch = Prefetcher::new(Arc::clone(m), split, start, end, batch_size);
                Ok(Box::new(std::iter::from_fn(move || prefetch.next_batch())))
            }
            Self::Prepared {
                dataset,
                flip,
                crop_scale,
                crop_ratio,
                val_transform,
                threads,
            } => {
                // Each epoch (and validation) starts on the file opened.
                dataset.check_unchanged()?;
                let mut config = split.loader_config(batch_size);
                config.pipeline = match split {
                    Split::Train { .. } => {
                        let crop = data_prep::RandomResizedCrop {
                            scale: (crop_scale[0], crop_scale[1]),
                            ..Default::default()
                        };
                        data_prep::Pipeline::Train(data_prep::TrainAugment { crop, flip: *flip })
                    }
                    Split::Val { .. } => data_prep::Pipeline::Val(data_prep::ValCrop {
                        crop_ratio: *crop_ratio,
                        transform: *val_transform,
                    }),
                };
                config.start_batch = start;
                if *threads > 0 {
                    config.threads = *threads;
                }
                let loader = data_prep::Loader::new(Arc::clone(dataset), config)?;
                Ok(Box::new(loader.map(|b| {
                    let b = b?;
                    Ok(Batch {
                        images: b.images,
                        labels: b.labels,
                        channels: b.channels,
                        height: b.resolution,
                        width: b.resolution,
                    })
                })))
            }
        }
    }
}

/// A batch as normalised float images and integer labels on `device`.
pub fn to_tensors<B: Backend>(
    batch: &Batch,
    mean: &[f32],
    std: &[f32],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let pixels = normalise(batch, mean, std);
    let x = Tensor::from_data(
        TensorData::new(
            pixels,
            [batch.len(), batch.channels, batch.height, batch.width],
        ),
        device,
    );
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::from_data(TensorData::new(labels, [batch.len()]), device);
    (x, y)
}

/// Opens the training and validation sets of a config.
pub fn open(data: &DataSection) -> Result<(DataSet, DataSet)> {
    match data.format {
        DataFormat::FashionMnistIdx => {
            let train = InMemory::fashion_mnist(&data.train, true, data)?;
            let val = InMemory::fashion_mnist(&data.val, false, data)?;
            Ok((
                DataSet::InMemory(Arc::new(train)),
                DataSet::InMemory(Arc::new(val)),
            ))
        }
        DataFormat::Prepared => Ok((
            open_prepared(&data.train, data)?,
            open_prepared(&data.val, data)?,
        )),
    }
}

/// A prepared file with the config's transforms.
pub fn open_prepared(path: &Path, data: &DataSection) -> Result<DataSet> {
    // data-prep's errors name the file.
    let dataset =
        data_prep::Dataset::open(path).context("prepared data (`topotrain prep` makes it)")?;
    Ok(DataSet::Prepared {
        dataset: Arc::new(dataset),
        flip: data.flip,
        crop_scale: data.crop_scale,
        crop_ratio: data.val_crop_ratio,
        val_transform: data.val_transform,
        threads: data.workers,
    })
}

/// A small dataset held in memory as fixed-size u8 images (Fashion-MNIST).
pub struct InMemory {
    images: Vec<u8>,
    labels: Vec<u32>,
    channels: usize,
    side: usize,
    num_classes: usize,
    flip: bool,
}

impl InMemory {
    /// Reads `train-*` or `t10k-*` IDX files from `dir`.
    pub fn fashion_mnist(dir: &Path, train: bool, data: &DataSection) -> Result<Self> {
        let prefix = if train { "train" } else { "t10k" };
        let set = data_prep::sources::read_idx_images(dir, prefix).map_err(|e| {
            anyhow::anyhow!(
                "{e} (data.{} = {})",
                if train { "train" } else { "val" },
                dir.display()
            )
        })?;
        let (rows, cols) = (set.height, set.width);
        if rows != cols {
            bail!(
                "{}: {prefix} images are {rows}x{cols}; only square images are supported",
                dir.display()
            );
        }
        let side = rows;
        let resolution = if train {
            data.resolution.start
        } else {
            data.val_resolution
        };
        if resolution != side || data.resolution.end.is_some_and(|end| end != side) {
            bail!(
                "data.resolution / data.val_resolution = {resolution}: Fashion-MNIST IDX data is {side} px and is not resized; use {side}"
            );
        }
        Ok(InMemory {
            images: set.pixels,
            labels: set.labels.into_iter().map(u32::from).collect(),
            channels: 1,
            side,
            num_classes: 10,
            flip: train && data.flip,
        })
    }

    /// A dataset from raw parts (tests).
    pub fn from_parts(
        images: Vec<u8>,
        labels: Vec<u32>,
        side: usize,
        num_classes: usize,
        flip: bool,
    ) -> Self {
        InMemory {
            images,
            labels,
            channels: 1,
            side,
            num_classes,
            flip,
        }
    }
}

impl InMemory {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Batch `index` of a split (random access).
    pub fn batch(&self, split: Split, index: usize, batch_size: usize) -> Result<Batch> {
        let n = self.len();
        let image_len = self.channels * self.side * self.side;
        let (indices, flips): (Vec<u32>, Vec<bool>) = match split {
            Split::Train {
                seed, epoch, node, ..
            } => {
                // data-prep's epoch order (the shuffle of prepared data), and
                // a flip drawn per sample position from its generator.
                let config = train_config(seed, epoch, node, batch_size, self.side);
                let plan = data_prep::EpochPlan::new(n, &config)?;
                if index >= plan.num_batches() {
                    bail!("training batch {index} is past the end of the epoch");
                }
                (0..batch_size)
                    .map(|slot| {
                        let (position, i) = plan.sample(index, slot);
                        let flip = self.flip
                            && data_prep::transform::SampleRng::new(seed, epoch, position)
                                .chance(0.5);
                        (i as u32, flip)
                    })
                    .unzip()
            }
            Split::Val { .. } => {
                let start = index * batch_size;
                if start >= n {
                    bail!("validation batch {index} is past the end of the set");
                }
                let end = (start + batch_size).min(n);
                (
                    (start as u32..end as u32).collect(),
                    vec![false; end - start],
                )
            }
        };
        let mut images = Vec::with_capacity(indices.len() * image_len);
        for (&i, &flip) in indices.iter().zip(&flips) {
            let src = &self.images[i as usize * image_len..(i as usize + 1) * image_len];
            if flip {
                for row in src.chunks_exact(self.side) {
                    images.extend(row.iter().rev());
                }
            } else {
                images.extend_from_slice(src);
            }
        }
        Ok(Batch {
            images,
            labels: indices.iter().map(|&i| self.labels[i as usize]).collect(),
            channels: self.channels,
            height: self.side,
            width: self.side,
        })
    }
}

/// Produces batches `start..end` of an in-memory set on a background thread, a few
/// ahead of the consumer.
pub struct Prefetcher {
    receiver: mpsc::Receiver<Result<Batch>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Prefetcher {
    pub fn new(
        source: Arc<InMemory>,
        split: Split,
        start: usize,
        end: usize,
        batch_size: usize,
    ) -> Self {
        let (sender, receiver) = mpsc::sync_channel(2);
        let thread = std::thread::spawn(move || {
            for index in start..end {
                let batch = source.batch(split, index, batch_size);
                let failed = batch.is_err();
                if sender.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Prefetcher {
            receiver,
            _thread: thread,
        }
    }

    /// The next batch, or `None` when the range is done.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        self.receiver.recv().ok()
    }
}

/// u8 pixels to normalised f32: `(x - mean[c]) / std[c]`.
pub fn normalise(batch: &Batch, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let plane = batch.height * batch.width;
    let scale: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
    let mut out = Vec::with_capacity(batch.images.len());
    for (i, chunk) in batch.images.chunks_exact(plane).enumerate() {
        let c = i % batch.channels;
        let (m, s) = (mean[c], scale[c]);
        out.extend(chunk.iter().map(|&p| (p as f32 - m) * s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> InMemory {
        let n = 20;
        let images = (0..n * 4).map(|i| i as u8).collect();
        InMemory::from_parts(images, (0..n as u32).collect(), 2, 20, true)
    }

    #[test]
    fn batches_depend_only_on_seed_epoch_and_index() {
        let source = toy();
        let split = Split::Train {
            seed: 3,
            epoch: 1,
            resolution: 2,
            node: NodeShard::WHOLE,
        };
        let a = source.batch(split, 2, 4).unwrap();
        let b = source.batch(split, 2, 4).unwrap();
        assert_eq!(a, b);
        let other = source
            .batch(
                Split::Train {
                    seed: 3,
                    epoch: 2,
                    resolution: 2,
                    node: NodeShard::WHOLE,
                },
                2,
                4,
            )
            .unwrap();
        assert_ne!(a.labels, other.labels);
        // An epoch visits each sample once.
        let mut seen: Vec<u32> = (0..5)
            .flat_map(|i| source.batch(split, i, 4).unwrap().labels)
            .collect();
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn val_batches_are_in_order_and_the_last_is_short() {
        let source = toy();
        let last = source.batch(Split::Val { resolution: 2 }, 2, 8).unwrap();
        assert_eq!(last.labels, (16..20).collect::<Vec<_>>());
        assert_eq!(last.images[0], 64);
    }

    #[test]
    fn prefetcher_yields_the_range() {
        let source = Arc::new(toy());
        let mut prefetch = Prefetcher::new(source, Split::Val { resolution: 2 }, 1, 3, 5);
        let labels: Vec<u32> = std::iter::from_fn(|| prefetch.next_batch())
            .flat_map(|b| b.unwrap().labels)
            .collect();
        assert_eq!(labels, (5..15).collect::<Vec<_>>());
    }
}
