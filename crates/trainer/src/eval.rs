//! Top-1/top-5 evaluation, and loading any checkpoint: a run directory or
//! one of its checkpoints, our safetensors, or a PyTorch `.pt` (through the
//! models crate).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use models::{Architecture, Gpt, Model};
use serde::{Deserialize, Serialize};

use crate::data::to_tensors;
use crate::data::{DataSet, Split};
use crate::language::LanguageModelSpec;

/// Accuracy and mean cross-entropy (no smoothing) over a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub images: usize,
}

/// Test-time augmentation of evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The image alone.
    #[default]
    None,
    /// The mean of the logits of the image and of its left-right mirror:
    /// ffcv-imagenet's `lr_tta` (train_imagenet.py:403-404 sums them, which
    /// ranks the classes the same).
    Flip,
}

impl Tta {
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flip => "flip",
        }
    }
}

impl std::fmt::Display for Tta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tta {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "none" => Ok(Tta::None),
            "flip" => Ok(Tta::Flip),
            other => Err(format!(
                "{other:?} is not a test-time augmentation; use \"flip\" (the image and its mirror) or \"none\""
            )),
        }
    }
}

/// The logits of `x` (NCHW) under `tta`.
pub fn tta_logits<B: Backend>(model: &Model<B>, x: Tensor<B, 4>, tta: Tta) -> Tensor<B, 2> {
    match tta {
        Tta::None => model.forward(x),
        Tta::Flip => {
            let mirrored = x.clone().flip([3]);
            (model.forward(x) + model.forward(mirrored)).div_scalar(2.0)
        }
    }
}

/// How to evaluate: the validation input and its batching.
#[derive(Debug, Clone, Copy)]
pub struct EvalSettings<'a> {
    pub resolution: usize,
    pub batch_size: usize,
    /// Per-channel normalisation, 0-255 units.
    pub mean: &'a [f32],
    pub std: &'a [f32],
    /// Evaluate only this many batches.
    pub max_batches: Option<usize>,
    pub tta: Tta,
}

/// Evaluates `model` (an inference-mode model: BatchNorm uses its running
/// statistics) on `data`.
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    data: &DataSet,
    settings: &EvalSettings,
    device: &B::Device,
) -> Result<EvalResult> {
    let (mut images, mut top1, mut top5, mut loss_sum) = (0usize, 0usize, 0usize, 0.0f64);
    let split = Split::Val {
        resolution: settings.resolution,
    };
    let batches = data.batches(split, 0, settings.batch_size)?;
    let count = data.len().div_ceil(settings.batch_size.max(1));
    let bar = crate::progress::bar(
        settings.max_batches.map_or(count, |m| m.min(count)) as u64,
        "validation",
    );
    for (index, batch) in batches.enumerate() {
        if settings.max_batches.is_some_and(|m| index >= m) {
            break;
        }
        bar.inc(1);
        let batch = batch?;
        let (x, _) = to_tensors::<B>(&batch, settings.mean, settings.std, device);
        let logits = tta_logits(model, x, settings.tta);
        let [n, classes] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))?;
        let not_finite = values.iter().filter(|v| !v.is_finite()).count();
        if not_finite > 0 {
            bail!(
                "{not_finite} of the {} logits of evaluation batch {index} (from 0; {n} images x {classes} \
                 classes) are NaN or infinite, so no accuracy can be given; the model's weights \
                 are probably not finite (a diverged run, or a broken checkpoint): evaluate an \
                 earlier checkpoint, or retrain with a lower learning rate",
                values.len()
            );
        }
        for (row, &label) in values.chunks_exact(classes).zip(&batch.labels) {
            let label = label as usize;
            let rank = rank_of_label(row, label).with_context(|| {
                format!("label {label} is out of range for a model with {classes} classes")
            })?;
            top1 += (rank < 1) as usize;
            top5 += (rank < 5) as usize;
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            loss_sum += log_sum - row[label] as f64;
        }
        images += n;
    }
    bar.finish_and_clear();
    if images == 0 {
        bail!("the validation set is empty");
    }
    if !loss_sum.is_finite() {
        bail!(
            "the evaluation loss summed over {images} images is {loss_sum} (not finite) although \
             every logit is finite: the logits are too large to score; the model has probably \
             diverged, evaluate an earlier checkpoint"
        );
    }
    Ok(EvalResult {
        top1: top1 as f64 / images as f64,
        top5: top5 as f64 / images as f64,
        loss: loss_sum / images as f64,
        images,
    })
}

/// Zero-based rank of class `label` in one row of logits, in the order of
/// PyTorch's `topk`: higher logits first, ties broken by the lower class
/// index, NaN above every number. Top-k counts the label when the rank is
/// below k, so tied logits score at chance, not 100%. `None` when `label`
/// is not a column of `row`.
pub fn rank_of_label(row: &[f32], label: usize) -> Option<usize> {
    let target = *row.get(label)?;
    // `a` comes before the target in topk's order when this is true.
    let ahead = |(index, &a): (usize, &f32)| {
        if target.is_nan() {
            a.is_nan() && index < label
        } else {
            a.is_nan() || a > target || (a == target && index < label)
        }
    };
    Some(row.iter().enumerate().filter(|&entry| ahead(entry)).count())
}

