//! A GPT language model (NanoGPT / GPT-2) with NanoGPT's module names:
//! `transformer.{wte, wpe, h.N.{ln_1, attn.{c_attn, c_proj}, ln_2,
//! mlp.{c_fc, c_proj}}, ln_f}` and `lm_head`, so NanoGPT state dicts load
//! key for key (see [`crate::gpt_state_dict`]).
//!
//! Pre-norm blocks, causal self-attention, exact (erf) GELU as NanoGPT's
//! `nn.GELU()`, layer norm epsilon 1e-5, optional biases (NanoGPT's
//! `bias=False` drops them from every Linear and LayerNorm), and the output
//! projection tied to the token embedding by default, as NanoGPT and GPT-2
//! do: a tied model has no `lm_head` parameter of its own and computes the
//! logits with `wte`'s weight. Dropout follows NanoGPT on the embeddings and
//! the residual branches; attention-probability dropout is left out (Burn's
//! fused attention has none), which only matters when `dropout > 0`.
//!
//! Every block's `mlp.c_fc` (`n_embd -> 4 n_embd`) is a topographic
//! candidate: TopoNets put TopoLoss on exactly these layers.
//!
//! For fine-tuning, [`Gpt::with_lora`] freezes all weights and adds LoRA
//! adapters ([`Lora`], [`LoraConfig`]) beside chosen Linear layers of every
//! block; [`Gpt::merge_lora`] folds them back into plain weights.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};

use serde::{Deserialize, Serialize};

use crate::taps::{join_name, Taps};
use crate::weight_layer::{HasWeightLayers, ModuleInfo, WeightLayer};
use crate::ModelError;

/// NanoGPT's layer norm epsilon (`F.layer_norm` default).
const LAYER_NORM_EPS: f64 = 1e-5;
/// NanoGPT's initialisation: N(0, 0.02) for Linear and Embedding weights.
const INIT_STD: f64 = 0.02;

/// Shape of a GPT; field names are NanoGPT's `GPTConfig`. Defaults are
/// NanoGPT's GPT-2 (124M) as TopoNets trained it.
#[derive(Config, Debug, PartialEq)]
pub struct GptConfig {
    /// Longest sequence (rows of `wpe`).
    #[config(default = 1024)]
    pub block_size: usize,
    /// Token ids are `0..vocab_size` (NanoGPT pads GPT-2's 50257 to 50304).
    #[config(default = 50304)]
    pub vocab_size: usize,
    /// Transformer blocks.
    #[config(default = 12)]
    pub n_layer: usize,
    /// Attention heads; must divide `n_embd`.
    #[config(default = 12)]
    pub n_head: usize,
    /// Token width.
    #[config(default = 768)]
    pub n_embd: usize,
    /// Biases in the Linear and LayerNorm layers (GPT-2: yes, NanoGPT's TopoNets: no).
    #[config(default = false)]
    pub bias: bool,
    /// Dropout probability on embeddings and residual branches, training only.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// `lm_head` shares `wte`'s weight (NanoGPT and GPT-2 do).
    #[config(default = true)]
    pub tie_weights: bool,
}

impl GptConfig {
    /// Width of the MLP's hidden layer, `mlp.c_fc`'s output: 4 x `n_embd`.
    pub fn mlp_dim(&self) -> usize {
        4 * self.n_embd
    }

    /// A short description, e.g. `gpt (4 layers, 4 heads, 128 dims, block 64, vocab 50304)`.
    pub fn describe(&self) -> String {
        format!(
            "gpt ({} layers, {} heads, {} dims, block {}, vocab {}{}{})",
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.block_size,
            self.vocab_size,
            if self.bias { ", bias" } else { "" },
            if self.tie_weights { "" } else { ", untied" },
        )
    }

