//! The one interface the analyses use: a network, vision or GPT, that gives
//! its layers' weights, takes new ones, answers inputs with named module
//! responses and scores itself on held-out data ([`Analysed`]); and how a
//! checkpoint is opened as one ([`ModelArgs::open`]).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use data_prep::text::TokenFile;
use models::{Activation, Gpt, HasWeightLayers, Model, NativeGradient, Taps};
use trainer::data::DataSet;
use trainer::eval::{EvalSettings, Network, Tta};
use trainer::RunConfig;

use crate::input::{run_config, Input};
use crate::{Cpu, CpuDevice};

/// The checkpoint and the layers to analyse.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A run directory, one of its checkpoints, a .safetensors or a PyTorch .pt.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Layer patterns (dotted globs, comma-separated); default: the run's
    /// [topography] layers, else every Conv2d and Linear layer (a GPT's:
    /// every block's mlp.c_fc).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
}

/// Which module outputs count as unit responses.
#[derive(Args, Clone, Debug)]
pub struct ModuleArgs {
    /// Measure the outputs of these modules instead of the selected layers'
    /// (dotted globs over every named module, comma-separated): e.g.
    /// `layer*.*` for the rectified outputs of a ResNet's residual blocks,
    /// whose channels are the units of each block's last conv.
    #[arg(long, value_delimiter = ',')]
    pub modules: Option<Vec<String>>,
}

/// One selected layer's weights on the host.
#[derive(Debug, Clone)]
pub struct HostWeights {
    pub name: String,
    /// `[units, e]` row-major, PyTorch layout.
    pub weights: Vec<f32>,
    pub e: usize,
    pub sheet: analysis::SheetShape,
}

impl HostWeights {
    /// The same layer holding `weights` instead (same shape).
    pub fn with_weights(&self, weights: Vec<f32>) -> Self {
        HostWeights {
            name: self.name.clone(),
            weights,
            e: self.e,
            sheet: self.sheet,
        }
    }
}

/// One layer's responses to a batch: `[samples, units]` row-major.
pub struct Responses {
    pub values: Vec<f32>,
    pub units: usize,
}

/// What one sample of a layer's responses is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Samples {
    /// One vector per image: conv channels averaged over positions, ViT
    /// features over tokens.
    Images,
    /// One vector per image and position (conv) or token (transformer): the
    /// units' joint response at each place.
    Positions,
}

/// How well a network does on held-out data.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Score {
    /// Mean cross-entropy (per image, or per token).
    pub loss: f64,
    /// Classifiers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    /// Images or token windows scored.
    pub samples: usize,
}

/// What the analyses ask of a trained network, vision or GPT.
pub trait Analysed: HasWeightLayers<Cpu> + Module<Cpu> + Clone {
    /// A batch of inputs: normalised images, or token windows.
    type Input;
    /// Held-out data to score on.
    type Scoring;

    /// The named modules' responses to `input`, in the order of `names`.
    fn responses(
        &self,
        input: Self::Input,
        names: &[String],
        samples: Samples,
    ) -> Result<Vec<Responses>>;

    /// Loss (and accuracy, for a classifier) on `data`.
    fn evaluate(&self, data: &Self::Scoring) -> Result<Score>;

    /// The host weights of the layers matching `patterns`.
    fn layer_weights(&self, patterns: &[String]) -> Result<Vec<HostWeights>> {
        let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
        self.select_layers(&patterns)?
            .into_iter()
            .map(|c| {
                let [units, e] = c.flat_shape();
                let weights = host_values(c.weight.into_data())
                    .with_context(|| format!("cannot read the weights of {}", c.name))?;
                let sheet = analysis::SheetShape::for_units(units)
                    .map_err(|err| anyhow::anyhow!("{}: {err}", c.name))?;
                Ok(HostWeights {
                    name: c.name,
                    weights,
                    e,
                    sheet,
                })
            })
            .collect()
    }

    /// A copy with each named layer's `[units, e]` weights replaced (mapped
    /// back to Burn's layout as TopoLoss gradients are).
    fn with_layer_weights(&self, layers: &[HostWeights]) -> Result<Self> {
        let candidates = self.weight_layers();
        let device = Default::default();
        let mut values = HashMap::new();
        for layer in layers {
            let c = candidates
                .iter()
                .find(|c| c.name == layer.name)
                .with_context(|| format!("the network has no layer {}", layer.name))?;
            let flat = Tensor::<Cpu, 2>::from_data(
                TensorData::new(layer.weights.clone(), c.flat_shape()),
                &device,
            );
            let native = match c.native_gradient(flat)? {
                NativeGradient::Conv2d(t) => t.into_data(),
                NativeGradient::Linear(t) => t.into_data(),
            };
            values.insert(c.param_id, native);
        }
        let mut mapper = ReplaceParameters { values };
        let mapped = self.clone().map(&mut mapper);
        if !mapper.values.is_empty() {
            bail!(
                "{} selected layer(s) were not found among the network's parameters",
                mapper.values.len()
            );
        }
        Ok(mapped)
    }

