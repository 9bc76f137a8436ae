//! Image classification, the paper's (ffcv) ImageNet recipe: SGD with
//! momentum, label-smoothed cross-entropy plus TopoLoss, per-step learning
//! rate, progressive resizing, evaluation per epoch, the final weights in
//! torchvision layout and a picture of one topographic layer's sheet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use models::topography::{TopoEngine, Topography};
use models::{Architecture, Model};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::{RunConfig, TrainingSection};
use crate::data::{self, to_tensors, Batch, DataSet, NodeShard, Split};
use crate::engine::{self, Evaluation, FitOptions, Recipe, RunSettings, StepBatches};
use crate::eval::{evaluate, rank_of_label, EvalSettings, Tta};
use crate::parallel;
use crate::run_dir::{open_run_dir, OpenRunDir};
use crate::sgd::InPlaceSgd;
use crate::sheet::{write_sheet_picture, SheetPicture};
use crate::step::{GradientPipeline, Task};

/// The end-of-run summary (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub architecture: String,
    pub epochs: usize,
    pub steps: u64,
    /// Tau at the last step (0 without a topography).
    pub tau: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub val_loss: f64,
    /// Validation images behind val_top1, val_top5 and val_loss.
    #[serde(default)]
    pub val_images: Option<u64>,
    /// The test-time augmentation of the validation figures.
    #[serde(default)]
    pub val_tta: Tta,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Mean over topographic layers of the unscaled (tau = 1) TopoLoss.
    pub mean_topo_loss: Option<f64>,
    pub topo_layers: BTreeMap<String, f64>,
    pub train_seconds: f64,
    pub images_per_sec: f64,
    pub final_checkpoint: PathBuf,
    pub final_weights: PathBuf,
    /// The sheet picture of one topographic layer (absent without a
    /// topography, or if it could not be drawn; the run says why).
    #[serde(default)]
    pub sheet: Option<SheetPicture>,
}

/// Image classification on a prepared data set: the [`Task`] and
/// [`Recipe`] of vision runs.
pub struct Classification<'a, B: Backend> {
    pub config: &'a RunConfig,
    pub train: &'a DataSet,
    pub val: &'a DataSet,
    pub loss: CrossEntropyLossConfig,
    /// Where validation runs.
    pub device: B::Device,
}

impl<B: AutodiffBackend> Task<B> for Classification<'_, B> {
    type Model = Model<B>;
    type Batch = Batch;

    fn loss(
        &self,
        model: &Model<B>,
        batch: &Batch,
        device: &B::Device,
    ) -> Result<(Tensor<B, 1>, u64)> {
        let d = &self.config.data;
        let (x, y) = to_tensors::<B>(batch, &d.mean, &d.std, device);
        let logits = model.forward(x);
        let loss = self.loss.init(device).forward(logits.clone(), y);
        Ok((loss, count_correct(logits, &batch.labels)?))
    }
}