    /// Checks that the numbers describe a network that can be built.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fields = [
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ];
        if let Some((field, _)) = fields.into_iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::InvalidConfig(format!(
                "GPT {field} must be > 0"
            )));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::InvalidConfig(format!(
                "GPT n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidConfig(format!(
                "GPT dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Builds the network with NanoGPT's initialisation: N(0, 0.02) weights,
    /// zero biases, and N(0, 0.02 / sqrt(2 n_layer)) for the residual
    /// projections (`c_proj`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Gpt<B>, ModelError> {
        self.validate()?;
        let dim = self.n_embd;
        let normal = |std: f64| Initializer::Normal { mean: 0.0, std };
        let residual_std = INIT_STD / (2.0 * self.n_layer as f64).sqrt();
        let linear = |input: usize, output: usize, std: f64| Linear {
            weight: normal(std).init_with([input, output], Some(input), Some(output), device),
            bias: self.bias.then(|| Initializer::Zeros.init([output], device)),
        };
        let layer_norm = || {
            LayerNormConfig::new(dim)
                .with_epsilon(LAYER_NORM_EPS)
                .with_bias(self.bias)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.dropout).init();
        let embedding = |rows: usize| {
            EmbeddingConfig::new(rows, dim)
                .with_initializer(normal(INIT_STD))
                .init(device)
        };
        let h = (0..self.n_layer)
            .map(|_| Block {
                ln_1: layer_norm(),
                attn: CausalSelfAttention {
                    c_attn: linear(dim, 3 * dim, INIT_STD),
                    c_proj: linear(dim, dim, residual_std),
                    c_attn_lora: None,
                    c_proj_lora: None,
                    resid_dropout: dropout(),
                    n_head: self.n_head,
                },
                ln_2: layer_norm(),
                mlp: Mlp {
                    c_fc: linear(dim, self.mlp_dim(), INIT_STD),
                    c_proj: linear(self.mlp_dim(), dim, residual_std),
                    c_fc_lora: None,
                    c_proj_lora: None,
                    dropout: dropout(),
                },
            })
            .collect();
        Ok(Gpt {
            transformer: Transformer {
                wte: embedding(self.vocab_size),
                wpe: embedding(self.block_size),
                drop: dropout(),
                h,
                ln_f: layer_norm(),
            },
            // NanoGPT's lm_head has no bias whatever `bias` says.
            lm_head: (!self.tie_weights).then(|| Linear {
                weight: normal(INIT_STD).init_with(
                    [dim, self.vocab_size],
                    Some(dim),
                    Some(self.vocab_size),
                    device,
                ),
                bias: None,
            }),
        })
    }
}

/// A GPT; field names are NanoGPT's module names.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    pub transformer: Transformer<B>,
    /// The output projection; `None` when tied to `transformer.wte`.
    pub lm_head: Option<Linear<B>>,
}

/// NanoGPT's `transformer = nn.ModuleDict(...)`.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// Token embedding `[vocab_size, n_embd]`.
    pub wte: Embedding<B>,
    /// Position embedding `[block_size, n_embd]`.
    pub wpe: Embedding<B>,
    pub drop: Dropout,
    pub h: Vec<Block<B>>,
    pub ln_f: LayerNorm<B>,
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: CausalSelfAttention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

/// Multi-head causal self-attention with the query, key and value
/// projections in one Linear (`c_attn`, `n_embd -> 3 n_embd`, in that order).
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    pub c_attn: Linear<B>,
    pub c_proj: Linear<B>,
    /// LoRA adapters of `c_attn` / `c_proj` (fine-tuning only).
    pub c_attn_lora: Option<Lora<B>>,
    pub c_proj_lora: Option<Lora<B>>,
    pub resid_dropout: Dropout,
    pub n_head: usize,
}

/// Linear, GELU, Linear.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `n_embd -> 4 n_embd`: the topographic layer of TopoNets.
    pub c_fc: Linear<B>,
    pub c_proj: Linear<B>,
    /// LoRA adapters of `c_fc` / `c_proj` (fine-tuning only).
    pub c_fc_lora: Option<Lora<B>>,
    pub c_proj_lora: Option<Lora<B>>,
    pub dropout: Dropout,
}

