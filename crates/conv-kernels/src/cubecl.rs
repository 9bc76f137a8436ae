//! [`ConvKernels`] on Burn's CubeCL backends (CUDA, wgpu) and on their fusion
//! wrapper: burn-cubecl's convolution kernels, chosen here rather than by
//! Burn (see [`ConvChoice`](crate::ConvChoice)).

use burn::tensor::ops::{ConvOptions, ConvTransposeOptions, FloatTensor, PadMode};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_backend::ops::conv::{calculate_conv_output_sizes, calculate_padding_out};
use burn_cubecl::kernel::conv::{
    conv_data_backward, conv_forward, conv_transpose2d, conv_weight_backward, ConvStrategy,
    ConvTranspose2dStrategy,
};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use crate::{ConvChoice, ConvKernels};

/// `run` with the strategies of `choice`: the implicit-GEMM kernel
/// first if chosen, then Burn's direct one (a fallback is noted once per
/// kernel on stderr, so a run that falls back says so). Burn's own
/// convolutions unwrap the same way; a fusion operation has no error path.
fn run_chosen<T, E: std::fmt::Debug>(
    what: &'static str,
    choice: ConvChoice,
    run: impl Fn(ConvStrategy) -> Result<T, E>,
) -> T {
    let direct = |run: &dyn Fn(ConvStrategy) -> Result<T, E>| {
        run(ConvStrategy::Direct)
            .unwrap_or_else(|err| panic!("{what}: Burn's direct kernel cannot run: {err:?}"))
    };
    match choice {
        ConvChoice::Direct | ConvChoice::Burn => direct(&run),
        ConvChoice::ImplicitGemm => run(ConvStrategy::ImplicitGemm).unwrap_or_else(|err| {
            note_fallback(what, "the implicit-GEMM kernel", &err);
            direct(&run)
        }),
    }
}

/// Says once per kernel that `kernel` could not run and Burn's direct
/// kernel runs instead.
fn note_fallback(what: &'static str, kernel: &str, err: &dyn std::fmt::Debug) {
    static NOTED: std::sync::Mutex<Vec<&str>> = std::sync::Mutex::new(Vec::new());
    let mut noted = NOTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !noted.contains(&what) {
        noted.push(what);
        eprintln!(
            "conv-kernels: {what}: {kernel} cannot run here ({err:?}); using Burn's direct kernel"
        );
    }
}

/// The strided input gradient on the CubeCL backend, where Burn's own is wrong.
trait StridedInputGrad: burn::tensor::backend::Backend {
    /// The input gradient of a strided convolution: the transposed
    /// convolution of `output_grad`, as im2col + GEMM, else with Burn's
    /// direct kernel.
    ///
    /// Burn 0.21's direct transposed convolution (the one Burn's CubeCL
    /// backends use for every strided input gradient without autotune)
    /// sums over no input where kernel x dilation < stride, so a ResNet's
    /// 1x1 stride-2 downsample passed back a zero gradient. Before that
    /// kernel runs here, the weight is zero-padded to reach the stride,
    /// which adds only zero products; the rows the padding adds at the end
    /// are cut off.
    fn strided_input_grad(
        in_shape: Shape,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// [`Self::strided_input_grad`] by Burn's direct transposed
    /// convolution, with the weight zero-padded to reach the stride.
    fn padded_direct_transpose(
        in_shape: &Shape,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl<R, F, I, BT> StridedInputGrad for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn strided_input_grad(
        in_shape: Shape,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let kernel = [weight.shape()[2], weight.shape()[3]];
        let gemm = conv_transpose2d(
            output_grad.clone(),
            weight.clone(),
            None,
            transposed_options(options, &in_shape, &output_grad.shape(), kernel),
            ConvTranspose2dStrategy::Gemm,
        );
        gemm.unwrap_or_else(|err| {
            note_fallback("conv2d input gradient", "the im2col + GEMM kernel", &err);
            Self::padded_direct_transpose(&in_shape, weight, output_grad, options)
        })
    }

    fn padded_direct_transpose(
        in_shape: &Shape,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: &ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let kernel = [weight.shape()[2], weight.shape()[3]];
        // The smallest kernel that reaches the stride.
        let reaching = [0, 1]
            .map(|axis| kernel[axis].max(options.stride[axis].div_ceil(options.dilation[axis])));
        let weight = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(weight)).pad(
            [(0, reaching[0] - kernel[0]), (0, reaching[1] - kernel[1])],
            PadMode::Constant(0.0),
        );
        let transposed = transposed_options(options, in_shape, &output_grad.shape(), reaching);
        let grad = conv_transpose2d(
            output_grad,
            weight.into_primitive().tensor(),
            None,
            transposed,
            ConvTranspose2dStrategy::Direct,
        )
        .unwrap_or_else(|err| {
            panic!("conv2d input gradient: Burn's direct transposed kernel cannot run: {err:?}")
        });
        Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(grad))
            .slice([
                0..in_shape[0],
                0..in_shape[1],
                0..in_shape[2],
                0..in_shape[3],
            ])
            .into_primitive()
            .tensor()
    }
}

