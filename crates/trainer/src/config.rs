//! A run's TOML config: every hyper-parameter of one training run, in the
//! spirit of ffcv's `rn18_*.yaml` files. Unknown keys are errors (they name
//! the key), and [`RunConfig::validate`] names the key and value of any
//! out-of-range setting.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use models::topography::TopographyConfig;
use models::{Architecture, ResNetConfig, VitConfig};
use serde::{Deserialize, Serialize};

use crate::eval::Tta;

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `task = "classification"` (the default).
    #[serde(default)]
    pub task: TaskKind,
    pub model: ModelSection,
    pub data: DataSection,
    /// TopoLoss; absent = a plain (non-topographic) run.
    #[serde(default)]
    pub topography: Option<TopographyConfig>,
    pub optimizer: OptimizerSection,
    pub lr: LrSection,
    pub training: TrainingSection,
    pub output: OutputSection,
}

/// What a config trains (its top-level `task`), which decides its schema
/// and its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Image classification: a [`RunConfig`].
    #[default]
    Classification,
    /// GPT language modelling and LoRA fine-tuning: a
    /// [`crate::language::LanguageConfig`].
    Language,
}

impl TaskKind {
    /// The task of a config's TOML text: its `task`, else (configs written
    /// before the key) "language" when it has `[gpt]`, `[lora]` or `base`.
    pub fn of(text: &str) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        match table.get("task") {
            Some(value) => value.clone().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "task = {value}: use \"classification\" (images) or \"language\" (GPT)"
                )
            }),
            None if ["gpt", "lora", "base"]
                .iter()
                .any(|k| table.contains_key(*k)) =>
            {
                Ok(TaskKind::Language)
            }
            None => Ok(TaskKind::Classification),
        }
    }

    /// The config key `--lr` sets: the peak learning rate.
    pub fn lr_key(self) -> &'static str {
        match self {
            TaskKind::Classification => "lr.peak",
            TaskKind::Language => "optimizer.lr",
        }
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// "resnet18", "resnet50" or "vit_b_32".
    pub arch: String,
    pub num_classes: usize,
    /// ffcv's BlurPool on strided convs (ResNets only).
    #[serde(default)]
    pub blurpool: bool,
    /// Base width of a ResNet (torchvision: 64).
    #[serde(default)]
    pub width: Option<usize>,
    /// 3x3 stride-1 stem without max-pool, for 28-32 px images (ResNets only).
    #[serde(default)]
    pub small_stem: bool,
    /// Input channels (1 for Fashion-MNIST).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// ViT input size (the position embedding is sized for it).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Start from these weights (a safetensors file or a PyTorch checkpoint
    /// of this architecture, e.g. torchvision's) instead of a random init;
    /// with another number of classes, all but the head (fine-tuning).
    /// A resumed run continues from its own checkpoint instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_weights: Option<PathBuf>,
    /// Train only the parameters of modules matching these patterns (globs
    /// as in `[topography]`, e.g. `["fc"]`); the others are frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_only: Option<Vec<String>>,
}

fn default_in_channels() -> usize {
    3
}

/// Where the data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// Files written by `topotrain prep` (ImageNet, image folders).
    Prepared,
    /// The four gzipped IDX files of Fashion-MNIST (Debian's
    /// `dataset-fashion-mnist` or the original download), read into memory.
    FashionMnistIdx,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub format: DataFormat,
    /// Training set: a prepared file, or the IDX directory.
    pub train: PathBuf,
    /// Validation set: a prepared file, or the IDX directory.
    pub val: PathBuf,
    /// Per-channel mean and standard deviation, in 0-255 pixel units.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Training resolution (progressive resizing).
    pub resolution: ResolutionSchedule,
    /// Validation: resize so the crop is `val_resolution`, centre crop ratio
    /// `val_crop_ratio` (ffcv: 256 px at 224/256).
    pub val_resolution: usize,
    #[serde(default = "default_crop_ratio")]
    pub val_crop_ratio: f64,
    /// Whose centre crop: "ffcv" (the default, as the paper's training) or
    /// "torchvision" (`Resize(256) + CenterCrop(224)` at 224 px, as most
    /// published ImageNet accuracies).
    #[serde(default)]
    pub val_transform: data_prep::ValTransform,
    /// Test-time augmentation of validation: "flip" averages the image's
    /// and its mirror's logits (ffcv's `lr_tta`), "none" (the default) not.
    #[serde(default)]
    pub val_tta: Tta,
    /// Random horizontal flips when training.
    #[serde(default = "yes")]
    pub flip: bool,
    /// Random-resized-crop scale range (prepared data only).
    #[serde(default = "default_scale")]
    pub crop_scale: [f64; 2],
    /// Decoding threads (0 = all cores).
    #[serde(default)]
    pub workers: usize,
}

