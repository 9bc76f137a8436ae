//! Top-1/top-5 evaluation, and loading any checkpoint for it: a run's
//! checkpoint directory (or the run directory), our safetensors, or a
//! PyTorch `.pt` (through the models crate).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use models::Model;
use serde::{Deserialize, Serialize};

use crate::data::to_tensors;
use crate::data::{DataSet, Split};

/// Accuracy and mean cross-entropy (no smoothing) over a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub images: usize,
}

/// Evaluates `model` (an inference-mode model: BatchNorm uses its running
/// statistics) on `data` at `resolution`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    data: &DataSet,
    resolution: usize,
    batch_size: usize,
    mean: &[f32],
    std: &[f32],
    max_batches: Option<usize>,
    device: &B::Device,
) -> Result<EvalResult> {
    let (mut images, mut top1, mut top5, mut loss_sum) = (0usize, 0usize, 0usize, 0.0f64);
    let batches = data.batches(Split::Val { resolution }, 0, batch_size)?;
    for (index, batch) in batches.enumerate() {
        if max_batches.is_some_and(|m| index >= m) {
            break;
        }
        let batch = batch?;
        let (x, _) = to_tensors::<B>(&batch, mean, std, device);
        let logits = model.forward(x);
        let [n, classes] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))?;
        for (row, &label) in values.chunks_exact(classes).zip(&batch.labels) {
            let label = label as usize;
            if label >= classes {
                bail!("label {label} is out of range for a model with {classes} classes");
            }
            let target = row[label];
            let above = row.iter().filter(|&&v| v > target).count();
            top1 += (above == 0) as usize;
            top5 += (above < 5) as usize;
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            loss_sum += log_sum - target as f64;
        }
        images += n;
    }
    if images == 0 {
        bail!("the validation set is empty");
    }
    Ok(EvalResult {
        top1: top1 as f64 / images as f64,
        top5: top5 as f64 / images as f64,
        loss: loss_sum / images as f64,
        images,
    })
}

/// Loads a model for evaluation from a run directory, one of its checkpoint
/// directories, a safetensors file or a PyTorch checkpoint.
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<Model<B>> {
    let checkpoint_dir: Option<PathBuf> =
        if path.join("state.json").exists() {
            Some(path.to_path_buf())
        } else if path.is_dir() {
            Some(crate::checkpoint::latest(path)?.with_context(|| {
                format!("{} is a directory without checkpoints", path.display())
            })?)
        } else {
            None
        };
    match checkpoint_dir {
        Some(dir) => {
            let state: crate::checkpoint::TrainState = crate::checkpoint::read_state(&dir)?;
            let model: Model<B> = state.architecture.init(device).with_context(|| {
                format!(
                    "{}: cannot build its model",
                    dir.join("state.json").display()
                )
            })?;
            let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
            model
                .load_file(dir.join("model"), &recorder, device)
                .map_err(|e| crate::checkpoint::unreadable_record(&dir.join("model.mpk"), e))
        }
        None => Ok(models::load_checkpoint(path, device)?),
    }
}
