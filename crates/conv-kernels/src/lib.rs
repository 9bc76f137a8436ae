//! Convolution kernels chosen per backend, for what Burn 0.21 does not let
//! a caller choose: which CubeCL (CUDA, wgpu) convolution algorithm runs,
//! and how the CPU backend multiplies.
//!
//! Burn's CubeCL backends without autotune run every convolution (forward
//! and both backward passes) with direct kernels, about 60 times slower than
//! PyTorch for a ResNet-18 step on an H200; with autotune, each tensor shape
//! first compiles and times about eight candidates, which keeps the first
//! step busy for many minutes. And Burn's direct input gradient is wrong
//! where kernel x dilation < stride: a ResNet's 1x1 stride-2 downsample
//! passes back zeros (found on wgpu; the kernel is the same CubeCL code on
//! CUDA). On the CPU, Burn's backend (Flex) multiplies one sample at a time
//! and leaves weight gradients strided, which made a ResNet-18 training step
//! twice as slow as it need be.
//!
//! [`ConvKernels`] is a backend extension: on the CubeCL backends (features
//! `cuda`, `wgpu`) it runs the kernels of the [`ConvChoice`], with a correct
//! strided input gradient; on the CPU backend its own f32 kernels (im2col
//! and one matrix product over many samples, contiguous results); on other
//! backends it is Burn's own convolution. [`conv2d`] runs a [`Conv2d`] layer
//! through it, and [`conv2d_on`] does so for code generic over the backend.
//!
//! Tested against Burn's CPU convolution on the CPU and, through Mesa's
//! lavapipe, on wgpu (which has no tensor cores, so there the implicit-GEMM
//! kernels fall back); not yet run on a CUDA GPU.

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
use std::any::Any;

/// Which convolution kernels run: a value a model carries (`models`'
/// `with_conv_kernels`, the config's `training.conv_kernels`), so that a
/// library call, a test and the program run the same kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvChoice {
    /// This crate's kernels: on the CPU its own f32 kernels; on the CubeCL
    /// backends Burn's direct kernels (what Burn runs without autotune), with
    /// the strided input gradient as im2col + GEMM.
    #[default]
    Direct,
    /// As [`ConvChoice::Direct`], but on the CubeCL backends burn-cubecl's
    /// implicit-GEMM kernels on the tensor cores (TF32 for f32 tensors),
    /// falling back to the direct ones where they cannot run.
    ImplicitGemm,
    /// Burn's own convolutions everywhere, for comparison: on CubeCL their
    /// input gradient through a 1x1 stride-2 convolution is zero.
    Burn,
}

impl std::str::FromStr for ConvChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "direct" => Ok(Self::Direct),
            "implicit-gemm" => Ok(Self::ImplicitGemm),
            "burn" => Ok(Self::Burn),
            _ => Err(format!(
                "unknown convolution kernels '{text}': use direct, implicit-gemm or burn"
            )),
        }
    }
}

impl std::fmt::Display for ConvChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::ImplicitGemm => "implicit-gemm",
            Self::Burn => "burn",
        })
    }
}

/// The three kernels of a 2-D convolution without bias. The defaults are
/// Burn's own operations.
pub trait ConvKernels: Backend {
    /// The convolution itself.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
        _choice: ConvChoice,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// Gradient with respect to the input.
    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        _choice: ConvChoice,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// Gradient with respect to the weight.
    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        _choice: ConvChoice,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }
}

/// `conv.forward(x)` through [`ConvKernels`] with the kernels of `choice`.
/// Layers with "same" or asymmetric padding, or with groups, and
/// [`ConvChoice::Burn`] run Burn's own forward instead.
pub fn conv2d<B: ConvKernels>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    choice: ConvChoice,
) -> Tensor<B, 4> {
    use burn::nn::PaddingConfig2d;
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return conv.forward(x),
    };
    if conv.groups != 1 || choice == ConvChoice::Burn {
        return conv.forward(x);
    }
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, 1);
    let out = B::conv2d_forward(
        x.into_primitive().tensor(),
        conv.weight.val().into_primitive().tensor(),
        options,
        choice,
    );
    let out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out));
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, -1, 1, 1]),
        None => out,
    }
}

