//! Vision Transformer (ViT-B/32 and smaller) with torchvision's module
//! names: `conv_proj`, `class_token`, `encoder.pos_embedding`,
//! `encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp}`,
//! `encoder.ln`, `heads.head`.
//!
//! torchvision's `nn.MultiheadAttention` keeps the query/key/value
//! projections in one `in_proj_weight [3*dim, dim]` (PyTorch layout, not a
//! `Linear`), so [`SelfAttention`] stores exactly that. Dropout is left out:
//! torchvision's ViT defaults to 0 and TopoNets' ViTs did not use it.
//! Initialisation follows torchvision's `VisionTransformer` (see
//! [`VitConfig::init`]).

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor};

use crate::precision::Compute;
use crate::taps::{join_name, Taps};
use crate::weight_layer::{HasWeightLayers, ModuleInfo, WeightLayer};
use crate::ModelError;

/// torchvision's layer norm epsilon for ViTs.
const LAYER_NORM_EPS: f64 = 1e-6;

/// Shape of a Vision Transformer.
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Square input image side, in pixels.
    #[config(default = 224)]
    pub image_size: usize,
    /// Square patch side; `image_size` must be a multiple of it.
    #[config(default = 32)]
    pub patch_size: usize,
    /// Channels of the input image.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Token width (torchvision's `hidden_dim`).
    #[config(default = 768)]
    pub hidden_dim: usize,
    /// Encoder blocks (torchvision's `num_layers`).
    #[config(default = 12)]
    pub num_layers: usize,
    /// Attention heads; must divide `hidden_dim`.
    #[config(default = 12)]
    pub num_heads: usize,
    /// Hidden width of each block's MLP.
    #[config(default = 3072)]
    pub mlp_dim: usize,
    /// Output classes of `heads.head`.
    #[config(default = 1000)]
    pub num_classes: usize,
}

impl VitConfig {
    /// torchvision's `vit_b_32`.
    pub fn vit_b_32(num_classes: usize) -> Self {
        Self::new().with_num_classes(num_classes)
    }

    /// Patches per image side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Tokens per image: one per patch plus the class token.
    pub fn seq_length(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }

    /// A short description, e.g. `vit_b_32 (1000 classes)`.
    pub fn describe(&self) -> String {
        let base = VitConfig::vit_b_32(self.num_classes);
        if *self == base {
            format!("vit_b_32 ({} classes)", self.num_classes)
        } else {
            format!(
                "vit (image {}, patch {}, dim {}, {} layers, {} heads, mlp {}, {} input channels, {} classes)",
                self.image_size,
                self.patch_size,
                self.hidden_dim,
                self.num_layers,
                self.num_heads,
                self.mlp_dim,
                self.in_channels,
                self.num_classes
            )
        }
    }

