//! SGD with momentum that updates weights and momentum buffers in place.
//!
//! Burn's `Sgd` builds every update from new tensors: per parameter it
//! copies the gradient into a fresh velocity, scales the velocity into a
//! fresh step and subtracts, so a ResNet-18 step on the CPU allocated and
//! first-touched three weight-sized buffers (47 MB each) and walked the
//! weights five times (a tenth of the step; see BENCHMARKS.md). [`InPlaceSgd`] does the
//! same arithmetic (PyTorch's SGD without dampening, Burn's too) as
//! `v = m v + g; w = w - lr v` written into the buffers the velocity and
//! weights already own, where the backend lets it (the CPU backend, for f32
//! tensors nobody else holds); elsewhere it falls back to tensor operations.
//! Its state records have the layout of Burn's `SgdState`, so optimiser
//! checkpoints written with Burn's `Sgd` load, and the other way round.

use std::any::Any;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// SGD with (optionally Nesterov) momentum and no dampening; weight decay
/// is the caller's (see [`crate::weight_decay`]).
#[derive(Clone, Debug)]
pub struct InPlaceSgd {
    momentum: f32,
    nesterov: bool,
}

/// One parameter's optimiser state: Burn's `SgdState` field for field.
#[derive(Record, Clone)]
pub struct SgdState<B: Backend, const D: usize> {
    pub momentum: Option<MomentumState<B, D>>,
}

/// The momentum buffer: Burn's `MomentumState` field for field.
#[derive(Record, Clone)]
pub struct MomentumState<B: Backend, const D: usize> {
    pub velocity: Tensor<B, D>,
}

impl InPlaceSgd {
    /// Momentum 0 keeps no state (plain SGD).
    pub fn new(momentum: f64, nesterov: bool) -> Self {
        Self {
            momentum: momentum as f32,
            nesterov,
        }
    }

    /// The optimiser for the parameters of `M`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for InPlaceSgd {
    type State<const D: usize> = SgdState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        weight: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let lr = lr as f32;
        if self.momentum == 0.0 {
            return (scaled_add(weight, 1.0, &grad, -lr), None);
        }
        // The first step's velocity is the gradient itself, as in PyTorch.
        let velocity = match state.and_then(|s| s.momentum) {
            Some(previous) => scaled_add(previous.velocity, self.momentum, &grad, 1.0),
            None => grad.clone(),
        };
        let weight = if self.nesterov {
            let update = scaled_add(grad, 1.0, &velocity, self.momentum);
            scaled_add(weight, 1.0, &update, -lr)
        } else {
            scaled_add(weight, 1.0, &velocity, -lr)
        };
        let state = SgdState {
            momentum: Some(MomentumState { velocity }),
        };
        (weight, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        SgdState {
            momentum: state.momentum.map(|m| MomentumState {
                velocity: m.velocity.to_device(device),
            }),
        }
    }
}

/// `beta y + alpha x`, written into `y`'s buffer when the backend allows
/// (see [`add_scaled_in_place`]), else computed with tensor operations.
pub fn scaled_add<B: Backend, const D: usize>(
    y: Tensor<B, D>,
    beta: f32,
    x: &Tensor<B, D>,
    alpha: f32,
) -> Tensor<B, D> {
    let mut y_inner = y.into_primitive().tensor();
    let x_inner = x.clone().into_primitive().tensor();
    if add_scaled_in_place(&mut y_inner, beta, &x_inner, alpha) {
        return Tensor::from_primitive(TensorPrimitive::Float(y_inner));
    }
    let y = Tensor::from_primitive(TensorPrimitive::Float(y_inner));
    tensor_ops_scaled_add(y, beta, x, alpha)
}

fn tensor_ops_scaled_add<B: Backend, const D: usize>(
    y: Tensor<B, D>,
    beta: f32,
    x: &Tensor<B, D>,
    alpha: f32,
) -> Tensor<B, D> {
    let y = if beta == 1.0 { y } else { y.mul_scalar(beta) };
    let x = if alpha == 1.0 {
        x.clone()
    } else {
        x.clone().mul_scalar(alpha)
    };
    y + x
}

/// Elements per parallel task: large enough that a task outweighs its
/// scheduling, small enough to spread a 2 MB layer over the cores.
const CHUNK: usize = 1 << 15;

