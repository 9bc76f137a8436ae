//! Parallel, prefetching batch loader with deterministic augmentation and
//! rank/world-size sharding.

use crate::codec::decode_jpeg_record_reduced;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::format::Encoding;
use crate::resample::{CropBox, Layout, OutputSpec, Resampler, SourceView};
use crate::transform::{center_crop, mix64, torchvision_center_crop, RandomResizedCrop, SampleRng};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Training augmentation: RandomResizedCrop then a random horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainAugment {
    /// Crop parameters (torchvision defaults).
    pub crop: RandomResizedCrop,
    /// Flip left-right with probability 1/2.
    pub flip: bool,
}

impl Default for TrainAugment {
    fn default() -> Self {
        TrainAugment {
            crop: RandomResizedCrop::default(),
            flip: true,
        }
    }
}

/// Evaluation transform: a centre crop of `crop_ratio` of the shorter side,
/// resized to the resolution, the way `transform` says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValCrop {
    /// Fraction of the shorter side kept; ffcv and torchvision use 224/256. Use
    /// 1.0 with the native resolution to get images back unchanged.
    pub crop_ratio: f64,
    pub transform: ValTransform,
}

/// Whose centre crop: both keep `crop_ratio` of the shorter side, but round
/// and resample differently (less than a pixel apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValTransform {
    /// ffcv's `CenterCropRGBImageDecoder`: the central square of side
    /// `int(crop_ratio * shorter side)`, resized to the resolution.
    #[default]
    Ffcv,
    /// torchvision's `Resize(round(res / crop_ratio))` of the shorter side,
    /// then `CenterCrop(res)`: `Resize(256) + CenterCrop(224)` at 224 px.
    Torchvision,
}

impl std::str::FromStr for ValTransform {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "ffcv" => Ok(ValTransform::Ffcv),
            "torchvision" => Ok(ValTransform::Torchvision),
            _ => Err(format!(
                "unknown validation transform {text:?}: use \"ffcv\" or \"torchvision\""
            )),
        }
    }
}

impl ValCrop {
    /// The box of a `width` x `height` image that becomes the `resolution`-px input.
    pub fn crop_box(&self, width: u32, height: u32, resolution: usize) -> CropBox {
        match self.transform {
            ValTransform::Ffcv => center_crop(width, height, self.crop_ratio),
            ValTransform::Torchvision => {
                let resize = (resolution as f64 / self.crop_ratio).round() as usize;
                torchvision_center_crop(width, height, resize, resolution)
            }
        }
    }
}

impl Default for ValCrop {
    fn default() -> Self {
        ValCrop {
            crop_ratio: 224.0 / 256.0,
            transform: ValTransform::Ffcv,
        }
    }
}

/// Which transform the loader applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pipeline {
    /// Shuffled order, random crops and flips.
    Train(TrainAugment),
    /// Dataset order, centre crops.
    Val(ValCrop),
}

/// Everything that determines what a [`Loader`] yields.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Output side length (images are square).
    pub resolution: usize,
    /// Train or val transform.
    pub pipeline: Pipeline,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Epoch number; each epoch has its own order and augmentation.
    pub epoch: u64,
    /// This process's rank in `0..world_size`.
    pub rank: usize,
    /// Number of processes sharing the dataset.
    pub world_size: usize,
    /// Decoding threads (results do not depend on it).
    pub threads: usize,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// First batch to produce, to resume in the middle of an epoch.
    pub start_batch: usize,
    /// Decode JPEG records at 1/2, 1/4 or 1/8 scale (in the DCT domain, with the
    /// `jpeg-decoder` crate) when the crop is at least that many times larger than
    /// the resolution. Off by default: on the 2-core Xeon of BENCHMARKS.md it did
    /// not beat zune-jpeg's full decode with `--max-side 512` at res 176 (552 vs
    /// 576 images per CPU-second); it can pay off for large stored images at low
    /// resolutions.
    pub dct_scaling: bool,
}

