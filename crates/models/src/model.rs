//! One type for every supported network, so the trainer and the CLI can
//! hold "a model" chosen at run time (from a flag or a checkpoint).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::precision::{Compute, ConvChoice, Precision};
use crate::resnet::{ResNet, ResNetConfig};
use crate::taps::{TappedOutput, Taps};
use crate::vit::{VisionTransformer, VitConfig};
use crate::weight_layer::{HasWeightLayers, ModuleInfo, WeightLayer};
use crate::ModelError;

/// Names accepted by [`Architecture::from_name`].
pub const ARCHITECTURE_NAMES: [&str; 3] = ["resnet18", "resnet50", "vit_b_32"];

/// What to build: a ResNet or a ViT and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum Architecture {
    ResNet(ResNetConfig),
    Vit(VitConfig),
}

impl Architecture {
    /// torchvision's `resnet18`, `resnet50` or `vit_b_32` with `num_classes` outputs.
    pub fn from_name(name: &str, num_classes: usize) -> Result<Self, ModelError> {
        match name {
            "resnet18" => Ok(Self::ResNet(ResNetConfig::resnet18(num_classes))),
            "resnet50" => Ok(Self::ResNet(ResNetConfig::resnet50(num_classes))),
            "vit_b_32" => Ok(Self::Vit(VitConfig::vit_b_32(num_classes))),
            other => Err(ModelError::InvalidConfig(format!(
                "unknown architecture '{other}'; known: {}",
                ARCHITECTURE_NAMES.join(", ")
            ))),
        }
    }

    /// A short description, e.g. `resnet18 (blurpool, 1000 classes)`.
    pub fn describe(&self) -> String {
        match self {
            Self::ResNet(config) => config.describe(),
            Self::Vit(config) => config.describe(),
        }
    }

    /// Output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::ResNet(config) => config.num_classes,
            Self::Vit(config) => config.num_classes,
        }
    }

    /// torchvision's name of the classification head (the last Linear).
    pub fn head_name(&self) -> &'static str {
        match self {
            Self::ResNet(_) => "fc",
            Self::Vit(_) => "heads.head",
        }
    }

    /// Builds the network with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Model<B>, ModelError> {
        Ok(match self {
            Self::ResNet(config) => Model::ResNet(config.init(device)?),
            Self::Vit(config) => Model::Vit(config.init(device)?),
        })
    }
}

/// A ResNet or a ViT.
#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    ResNet(ResNet<B>),
    Vit(VisionTransformer<B>),
}

impl<B: Backend> Model<B> {
    /// The architecture this network was built from (read off its shapes).
    pub fn architecture(&self) -> Architecture {
        match self {
            Self::ResNet(m) => Architecture::ResNet(m.config()),
            Self::Vit(m) => Architecture::Vit(m.config()),
        }
    }

    /// The same network computing as `compute` says.
    pub fn with_compute(self, compute: Compute) -> Self {
        match self {
            Self::ResNet(mut m) => {
                m.compute = compute;
                Self::ResNet(m)
            }
            Self::Vit(mut m) => {
                m.compute = compute;
                Self::Vit(m)
            }
        }
    }

    /// How the network computes.
    pub fn compute(&self) -> Compute {
        match self {
            Self::ResNet(m) => m.compute,
            Self::Vit(m) => m.compute,
        }
    }

    /// The same network computing its convolutions, linear layers and
    /// matrix products in `precision` (parameters stay f32).
    pub fn with_precision(self, precision: Precision) -> Self {
        let compute = self.compute();
        self.with_compute(Compute {
            precision,
            ..compute
        })
    }

    /// The same network running its convolutions with the kernels of
    /// `conv_kernels`.
    pub fn with_conv_kernels(self, conv_kernels: ConvChoice) -> Self {
        let compute = self.compute();
        self.with_compute(Compute {
            conv_kernels,
            ..compute
        })
    }

    /// Logits `[batch, num_classes]`. Panics (inside Burn) on an input the
    /// network cannot take; call [`Model::check_input`] once beforehand.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Self::ResNet(m) => m.forward(x),
            Self::Vit(m) => m.forward(x),
        }
    }

    /// Forward pass offering every module output to `taps`.
    pub fn forward_tapped(&self, x: Tensor<B, 4>, taps: &mut Taps<B>) -> Tensor<B, 2> {
        match self {
            Self::ResNet(m) => m.forward_tapped(x, taps),
            Self::Vit(m) => m.forward_tapped(x, taps),
        }
    }

    /// Checks that `dims` is an image batch this network accepts.
    pub fn check_input(&self, dims: &[usize]) -> Result<(), ModelError> {
        match self {
            Self::ResNet(m) => m.check_input(dims),
            Self::Vit(m) => m.check_input(dims),
        }
    }

    /// Logits plus the outputs of the named modules, in forward order;
    /// unknown names are an error listing the valid ones.
    pub fn forward_with_taps(
        &self,
        x: Tensor<B, 4>,
        names: &[String],
    ) -> Result<TappedOutput<B>, ModelError> {
        self.check_input(&x.dims())?;
        let mut taps = Taps::for_modules(names, &self.modules())?;
        let logits = self.forward_tapped(x, &mut taps);
        Ok((logits, taps.into_captured()))
    }
}

impl<B: Backend> HasWeightLayers<B> for Model<B> {
    fn weight_layers(&self) -> Vec<WeightLayer<B>> {
        match self {
            Self::ResNet(m) => m.weight_layers(),
            Self::Vit(m) => m.weight_layers(),
        }
    }

    fn modules(&self) -> Vec<ModuleInfo> {
        match self {
            Self::ResNet(m) => m.modules(),
            Self::Vit(m) => m.modules(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_build_the_torchvision_shapes() {
        let resnet50 = Architecture::from_name("resnet50", 10).unwrap();
        assert_eq!(resnet50.describe(), "resnet50 (10 classes)");
        let vit = Architecture::from_name("vit_b_32", 1000).unwrap();
        assert_eq!(vit.describe(), "vit_b_32 (1000 classes)");
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = Architecture::from_name("alexnet", 10).err().unwrap();
        assert!(
            err.to_string().contains("resnet18, resnet50, vit_b_32"),
            "{err}"
        );
    }

    #[test]
    fn architecture_round_trips_through_json() {
        let arch = Architecture::from_name("resnet18", 10).unwrap();
        let json = serde_json::to_string(&arch).unwrap();
        assert_eq!(serde_json::from_str::<Architecture>(&json).unwrap(), arch);
    }
}
