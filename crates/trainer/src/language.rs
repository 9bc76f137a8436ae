//! Language-model runs: GPT training on a token dataset (`topotrain prep
//! text` / `prep kjv`), LoRA fine-tuning, and L1 pruning of `c_fc`.
//!
//! A language config is a TOML file with a `[gpt]` section (the network,
//! NanoGPT's `GPTConfig` fields) for training from scratch, or a `base`
//! checkpoint and a `[lora]` section for fine-tuning; `[data]`,
//! `[topography]` (as for vision; TopoNets select
//! `transformer.h.*.mlp.c_fc`), `[optimizer]`, `[training]` and `[output]`
//! as below. `topotrain fit` recognises it by those sections.
//!
//! The recipe is NanoGPT's: random windows of `block_size` tokens, next-token
//! cross-entropy, AdamW (betas 0.9/0.95, decoupled weight decay), a linear
//! warm-up then cosine decay to `min_lr`, gradient accumulation over
//! `grad_accum` micro-batches, gradient clipping. Two differences: Burn's
//! AdamW decays every parameter (NanoGPT spares biases and norms), and
//! Burn's clipping bounds each parameter's gradient norm, not the global
//! norm. TopoLoss is added once per optimiser step, after accumulation.
//!
//! Validation uses fixed windows spread evenly over the validation file, so
//! every evaluation (and every pruned model) sees the same tokens; the
//! metrics log has the loss and perplexity = exp(loss).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamWConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use data_prep::text::{read_meta, TokenFile};
use data_prep::transform::mix64;
use models::topography::{TopoEngine, Topography, TopographyConfig};
use models::{load_gpt, save_gpt, Gpt, GptConfig, LoraConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::config::{OutputSection, TaskKind};
use crate::data::NodeShard;
use crate::engine::{self, Evaluation, FitOptions, Recipe, RunSettings, StepBatches};
use crate::run_dir::{open_run_dir, OpenRunDir};
use crate::step::{GradientPipeline, Task, TaskBatch};

/// One language-model run (training or LoRA fine-tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageConfig {
    /// `task = "language"` (the default of configs with `[gpt]`, `[lora]` or `base`).
    #[serde(default = "language_task")]
    pub task: TaskKind,
    /// The network to train from scratch; omitted fields take NanoGPT's
    /// GPT-2 defaults ([`GptConfig::new`]).
    #[serde(default, deserialize_with = "gpt_with_defaults")]
    pub gpt: Option<GptConfig>,
    /// Fine-tuning: the GPT checkpoint to start from (ours or NanoGPT's).
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// Fine-tuning: freeze `base` and train LoRA adapters only.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    pub data: TextDataSection,
    #[serde(default)]
    pub topography: Option<TopographyConfig>,
    pub optimizer: AdamWSection,
    pub training: LanguageTrainingSection,
    pub output: OutputSection,
}

/// `[gpt]` over [`GptConfig::new`]'s defaults; unknown keys are errors.
fn gpt_with_defaults<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<GptConfig>, D::Error> {
    use serde::de::Error;
    let given = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
    let serde_json::Value::Object(mut merged) =
        serde_json::to_value(GptConfig::new()).map_err(D::Error::custom)?
    else {
        return Err(D::Error::custom("GptConfig does not serialise to a table"));
    };
    for (key, value) in given {
        if !merged.contains_key(&key) {
            let known: Vec<&String> = merged.keys().collect();
            return Err(D::Error::custom(format!(
                "unknown field `{key}` in [gpt]; known: {known:?}"
            )));
        }
        merged.insert(key, value);
    }
    serde_json::from_value(serde_json::Value::Object(merged))
        .map(Some)
        .map_err(D::Error::custom)
}

/// `[data]`: a folder written by `topotrain prep text` / `prep kjv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextDataSection {
    pub dir: PathBuf,
}

/// `[optimizer]`: AdamW with warm-up and cosine decay (per optimiser step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    #[serde(default)]
    pub min_lr: f64,
    /// Steps of linear warm-up.
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Bound on each parameter's gradient norm (0 = no clipping).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
}

fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_grad_clip() -> f64 {
    1.0
}

impl AdamWSection {
    /// NanoGPT's `get_lr`: linear warm-up to `lr`, cosine to `min_lr` at `steps`.
    pub fn lr_at(&self, step: usize, steps: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let span = steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let coefficient = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + coefficient * (self.lr - self.min_lr)
    }
}