/// [`conv2d`] on any backend: through [`ConvKernels`] on the backends this
/// build has kernels for (the CPU's Flex, and CUDA and wgpu with their
/// features), each with or without autodiff; Burn's own forward elsewhere.
/// Models stay generic over the backend and call this.
pub fn conv2d_on<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    choice: ConvChoice,
) -> Tensor<B, 4> {
    use burn::backend::Flex;
    /// `conv2d::<K>` when `B` is `K`.
    fn as_backend<B: Backend, K: ConvKernels>(
        conv: &Conv2d<B>,
        x: &Tensor<B, 4>,
        choice: ConvChoice,
    ) -> Option<Tensor<B, 4>> {
        let any_conv: &dyn Any = conv;
        let any_x: &dyn Any = x;
        let conv = any_conv.downcast_ref::<Conv2d<K>>()?;
        let x = any_x.downcast_ref::<Tensor<K, 4>>()?;
        let out: Box<dyn Any> = Box::new(conv2d(conv, x.clone(), choice));
        out.downcast::<Tensor<B, 4>>().ok().map(|out| *out)
    }
    let out = as_backend::<B, Autodiff<Flex>>(conv, &x, choice)
        .or_else(|| as_backend::<B, Flex>(conv, &x, choice));
    #[cfg(feature = "cuda")]
    let out = out
        .or_else(|| as_backend::<B, Autodiff<burn::backend::Cuda>>(conv, &x, choice))
        .or_else(|| as_backend::<B, burn::backend::Cuda>(conv, &x, choice));
    #[cfg(feature = "wgpu")]
    let out = out
        .or_else(|| as_backend::<B, Autodiff<burn::backend::Wgpu>>(conv, &x, choice))
        .or_else(|| as_backend::<B, burn::backend::Wgpu>(conv, &x, choice));
    out.unwrap_or_else(|| conv.forward(x))
}

/// The backward step of [`ConvKernels::conv2d_forward`] under autodiff.
#[derive(Debug)]
struct Conv2dBackward;

impl<B: ConvKernels> Backward<B, 2> for Conv2dBackward {
    type State = (NodeId, NodeId, ConvOptions<2>, ConvChoice);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options, choice) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        if let Some(node) = node_x {
            let input_grad = B::conv2d_input_grad(
                x.clone(),
                weight.clone(),
                grad.clone(),
                options.clone(),
                choice,
            );
            grads.register::<B>(node.id, input_grad);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(
                node.id,
                B::conv2d_weight_grad(x, weight, grad, options, choice),
            );
        }
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        match Conv2dBackward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::conv2d_forward(x.primitive, weight.primitive, options.clone(), choice);
                prep.finish((x_state, weight_state, options, choice), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.primitive,
                weight.primitive,
                options,
                choice,
            )),
        }
    }
}

