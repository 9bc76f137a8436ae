//! [`ConvKernels`] on Burn's CubeCL backends (CUDA) and on their fusion
//! wrapper: burn-cubecl's implicit-GEMM convolution, called directly.

use burn::tensor::ops::{ConvOptions, ConvTransposeOptions, FloatTensor};
use burn::tensor::TensorMetadata;
use burn_backend::ops::conv::{calculate_conv_output_sizes, calculate_padding_out};
use burn_cubecl::kernel::conv::{
    conv_data_backward, conv_forward, conv_transpose2d, conv_weight_backward, ConvStrategy,
    ConvTranspose2dStrategy,
};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use crate::ConvKernels;

/// `run` with the first of `strategies` that works: the implicit-GEMM
/// kernel, else Burn's direct one. Burn's own convolutions unwrap the same
/// way; a fusion operation has no error path.
fn first_that_runs<S, T, E: std::fmt::Debug>(
    what: &str,
    [first, second]: [S; 2],
    run: impl Fn(S) -> Result<T, E>,
) -> T {
    run(first).or_else(|_| run(second)).unwrap_or_else(|err| {
        panic!("{what}: neither the implicit-GEMM nor the direct kernel ran: {err:?}")
    })
}

const GEMM_THEN_DIRECT: [ConvStrategy; 2] = [ConvStrategy::ImplicitGemm, ConvStrategy::Direct];

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
    ) -> FloatTensor<Self> {
        first_that_runs("conv2d", GEMM_THEN_DIRECT, |strategy| {
            conv_forward::<R, 2>(x.clone(), weight.clone(), None, options.clone(), strategy)
        })
    }

    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let in_shape = x.shape();
        if options.stride != [1, 1] {
            // The implicit-GEMM data gradient handles stride 1 only; the
            // transposed convolution as im2col + matmul covers the rest.
            let padding_out = [0, 1].map(|axis| {
                calculate_padding_out(
                    weight.shape()[2 + axis],
                    options.stride[axis],
                    options.padding[axis],
                    options.dilation[axis],
                    output_grad.shape()[2 + axis],
                    in_shape[2 + axis],
                )
            });
            let transpose = ConvTransposeOptions::new(
                options.stride,
                options.padding,
                padding_out,
                options.dilation,
                options.groups,
            );
            let strategies = [
                ConvTranspose2dStrategy::Gemm,
                ConvTranspose2dStrategy::Direct,
            ];
            return first_that_runs("conv2d input gradient", strategies, |strategy| {
                conv_transpose2d(
                    output_grad.clone(),
                    weight.clone(),
                    None,
                    transpose.clone(),
                    strategy,
                )
            });
        }
        first_that_runs("conv2d input gradient", GEMM_THEN_DIRECT, |strategy| {
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
    ) -> FloatTensor<Self> {
        let weight_shape = weight.shape();
        first_that_runs("conv2d weight gradient", GEMM_THEN_DIRECT, |strategy| {
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
                (out, B::conv2d_forward(x, weight, options))
            }
            Kernel::InputGrad | Kernel::WeightGrad => {
                let ([x, weight, grad], [out]) = self.desc.as_fixed();
                let x = handles.get_float_tensor::<B>(x);
                let weight = handles.get_float_tensor::<B>(weight);
                let grad = handles.get_float_tensor::<B>(grad);
                let result = match self.kernel {
                    Kernel::InputGrad => B::conv2d_input_grad(x, weight, grad, options),
                    _ => B::conv2d_weight_grad(x, weight, grad, options),
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
        )
    }

    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        queue_gradient::<B>(Kernel::InputGrad, x, weight, output_grad, options)
    }

    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        queue_gradient::<B>(Kernel::WeightGrad, x, weight, output_grad, options)
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
) -> FloatTensor<Fusion<B>> {
    let (name, shape) = match kernel {
        Kernel::InputGrad => ("conv2d_implicit_gemm_input_grad", x.shape.clone()),
        _ => ("conv2d_implicit_gemm_weight_grad", weight.shape.clone()),
    };
    queue::<B>(name, kernel, vec![x, weight, output_grad], shape, options)
}