    /// Checks that the numbers describe a network that can be built.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fields = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("hidden_dim", self.hidden_dim),
            ("num_heads", self.num_heads),
            ("mlp_dim", self.mlp_dim),
            ("num_classes", self.num_classes),
        ];
        if let Some((field, _)) = fields.into_iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::InvalidConfig(format!(
                "ViT {field} must be > 0"
            )));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::InvalidConfig(format!(
                "ViT image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if !self.hidden_dim.is_multiple_of(self.num_heads) {
            return Err(ModelError::InvalidConfig(format!(
                "ViT hidden_dim {} is not divisible by num_heads {}",
                self.hidden_dim, self.num_heads
            )));
        }
        Ok(())
    }

    /// Builds the network with torchvision's `VisionTransformer` init:
    /// `conv_proj` trunc_normal(std sqrt(1 / fan_in)) with zero bias; MLP
    /// linears Xavier-uniform with N(0, 1e-6) biases (`MLPBlock`);
    /// `nn.MultiheadAttention`'s Xavier-uniform `in_proj_weight`, zero
    /// `in_proj_bias` and `out_proj.bias`, `out_proj.weight` at nn.Linear's
    /// default; position embedding N(0, 0.02); zero class token and head;
    /// LayerNorm 1 / 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<VisionTransformer<B>, ModelError> {
        self.validate()?;
        let dim = self.hidden_dim;
        let patch = self.patch_size;
        let layer_norm = || {
            LayerNormConfig::new(dim)
                .with_epsilon(LAYER_NORM_EPS)
                .init(device)
        };
        let xavier = Initializer::XavierUniform { gain: 1.0 };
        let mlp_linear = |input, output| Linear {
            weight: xavier.init_with([input, output], Some(input), Some(output), device),
            bias: Some(
                Initializer::Normal {
                    mean: 0.0,
                    std: 1e-6,
                }
                .init([output], device),
            ),
        };
        let layers = (0..self.num_layers)
            .map(|_| EncoderBlock {
                ln_1: layer_norm(),
                self_attention: SelfAttention {
                    in_proj_weight: xavier.init_with(
                        [3 * dim, dim],
                        Some(dim),
                        Some(3 * dim),
                        device,
                    ),
                    in_proj_bias: Initializer::Zeros.init([3 * dim], device),
                    out_proj: Linear {
                        bias: Some(Initializer::Zeros.init([dim], device)),
                        ..LinearConfig::new(dim, dim).init(device)
                    },
                    num_heads: self.num_heads,
                },
                ln_2: layer_norm(),
                mlp: Mlp {
                    linear_1: mlp_linear(dim, self.mlp_dim),
                    linear_2: mlp_linear(self.mlp_dim, dim),
                },
            })
            .collect();
        let patch_fan_in = self.in_channels * patch * patch;
        let conv_proj = Conv2d {
            weight: Param::from_tensor(trunc_normal(
                [dim, self.in_channels, patch, patch],
                (1.0 / patch_fan_in as f64).sqrt(),
                device,
            )),
            ..Conv2dConfig::new([self.in_channels, dim], [patch, patch])
                .with_stride([patch, patch])
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        Ok(VisionTransformer {
            conv_proj,
            class_token: Initializer::Zeros.init([1, 1, dim], device),
            encoder: Encoder {
                pos_embedding: Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init([1, self.seq_length(), dim], device),
                layers,
                ln: layer_norm(),
            },
            heads: Heads {
                head: LinearConfig::new(dim, self.num_classes)
                    .with_initializer(Initializer::Zeros)
                    .init(device),
            },
            compute: Compute::default(),
        })
    }
}

/// PyTorch's `nn.init.trunc_normal_(std=std)`: N(0, std^2) truncated to its
/// default absolute bounds [-2, 2]; out-of-range draws are drawn again.
fn trunc_normal<B: Backend, const D: usize>(
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    const BOUND: f64 = 2.0;
    let draw = || Tensor::<B, D>::random(shape, Distribution::Normal(0.0, std), device);
    let mut values = draw();
    loop {
        let outside = values.clone().abs().greater_elem(BOUND);
        if !outside.clone().any().into_scalar().elem::<bool>() {
            return values;
        }
        values = values.mask_where(outside, draw());
    }
}

/// A Vision Transformer; field names are torchvision's module names.
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    /// Patch embedding, kernel = stride = patch size.
    pub conv_proj: Conv2d<B>,
    /// `[1, 1, dim]`.
    pub class_token: Param<Tensor<B, 3>>,
    pub encoder: Encoder<B>,
    pub heads: Heads<B>,
    /// How the patch projection, attention products and MLPs compute:
    /// precision and convolution kernels (a run setting, not saved with the
    /// weights; f32, direct when built).
    #[module(skip)]
    pub compute: Compute,
}

/// torchvision's `Encoder`; its layer keys `layers.encoder_layer_N` are
/// mapped to Burn's `layers.N` on load.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// `[1, seq_length, dim]`.
    pub pos_embedding: Param<Tensor<B, 3>>,
    pub layers: Vec<EncoderBlock<B>>,
    pub ln: LayerNorm<B>,
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct EncoderBlock<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub self_attention: SelfAttention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

/// `nn.MultiheadAttention` (batch first, self-attention only).
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// Query, key and value projections stacked, PyTorch layout `[3*dim, dim]`.
    pub in_proj_weight: Param<Tensor<B, 2>>,
    /// `[3*dim]`.
    pub in_proj_bias: Param<Tensor<B, 1>>,
    pub out_proj: Linear<B>,
    pub num_heads: usize,
}

/// torchvision's `MLPBlock`: Linear, GELU, Linear. Its PyTorch keys are
/// `mlp.0` / `mlp.3` (torchvision >= 0.13) or `mlp.linear_1` /
/// `mlp.linear_2` (older); both load.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

