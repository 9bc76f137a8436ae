//! Mixed precision by hand: convolutions, linear layers and matrix
//! products computed in bf16 while parameters, their gradients, the
//! optimiser's state and every other operation (normalisation, softmax,
//! residual sums, the loss) stay in f32.
//!
//! Burn 0.21 has no autocast (tracel-ai/burn#5696 proposes one), but its
//! casts are differentiable: the bf16 copy of an f32 weight passes its
//! gradient back to the f32 parameter, which is PyTorch autocast's
//! behaviour for these ops. Each layer casts its input and weights to bf16,
//! runs Burn's own forward on them, and casts its output back to f32.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
pub use conv_kernels::ConvChoice;
use serde::{Deserialize, Serialize};

/// The dtype convolutions, linear layers and matrix products compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Convolutions, linear layers and matrix products in bf16, the rest in f32.
    Bf16,
}

impl Precision {
    /// The dtype to compute in, when it is not the parameters' f32.
    fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// `forward(module, x)` with `module`'s parameters and `x` in this
    /// precision, the output back in f32.
    fn run<B: Backend, M: Module<B>, const D: usize>(
        self,
        module: &M,
        x: Tensor<B, D>,
        forward: impl FnOnce(&M, Tensor<B, D>) -> Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.compute_dtype() {
            None => forward(module, x),
            Some(dtype) => forward(&cast_view(module, dtype), x.cast(dtype)).cast(FloatDType::F32),
        }
    }

    /// `linear_layer.forward(x)`, computed in this precision (output in f32).
    pub fn linear<B: Backend, const D: usize>(
        self,
        linear_layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.run(linear_layer, x, Linear::forward)
    }

    /// `a.matmul(b)`, computed in this precision (output in f32).
    pub fn matmul<B: Backend, const D: usize>(
        self,
        a: Tensor<B, D>,
        b: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.compute_dtype() {
            None => a.matmul(b),
            Some(dtype) => a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32),
        }
    }
}

/// How a network's layers compute: the [`Precision`] of convolutions,
/// linear layers and matrix products, and the convolution kernels
/// ([`ConvChoice`], crate conv-kernels). Models carry it as a value, so a
/// library call, a test and the program run the same kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compute {
    pub precision: Precision,
    pub conv_kernels: ConvChoice,
}

impl Compute {
    /// `conv.forward(x)` by the chosen kernels, in this precision (output in
    /// f32).
    pub fn conv2d<B: Backend>(self, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let kernels = self.conv_kernels;
        self.precision
            .run(conv, x, |conv, x| conv_kernels::conv2d_on(conv, x, kernels))
    }

    /// `linear_layer.forward(x)` in this precision (output in f32).
    pub fn linear<B: Backend, const D: usize>(
        self,
        linear_layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.precision.linear(linear_layer, x)
    }

    /// `a.matmul(b)` in this precision (output in f32).
    pub fn matmul<B: Backend, const D: usize>(
        self,
        a: Tensor<B, D>,
        b: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.precision.matmul(a, b)
    }
}

