//! ffcv's BlurPool wrapper: a fixed depthwise blur before a strided conv.
//!
//! ffcv's ImageNet recipe (which TopoNets' ResNets were trained with) wraps
//! every `Conv2d` with `stride > 1` and `in_channels >= 16` as
//! `BlurPoolConv2d`, so the wrapped conv's PyTorch keys gain a `.conv`
//! segment and a `blur_filter` buffer appears beside it.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use crate::precision::Compute;

/// ffcv's rule for which convolutions get blurred.
pub fn wants_blurpool(in_channels: usize, stride: usize) -> bool {
    stride > 1 && in_channels >= 16
}

/// The 3x3 binomial filter, `[[1,2,1],[2,4,2],[1,2,1]] / 16`, repeated for
/// each channel as a depthwise kernel `[channels, 1, 3, 3]`.
pub fn binomial_blur_filter<B: Backend>(channels: usize, device: &B::Device) -> Tensor<B, 4> {
    const TAPS: [f32; 9] = [1., 2., 1., 2., 4., 2., 1., 2., 1.];
    let values: Vec<f32> = (0..channels)
        .flat_map(|_| TAPS.iter().map(|tap| tap / 16.0))
        .collect();
    Tensor::from_data(TensorData::new(values, [channels, 1, 3, 3]), device)
}

/// `conv(blur(x))`, with PyTorch keys `conv.weight` and `blur_filter`.
#[derive(Module, Debug)]
pub struct BlurPoolConv2d<B: Backend> {
    /// The wrapped strided convolution.
    pub conv: Conv2d<B>,
    /// Depthwise blur kernel `[in_channels, 1, 3, 3]`. A buffer in PyTorch, so
    /// it is loaded and saved but never trained (`require_grad` is off).
    pub blur_filter: Param<Tensor<B, 4>>,
}

impl<B: Backend> BlurPoolConv2d<B> {
    /// Wraps `conv`, whose input has `in_channels` channels.
    pub fn new(conv: Conv2d<B>, in_channels: usize, device: &B::Device) -> Self {
        let filter = binomial_blur_filter(in_channels, device);
        Self {
            conv,
            blur_filter: Param::from_tensor(filter).set_require_grad(false),
        }
    }

    /// Blurs each channel (stride 1, zero padding 1), then applies the conv
    /// (as `compute` says; the blur stays in f32).
    pub fn forward(&self, x: Tensor<B, 4>, compute: Compute) -> Tensor<B, 4> {
        let channels = x.dims()[1];
        let blurred = conv2d(
            x,
            self.blur_filter.val(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], channels),
        );
        compute.conv2d(&self.conv, blurred)
    }
}

/// A convolution that is BlurPool-wrapped or not, following ffcv's rule.
///
/// An enum so one block type covers both checkpoint layouts; burn-store skips
/// the variant name when matching PyTorch keys.
#[derive(Module, Debug)]
pub enum MaybeBlurConv2d<B: Backend> {
    /// Keys `<name>.weight`.
    Plain(Conv2d<B>),
    /// Keys `<name>.conv.weight` and `<name>.blur_filter`.
    Blurred(BlurPoolConv2d<B>),
}

impl<B: Backend> MaybeBlurConv2d<B> {
    /// A bias-free square conv as torchvision's ResNet builds and initialises
    /// it ([`crate::resnet::conv2d`]), blurred when `blurpool` is on and
    /// ffcv's rule selects it. ffcv wraps the already-initialised conv, so
    /// the init is the same either way; the blur filter is fixed.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        blurpool: bool,
        device: &B::Device,
    ) -> Self {
        let conv = crate::resnet::conv2d(in_channels, out_channels, kernel, stride, device);
        if blurpool && wants_blurpool(in_channels, stride) {
            Self::Blurred(BlurPoolConv2d::new(conv, in_channels, device))
        } else {
            Self::Plain(conv)
        }
    }

    /// Applies the (possibly blurred) convolution.
    /// The slot's output, its convolution computed as `compute` says.
    pub fn forward(&self, x: Tensor<B, 4>, compute: Compute) -> Tensor<B, 4> {
        match self {
            Self::Plain(conv) => compute.conv2d(conv, x),
            Self::Blurred(blurred) => blurred.forward(x, compute),
        }
    }

    /// The convolution that carries the trainable weight.
    pub fn conv(&self) -> &Conv2d<B> {
        match self {
            Self::Plain(conv) => conv,
            Self::Blurred(blurred) => &blurred.conv,
        }
    }

    /// Suffix that turns the PyTorch module name of this slot into the
    /// name of the module holding the weight (`.conv` when blurred).
    pub fn weight_module_suffix(&self) -> &'static str {
        match self {
            Self::Plain(_) => "",
            Self::Blurred(_) => ".conv",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn ffcv_rule_skips_the_rgb_stem_and_unit_strides() {
        assert!(!wants_blurpool(3, 2));
        assert!(!wants_blurpool(64, 1));
        assert!(wants_blurpool(16, 2));
    }

    #[test]
    fn blur_preserves_a_constant_image_away_from_the_border() {
        let device = Default::default();
        let filter = binomial_blur_filter::<Flex>(2, &device);
        let x = Tensor::<Flex, 4>::ones([1, 2, 5, 5], &device);
        let y = conv2d(x, filter, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 2));
        let values = y.into_data().to_vec::<f32>().unwrap();
        // Centre pixel sees the whole kernel; a corner sees 4+2+2+1 = 9 of 16.
        assert!((values[12] - 1.0).abs() < 1e-6);
        assert!((values[0] - 9.0 / 16.0).abs() < 1e-6);
    }
}
