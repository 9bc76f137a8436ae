//! The convolution kernels a model carries (`Model::with_conv_kernels`): a
//! ResNet's Conv2d layers (BlurPool's strided ones included) run
//! conv-kernels' kernels by default, Burn's when told, and the output and
//! gradients agree to float rounding (conv-kernels' CPU kernels sum in
//! another order). Each kernel's own gradients are checked element by
//! element in conv-kernels; here the question is whether a whole network is
//! wired through them.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use models::resnet::ResNetConfig;
use models::{ConvChoice, Model};

type Train = Autodiff<Flex>;

#[test]
fn a_resnets_convolutions_run_the_kernels_it_carries() {
    let device = Default::default();
    // A fixed draw, so that a failure can be rerun (see the gradient check
    // below for why an unlucky draw matters).
    Train::seed(&device, 0);
    let model = Model::ResNet(
        ResNetConfig::resnet18(10)
            .with_width(8)
            .with_blurpool(true)
            .init::<Train>(&device)
            .unwrap(),
    );
    // Batch norm over 2 samples of 1x1 (the last stage at 32 px) would
    // amplify the kernels' rounding differences; 4 samples of 2x2 do not.
    let x = Tensor::<Train, 4>::random([4, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let run = |model: &Model<Train>| {
        let logits = model.forward(x.clone());
        let grads = logits.clone().powi_scalar(2).sum().backward();
        let Model::ResNet(resnet) = model else {
            unreachable!()
        };
        let stem_grad = resnet.conv1.weight.val().grad(&grads).unwrap();
        (logits.inner().into_data(), stem_grad.into_data())
    };
    let (logits, grad) = run(&model);
    let (direct_logits, _) = run(&model.clone().with_conv_kernels(ConvChoice::Direct));
    let (burns_logits, burns_grad) = run(&model.with_conv_kernels(ConvChoice::Burn));
    // The default is conv-kernels' (bit for bit), and the choice is honoured:
    // Burn's kernels sum in another order.
    assert_eq!(logits, direct_logits);
    assert_ne!(logits, burns_logits);
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