/// A network read from any checkpoint topotrain takes.
pub enum Network<B: Backend> {
    /// A ResNet or a ViT.
    Vision(Box<Model<B>>),
    /// A GPT, LoRA adapters merged into its weights.
    Language(Box<Gpt<B>>),
}

/// What a run checkpoint's `state.json` says its network is.
#[derive(Deserialize)]
#[serde(untagged)]
enum NetworkSpec {
    Vision(Architecture),
    Language(LanguageModelSpec),
}

/// Loads a ResNet or ViT for evaluation from a run directory, one of its
/// checkpoints, a safetensors file or a PyTorch checkpoint.
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<Model<B>> {
    match load_network(path, device)? {
        Network::Vision(model) => Ok(*model),
        Network::Language(gpt) => bail!(
            "{} holds a language model, {}; this command takes a ResNet or a ViT",
            path.display(),
            gpt.config().describe()
        ),
    }
}

/// Loads the network of any checkpoint: a run directory (its latest
/// checkpoint), a run checkpoint (its folder or its `model.mpk`), our
/// safetensors files, or a PyTorch `.pt`/`.pth` (torchvision or NanoGPT).
pub fn load_network<B: Backend>(path: &Path, device: &B::Device) -> Result<Network<B>> {
    if let Some(dir) = run_checkpoint(path)? {
        return load_run_checkpoint(&dir, device);
    }
    match models::load_checkpoint(path, device) {
        Ok(model) => Ok(Network::Vision(Box::new(model))),
        Err(not_vision @ models::ModelError::UnknownArchitecture { .. }) => {
            if models::inspect_gpt_checkpoint(path).is_err() {
                return Err(not_vision.into());
            }
            Ok(Network::Language(Box::new(models::load_gpt(path, device)?)))
        }
        Err(other) => Err(other.into()),
    }
}

/// The run checkpoint folder `path` names: itself, the latest of a run
/// directory, or the folder of one of its files; `None` for other files.
fn run_checkpoint(path: &Path) -> Result<Option<PathBuf>> {
    // One of a checkpoint's own files stands for its checkpoint.
    if let (Some("model.mpk" | "optim.mpk" | "state.json"), Some(dir)) =
        (path.file_name().and_then(|n| n.to_str()), path.parent())
    {
        if dir.join("state.json").is_file() {
            return Ok(Some(dir.to_path_buf()));
        }
    }
    if path.join("state.json").exists() {
        return Ok(Some(path.to_path_buf()));
    }
    if path.is_dir() {
        let latest = crate::checkpoint::latest(path)?
            .with_context(|| format!("{} is a directory without checkpoints", path.display()))?;
        return Ok(Some(latest));
    }
    Ok(None)
}