fn default_crop_ratio() -> f64 {
    224.0 / 256.0
}
fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn yes() -> bool {
    true
}

/// ffcv's progressive resizing: `start` px up to epoch `ramp_start`, then a
/// linear ramp to `end` px at epoch `ramp_end`, rounded to a multiple of
/// `multiple` (ffcv: 32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionSchedule {
    pub start: usize,
    #[serde(default)]
    pub end: Option<usize>,
    #[serde(default)]
    pub ramp_start: usize,
    #[serde(default)]
    pub ramp_end: usize,
    #[serde(default = "default_multiple")]
    pub multiple: usize,
}

fn default_multiple() -> usize {
    32
}

impl ResolutionSchedule {
    /// Training resolution of epoch `epoch` (0-based).
    pub fn at(&self, epoch: usize) -> usize {
        let end = self.end.unwrap_or(self.start);
        if end == self.start || epoch <= self.ramp_start {
            return self.start;
        }
        if epoch >= self.ramp_end {
            return end;
        }
        let t = (epoch - self.ramp_start) as f64 / (self.ramp_end - self.ramp_start) as f64;
        let res = self.start as f64 + t * (end as f64 - self.start as f64);
        // np.round(res / multiple) * multiple, as in ffcv (numpy rounds
        // halves to even).
        let multiple = self.multiple.max(1) as f64;
        (((res / multiple).round_ties_even() * multiple) as usize).max(1)
    }
}

/// `[optimizer]`: SGD with momentum (PyTorch semantics: no dampening).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    /// Only "sgd".
    #[serde(default = "default_sgd")]
    pub kind: String,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// L2 weight decay (ffcv: 5e-5 for ResNet-18, 1e-4 for ResNet-50); not
    /// applied to BatchNorm parameters, as in ffcv.
    pub weight_decay: f64,
    /// Label smoothing of the cross-entropy (ffcv: 0.1).
    #[serde(default)]
    pub label_smoothing: f64,
}

fn default_sgd() -> String {
    "sgd".into()
}
fn default_momentum() -> f64 {
    0.9
}

/// LR shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrShape {
    /// Linear from the peak to zero at the end of training (ffcv "triangular").
    Linear,
    /// Multiply by `step_ratio` every `step_length` epochs, reaching 0 at
    /// the end; ffcv's "step", which ramps over the epoch before each drop.
    Step,
    /// Keep the peak.
    Constant,
}

/// `[lr]`: linear warm-up from `start` to `peak` over `warmup_epochs`, then
/// `shape`. Evaluated per optimiser step at a fractional epoch, like ffcv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSection {
    pub peak: f64,
    /// Where the warm-up starts, in learning-rate units.
    #[serde(default)]
    pub start: f64,
    /// Where the warm-up starts, as a fraction of `peak` (ffcv's cyclic
    /// schedule: 1e-4); replaces `start`, and follows `peak` when a sweep or
    /// `--lr` changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_fraction: Option<f64>,
    /// The images per optimiser step (`training.batch_size x grad_accum`,
    /// over all devices) that `peak` and `start` are stated for. A run with
    /// another step batch scales both by its own over this one (the linear
    /// scaling rule), so the learning rate per sample stays the recipe's.
    /// Absent: `peak` and `start` are used as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_batch: Option<usize>,
    #[serde(default)]
    pub warmup_epochs: f64,
    pub shape: LrShape,
    #[serde(default = "default_step_ratio")]
    pub step_ratio: f64,
    #[serde(default = "default_step_length")]
    pub step_length: f64,
}

fn default_step_ratio() -> f64 {
    0.1
}
fn default_step_length() -> f64 {
    30.0
}

impl LrSection {
    /// The learning rate the warm-up starts from, at the reference batch.
    pub fn warmup_start(&self) -> f64 {
        self.start_fraction
            .map_or(self.start, |fraction| fraction * self.peak)
    }

    /// Learning rate at fractional epoch `epoch` of a run of `epochs` epochs,
    /// at the reference batch (see [`RunConfig::lr_at`] for the run's).
    pub fn at(&self, epoch: f64, epochs: usize) -> f64 {
        let epochs = epochs as f64;
        if epoch < self.warmup_epochs {
            let start = self.warmup_start();
            return start + (self.peak - start) * epoch / self.warmup_epochs;
        }
        match self.shape {
            LrShape::Constant => self.peak,
            LrShape::Linear => {
                let span = (epochs - self.warmup_epochs).max(f64::MIN_POSITIVE);
                (self.peak * (epochs - epoch) / span).max(0.0)
            }
            LrShape::Step => {
                // ffcv's get_step_lr at whole epochs, 0 from the last on
                // (train_imagenet.py:100-105), interpolated within each
                // epoch as its train_loop does (lines 356-358).
                let at_whole = |e: f64| {
                    if e >= epochs {
                        0.0
                    } else {
                        self.peak * self.step_ratio.powi((e / self.step_length).floor() as i32)
                    }
                };
                let whole = epoch.floor();
                let (from, to) = (at_whole(whole), at_whole(whole + 1.0));
                from + (to - from) * (epoch - whole)
            }
        }
    }
}

