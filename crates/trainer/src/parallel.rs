//! Data parallelism over the devices of one node.
//!
//! A step splits the batch into one contiguous shard per device. Each replica
//! runs forward and backward on its shard in its own thread; the shards'
//! gradients are moved to the first device and summed there, where the
//! optimiser updates the one master copy of the model (Burn's
//! `GradientsParams::to_device` and `GradientsAccumulator`). Each shard's
//! mean loss is weighted by its share of the batch, so the sum is the
//! gradient of the whole batch's mean loss, as on one device. BatchNorm sees
//! per-shard statistics (PyTorch's DDP without SyncBatchNorm does the same);
//! its running statistics move by the mean of the shards' updates.
//!
//! Sharding the data between processes (one per node) is the data's job
//! ([`crate::data::NodeShard`], see [`crate::cluster`]); [`shard_range`]
//! splits one process's batch between its devices. Any [`TaskBatch`] can be
//! split: images for classification, token windows for language models.

use std::ops::Range;

use anyhow::{anyhow, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend, Device as _, DeviceId};
use burn::tensor::{ElementConversion, Tensor};

use crate::step::TaskBatch;

/// The contiguous part `index` of `len` items split into `parts` nearly
/// equal parts (sizes differ by at most one; earlier parts are the larger).
pub fn shard_range(len: usize, parts: usize, index: usize) -> Range<usize> {
    let parts = parts.max(1);
    let (base, extra) = (len / parts, len % parts);
    let start = index * base + index.min(extra);
    let size = base + usize::from(index < extra);
    start.min(len)..(start + size).min(len)
}

/// `count` devices of `first`'s kind with consecutive indices from
/// `first`'s (cuda:2 and 3 give cuda:2, cuda:3, cuda:4).
///
/// `check_count` refuses devices the machine does not have (for GPUs). The
/// CPU backend has a single device, so CPU replicas (used to test data
/// parallelism) share it and are not checked.
pub fn consecutive_devices<B: Backend>(
    first: &B::Device,
    count: usize,
    check_count: bool,
) -> Result<Vec<B::Device>> {
    if count == 0 {
        return Err(anyhow!("training.devices must be at least 1"));
    }
    let id = first.to_id();
    let present = B::device_count(id.type_id);
    let wanted = id.index_id as usize + count;
    if check_count && wanted > present {
        return Err(anyhow!(
            "training.devices = {count} from device {} needs devices up to index {}, but this machine has {present} of that kind; lower training.devices (or --devices) or start from a lower device index",
            id.index_id,
            wanted - 1
        ));
    }
    let last = u16::try_from(wanted - 1)
        .map_err(|_| anyhow!("training.devices = {count} is more devices than can be indexed"))?;
    Ok((id.index_id..=last)
        .map(|index| B::Device::from_id(DeviceId::new(id.type_id, index)))
        .collect())
}

/// Initialises every lazily initialised parameter of `model` in place.
///
/// Burn gives each clone of a not-yet-initialised parameter its own lazy
/// initialiser, so replicas cloned from a fresh model would each draw
/// different random weights; reading every value first makes clones copies.
pub fn materialize_parameters<B: Backend, M: Module<B>>(model: &M) {
    struct ReadAll;
    impl<B: Backend> ModuleVisitor<B> for ReadAll {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut ReadAll);
}

/// What one data-parallel step measured, summed over the shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTotals {
    /// The batch's mean task loss.
    pub loss: f64,
    /// Correct top-1 predictions in the batch.
    pub correct: u64,
}