/// A low-rank adapter (LoRA, Hu et al. 2021) beside a frozen Linear layer:
/// adds `scale * x A B` to its output, `A` `[in, rank]`, `B` `[rank, out]`
/// (Burn's `[in, out]` orientation), `scale = alpha / rank`. `B` starts at
/// zero, so a fresh adapter leaves the model unchanged.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
}

impl<B: Backend> Lora<B> {
    fn new(input: usize, output: usize, config: &LoraConfig, device: &B::Device) -> Self {
        // PEFT's default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
        let bound = 1.0 / (input as f64).sqrt();
        Lora {
            lora_a: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([input, config.rank], device),
            lora_b: Initializer::Zeros.init([config.rank, output], device),
            scale: config.alpha / config.rank as f64,
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x.matmul(self.lora_a.val().unsqueeze::<3>())
            .matmul(self.lora_b.val().unsqueeze::<3>())
            * self.scale
    }

    /// `scale * A B`, the change of the adapted layer's `[in, out]` weight.
    fn weight_delta(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }
}

/// Block layers LoRA can adapt (names inside a block).
pub const LORA_TARGETS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// The `[lora]` section of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of every adapter.
    pub rank: usize,
    /// Scale numerator: adapters add `alpha / rank * x A B`.
    pub alpha: f64,
    /// Which layers of every block get an adapter, from [`LORA_TARGETS`].
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Checks rank, alpha and target names.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.rank == 0 {
            return Err(ModelError::InvalidConfig("LoRA rank must be > 0".into()));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(ModelError::InvalidConfig(format!(
                "LoRA alpha {} must be positive",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(ModelError::InvalidConfig(format!(
                "LoRA targets are empty; choose from {}",
                LORA_TARGETS.join(", ")
            )));
        }
        if let Some(bad) = self
            .targets
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(ModelError::InvalidConfig(format!(
                "LoRA target '{bad}' is not one of {}",
                LORA_TARGETS.join(", ")
            )));
        }
        Ok(())
    }
}

impl<B: Backend> CausalSelfAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, tokens, dim] = x.dims();
        let heads = self.n_head;
        let head_dim = dim / heads;
        let qkv = adapted(&self.c_attn, &self.c_attn_lora, x);
        // Columns [k*dim, (k+1)*dim) of c_attn's output are q, k, v.
        let split = |k: usize| {
            qkv.clone()
                .narrow(2, k * dim, dim)
                .reshape([batch, tokens, heads, head_dim])
                .swap_dims(1, 2)
        };
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let context = attention(split(0), split(1), split(2), None, None, options)
            .swap_dims(1, 2)
            .reshape([batch, tokens, dim]);
        self.resid_dropout
            .forward(adapted(&self.c_proj, &self.c_proj_lora, context))
    }
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>, name: &str, taps: &mut Taps<B>) -> Tensor<B, 3> {
        let y = taps.offer_in(name, "ln_1", self.ln_1.forward(x.clone()));
        let y = taps.offer_in(name, "attn", self.attn.forward(y));
        let x = x + y;
        let y = taps.offer_in(name, "ln_2", self.ln_2.forward(x.clone()));
        let mlp = join_name(name, "mlp");
        let y = taps.offer_in(
            &mlp,
            "c_fc",
            adapted(&self.mlp.c_fc, &self.mlp.c_fc_lora, y),
        );
        let y = taps.offer_in(&mlp, "gelu", gelu(y));
        let y = adapted(&self.mlp.c_proj, &self.mlp.c_proj_lora, y);
        let y = taps.offer_in(&mlp, "c_proj", y);
        let y = taps.offer(&mlp, self.mlp.dropout.forward(y));
        taps.offer(name, x + y)
    }
}

