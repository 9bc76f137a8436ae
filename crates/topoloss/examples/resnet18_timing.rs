//! Times TopoLoss forward+backward over ResNet-18's 21 Conv2d/Linear layers
//! (factor 3, f32), best of 15 runs. `topotrain bench topoloss` is the
//! user-facing benchmark; this one needs no model crate.
use std::time::Instant;
use topoloss::*;

fn main() {
    let mut shapes = vec![(64usize, 3 * 49usize)];
    shapes.extend(std::iter::repeat_n((64, 64 * 9), 4));
    for (c_in, c) in [(64, 128), (128, 256), (256, 512)] {
        shapes.extend([(c, c_in * 9), (c, c * 9), (c, c_in), (c, c * 9), (c, c * 9)]);
    }
    shapes.push((1000, 512));
    let layers: Vec<_> = shapes
        .iter()
        .map(|&(o, e)| {
            LayerTopoLoss::new(o, e, SheetSource::Weight, 3.0, 3.0, Interpolation::Bilinear)
                .unwrap()
        })
        .collect();
    let weights: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(o, e)| {
            (0..o * e)
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
                .collect()
        })
        .collect();
    let mut grads: Vec<Vec<f32>> = weights.iter().map(|w| vec![0.0; w.len()]).collect();
    let (mut best_both, mut best_forward) = (f64::MAX, f64::MAX);
    for _ in 0..15 {
        let start = Instant::now();
        for ((layer, w), g) in layers.iter().zip(&weights).zip(grads.iter_mut()) {
            layer.loss_and_grad(w, 1.0, g).unwrap();
        }
        best_both = best_both.min(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        for (layer, w) in layers.iter().zip(&weights) {
            layer.loss(w, 1.0).unwrap();
        }
        best_forward = best_forward.min(start.elapsed().as_secs_f64() * 1e3);
    }
    println!("best fwd+bwd {best_both:.2} ms, fwd {best_forward:.2} ms");
}