impl<B: AutodiffBackend> Recipe<B> for Classification<'_, B> {
    type Spec = Architecture;

    fn spec(&self) -> Architecture {
        self.config
            .architecture()
            .expect("a validated config builds its architecture")
    }

    fn describe(spec: &Architecture) -> String {
        spec.describe()
    }

    fn epochs(&self) -> usize {
        self.config.training.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize) -> usize {
        self.config.steps_per_epoch(self.train.len())
    }

    fn lr(&self, epoch: usize, step: usize) -> f64 {
        let steps = self.steps_in_epoch(epoch) as f64;
        self.config.lr_at(epoch as f64 + step as f64 / steps)
    }

    fn batches(
        &self,
        epoch: usize,
        start: usize,
        node: NodeShard,
    ) -> Result<StepBatches<'_, Batch>> {
        let t = &self.config.training;
        let split = Split::Train {
            seed: t.seed,
            epoch: epoch as u64,
            resolution: self.config.data.resolution.at(epoch),
            node,
        };
        let mut batches =
            self.train
                .batches(split, start * t.grad_accum, t.batch_size / node.nodes)?;
        let accum = t.grad_accum;
        Ok(Box::new(std::iter::from_fn(move || {
            let micro: Result<Vec<Batch>> = batches.by_ref().take(accum).collect();
            match micro {
                Ok(m) if m.len() < accum => None,
                other => Some(other),
            }
        })))
    }

    fn evaluate(
        &self,
        model: &Model<B::InnerBackend>,
        epoch: Option<usize>,
    ) -> Result<Option<Evaluation>> {
        let t = &self.config.training;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let last = epoch + 1 == t.epochs;
        if !last && !(epoch + 1).is_multiple_of(t.eval_every_epochs) {
            return Ok(None);
        }
        let d = &self.config.data;
        let settings = EvalSettings {
            resolution: d.val_resolution,
            batch_size: t.eval_batch_size.unwrap_or(t.batch_size),
            mean: &d.mean,
            std: &d.std,
            max_batches: t.max_eval_batches,
            tta: d.val_tta,
        };
        let result = evaluate(model, self.val, &settings, &self.device)?;
        Ok(Some(Evaluation {
            loss: result.loss,
            top1: Some(result.top1),
            top5: Some(result.top5),
            samples: result.images as u64,
        }))
    }

    fn throughput_name(&self) -> &'static str {
        "images_per_sec"
    }

    fn resolution(&self, epoch: usize) -> Option<usize> {
        Some(self.config.data.resolution.at(epoch))
    }

    fn counts_correct(&self) -> bool {
        true
    }

    fn restore(&self, model: Model<B>, record: &Path, device: &B::Device) -> Result<Model<B>> {
        let model = engine::load_model_record(model, record, device)?;
        Ok(with_compute(model, &self.config.training))
    }
}

/// `model` computing as `training` says: its precision and convolution
/// kernels (a run setting, not part of the checkpoint).
fn with_compute<B: Backend>(model: Model<B>, training: &TrainingSection) -> Model<B> {
    model.with_compute(models::Compute {
        precision: training.precision,
        conv_kernels: training.conv_kernels,
    })
}

/// Config keys a resume may change: they do not change what is trained.
const RESUMABLE_KEYS: &[&str] = &[
    "training.epochs",
    "training.log_every_steps",
    "training.eval_every_epochs",
    "training.eval_batch_size",
    "training.max_eval_batches",
    "training.checkpoint_every_steps",
    "data.val_tta",
    "training.threads",
    "training.device",
    "training.devices",
    "training.conv_kernels",
    "output.",
];

