//! A model's gradients as a few large flat `f32` buffers (buckets), as
//! PyTorch DDP all-reduces them: one collective call per bucket instead of
//! one per tensor.
//!
//! Gradients go into buckets in the model's parameter (visiting) order,
//! which every rank shares, so bucket `i` holds the same parameters on every
//! rank. A bucket holds at most `max_bytes` unless one gradient alone is
//! larger; that gradient gets a bucket of its own.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

/// PyTorch DDP's default bucket size (`bucket_cap_mb=25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

type Device<B> = burn::tensor::Device<<B as AutodiffBackend>::InnerBackend>;

/// Where one parameter's gradient lies in the buckets.
struct Slot<B: AutodiffBackend> {
    id: ParamId,
    dims: Vec<usize>,
    device: Device<B>,
    bucket: usize,
    offset: usize,
}

/// The gradients taken out of a [`GradientsParams`], flattened.
pub struct GradientBuckets<B: AutodiffBackend> {
    slots: Vec<Slot<B>>,
    buckets: Vec<Vec<f32>>,
}

impl<B: AutodiffBackend> GradientBuckets<B> {
    /// Moves the gradients of `model`'s parameters out of `grads` into
    /// buckets of at most `max_bytes` each (parameters without a gradient
    /// are skipped).
    pub fn take<M: Module<B>>(model: &M, grads: &mut GradientsParams, max_bytes: usize) -> Self {
        struct Take<'a, B: AutodiffBackend> {
            grads: &'a mut GradientsParams,
            max_values: usize,
            into: GradientBuckets<B>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
                    return;
                };
                let (dims, device) = (grad.dims().to_vec(), grad.device());
                let values = grad
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap_or_default();
                let buckets = &mut self.into.buckets;
                let fits = buckets
                    .last()
                    .is_some_and(|last| last.len() + values.len() <= self.max_values);
                if !fits {
                    buckets.push(Vec::new());
                }
                let bucket = buckets.len() - 1;
                self.into.slots.push(Slot {
                    id: param.id,
                    dims,
                    device,
                    bucket,
                    offset: buckets[bucket].len(),
                });
                buckets[bucket].extend(values);
            }
        }
        let mut take = Take {
            grads,
            max_values: (max_bytes / 4).max(1),
            into: GradientBuckets {
                slots: Vec::new(),
                buckets: Vec::new(),
            },
        };
        model.visit(&mut take);
        take.into
    }

    pub fn buckets(&self) -> &[Vec<f32>] {
        &self.buckets
    }

    /// The buckets to reduce in place (their lengths must stay).
    pub fn buckets_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.buckets
    }

    /// Puts every bucketed gradient back into `grads` (as tensors on the
    /// devices they came from); `model` is the one they were taken from.
    pub fn put<M: Module<B>>(self, model: &M, grads: &mut GradientsParams) {
        struct Put<'a, B: AutodiffBackend> {
            grads: &'a mut GradientsParams,
            slots: std::iter::Peekable<std::vec::IntoIter<Slot<B>>>,
            buckets: &'a [Vec<f32>],
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Put<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some(slot) = self.slots.next_if(|slot| slot.id == param.id) else {
                    return;
                };
                let len: usize = slot.dims.iter().product();
                let values = self.buckets[slot.bucket][slot.offset..slot.offset + len].to_vec();
                let tensor = Tensor::<B::InnerBackend, D>::from_data(
                    TensorData::new(values, slot.dims),
                    &slot.device,
                );
                self.grads.register(slot.id, tensor);
            }
        }
        model.visit(&mut Put {
            grads,
            slots: self.slots.into_iter().peekable(),
            buckets: &self.buckets,
        });
    }
}