/// `y = beta y + alpha x` in `y`'s own buffer, for CPU (Flex) f32 tensors
/// of one shape where `y` is contiguous and not shared and `x` contiguous.
/// Returns false, touching nothing, otherwise.
fn add_scaled_in_place<T: Any>(y: &mut T, beta: f32, x: &T, alpha: f32) -> bool {
    let (Some(y), Some(x)) = (
        (y as &mut dyn Any).downcast_mut::<FlexTensor>(),
        (x as &dyn Any).downcast_ref::<FlexTensor>(),
    ) else {
        return false;
    };
    if y.dtype() != DType::F32 || y.layout().shape() != x.layout().shape() || !y.is_unique() {
        return false;
    }
    let (Some(x), Some((start, end))) = (x.as_slice::<f32>(), y.layout().contiguous_offsets())
    else {
        return false;
    };
    let Some(storage) = y.try_storage_mut::<f32>() else {
        return false;
    };
    storage[start..end]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = beta * *y + alpha * x;
            }
        });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::materialize_parameters;
    use crate::test_models::{gradients, tiny_resnet};
    use crate::CpuTrain;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{Optimizer, SgdConfig};
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    use burn::tensor::TensorData;
    use models::Model;

    type Inner = <CpuTrain as AutodiffBackend>::InnerBackend;

    /// Every parameter of `model`, in visiting order.
    fn weights(model: &Model<CpuTrain>) -> Vec<Vec<f32>> {
        struct Collect(Vec<Vec<f32>>);
        impl ModuleVisitor<CpuTrain> for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuTrain, D>>) {
                self.0.push(param.val().into_data().to_vec().unwrap());
            }
        }
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        collect.0
    }

    /// Three steps of each optimiser from the same start, gradients taken
    /// at each one's own weights: the weights must stay bit-identical.
    fn same_as_burns_sgd(momentum: f64, nesterov: bool) {
        let config = SgdConfig::new().with_momentum(Some(MomentumConfig {
            momentum,
            dampening: 0.0,
            nesterov,
        }));
        let mut burns = config.init::<CpuTrain, Model<CpuTrain>>();
        let mut ours = InPlaceSgd::new(momentum, nesterov).init::<CpuTrain, Model<CpuTrain>>();
        // A copy through a record: clones would share BatchNorm's running
        // statistics.
        let mut a = tiny_resnet();
        materialize_parameters(&a);
        let mut b = tiny_resnet().load_record(a.clone().into_record());
        assert_eq!(weights(&a), weights(&b));
        for step in 0..3 {
            let lr = 0.05 * (step + 1) as f64;
            let grads = gradients(&a, step);
            a = burns.step(lr, a, grads);
            let grads = gradients(&b, step);
            b = ours.step(lr, b, grads);
            for (i, (wa, wb)) in weights(&a).iter().zip(weights(&b)).enumerate() {
                let first = wa
                    .iter()
                    .zip(&wb)
                    .position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(first.is_none(), "momentum {momentum}, nesterov {nesterov}, step {step}, param {i} at {first:?}: {:?} vs {:?}", &wa[first.unwrap()], &wb[first.unwrap()]);
            }
        }
    }

    #[test]
    fn steps_are_bit_identical_to_burns_sgd() {
        same_as_burns_sgd(0.9, false);
        same_as_burns_sgd(0.9, true);
        same_as_burns_sgd(0.0, false);
    }

    #[test]
    fn records_load_both_ways_with_burns_sgd() {
        let model = tiny_resnet();
        let config = SgdConfig::new().with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }));
        let mut burns = config.init::<CpuTrain, Model<CpuTrain>>();
        let mut ours = InPlaceSgd::new(0.9, false).init::<CpuTrain, Model<CpuTrain>>();
        let a = burns.step(0.1, model.clone(), gradients(&model, 0));
        let b = ours.step(0.1, model.clone(), gradients(&model, 0));
        // The trainer's optimiser checkpoints are named MessagePack too.
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let burns_bytes = recorder.record(burns.to_record(), ()).unwrap();
        let ours_bytes = recorder.record(ours.to_record(), ()).unwrap();
        let device = Default::default();
        // Each record loads into the other optimiser, and the next step from
        // either gives the same weights as continuing with the original.
        let mut ours_from_burns = InPlaceSgd::new(0.9, false)
            .init::<CpuTrain, Model<CpuTrain>>()
            .load_record(recorder.load(burns_bytes, &device).unwrap());
        let mut burns_from_ours = config
            .init::<CpuTrain, Model<CpuTrain>>()
            .load_record(recorder.load(ours_bytes, &device).unwrap());
        let continued = burns.step(0.1, a.clone(), gradients(&a, 1));
        let switched = ours_from_burns.step(0.1, a.clone(), gradients(&a, 1));
        assert_eq!(weights(&continued), weights(&switched));
        let continued = ours.step(0.1, b.clone(), gradients(&b, 1));
        let switched = burns_from_ours.step(0.1, b.clone(), gradients(&b, 1));
        assert_eq!(weights(&continued), weights(&switched));
    }

    fn tensor(values: &[f32]) -> Tensor<Inner, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn scaled_add_writes_into_an_unshared_buffer_and_copies_a_shared_one() {
        let x = tensor(&[1.0, 2.0, 3.0]);
        let y = tensor(&[10.0, 20.0, 30.0]);
        let expected = [19.5, 39.0, 58.5];
        let out = scaled_add(y, 2.0, &x, -0.5);
        assert_eq!(out.to_data().to_vec::<f32>().unwrap(), expected);
        // A y someone else holds is left as it was.
        let y = tensor(&[10.0, 20.0, 30.0]);
        let kept = y.clone();
        let out = scaled_add(y, 2.0, &x, -0.5);
        assert_eq!(out.to_data().to_vec::<f32>().unwrap(), expected);
        assert_eq!(kept.to_data().to_vec::<f32>().unwrap(), [10.0, 20.0, 30.0]);
        // A strided (transposed) x and y go through tensor operations.
        let y2 = Tensor::<Inner, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            &Default::default(),
        )
        .transpose();
        let x2 = Tensor::<Inner, 2>::from_data(
            TensorData::new(vec![1.0f32, 1.0, 0.0, 0.0], [2, 2]),
            &Default::default(),
        )
        .transpose();
        let out = scaled_add(y2, 1.0, &x2, 1.0);
        assert_eq!(out.to_data().to_vec::<f32>().unwrap(), [2.0, 3.0, 3.0, 4.0]);
    }
}
