//! Times the three convolution kernels on the CPU backend, Burn's own (Flex)
//! beside [`ConvKernels`]'s, for every distinct convolution of a ResNet-18
//! (batch 8 at 64 px, width 64, 3 input channels unless given:
//! `cpu_conv_timing [BATCH] [RES] [WIDTH] [IN_CHANNELS]`; the demo's is
//! `128 28 16 1`), best of 10, and their sums over the network's 20
//! convolutions, in milliseconds.
//! Burn's weight gradient is a strided view; its later cost (every
//! element-wise step that reads it) is not counted here.
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Distribution, Tensor, TensorPrimitive};
use conv_kernels::{ConvChoice, ConvKernels};

/// In channels, out channels (both in multiples of the width, 0 for the
/// image's), kernel, stride, stage (the input side is the resolution halved
/// that often, rounding up), how many such layers ResNet-18 has.
const LAYERS: [(usize, usize, usize, usize, u32, usize); 11] = [
    (0, 1, 7, 2, 0, 1),
    (1, 1, 3, 1, 2, 4),
    (1, 2, 3, 2, 2, 1),
    (1, 2, 1, 2, 2, 1),
    (2, 2, 3, 1, 3, 3),
    (2, 4, 3, 2, 3, 1),
    (2, 4, 1, 2, 3, 1),
    (4, 4, 3, 1, 4, 3),
    (4, 8, 3, 2, 4, 1),
    (4, 8, 1, 2, 4, 1),
    (8, 8, 3, 1, 5, 3),
];

fn best_ms(mut run: impl FnMut() -> Tensor<Flex, 4>) -> f64 {
    (0..10)
        .map(|_| {
            let start = Instant::now();
            let out = run();
            // Flex runs eagerly; reading one value makes sure it has.
            let _ = out.slice([0..1, 0..1, 0..1, 0..1]).into_scalar();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

/// The three kernels of one implementation.
struct Kernels {
    name: &'static str,
    forward: fn(FloatTensor<Flex>, FloatTensor<Flex>, ConvOptions<2>) -> FloatTensor<Flex>,
    gradient: [Gradient; 2],
}

type Gradient = fn(
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    ConvOptions<2>,
) -> FloatTensor<Flex>;

const IMPLEMENTATIONS: [Kernels; 2] = [
    Kernels {
        name: "Burn (Flex)",
        forward: |x, w, options| Flex::conv2d(x, w, None, options),
        gradient: [Flex::conv2d_x_backward, Flex::conv2d_weight_backward],
    },
    Kernels {
        name: "conv-kernels",
        forward: |x, w, options| Flex::conv2d_forward(x, w, options, ConvChoice::Direct),
        gradient: [
            |x, w, grad, options| Flex::conv2d_input_grad(x, w, grad, options, ConvChoice::Direct),
            |x, w, grad, options| Flex::conv2d_weight_grad(x, w, grad, options, ConvChoice::Direct),
        ],
    },
];

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("usage: cpu_conv_timing [BATCH] [RES] [WIDTH] [IN_CHANNELS]")
        })
        .collect();
    let arg = |index: usize, default| args.get(index).copied().unwrap_or(default);
    let (batch, res, width, in_channels) = (arg(0, 8), arg(1, 64), arg(2, 64), arg(3, 3));
    let channels = |multiple| match multiple {
        0 => in_channels,
        m => m * width,
    };
    let device = Default::default();
    let float = |t: &Tensor<Flex, 4>| t.clone().into_primitive().tensor();
    let mut totals = [[0.0; 3]; 2];
    println!("c_in c_out k s side | forward, input grad, weight grad (ms): Burn | conv-kernels");
    for (c_in, c_out, kernel, stride, stage, count) in LAYERS {
        let (c_in, c_out) = (channels(c_in), channels(c_out));
        let side = res.div_ceil(1 << stage);
        let options = ConvOptions::new([stride; 2], [kernel / 2; 2], [1, 1], 1);
        let x =
            Tensor::<Flex, 4>::random([batch, c_in, side, side], Distribution::Default, &device);
        let w = Tensor::<Flex, 4>::random(
            [c_out, c_in, kernel, kernel],
            Distribution::Default,
            &device,
        );
        let out = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(Flex::conv2d(
            float(&x),
            float(&w),
            None,
            options.clone(),
        )));
        let grad = Tensor::<Flex, 4>::random(out.dims(), Distribution::Default, &device);
        print!("{c_in:4} {c_out:4} {kernel} {stride} {side:4} |");
        for (kernels, totals) in IMPLEMENTATIONS.iter().zip(totals.iter_mut()) {
            let run = |t| Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(t));
            let mut times = vec![best_ms(|| {
                run((kernels.forward)(float(&x), float(&w), options.clone()))
            })];
            for gradient in kernels.gradient {
                times.push(best_ms(|| {
                    run(gradient(
                        float(&x),
                        float(&w),
                        float(&grad),
                        options.clone(),
                    ))
                }));
            }
            print!(" {:6.2} {:6.2} {:6.2} |", times[0], times[1], times[2]);
            for (total, time) in totals.iter_mut().zip(times) {
                *total += time * count as f64;
            }
        }
        println!();
    }
    for (kernels, totals) in IMPLEMENTATIONS.iter().zip(totals) {
        println!(
            "{}: ResNet-18's 20 convolutions (width {width}), batch {batch} at {res} px: forward {:.1}, input grad {:.1}, weight grad {:.1}, all {:.1} ms",
            kernels.name,
            totals[0],
            totals[1],
            totals[2],
            totals.iter().sum::<f64>()
        );
    }
}