    /// The named modules matching any of `patterns`, in forward order; a
    /// pattern that matches nothing is an error listing the module names.
    fn module_names(&self, patterns: &[String]) -> Result<Vec<String>> {
        let modules = self.modules();
        let mut chosen = vec![false; modules.len()];
        for text in patterns {
            let pattern = models::LayerPattern::new(text)?;
            let mut any = false;
            for (module, chosen) in modules.iter().zip(chosen.iter_mut()) {
                if pattern.matches(&module.name) {
                    *chosen = true;
                    any = true;
                }
            }
            if !any {
                bail!(
                    "--modules {text} matches no module; the modules are: {}",
                    modules
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(modules
            .into_iter()
            .zip(chosen)
            .filter_map(|(m, chosen)| chosen.then_some(m.name))
            .collect())
    }
}

/// A validation set and how a classifier reads it.
pub struct ImageScoring {
    pub data: DataSet,
    pub input: Input,
    pub batch: usize,
    /// Score only this many batches.
    pub max_batches: Option<usize>,
}

impl Analysed for Model<Cpu> {
    type Input = Tensor<Cpu, 4>;
    type Scoring = ImageScoring;

    fn responses(
        &self,
        input: Tensor<Cpu, 4>,
        names: &[String],
        samples: Samples,
    ) -> Result<Vec<Responses>> {
        let (_, captured) = self.forward_with_taps(input, names)?;
        in_order(captured, names, samples)
    }

    fn evaluate(&self, data: &ImageScoring) -> Result<Score> {
        let settings = EvalSettings {
            resolution: data.input.res,
            batch_size: data.batch,
            mean: &data.input.mean,
            std: &data.input.std,
            max_batches: data.max_batches,
            tta: Tta::None,
        };
        let result = trainer::eval::evaluate(self, &data.data, &settings, &Default::default())?;
        Ok(Score {
            loss: result.loss,
            top1: Some(result.top1),
            top5: Some(result.top5),
            samples: result.images,
        })
    }
}

/// Validation windows of a token file.
pub struct WindowScoring {
    pub tokens: TokenFile,
    /// Start of each window.
    pub windows: Vec<usize>,
    /// Tokens per window.
    pub block: usize,
    /// Windows per forward pass.
    pub batch: usize,
}

impl Analysed for Gpt<Cpu> {
    type Input = Tensor<Cpu, 2, Int>;
    type Scoring = WindowScoring;

    fn responses(
        &self,
        input: Tensor<Cpu, 2, Int>,
        names: &[String],
        samples: Samples,
    ) -> Result<Vec<Responses>> {
        let mut taps = Taps::for_modules(names, &self.modules())?;
        self.forward_tapped(input, &mut taps);
        in_order(taps.into_captured(), names, samples)
    }

    fn evaluate(&self, data: &WindowScoring) -> Result<Score> {
        let loss = trainer::language::evaluate_windows(
            self,
            &data.tokens,
            &data.windows,
            data.block,
            data.batch,
        )?;
        Ok(Score {
            loss,
            top1: None,
            top5: None,
            samples: data.windows.len(),
        })
    }
}

/// The captured outputs as responses, in the order of `names`.
fn in_order(
    captured: Vec<(String, Activation<Cpu>)>,
    names: &[String],
    samples: Samples,
) -> Result<Vec<Responses>> {
    let mut by_name: HashMap<String, Activation<Cpu>> = captured.into_iter().collect();
    names
        .iter()
        .map(|name| {
            let activation = by_name
                .remove(name)
                .with_context(|| format!("module {name} produced no output to tap"))?;
            unit_responses(activation, samples)
        })
        .collect()
}

/// Replaces float parameters by id.
struct ReplaceParameters {
    values: HashMap<ParamId, TensorData>,
}

impl ModuleMapper<Cpu> for ReplaceParameters {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Cpu, D>>) -> Param<Tensor<Cpu, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.values.remove(&id) {
            Some(data) => Tensor::from_data(data, &tensor.device()),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

fn host_values(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// A layer's output as rows of unit responses, `[samples, units]`: one row
/// per image (conv channels averaged over positions, as
/// `analysis::dimensionality::channel_means` defines the features; ViT
/// features over tokens) or one per position / token. The reshaping runs on
/// the backend, so for images only `[n, units]` values reach the host
/// rather than whole feature maps.
pub fn unit_responses(activation: Activation<Cpu>, samples: Samples) -> Result<Responses> {
    let reduced: Tensor<Cpu, 2> = match (activation, samples) {
        (Activation::Rank2(t), _) => t,
        (Activation::Rank3(t), Samples::Images) => {
            let [n, _, d] = t.dims();
            t.mean_dim(1).reshape([n, d])
        }
        (Activation::Rank3(t), Samples::Positions) => {
            let [n, tokens, d] = t.dims();
            t.reshape([n * tokens, d])
        }
        (Activation::Rank4(t), Samples::Images) => {
            let [n, c, h, w] = t.dims();
            t.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
        }
        (Activation::Rank4(t), Samples::Positions) => {
            let [n, c, h, w] = t.dims();
            t.permute([0, 2, 3, 1]).reshape([n * h * w, c])
        }
    };
    let units = reduced.dims()[1];
    let values = host_values(reduced.into_data()).context("cannot read responses")?;
    Ok(Responses { values, units })
}

/// A network opened for analysis, with its run's config (vision runs) and
/// the layer patterns chosen.
pub struct Opened<N> {
    pub network: N,
    pub run: Option<RunConfig>,
    pub patterns: Vec<String>,
}

/// The paper's topographic layers of a GPT: every block's MLP input projection.
pub const GPT_TOPOGRAPHIC_LAYERS: &str = "transformer.h.*.mlp.c_fc";

/// Any checkpoint, opened.
pub enum OpenedNetwork {
    Vision(Box<Opened<Model<Cpu>>>),
    Language(Box<Opened<Gpt<Cpu>>>),
}

impl ModelArgs {
    /// Opens the checkpoint, whatever network it holds.
    pub fn open(&self) -> Result<OpenedNetwork> {
        let device: CpuDevice = Default::default();
        // Its errors name the file.
        Ok(
            match trainer::eval::load_network::<Cpu>(&self.checkpoint, &device)? {
                Network::Vision(model) => {
                    let run = run_config(&self.checkpoint)?;
                    let patterns = layer_patterns(self.layers.as_deref(), run.as_ref());
                    OpenedNetwork::Vision(Box::new(Opened {
                        network: *model,
                        run,
                        patterns,
                    }))
                }
                Network::Language(gpt) => OpenedNetwork::Language(Box::new(Opened {
                    network: *gpt,
                    run: None,
                    patterns: self
                        .layers
                        .clone()
                        .unwrap_or_else(|| vec![GPT_TOPOGRAPHIC_LAYERS.to_string()]),
                })),
            },
        )
    }

    /// Opens a checkpoint that must hold a ResNet or ViT; `analysis` names
    /// the analysis in the error.
    pub fn open_vision(&self, analysis: &str) -> Result<Opened<Model<Cpu>>> {
        match self.open()? {
            OpenedNetwork::Vision(opened) => Ok(*opened),
            OpenedNetwork::Language(_) => bail!(
                "{} holds a language model; analyze {analysis} takes a ResNet or a ViT",
                self.checkpoint.display()
            ),
        }
    }

    /// The selected layers' weights, for the analyses that need nothing
    /// else (sheets, smoothness).
    pub fn layer_weights(&self) -> Result<Vec<HostWeights>> {
        match self.open()? {
            OpenedNetwork::Vision(o) => o.layers(),
            OpenedNetwork::Language(o) => o.layers(),
        }
    }
}

impl<N: Analysed> Opened<N> {
    /// The selected layers' weights.
    pub fn layers(&self) -> Result<Vec<HostWeights>> {
        self.network.layer_weights(&self.patterns)
    }

    /// The modules whose outputs are the unit responses: those matching
    /// `--modules` when given, else the selected layers.
    pub fn response_modules(&self, modules: &ModuleArgs) -> Result<Vec<String>> {
        match &modules.modules {
            Some(patterns) => self.network.module_names(patterns),
            None => {
                let patterns: Vec<&str> = self.patterns.iter().map(String::as_str).collect();
                Ok(self
                    .network
                    .select_layers(&patterns)?
                    .into_iter()
                    .map(|c| c.name)
                    .collect())
            }
        }
    }
}

impl Opened<Model<Cpu>> {
    /// Input channels of the network.
    pub fn in_channels(&self) -> usize {
        input_channels(&self.network)
    }
}

/// Input channels of a network.
pub fn input_channels<B: burn::tensor::backend::Backend>(model: &Model<B>) -> usize {
    match model.architecture() {
        models::Architecture::ResNet(config) => config.in_channels,
        models::Architecture::Vit(config) => config.in_channels,
    }
}

/// Layer patterns: the explicit ones, else the run's topographic layers,
/// else every Conv2d and Linear layer.
pub fn layer_patterns(explicit: Option<&[String]>, run: Option<&RunConfig>) -> Vec<String> {
    if let Some(patterns) = explicit {
        return patterns.to_vec();
    }
    let from_run: Vec<String> = run
        .and_then(|r| r.topography.as_ref())
        .map(|t| t.layers.iter().flat_map(|l| l.patterns.clone()).collect())
        .unwrap_or_default();
    if from_run.is_empty() {
        vec!["**".to_string()]
    } else {
        from_run
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use models::GptConfig;

    /// A one-block GPT of 16-wide tokens and a 64-token vocabulary, its
    /// weights drawn now (Burn draws them at first use, so clones of a
    /// fresh model would differ).
    pub fn tiny_gpt() -> Gpt<Cpu> {
        let gpt = GptConfig {
            block_size: 8,
            vocab_size: 64,
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
            bias: false,
            dropout: 0.0,
            tie_weights: true,
        }
        .init::<Cpu>(&Default::default())
        .unwrap();
        let weights = gpt.clone().into_record();
        gpt.load_record(weights)
    }

    /// New weights for `name` read back as written, in PyTorch layout, and
    /// every other layer stays as it was.
    fn replaces_one_layer<N: Analysed>(network: &N, name: &str) {
        let all = network.layer_weights(&["**".to_string()]).unwrap();
        let mut chosen = network.layer_weights(&[name.to_string()]).unwrap();
        assert_eq!(chosen.len(), 1);
        let values: Vec<f32> = (0..chosen[0].weights.len()).map(|i| i as f32).collect();
        chosen[0].weights = values.clone();
        let replaced = network.with_layer_weights(&chosen).unwrap();
        for (before, after) in all
            .iter()
            .zip(replaced.layer_weights(&["**".to_string()]).unwrap())
        {
            if before.name == name {
                assert_eq!(after.weights, values, "{name}");
            } else {
                assert_eq!(after.weights, before.weights, "{}", before.name);
            }
        }
    }

    #[test]
    fn a_layer_is_replaced_in_vision_models_and_gpts_alike() {
        replaces_one_layer(&models::testing::tiny_resnet::<Cpu>(), "layer2.0.conv2");
        // Burn stores a Linear weight as [in, out]: the transpose is undone.
        replaces_one_layer(&tiny_gpt(), "transformer.h.0.mlp.c_fc");
    }

    #[test]
    fn responses_come_in_the_order_asked_with_one_row_per_sample() {
        let gpt = tiny_gpt();
        let names = [
            "transformer.h.0.mlp.c_fc".to_string(),
            "transformer.h.0.attn".to_string(),
        ];
        let tokens = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new((0..16i64).collect(), [2, 8]),
            &Default::default(),
        );
        let per_token = gpt
            .responses(tokens.clone(), &names, Samples::Positions)
            .unwrap();
        assert_eq!(per_token[0].units, 64);
        assert_eq!(per_token[0].values.len(), 2 * 8 * 64);
        assert_eq!(per_token[1].units, 16);
        let per_window = gpt.responses(tokens, &names, Samples::Images).unwrap();
        assert_eq!(per_window[0].values.len(), 2 * 64);
        let unknown = gpt
            .responses(
                Tensor::from_data(TensorData::new(vec![0i64; 8], [1, 8]), &Default::default()),
                &["transformer.h.9.mlp.c_fc".to_string()],
                Samples::Images,
            )
            .err()
            .unwrap();
        assert!(
            unknown.to_string().contains("transformer.h.9.mlp.c_fc"),
            "{unknown}"
        );
    }

    #[test]
    fn module_patterns_that_match_nothing_list_the_modules() {
        let error = models::testing::tiny_resnet::<Cpu>()
            .module_names(&["layer9.*".to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("layer9.*") && error.contains("layer1.0"),
            "{error}"
        );
    }
}