/// `[training]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageTrainingSection {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimiser step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Tokens per sequence (default: the model's block size).
    #[serde(default)]
    pub block_size: Option<usize>,
    /// Evaluate every N steps (and before the first and after the last).
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Validation batches (of `batch_size` windows) per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    #[serde(default)]
    pub seed: u64,
    /// Log a metrics line every N steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// CPU threads (0 = all cores).
    #[serde(default)]
    pub threads: usize,
    /// "cpu", "cuda[:N]" or "wgpu".
    #[serde(default = "default_device")]
    pub device: String,
    /// Devices this process trains on, data parallel, from `device`'s index up.
    #[serde(default = "one")]
    pub devices: usize,
    /// Also checkpoint every N optimiser steps between evaluations (0 = only
    /// after each evaluation).
    #[serde(default)]
    pub checkpoint_every_steps: usize,
}

fn one() -> usize {
    1
}
fn default_eval_every() -> usize {
    100
}
fn default_eval_batches() -> usize {
    20
}
fn default_log_every() -> usize {
    10
}
fn default_device() -> String {
    "cpu".into()
}

fn language_task() -> TaskKind {
    TaskKind::Language
}

impl LanguageConfig {
    /// Reads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: LanguageConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and consistency; errors name the key and the value.
    pub fn validate(&self) -> Result<()> {
        fn bad<T: std::fmt::Debug>(key: &str, value: T, why: &str) -> anyhow::Error {
            anyhow::anyhow!("{key} = {value:?}: {why}")
        }
        if self.task != TaskKind::Language {
            return Err(bad(
                "task",
                self.task,
                "a GPT config has task = \"language\"",
            ));
        }
        match (&self.gpt, &self.base) {
            (Some(_), Some(base)) => return Err(bad("base", base, "give either [gpt] (train from scratch) or base (fine-tune), not both")),
            (None, None) => bail!("the config needs a [gpt] section (train from scratch) or base = \"CHECKPOINT\" (fine-tune)"),
            (Some(gpt), None) => gpt.validate()?,
            (None, Some(_)) => {}
        }
        if let Some(lora) = &self.lora {
            if self.base.is_none() {
                return Err(bad(
                    "lora",
                    lora,
                    "LoRA fine-tunes a base checkpoint; set base",
                ));
            }
            lora.validate()?;
            if self.topography.is_some() {
                bail!("[topography] with [lora]: the topographic layers are frozen while fine-tuning; drop one of them");
            }
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(bad("optimizer.lr", o.lr, "must be positive"));
        }
        if !(o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(bad(
                "optimizer.min_lr",
                o.min_lr,
                "must be in [0, optimizer.lr]",
            ));
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return Err(bad(
                "optimizer.weight_decay",
                o.weight_decay,
                "must be >= 0",
            ));
        }
        for (key, beta) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(bad(key, beta, "must be in [0, 1)"));
            }
        }
        if !(o.grad_clip >= 0.0 && o.grad_clip.is_finite()) {
            return Err(bad("optimizer.grad_clip", o.grad_clip, "must be >= 0"));
        }
        let t = &self.training;
        for (key, value) in [
            ("training.steps", t.steps),
            ("training.batch_size", t.batch_size),
            ("training.grad_accum", t.grad_accum),
            ("training.eval_every", t.eval_every),
            ("training.eval_batches", t.eval_batches),
            ("training.log_every", t.log_every),
            ("training.devices", t.devices),
        ] {
            if value == 0 {
                return Err(bad(key, value, "must be at least 1"));
            }
        }
        if t.block_size == Some(0) {
            return Err(bad("training.block_size", 0, "must be at least 1"));
        }
        t.device
            .parse::<crate::DeviceChoice>()
            .map_err(|e| bad("training.device", &t.device, &e))?;
        if let Some(topography) = &self.topography {
            topography
                .tau
                .validate()
                .map_err(|e| bad("topography.tau", &topography.tau, &e.to_string()))?;
        }
        Ok(())
    }

    /// Copy with a constant tau for every topographic layer.
    pub fn with_tau(&self, tau: f64) -> Result<Self> {
        let mut config = self.clone();
        let Some(topography) = config.topography.as_mut() else {
            bail!("the config has no [topography] section, so tau cannot be set");
        };
        topography.tau = topoloss::TauSchedule::constant(tau);
        for layer in &mut topography.layers {
            layer.tau = None;
        }
        Ok(config)
    }
}