/// The options of the transposed convolution that is the input gradient of
/// a convolution with `options` and a `kernel` (its height and width) from
/// an input of `in_shape` to an output of `out_shape`.
fn transposed_options(
    options: &ConvOptions<2>,
    in_shape: &Shape,
    out_shape: &Shape,
    kernel: [usize; 2],
) -> ConvTransposeOptions<2> {
    let padding_out = [0, 1].map(|axis| {
        calculate_padding_out(
            kernel[axis],
            options.stride[axis],
            options.padding[axis],
            options.dilation[axis],
            in_shape[2 + axis],
            out_shape[2 + axis],
        )
    });
    ConvTransposeOptions::new(
        options.stride,
        options.padding,
        padding_out,
        options.dilation,
        options.groups,
    )
}

impl<R, F, I, BT> ConvKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        run_chosen("conv2d", choice, |strategy| {
            conv_forward::<R, 2>(x.clone(), weight.clone(), None, options.clone(), strategy)
        })
    }

    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        let in_shape = x.shape();
        if options.stride != [1, 1] {
            // The implicit-GEMM data gradient handles stride 1 only.
            return Self::strided_input_grad(in_shape, weight, output_grad, &options);
        }
        run_chosen("conv2d input gradient", choice, |strategy| {
            conv_data_backward::<R, 2>(
                output_grad.clone(),
                weight.clone(),
                in_shape.clone(),
                options.clone(),
                strategy,
            )
        })
    }

    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        let weight_shape = weight.shape();
        run_chosen("conv2d weight gradient", choice, |strategy| {
            conv_weight_backward::<R, 2>(
                x.clone(),
                output_grad.clone(),
                weight_shape.clone(),
                options.clone(),
                strategy,
            )
        })
    }
}

/// Which of the three kernels a queued fusion operation runs.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Forward,
    InputGrad,
    WeightGrad,
}

/// A convolution kernel queued on the fusion stream (as burn-vision queues
/// its custom operations): run on the inner backend when the stream drains.
#[derive(Clone, Debug)]
struct QueuedConv<B> {
    desc: CustomOpIr,
    kernel: Kernel,
    options: ConvOptions<2>,
    choice: ConvChoice,
    backend: std::marker::PhantomData<B>,
}

impl<B: FusionBackend + ConvKernels> Operation<B::FusionRuntime> for QueuedConv<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let options = self.options.clone();
        let out = match self.kernel {
            Kernel::Forward => {
                let ([x, weight], [out]) = self.desc.as_fixed();
                let (x, weight) = (
                    handles.get_float_tensor::<B>(x),
                    handles.get_float_tensor::<B>(weight),
                );
                (out, B::conv2d_forward(x, weight, options, self.choice))
            }
            Kernel::InputGrad | Kernel::WeightGrad => {
                let ([x, weight, grad], [out]) = self.desc.as_fixed();
                let x = handles.get_float_tensor::<B>(x);
                let weight = handles.get_float_tensor::<B>(weight);
                let grad = handles.get_float_tensor::<B>(grad);
                let result = match self.kernel {
                    Kernel::InputGrad => {
                        B::conv2d_input_grad(x, weight, grad, options, self.choice)
                    }
                    _ => B::conv2d_weight_grad(x, weight, grad, options, self.choice),
                };
                (out, result)
            }
        };
        handles.register_float_tensor::<B>(&out.0.id, out.1);
    }
}

/// Queues `kernel` on the fusion stream of `inputs[0]`, returning a tensor
/// of `shape` like the first input.
fn queue<B: FusionBackend + ConvKernels>(
    name: &'static str,
    kernel: Kernel,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    shape: burn::tensor::Shape,
    options: ConvOptions<2>,
    choice: ConvChoice,
) -> FloatTensor<Fusion<B>> {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(inputs.iter());
    let out = TensorIr::uninit(client.create_empty_handle(), shape, dtype);
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &inputs, &[out]);
    let op = QueuedConv::<B> {
        desc: desc.clone(),
        kernel,
        options,
        choice,
        backend: std::marker::PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .output()
}