/// Trains `config` on `device`.
pub fn fit<B: AutodiffBackend>(
    config: &RunConfig,
    device: B::Device,
    options: &FitOptions,
) -> Result<Summary> {
    let dir = options.run_dir(&config.output.dir);
    let nodes = options.nodes();
    if !config.training.batch_size.is_multiple_of(nodes)
        || config.training.batch_size / nodes < config.training.devices
    {
        bail!(
            "training.batch_size = {} must split evenly over {nodes} nodes, at least one image per device each",
            config.training.batch_size
        );
    }
    let how = OpenRunDir {
        resume: options.resume,
        allow_config_change: options.allow_config_change,
        resumable_keys: RESUMABLE_KEYS,
    };
    let run_dir = open_run_dir(&dir, how, &toml::to_string_pretty(config)?)?;

    let (train_data, val_data) = data::open(&config.data)?;
    check_data(config, &train_data, &val_data)?;
    if config.steps_per_epoch(train_data.len()) == 0 {
        bail!(
            "training.batch_size = {} (x training.grad_accum = {}) is larger than the training set ({} images)",
            config.training.batch_size,
            config.training.grad_accum,
            train_data.len()
        );
    }

    let architecture = config.architecture()?;
    B::seed(&device, config.training.seed);
    let mut model: Model<B> = architecture.init(&device)?;
    if let (None, Some(path)) = (&run_dir.resume_from, &config.model.init_weights) {
        load_initial_weights(&mut model, &architecture, path)?;
    }
    let model = with_compute(model, &config.training);
    if config.training.conv_kernels != models::ConvChoice::Direct {
        eprintln!(
            "Conv2d layers use the {} kernels (training.conv_kernels)",
            config.training.conv_kernels
        );
    }
    let frozen = match &config.model.train_only {
        Some(patterns) => Some(crate::freeze::frozen_parameters(&model, patterns)?),
        None => None,
    };
    let topography = match &config.topography {
        Some(t) => Some(Topography::new(&model, t)?),
        None => None,
    };
    check_sheet_layer(config, topography.as_ref())?;
    let o = &config.optimizer;
    // Weight decay is added to the gradients (BatchNorm exempt, see
    // `weight_decay`), so the optimiser itself has none.
    let optimizer = InPlaceSgd::new(o.momentum, o.nesterov).init::<B, Model<B>>();
    let devices =
        parallel::consecutive_devices::<B>(&device, config.training.devices, options.accelerator)?;
    let task = Classification {
        config,
        train: &train_data,
        val: &val_data,
        loss: CrossEntropyLossConfig::new()
            .with_smoothing((o.label_smoothing > 0.0).then_some(o.label_smoothing as f32)),
        device: device.clone(),
    };
    let settings = RunSettings {
        devices,
        pipeline: GradientPipeline {
            topography: topography.as_ref(),
            engine: config
                .topography
                .as_ref()
                .map_or(TopoEngine::Auto, |t| t.engine)
                .resolve(options.accelerator),
            weight_decay: o.weight_decay,
            frozen: frozen.as_ref(),
        },
        seed: config.training.seed,
        log_every_steps: config.training.log_every_steps,
        checkpoint_every_steps: config.training.checkpoint_every_steps,
        keep_checkpoints: config.output.keep_checkpoints,
    };
    let trained = engine::run(&task, model, optimizer, &settings, options, &run_dir)?;

    // The final weights in torchvision layout, for `eval` and analysis tools.
    let final_weights = dir.join("final.safetensors");
    let model = trained.model.valid();
    models::save_checkpoint(&model, &final_weights)?;
    let mut summary = summarise(
        &dir,
        config,
        &trained.state,
        trained.last_checkpoint,
        final_weights,
    )?;
    if let Some(topography) = &topography {
        let layer = config.output.sheet_layer.as_deref();
        match write_sheet_picture(&model, topography, layer, summary.tau, &dir) {
            Ok(picture) => {
                eprintln!(
                    "sheet of {} (smoothness {:.3}): {}",
                    picture.layer,
                    picture.smoothness,
                    picture.png.display()
                );
                summary.sheet = Some(picture);
            }
            // The trained run is complete and saved; only the picture is missing.
            Err(e) => eprintln!("warning: no sheet picture: {e:#}"),
        }
    }
    checkpoint::write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}

