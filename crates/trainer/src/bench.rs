//! `topotrain bench train`: seconds per training step (forward, backward,
//! gradient pipeline, SGD update) of a network on random data: the step
//! `fit` runs ([`crate::step::train_step`]).

use std::ops::Range;
use std::time::Instant;

use anyhow::Result;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use models::topography::{TopoEngine, Topography, TopographyConfig};
use models::{Architecture, Compute, ConvChoice, Model, Precision};
use serde::Serialize;

use crate::sgd::InPlaceSgd;
use crate::step::{train_step, GradientPipeline, Task, TaskBatch};

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub arch: String,
    pub batch: usize,
    pub res: usize,
    pub threads: usize,
    pub steps: usize,
    /// What convolutions and linear layers computed in.
    pub precision: Precision,
    /// The convolution kernels that ran.
    pub conv_kernels: ConvChoice,
    /// Layers with TopoLoss (0 without topography).
    pub topo_layers: usize,
    /// Wall time of the very first step, kernel compilation and autotuning included.
    pub first_step_s: f64,
    /// Best step time (seconds).
    pub sec_per_step: f64,
    /// Median step time (seconds).
    pub median_sec_per_step: f64,
    pub images_per_sec: f64,
    /// Images per second at the median step time.
    pub img_per_s: f64,
}

/// TopoLoss during a benchmark: which layers, and where the loss runs.
pub struct BenchTopography {
    pub config: TopographyConfig,
    pub engine: TopoEngine,
}

/// What one benchmark times.
pub struct BenchSetup<'a> {
    pub architecture: &'a Architecture,
    pub batch: usize,
    pub res: usize,
    /// Untimed steps first (the first one is reported on its own).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    pub compute: Compute,
    pub topography: Option<&'a BenchTopography>,
}

/// The benchmark's data: one batch of random images on the device, of
/// which a step takes `range` (all of it, on one device).
pub struct RandomImages<B: Backend> {
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    loss: CrossEntropyLoss<B>,
}

/// Samples `range` of [`RandomImages`].
pub struct ImageRange(pub Range<usize>);

impl TaskBatch for ImageRange {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn slice(&self, range: Range<usize>) -> ImageRange {
        ImageRange(self.0.start + range.start..self.0.start + range.end)
    }
}

impl<B: AutodiffBackend> Task<B> for RandomImages<B> {
    type Model = Model<B>;
    type Batch = ImageRange;

    fn loss(
        &self,
        model: &Model<B>,
        batch: &ImageRange,
        device: &B::Device,
    ) -> Result<(Tensor<B, 1>, u64)> {
        let range = batch.0.clone();
        let x = self.images.clone().slice(range.clone()).to_device(device);
        let y = self.labels.clone().slice(range).to_device(device);
        Ok((self.loss.forward(model.forward(x), y), 0))
    }
}

/// Times `steps` training steps (the engine's [`train_step`]) after
/// `warmup` untimed ones.
pub fn time_train_step<B: AutodiffBackend>(
    setup: &BenchSetup,
    device: &B::Device,
) -> Result<TrainBench> {
    let BenchSetup {
        architecture,
        batch,
        res,
        warmup,
        steps,
        compute,
        topography,
    } = *setup;
    B::seed(device, 0);
    let mut model: Model<B> = architecture.init(device)?.with_compute(compute);
    let topo = match topography {
        Some(t) => Some(Topography::new(&model, &t.config)?),
        None => None,
    };
    let pipeline = GradientPipeline {
        topography: topo.as_ref(),
        engine: topography.map_or(TopoEngine::Auto, |t| t.engine),
        weight_decay: 0.0,
        frozen: None,
    };
    let channels = match architecture {
        Architecture::ResNet(c) => c.in_channels,
        Architecture::Vit(c) => c.in_channels,
    };
    model.check_input(&[batch, channels, res, res])?;
    let mut optimizer = InPlaceSgd::new(0.9, false).init::<B, Model<B>>();
    let classes = architecture.num_classes();
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let task = RandomImages {
        images: Tensor::<B, 4>::random(
            [batch, channels, res, res],
            Distribution::Normal(0.0, 1.0),
            device,
        ),
        labels: Tensor::from_data(TensorData::new(labels, [batch]), device),
        loss: CrossEntropyLossConfig::new()
            .with_smoothing(Some(0.1))
            .init(device),
    };
    let devices = [device.clone()];
    let micro_batches = [ImageRange(0..batch)];
    let mut times = Vec::with_capacity(steps);
    let mut first_step_s = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let (next, _) = train_step(
            &task,
            model,
            &mut optimizer,
            &micro_batches,
            &devices,
            None,
            &pipeline,
            i as u64,
            0.01,
            None,
        )?;
        model = next;
        // Waits for the step's queued work on an accelerator.
        B::sync(device)?;
        if i == 0 {
            first_step_s = start.elapsed().as_secs_f64();
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    Ok(TrainBench {
        arch: architecture.describe(),
        batch,
        res,
        threads: rayon::current_num_threads(),
        steps,
        precision: compute.precision,
        conv_kernels: compute.conv_kernels,
        topo_layers: topo.as_ref().map_or(0, |t| t.layers.len()),
        first_step_s,
        sec_per_step: best,
        median_sec_per_step: median,
        images_per_sec: batch as f64 / best,
        img_per_s: batch as f64 / median,
    })
}