/// The end-of-run summary (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageSummary {
    pub run_dir: PathBuf,
    pub model: String,
    pub steps: usize,
    /// Tokens per optimiser step: batch_size x grad_accum x block_size.
    pub tokens_per_step: usize,
    pub initial_val_loss: f64,
    pub val_loss: f64,
    pub val_perplexity: f64,
    /// Validation windows (of block_size tokens) behind val_loss.
    #[serde(default)]
    pub val_windows: Option<u64>,
    /// Mean task loss of the last epoch (`eval_every` steps).
    pub train_loss: f64,
    /// Tau at the last step (0 without a topography).
    pub tau: f64,
    /// Mean over topographic layers of the unscaled (tau = 1) TopoLoss.
    #[serde(default)]
    pub mean_topo_loss: Option<f64>,
    /// Unscaled (tau = 1) TopoLoss per topographic layer at the end.
    pub topo_layers: BTreeMap<String, f64>,
    /// LoRA: rank and trainable adapter parameters.
    pub lora_rank: Option<usize>,
    pub trainable_parameters: usize,
    pub train_seconds: f64,
    pub tokens_per_sec: f64,
    /// The final weights (LoRA adapters merged in).
    pub final_weights: PathBuf,
}

/// What a language checkpoint records of its network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageModelSpec {
    pub gpt: GptConfig,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

/// A micro-batch of training windows: where each starts in the token file.
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    pub starts: Vec<usize>,
}

impl TaskBatch for Windows {
    fn len(&self) -> usize {
        self.starts.len()
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Windows {
        Windows {
            starts: self.starts[range].to_vec(),
        }
    }
}

/// Next-token prediction on a token file: the [`Task`] and [`Recipe`] of
/// language runs. An epoch of a language run is `training.eval_every`
/// steps (the last may be shorter); validation follows each.
pub struct LanguageModelling<'a> {
    pub config: &'a LanguageConfig,
    pub spec: LanguageModelSpec,
    pub train: &'a TokenFile,
    pub val: &'a TokenFile,
    pub block: usize,
}

impl LanguageModelling<'_> {
    fn global_step(&self, epoch: usize, step: usize) -> usize {
        epoch * self.config.training.eval_every + step
    }
}

impl<B: AutodiffBackend> Task<B> for LanguageModelling<'_> {
    type Model = Gpt<B>;
    type Batch = Windows;

    fn loss(
        &self,
        model: &Gpt<B>,
        batch: &Windows,
        device: &B::Device,
    ) -> Result<(Tensor<B, 1>, u64)> {
        let (x, y) = window_batch::<B>(self.train, &batch.starts, self.block, device);
        let loss_fn = CrossEntropyLossConfig::new().init(device);
        Ok((lm_loss(model, x, y, &loss_fn), 0))
    }
}

impl<B: AutodiffBackend> Recipe<B> for LanguageModelling<'_> {
    type Spec = LanguageModelSpec;

    fn spec(&self) -> LanguageModelSpec {
        self.spec.clone()
    }

    fn describe(spec: &LanguageModelSpec) -> String {
        match &spec.lora {
            Some(lora) => format!("{} with LoRA rank {}", spec.gpt.describe(), lora.rank),
            None => spec.gpt.describe(),
        }
    }

    fn epochs(&self) -> usize {
        let t = &self.config.training;
        t.steps.div_ceil(t.eval_every)
    }

    fn steps_in_epoch(&self, epoch: usize) -> usize {
        let t = &self.config.training;
        t.eval_every.min(t.steps - epoch * t.eval_every)
    }

    fn lr(&self, epoch: usize, step: usize) -> f64 {
        let t = &self.config.training;
        self.config
            .optimizer
            .lr_at(self.global_step(epoch, step), t.steps)
    }

    fn batches(
        &self,
        epoch: usize,
        start: usize,
        node: NodeShard,
    ) -> Result<StepBatches<'_, Windows>> {
        let t = &self.config.training;
        let steps = start..<Self as Recipe<B>>::steps_in_epoch(self, epoch);
        let share = crate::parallel::shard_range(t.batch_size, node.nodes, node.rank);
        Ok(Box::new(steps.map(move |step| {
            let step = self.global_step(epoch, step);
            Ok((0..t.grad_accum)
                .map(|micro| Windows {
                    starts: train_windows(
                        self.train,
                        self.block,
                        t.batch_size,
                        t.seed,
                        step,
                        micro,
                    )[share.clone()]
                    .to_vec(),
                })
                .collect())
        })))
    }

    fn evaluate(
        &self,
        model: &Gpt<B::InnerBackend>,
        _epoch: Option<usize>,
    ) -> Result<Option<Evaluation>> {
        let t = &self.config.training;
        let windows = eval_windows(self.val, self.block, t.batch_size * t.eval_batches);
        let loss = evaluate_windows(model, self.val, &windows, self.block, t.batch_size)?;
        Ok(Some(Evaluation {
            loss,
            top1: None,
            top5: None,
            samples: windows.len() as u64,
        }))
    }

    fn units_per_sample(&self) -> u64 {
        self.block as u64
    }

    fn throughput_name(&self) -> &'static str {
        "tokens_per_sec"
    }
}