/// `[training]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    pub epochs: usize,
    /// Images per micro-batch; a step takes `grad_accum` of them.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimiser step
    /// (the step's batch is `batch_size x grad_accum` images).
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub seed: u64,
    /// "cpu", "cuda[:N]" or "wgpu"; `--device` overrides it.
    #[serde(default = "default_device")]
    pub device: String,
    /// Devices this process trains on, data parallel, from `device`'s
    /// index up (cuda:0 and 4 use cuda:0..cuda:3); each step's batch is
    /// split between them. `--devices` overrides it.
    #[serde(default = "one")]
    pub devices: usize,
    /// "f32", or "bf16": convolutions, linear layers and matrix products
    /// computed in bf16 over f32 weights, gradients and optimiser state.
    #[serde(default)]
    pub precision: models::Precision,
    /// Convolution kernels: "direct" (conv-kernels' own: the CPU's f32
    /// kernels, Burn's direct ones on CUDA and wgpu with a correct strided
    /// input gradient), "implicit-gemm" (tensor cores on CUDA; experimental)
    /// or "burn" (Burn's own everywhere, for comparison).
    #[serde(default)]
    pub conv_kernels: models::ConvChoice,
    /// Evaluation batch size (default: the training batch size).
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Evaluate every N epochs (and always after the last).
    #[serde(default = "one")]
    pub eval_every_epochs: usize,
    /// Also checkpoint every N optimiser steps inside an epoch (0 = only at
    /// epoch ends).
    #[serde(default)]
    pub checkpoint_every_steps: usize,
    /// Cap on the steps of an epoch (smoke runs on small data).
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// Cap on the evaluation batches.
    #[serde(default)]
    pub max_eval_batches: Option<usize>,
    /// Log a metrics line every N steps.
    #[serde(default = "default_log_every")]
    pub log_every_steps: usize,
    /// CPU threads for the compute pool (0 = all cores).
    #[serde(default)]
    pub threads: usize,
}

fn default_device() -> String {
    "cpu".into()
}
fn one() -> usize {
    1
}
fn default_log_every() -> usize {
    50
}

/// `[output]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The run directory (relative paths are relative to the working directory).
    pub dir: PathBuf,
    /// How many step checkpoints to keep.
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// The topographic layer drawn into `sheet_<layer>.png` at the end of
    /// the run (default: the last one).
    #[serde(default)]
    pub sheet_layer: Option<String>,
}

fn two() -> usize {
    2
}

/// The largest training or validation resolution a config or a command
/// may ask for: a sanity bound, far above the recipes' 160-256 px, past
/// which a typo would try to allocate images of gigabytes.
pub const MAX_RESOLUTION: usize = 2048;

/// Checks that `px`, the value of `name` (a config key or a flag), is a
/// resolution from 1 to [`MAX_RESOLUTION`].
pub fn check_resolution(name: &str, px: usize) -> Result<()> {
    if px == 0 || px > MAX_RESOLUTION {
        bail!("{name} = {px}: must be between 1 and {MAX_RESOLUTION} px");
    }
    Ok(())
}

/// The most threads a config may ask for: a sanity bound far above any
/// machine's cores, past which a typo would start thousands of threads.
pub const MAX_THREADS: usize = 1024;

fn check_threads(key: &str, threads: usize) -> Result<()> {
    if threads > MAX_THREADS {
        bail!("{key} = {threads}: must be at most {MAX_THREADS} (0 = one per core)");
    }
    Ok(())
}

/// Checks `data.mean` and `data.std`: one finite value per input channel,
/// in the 0-255 units of the 8-bit pixels they normalise (pixels are
/// stored as bytes everywhere in topotrain). Means at most 1 with stds
/// under 1 are taken for 0-1 units (torchvision's 0.485/0.229) and refused
/// with the 0-255 values to use instead.
fn check_normalisation(mean: &[f32], std: &[f32], channels: usize) -> Result<()> {
    if mean.len() != channels {
        bail!("data.mean = {mean:?}: needs one value per input channel ({channels})");
    }
    if std.len() != channels {
        bail!("data.std = {std:?}: needs one value per input channel ({channels})");
    }
    let in_0_1_units =
        mean.iter().all(|m| (0.0..=1.0).contains(m)) && std.iter().all(|s| (0.0..1.0).contains(s));
    if in_0_1_units {
        // One decimal: 0-1 values are themselves rounded (0.2860 of 72.94).
        let scaled = |values: &[f32]| -> Vec<f64> {
            values
                .iter()
                .map(|&v| (f64::from(v) * 2550.0).round() / 10.0)
                .collect()
        };
        bail!(
            "data.mean = {mean:?}, data.std = {std:?}: these look like 0-1 units, but pixels \
             are 8-bit and normalised in 0-255 units; use mean = {:?}, std = {:?}",
            scaled(mean),
            scaled(std)
        );
    }
    if let Some(m) = mean.iter().find(|m| !(0.0..=255.0).contains(*m)) {
        bail!("data.mean = {mean:?}: {m} is not a pixel mean; each must be in [0, 255]");
    }
    // In 0-255 units a channel's std is at most 127.5; one under 1 is a
    // typo (or a constant channel) that would blow its inputs up.
    if let Some(s) = std.iter().find(|s| !(1.0..=255.0).contains(*s)) {
        bail!(
            "data.std = {std:?}: {s} is not a pixel standard deviation; each must be in [1, 255]"
        );
    }
    Ok(())
}