/// A Linear layer's output plus its adapter's, if any.
fn adapted<B: Backend>(
    linear: &Linear<B>,
    lora: &Option<Lora<B>>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    match lora {
        Some(adapter) => linear.forward(x.clone()) + adapter.forward(x),
        None => linear.forward(x),
    }
}

fn block_name(index: usize) -> String {
    format!("transformer.h.{index}")
}

impl<B: Backend> Gpt<B> {
    /// The configuration this network was built from (read off its shapes).
    pub fn config(&self) -> GptConfig {
        let [vocab_size, n_embd] = self.transformer.wte.weight.dims();
        let first = self.transformer.h.first();
        GptConfig {
            block_size: self.transformer.wpe.weight.dims()[0],
            vocab_size,
            n_layer: self.transformer.h.len(),
            n_head: first.map_or(1, |b| b.attn.n_head),
            n_embd,
            bias: self.transformer.ln_f.beta.is_some(),
            dropout: self.transformer.drop.prob,
            tie_weights: self.lm_head.is_none(),
        }
    }

    /// Logits `[batch, tokens, vocab_size]` for token ids `[batch, tokens]`.
    pub fn forward(&self, idx: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_tapped(idx, &mut Taps::none())
    }

    /// Forward pass offering every module output to `taps`.
    pub fn forward_tapped(&self, idx: Tensor<B, 2, Int>, taps: &mut Taps<B>) -> Tensor<B, 3> {
        let [batch, tokens] = idx.dims();
        let device = idx.device();
        let t = &self.transformer;
        let positions = Tensor::<B, 1, Int>::arange(0..tokens as i64, &device)
            .reshape([1, tokens])
            .expand([batch, tokens]);
        let tok = taps.offer("transformer.wte", t.wte.forward(idx));
        let pos = taps.offer("transformer.wpe", t.wpe.forward(positions));
        let mut x = t.drop.forward(tok + pos);
        for (i, block) in t.h.iter().enumerate() {
            x = block.forward(x, &block_name(i), taps);
        }
        let x = taps.offer("transformer.ln_f", t.ln_f.forward(x));
        let logits = match &self.lm_head {
            Some(head) => head.forward(x),
            None => {
                // One [batch * tokens, n_embd] x [n_embd, vocab] product (a
                // broadcast batched matmul is much slower on the CPU backend).
                let [batch, tokens, dim] = x.dims();
                let vocab = t.wte.weight.dims()[0];
                x.reshape([batch * tokens, dim])
                    .matmul(t.wte.weight.val().transpose())
                    .reshape([batch, tokens, vocab])
            }
        };
        taps.offer("lm_head", logits)
    }

