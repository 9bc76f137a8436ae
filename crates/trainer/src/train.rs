//! The training loop: SGD with momentum, label-smoothed cross-entropy plus
//! TopoLoss, per-step learning rate, progressive resizing, evaluation,
//! checkpoints with exact resume, a divergence guard, metrics.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use models::topography::{TopoEngine, TopoReport, Topography};
use models::{Architecture, Model};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, EpochRecord, Running, TrainState, STATE_FORMAT};
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::RunConfig;
use crate::data::{self, Batch, DataSet, NodeShard, Split};
use crate::eval::{evaluate, EvalResult};
use crate::parallel;
use crate::sgd::InPlaceSgd;
use crate::sheet::{write_sheet_picture, SheetPicture};
use crate::weight_decay::add_weight_decay;

/// Options of one `fit` call beyond the config.
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Testing: abort the process (like SIGKILL) after this many optimiser
    /// steps in this invocation, right after any checkpoint due at that step.
    pub abort_after_steps: Option<u64>,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Accelerator device: the TopoLoss engine "auto" picks "device".
    pub accelerator: bool,
    /// Train together with other processes (one per node); rank 0 writes
    /// `output.dir`, rank r `output.dir/node<r>`.
    pub cluster: Option<ClusterConfig>,
}

/// The end-of-run summary (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub architecture: String,
    pub epochs: usize,
    pub steps: u64,
    /// Tau at the last step (0 without a topography).
    pub tau: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub val_loss: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Mean over topographic layers of the unscaled (tau = 1) TopoLoss.
    pub mean_topo_loss: Option<f64>,
    pub topo_layers: BTreeMap<String, f64>,
    pub train_seconds: f64,
    pub images_per_sec: f64,
    pub final_checkpoint: PathBuf,
    pub final_weights: PathBuf,
    /// The sheet picture of one topographic layer (absent without a
    /// topography, or if it could not be drawn; the run says why).
    #[serde(default)]
    pub sheet: Option<SheetPicture>,
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Trains `config` on `device`.
pub fn fit<B: AutodiffBackend>(
    config: &RunConfig,
    device: B::Device,
    options: &FitOptions,
) -> Result<Summary> {
    let run_dir = match &options.cluster {
        Some(cluster) if cluster.rank > 0 => {
            config.output.dir.join(format!("node{}", cluster.rank))
        }
        _ => config.output.dir.clone(),
    };
    let nodes = options.cluster.as_ref().map_or(1, |c| c.nodes);
    if !config.training.batch_size.is_multiple_of(nodes)
        || config.training.batch_size / nodes < config.training.devices
    {
        bail!(
            "training.batch_size = {} must split evenly over {nodes} nodes, at least one image per device each",
            config.training.batch_size
        );
    }
    fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let existing = checkpoint::latest(&run_dir)?;
    if existing.is_some() && !options.resume {
        bail!(
            "{} already has checkpoints; pass --resume to continue it, or choose another output.dir",
            run_dir.display()
        );
    }
    fs::write(run_dir.join("config.toml"), toml::to_string_pretty(config)?)?;

    let (train_data, val_data) = data::open(&config.data)?;
    check_data(config, &train_data, &val_data)?;
    let steps_per_epoch = config.steps_per_epoch(train_data.len());
    if steps_per_epoch == 0 {
        bail!(
            "training.batch_size = {} is larger than the training set ({} images)",
            config.training.batch_size,
            train_data.len()
        );
    }

    let architecture = config.architecture()?;
    B::seed(&device, config.training.seed);
    let precision = config.training.precision;
    let mut model: Model<B> = architecture.init(&device)?;
    if let (None, Some(path)) = (&existing, &config.model.init_weights) {
        load_initial_weights(&mut model, &architecture, path)?;
    }
    let mut model = model.with_precision(precision);
    let topography = match &config.topography {
        Some(t) => Some(Topography::new(&model, t)?),
        None => None,
    };
    if let Some(layer) = &config.output.sheet_layer {
        let names = topography
            .as_ref()
            .map(|t| t.layer_names())
            .unwrap_or_default();
        if !names.contains(&layer.as_str()) {
            bail!(
                "output.sheet_layer = {layer:?} is not a topographic layer of this run (they are: {})",
                if names.is_empty() { "none, there is no [topography]".to_string() } else { names.join(", ") }
            );
        }
    }
    let engine = config
        .topography
        .as_ref()
        .map_or(TopoEngine::Auto, |t| t.engine)
        .resolve(options.accelerator);
    let o = &config.optimizer;
    // Weight decay is added to the gradients (BatchNorm exempt, see
    // `weight_decay`), so the optimiser itself has none.
    let mut optimizer = InPlaceSgd::new(o.momentum, o.nesterov).init::<B, Model<B>>();
    let loss_config = CrossEntropyLossConfig::new()
        .with_smoothing((o.label_smoothing > 0.0).then_some(o.label_smoothing as f32));
    let devices =
        parallel::consecutive_devices::<B>(&device, config.training.devices, options.accelerator)?;
    if devices.len() > 1 {
        eprintln!(
            "data parallel over {} devices ({:?} ... {:?}), {} images each per step",
            devices.len(),
            devices[0],
            devices[devices.len() - 1],
            config.training.batch_size / nodes / devices.len()
        );
    }
    // One replica's forward pass and loss on its shard of the batch.
    let shard_loss = |replica: &Model<B>, shard: &Batch, on: &B::Device| {
        let (x, y) = to_tensors::<B>(shard, &config.data.mean, &config.data.std, on);
        let logits = replica.forward(x);
        let loss = loss_config.init(on).forward(logits.clone(), y);
        let correct = count_correct(logits, &shard.labels);
        Ok((loss, correct))
    };

    let recorder = Rec::new();
    let mut state = TrainState {
        format: STATE_FORMAT,
        epoch: 0,
        batch: 0,
        step: 0,
        seed: config.training.seed,
        running: Running::default(),
        history: vec![],
        architecture: architecture.clone(),
        train_seconds: 0.0,
    };
    let mut last_checkpoint: Option<PathBuf> = None;
    if let Some(path) = existing {
        state = checkpoint::read_state(&path)?;
        if state.architecture != architecture {
            bail!(
                "checkpoint {} is a {}, but the config builds a {}",
                path.display(),
                state.architecture.describe(),
                architecture.describe()
            );
        }
        model = model
            .load_file(path.join("model"), &recorder, &device)
            .map_err(|e| checkpoint::unreadable_record(&path.join("model.mpk"), e))?
            .with_precision(precision);
        let record = Recorder::<B>::load(&recorder, path.join("optim"), &device)
            .map_err(|e| checkpoint::unreadable_record(&path.join("optim.mpk"), e))?;
        optimizer = optimizer.load_record(record);
        eprintln!(
            "resuming {} at epoch {}, batch {} (step {})",
            run_dir.display(),
            state.epoch + 1,
            state.batch,
            state.step
        );
        last_checkpoint = Some(path);
    }
    let mut metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), state.step)?;
    let mut cluster = match &options.cluster {
        Some(c) => {
            eprintln!(
                "node {} of {}: waiting for the others at {}",
                c.rank, c.nodes, c.address
            );
            Some(Cluster::connect(c, state.step)?)
        }
        None => None,
    };
    let node = cluster.as_ref().map_or(NodeShard::WHOLE, |c| NodeShard {
        rank: c.rank(),
        nodes: c.nodes(),
    });

    let epochs = config.training.epochs;
    let batch_size = config.training.batch_size;
    let mut steps_this_run = 0u64;
    let mut last_report: Option<TopoReport> = None;
    let mut lr = 0.0;
    while state.epoch < epochs {
        let epoch = state.epoch;
        let resolution = config.data.resolution.at(epoch);
        let split = Split::Train {
            seed: config.training.seed,
            epoch: epoch as u64,
            resolution,
            node,
        };
        let mut batches = train_data.batches(split, state.batch, batch_size / node.nodes)?;
        let progress = progress_bar(
            options.progress,
            epoch,
            epochs,
            steps_per_epoch,
            state.batch,
        );
        let epoch_start = Instant::now();
        let mut epoch_images = 0u64;
        while state.batch < steps_per_epoch {
            let batch = match batches.next() {
                Some(b) => b?,
                None => bail!(
                    "the training data ended at batch {} of epoch {}",
                    state.batch,
                    epoch + 1
                ),
            };
            let step_start = Instant::now();
            lr = config.lr.at(
                epoch as f64 + state.batch as f64 / steps_per_epoch as f64,
                epochs,
            );
            let (mut grads, totals) =
                parallel::data_parallel_gradients(&model, &devices, &batch, shard_loss)?;
            let (mut task_loss, mut correct) = (totals.loss, totals.correct);
            if let Some(cluster) = &mut cluster {
                // Mean gradient and loss over the nodes; correct predictions summed.
                let mut extra = [task_loss as f32, correct as f32];
                cluster.average_gradients(&model, &mut grads, &mut extra)?;
                task_loss = extra[0] as f64;
                correct = (extra[1] * node.nodes as f32).round() as u64;
            }
            let report = match &topography {
                Some(t) => Some(t.add_to_gradients(&model, state.step, engine, &mut grads)?),
                None => None,
            };
            let topo_loss = report.as_ref().map_or(0.0, |r| r.total);
            if !task_loss.is_finite() || !topo_loss.is_finite() {
                let kept = last_checkpoint
                    .as_ref()
                    .map_or("no checkpoint yet".to_string(), |p| {
                        format!("the last good checkpoint is {}", p.display())
                    });
                bail!(
                    "training diverged at step {} (epoch {}, batch {}): task loss {task_loss}, TopoLoss {topo_loss}; stopped without saving; {kept}",
                    state.step + 1,
                    epoch + 1,
                    state.batch
                );
            }
            if o.weight_decay > 0.0 {
                add_weight_decay(&model, o.weight_decay, &mut grads);
            }
            model = optimizer.step(lr, model, grads);
            state.step += 1;
            state.batch += 1;
            steps_this_run += 1;
            let n = (batch.len() * node.nodes) as u64;
            epoch_images += n;
            state.running.steps += 1;
            state.running.images += n;
            state.running.correct += correct;
            state.running.task_loss += task_loss;
            state.running.topo_loss += topo_loss;
            let step_seconds = step_start.elapsed().as_secs_f64();
            state.running.seconds += step_seconds;
            state.train_seconds += step_seconds;
            let images_per_sec =
                epoch_images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            let tau = report.as_ref().map_or(0.0, TopoReport::mean_tau);
            if state
                .step
                .is_multiple_of(config.training.log_every_steps as u64)
            {
                metrics.write(&StepLine {
                    kind: "train",
                    epoch: epoch + 1,
                    step: state.step,
                    lr,
                    tau,
                    resolution,
                    task_loss,
                    topo_loss,
                    topo_layers: report
                        .as_ref()
                        .map(TopoReport::layer_losses)
                        .unwrap_or_default(),
                    train_acc: correct as f64 / n as f64,
                    images_per_sec,
                })?;
            }
            if let Some(bar) = &progress {
                let r = &state.running;
                bar.set_message(format!(
                    "loss {:.4} topo {:.4} acc {:.2}% {:.0} img/s",
                    r.task_loss / r.steps as f64,
                    r.topo_loss / r.steps as f64,
                    100.0 * r.correct as f64 / r.images as f64,
                    images_per_sec
                ));
                bar.inc(1);
            }
            if report.is_some() {
                last_report = report;
            }
            let every = config.training.checkpoint_every_steps as u64;
            if every > 0 && state.step.is_multiple_of(every) && state.batch < steps_per_epoch {
                last_checkpoint = Some(save(
                    &run_dir, config, &state, &model, &optimizer, &recorder,
                )?);
            }
            if options.abort_after_steps == Some(steps_this_run) {
                eprintln!("--abort-after-steps: aborting after step {}", state.step);
                std::process::abort();
            }
        }
        drop(batches);
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }

        // End of epoch: evaluate, record, checkpoint.
        let last_epoch = epoch + 1 == epochs;
        let eval = if last_epoch || (epoch + 1).is_multiple_of(config.training.eval_every_epochs) {
            Some(run_eval(config, &model.valid(), &val_data, &device)?)
        } else {
            None
        };
        let report = match &topography {
            Some(t) => Some(t.report(&model, state.step)?),
            None => None,
        };
        let r = &state.running;
        let record = EpochRecord {
            epoch: epoch + 1,
            step: state.step,
            resolution,
            lr,
            tau: report
                .as_ref()
                .or(last_report.as_ref())
                .map_or(0.0, TopoReport::mean_tau),
            train_loss: r.task_loss / r.steps.max(1) as f64,
            train_acc: r.correct as f64 / r.images.max(1) as f64,
            topo_loss: r.topo_loss / r.steps.max(1) as f64,
            topo_layers: report
                .as_ref()
                .map(TopoReport::layer_losses)
                .unwrap_or_default(),
            val_top1: eval.as_ref().map(|e| e.top1),
            val_top5: eval.as_ref().map(|e| e.top5),
            val_loss: eval.as_ref().map(|e| e.loss),
            images_per_sec: r.images as f64 / r.seconds.max(1e-9),
        };
        eprintln!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% topo {:.4}{} ({:.0} img/s, {:.1}s)",
            epoch + 1,
            epochs,
            record.train_loss,
            100.0 * record.train_acc,
            record.topo_loss,
            eval.as_ref().map_or(String::new(), |e| format!(
                " | val top-1 {:.2}% top-5 {:.2}% loss {:.4}",
                100.0 * e.top1,
                100.0 * e.top5,
                e.loss
            )),
            epoch_images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
            epoch_start.elapsed().as_secs_f64(),
        );
        metrics.write(&EpochLine {
            kind: "epoch",
            record: record.clone(),
        })?;
        state.history.push(record);
        state.epoch += 1;
        state.batch = 0;
        state.running = Running::default();
        last_checkpoint = Some(save(
            &run_dir, config, &state, &model, &optimizer, &recorder,
        )?);
    }

    // The final weights in torchvision layout, for `eval` and analysis tools.
    let final_weights = run_dir.join("final.safetensors");
    let model = model.valid();
    models::save_checkpoint(&model, &final_weights)?;
    let mut summary = summarise(&run_dir, config, &state, last_checkpoint, final_weights)?;
    if let Some(topography) = &topography {
        let layer = config.output.sheet_layer.as_deref();
        match write_sheet_picture(&model, topography, layer, summary.tau, &run_dir) {
            Ok(picture) => {
                eprintln!(
                    "sheet of {} (smoothness {:.3}): {}",
                    picture.layer,
                    picture.smoothness,
                    picture.png.display()
                );
                summary.sheet = Some(picture);
            }
            // The trained run is complete and saved; only the picture is missing.
            Err(e) => eprintln!("warning: no sheet picture: {e:#}"),
        }
    }
    checkpoint::write_atomic(
        &run_dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// `model.init_weights`: the weights a new run of `architecture` starts from.
fn load_initial_weights<B: Backend>(
    model: &mut Model<B>,
    architecture: &Architecture,
    path: &Path,
) -> Result<()> {
    let shown = path.display().to_string();
    let info = models::inspect_checkpoint(path)
        .with_context(|| format!("model.init_weights = {shown:?}"))?;
    models::load_weights(model, &info).with_context(|| {
        format!(
            "model.init_weights = {shown:?} holds a {}, but [model] builds a {}; point it at weights of that architecture",
            info.architecture.describe(),
            architecture.describe()
        )
    })
}

fn check_data(config: &RunConfig, train: &DataSet, val: &DataSet) -> Result<()> {
    for (name, set) in [("data.train", train), ("data.val", val)] {
        if set.channels() != config.model.in_channels {
            bail!(
                "{name}: the data has {} channel(s) but model.in_channels = {}",
                set.channels(),
                config.model.in_channels
            );
        }
        if set.num_classes() > config.model.num_classes {
            bail!(
                "{name}: the data has {} classes but model.num_classes = {}",
                set.num_classes(),
                config.model.num_classes
            );
        }
    }
    Ok(())
}

fn run_eval<B: Backend>(
    config: &RunConfig,
    model: &Model<B>,
    val: &DataSet,
    device: &B::Device,
) -> Result<EvalResult> {
    evaluate(
        model,
        val,
        config.data.val_resolution,
        config
            .training
            .eval_batch_size
            .unwrap_or(config.training.batch_size),
        &config.data.mean,
        &config.data.std,
        config.training.max_eval_batches,
        device,
    )
}

fn save<B: AutodiffBackend, O: Optimizer<Model<B>, B>>(
    run_dir: &Path,
    config: &RunConfig,
    state: &TrainState,
    model: &Model<B>,
    optimizer: &O,
    recorder: &Rec,
) -> Result<PathBuf> {
    checkpoint::commit(run_dir, state, config.output.keep_checkpoints, |tmp| {
        model
            .clone()
            .save_file(tmp.join("model"), recorder)
            .context("cannot save the model record")?;
        Recorder::<B>::record(recorder, optimizer.to_record(), tmp.join("optim"))
            .context("cannot save the optimiser record")?;
        Ok(())
    })
}

fn summarise(
    run_dir: &Path,
    config: &RunConfig,
    state: &TrainState,
    last_checkpoint: Option<PathBuf>,
    final_weights: PathBuf,
) -> Result<Summary> {
    let last = state.history.last().context("no epoch finished")?;
    let mean_topo_loss = (!last.topo_layers.is_empty())
        .then(|| last.topo_layers.values().sum::<f64>() / last.topo_layers.len() as f64);
    Ok(Summary {
        run_dir: run_dir.to_path_buf(),
        architecture: state.architecture.describe(),
        epochs: config.training.epochs,
        steps: state.step,
        tau: last.tau,
        val_top1: last.val_top1.unwrap_or(f64::NAN),
        val_top5: last.val_top5.unwrap_or(f64::NAN),
        val_loss: last.val_loss.unwrap_or(f64::NAN),
        train_loss: last.train_loss,
        train_acc: last.train_acc,
        mean_topo_loss,
        topo_layers: last.topo_layers.clone(),
        train_seconds: state.train_seconds,
        images_per_sec: last.images_per_sec,
        final_checkpoint: last_checkpoint.unwrap_or_default(),
        final_weights,
        sheet: None,
    })
}

/// How many rows of `logits` have their largest value at the label.
fn count_correct<B: Backend>(logits: Tensor<B, 2>, labels: &[u32]) -> u64 {
    let predicted = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == **l as i64)
        .count() as u64
}