impl<B: FusionBackend + ConvKernels> ConvKernels for Fusion<B> {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        let (x_shape, w_shape) = (x.shape.clone(), weight.shape.clone());
        let size = calculate_conv_output_sizes(
            &w_shape[2..],
            &options.stride,
            &options.padding,
            &options.dilation,
            &x_shape[2..],
        );
        let shape = burn::tensor::Shape::from([x_shape[0], w_shape[0], size[0], size[1]]);
        queue::<B>(
            "conv2d_implicit_gemm",
            Kernel::Forward,
            vec![x, weight],
            shape,
            options,
            choice,
        )
    }

    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        queue_gradient::<B>(Kernel::InputGrad, x, weight, output_grad, options, choice)
    }

    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        choice: ConvChoice,
    ) -> FloatTensor<Self> {
        queue_gradient::<B>(Kernel::WeightGrad, x, weight, output_grad, options, choice)
    }
}

/// Queues a gradient kernel; the gradient has the shape of the input or
/// weight it belongs to.
fn queue_gradient<B: FusionBackend + ConvKernels>(
    kernel: Kernel,
    x: FloatTensor<Fusion<B>>,
    weight: FloatTensor<Fusion<B>>,
    output_grad: FloatTensor<Fusion<B>>,
    options: ConvOptions<2>,
    choice: ConvChoice,
) -> FloatTensor<Fusion<B>> {
    let (name, shape) = match kernel {
        Kernel::InputGrad => ("conv2d_implicit_gemm_input_grad", x.shape.clone()),
        _ => ("conv2d_implicit_gemm_weight_grad", weight.shape.clone()),
    };
    queue::<B>(
        name,
        kernel,
        vec![x, weight, output_grad],
        shape,
        options,
        choice,
    )
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::tests::{agrees_with_the_cpu, assert_close, layer_on, moved, Cpu, LAYERS};
    use crate::ConvChoice;
    use burn::backend::{Autodiff, Wgpu};
    use burn::tensor::Distribution;

    type Cube = CubeBackend<burn_wgpu::WgpuRuntime, f32, i32, u32>;

    /// The CubeCL and fusion paths on a real CubeCL runtime, with both
    /// choices of kernels. Without a GPU, wgpu runs on Mesa's lavapipe
    /// (package mesa-vulkan-drivers), which has no tensor cores: there the
    /// implicit-GEMM kernels report that and the direct ones run, through
    /// the same queued fusion operations.
    #[test]
    fn conv2d_agrees_with_the_cpu_on_wgpu() {
        for choice in [ConvChoice::Direct, ConvChoice::ImplicitGemm] {
            agrees_with_the_cpu::<Autodiff<Wgpu>>(&Default::default(), choice);
        }
    }

    /// The fallback of the strided input gradient (Burn's direct kernel on
    /// a zero-padded weight) is right where Burn's own use of that kernel
    /// is not.
    #[test]
    fn the_padded_direct_input_gradient_agrees_with_the_cpu() {
        let device = Default::default();
        for layer in LAYERS.into_iter().filter(|layer| layer.3 > 1) {
            let (cpu_conv, conv, cpu_x) = layer_on::<Cube>(layer, &device);
            let cpu_x = cpu_x.require_grad();
            let cpu_out = cpu_conv.forward(cpu_x.clone());
            let out_grad = Tensor::<Cpu, 4>::random(
                cpu_out.dims(),
                Distribution::Default,
                &Default::default(),
            );
            let expected = cpu_x
                .grad(&(cpu_out * out_grad.clone()).sum().backward())
                .unwrap();
            let options = ConvOptions::new(conv.stride, [layer.4; 2], conv.dilation, 1);
            let grad = Cube::padded_direct_transpose(
                &expected.shape(),
                conv.weight.val().into_primitive().tensor(),
                moved::<_, Cube, 4>(out_grad.inner(), &device)
                    .into_primitive()
                    .tensor(),
                &options,
            );
            let grad = Tensor::<Cube, 4>::from_primitive(TensorPrimitive::Float(grad));
            assert_close(grad, expected);
        }
    }

    /// Why the strided input gradient is not left to Burn: its direct
    /// transposed kernel passes zeros back through a 1x1 stride-2 conv.
    /// When this fails, a Burn upgrade fixed it, and the padding in
    /// [`StridedInputGrad::padded_direct_transpose`] can go.
    #[test]
    fn burns_direct_input_gradient_of_a_1x1_stride_2_conv_is_zero() {
        type Train = Autodiff<Wgpu>;
        let device = Default::default();
        let (_, conv, cpu_x) = layer_on::<Train>((8, 16, 1, 2, 0, false, 16), &device);
        let x = moved::<_, Train, 4>(cpu_x, &device).require_grad();
        let grads = conv.forward(x.clone()).sum().backward();
        let largest = x.grad(&grads).unwrap().abs().max().into_scalar();
        assert_eq!(largest, 0.0);
    }
}