    /// Freezes every weight and adds fresh LoRA adapters to the `targets`
    /// of every block: training then changes the adapters only.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self, ModelError> {
        config.validate()?;
        let mut model = self.no_grad();
        let wants = |name: &str| config.targets.iter().any(|t| t == name);
        let adapter = |linear: &Linear<B>| {
            let [input, output] = linear.weight.dims();
            Some(Lora::new(input, output, config, device))
        };
        for block in &mut model.transformer.h {
            let (attn, mlp) = (&mut block.attn, &mut block.mlp);
            if wants("attn.c_attn") {
                attn.c_attn_lora = adapter(&attn.c_attn);
            }
            if wants("attn.c_proj") {
                attn.c_proj_lora = adapter(&attn.c_proj);
            }
            if wants("mlp.c_fc") {
                mlp.c_fc_lora = adapter(&mlp.c_fc);
            }
            if wants("mlp.c_proj") {
                mlp.c_proj_lora = adapter(&mlp.c_proj);
            }
        }
        Ok(model)
    }

    /// Folds every adapter into its layer's weight and drops the adapters:
    /// a plain GPT computing the same function.
    pub fn merge_lora(mut self) -> Self {
        fn merge<B: Backend>(linear: &mut Linear<B>, lora: &mut Option<Lora<B>>) {
            if let Some(adapter) = lora.take() {
                let delta = adapter.weight_delta();
                linear.weight = linear.weight.clone().map(|w| w + delta);
            }
        }
        for block in &mut self.transformer.h {
            merge(&mut block.attn.c_attn, &mut block.attn.c_attn_lora);
            merge(&mut block.attn.c_proj, &mut block.attn.c_proj_lora);
            merge(&mut block.mlp.c_fc, &mut block.mlp.c_fc_lora);
            merge(&mut block.mlp.c_proj, &mut block.mlp.c_proj_lora);
        }
        self
    }

    /// The Linear layer of a topographic-candidate name
    /// (`transformer.h.N.mlp.c_fc`, ..., `lm_head` when untied).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear<B>> {
        if name == "lm_head" {
            return self.lm_head.as_mut();
        }
        let rest = name.strip_prefix("transformer.h.")?;
        let (index, layer) = rest.split_once('.')?;
        let block = self.transformer.h.get_mut(index.parse::<usize>().ok()?)?;
        match layer {
            "attn.c_attn" => Some(&mut block.attn.c_attn),
            "attn.c_proj" => Some(&mut block.attn.c_proj),
            "mlp.c_fc" => Some(&mut block.mlp.c_fc),
            "mlp.c_proj" => Some(&mut block.mlp.c_proj),
            _ => None,
        }
    }

    /// Parameters in LoRA adapters.
    pub fn lora_parameters(&self) -> usize {
        let count = |lora: &Option<Lora<B>>| {
            lora.as_ref().map_or(0, |l| {
                l.lora_a.val().shape().num_elements() + l.lora_b.val().shape().num_elements()
            })
        };
        self.transformer
            .h
            .iter()
            .map(|b| {
                count(&b.attn.c_attn_lora)
                    + count(&b.attn.c_proj_lora)
                    + count(&b.mlp.c_fc_lora)
                    + count(&b.mlp.c_proj_lora)
            })
            .sum()
    }

    /// Checks that `dims` is a batch of token sequences this network accepts.
    pub fn check_input(&self, dims: &[usize]) -> Result<(), ModelError> {
        let block = self.transformer.wpe.weight.dims()[0];
        match dims {
            [n, t] if *n > 0 && *t > 0 && *t <= block => Ok(()),
            _ => Err(ModelError::InputShape {
                found: dims.to_vec(),
                reason: format!("expected [batch, tokens] with 1 <= tokens <= {block}"),
            }),
        }
    }
}

impl<B: Backend> HasWeightLayers<B> for Gpt<B> {
    fn weight_layers(&self) -> Vec<WeightLayer<B>> {
        let mut candidates = Vec::new();
        for (i, block) in self.transformer.h.iter().enumerate() {
            let name = block_name(i);
            let child = |suffix: &str| join_name(&name, suffix);
            candidates.extend([
                WeightLayer::from_linear(child("attn.c_attn"), &block.attn.c_attn),
                WeightLayer::from_linear(child("attn.c_proj"), &block.attn.c_proj),
                WeightLayer::from_linear(child("mlp.c_fc"), &block.mlp.c_fc),
                WeightLayer::from_linear(child("mlp.c_proj"), &block.mlp.c_proj),
            ]);
        }
        if let Some(head) = &self.lm_head {
            candidates.push(WeightLayer::from_linear("lm_head", head));
        }
        candidates
    }