/// A copy of `module` whose float parameters are `dtype` casts of the
/// originals: same ids, and (under autodiff) gradients flow through the
/// casts to the original parameters. Burn's own `forward` then runs on it.
fn cast_view<B: Backend, M: Module<B>>(module: &M, dtype: FloatDType) -> M {
    struct CastParams(FloatDType);
    impl<B: Backend> ModuleMapper<B> for CastParams {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let id = param.id;
            Param::initialized(id, param.val().cast(self.0))
        }
    }
    module.clone().map(&mut CastParams(dtype))
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision '{text}': use f32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Architecture, Model, ResNetConfig, VitConfig};
    use burn::backend::Autodiff;
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    use burn::tensor::{DType, Distribution};

    type Train = Autodiff<crate::CpuBackend>;
    type Inner = crate::CpuBackend;

    fn tiny_resnet() -> Model<Train> {
        let config = ResNetConfig::new([1, 1, 1, 1], false)
            .with_num_classes(5)
            .with_in_channels(3)
            .with_width(8)
            .with_small_stem(true);
        Architecture::ResNet(config)
            .init(&Default::default())
            .unwrap()
    }

    fn tiny_vit() -> Model<Train> {
        let config = VitConfig::new()
            .with_image_size(16)
            .with_patch_size(4)
            .with_hidden_dim(16)
            .with_num_layers(2)
            .with_num_heads(2)
            .with_mlp_dim(32)
            .with_num_classes(5);
        let model = Architecture::Vit(config)
            .init::<Train>(&Default::default())
            .unwrap();
        // The head starts at zero (torchvision), which would make every
        // logit 0 in both precisions: give it weights.
        let Model::Vit(mut vit) = model else {
            unreachable!()
        };
        vit.heads.head.weight = vit
            .heads
            .head
            .weight
            .map(|w| w.random_like(Distribution::Normal(0.0, 0.2)).require_grad());
        Model::Vit(vit)
    }

    fn values<const D: usize>(t: Tensor<impl Backend, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    /// Largest difference relative to the largest magnitude.
    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst / scale
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    }

    /// bf16 logits close to f32's, gradients of the f32 parameters through
    /// the casts close to f32's (`first_layer` and the classifier), and an
    /// optimiser step keeps the setting and the f32 weights.
    fn check_bf16(
        model: Model<Train>,
        first_layer: impl Fn(&Model<Train>) -> Param<Tensor<Train, 4>>,
    ) {
        let device = Default::default();
        let x = test_support::seeded_normal::<Train, 4>([4, 3, 16, 16], 0.0, 1.0, 1, &device);
        let reference = model.forward(x.clone());
        let mixed_model = model.clone().with_precision(Precision::Bf16);
        let mixed = mixed_model.forward(x);
        assert_eq!(mixed.dtype(), DType::F32);
        let error = relative_error(&values(reference.clone()), &values(mixed.clone()));
        eprintln!("bf16 logits: relative error {error}");
        // bf16 keeps about 3 significant digits; through the network, 0.3-4%
        // over 150 draws of each model (the weights come from the backend's
        // one generator, whose draws depend on the order tests run in).
        assert!(error > 0.0 && error < 0.1, "relative error {error}");

        // A random projection of the logits: their plain sum has a
        // near-zero gradient through train-mode batch norm, all rounding.
        let projection = test_support::seeded_normal::<Train, 2>([4, 5], 0.0, 1.0, 2, &device);
        let loss = |logits: Tensor<Train, 2>| (logits * projection.clone()).sum();
        let grads_f32 = GradientsParams::from_grads(loss(reference).backward(), &model);
        let grads_bf16 = GradientsParams::from_grads(loss(mixed).backward(), &mixed_model);
        let first = first_layer(&mixed_model);
        let a = grads_f32.get::<Inner, 4>(first.id).expect("f32 gradient");
        let b = grads_bf16
            .get::<Inner, 4>(first.id)
            .expect("gradient through the bf16 casts");
        assert_eq!(b.dtype(), DType::F32);
        let similarity = cosine(&values(a), &values(b));
        eprintln!("first layer's gradient: cosine {similarity}");
        // 0.94-0.9999 for the ResNet stem over 150 random draws (its gradient
        // passes ReLU kinks that bf16 rounding moves), 0.99998 for the ViT
        // patch embedding; a wrong or missing path is far off.
        assert!(similarity > 0.8, "gradient cosine {similarity}");

        let mut optimizer = SgdConfig::new().init::<Train, Model<Train>>();
        let stepped = optimizer.step(0.1, mixed_model, grads_bf16);
        let (precision, first_dtype) = match &stepped {
            Model::ResNet(m) => (m.compute.precision, m.conv1.weight.val().dtype()),
            Model::Vit(m) => (m.compute.precision, m.conv_proj.weight.val().dtype()),
        };
        assert_eq!(precision, Precision::Bf16);
        assert_eq!(first_dtype, DType::F32);
    }

    #[test]
    fn bf16_compute_follows_f32_and_trains_the_f32_weights_resnet() {
        check_bf16(tiny_resnet(), |m| match m {
            Model::ResNet(r) => r.conv1.weight.clone(),
            Model::Vit(_) => unreachable!(),
        });
    }

    #[test]
    fn bf16_compute_follows_f32_and_trains_the_f32_weights_vit() {
        check_bf16(tiny_vit(), |m| match m {
            Model::Vit(v) => v.conv_proj.weight.clone(),
            Model::ResNet(_) => unreachable!(),
        });
    }

    #[test]
    fn f32_is_the_plain_forward_and_names_parse() {
        let model = tiny_resnet();
        let x = Tensor::<Train, 4>::ones([2, 3, 8, 8], &Default::default());
        let plain = values(model.forward(x.clone()));
        let same = values(model.with_precision(Precision::F32).forward(x));
        assert_eq!(plain, same);
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert_eq!(Precision::Bf16.to_string(), "bf16");
        assert!("fp8"
            .parse::<Precision>()
            .unwrap_err()
            .contains("f32 or bf16"));
    }
}
