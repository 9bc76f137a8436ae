//! Small models and their gradients for the trainer's unit tests.

use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use models::Model;

use crate::CpuTrain;

/// A 4-channel ResNet-18 on 1-channel images.
pub fn tiny_resnet() -> Model<CpuTrain> {
    models::testing::tiny_resnet()
}

/// `model`'s gradients on a batch of two 28x28 images that differ per `step`.
pub fn gradients(model: &Model<CpuTrain>, step: usize) -> GradientsParams {
    let x = Tensor::<CpuTrain, 4>::from_data(
        TensorData::new(
            (0..2 * 28 * 28)
                .map(|i| ((i * (step + 3)) % 11) as f32 / 11.0 - 0.4)
                .collect(),
            [2, 1, 28, 28],
        ),
        &Default::default(),
    );
    let loss = model.forward(x).powf_scalar(2.0).mean();
    GradientsParams::from_grads(loss.backward(), model)
}