impl LoaderConfig {
    /// Training defaults: shuffled, RandomResizedCrop + flip, drop_last, all cores.
    pub fn train(batch_size: usize, resolution: usize) -> Self {
        LoaderConfig {
            batch_size,
            resolution,
            pipeline: Pipeline::Train(TrainAugment::default()),
            seed: 0,
            epoch: 0,
            rank: 0,
            world_size: 1,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            drop_last: true,
            prefetch: 2,
            start_batch: 0,
            dct_scaling: false,
        }
    }

    /// Evaluation defaults: dataset order, centre crop 224/256, keep the last batch.
    pub fn val(batch_size: usize, resolution: usize) -> Self {
        LoaderConfig {
            pipeline: Pipeline::Val(ValCrop::default()),
            drop_last: false,
            ..Self::train(batch_size, resolution)
        }
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.batch_size == 0 {
            "batch_size must be at least 1"
        } else if self.resolution == 0 {
            "resolution must be at least 1"
        } else if self.world_size == 0 || self.rank >= self.world_size {
            "rank must be below world_size (and world_size at least 1)"
        } else if self.threads == 0 {
            "threads must be at least 1"
        } else if let Pipeline::Train(aug) = self.pipeline {
            let (s0, s1) = aug.crop.scale;
            let (r0, r1) = aug.crop.ratio;
            if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0 && 0.0 < r0 && r0 <= r1) {
                "crop scale must satisfy 0 < min <= max <= 1 and ratio 0 < min <= max"
            } else {
                ""
            }
        } else if let Pipeline::Val(val) = self.pipeline {
            if !(val.crop_ratio > 0.0 && val.crop_ratio <= 1.0) {
                "val crop_ratio must be in (0, 1]"
            } else {
                ""
            }
        } else {
            ""
        };
        if problem.is_empty() {
            Ok(())
        } else {
            Err(DataError::InvalidOption(format!("loader: {problem}")))
        }
    }
}

/// A pseudo-random permutation of `0..n` in O(1) memory: a Feistel network on the
/// smallest even-bit power-of-two domain, with cycle walking.
#[derive(Clone, Debug)]
struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 6],
}

impl Permutation {
    fn new(n: u64, seed: u64) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2);
        let mut keys = [0; 6];
        for (round, key) in keys.iter_mut().enumerate() {
            *key = mix64(seed ^ mix64(round as u64 + 1));
        }
        Permutation { n, half_bits, keys }
    }

    fn round_trip(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            let next = left ^ (mix64(right ^ key) & mask);
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }

    fn apply(&self, index: u64) -> u64 {
        let mut x = index;
        loop {
            x = self.round_trip(x);
            if x < self.n {
                return x;
            }
        }
    }
}

/// Which dataset record goes into which batch slot, for one rank and epoch.
///
/// Like PyTorch's `DistributedSampler`, the epoch order is padded (by wrapping
/// around) to a multiple of `world_size`, and rank `r` takes positions
/// `r, r + world_size, ...`, so every rank gets the same number of batches.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    dataset_len: usize,
    order: Option<Permutation>,
    rank: usize,
    world_size: usize,
    samples_per_rank: usize,
    batch_size: usize,
    num_batches: usize,
}

impl EpochPlan {
    /// Plans an epoch over `dataset_len` records.
    pub fn new(dataset_len: usize, config: &LoaderConfig) -> Result<Self> {
        config.validate()?;
        let samples_per_rank = dataset_len.div_ceil(config.world_size);
        let num_batches = if config.drop_last {
            samples_per_rank / config.batch_size
        } else {
            samples_per_rank.div_ceil(config.batch_size)
        };
        let order = match config.pipeline {
            Pipeline::Train(_) => Some(Permutation::new(
                dataset_len as u64,
                mix64(config.seed) ^ config.epoch,
            )),
            Pipeline::Val(_) => None,
        };
        Ok(EpochPlan {
            dataset_len,
            order,
            rank: config.rank,
            world_size: config.world_size,
            samples_per_rank,
            batch_size: config.batch_size,
            num_batches,
        })
    }

