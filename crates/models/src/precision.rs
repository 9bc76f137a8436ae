//! Mixed precision by hand: convolutions and linear layers computed in
//! bf16 while parameters, their gradients, the optimiser's state and every
//! other operation (batch norm, residual sums, the loss) stay in f32.
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
use serde::{Deserialize, Serialize};

/// The dtype convolutions and linear layers compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Convolutions and linear layers in bf16, the rest in f32.
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

    /// `conv.forward(x)`, computed in this precision (output in f32).
    pub fn conv2d<B: Backend>(self, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.compute_dtype() {
            None => conv.forward(x),
            Some(dtype) => cast_view(conv, dtype)
                .forward(x.cast(dtype))
                .cast(FloatDType::F32),
        }
    }

    /// `linear_layer.forward(x)`, computed in this precision (output in f32).
    pub fn linear<B: Backend, const D: usize>(
        self,
        linear_layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.compute_dtype() {
            None => linear_layer.forward(x),
            Some(dtype) => cast_view(linear_layer, dtype)
                .forward(x.cast(dtype))
                .cast(FloatDType::F32),
        }
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
    use crate::{Architecture, Model, ResNetConfig};
    use burn::backend::Autodiff;
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    use burn::tensor::{DType, Distribution};

    type Train = Autodiff<crate::CpuBackend>;

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

    #[test]
    fn bf16_compute_follows_f32_and_trains_the_f32_weights() {
        let device = Default::default();
        let model = tiny_resnet();
        let x = Tensor::<Train, 4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let reference = model.forward(x.clone());
        let mixed_model = model.clone().with_precision(Precision::Bf16).unwrap();
        let mixed = mixed_model.forward(x);
        let error = relative_error(&values(reference.clone()), &values(mixed.clone()));
        eprintln!("bf16 logits: relative error {error}");
        // Parameters and the output stay f32; bf16 keeps about 3 digits.
        assert_eq!(mixed.dtype(), DType::F32);
        let error = relative_error(&values(reference.clone()), &values(mixed.clone()));
        assert!(error > 0.0 && error < 0.05, "relative error {error}");

        // Gradients reach the f32 parameters through the casts. (A random
        // projection of the logits: their plain sum has a near-zero
        // gradient through train-mode batch norm, all rounding.)
        let projection =
            Tensor::<Train, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device);
        let loss = |logits: Tensor<Train, 2>| (logits * projection.clone()).sum();
        let grads_f32 = GradientsParams::from_grads(loss(reference).backward(), &model);
        let grads_bf16 = GradientsParams::from_grads(loss(mixed).backward(), &mixed_model);
        let Model::ResNet(resnet) = &mixed_model else {
            unreachable!()
        };
        for param in [&resnet.conv1.weight, &resnet.layer3[0].conv2.conv().weight] {
            let a = grads_f32
                .get::<crate::CpuBackend, 4>(param.id)
                .expect("f32 gradient");
            let b = grads_bf16
                .get::<crate::CpuBackend, 4>(param.id)
                .expect("gradient through the bf16 casts");
            assert_eq!(b.dtype(), DType::F32);
            let (a, b) = (values(a), values(b));
            let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
            let cosine = dot(&a, &b) / (dot(&a, &a) * dot(&b, &b)).sqrt();
            // 0.986 for conv1 when written; a wrong or missing path is far off.
            assert!(cosine > 0.95, "gradient cosine {cosine}");
        }
        let fc = grads_bf16.get::<crate::CpuBackend, 2>(resnet.fc.weight.id);
        assert!(fc.is_some(), "the classifier is trained too");

        // An optimiser step keeps the setting (and f32 weights).
        let mut optimizer = SgdConfig::new().init::<Train, Model<Train>>();
        let stepped = optimizer.step(0.1, mixed_model, grads_bf16);
        let Model::ResNet(resnet) = &stepped else {
            unreachable!()
        };
        assert_eq!(resnet.precision, Precision::Bf16);
        assert_eq!(resnet.conv1.weight.val().dtype(), DType::F32);
    }

    #[test]
    fn f32_is_the_plain_forward_and_names_parse() {
        let model = tiny_resnet();
        let x = Tensor::<Train, 4>::ones([2, 3, 8, 8], &Default::default());
        let plain = values(model.forward(x.clone()));
        let same = values(model.with_precision(Precision::F32).unwrap().forward(x));
        assert_eq!(plain, same);
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert_eq!(Precision::Bf16.to_string(), "bf16");
        assert!("fp8"
            .parse::<Precision>()
            .unwrap_err()
            .contains("f32 or bf16"));
    }
}