fn load_run_checkpoint<B: Backend>(dir: &Path, device: &B::Device) -> Result<Network<B>> {
    crate::checkpoint::verify(dir)?;
    let state: crate::checkpoint::TrainState<NetworkSpec> = crate::checkpoint::read_state(dir)?;
    let cannot_build = || {
        format!(
            "{}: cannot build its model",
            dir.join("state.json").display()
        )
    };
    let record = dir.join("model");
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let unreadable = |e| crate::checkpoint::unreadable_record(&dir.join("model.mpk"), e);
    match state.architecture {
        NetworkSpec::Vision(architecture) => {
            let model: Model<B> = architecture.init(device).with_context(cannot_build)?;
            let model = model
                .load_file(record, &recorder, device)
                .map_err(unreadable)?;
            Ok(Network::Vision(Box::new(model)))
        }
        NetworkSpec::Language(spec) => {
            let mut gpt: Gpt<B> = spec.gpt.init(device).with_context(cannot_build)?;
            if let Some(lora) = &spec.lora {
                gpt = gpt.with_lora(lora, device).with_context(cannot_build)?;
            }
            let gpt = gpt
                .load_file(record, &recorder, device)
                .map_err(unreadable)?;
            Ok(Network::Language(Box::new(gpt.merge_lora())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::InMemory;
    use crate::{Cpu, RunConfig};
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::Tensor;
    use std::sync::Arc;

    /// Sets every parameter to one value.
    struct Fill(f32);

    impl ModuleMapper<Cpu> for Fill {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<Cpu, D>>,
        ) -> Param<Tensor<Cpu, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.full_like(self.0), mapper)
        }
    }

    /// The small config's ResNet (10 classes, 28 px, one channel) with every
    /// parameter `value`, on 20 images labelled 0-9 twice.
    fn evaluate_filled(value: f32) -> Result<EvalResult> {
        let config = RunConfig::parse(crate::config::tests::SMALL).unwrap();
        let device = Default::default();
        let model: Model<Cpu> = config.architecture().unwrap().init(&device).unwrap();
        let model = model.map(&mut Fill(value));
        let images = (0..20 * 28 * 28).map(|i| (i * 7 % 251) as u8).collect();
        let labels = (0..20).map(|i| i % 10).collect();
        let data = DataSet::InMemory(Arc::new(InMemory::from_parts(
            images, labels, 28, 10, false,
        )));
        evaluate(&model, &data, &small_settings(Tta::None), &device)
    }

    fn small_settings(tta: Tta) -> EvalSettings<'static> {
        EvalSettings {
            resolution: 28,
            batch_size: 8,
            mean: &[73.0],
            std: &[90.0],
            max_batches: None,
            tta,
        }
    }

    #[test]
    fn flip_tta_is_the_mean_of_the_image_and_its_mirror() {
        let config = RunConfig::parse(crate::config::tests::SMALL).unwrap();
        let device = Default::default();
        let model: Model<Cpu> = config.architecture().unwrap().init(&device).unwrap();
        // Four one-channel 28 px images, no two columns alike.
        let values: Vec<f32> = (0..4 * 28 * 28)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let x = Tensor::<Cpu, 1>::from_floats(values.as_slice(), &device).reshape([4, 1, 28, 28]);
        // The mirror built by hand: column c of each row is column 27 - c.
        let mirrored: Vec<f32> = values
            .chunks_exact(28)
            .flat_map(|row| row.iter().rev().copied())
            .collect();
        let mirrored =
            Tensor::<Cpu, 1>::from_floats(mirrored.as_slice(), &device).reshape([4, 1, 28, 28]);
        let plain = model.forward(x.clone());
        let expected = (plain.clone() + model.forward(mirrored)) / 2.0;
        let flip = tta_logits(&model, x.clone(), Tta::Flip);
        let none = tta_logits(&model, x, Tta::None);
        let gap = |a: Tensor<Cpu, 2>, b: Tensor<Cpu, 2>| (a - b).abs().max().into_scalar();
        assert!(gap(flip.clone(), expected) < 1e-5);
        assert_eq!(gap(none, plain.clone()), 0.0);
        // The augmentation changes the logits of these asymmetric images.
        assert!(gap(flip, plain) > 1e-4);
    }

    #[test]
    fn tta_names_parse_and_a_typo_is_named() {
        assert_eq!("flip".parse::<Tta>(), Ok(Tta::Flip));
        assert_eq!("none".parse::<Tta>(), Ok(Tta::None));
        assert_eq!(Tta::Flip.to_string(), "flip");
        let error = "flips".parse::<Tta>().unwrap_err();
        assert!(
            error.contains("\"flips\"") && error.contains("\"flip\""),
            "{error}"
        );
    }

    #[test]
    fn tied_logits_score_at_chance() {
        // Zero weights: every logit is 0, so only label 0 is top-1 and
        // labels 0-4 are top-5.
        let result = evaluate_filled(0.0).unwrap();
        assert_eq!((result.top1, result.top5), (0.1, 0.5), "{result:?}");
        assert!((result.loss - 10f64.ln()).abs() < 1e-6, "{result:?}");
    }

    #[test]
    fn non_finite_logits_are_an_error_not_a_score() {
        let error = format!("{:#}", evaluate_filled(f32::NAN).unwrap_err());
        assert!(
            error.contains("80 of the 80 logits") && error.contains("NaN or infinite"),
            "{error}"
        );
    }

    #[test]
    fn rank_follows_topk_with_ties_to_the_lower_index() {
        let row = [0.5, 2.0, -1.0, 2.0, 0.0];
        assert_eq!(rank_of_label(&row, 1), Some(0));
        assert_eq!(rank_of_label(&row, 3), Some(1));
        assert_eq!(rank_of_label(&row, 0), Some(2));
        assert_eq!(rank_of_label(&row, 4), Some(3));
        assert_eq!(rank_of_label(&row, 2), Some(4));
        assert_eq!(rank_of_label(&row, 5), None);
        // A zeroed classifier: every logit tied, only class 0 is top-1.
        let tied = [0.0f32; 10];
        let ranks: Vec<_> = (0..10).map(|l| rank_of_label(&tied, l).unwrap()).collect();
        assert_eq!(ranks, (0..10).collect::<Vec<_>>());
        // NaN sorts above every number, as in torch.topk.
        let nan = [1.0, f32::NAN, 3.0, f32::NAN];
        assert_eq!(rank_of_label(&nan, 1), Some(0));
        assert_eq!(rank_of_label(&nan, 3), Some(1));
        assert_eq!(rank_of_label(&nan, 2), Some(2));
        assert_eq!(rank_of_label(&nan, 0), Some(3));
    }
}