fn check_sheet_layer(config: &RunConfig, topography: Option<&Topography>) -> Result<()> {
    let Some(layer) = &config.output.sheet_layer else {
        return Ok(());
    };
    let names = topography.map(|t| t.layer_names()).unwrap_or_default();
    if !names.contains(&layer.as_str()) {
        bail!(
            "output.sheet_layer = {layer:?} is not a topographic layer of this run (they are: {})",
            if names.is_empty() {
                "none, there is no [topography]".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(())
}

/// `model.init_weights`: the weights a new run of `architecture` starts
/// from. A checkpoint with another number of classes loads all but its
/// classification head, which keeps its fresh initialisation (fine-tuning).
fn load_initial_weights<B: Backend>(
    model: &mut Model<B>,
    architecture: &Architecture,
    path: &Path,
) -> Result<()> {
    let shown = path.display().to_string();
    let info = models::inspect_checkpoint(path)
        .with_context(|| format!("model.init_weights = {shown:?}"))?;
    let new_head = models::load_weights_new_head(model, &info).with_context(|| {
        format!(
            "model.init_weights = {shown:?} holds a {}, but [model] builds a {}; point it at weights of that architecture",
            info.architecture.describe(),
            architecture.describe()
        )
    })?;
    if let Some(head) = new_head {
        eprintln!(
            "init_weights: {} has {} classes in {shown}, the config asks for {}: {} re-initialised",
            head.name, head.checkpoint_classes, head.model_classes, head.name
        );
    }
    Ok(())
}

/// Refuses training and validation sets whose labels mean different
/// classes (other names, or the same names in another order).
/// Fails unless the class lists of two data sets, named `a` and `b`, are
/// the same in the same order (so their labels mean the same classes).
pub fn check_class_lists(a: (&str, &[String]), b: (&str, &[String])) -> Result<()> {
    let ((name_a, train), (name_b, val)) = (a, b);
    if train == val {
        return Ok(());
    }
    let missing = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|c| !b.contains(c))
            .take(5)
            .cloned()
            .collect()
    };
    let (only_train, only_val) = (missing(train, val), missing(val, train));
    if only_train.is_empty() && only_val.is_empty() {
        bail!("{name_a} and {name_b} name the same classes in another order, so their labels mean different classes; prepare both from one class list");
    }
    bail!(
        "{name_a} and {name_b} have different classes ({} and {}): only in {name_a} {only_train:?}, only in {name_b} {only_val:?}; prepare both with the same classes",
        train.len(),
        val.len()
    )
}

fn check_data(config: &RunConfig, train: &DataSet, val: &DataSet) -> Result<()> {
    if let (Some(t), Some(v)) = (train.class_names(), val.class_names()) {
        check_class_lists(("data.train", t), ("data.val", v))?;
    }
    for (name, set) in [("data.train", train), ("data.val", val)] {
        if set.channels() != config.model.in_channels {
            bail!(
                "{name}: the data has {} channel(s) but model.in_channels = {}",
                set.channels(),
                config.model.in_channels
            );
        }
        if set.num_classes() > config.model.num_classes {
            bail!(
                "{name}: the data has {} classes but model.num_classes = {}",
                set.num_classes(),
                config.model.num_classes
            );
        }
    }
    Ok(())
}

fn summarise(
    run_dir: &Path,
    config: &RunConfig,
    state: &TrainState,
    last_checkpoint: Option<PathBuf>,
    final_weights: PathBuf,
) -> Result<Summary> {
    let last = state.history.last().context("no epoch finished")?;
    Ok(Summary {
        run_dir: run_dir.to_path_buf(),
        architecture: state.architecture.describe(),
        epochs: config.training.epochs,
        steps: state.step,
        tau: last.tau,
        val_top1: last.val_top1.unwrap_or(f64::NAN),
        val_top5: last.val_top5.unwrap_or(f64::NAN),
        val_loss: last.val_loss.unwrap_or(f64::NAN),
        val_images: last.val_samples,
        val_tta: config.data.val_tta,
        train_loss: last.train_loss,
        train_acc: last.train_acc,
        mean_topo_loss: last.mean_topo_loss,
        topo_layers: last.topo_layers.clone(),
        train_seconds: state.train_seconds,
        images_per_sec: last.images_per_sec,
        final_checkpoint: last_checkpoint.unwrap_or_default(),
        final_weights,
        sheet: None,
    })
}

/// How many rows of `logits` rank their label first, by PyTorch's `topk`
/// rule (ties to the lower index, so tied logits score at chance).
fn count_correct<B: Backend>(logits: Tensor<B, 2>, labels: &[u32]) -> Result<u64> {
    let [_, classes] = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read the logits: {e:?}"))?;
    Ok(values
        .chunks_exact(classes.max(1))
        .zip(labels)
        .filter(|(row, &label)| rank_of_label(row, label as usize) == Some(0))
        .count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_and_val_class_lists_must_agree() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let four = names(&["n01", "n02", "n03", "n04"]);
        let check =
            |a: &[String], b: &[String]| check_class_lists(("data.train", a), ("data.val", b));
        check(&four, &four).unwrap();
        let three = names(&["n01", "n02", "n04"]);
        let error = check(&four, &three).unwrap_err().to_string();
        assert!(error.contains("only in data.train [\"n03\"]"), "{error}");
        let shuffled = names(&["n02", "n01", "n03", "n04"]);
        let error = check(&four, &shuffled).unwrap_err().to_string();
        assert!(error.contains("another order"), "{error}");
    }

    #[test]
    fn training_accuracy_counts_ties_for_the_lower_index_only() {
        let logits = Tensor::<crate::Cpu, 2>::from_floats(
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [f32::NAN, 1.0, 0.0]],
            &Default::default(),
        );
        assert_eq!(count_correct(logits, &[0, 1, 1]).unwrap(), 1);
    }
}