mod cpu;
#[cfg(feature = "cubecl")]
mod cubecl;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, ElementConversion, Tolerance};

    /// The reference: Burn's convolution on the CPU.
    pub(crate) type Cpu = Autodiff<burn::backend::Flex>;

    /// A layer: input channels, output channels, kernel, stride, padding,
    /// bias, and the input's side.
    pub(crate) type Layer = (usize, usize, usize, usize, usize, bool, usize);

    /// A ResNet's layer kinds (stem, 3x3, strided 3x3, 1x1 stride-2
    /// downsample) at odd and even sides (which differ in the transposed
    /// convolution's output padding), and a kernel smaller than its stride.
    pub(crate) const LAYERS: [Layer; 8] = [
        (3, 8, 7, 2, 3, false, 16),
        (8, 8, 3, 1, 1, false, 15),
        (8, 16, 3, 2, 1, false, 15),
        (8, 16, 3, 2, 1, false, 16),
        (8, 16, 1, 2, 0, false, 15),
        (8, 16, 1, 2, 0, false, 16),
        (8, 4, 2, 3, 0, true, 16),
        (8, 4, 3, 1, 1, true, 9),
    ];

    /// Equal within 1e-5 of `b`'s largest magnitude (at least 1), by
    /// Burn's own comparison (which also checks shapes).
    pub(crate) fn assert_close<A: Backend, B: Backend, const D: usize>(
        a: Tensor<A, D>,
        b: Tensor<B, D>,
    ) {
        let scale = b.clone().abs().max().into_scalar().elem::<f32>().max(1.0);
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5 * scale));
    }

    /// `tensor`'s values on `device` of backend `B`.
    pub(crate) fn moved<A: Backend, B: Backend, const D: usize>(
        tensor: Tensor<A, D>,
        device: &B::Device,
    ) -> Tensor<B, D> {
        Tensor::from_data(tensor.into_data(), device)
    }

    /// The layer with random weights on the CPU, the same layer on
    /// `device`, and a random input for it on the CPU.
    pub(crate) fn layer_on<B: Backend>(
        (c_in, c_out, kernel, stride, padding, bias, side): Layer,
        device: &B::Device,
    ) -> (Conv2d<Cpu>, Conv2d<B>, Tensor<Cpu, 4>) {
        let config = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_bias(bias);
        let cpu_conv: Conv2d<Cpu> = config.init(&Default::default());
        let mut conv: Conv2d<B> = config.init(device);
        conv.weight = Param::from_tensor(moved(cpu_conv.weight.val(), device));
        conv.bias = cpu_conv
            .bias
            .as_ref()
            .map(|b| Param::from_tensor(moved(b.val(), device)));
        let x = Tensor::<Cpu, 4>::random(
            [2, c_in, side, side],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        (cpu_conv, conv, x)
    }

    /// [`conv2d`]'s output and gradients on `B` equal Burn's CPU
    /// convolution's, for every layer of [`LAYERS`].
    pub(crate) fn agrees_with_the_cpu<B: AutodiffBackend + ConvKernels>(
        device: &B::Device,
        choice: ConvChoice,
    ) {
        for layer in LAYERS {
            let (cpu_conv, conv, cpu_x) = layer_on::<B>(layer, device);
            let cpu_x = cpu_x.require_grad();
            let x = moved::<_, B, 4>(cpu_x.clone(), device).require_grad();
            let cpu_out = cpu_conv.forward(cpu_x.clone());
            let out = conv2d(&conv, x.clone(), choice);
            assert_close(out.clone().inner(), cpu_out.clone().inner());
            let cpu_weights = Tensor::<Cpu, 4>::random(
                cpu_out.dims(),
                Distribution::Normal(0.0, 1.0),
                &Default::default(),
            );
            let weights = moved::<_, B, 4>(cpu_weights.clone(), device);
            let cpu_grads = (cpu_out * cpu_weights).sum().backward();
            let grads = (out * weights).sum().backward();
            let what = format!("{layer:?}");
            let input_grad = x.grad(&grads).expect(&what);
            assert_close(input_grad, cpu_x.grad(&cpu_grads).unwrap());
            let weight_grad = conv.weight.val().grad(&grads).expect(&what);
            assert_close(weight_grad, cpu_conv.weight.val().grad(&cpu_grads).unwrap());
            if let (Some(b), Some(cpu_b)) = (&conv.bias, &cpu_conv.bias) {
                let bias_grad = b.val().grad(&grads).expect(&what);
                assert_close(bias_grad, cpu_b.val().grad(&cpu_grads).unwrap());
            }
        }
    }

    #[test]
    fn choices_are_named_as_in_configs() {
        for choice in [
            ConvChoice::Direct,
            ConvChoice::ImplicitGemm,
            ConvChoice::Burn,
        ] {
            assert_eq!(choice.to_string().parse(), Ok(choice));
        }
        assert_eq!("implicit-gemm".parse(), Ok(ConvChoice::ImplicitGemm));
        let error = "cudnn".parse::<ConvChoice>().unwrap_err();
        assert!(
            error.contains("use direct, implicit-gemm or burn"),
            "{error}"
        );
    }

    #[test]
    fn the_autodiff_step_agrees_with_burns_on_the_cpu() {
        agrees_with_the_cpu::<Cpu>(&Default::default(), ConvChoice::Direct);
    }
}
