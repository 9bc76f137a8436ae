//! The program-wide Conv2d override (`precision::set_conv2d_override`): a
//! ResNet's Conv2d layers (BlurPool's strided ones included) go through it,
//! and the output and gradients stay what Burn's own convolutions give.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use models::precision::set_conv2d_override;
use models::resnet::ResNetConfig;

type Train = Autodiff<Flex>;

static CALLS: AtomicUsize = AtomicUsize::new(0);

fn counted(conv: &dyn Any, x: &dyn Any) -> Option<Box<dyn Any>> {
    let out = conv_kernels::conv2d_any::<Train>(conv, x);
    CALLS.fetch_add(out.is_some() as usize, Ordering::SeqCst);
    out
}

#[test]
fn a_resnets_convolutions_go_through_the_override_unchanged() {
    let device = Default::default();
    let model = ResNetConfig::resnet18(10)
        .with_width(8)
        .with_blurpool(true)
        .init::<Train>(&device)
        .unwrap();
    let x = Tensor::<Train, 4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let run = || {
        let logits = model.forward(x.clone());
        let grads = logits.clone().powi_scalar(2).sum().backward();
        let stem_grad = model.conv1.weight.val().grad(&grads).unwrap();
        (logits.inner().into_data(), stem_grad.into_data())
    };
    let (burns_logits, burns_grad) = run();
    assert_eq!(CALLS.load(Ordering::SeqCst), 0);

    assert!(set_conv2d_override(counted));
    let (logits, grad) = run();
    // 17 convolutions and 3 downsamples; BlurPool's blur is Burn's
    // functional depthwise conv2d, not a Conv2d layer.
    assert_eq!(CALLS.load(Ordering::SeqCst), 20);
    let tolerance = burn::tensor::Tolerance::<f32>::relative(1e-4);
    logits.assert_approx_eq::<f32>(&burns_logits, tolerance);
    grad.assert_approx_eq::<f32>(&burns_grad, tolerance);
}
