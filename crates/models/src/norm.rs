//! Batch normalisation of `[n, c, h, w]` activations with Burn's
//! [`BatchNorm`] module (its parameters, running statistics and semantics),
//! arranged for speed on the CPU backend.
//!
//! Burn's own forward broadcasts `[1, c, 1, 1]` statistics over the batch in
//! four element-wise ops (and their backward), which Burn's flex backend
//! walks element by element through strides; with the input viewed as
//! `[n, c, h*w]`, per-channel values repeated to `[n, c, 1]` make every
//! broadcast a "scalar per row" that flex runs as SIMD, and the affine part
//! is folded into one scale and one shift. Same maths: batch statistics
//! with the biased variance in training (and in the running variance, as
//! Burn), running statistics otherwise.

use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `bn(x)`: training mode (batch statistics, running statistics updated)
/// when autodiff is enabled on `x`'s device, inference mode otherwise, as
/// [`BatchNorm::forward`].
pub fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let x = x.reshape([n, c, h * w]);
    let per_channel = |t: Tensor<B, 1>| t.reshape([1, c, 1]);
    let (centered, var) = if B::ad_enabled(&device) {
        let mean = x.clone().mean_dim(2).mean_dim(0);
        let centered = x - rows(mean.clone(), n);
        let var = centered.clone().square().mean_dim(2).mean_dim(0);
        let update = |running: Tensor<B, 1>, batch: Tensor<B, 3>| {
            let batch = batch.detach().mul_scalar(bn.momentum).reshape([c]);
            let batch = batch.to_device(&running.device());
            running.mul_scalar(1.0 - bn.momentum).add(batch)
        };
        let running_mean = update(bn.running_mean.value_sync(), mean);
        let running_var = update(bn.running_var.value_sync(), var.clone());
        bn.running_mean.update(running_mean.detach());
        bn.running_var.update(running_var.detach());
        (centered, var)
    } else {
        let mean = per_channel(bn.running_mean.value().to_device(&device));
        let var = per_channel(bn.running_var.value().to_device(&device));
        (x - rows(mean, n), var)
    };
    let scale = per_channel(bn.gamma.val()) / var.add_scalar(bn.epsilon).sqrt();
    let y = centered * rows(scale, n) + rows(per_channel(bn.beta.val()), n);
    y.reshape([n, c, h, w])
}

/// `[1, c, 1]` repeated to a materialised `[n, c, 1]`: a per-row scalar for
/// the `[n, c, h*w]` activations.
fn rows<B: Backend>(values: Tensor<B, 3>, n: usize) -> Tensor<B, 3> {
    values.repeat_dim(0, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::flex::Flex;
    use burn::backend::Autodiff;
    use burn::module::{AutodiffModule, Param};
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Distribution, TensorData};

    type Train = Autodiff<Flex>;

    fn max_abs_difference(a: TensorData, b: TensorData) -> f32 {
        let (a, b) = (a.into_vec::<f32>().unwrap(), b.into_vec::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Two separate modules (running statistics are shared between clones)
    /// with the same, non-trivial parameters: one for Burn's forward, one for ours.
    fn pair() -> (BatchNorm<Train>, BatchNorm<Train>) {
        let make = || {
            let mut bn: BatchNorm<Train> = BatchNormConfig::new(5).init(&Default::default());
            let values = |v: [f32; 5]| Param::from_data(TensorData::from(v), &Default::default());
            bn.gamma = values([0.5, 1.0, 1.5, -2.0, 3.0]);
            bn.beta = values([-0.25, 0.0, 0.5, 1.0, -1.5]);
            bn
        };
        (make(), make())
    }

    #[test]
    fn training_matches_burns_batch_norm_with_gradients_and_running_statistics() {
        let (burn_bn, ours) = pair();
        let device = Default::default();
        let x = Tensor::<Train, 4>::random([3, 5, 4, 6], Distribution::Normal(1.0, 2.0), &device)
            .require_grad();
        let target = Tensor::<Train, 4>::random([3, 5, 4, 6], Distribution::Default, &device);
        let expected = burn_bn.forward(x.clone());
        let got = batch_norm(&ours, x.clone());
        assert!(max_abs_difference(expected.to_data(), got.to_data()) < 1e-5);

        // Gradients through a loss that weighs every output differently.
        let expected_grads = (expected * target.clone()).sum().backward();
        let got_grads = (got * target).sum().backward();
        let x_grad = |g: &<Train as burn::tensor::backend::AutodiffBackend>::Gradients| {
            x.grad(g).unwrap().into_data()
        };
        assert!(max_abs_difference(x_grad(&expected_grads), x_grad(&got_grads)) < 1e-4);
        for (expected, got) in [(&burn_bn.gamma, &ours.gamma), (&burn_bn.beta, &ours.beta)] {
            let e = expected.grad(&expected_grads).unwrap().into_data();
            let g = got.grad(&got_grads).unwrap().into_data();
            assert!(max_abs_difference(e, g) < 1e-4);
        }
        for (expected, got) in [
            (&burn_bn.running_mean, &ours.running_mean),
            (&burn_bn.running_var, &ours.running_var),
        ] {
            let (e, g) = (expected.value().into_data(), got.value().into_data());
            assert!(max_abs_difference(e, g) < 1e-6);
        }
    }

    #[test]
    fn inference_uses_the_running_statistics_as_burn() {
        let (burn_bn, ours) = pair();
        let device = Default::default();
        // One training pass gives running statistics that are not 0 / 1.
        let warm =
            Tensor::<Train, 4>::random([2, 5, 3, 3], Distribution::Normal(2.0, 3.0), &device);
        let _ = burn_bn.forward(warm.clone());
        let _ = batch_norm(&ours, warm);
        let (burn_bn, ours) = (burn_bn.valid(), ours.valid());
        let x = Tensor::<Flex, 4>::random([2, 5, 3, 3], Distribution::Default, &device);
        let expected = burn_bn.forward(x.clone()).into_data();
        let got = batch_norm(&ours, x).into_data();
        assert!(max_abs_difference(expected, got) < 1e-5);
    }
}