/// Config keys a resume may change: they do not change what is trained.
const RESUMABLE_KEYS: &[&str] = &[
    "training.log_every",
    "training.eval_batches",
    "training.checkpoint_every_steps",
    "training.threads",
    "training.device",
    "training.devices",
    "output.",
];

/// Trains (or fine-tunes) `config` on `device`.
pub fn fit_language<B: AutodiffBackend>(
    config: &LanguageConfig,
    device: B::Device,
    options: &FitOptions,
) -> Result<LanguageSummary> {
    let dir = options.run_dir(&config.output.dir);
    let final_weights = dir.join("final.safetensors");
    if final_weights.exists() {
        bail!(
            "{} already holds a finished run; choose another output.dir",
            dir.display()
        );
    }
    let t = &config.training;
    ensure!(
        t.batch_size.is_multiple_of(options.nodes())
            && t.batch_size / options.nodes() >= t.devices,
        "training.batch_size = {} must split evenly over {} nodes, at least one window per device each",
        t.batch_size,
        options.nodes()
    );
    let how = OpenRunDir {
        resume: options.resume,
        allow_config_change: options.allow_config_change,
        resumable_keys: RESUMABLE_KEYS,
    };
    let run_dir = open_run_dir(&dir, how, &toml::to_string_pretty(config)?)?;

    B::seed(&device, t.seed);
    let mut model: Gpt<B> = match (&config.gpt, &config.base) {
        (Some(gpt), _) => gpt.init(&device)?,
        (None, Some(base)) => load_gpt(base, &device)
            .with_context(|| format!("cannot load the base model {}", base.display()))?,
        (None, None) => bail!("no [gpt] and no base"),
    };
    if let Some(lora) = &config.lora {
        model = model.with_lora(lora, &device)?;
    }
    let gpt = model.config();
    let block = t.block_size.unwrap_or(gpt.block_size);
    ensure!(
        block <= gpt.block_size,
        "training.block_size = {block} is longer than the model's block_size {}",
        gpt.block_size
    );
    let (train, val) = open_tokens(&config.data.dir, gpt.vocab_size)?;
    for file in [&train, &val] {
        ensure!(
            file.len() > block + 1,
            "{} has {} tokens, too few for windows of {block}",
            file.path().display(),
            file.len()
        );
    }

    let topography = match &config.topography {
        Some(c) => Some(Topography::new(&model, c)?),
        None => None,
    };
    let o = &config.optimizer;
    let mut adamw = AdamWConfig::new()
        .with_beta_1(o.beta1 as f32)
        .with_beta_2(o.beta2 as f32)
        .with_epsilon(1e-8)
        .with_weight_decay(o.weight_decay as f32);
    if o.grad_clip > 0.0 {
        adamw = adamw.with_grad_clipping(Some(GradientClippingConfig::Norm(o.grad_clip as f32)));
    }
    let trainable = trainable_parameters(&model, config.lora.is_some());
    eprintln!("{}: {trainable} trainable parameters", gpt.describe());
    let task = LanguageModelling {
        config,
        spec: LanguageModelSpec {
            gpt: gpt.clone(),
            lora: config.lora.clone(),
        },
        train: &train,
        val: &val,
        block,
    };
    let settings = RunSettings {
        devices: crate::parallel::consecutive_devices::<B>(
            &device,
            t.devices,
            options.accelerator,
        )?,
        pipeline: GradientPipeline {
            topography: topography.as_ref(),
            engine: config
                .topography
                .as_ref()
                .map_or(TopoEngine::Auto, |c| c.engine)
                .resolve(options.accelerator),
            // AdamW decays the weights itself (decoupled).
            weight_decay: 0.0,
            frozen: None,
        },
        seed: t.seed,
        log_every_steps: t.log_every,
        checkpoint_every_steps: t.checkpoint_every_steps,
        keep_checkpoints: config.output.keep_checkpoints,
    };
    let trained = engine::run(
        &task,
        model,
        adamw.init::<B, Gpt<B>>(),
        &settings,
        options,
        &run_dir,
    )?;

    let state = &trained.state;
    let last = state.history.last().context("no epoch finished")?;
    let val_loss = last.val_loss.context("the last epoch was not evaluated")?;
    let finished = trained.model.valid().merge_lora();
    save_gpt(&finished, &final_weights)?;
    let tokens_per_step = t.batch_size * t.grad_accum * block;
    let summary = LanguageSummary {
        run_dir: dir.clone(),
        model: gpt.describe(),
        steps: t.steps,
        tokens_per_step,
        initial_val_loss: state.initial_val_loss.unwrap_or(f64::NAN),
        val_loss,
        val_perplexity: val_loss.exp(),
        val_windows: last.val_samples,
        train_loss: last.train_loss,
        tau: last.tau,
        mean_topo_loss: last.mean_topo_loss,
        topo_layers: last.topo_layers.clone(),
        lora_rank: config.lora.as_ref().map(|l| l.rank),
        trainable_parameters: trainable,
        train_seconds: state.train_seconds,
        tokens_per_sec: tokens_per_step as f64 * t.steps as f64 / state.train_seconds.max(1e-9),
        final_weights,
    };
    write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// Opens `<dir>/train.bin` and `val.bin`, checking ids against the model's vocabulary.
pub fn open_tokens(dir: &Path, vocab_size: usize) -> Result<(TokenFile, TokenFile)> {
    let meta = read_meta(dir).with_context(|| {
        format!(
            "{} is not a token dataset; create one with `topotrain prep kjv --out {}`",
            dir.display(),
            dir.display()
        )
    })?;
    ensure!(
        meta.vocab_size <= vocab_size,
        "{}: tokens of a {}-entry vocabulary ({}) do not fit the model's vocab_size {vocab_size}",
        dir.display(),
        meta.vocab_size,
        meta.tokenizer
    );
    Ok((
        TokenFile::open(dir.join("train.bin"), vocab_size)?,
        TokenFile::open(dir.join("val.bin"), vocab_size)?,
    ))
}

fn trainable_parameters<B: AutodiffBackend>(model: &Gpt<B>, lora: bool) -> usize {
    if lora {
        model.lora_parameters()
    } else {
        model.num_params()
    }
}

/// Mean next-token cross-entropy of `model` on token windows `(x, y)`.
pub fn lm_loss<B: Backend>(
    model: &Gpt<B>,
    x: Tensor<B, 2, Int>,
    y: Tensor<B, 2, Int>,
    loss_fn: &burn::nn::loss::CrossEntropyLoss<B>,
) -> Tensor<B, 1> {
    let logits = model.forward(x);
    let [batch, tokens, vocab] = logits.dims();
    loss_fn.forward(
        logits.reshape([batch * tokens, vocab]),
        y.reshape([batch * tokens]),
    )
}

/// Inputs `tokens[s..s+block]` and targets `tokens[s+1..s+block+1]` per start `s`.
pub fn window_batch<B: Backend>(
    tokens: &TokenFile,
    starts: &[usize],
    block: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let mut x = Vec::with_capacity(starts.len() * block);
    let mut y = Vec::with_capacity(starts.len() * block);
    for &s in starts {
        tokens.extend_window(s, block, &mut x);
        tokens.extend_window(s + 1, block, &mut y);
    }
    let shape = [starts.len(), block];
    (
        Tensor::from_data(TensorData::new(x, shape), device),
        Tensor::from_data(TensorData::new(y, shape), device),
    )
}

/// Window starts of micro-batch `micro` of step `step`: a pure function of
/// the seed and the position, so runs are reproducible.
fn train_windows(
    tokens: &TokenFile,
    block: usize,
    batch: usize,
    seed: u64,
    step: usize,
    micro: usize,
) -> Vec<usize> {
    let choices = (tokens.len() - block - 1) as u64;
    let base = splitmix64(splitmix64(seed) ^ step as u64) ^ ((micro as u64) << 32);
    (0..batch)
        .map(|i| (splitmix64(base ^ i as u64) % choices) as usize)
        .collect()
}

/// `count` window starts spread evenly over the file (the same every time).
pub fn eval_windows(tokens: &TokenFile, block: usize, count: usize) -> Vec<usize> {
    let last = tokens.len() - block - 1;
    (0..count)
        .map(|i| i * last / count.max(2).saturating_sub(1).max(1))
        .map(|s| s.min(last))
        .collect()
}

/// Mean loss over `windows`, in batches of `batch_size` (no gradients).
pub fn evaluate_windows<B: Backend>(
    model: &Gpt<B>,
    tokens: &TokenFile,
    windows: &[usize],
    block: usize,
    batch_size: usize,
) -> Result<f64> {
    let device = model.transformer.wte.weight.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut total = 0.0;
    for chunk in windows.chunks(batch_size) {
        let (x, y) = window_batch::<B>(tokens, chunk, block, &device);
        let loss: f64 = lm_loss(model, x, y, &loss_fn).into_scalar().elem();
        total += loss * chunk.len() as f64;
    }
    let mean = total / windows.len().max(1) as f64;
    ensure!(mean.is_finite(), "the validation loss is {mean}");
    Ok(mean)
}

/// SplitMix64 (one step of the generator, then its finaliser).
fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TINY: &str = r#"
[gpt]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
vocab_size = 50257

[data]
dir = "data/kjv"

[topography]
tau = 1.0
layers = [{ patterns = ["transformer.h.*.mlp.c_fc"] }]

[optimizer]
lr = 1e-3
min_lr = 1e-4
warmup_steps = 2

[training]
steps = 10
batch_size = 4

[output]
dir = "runs/lm-test"
"#;

    #[test]
    fn parses_and_names_bad_values() {
        let config = LanguageConfig::parse(TINY).unwrap();
        assert_eq!(config.gpt.as_ref().unwrap().n_embd, 16);
        assert_eq!(config.training.grad_accum, 1);
        assert_eq!(TaskKind::of(TINY).unwrap(), TaskKind::Language);
        let bad = TINY.replace("lr = 1e-3", "lr = -1.0");
        let error = format!("{:#}", LanguageConfig::parse(&bad).unwrap_err());
        assert!(error.contains("optimizer.lr"), "{error}");
        let typo = TINY.replace("warmup_steps", "warmup_stpes");
        let error = format!("{:#}", LanguageConfig::parse(&typo).unwrap_err());
        assert!(error.contains("warmup_stpes"), "{error}");
        let both = TINY.replace("[data]", "base = \"x.safetensors\"\n[data]");
        assert!(LanguageConfig::parse(&both).is_err());
    }

    #[test]
    fn lr_warms_up_then_follows_a_cosine() {
        let o = LanguageConfig::parse(TINY).unwrap().optimizer;
        assert!((o.lr_at(0, 10) - 1e-3 / 3.0).abs() < 1e-12);
        assert!((o.lr_at(2, 10) - 1e-3).abs() < 1e-12);
        assert!((o.lr_at(6, 10) - 5.5e-4).abs() < 1e-12);
        assert!((o.lr_at(10, 10) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn training_windows_are_reproducible_and_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        data_prep::text::write_tokens(&path, &(0..100u16).collect::<Vec<_>>()).unwrap();
        let tokens = TokenFile::open(&path, 50257).unwrap();
        let a = train_windows(&tokens, 8, 16, 3, 5, 0);
        assert_eq!(a, train_windows(&tokens, 8, 16, 3, 5, 0));
        assert_ne!(a, train_windows(&tokens, 8, 16, 3, 5, 1));
        assert!(a.iter().all(|&s| s + 8 < 100));
        let e = eval_windows(&tokens, 8, 5);
        assert_eq!(e, [0, 22, 45, 68, 91]);
        let (x, y) = window_batch::<crate::Cpu>(&tokens, &[3], 4, &Default::default());
        let ids = |t: Tensor<crate::Cpu, 2, Int>| t.into_data().convert::<i64>().to_vec::<i64>();
        assert_eq!(ids(x).unwrap(), [3, 4, 5, 6]);
        assert_eq!(ids(y).unwrap(), [4, 5, 6, 7]);
    }
}