    fn modules(&self) -> Vec<ModuleInfo> {
        let mut modules = vec![
            ModuleInfo::new("transformer.wte", "Embedding"),
            ModuleInfo::new("transformer.wpe", "Embedding"),
        ];
        for i in 0..self.transformer.h.len() {
            let name = block_name(i);
            let child = |suffix: &str| join_name(&name, suffix);
            modules.extend([
                ModuleInfo::new(name.clone(), "Block"),
                ModuleInfo::new(child("ln_1"), "LayerNorm"),
                ModuleInfo::new(child("attn"), "CausalSelfAttention"),
                ModuleInfo::new(child("attn.c_attn"), "Linear"),
                ModuleInfo::new(child("attn.c_proj"), "Linear"),
                ModuleInfo::new(child("ln_2"), "LayerNorm"),
                ModuleInfo::new(child("mlp"), "MLP"),
                ModuleInfo::new(child("mlp.c_fc"), "Linear"),
                ModuleInfo::new(child("mlp.gelu"), "GELU"),
                ModuleInfo::new(child("mlp.c_proj"), "Linear"),
            ]);
        }
        modules.push(ModuleInfo::new("transformer.ln_f", "LayerNorm"));
        modules.push(ModuleInfo::new(
            "lm_head",
            if self.lm_head.is_some() {
                "Linear"
            } else {
                "Linear (tied to transformer.wte)"
            },
        ));
        modules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    fn tiny() -> GptConfig {
        GptConfig::new()
            .with_block_size(16)
            .with_vocab_size(50)
            .with_n_layer(2)
            .with_n_head(2)
            .with_n_embd(16)
    }

    fn tokens(values: &[i64], device: &burn::tensor::Device<Flex>) -> Tensor<Flex, 2, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
    }

    #[test]
    fn config_is_read_back_from_the_built_network() {
        for config in [tiny(), tiny().with_bias(true).with_tie_weights(false)] {
            let model: Gpt<Flex> = config.init(&Default::default()).unwrap();
            assert_eq!(model.config(), config);
        }
    }

    #[test]
    fn logits_have_one_row_per_token() {
        let device = Default::default();
        let model: Gpt<Flex> = tiny().init(&device).unwrap();
        let idx =
            Tensor::<Flex, 2>::random([3, 10], Distribution::Uniform(0.0, 50.0), &device).int();
        assert_eq!(model.forward(idx).dims(), [3, 10, 50]);
    }

    #[test]
    fn later_tokens_do_not_change_earlier_logits() {
        let device = Default::default();
        let model: Gpt<Flex> = tiny().with_bias(true).init(&device).unwrap();
        let a = model.forward(tokens(&[1, 2, 3, 4, 5, 6], &device));
        let b = model.forward(tokens(&[1, 2, 3, 40, 41, 42], &device));
        let prefix = |t: Tensor<Flex, 3>| t.narrow(1, 0, 3).into_data().to_vec::<f32>().unwrap();
        let (pa, pb) = (prefix(a.clone()), prefix(b.clone()));
        let max_diff = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-5, "prefix logits differ by {max_diff}");
        // ... while the changed positions do change (the test can fail).
        let last = |t: Tensor<Flex, 3>| t.narrow(1, 5, 1).into_data().to_vec::<f32>().unwrap();
        let changed = last(a)
            .iter()
            .zip(&last(b))
            .any(|(x, y)| (x - y).abs() > 1e-4);
        assert!(changed);
    }

    #[test]
    fn c_fc_layers_are_topographic_candidates() {
        let model: Gpt<Flex> = tiny().init(&Default::default()).unwrap();
        let selected = model.select_layers(&["transformer.h.*.mlp.c_fc"]).unwrap();
        let names: Vec<&str> = selected.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
        );
        // PyTorch layout [out, in]: 64 units of 16 weights.
        assert_eq!(selected[0].flat_shape(), [64, 16]);
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let err = tiny().with_n_head(3).validate().err().unwrap();
        assert!(err.to_string().contains("n_head"), "{err}");
        let model: Gpt<Flex> = tiny().init(&Default::default()).unwrap();
        let err = model.check_input(&[2, 17]).err().unwrap();
        assert!(err.to_string().contains("tokens <= 16"), "{err}");
    }
}