/// Forward and backward of `batch` split over `devices`; returns the
/// gradients of `scale` times the batch's mean loss, on `devices[0]`, and
/// the batch's (unscaled) mean loss.
///
/// `shard_loss` runs one replica on one shard on its device and returns the
/// shard's mean loss (a one-element tensor) and its correct predictions.
/// `model` must live on `devices[0]`.
pub fn data_parallel_gradients<B, M, T, F>(
    model: &M,
    devices: &[B::Device],
    batch: &T,
    scale: f64,
    shard_loss: F,
) -> Result<(GradientsParams, StepTotals)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send + Sync,
    T: TaskBatch,
    F: Fn(&M, &T, &B::Device) -> Result<(Tensor<B, 1>, u64)> + Sync,
{
    let Some(main_device) = devices.first() else {
        return Err(anyhow!("data parallelism needs at least one device"));
    };
    if batch.len() < devices.len() {
        return Err(anyhow!(
            "a batch of {} samples cannot be split over {} devices; use a batch size of at least the device count",
            batch.len(),
            devices.len()
        ));
    }
    materialize_parameters(model);
    let run_shard = |index: usize, device: &B::Device| -> Result<(GradientsParams, f64, u64)> {
        // One device takes the batch as it is (no copy).
        let sliced;
        let shard = if devices.len() == 1 {
            batch
        } else {
            sliced = batch.slice(shard_range(batch.len(), devices.len(), index));
            &sliced
        };
        // The first shard runs on the model itself; the others on copies
        // moved to their devices.
        let forked;
        let replica = if index == 0 {
            model
        } else {
            forked = model.clone().fork(device);
            &forked
        };
        let (loss, correct) = shard_loss(replica, shard, device)?;
        let share = shard.len() as f64 / batch.len() as f64;
        let loss_value: f64 = loss.clone().into_scalar().elem();
        let weighted = if devices.len() == 1 && scale == 1.0 {
            loss
        } else {
            loss * (share * scale)
        };
        let grads = GradientsParams::from_grads(weighted.backward(), replica);
        let grads = if index == 0 {
            grads
        } else {
            grads.to_device(main_device, replica)
        };
        Ok((grads, loss_value * share, correct))
    };
    let results: Vec<Result<(GradientsParams, f64, u64)>> = if devices.len() == 1 {
        vec![run_shard(0, main_device)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(index, device)| {
                    let run_shard = &run_shard;
                    scope.spawn(move || run_shard(index, device))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("a data-parallel replica thread panicked")))
                })
                .collect()
        })
    };
    if devices.len() > 1 {
        // Burn's running statistics (BatchNorm) collect one update per
        // thread and average them when read from a thread that updated
        // before, or by `valid()`. The replica threads are new every step,
        // so nothing would average them until the next evaluation, and each
        // step's updates would start from stale values; averaging here makes
        // each step's update the mean of the shards' (exactly repeatable for
        // two devices: the sum of two does not depend on its order).
        let _ = model.valid();
    }
    let mut accumulator = GradientsAccumulator::<M>::new();
    let mut totals = StepTotals {
        loss: 0.0,
        correct: 0,
    };
    for result in results {
        let (grads, loss, correct) = result?;
        accumulator.accumulate(model, grads);
        totals.loss += loss;
        totals.correct += correct;
    }
    Ok((accumulator.grads(), totals))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Batch;
    use crate::CpuTrain;
    use burn::nn::loss::CrossEntropyLossConfig;
    use models::{Architecture, Model};

    #[test]
    fn shards_cover_the_batch_in_order() {
        for (len, parts) in [(10, 3), (8, 2), (3, 3), (7, 1), (5, 4)] {
            let ranges: Vec<_> = (0..parts).map(|i| shard_range(len, parts, i)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, len);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() >= pair[1].len());
                assert!(pair[0].len() - pair[1].len() <= 1);
            }
        }
    }

    fn tiny_resnet() -> Architecture {
        Architecture::ResNet(
            models::ResNetConfig::new([1, 1, 1, 1], false)
                .with_num_classes(3)
                .with_in_channels(1)
                .with_width(4)
                .with_small_stem(true),
        )
    }

    fn shard_loss(
        model: &Model<CpuTrain>,
        shard: &Batch,
        device: &burn::tensor::Device<CpuTrain>,
    ) -> Result<(Tensor<CpuTrain, 1>, u64)> {
        let (x, y) = crate::data::to_tensors::<CpuTrain>(shard, &[0.0], &[255.0], device);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(model.forward(x), y);
        Ok((loss, 0))
    }

    /// Every parameter's gradient as host values, in visiting order.
    struct Collect<'a>(&'a GradientsParams, Vec<Vec<f32>>);
    impl ModuleVisitor<CpuTrain> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuTrain, D>>) {
            let grad = self
                .0
                .get::<<CpuTrain as AutodiffBackend>::InnerBackend, D>(param.id)
                .map(|g| g.into_data().convert::<f32>().into_vec::<f32>().unwrap())
                .unwrap_or_default();
            self.1.push(grad);
        }
    }

    /// Six 8x8 images: three, twice over, so each of two replicas'
    /// BatchNorm sees the whole batch's statistics.
    fn doubled_batch() -> Batch {
        let half: Vec<u8> = (0..3 * 64).map(|i| (i * 37 % 251) as u8).collect();
        Batch {
            images: [half.clone(), half].concat(),
            labels: vec![0, 1, 2, 0, 1, 2],
            channels: 1,
            height: 8,
            width: 8,
        }
    }

    #[test]
    fn two_replicas_give_the_single_device_gradient() {
        let device = Default::default();
        let model: Model<CpuTrain> = tiny_resnet().init(&device).unwrap();
        // Each replica's BatchNorm sees the whole batch's statistics, so the
        // gradients must agree.
        let batch = doubled_batch();
        let collect = |grads: &GradientsParams| {
            let mut visitor = Collect(grads, vec![]);
            model.visit(&mut visitor);
            visitor.1
        };
        let (single, single_totals) =
            data_parallel_gradients(&model, &[device], &batch, 1.0, shard_loss).unwrap();
        let (split, split_totals) =
            data_parallel_gradients(&model, &[device, device], &batch, 1.0, shard_loss).unwrap();
        assert!(
            (single_totals.loss - split_totals.loss).abs() < 1e-5,
            "{single_totals:?} vs {split_totals:?}"
        );
        let (single, split) = (collect(&single), collect(&split));
        assert_eq!(single.len(), split.len());
        let mut compared = 0;
        for (a, b) in single.iter().zip(&split) {
            assert_eq!(a.len(), b.len());
            // Against the parameter's largest gradient: BatchNorm's backward
            // subtracts means, so small entries carry the rounding of sums
            // over 3 vs 6 images at a larger relative size (up to about
            // 2e-4 of the scale was seen over repeated runs). A wrong shard
            // or share would be off by a large fraction of the scale.
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-6 + 1e-3 * scale,
                    "{x} vs {y} (scale {scale})"
                );
                compared += 1;
            }
        }
        let nonzero = single.iter().flatten().filter(|g| g.abs() > 1e-6).count();
        assert!(
            nonzero > 500,
            "only {nonzero} of {compared} gradients are non-zero"
        );
        // (A lost replica would leave half of each gradient: far outside the tolerance.)
    }

    /// Every float a module holds (parameters and running statistics).
    fn all_values(model: &Model<CpuTrain>) -> Vec<f32> {
        struct Values(Vec<f32>);
        impl ModuleVisitor<<CpuTrain as AutodiffBackend>::InnerBackend> for Values {
            fn visit_float<const D: usize>(
                &mut self,
                param: &Param<Tensor<<CpuTrain as AutodiffBackend>::InnerBackend, D>>,
            ) {
                let values = param.val().into_data().convert::<f32>();
                self.0.extend(values.into_vec::<f32>().unwrap());
            }
        }
        let mut visitor = Values(vec![]);
        model.valid().visit(&mut visitor);
        visitor.0
    }

    #[test]
    fn running_statistics_follow_every_step_of_the_replicas() {
        let device = Default::default();
        let single: Model<CpuTrain> = tiny_resnet().init(&device).unwrap();
        materialize_parameters(&single);
        // Same weights, running statistics of its own.
        let split: Model<CpuTrain> = tiny_resnet()
            .init(&device)
            .unwrap()
            .load_record(single.clone().into_record());
        let before = all_values(&single);
        assert_eq!(before, all_values(&split));
        let batch = doubled_batch();
        // Several steps: each must start from the previous one's statistics.
        for _ in 0..3 {
            data_parallel_gradients(&single, &[device], &batch, 1.0, shard_loss).unwrap();
            data_parallel_gradients(&split, &[device, device], &batch, 1.0, shard_loss).unwrap();
        }
        let (single, split) = (all_values(&single), all_values(&split));
        let moved = single.iter().zip(&before).filter(|(a, b)| a != b).count();
        assert!(moved > 20, "only {moved} running statistics moved");
        for (a, b) in single.iter().zip(&split) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn too_small_a_batch_is_an_error() {
        let device = Default::default();
        let model: Model<CpuTrain> = tiny_resnet().init(&device).unwrap();
        let batch = Batch {
            images: vec![0; 64],
            labels: vec![0],
            channels: 1,
            height: 8,
            width: 8,
        };
        let error = data_parallel_gradients(&model, &[device, device], &batch, 1.0, shard_loss)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("cannot be split over 2 devices"),
            "{error}"
        );
    }
}