/// torchvision's `heads = Sequential(OrderedDict(head=Linear))`.
#[derive(Module, Debug)]
pub struct Heads<B: Backend> {
    pub head: Linear<B>,
}

impl<B: Backend> SelfAttention<B> {
    fn forward(&self, x: Tensor<B, 3>, compute: Compute) -> Tensor<B, 3> {
        let [batch, tokens, dim] = x.dims();
        let heads = self.num_heads;
        let head_dim = dim / heads;
        let rows = x.reshape([batch * tokens, dim]);
        let weight = self.in_proj_weight.val();
        let bias = self.in_proj_bias.val();
        // Rows [k*dim, (k+1)*dim) of the stacked projection are q, k, v.
        let project = |k: usize| {
            let w = weight.clone().narrow(0, k * dim, dim);
            let b = bias.clone().narrow(0, k * dim, dim);
            (compute.matmul(rows.clone(), w.transpose()) + b.unsqueeze::<2>())
                .reshape([batch, tokens, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (project(0), project(1), project(2));
        let scores = compute.matmul(q, k.transpose()) / (head_dim as f64).sqrt();
        // Softmax in f32, as under PyTorch's autocast.
        let context = compute
            .matmul(softmax(scores, 3), v)
            .swap_dims(1, 2)
            .reshape([batch, tokens, dim]);
        compute.linear(&self.out_proj, context)
    }
}

impl<B: Backend> EncoderBlock<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        name: &str,
        compute: Compute,
        taps: &mut Taps<B>,
    ) -> Tensor<B, 3> {
        let y = taps.offer_in(name, "ln_1", self.ln_1.forward(x.clone()));
        let attention = join_name(name, "self_attention");
        let y = self.self_attention.forward(y, compute);
        let y = taps.offer_in(&attention, "out_proj", y);
        let x = taps.offer(&attention, y) + x;
        let y = taps.offer_in(name, "ln_2", self.ln_2.forward(x.clone()));
        let mlp = join_name(name, "mlp");
        let y = taps.offer_in(&mlp, "0", compute.linear(&self.mlp.linear_1, y));
        let y = taps.offer_in(&mlp, "3", compute.linear(&self.mlp.linear_2, gelu(y)));
        let y = taps.offer(&mlp, y);
        taps.offer(name, y + x)
    }
}

fn layer_name(index: usize) -> String {
    format!("encoder.layers.encoder_layer_{index}")
}

impl<B: Backend> VisionTransformer<B> {
    /// The configuration this network was built from (read off its shapes).
    pub fn config(&self) -> VitConfig {
        let [dim, in_channels, patch, _] = self.conv_proj.weight.dims();
        let seq_length = self.encoder.pos_embedding.dims()[1];
        let grid = ((seq_length.saturating_sub(1)) as f64).sqrt().round() as usize;
        let first = self.encoder.layers.first();
        VitConfig {
            image_size: grid * patch,
            patch_size: patch,
            in_channels,
            hidden_dim: dim,
            num_layers: self.encoder.layers.len(),
            num_heads: first.map_or(1, |l| l.self_attention.num_heads),
            mlp_dim: first.map_or(0, |l| l.mlp.linear_1.weight.dims()[1]),
            num_classes: self.heads.head.weight.dims()[1],
        }
    }

    /// Logits `[batch, num_classes]` for images `[batch, channels, size, size]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_tapped(x, &mut Taps::none())
    }

    /// Forward pass offering every module output to `taps`.
    pub fn forward_tapped(&self, x: Tensor<B, 4>, taps: &mut Taps<B>) -> Tensor<B, 2> {
        let compute = self.compute;
        let patches = taps.offer("conv_proj", compute.conv2d(&self.conv_proj, x));
        let [batch, dim, grid_h, grid_w] = patches.dims();
        let tokens = patches
            .reshape([batch, dim, grid_h * grid_w])
            .swap_dims(1, 2);
        let class_token = self.class_token.val().expand([batch, 1, dim]);
        let mut x = Tensor::cat(vec![class_token, tokens], 1) + self.encoder.pos_embedding.val();
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            x = layer.forward(x, &layer_name(i), compute, taps);
        }
        let x = taps.offer("encoder.layers", x);
        let x = taps.offer("encoder.ln", self.encoder.ln.forward(x));
        let x = taps.offer("encoder", x);
        let class_output = x.narrow(1, 0, 1).reshape([batch, dim]);
        let logits = compute.linear(&self.heads.head, class_output);
        let logits = taps.offer("heads.head", logits);
        taps.offer("heads", logits)
    }

    /// Checks that `dims` is an image batch this network accepts.
    pub fn check_input(&self, dims: &[usize]) -> Result<(), ModelError> {
        let config = self.config();
        let (c, s) = (config.in_channels, config.image_size);
        match dims {
            [n, ch, h, w] if *n > 0 && *ch == c && *h == s && *w == s => Ok(()),
            _ => Err(ModelError::InputShape {
                found: dims.to_vec(),
                reason: format!("expected [batch, {c}, {s}, {s}]"),
            }),
        }
    }
}

