//! One optimiser step, the same for every task: forward and backward over
//! the step's micro-batches (each split over the local devices), then one
//! gradient pipeline in a fixed order: mean over the cluster's nodes,
//! TopoLoss, weight decay, frozen parameters dropped, divergence guard,
//! optimiser.

use std::collections::HashSet;
use std::ops::Range;

use anyhow::Result;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use models::topography::{TopoEngine, TopoReport, Topography};
use models::HasWeightLayers;

use crate::cluster::Cluster;
use crate::freeze::drop_frozen_gradients;
use crate::parallel;
use crate::weight_decay::add_weight_decay;

/// What a task trains on: a batch of samples that can be split between
/// devices (and nodes) in contiguous parts.
pub trait TaskBatch: Send + Sync + Sized {
    /// Samples in the batch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The samples in `range`, in order.
    fn slice(&self, range: Range<usize>) -> Self;
}

/// A loss on one batch: the part of training that differs between tasks.
pub trait Task<B: AutodiffBackend>: Sync {
    type Model: AutodiffModule<B> + HasWeightLayers<B> + Send + Sync;
    type Batch: TaskBatch;

    /// The mean loss of `batch` on `model` (one replica, on `device`) and
    /// the number of correct predictions (0 where the task counts none).
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        device: &B::Device,
    ) -> Result<(Tensor<B, 1>, u64)>;
}

/// The gradient pipeline's settings, fixed for a run.
pub struct GradientPipeline<'a> {
    pub topography: Option<&'a Topography>,
    pub engine: TopoEngine,
    /// L2 penalty added to the gradients, BatchNorm exempt (0 = none; an
    /// optimiser with decoupled decay, such as AdamW, does its own).
    pub weight_decay: f64,
    /// Parameters that get no gradient (`model.train_only`), if any.
    pub frozen: Option<&'a HashSet<ParamId>>,
}

/// What one step measured.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The mean task loss over the step's samples (over every node).
    pub task_loss: f64,
    /// Correct predictions over every node.
    pub correct: u64,
    /// Samples over every node.
    pub samples: u64,
    /// TopoLoss per layer (tau-weighted total in `total`), if the run has a topography.
    pub topo: Option<TopoReport>,
    /// The signal a stop was asked with, on this node or (agreed in the
    /// gradient exchange) on any node of the cluster: every node stops
    /// after the same step.
    pub stop: Option<usize>,
}

impl StepOutput {
    /// The tau-weighted TopoLoss added to the task loss (0 without one).
    pub fn weighted_topo_loss(&self) -> f64 {
        self.topo.as_ref().map_or(0.0, |r| r.total)
    }

    /// The mean over layers of the TopoLoss at tau = 1 (None without a
    /// topography).
    pub fn mean_topo_loss(&self) -> Option<f64> {
        self.topo.as_ref().and_then(TopoReport::mean_loss)
    }
}

/// A step whose loss was not finite: the model was not updated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("training diverged at step {step}: task loss {task_loss}, tau-weighted TopoLoss {weighted_topo_loss}")]
pub struct Diverged {
    /// The step that diverged (1-based, as in the logs).
    pub step: u64,
    pub task_loss: f64,
    pub weighted_topo_loss: f64,
}

/// Runs optimiser step `step` (0-based) of `task` over `micro_batches`,
/// whose gradients are summed as one batch's: each micro-batch's mean loss
/// counts by its share of the samples.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B, T, O>(
    task: &T,
    model: T::Model,
    optimizer: &mut O,
    micro_batches: &[T::Batch],
    devices: &[B::Device],
    cluster: Option<&mut Cluster>,
    pipeline: &GradientPipeline,
    step: u64,
    lr: f64,
    stop: Option<usize>,
) -> Result<(T::Model, StepOutput)>
where
    B: AutodiffBackend,
    T: Task<B>,
    O: Optimizer<T::Model, B>,
{
    let samples: usize = micro_batches.iter().map(TaskBatch::len).sum();
    anyhow::ensure!(samples > 0, "a training step needs at least one sample");
    let loss = |replica: &T::Model, shard: &T::Batch, device: &B::Device| {
        task.loss(replica, shard, device)
    };
    let mut grads = None;
    let mut accumulator = GradientsAccumulator::<T::Model>::new();
    let (mut task_loss, mut correct) = (0.0, 0u64);
    for micro in micro_batches {
        let share = micro.len() as f64 / samples as f64;
        let (micro_grads, totals) =
            parallel::data_parallel_gradients(&model, devices, micro, share, loss)?;
        task_loss += totals.loss * share;
        correct += totals.correct;
        if micro_batches.len() == 1 {
            grads = Some(micro_grads);
        } else {
            accumulator.accumulate(&model, micro_grads);
        }
    }
    let mut grads: GradientsParams = grads.unwrap_or_else(|| accumulator.grads());
    let mut samples = samples as u64;
    let mut stop = stop;
    if let Some(cluster) = cluster {
        let nodes = cluster.nodes() as f32;
        let signal = stop.unwrap_or(0) as f32;
        let mut extra = [
            task_loss as f32,
            correct as f32,
            stop.is_some() as u8 as f32,
            signal,
        ];
        cluster.average_gradients(&model, &mut grads, &mut extra)?;
        task_loss = extra[0] as f64;
        correct = (extra[1] * nodes).round() as u64;
        samples *= cluster.nodes() as u64;
        // Stopping nodes and the sum of their signals, from the means.
        let (stopping, signals) = ((extra[2] * nodes).round(), (extra[3] * nodes).round());
        stop = (stopping > 0.0).then(|| (signals / stopping).round() as usize);
    }
    let topo = match pipeline.topography {
        Some(t) => Some(t.add_to_gradients(&model, step, pipeline.engine, &mut grads)?),
        None => None,
    };
    if pipeline.weight_decay > 0.0 {
        add_weight_decay(&model, pipeline.weight_decay, &mut grads);
    }
    if let Some(frozen) = pipeline.frozen {
        drop_frozen_gradients(&model, frozen, &mut grads);
    }
    let output = StepOutput {
        task_loss,
        correct,
        samples,
        topo,
        stop,
    };
    if !output.task_loss.is_finite() || !output.weighted_topo_loss().is_finite() {
        return Err(Diverged {
            step: step + 1,
            task_loss: output.task_loss,
            weighted_topo_loss: output.weighted_topo_loss(),
        }
        .into());
    }
    let model = optimizer.step(lr, model, grads);
    Ok((model, output))
}