impl RunConfig {
    /// Reads and validates a config file; relative data paths are resolved
    /// against the working directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: RunConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and consistency; errors name the key and the value.
    // `!(x > 0.0)` on purpose: NaN fails the check too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> Result<()> {
        fn bad<T: std::fmt::Debug>(key: &str, value: T, why: &str) -> anyhow::Error {
            anyhow::anyhow!("{key} = {value:?}: {why}")
        }
        if self.task != TaskKind::Classification {
            return Err(bad(
                "task",
                self.task,
                "an image-classification config has task = \"classification\"",
            ));
        }
        let m = &self.model;
        self.architecture()?;
        if m.num_classes == 0 {
            return Err(bad(
                "model.num_classes",
                m.num_classes,
                "must be at least 1",
            ));
        }
        if let Some(patterns) = &m.train_only {
            if patterns.is_empty() {
                return Err(bad(
                    "model.train_only",
                    patterns,
                    "must name at least one module pattern (leave it out to train everything)",
                ));
            }
            for pattern in patterns {
                models::LayerPattern::new(pattern)
                    .map_err(|e| bad("model.train_only", pattern, &e.to_string()))?;
            }
        }
        let d = &self.data;
        check_normalisation(&d.mean, &d.std, m.in_channels)?;
        check_resolution("data.resolution.start", d.resolution.start)?;
        if let Some(end) = d.resolution.end {
            check_resolution("data.resolution.end", end)?;
            if end != d.resolution.start && d.resolution.ramp_end <= d.resolution.ramp_start {
                return Err(bad(
                    "data.resolution.ramp_end",
                    d.resolution.ramp_end,
                    "must be after data.resolution.ramp_start when start and end differ",
                ));
            }
        }
        check_resolution("data.val_resolution", d.val_resolution)?;
        if !(d.val_crop_ratio > 0.0 && d.val_crop_ratio <= 1.0) {
            return Err(bad(
                "data.val_crop_ratio",
                d.val_crop_ratio,
                "must be in (0, 1]",
            ));
        }
        if !(d.crop_scale[0] > 0.0 && d.crop_scale[0] <= d.crop_scale[1] && d.crop_scale[1] <= 1.0)
        {
            return Err(bad(
                "data.crop_scale",
                d.crop_scale,
                "must be [low, high] with 0 < low <= high <= 1",
            ));
        }
        let o = &self.optimizer;
        if o.kind != "sgd" {
            return Err(bad("optimizer.kind", &o.kind, "only \"sgd\" is supported"));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(bad("optimizer.momentum", o.momentum, "must be in [0, 1)"));
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return Err(bad(
                "optimizer.weight_decay",
                o.weight_decay,
                "must be >= 0",
            ));
        }
        if !(0.0..1.0).contains(&o.label_smoothing) {
            return Err(bad(
                "optimizer.label_smoothing",
                o.label_smoothing,
                "must be in [0, 1)",
            ));
        }
        let t = &self.training;
        if t.epochs == 0 {
            return Err(bad("training.epochs", t.epochs, "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(bad(
                "training.batch_size",
                t.batch_size,
                "must be at least 1",
            ));
        }
        if t.devices == 0 || t.devices > t.batch_size {
            return Err(bad(
                "training.devices",
                t.devices,
                &format!(
                    "must be between 1 and training.batch_size ({}): each device takes a share of every batch",
                    t.batch_size
                ),
            ));
        }
        if t.grad_accum == 0 {
            return Err(bad("training.grad_accum", 0, "must be at least 1"));
        }
        if t.max_steps_per_epoch == Some(0) {
            return Err(bad(
                "training.max_steps_per_epoch",
                0,
                "must be at least 1 (leave it out for whole epochs)",
            ));
        }
        check_threads("training.threads", t.threads)?;
        check_threads("data.workers", d.workers)?;
        if t.eval_batch_size == Some(0) {
            return Err(bad("training.eval_batch_size", 0, "must be at least 1"));
        }
        if t.eval_every_epochs == 0 {
            return Err(bad(
                "training.eval_every_epochs",
                t.eval_every_epochs,
                "must be at least 1",
            ));
        }
        if t.log_every_steps == 0 {
            return Err(bad(
                "training.log_every_steps",
                t.log_every_steps,
                "must be at least 1",
            ));
        }
        let l = &self.lr;
        if !(l.peak > 0.0 && l.peak.is_finite()) {
            return Err(bad("lr.peak", l.peak, "must be positive"));
        }
        if let Some(fraction) = l.start_fraction {
            if !(0.0..=1.0).contains(&fraction) {
                return Err(bad(
                    "lr.start_fraction",
                    fraction,
                    "must be in [0, 1]: the warm-up starts at this fraction of lr.peak",
                ));
            }
            if l.start != 0.0 {
                return Err(bad(
                    "lr.start",
                    l.start,
                    "give lr.start or lr.start_fraction, not both",
                ));
            }
        }
        if l.reference_batch == Some(0) {
            return Err(bad(
                "lr.reference_batch",
                0,
                "must be at least 1: the images per step that lr.peak is stated for",
            ));
        }
        if !(l.start >= 0.0 && l.start <= l.peak) {
            return Err(bad(
                "lr.start",
                l.start,
                &format!(
                    "must be in [0, lr.peak = {}]: warm-up rises from it to the peak",
                    l.peak
                ),
            ));
        }
        if !(l.warmup_epochs >= 0.0) || l.warmup_epochs > self.training.epochs as f64 {
            return Err(bad(
                "lr.warmup_epochs",
                l.warmup_epochs,
                "must be in [0, training.epochs]",
            ));
        }
        if l.shape == LrShape::Step && !(l.step_length > 0.0) {
            return Err(bad("lr.step_length", l.step_length, "must be positive"));
        }
        if !(l.step_ratio > 0.0 && l.step_ratio <= 1.0) {
            return Err(bad(
                "lr.step_ratio",
                l.step_ratio,
                "must be in (0, 1]: the LR is multiplied by it every lr.step_length epochs",
            ));
        }
        t.device
            .parse::<crate::DeviceChoice>()
            .map_err(|e| bad("training.device", &t.device, &e))?;
        if self.output.keep_checkpoints == 0 {
            return Err(bad(
                "output.keep_checkpoints",
                self.output.keep_checkpoints,
                "must be at least 1",
            ));
        }
        if let Some(topography) = &self.topography {
            topography
                .tau
                .validate()
                .map_err(|e| bad("topography.tau", &topography.tau, &e.to_string()))?;
            for (i, selection) in topography.layers.iter().enumerate() {
                selection.validate().map_err(|e| {
                    anyhow::anyhow!("topography.layers[{i}] ({:?}): {e}", selection.patterns)
                })?;
            }
            if topography.layers.is_empty() {
                return Err(bad(
                    "topography.layers",
                    "[]",
                    "select at least one layer (or drop [topography])",
                ));
            }
        }
        Ok(())
    }

    /// The network to build.
    pub fn architecture(&self) -> Result<Architecture> {
        let m = &self.model;
        let arch = match m.arch.as_str() {
            "resnet18" | "resnet50" => {
                let mut c = if m.arch == "resnet18" {
                    ResNetConfig::resnet18(m.num_classes)
                } else {
                    ResNetConfig::resnet50(m.num_classes)
                };
                c = c
                    .with_blurpool(m.blurpool)
                    .with_small_stem(m.small_stem)
                    .with_in_channels(m.in_channels);
                if let Some(width) = m.width {
                    if width == 0 {
                        bail!("model.width = {width}: must be positive");
                    }
                    c = c.with_width(width);
                }
                if m.image_size.is_some() {
                    bail!(
                        "model.image_size = {:?}: only ViTs take an image size",
                        m.image_size
                    );
                }
                Architecture::ResNet(c)
            }
            "vit_b_32" => {
                if m.blurpool || m.small_stem || m.width.is_some() {
                    bail!("model.arch = \"vit_b_32\": blurpool, small_stem and width apply to ResNets only");
                }
                let mut c = VitConfig::vit_b_32(m.num_classes);
                c.in_channels = m.in_channels;
                if let Some(size) = m.image_size {
                    c.image_size = size;
                }
                Architecture::Vit(c)
            }
            other => bail!("model.arch = {other:?}: unknown; known: resnet18, resnet50, vit_b_32"),
        };
        Ok(arch)
    }

    /// Images per optimiser step, over all devices and nodes.
    pub fn step_batch(&self) -> usize {
        self.training.batch_size * self.training.grad_accum
    }

    /// The factor on `lr.peak` and the warm-up start: this run's step batch
    /// over `lr.reference_batch` (1 without one).
    pub fn lr_scale(&self) -> f64 {
        self.lr
            .reference_batch
            .map_or(1.0, |reference| self.step_batch() as f64 / reference as f64)
    }

    /// The learning rate of this run at fractional epoch `epoch`.
    pub fn lr_at(&self, epoch: f64) -> f64 {
        self.lr.at(epoch, self.training.epochs) * self.lr_scale()
    }

    /// The peak learning rate per image of a step: the quantity a recipe
    /// keeps when its batch or number of devices changes.
    pub fn peak_lr_per_sample(&self) -> f64 {
        self.lr.peak * self.lr_scale() / self.step_batch() as f64
    }

    /// Number of optimiser steps in one epoch of `train_len` samples (the
    /// last partial batch is dropped, like ffcv's `drop_last`).
    pub fn steps_per_epoch(&self, train_len: usize) -> usize {
        let full = train_len / (self.training.batch_size * self.training.grad_accum);
        match self.training.max_steps_per_epoch {
            Some(cap) => full.min(cap),
            None => full,
        }
    }

    /// Copy with a constant tau (sweeps).
    pub fn with_tau(&self, tau: f64) -> Result<Self> {
        let mut config = self.clone();
        let Some(topography) = config.topography.as_mut() else {
            bail!("the base config has no [topography] section, so tau cannot be swept");
        };
        topography.tau = topoloss::TauSchedule::constant(tau);
        for layer in &mut topography.layers {
            layer.tau = None;
        }
        Ok(config)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SMALL: &str = r#"
[model]
arch = "resnet18"
num_classes = 10
width = 8
small_stem = true
in_channels = 1

[data]
format = "fashion-mnist-idx"
train = "/usr/share/datasets/fashion-mnist"
val = "/usr/share/datasets/fashion-mnist"
mean = [73.0]
std = [90.0]
resolution = { start = 28 }
val_resolution = 28
val_crop_ratio = 1.0
flip = true

[topography]
tau = 1.0
layers = [{ patterns = ["layer*.*.conv*"], clamp_factor = true }]

[optimizer]
weight_decay = 5e-5
label_smoothing = 0.1

[lr]
peak = 0.2
warmup_epochs = 1
shape = "linear"

[training]
epochs = 2
batch_size = 64

[output]
dir = "runs/test"
"#;

    #[test]
    fn the_task_is_read_named_or_inferred_from_older_configs() {
        assert_eq!(TaskKind::of(SMALL).unwrap(), TaskKind::Classification);
        let explicit = format!("task = \"classification\"\n{SMALL}");
        assert_eq!(TaskKind::of(&explicit).unwrap(), TaskKind::Classification);
        RunConfig::parse(&explicit).unwrap();
        assert_eq!(
            TaskKind::of("task = \"language\"").unwrap(),
            TaskKind::Language
        );
        assert_eq!(TaskKind::of("base = \"a.pt\"").unwrap(), TaskKind::Language);
        let typo = TaskKind::of("task = \"langauge\"").unwrap_err().to_string();
        assert!(
            typo.contains("\"langauge\"") && typo.contains("\"language\""),
            "{typo}"
        );
        let wrong = format!("task = \"language\"\n{SMALL}");
        let error = format!("{:#}", RunConfig::parse(&wrong).unwrap_err());
        assert!(error.contains("task"), "{error}");
    }

    #[test]
    fn parses_a_small_config() {
        let config = RunConfig::parse(SMALL).unwrap();
        assert_eq!(config.optimizer.momentum, 0.9);
        assert_eq!(config.training.device, "cpu");
        assert!(matches!(
            config.architecture().unwrap(),
            Architecture::ResNet(_)
        ));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let typo = SMALL.replace("weight_decay", "weight_dacay");
        let error = format!("{:#}", RunConfig::parse(&typo).unwrap_err());
        assert!(error.contains("weight_dacay"), "{error}");
        let bad = SMALL.replace("peak = 0.2", "peak = -1.0");
        let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
        assert!(error.contains("lr.peak") && error.contains("-1"), "{error}");
        let bad = SMALL.replace("arch = \"resnet18\"", "arch = \"resnet19\"");
        let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
        assert!(
            error.contains("model.arch") && error.contains("resnet19"),
            "{error}"
        );
        let bad = SMALL.replace("mean = [73.0]", "mean = [73.0, 1.0]");
        let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
        assert!(error.contains("data.mean"), "{error}");
        let bad = SMALL.replace("[training]\n", "[training]\ndevice = \"tpu\"\n");
        let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
        assert!(
            error.contains("training.device") && error.contains("tpu"),
            "{error}"
        );
        for train_only in ["[]", "[\"layer[\"]"] {
            let bad = SMALL.replace(
                "in_channels = 1",
                &format!("in_channels = 1\ntrain_only = {train_only}"),
            );
            let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
            assert!(error.contains("model.train_only"), "{error}");
        }
        let bad = SMALL.replace("[training]\n", "[training]\ndevices = 0\n");
        let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
        assert!(error.contains("training.devices"), "{error}");
        let bad = SMALL.replace("[training]\n", "[training]\neval_batch_size = 0\n");
        let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
        assert!(error.contains("training.eval_batch_size"), "{error}");
        for (from, to, key) in [
            (
                "val_resolution = 28",
                "val_resolution = 100000",
                "data.val_resolution",
            ),
            ("start = 28", "start = 0", "data.resolution.start"),
            (
                "start = 28",
                "start = 28, end = 4096",
                "data.resolution.end",
            ),
        ] {
            let bad = SMALL.replace(from, to);
            assert_ne!(bad, SMALL, "{from}");
            let error = format!("{:#}", RunConfig::parse(&bad).unwrap_err());
            assert!(error.contains(key) && error.contains("2048 px"), "{error}");
        }
        let bf16 = SMALL.replace("[training]\n", "[training]\nprecision = \"bf16\"\n");
        assert_eq!(
            RunConfig::parse(&bf16).unwrap().training.precision,
            models::Precision::Bf16
        );
    }

    /// Replaces `from` in the small config with `to` (which must change
    /// it) and returns the validation error in full.
    fn refusal(from: &str, to: &str) -> String {
        let bad = SMALL.replacen(from, to, 1);
        assert_ne!(bad, SMALL, "{from}");
        match RunConfig::parse(&bad) {
            Ok(_) => panic!("`{to}` was accepted"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn silently_wrong_values_are_refused_by_key_and_rule() {
        let cases = [
            (
                "peak = 0.2",
                "peak = 0.2\nstart = -0.1",
                "lr.start",
                "[0, lr.peak",
            ),
            (
                "peak = 0.2",
                "peak = 0.2\nstart = 0.5",
                "lr.start",
                "[0, lr.peak",
            ),
            (
                "peak = 0.2",
                "peak = 0.2\nstep_ratio = -1",
                "lr.step_ratio",
                "(0, 1]",
            ),
            ("mean = [73.0]", "mean = [nan]", "data.mean", "[0, 255]"),
            ("mean = [73.0]", "mean = [inf]", "data.mean", "[0, 255]"),
            ("std = [90.0]", "std = [nan]", "data.std", "[1, 255]"),
            ("std = [90.0]", "std = [inf]", "data.std", "[1, 255]"),
            ("std = [90.0]", "std = [1e-30]", "data.std", "[1, 255]"),
            ("std = [90.0]", "std = [-90.0]", "data.std", "[1, 255]"),
            (
                "clamp_factor = true",
                "clamp_factor = true, factor = nan",
                "topography.layers[0]",
                "finite number >= 1",
            ),
            (
                "clamp_factor = true",
                "clamp_factor = true, factor = inf",
                "topography.layers[0]",
                "`factor`",
            ),
            (
                "batch_size = 64",
                "batch_size = 64\nthreads = 5000",
                "training.threads = 5000",
                "at most 1024",
            ),
            (
                "flip = true",
                "flip = true\nworkers = 5000",
                "data.workers = 5000",
                "at most 1024",
            ),
            ("epochs = 2", "epochs = 0", "training.epochs", "at least 1"),
            (
                "batch_size = 64",
                "batch_size = 64\nmax_steps_per_epoch = 0",
                "training.max_steps_per_epoch",
                "at least 1",
            ),
        ];
        for (from, to, key, rule) in cases {
            let error = refusal(from, to);
            assert!(error.contains(key) && error.contains(rule), "{to}: {error}");
        }
        // epochs = 0 once blamed lr.warmup_epochs, checked first.
        assert!(!refusal("epochs = 2", "epochs = 0").contains("warmup"));
    }

    #[test]
    fn mean_and_std_in_0_1_units_get_the_0_255_values() {
        let error = refusal(
            "mean = [73.0]\nstd = [90.0]",
            "mean = [0.2860]\nstd = [0.3530]",
        );
        assert!(
            error.contains("0-1 units") && error.contains("[72.9]") && error.contains("[90.0]"),
            "{error}"
        );
    }

    #[test]
    fn lr_warms_up_then_decays() {
        let lr = LrSection {
            peak: 1.0,
            start: 0.0,
            warmup_epochs: 2.0,
            start_fraction: None,
            reference_batch: None,
            shape: LrShape::Linear,
            step_ratio: 0.1,
            step_length: 30.0,
        };
        assert_eq!(lr.at(0.0, 10), 0.0);
        assert_eq!(lr.at(1.0, 10), 0.5);
        assert_eq!(lr.at(2.0, 10), 1.0);
        assert_eq!(lr.at(6.0, 10), 0.5);
        assert_eq!(lr.at(10.0, 10), 0.0);
        let step = LrSection {
            shape: LrShape::Step,
            step_length: 3.0,
            warmup_epochs: 0.0,
            ..lr
        };
        assert!((step.at(3.5, 10) - 0.1).abs() < 1e-12);
        // As ffcv, the epoch before a drop ramps to the next value, and the
        // last epoch ramps to 0.
        assert!((step.at(2.5, 10) - 0.55).abs() < 1e-12);
        assert!((step.at(9.5, 10) - 0.0005).abs() < 1e-12);
        assert_eq!(step.at(10.0, 10), 0.0);
    }

    /// ffcv-imagenet's `get_cyclic_lr` (train_imagenet.py:110-113) with
    /// `train_loop`'s per-step interpolation (lines 356-358), at lr 1.7,
    /// peak epoch 2, 16 epochs, 100 steps an epoch.
    fn ffcv_cyclic(epoch: usize, step: usize) -> f64 {
        let (lr, epochs, steps) = (1.7, 16.0, 100.0);
        let at = |e: f64| {
            if e <= 2.0 {
                1e-4 * lr + (lr - 1e-4 * lr) * e / 2.0
            } else {
                (lr * (epochs - e) / (epochs - 2.0)).max(0.0)
            }
        };
        let (from, to) = (at(epoch as f64), at(epoch as f64 + 1.0));
        from + (to - from) * step as f64 / steps
    }

    #[test]
    fn start_fraction_and_reference_batch_give_ffcv_cyclic_per_sample() {
        let config = |batch: usize, accum: usize| {
            let text = SMALL
                .replace(
                    "peak = 0.2\nwarmup_epochs = 1",
                    "peak = 1.7\nstart_fraction = 1e-4\nreference_batch = 4096\nwarmup_epochs = 2",
                )
                .replace(
                    "epochs = 2\nbatch_size = 64",
                    &format!("epochs = 16\nbatch_size = {batch}\ngrad_accum = {accum}"),
                );
            RunConfig::parse(&text).unwrap()
        };
        // ffcv's rn50 recipe as written: 8 processes x 512 images.
        let full = config(4096, 1);
        for (epoch, step) in [(0, 0), (0, 37), (1, 99), (2, 0), (5, 50), (15, 99)] {
            let ours = full.lr_at(epoch as f64 + step as f64 / 100.0);
            let theirs = ffcv_cyclic(epoch, step);
            assert!(
                (ours - theirs).abs() < 1e-12,
                "epoch {epoch} step {step}: {ours} vs {theirs}"
            );
        }
        assert_eq!(full.lr_at(0.0), 1.7e-4);
        // A quarter of the batch (on any number of devices, or as two
        // accumulated micro-batches) takes a quarter of the rate.
        for smaller in [config(1024, 1), config(512, 2)] {
            assert_eq!(smaller.peak_lr_per_sample(), full.peak_lr_per_sample());
            assert!((smaller.lr_at(3.5) - full.lr_at(3.5) / 4.0).abs() < 1e-15);
        }
        assert!((full.peak_lr_per_sample() - 1.7 / 4096.0).abs() < 1e-18);
    }

    #[test]
    fn start_fraction_and_reference_batch_are_validated() {
        let refusal = |lr: &str| {
            let text = SMALL.replace("peak = 0.2\n", &format!("peak = 0.2\n{lr}\n"));
            format!("{:#}", RunConfig::parse(&text).unwrap_err())
        };
        let error = refusal("start_fraction = 2.0");
        assert!(
            error.contains("lr.start_fraction = 2.0") && error.contains("[0, 1]"),
            "{error}"
        );
        let error = refusal("start_fraction = 1e-4\nstart = 0.01");
        assert!(error.contains("not both"), "{error}");
        let error = refusal("reference_batch = 0");
        assert!(error.contains("lr.reference_batch = 0"), "{error}");
    }

    #[test]
    fn progressive_resizing_follows_ffcv() {
        let r = ResolutionSchedule {
            start: 160,
            end: Some(192),
            ramp_start: 11,
            ramp_end: 13,
            multiple: 32,
        };
        assert_eq!(r.at(0), 160);
        assert_eq!(r.at(11), 160);
        assert_eq!(r.at(12), 192);
        assert_eq!(r.at(13), 192);
        assert_eq!(r.at(15), 192);
        // Halves round to even as numpy's do: 128 -> 160 over two epochs
        // passes 144 = 4.5 x 32, which becomes 128, not 160.
        let halves = ResolutionSchedule {
            start: 128,
            end: Some(160),
            ramp_start: 0,
            ramp_end: 2,
            multiple: 32,
        };
        assert_eq!(halves.at(1), 128);
    }
}