    /// Batches in the epoch for this rank.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Samples this rank sees per epoch before batching (including padding).
    pub fn samples_per_rank(&self) -> usize {
        self.samples_per_rank
    }

    /// Number of samples in batch `batch`.
    pub fn batch_len(&self, batch: usize) -> usize {
        self.batch_size.min(
            self.samples_per_rank
                .saturating_sub(batch * self.batch_size),
        )
    }

    /// `(global position, dataset index)` of slot `slot` of batch `batch`. The
    /// global position identifies the sample's augmentation draw.
    pub fn sample(&self, batch: usize, slot: usize) -> (u64, usize) {
        let local = batch * self.batch_size + slot;
        let position = (self.rank + local * self.world_size) as u64;
        let wrapped = position % self.dataset_len as u64;
        let index = match &self.order {
            Some(order) => order.apply(wrapped),
            None => wrapped,
        };
        (position, index as usize)
    }
}

/// One batch of images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Index of this batch within the epoch.
    pub index: usize,
    /// `len * channels * resolution * resolution` bytes, NCHW, unnormalised 0-255.
    pub images: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u32>,
    /// Number of images.
    pub len: usize,
    /// Channels per image (the dataset's).
    pub channels: usize,
    /// Side length of every image.
    pub resolution: usize,
}

#[derive(Default)]
struct WorkerScratch {
    resampler: Resampler,
    decoded: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<WorkerScratch> = RefCell::new(WorkerScratch::default());
}

/// Decodes and transforms dataset record `index` (drawn at `position`) into `out`.
fn transform_sample(
    dataset: &Dataset,
    config: &LoaderConfig,
    index: usize,
    position: u64,
    out: &mut [u8],
) -> Result<()> {
    let record = dataset.checked_record(index)?;
    let mut rng = SampleRng::new(config.seed, config.epoch, position);
    let (crop, flip) = match config.pipeline {
        Pipeline::Train(aug) => {
            let crop = aug.crop.sample(record.width, record.height, &mut rng);
            (crop, aug.flip && rng.chance(0.5))
        }
        Pipeline::Val(val) => (
            val.crop_box(record.width, record.height, config.resolution),
            false,
        ),
    };
    let spec = OutputSpec {
        width: config.resolution,
        height: config.resolution,
        flip,
        layout: Layout::Planar,
    };
    SCRATCH.with(|scratch| {
        let scratch = &mut *scratch.borrow_mut();
        let (mut width, mut height) = (record.width as usize, record.height as usize);
        let mut crop = crop;
        let pixels: &[u8] = match record.encoding {
            Encoding::Raw => record.bytes,
            Encoding::Jpeg => {
                let factor =
                    reduction_factor(crop.width.min(crop.height) / config.resolution as f64);
                if config.dct_scaling && factor > 1 {
                    let reduced = decode_jpeg_record_reduced(
                        record.bytes,
                        dataset.channels() as u32,
                        factor,
                        record.width,
                        record.height,
                        &mut scratch.decoded,
                    )
                    .map_err(|reason| DataError::BadRecord {
                        path: dataset.path().to_path_buf(),
                        index,
                        reason,
                    })?;
                    let (sx, sy) = (
                        reduced.0 as f64 / width as f64,
                        reduced.1 as f64 / height as f64,
                    );
                    crop = CropBox {
                        x: crop.x * sx,
                        y: crop.y * sy,
                        width: crop.width * sx,
                        height: crop.height * sy,
                    };
                    (width, height) = reduced;
                } else {
                    dataset.decode_into(index, &mut scratch.decoded)?;
                }
                &scratch.decoded
            }
        };
        let source = SourceView {
            pixels,
            width,
            height,
            channels: dataset.channels(),
        };
        scratch.resampler.resample(source, crop, spec, out);
        Ok(())
    })
}

/// Largest JPEG DCT scaling factor (1, 2, 4 or 8) not above `shrink`.
fn reduction_factor(shrink: f64) -> u32 {
    match shrink {
        s if s >= 8.0 => 8,
        s if s >= 4.0 => 4,
        s if s >= 2.0 => 2,
        _ => 1,
    }
}

