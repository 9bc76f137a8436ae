//! The program-wide Conv2d override (`precision::set_conv2d_override`): a
//! ResNet's Conv2d layers (BlurPool's strided ones included) go through it,
//! and the output and gradients stay what Burn's own convolutions give, to
//! float rounding (conv-kernels' CPU kernels sum in another order). Each
//! kernel's own gradients are checked element by element in conv-kernels;
//! here the question is whether a whole network is wired through them.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
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
    // A fixed draw, so that a failure can be rerun (see the gradient check
    // below for why an unlucky draw matters).
    Train::seed(&device, 0);
    let model = ResNetConfig::resnet18(10)
        .with_width(8)
        .with_blurpool(true)
        .init::<Train>(&device)
        .unwrap();
    // Batch norm over 2 samples of 1x1 (the last stage at 32 px) would
    // amplify the kernels' rounding differences; 4 samples of 2x2 do not.
    let x = Tensor::<Train, 4>::random([4, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
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
    logits.assert_approx_eq::<f32>(&burns_logits, within_1e4_of_largest(&burns_logits));

    // The stem's gradient passes back through 17 ReLUs and train-mode batch
    // norms: a pre-activation within rounding of zero can take the other
    // side of a kink under another summation order and move the gradient by
    // a few percent, while a wiring error (a gradient not passed back, or to
    // the wrong tensor) is off by order one. 5% sits between the two.
    let error = relative_l2_error(&grad, &burns_grad);
    assert!(error < 0.05, "stem gradient: relative L2 error {error}");
}

/// ‖ours - theirs‖ / ‖theirs‖.
fn relative_l2_error(ours: &burn::tensor::TensorData, theirs: &burn::tensor::TensorData) -> f32 {
    let (mut difference, mut reference) = (0.0f32, 0.0f32);
    for (a, b) in ours.iter::<f32>().zip(theirs.iter::<f32>()) {
        difference += (a - b) * (a - b);
        reference += b * b;
    }
    assert!(reference > 0.0, "the reference gradient is zero");
    (difference / reference).sqrt()
}

/// An absolute tolerance of 1e-4 times `data`'s largest magnitude.
fn within_1e4_of_largest(data: &burn::tensor::TensorData) -> burn::tensor::Tolerance<f32> {
    let largest = data.iter::<f32>().fold(0.0f32, |max, v| max.max(v.abs()));
    burn::tensor::Tolerance::absolute(1e-4 * largest)
}
