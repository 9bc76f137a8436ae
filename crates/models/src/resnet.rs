//! ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottlenecks, v1.5:
//! stride on the 3x3 conv) with torchvision's module names, so PyTorch
//! state dicts load key for key.
//!
//! Options beyond torchvision: ffcv BlurPool, a small-image stem (3x3 conv,
//! stride 1, no max-pool) for 28-32 px data, any number of input channels
//! (Fashion-MNIST can use `in_channels = 1` directly instead of replicating
//! the grey channel three times), and a base `width` (torchvision: 64) so
//! tests and smoke runs can use tiny networks.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::Tensor;

use crate::blurpool::MaybeBlurConv2d;
use crate::norm::batch_norm;
use crate::precision::Compute;
use crate::taps::{join_name, Taps};
use crate::weight_layer::{HasWeightLayers, ModuleInfo, WeightLayer};
use crate::ModelError;

/// Names of the four residual stages, as in torchvision.
pub const STAGES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];

/// Shape of a ResNet.
#[derive(Config, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Residual blocks per stage: `[2, 2, 2, 2]` for ResNet-18, `[3, 4, 6, 3]` for ResNet-50.
    pub blocks: [usize; 4],
    /// Bottleneck blocks (ResNet-50 and deeper) instead of basic blocks.
    pub bottleneck: bool,
    /// Output classes of `fc`.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Channels of the input image.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Channels of the stem and of `layer1` (before bottleneck expansion);
    /// later stages double it. torchvision: 64.
    #[config(default = 64)]
    pub width: usize,
    /// Wrap strided convs with ffcv's BlurPool.
    #[config(default = false)]
    pub blurpool: bool,
    /// 3x3 stride-1 stem without max-pool, for 28-32 px images.
    #[config(default = false)]
    pub small_stem: bool,
}

impl ResNetConfig {
    /// torchvision's `resnet18`.
    pub fn resnet18(num_classes: usize) -> Self {
        Self::new([2, 2, 2, 2], false).with_num_classes(num_classes)
    }

    /// torchvision's `resnet50`.
    pub fn resnet50(num_classes: usize) -> Self {
        Self::new([3, 4, 6, 3], true).with_num_classes(num_classes)
    }

    /// Output channels per input channel of a block's last conv.
    pub fn expansion(&self) -> usize {
        if self.bottleneck {
            4
        } else {
            1
        }
    }

    /// torchvision's name for the depth (`resnet18`, `resnet50`, ...), or a
    /// descriptive one for other block counts.
    pub fn depth_name(&self) -> String {
        let layers_per_block = if self.bottleneck { 3 } else { 2 };
        let depth = 2 + layers_per_block * self.blocks.iter().sum::<usize>();
        format!("resnet{depth}")
    }

    /// A short description, e.g. `resnet18 (blurpool, 1000 classes)`.
    pub fn describe(&self) -> String {
        let mut traits = Vec::new();
        if self.blurpool {
            traits.push("blurpool".to_string());
        }
        if self.small_stem {
            traits.push("small stem".to_string());
        }
        if self.width != 64 {
            traits.push(format!("width {}", self.width));
        }
        if self.in_channels != 3 {
            traits.push(format!("{} input channels", self.in_channels));
        }
        traits.push(format!("{} classes", self.num_classes));
        format!("{} ({})", self.depth_name(), traits.join(", "))
    }

    /// Checks that the numbers describe a network that can be built.
    pub fn validate(&self) -> Result<(), ModelError> {
        let zero = [
            ("num_classes", self.num_classes),
            ("in_channels", self.in_channels),
            ("width", self.width),
        ]
        .into_iter()
        .find(|(_, v)| *v == 0);
        if let Some((field, _)) = zero {
            return Err(ModelError::InvalidConfig(format!(
                "ResNet {field} must be > 0"
            )));
        }
        if self.blocks.contains(&0) {
            return Err(ModelError::InvalidConfig(format!(
                "every ResNet stage needs at least one block, got {:?}",
                self.blocks
            )));
        }
        Ok(())
    }

    /// Builds the network with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>, ModelError> {
        self.validate()?;
        let (kernel, stride) = if self.small_stem { (3, 1) } else { (7, 2) };
        let conv1 = conv2d(self.in_channels, self.width, kernel, stride, device);
        let maxpool = (!self.small_stem).then(|| {
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init()
        });

        let mut in_channels = self.width;
        let mut stages = Vec::with_capacity(4);
        for (stage, &count) in self.blocks.iter().enumerate() {
            let planes = self.width << stage;
            let first_stride = if stage == 0 { 1 } else { 2 };
            let blocks: Vec<_> = (0..count)
                .map(|i| {
                    let stride = if i == 0 { first_stride } else { 1 };
                    let block = ResidualBlock::new(self, in_channels, planes, stride, device);
                    in_channels = planes * self.expansion();
                    block
                })
                .collect();
            stages.push(blocks);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<ResidualBlock<B>>; 4] = stages
            .try_into()
            .map_err(|_| ModelError::InvalidConfig("ResNet needs four stages".into()))?;

