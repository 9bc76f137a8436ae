//! Convolution kernels chosen per backend, for the one thing Burn 0.21 does
//! not let a caller choose: which CUDA convolution algorithm runs.
//!
//! Burn's CUDA backend without autotune runs every convolution (forward and
//! both backward passes) with its direct kernel, about 60 times slower than
//! PyTorch for a ResNet-18 step; with autotune, each tensor shape first
//! compiles and times about eight candidates, which keeps the first step
//! busy for many minutes. burn-cubecl also has an implicit-GEMM convolution
//! on the tensor cores, reachable only through autotune. [`ConvKernels`] is
//! a backend extension: on CUDA (feature `cuda`) it calls that kernel
//! directly; on other backends it is Burn's own convolution. [`conv2d`] runs
//! a [`Conv2d`] layer through it.
//!
//! Experimental: the autodiff step and the model wiring are tested on the
//! CPU (outputs and gradients equal Burn's); the CUDA and fusion
//! implementations compile but have not run on a GPU yet.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorPrimitive};

/// The three kernels of a 2-D convolution without bias. The defaults are
/// Burn's own operations.
pub trait ConvKernels: Backend {
    /// The convolution itself.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// Gradient with respect to the input.
    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// Gradient with respect to the weight.
    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }
}

impl ConvKernels for burn::backend::Flex {}

/// `conv.forward(x)` through [`ConvKernels`]. Layers with "same" or
/// asymmetric padding, or with groups, run Burn's own forward instead.
pub fn conv2d<B: ConvKernels>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    use burn::nn::PaddingConfig2d;
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return conv.forward(x),
    };
    if conv.groups != 1 {
        return conv.forward(x);
    }
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, 1);
    let out = B::conv2d_forward(
        x.into_primitive().tensor(),
        conv.weight.val().into_primitive().tensor(),
        options,
    );
    let out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out));
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, -1, 1, 1]),
        None => out,
    }
}

/// [`conv2d`] behind type erasure, for a program-wide hook such as
/// `models::precision::set_conv2d_override`: `None` unless `conv` is a
/// `Conv2d<B>` and `x` a `Tensor<B, 4>`.
pub fn conv2d_any<B: ConvKernels>(
    conv: &dyn std::any::Any,
    x: &dyn std::any::Any,
) -> Option<Box<dyn std::any::Any>> {
    let conv = conv.downcast_ref::<Conv2d<B>>()?;
    let x = x.downcast_ref::<Tensor<B, 4>>()?;
    Some(Box::new(conv2d(conv, x.clone())))
}

/// The backward step of [`ConvKernels::conv2d_forward`] under autodiff.
#[derive(Debug)]
struct Conv2dBackward;

impl<B: ConvKernels> Backward<B, 2> for Conv2dBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        if let Some(node) = node_x {
            let input_grad =
                B::conv2d_input_grad(x.clone(), weight.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, input_grad);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::conv2d_weight_grad(x, weight, grad, options));
        }
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match Conv2dBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::conv2d_forward(x.primitive, weight.primitive, options.clone());
                prep.finish((x_state, weight_state, options), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv2d_forward(x.primitive, weight.primitive, options))
            }
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, Tolerance};

    type Cpu = Autodiff<burn::backend::Flex>;

    /// Equal within 1e-5 of `b`'s largest magnitude (at least 1), by
    /// Burn's own comparison (which also checks shapes).
    fn assert_close<const D: usize>(
        a: Tensor<burn::backend::Flex, D>,
        b: Tensor<burn::backend::Flex, D>,
    ) {
        let scale = b.clone().abs().max().into_scalar().max(1.0);
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5 * scale));
    }

    /// Output and both gradients equal Burn's own convolution's, for the
    /// layer kinds of a ResNet (stem, 3x3, strided 3x3, 1x1 downsample, bias).
    #[test]
    fn gradients_equal_burns_convolution() {
        let device = Default::default();
        let layers = [
            (3, 8, 7, 2, 3, false),
            (8, 8, 3, 1, 1, false),
            (8, 16, 3, 2, 1, false),
            (8, 16, 1, 2, 0, false),
            (8, 4, 3, 1, 1, true),
        ];
        for (c_in, c_out, kernel, stride, padding, bias) in layers {
            let conv: Conv2d<Cpu> = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<Cpu, 4>::random(
                [2, c_in, 15, 15],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let ours = conv2d(&conv, x.clone());
            let burns = conv.forward(x.clone());
            assert_close(ours.clone().inner(), burns.clone().inner());
            let weights =
                Tensor::<Cpu, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ours_grads = (ours * weights.clone()).sum().backward();
            let burns_grads = (burns * weights).sum().backward();
            assert_close(x.grad(&ours_grads).unwrap(), x.grad(&burns_grads).unwrap());
            let weight = conv.weight.val();
            assert_close(
                weight.grad(&ours_grads).unwrap(),
                weight.grad(&burns_grads).unwrap(),
            );
            if let Some(b) = &conv.bias {
                assert_close(
                    b.val().grad(&ours_grads).unwrap(),
                    b.val().grad(&burns_grads).unwrap(),
                );
            }
        }
    }
}