fn assemble_batch(
    dataset: &Dataset,
    config: &LoaderConfig,
    plan: &EpochPlan,
    batch: usize,
) -> Result<Batch> {
    let len = plan.batch_len(batch);
    let channels = dataset.channels();
    let sample_bytes = channels * config.resolution * config.resolution;
    let mut images = vec![0u8; len * sample_bytes];
    let mut labels = vec![0u32; len];
    images
        .par_chunks_mut(sample_bytes)
        .zip(labels.par_iter_mut())
        .enumerate()
        .try_for_each(|(slot, (out, label))| {
            let (position, index) = plan.sample(batch, slot);
            *label = dataset.label(index);
            transform_sample(dataset, config, index, position, out)
        })?;
    Ok(Batch {
        index: batch,
        images,
        labels,
        len,
        channels,
        resolution: config.resolution,
    })
}

/// Iterator over the batches of one epoch, produced on a background thread pool
/// and prefetched. Memory is bounded by `prefetch + 1` batches plus per-thread
/// scratch buffers, whatever the dataset size.
pub struct Loader {
    plan: EpochPlan,
    receiver: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Loader {
    /// Starts producing the batches of `config.epoch` from `config.start_batch` on.
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Result<Loader> {
        let plan = EpochPlan::new(dataset.len(), &config)?;
        if dataset.is_empty() {
            return Err(DataError::InvalidOption(format!(
                "{} has no records",
                dataset.path().display()
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(|e| {
                DataError::InvalidOption(format!(
                    "cannot start {} loader threads: {e}",
                    config.threads
                ))
            })?;
        let (sender, receiver) = sync_channel(config.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let producer_stop = Arc::clone(&stop);
        let producer_plan = plan.clone();
        let producer = std::thread::Builder::new()
            .name("loader-producer".into())
            .spawn(move || {
                for batch in config.start_batch..producer_plan.num_batches() {
                    if producer_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let result =
                        pool.install(|| assemble_batch(&dataset, &config, &producer_plan, batch));
                    let failed = result.is_err();
                    if sender.send(result).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| {
                DataError::InvalidOption(format!("cannot start the loader thread: {e}"))
            })?;
        Ok(Loader {
            plan,
            receiver: Some(receiver),
            producer: Some(producer),
            stop,
        })
    }

    /// The epoch's sample plan (batch count, order).
    pub fn plan(&self) -> &EpochPlan {
        &self.plan
    }

    /// Batches in the whole epoch, including any skipped by `start_batch`.
    pub fn num_batches(&self) -> usize {
        self.plan.num_batches()
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting to send.
        self.receiver = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

/// Result of [`measure_loader_throughput`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    /// Images per wall-clock second after the first (warm-up) batch.
    pub img_per_s: f64,
    /// Images per second of CPU time used by the whole process (all threads):
    /// the per-core rate, unaffected by other processes competing for the CPU.
    /// `None` where the OS does not report it.
    pub img_per_cpu_s: Option<f64>,
    /// Images timed.
    pub images: usize,
    /// Wall-clock seconds timed.
    pub seconds: f64,
}

/// CPU time (user + system) used so far by this process, all threads included,
/// from `/proc/self/stat` (Linux; 10 ms resolution).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every supported platform.
    Some((utime + stime) / 100.0)
}

/// Runs the loader over consecutive epochs (starting at `config.epoch`) until at
/// least `min_images` images after the first batch have been produced, and
/// reports the rate. Used by `topotrain bench loader`.
pub fn measure_loader_throughput(
    dataset: Arc<Dataset>,
    mut config: LoaderConfig,
    min_images: usize,
) -> Result<Throughput> {
    let mut images = 0;
    let mut started: Option<(Instant, Option<f64>)> = None;
    loop {
        let loader = Loader::new(Arc::clone(&dataset), config.clone())?;
        if loader.num_batches() == 0 {
            return Err(DataError::InvalidOption(format!(
                "{} has too few records for one batch of {}",
                dataset.path().display(),
                config.batch_size
            )));
        }
        for batch in loader {
            let batch = batch?;
            match started {
                None => started = Some((Instant::now(), process_cpu_seconds())),
                Some(_) => images += batch.len,
            }
            if images >= min_images {
                let (wall_start, cpu_start) = started.expect("set on first batch");
                let seconds = wall_start.elapsed().as_secs_f64();
                let cpu_seconds = cpu_start
                    .zip(process_cpu_seconds())
                    .map(|(start, end)| end - start);
                return Ok(Throughput {
                    img_per_s: images as f64 / seconds,
                    img_per_cpu_s: cpu_seconds.filter(|&s| s > 0.0).map(|s| images as f64 / s),
                    images,
                    seconds,
                });
            }
        }
        config.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection_for_awkward_sizes() {
        for n in [1u64, 2, 3, 5, 16, 17, 1000, 4097] {
            let permutation = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = permutation.apply(i) as usize;
                assert!(!seen[j], "n={n}: {j} twice");
                seen[j] = true;
            }
        }
    }

    #[test]
    fn permutation_depends_on_seed_and_moves_most_items() {
        let a = Permutation::new(1000, 1);
        let b = Permutation::new(1000, 2);
        let differ = (0..1000).filter(|&i| a.apply(i) != b.apply(i)).count();
        let fixed = (0..1000).filter(|&i| a.apply(i) == i).count();
        assert!(differ > 950, "{differ}");
        assert!(fixed < 20, "{fixed}");
    }

    fn plan(
        n: usize,
        batch: usize,
        rank: usize,
        world: usize,
        drop_last: bool,
        train: bool,
    ) -> EpochPlan {
        let mut config = if train {
            LoaderConfig::train(batch, 8)
        } else {
            LoaderConfig::val(batch, 8)
        };
        config.rank = rank;
        config.world_size = world;
        config.drop_last = drop_last;
        EpochPlan::new(n, &config).unwrap()
    }

    #[test]
    fn shards_cover_the_dataset_once_with_padding() {
        let (n, world) = (103, 4);
        let mut counts = vec![0; n];
        for rank in 0..world {
            let p = plan(n, 10, rank, world, false, true);
            assert_eq!(p.num_batches(), 3); // 26 samples per rank
            for b in 0..p.num_batches() {
                for slot in 0..p.batch_len(b) {
                    counts[p.sample(b, slot).1] += 1;
                }
            }
        }
        // 104 draws over 103 records: one record is repeated as padding.
        assert_eq!(counts.iter().filter(|&&c| c == 1).count(), 102);
        assert_eq!(counts.iter().filter(|&&c| c == 2).count(), 1);
    }

    #[test]
    fn drop_last_and_val_order() {
        assert_eq!(plan(103, 10, 0, 1, true, true).num_batches(), 10);
        let p = plan(103, 10, 0, 1, false, false);
        assert_eq!(p.num_batches(), 11);
        assert_eq!(p.batch_len(10), 3);
        assert_eq!(p.sample(10, 2), (102, 102));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let Some(before) = process_cpu_seconds() else {
            eprintln!("skipped: /proc/self/stat is not available");
            return;
        };
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 300 {
            x = std::hint::black_box(mix64(x));
        }
        let used = process_cpu_seconds().unwrap() - before;
        assert!(used > 0.0, "{used}");
    }

    #[test]
    fn reduction_factor_never_upsamples() {
        assert_eq!(
            [0.5, 1.9, 2.0, 3.9, 4.0, 7.9, 8.0, 30.0].map(reduction_factor),
            [1, 1, 2, 2, 4, 4, 8, 8]
        );
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut config = LoaderConfig::train(0, 8);
        assert!(EpochPlan::new(10, &config).is_err());
        config.batch_size = 4;
        config.rank = 2;
        config.world_size = 2;
        assert!(EpochPlan::new(10, &config)
            .unwrap_err()
            .to_string()
            .contains("rank"));
    }
}