/// A batch as normalised float images and integer labels on `device`.
pub fn to_tensors<B: Backend>(
    batch: &Batch,
    mean: &[f32],
    std: &[f32],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let pixels = data::normalise(batch, mean, std);
    let x = Tensor::from_data(
        TensorData::new(
            pixels,
            [batch.len(), batch.channels, batch.height, batch.width],
        ),
        device,
    );
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::from_data(TensorData::new(labels, [batch.len()]), device);
    (x, y)
}

fn progress_bar(
    enabled: bool,
    epoch: usize,
    epochs: usize,
    steps: usize,
    position: usize,
) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:25}] {pos}/{len} {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar.set_position(position as u64);
    bar.reset_eta();
    Some(bar)
}

#[derive(Serialize)]
struct StepLine {
    kind: &'static str,
    epoch: usize,
    step: u64,
    lr: f64,
    tau: f64,
    resolution: usize,
    task_loss: f64,
    topo_loss: f64,
    topo_layers: BTreeMap<String, f64>,
    train_acc: f64,
    images_per_sec: f64,
}

#[derive(Serialize)]
struct EpochLine {
    kind: &'static str,
    #[serde(flatten)]
    record: EpochRecord,
}

/// `metrics.jsonl`: one JSON object per line. On resume, lines past the
/// checkpoint's step (written by the killed run after it) are dropped, so
/// the log reads as if the run had never stopped; a new run (step 0)
/// starts an empty log.
pub(crate) struct MetricsLog {
    file: fs::File,
}

impl MetricsLog {
    pub(crate) fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let kept = match fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    let step = value
                        .get("step")
                        .and_then(|s| s.as_u64())
                        .unwrap_or(u64::MAX);
                    step <= resume_step && !(step == resume_step && resume_step == 0)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            Err(_) => String::new(),
        };
        checkpoint::write_atomic(path, kept.as_bytes())?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { file })
    }

    pub(crate) fn write(&mut self, line: &impl Serialize) -> Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        Ok(())
    }
}
