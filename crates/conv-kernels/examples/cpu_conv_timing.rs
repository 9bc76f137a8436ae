//! Times the three convolution kernels on the CPU backend, Burn's own (Flex)
//! beside [`ConvKernels`]'s, for every distinct convolution of a ResNet-18
//! (batch 8 at 64 px unless given: `cpu_conv_timing [BATCH] [RES]`), best of
//! 10, and their sums over the network's 20 convolutions, in milliseconds.
//! Burn's weight gradient is a strided view; its later cost (every
//! element-wise step that reads it) is not counted here.
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Distribution, Tensor, TensorPrimitive};
use conv_kernels::ConvKernels;

/// in channels, out channels, kernel, stride, input side divisor (of the
/// resolution), how many such layers ResNet-18 has.
const LAYERS: [(usize, usize, usize, usize, usize, usize); 11] = [
    (3, 64, 7, 2, 1, 1),
    (64, 64, 3, 1, 4, 4),
    (64, 128, 3, 2, 4, 1),
    (64, 128, 1, 2, 4, 1),
    (128, 128, 3, 1, 8, 3),
    (128, 256, 3, 2, 8, 1),
    (128, 256, 1, 2, 8, 1),
    (256, 256, 3, 1, 16, 3),
    (256, 512, 3, 2, 16, 1),
    (256, 512, 1, 2, 16, 1),
    (512, 512, 3, 1, 32, 3),
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
        forward: <Flex as ConvKernels>::conv2d_forward,
        gradient: [
            <Flex as ConvKernels>::conv2d_input_grad,
            <Flex as ConvKernels>::conv2d_weight_grad,
        ],
    },
];

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: cpu_conv_timing [BATCH] [RES]"))
        .collect();
    let (batch, res) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(64),
    );
    let device = Default::default();
    let float = |t: &Tensor<Flex, 4>| t.clone().into_primitive().tensor();
    let mut totals = [[0.0; 3]; 2];
    println!("c_in c_out k s side | forward, input grad, weight grad (ms): Burn | conv-kernels");
    for (c_in, c_out, kernel, stride, divisor, count) in LAYERS {
        let side = res / divisor;
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
            "{}: ResNet-18's 20 convolutions, batch {batch} at {res} px: forward {:.1}, input grad {:.1}, weight grad {:.1}, all {:.1} ms",
            kernels.name,
            totals[0],
            totals[1],
            totals[2],
            totals.iter().sum::<f64>()
        );
    }
}