/// The element-wise mean of equal-length `parts`, summed in their order
/// and then scaled, so every rank that computes it gets the same bits: the
/// CPU all-reduce of [`crate::cluster`] and of tests.
pub fn mean_in_order(parts: impl IntoIterator<Item = Vec<f32>>, count: usize) -> Vec<f32> {
    let scale = 1.0 / count as f32;
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_default();
    for part in parts {
        sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
    }
    sum.iter_mut().for_each(|s| *s *= scale);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_models::{gradients, tiny_resnet};
    use crate::CpuTrain;
    use models::Model;

    type Inner = <CpuTrain as AutodiffBackend>::InnerBackend;

    /// Every gradient of `model`'s parameters in `grads`, in visiting order.
    fn flat(model: &Model<CpuTrain>, grads: &GradientsParams) -> Vec<Vec<f32>> {
        struct Collect<'a>(&'a GradientsParams, Vec<Vec<f32>>);
        impl ModuleVisitor<CpuTrain> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuTrain, D>>) {
                if let Some(grad) = self.0.get::<Inner, D>(param.id) {
                    self.1.push(grad.into_data().to_vec().unwrap());
                }
            }
        }
        let mut collect = Collect(grads, Vec::new());
        model.visit(&mut collect);
        collect.1
    }

    /// Per-tensor averaging: for each parameter, the replicas' gradient
    /// tensors summed in replica order, then scaled.
    fn per_tensor_mean(model: &Model<CpuTrain>, replicas: &[GradientsParams]) -> Vec<Vec<f32>> {
        struct Mean<'a>(&'a [GradientsParams], Vec<Vec<f32>>);
        impl ModuleVisitor<CpuTrain> for Mean<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuTrain, D>>) {
                let mut grads = self.0.iter().filter_map(|g| g.get::<Inner, D>(param.id));
                let Some(first) = grads.next() else { return };
                let sum = grads.fold(first, |sum, grad| sum + grad);
                let mean = sum.mul_scalar(1.0 / self.0.len() as f32);
                self.1.push(mean.into_data().to_vec().unwrap());
            }
        }
        let mut mean = Mean(replicas, Vec::new());
        model.visit(&mut mean);
        mean.1
    }

    #[test]
    fn buckets_respect_the_cap_and_round_trip_exactly() {
        let model = tiny_resnet();
        let mut grads = gradients(&model, 0);
        let before = flat(&model, &grads);
        let max_bytes = 4096;
        let buckets = GradientBuckets::<CpuTrain>::take(&model, &mut grads, max_bytes);
        assert!(
            flat(&model, &grads).is_empty(),
            "take left gradients behind"
        );
        assert!(
            buckets.buckets().len() > 3,
            "{} buckets",
            buckets.buckets().len()
        );
        // Every bucket is under the cap, or one gradient too large for it.
        let largest = before.iter().map(Vec::len).max().unwrap();
        assert!(
            largest * 4 > max_bytes,
            "no gradient exercises the own-bucket rule"
        );
        for bucket in buckets.buckets() {
            assert!(
                bucket.len() * 4 <= max_bytes || before.iter().any(|g| g.len() == bucket.len()),
                "a bucket of {} values",
                bucket.len()
            );
        }
        assert_eq!(buckets.buckets().concat(), before.concat());
        buckets.put(&model, &mut grads);
        assert_eq!(flat(&model, &grads), before);
    }

    #[test]
    fn bucketed_mean_equals_per_tensor_mean_bit_for_bit() {
        let model = tiny_resnet();
        let replicas: Vec<GradientsParams> = (0..3).map(|r| gradients(&model, r)).collect();
        let expected = per_tensor_mean(&model, &replicas);

        // The CPU stand-in for an all-reduce: every replica's bucket `i`
        // replaced by their mean.
        let mut taken: Vec<(GradientsParams, GradientBuckets<CpuTrain>)> = replicas
            .into_iter()
            .map(|mut grads| {
                let buckets = GradientBuckets::take(&model, &mut grads, 2048);
                (grads, buckets)
            })
            .collect();
        let bucket_count = taken[0].1.buckets().len();
        for index in 0..bucket_count {
            let parts = taken.iter().map(|(_, b)| b.buckets()[index].clone());
            let mean = mean_in_order(parts.collect::<Vec<_>>(), taken.len());
            for (_, buckets) in &mut taken {
                buckets.buckets_mut()[index].copy_from_slice(&mean);
            }
        }
        for (mut grads, buckets) in taken {
            buckets.put(&model, &mut grads);
            let got = flat(&model, &grads);
            assert_eq!(got.len(), expected.len());
            for (got, expected) in got.iter().zip(&expected) {
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                let expected: Vec<u32> = expected.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, expected);
            }
        }
    }
}
