use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{momentum::MomentumConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use models::ResNetConfig;
use std::time::Instant;

type B = Autodiff<Flex>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let width: usize = args[1].parse().unwrap();
    let res: usize = args[2].parse().unwrap();
    let batch: usize = args[3].parse().unwrap();
    let small: bool = args[4] == "small";
    let inc: usize = args[5].parse().unwrap();
    let steps: usize = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(5);
    let device = Default::default();
    let mut model = ResNetConfig::resnet18(10)
        .with_width(width)
        .with_small_stem(small)
        .with_in_channels(inc)
        .init::<B>(&device)
        .unwrap();
    let mut opt = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_momentum(0.9)))
        .init::<B, models::ResNet<B>>();
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.1))
        .init(&device);
    let x = Tensor::<B, 4>::random(
        [batch, inc, res, res],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let y = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 10).collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    );
    let mut times = vec![];
    for _ in 0..steps {
        let t = Instant::now();
        let logits = model.forward(x.clone());
        let loss = loss_fn.forward(logits, y.clone());
        let g = loss.backward();
        let g = GradientsParams::from_grads(g, &model);
        model = opt.step(0.1, model, g);
        let _ = loss.into_scalar();
        times.push(t.elapsed().as_secs_f64());
    }
    let _ = model.valid();
    println!(
        "{:?} best {:.4}",
        times,
        times.iter().cloned().fold(f64::MAX, f64::min)
    );
}
