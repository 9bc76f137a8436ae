//! `topotrain bench train`: seconds per training step (forward, backward,
//! SGD update) of a network on random data.

use std::time::Instant;

use anyhow::Result;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use models::topography::{TopoEngine, Topography, TopographyConfig};
use models::{Architecture, Model, Precision};
use serde::Serialize;

use crate::sgd::InPlaceSgd;

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub arch: String,
    pub batch: usize,
    pub res: usize,
    pub threads: usize,
    pub steps: usize,
    /// What convolutions and linear layers computed in.
    pub precision: Precision,
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
    pub precision: Precision,
    pub topography: Option<&'a BenchTopography>,
}

/// Times `steps` training steps after `warmup` untimed ones.
pub fn train_step<B: AutodiffBackend>(
    setup: &BenchSetup,
    device: &B::Device,
) -> Result<TrainBench> {
    let BenchSetup {
        architecture,
        batch,
        res,
        warmup,
        steps,
        precision,
        topography,
    } = *setup;
    B::seed(device, 0);
    let mut model: Model<B> = architecture.init(device)?.with_precision(precision);
    let topo = match topography {
        Some(t) => Some((Topography::new(&model, &t.config)?, t.engine)),
        None => None,
    };
    let channels = match architecture {
        Architecture::ResNet(c) => c.in_channels,
        Architecture::Vit(c) => c.in_channels,
    };
    model.check_input(&[batch, channels, res, res])?;
    let mut optimizer = InPlaceSgd::new(0.9, false).init::<B, Model<B>>();
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.1))
        .init(device);
    let classes = architecture.num_classes();
    let x = Tensor::<B, 4>::random(
        [batch, channels, res, res],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), device);
    let mut times = Vec::with_capacity(steps);
    let mut first_step_s = 0.0;
    for i in 0..warmup + steps {
        let start = Instant::now();
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some((topography, engine)) = &topo {
            topography.add_to_gradients(&model, i as u64, *engine, &mut grads)?;
        }
        model = optimizer.step(0.01, model, grads);
        // Reading the loss back waits for the step to finish on an accelerator.
        let _: f32 = loss.into_scalar().elem();
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
        precision,
        topo_layers: topo.as_ref().map_or(0, |(t, _)| t.layers.len()),
        first_step_s,
        sec_per_step: best,
        median_sec_per_step: median,
        images_per_sec: batch as f64 / best,
        img_per_s: batch as f64 / median,
    })
}
