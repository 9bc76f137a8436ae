//! Small networks for tests (feature `testing`).

use burn::tensor::backend::Backend;

use crate::{Architecture, Model};

/// A 4-channel-wide ResNet-18 with a small stem, on 1-channel images.
pub fn tiny_resnet<B: Backend>() -> Model<B> {
    let Architecture::ResNet(config) = Architecture::from_name("resnet18", 10).unwrap() else {
        unreachable!()
    };
    let config = config
        .with_width(4)
        .with_in_channels(1)
        .with_small_stem(true);
    Architecture::ResNet(config)
        .init::<B>(&Default::default())
        .unwrap()
}