impl<B: Backend> HasWeightLayers<B> for VisionTransformer<B> {
    fn weight_layers(&self) -> Vec<WeightLayer<B>> {
        let mut candidates = vec![WeightLayer::from_conv("conv_proj", &self.conv_proj)];
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            let name = layer_name(i);
            candidates.push(WeightLayer::from_linear(
                format!("{name}.self_attention.out_proj"),
                &layer.self_attention.out_proj,
            ));
            candidates.push(WeightLayer::from_linear(
                format!("{name}.mlp.0"),
                &layer.mlp.linear_1,
            ));
            candidates.push(WeightLayer::from_linear(
                format!("{name}.mlp.3"),
                &layer.mlp.linear_2,
            ));
        }
        candidates.push(WeightLayer::from_linear("heads.head", &self.heads.head));
        candidates
    }

    fn modules(&self) -> Vec<ModuleInfo> {
        let mut modules = vec![
            ModuleInfo::new("conv_proj", "Conv2d"),
            ModuleInfo::new("encoder", "Encoder"),
            ModuleInfo::new("encoder.layers", "Sequential"),
        ];
        for i in 0..self.encoder.layers.len() {
            let name = layer_name(i);
            let child = |suffix: &str| join_name(&name, suffix);
            modules.extend([
                ModuleInfo::new(name.clone(), "EncoderBlock"),
                ModuleInfo::new(child("ln_1"), "LayerNorm"),
                ModuleInfo::new(child("self_attention"), "MultiheadAttention"),
                ModuleInfo::new(child("self_attention.out_proj"), "Linear"),
                ModuleInfo::new(child("ln_2"), "LayerNorm"),
                ModuleInfo::new(child("mlp"), "MLPBlock"),
                ModuleInfo::new(child("mlp.0"), "Linear"),
                ModuleInfo::new(child("mlp.3"), "Linear"),
            ]);
        }
        modules.extend([
            ModuleInfo::new("encoder.ln", "LayerNorm"),
            ModuleInfo::new("heads", "Sequential"),
            ModuleInfo::new("heads.head", "Linear"),
        ]);
        modules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tiny_config() -> VitConfig {
        VitConfig::new()
            .with_image_size(16)
            .with_patch_size(8)
            .with_hidden_dim(16)
            .with_num_layers(2)
            .with_num_heads(4)
            .with_mlp_dim(32)
            .with_num_classes(5)
    }

    #[test]
    fn config_is_read_back_from_the_built_network() {
        let config = tiny_config().with_in_channels(1);
        let model: VisionTransformer<Flex> = config.init(&Default::default()).unwrap();
        assert_eq!(model.config(), config);
    }

    #[test]
    fn heads_must_divide_the_width() {
        let err = tiny_config().with_num_heads(3).validate().err().unwrap();
        assert!(err.to_string().contains("num_heads"), "{err}");
    }

    #[test]
    fn wrong_image_size_is_an_error_not_a_panic() {
        let model: VisionTransformer<Flex> = tiny_config().init(&Default::default()).unwrap();
        let x = Tensor::<Flex, 4>::zeros([1, 3, 24, 24], &Default::default());
        let err = model.check_input(&x.dims()).err().unwrap();
        assert!(err.to_string().contains("[batch, 3, 16, 16]"), "{err}");
    }

    #[test]
    fn candidates_use_torchvision_names() {
        let model: VisionTransformer<Flex> = tiny_config().init(&Default::default()).unwrap();
        let names: Vec<String> = model.weight_layers().into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 1 + 3 * 2 + 1);
        assert_eq!(names[2], "encoder.layers.encoder_layer_0.mlp.0");
        assert_eq!(names[7], "heads.head");
    }
}