        Ok(ResNet {
            conv1,
            // Burn's BatchNorm starts at weight 1, bias 0, as torchvision sets it.
            bn1: BatchNormConfig::new(self.width).init(device),
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            // torchvision leaves `fc` at nn.Linear's default, U(-1/sqrt(fan_in),
            // 1/sqrt(fan_in)) for weight and bias, which is Burn's default too.
            fc: LinearConfig::new(in_channels, self.num_classes).init(device),
            compute: Compute::default(),
        })
    }
}

/// torchvision `resnet.py`'s init for every Conv2d,
/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`:
/// N(0, 2 / (out_channels * kh * kw)).
pub fn kaiming_fan_out_relu() -> Initializer {
    Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: true,
    }
}

/// A bias-free square conv as torchvision's ResNet builds it: padding
/// `kernel / 2` and [`kaiming_fan_out_relu`] weights.
pub fn conv2d<B: Backend>(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let padding = kernel / 2;
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .with_initializer(kaiming_fan_out_relu())
        .init(device)
}

/// A ResNet; field names are torchvision's module names.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    /// Absent with the small-image stem.
    pub maxpool: Option<MaxPool2d>,
    pub layer1: Vec<ResidualBlock<B>>,
    pub layer2: Vec<ResidualBlock<B>>,
    pub layer3: Vec<ResidualBlock<B>>,
    pub layer4: Vec<ResidualBlock<B>>,
    pub fc: Linear<B>,
    /// How convolutions and the classifier compute: precision and kernels
    /// (a run setting, not saved with the weights; f32, direct when built).
    #[module(skip)]
    pub compute: Compute,
}

/// A basic block (`conv1`, `conv2`) or a bottleneck (`conv1`..`conv3`).
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    pub conv1: MaybeBlurConv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: MaybeBlurConv2d<B>,
    pub bn2: BatchNorm<B>,
    /// Bottlenecks only.
    pub conv3: Option<MaybeBlurConv2d<B>>,
    pub bn3: Option<BatchNorm<B>>,
    /// Projection shortcut when the shape changes.
    pub downsample: Option<Downsample<B>>,
}

/// torchvision's `downsample = Sequential(conv1x1, BatchNorm2d)`; its keys
/// `downsample.0` / `downsample.1` are mapped to `conv` / `bn` on load.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: MaybeBlurConv2d<B>,
    pub bn: BatchNorm<B>,
}

impl<B: Backend> ResidualBlock<B> {
    fn new(
        config: &ResNetConfig,
        in_channels: usize,
        planes: usize,
        stride: usize,
        device: &B::Device,
    ) -> Self {
        let blur = config.blurpool;
        let out_channels = planes * config.expansion();
        let conv = |i, o, k, s| MaybeBlurConv2d::new(i, o, k, s, blur, device);
        let bn = |c| BatchNormConfig::new(c).init(device);
        let downsample = (stride != 1 || in_channels != out_channels).then(|| Downsample {
            conv: conv(in_channels, out_channels, 1, stride),
            bn: bn(out_channels),
        });
        if config.bottleneck {
            Self {
                conv1: conv(in_channels, planes, 1, 1),
                bn1: bn(planes),
                conv2: conv(planes, planes, 3, stride),
                bn2: bn(planes),
                conv3: Some(conv(planes, out_channels, 1, 1)),
                bn3: Some(bn(out_channels)),
                downsample,
            }
        } else {
            Self {
                conv1: conv(in_channels, planes, 3, stride),
                bn1: bn(planes),
                conv2: conv(planes, planes, 3, 1),
                bn2: bn(planes),
                conv3: None,
                bn3: None,
                downsample,
            }
        }
    }

    /// The block's convs with their PyTorch names (relative to the block).
    fn convs(&self) -> Vec<(&'static str, &MaybeBlurConv2d<B>)> {
        let mut convs = vec![("conv1", &self.conv1), ("conv2", &self.conv2)];
        if let Some(conv3) = &self.conv3 {
            convs.push(("conv3", conv3));
        }
        if let Some(downsample) = &self.downsample {
            convs.push(("downsample.0", &downsample.conv));
        }
        convs
    }

    fn forward(
        &self,
        x: Tensor<B, 4>,
        name: &str,
        compute: Compute,
        taps: &mut Taps<B>,
    ) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(downsample) => {
                let prefix = join_name(name, "downsample");
                let y = tap_conv(&downsample.conv, x.clone(), compute, &prefix, "0", taps);
                let y = taps.offer_in(&prefix, "1", batch_norm(&downsample.bn, y));
                taps.offer(&prefix, y)
            }
            None => x.clone(),
        };
        let y = tap_conv(&self.conv1, x, compute, name, "conv1", taps);
        let y = relu(taps.offer_in(name, "bn1", batch_norm(&self.bn1, y)));
        let y = tap_conv(&self.conv2, y, compute, name, "conv2", taps);
        let mut y = taps.offer_in(name, "bn2", batch_norm(&self.bn2, y));
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            let z = tap_conv(conv3, relu(y), compute, name, "conv3", taps);
            y = taps.offer_in(name, "bn3", batch_norm(bn3, z));
        }
        taps.offer(name, relu(y + identity))
    }

    fn push_modules(&self, name: &str, modules: &mut Vec<ModuleInfo>) {
        let kind = if self.conv3.is_some() {
            "Bottleneck"
        } else {
            "BasicBlock"
        };
        modules.push(ModuleInfo::new(name, kind));
        // Each conv is followed by its batch norm, as in torchvision.
        for (conv_name, conv) in self.convs() {
            let norm_name = match conv_name {
                "downsample.0" => {
                    modules.push(ModuleInfo::new(join_name(name, "downsample"), "Sequential"));
                    "downsample.1".to_string()
                }
                _ => conv_name.replace("conv", "bn"),
            };
            push_conv_modules(&join_name(name, conv_name), conv, modules);
            modules.push(ModuleInfo::new(join_name(name, &norm_name), "BatchNorm2d"));
        }
    }
}

/// Runs a conv slot and offers its output under the slot's name and, when
/// BlurPool-wrapped, also under the inner `.conv` (the same tensor).
fn tap_conv<B: Backend>(
    conv: &MaybeBlurConv2d<B>,
    x: Tensor<B, 4>,
    compute: Compute,
    prefix: &str,
    child: &str,
    taps: &mut Taps<B>,
) -> Tensor<B, 4> {
    let y = taps.offer_in(prefix, child, conv.forward(x, compute));
    match conv {
        MaybeBlurConv2d::Plain(_) => y,
        MaybeBlurConv2d::Blurred(_) => taps.offer_in(&join_name(prefix, child), "conv", y),
    }
}

fn push_conv_modules<B: Backend>(
    name: &str,
    conv: &MaybeBlurConv2d<B>,
    modules: &mut Vec<ModuleInfo>,
) {
    match conv {
        MaybeBlurConv2d::Plain(_) => modules.push(ModuleInfo::new(name, "Conv2d")),
        MaybeBlurConv2d::Blurred(_) => {
            modules.push(ModuleInfo::new(name, "BlurPoolConv2d"));
            modules.push(ModuleInfo::new(join_name(name, "conv"), "Conv2d"));
        }
    }
}

impl<B: Backend> ResNet<B> {
    /// The configuration this network was built from (read off its shapes).
    pub fn config(&self) -> ResNetConfig {
        let [width, in_channels, _, _] = self.conv1.weight.dims();
        let first = &self.layer1[0];
        let blurpool = self
            .stages()
            .iter()
            .flat_map(|(_, blocks)| blocks.iter())
            .flat_map(|block| block.convs())
            .any(|(_, conv)| matches!(conv, MaybeBlurConv2d::Blurred(_)));
        ResNetConfig {
            blocks: self.stages().map(|(_, blocks)| blocks.len()),
            bottleneck: first.conv3.is_some(),
            num_classes: self.fc.weight.dims()[1],
            in_channels,
            width,
            blurpool,
            small_stem: self.maxpool.is_none(),
        }
    }

    fn stages(&self) -> [(&'static str, &Vec<ResidualBlock<B>>); 4] {
        [
            (STAGES[0], &self.layer1),
            (STAGES[1], &self.layer2),
            (STAGES[2], &self.layer3),
            (STAGES[3], &self.layer4),
        ]
    }

    /// Logits `[batch, num_classes]` for images `[batch, channels, h, w]`.
    ///
    /// Batch norm uses batch statistics on an autodiff backend and running
    /// statistics otherwise (Burn's convention), so evaluate on the inner
    /// backend (`model.valid()`).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_tapped(x, &mut Taps::none())
    }

    /// Forward pass offering every module output to `taps`.
    pub fn forward_tapped(&self, x: Tensor<B, 4>, taps: &mut Taps<B>) -> Tensor<B, 2> {
        let compute = self.compute;
        let x = taps.offer("conv1", compute.conv2d(&self.conv1, x));
        let mut x = relu(taps.offer("bn1", batch_norm(&self.bn1, x)));
        if let Some(maxpool) = &self.maxpool {
            x = taps.offer("maxpool", maxpool.forward(x));
        }
        for (stage, blocks) in self.stages() {
            for (i, block) in blocks.iter().enumerate() {
                x = block.forward(x, &format!("{stage}.{i}"), compute, taps);
            }
            x = taps.offer(stage, x);
        }
        let pooled = taps.offer("avgpool", adaptive_avg_pool2d(x, [1, 1]));
        let [batch, channels, _, _] = pooled.dims();
        let logits = compute.linear(&self.fc, pooled.reshape([batch, channels]));
        taps.offer("fc", logits)
    }

    /// Checks that `dims` is an image batch this network accepts.
    pub fn check_input(&self, dims: &[usize]) -> Result<(), ModelError> {
        let channels = self.conv1.weight.dims()[1];
        let reason = match dims {
            [_, c, _, _] if *c != channels => format!("expected {channels} channels"),
            [0, _, _, _] => "empty batch".to_string(),
            [_, _, h, w] if *h < 1 || *w < 1 => "empty image".to_string(),
            [_, _, _, _] => return Ok(()),
            _ => format!("expected [batch, {channels}, height, width]"),
        };
        Err(ModelError::InputShape {
            found: dims.to_vec(),
            reason,
        })
    }
}

impl<B: Backend> HasWeightLayers<B> for ResNet<B> {
    fn weight_layers(&self) -> Vec<WeightLayer<B>> {
        let mut candidates = vec![WeightLayer::from_conv("conv1", &self.conv1)];
        for (stage, blocks) in self.stages() {
            for (i, block) in blocks.iter().enumerate() {
                for (conv_name, conv) in block.convs() {
                    let name = format!("{stage}.{i}.{conv_name}{}", conv.weight_module_suffix());
                    candidates.push(WeightLayer::from_conv(name, conv.conv()));
                }
            }
        }
        candidates.push(WeightLayer::from_linear("fc", &self.fc));
        candidates
    }

    fn modules(&self) -> Vec<ModuleInfo> {
        let mut modules = vec![
            ModuleInfo::new("conv1", "Conv2d"),
            ModuleInfo::new("bn1", "BatchNorm2d"),
        ];
        if self.maxpool.is_some() {
            modules.push(ModuleInfo::new("maxpool", "MaxPool2d"));
        }
        for (stage, blocks) in self.stages() {
            modules.push(ModuleInfo::new(stage, "Sequential"));
            for (i, block) in blocks.iter().enumerate() {
                block.push_modules(&format!("{stage}.{i}"), &mut modules);
            }
        }
        modules.push(ModuleInfo::new("avgpool", "AdaptiveAvgPool2d"));
        modules.push(ModuleInfo::new("fc", "Linear"));
        modules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tiny(blurpool: bool) -> ResNet<Flex> {
        ResNetConfig::resnet18(10)
            .with_width(16)
            .with_blurpool(blurpool)
            .init(&Default::default())
            .unwrap()
    }

    #[test]
    fn config_is_read_back_from_the_built_network() {
        let config = ResNetConfig::resnet50(7)
            .with_width(4)
            .with_in_channels(1)
            .with_small_stem(true)
            .with_blurpool(true);
        let model: ResNet<Flex> = config.init(&Default::default()).unwrap();
        assert_eq!(model.config(), config);
    }

    #[test]
    fn resnet18_has_21_topographic_layers_with_blurpool_names() {
        let names: Vec<String> = tiny(true)
            .weight_layers()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names.len(), 21);
        assert_eq!(names[0], "conv1");
        assert!(names.contains(&"layer1.0.conv1".to_string()));
        assert!(names.contains(&"layer2.0.conv1.conv".to_string()));
        assert!(names.contains(&"layer2.0.downsample.0.conv".to_string()));
        assert!(names.contains(&"layer2.0.conv2".to_string()));
        assert_eq!(names[20], "fc");
    }

    #[test]
    fn every_candidate_is_a_listed_module() {
        let model = tiny(true);
        let modules: Vec<String> = model.modules().into_iter().map(|m| m.name).collect();
        for candidate in model.weight_layers() {
            assert!(modules.contains(&candidate.name), "{}", candidate.name);
        }
        assert!(modules.contains(&"layer2.0.downsample.1".to_string()));
        assert!(modules.contains(&"layer3.1.bn2".to_string()));
    }

    #[test]
    fn zero_width_is_rejected() {
        let err = ResNetConfig::resnet18(10)
            .with_width(0)
            .init::<Flex>(&Default::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("width"), "{err}");
    }

    #[test]
    fn wrong_channel_count_is_an_error_not_a_panic() {
        let model = tiny(false);
        let x = Tensor::<Flex, 4>::zeros([1, 1, 8, 8], &Default::default());
        let err = model.check_input(&x.dims()).err().unwrap();
        assert!(err.to_string().contains("3 channels"), "{err}");
    }
}
