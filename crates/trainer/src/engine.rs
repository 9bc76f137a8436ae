//! The training engine: one loop (run, epoch, step) for every task, in the
//! spirit of burn-train's learner. A [`Recipe`] says what an epoch is, where
//! its batches come from, the learning rate and how to evaluate; the engine
//! does the rest the same way for every task: [`train_step`], metrics,
//! checkpoints with exact resume, stopping on request, the divergence guard.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use models::topography::TopoReport;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{self, EpochRecord, Running, TrainState, STATE_FORMAT};
use crate::cluster::{Cluster, ClusterConfig};
use crate::data::NodeShard;
use crate::metrics::{EpochLine, MetricsLog};
use crate::progress::{ProgressStyle, StepProgress, StepStatus};
use crate::run_dir::RunDir;
use crate::step::{train_step, Diverged, GradientPipeline, StepOutput, Task};

/// The micro-batches of each step of an epoch, in order.
pub type StepBatches<'a, T> = Box<dyn Iterator<Item = Result<Vec<T>>> + 'a>;

/// What a task's training run is made of, beyond the loss of one batch.
pub trait Recipe<B: AutodiffBackend>: Task<B> {
    /// What a checkpoint records of the network, to refuse resuming a
    /// checkpoint of another one.
    type Spec: Serialize + DeserializeOwned + PartialEq + Clone;

    fn spec(&self) -> Self::Spec;
    /// The network in words, for messages.
    fn describe(spec: &Self::Spec) -> String;
    fn epochs(&self) -> usize;
    fn steps_in_epoch(&self, epoch: usize) -> usize;
    /// The learning rate of step `step` of epoch `epoch`.
    fn lr(&self, epoch: usize, step: usize) -> f64;
    /// The micro-batches of each step of `epoch` from step `start`, this
    /// node's share of them.
    fn batches(
        &self,
        epoch: usize,
        start: usize,
        node: NodeShard,
    ) -> Result<StepBatches<'_, Self::Batch>>;
    /// Validation after `epoch` (0-based; `None`: before the first step),
    /// if one is due then.
    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
        epoch: Option<usize>,
    ) -> Result<Option<Evaluation>>;
    /// Samples an input counts as in the throughput (tokens per window).
    fn units_per_sample(&self) -> u64 {
        1
    }
    /// The metrics' name of the throughput, e.g. `images_per_sec`.
    fn throughput_name(&self) -> &'static str;
    /// The input resolution of `epoch`, for recipes that change it.
    fn resolution(&self, _epoch: usize) -> Option<usize> {
        None
    }
    /// Whether training accuracy means anything (classification).
    fn counts_correct(&self) -> bool {
        false
    }
    /// Loads a checkpoint's model record into `model`.
    fn restore(
        &self,
        model: Self::Model,
        record: &Path,
        device: &B::Device,
    ) -> Result<Self::Model> {
        load_model_record(model, record, device)
    }
}

/// Loads a checkpoint's model record (`record` without its `.mpk`) into
/// `model`, naming the file if Burn cannot read it.
pub fn load_model_record<B: AutodiffBackend, M: Module<B>>(
    model: M,
    record: &Path,
    device: &B::Device,
) -> Result<M> {
    model
        .load_file(record, &Rec::new(), device)
        .map_err(|e| checkpoint::unreadable_record(&record.with_extension("mpk"), e))
}

/// A validation result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    /// Samples evaluated: images, or token windows for language models.
    pub samples: u64,
}

impl Evaluation {
    /// exp(loss), for language models (those without accuracies).
    pub fn perplexity(&self) -> Option<f64> {
        self.top1.is_none().then(|| self.loss.exp())
    }
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.top1, self.top5) {
            (Some(top1), Some(top5)) => write!(
                f,
                "val top-1 {:.2}% top-5 {:.2}% loss {:.4} ({} images)",
                100.0 * top1,
                100.0 * top5,
                self.loss,
                self.samples
            ),
            _ => write!(
                f,
                "val loss {:.4} ppl {:.1} ({} windows)",
                self.loss,
                self.loss.exp(),
                self.samples
            ),
        }
    }
}

/// Asks a run to stop: the engine finishes the step in progress, writes a
/// checkpoint and returns [`Interrupted`]. Signal handlers set it with the
/// signal's number, so the process can exit with the conventional code.
#[derive(Debug, Clone, Default)]
pub struct Interrupter(Arc<AtomicUsize>);

impl Interrupter {
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests a stop for `reason` (a signal number, or any non-zero code).
    pub fn stop(&self, reason: usize) {
        self.0.store(reason.max(1), Ordering::SeqCst);
    }
    /// The reason given to [`Interrupter::stop`], if a stop was requested.
    pub fn reason(&self) -> Option<usize> {
        Some(self.0.load(Ordering::SeqCst)).filter(|&r| r != 0)
    }
    /// The shared flag, for signal handlers (`signal_hook::flag::register_usize`).
    pub fn flag(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.0)
    }
}

/// A run stopped on request; its state is in `checkpoint`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stopped after step {step}; resume from {} with --resume", checkpoint.display())]
pub struct Interrupted {
    pub step: u64,
    pub checkpoint: PathBuf,
    /// The reason given to the [`Interrupter`] (e.g. the signal number).
    pub reason: usize,
}

/// A run halted by [`FitOptions::halt_after_steps`], as a kill would leave it.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("halted after {steps} steps without a checkpoint (halt_after_steps, for tests)")]
pub struct Halted {
    pub steps: u64,
}

/// How one `fit` invocation runs, beyond the config.
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Testing: stop after this many steps of this invocation, right after
    /// any checkpoint due at that step and without writing one, as a kill
    /// would.
    pub halt_after_steps: Option<u64>,
    /// Show each step's progress: a bar on a terminal, else a plain line
    /// every `log_every_steps` steps.
    pub progress: bool,
    /// Train together with other processes (one per node); rank 0 writes
    /// `output.dir`, rank r `output.dir/node<r>`.
    pub cluster: Option<ClusterConfig>,
    /// Set to stop the run at the end of the step in progress, with a
    /// checkpoint.
    pub interrupter: Interrupter,
    /// Resume even where the config changed what the run trains.
    pub allow_config_change: bool,
    /// The device is an accelerator: the TopoLoss engine "auto" picks "device".
    pub accelerator: bool,
}

impl FitOptions {
    /// This process's run directory: `output_dir`, or `output_dir/node<r>`
    /// for rank r > 0 of a cluster.
    pub fn run_dir(&self, output_dir: &Path) -> PathBuf {
        match &self.cluster {
            Some(cluster) if cluster.rank > 0 => output_dir.join(format!("node{}", cluster.rank)),
            _ => output_dir.to_path_buf(),
        }
    }

    /// Nodes training the run (1 without a cluster).
    pub fn nodes(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.nodes)
    }
}

/// The run's fixed settings.
pub struct RunSettings<'a, B: AutodiffBackend> {
    pub devices: Vec<B::Device>,
    pub pipeline: GradientPipeline<'a>,
    pub seed: u64,
    pub log_every_steps: usize,
    /// Mid-epoch checkpoints every N steps (0: only at epoch ends).
    pub checkpoint_every_steps: usize,
    pub keep_checkpoints: usize,
}

/// A finished run.
pub struct Trained<M, S> {
    pub model: M,
    pub state: TrainState<S>,
    pub last_checkpoint: Option<PathBuf>,
    /// The TopoLoss of the last step that had one.
    pub last_report: Option<TopoReport>,
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// A note for a run resumed with another CPU thread count than its
/// checkpoint was written with (`None` when they agree or one is unknown).
pub fn thread_count_note(recorded: Option<usize>, now: usize) -> Option<String> {
    let recorded = recorded.filter(|&r| r != now)?;
    Some(format!(
        "the checkpoint was written with {recorded} CPU threads and this run uses {now}: training continues correctly, but bit-identical results to an uninterrupted run need the same count (training.threads = {recorded})"
    ))
}

/// Every parameter's module path and shape, in visiting order.
fn parameter_shapes<B: AutodiffBackend, M: Module<B>>(model: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        shapes: Vec<(String, Vec<usize>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let shape = param.lazy_shape().dims::<D>().to_vec();
            self.shapes.push((self.path.join("."), shape));
        }
    }
    let mut shapes = Shapes {
        path: vec![],
        shapes: vec![],
    };
    model.visit(&mut shapes);
    shapes.shapes
}

/// Refuses a model record whose tensors do not have the shapes of the
/// network the config builds (Burn loads such records without a word).
fn check_shapes(
    expected: &[(String, Vec<usize>)],
    loaded: &[(String, Vec<usize>)],
    record: &Path,
) -> Result<()> {
    let differing = expected
        .iter()
        .zip(loaded)
        .find(|(a, b)| a != b)
        .map(|((name, want), (_, got))| format!("{name} is {got:?} there, {want:?} here"));
    if differing.is_some() || expected.len() != loaded.len() {
        bail!(
            "{} holds another network than the config builds ({}); resume with the config the run started with, or start a new output.dir",
            record.display(),
            differing.unwrap_or_else(|| format!("{} tensors there, {} here", loaded.len(), expected.len()))
        );
    }
    Ok(())
}

/// Trains `model` with `optimizer` by `recipe` to the end of its last
/// epoch, continuing from `resume_from` if given.
pub fn run<B, R, O>(
    recipe: &R,
    mut model: R::Model,
    mut optimizer: O,
    settings: &RunSettings<B>,
    options: &FitOptions,
    run_dir: &RunDir,
) -> Result<Trained<R::Model, R::Spec>>
where
    B: AutodiffBackend,
    R: Recipe<B>,
    O: Optimizer<R::Model, B>,
{
    let device = settings.devices[0].clone();
    if let [first, .., last] = settings.devices.as_slice() {
        eprintln!(
            "data parallel over {} devices ({first:?} ... {last:?}), each taking a share of every micro-batch",
            settings.devices.len()
        );
    }
    let recorder = Rec::new();
    let mut state = TrainState {
        format: STATE_FORMAT,
        epoch: 0,
        batch: 0,
        step: 0,
        seed: settings.seed,
        running: Running::default(),
        history: vec![],
        architecture: recipe.spec(),
        train_seconds: 0.0,
        initial_val_loss: None,
        threads: None,
    };
    let mut last_checkpoint = None;
    if let Some(path) = run_dir.resume_from.clone() {
        checkpoint::verify(&path)?;
        state = checkpoint::read_state(&path)?;
        if state.architecture != recipe.spec() {
            bail!(
                "checkpoint {} is a {}, but the config builds a {}",
                path.display(),
                R::describe(&state.architecture),
                R::describe(&recipe.spec())
            );
        }
        let expected = parameter_shapes(&model);
        model = recipe.restore(model, &path.join("model"), &device)?;
        check_shapes(
            &expected,
            &parameter_shapes(&model),
            &path.join("model.mpk"),
        )?;
        if let Some(note) = thread_count_note(state.threads, rayon::current_num_threads()) {
            eprintln!("note: {note}");
        }
        let record = Recorder::<B>::load(&recorder, path.join("optim"), &device)
            .map_err(|e| checkpoint::unreadable_record(&path.join("optim.mpk"), e))?;
        optimizer = optimizer.load_record(record);
        eprintln!(
            "resuming {} at epoch {}, batch {} (step {})",
            run_dir.path.display(),
            state.epoch + 1,
            state.batch,
            state.step
        );
        last_checkpoint = Some(path);
    }
    state.threads = Some(rayon::current_num_threads());
    let mut metrics = MetricsLog::open(&run_dir.path.join("metrics.jsonl"), state.step)?;
    if !run_dir.config_changes.is_empty() {
        metrics.write(&serde_json::json!({
            "kind": "config_change",
            "step": state.step,
            "changes": run_dir.config_changes,
        }))?;
    }
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
    // Only finite weights make a checkpoint, so a resumable one is always good.
    let save = |state: &TrainState<R::Spec>,
                model: &R::Model,
                optimizer: &O,
                last: &mut Option<PathBuf>|
     -> Result<()> {
        let count = non_finite_values(model);
        if count > 0 {
            let error = NotFinite {
                step: state.step,
                count,
            };
            return Err(with_last_checkpoint(error.into(), last.as_deref()));
        }
        let path = checkpoint::commit(&run_dir.path, state, settings.keep_checkpoints, |tmp| {
            model
                .clone()
                .save_file(tmp.join("model"), &recorder)
                .with_context(|| format!("cannot save the model record in {}", tmp.display()))?;
            Recorder::<B>::record(&recorder, optimizer.to_record(), tmp.join("optim"))
                .with_context(|| {
                    format!("cannot save the optimiser record in {}", tmp.display())
                })?;
            Ok(())
        })?;
        *last = Some(path);
        Ok(())
    };

    if state.step == 0 {
        if let Some(evaluation) = recipe.evaluate(&model.valid(), None)? {
            eprintln!("before training: {evaluation}");
            metrics.write(&serde_json::json!({
                "kind": "eval",
                "step": 0,
                "val_loss": evaluation.loss,
                "val_top1": evaluation.top1,
                "val_perplexity": evaluation.perplexity(),
                "val_samples": evaluation.samples,
            }))?;
            state.initial_val_loss = Some(evaluation.loss);
        }
    }
    let epochs = recipe.epochs();
    let total_steps = (0..epochs).map(|e| recipe.steps_in_epoch(e) as u64).sum();
    let mut progress = StepProgress::new(
        ProgressStyle::for_stderr(options.progress),
        settings.log_every_steps,
        total_steps,
        state.step,
    );
    let mut steps_this_run = 0u64;
    let mut last_report = None;
    let mut lr = 0.0;
    while state.epoch < epochs {
        let epoch = state.epoch;
        let steps = recipe.steps_in_epoch(epoch);
        // A run stopped after an epoch's last step resumes at its end.
        let mut batches = if state.batch < steps {
            Some(recipe.batches(epoch, state.batch, node)?)
        } else {
            None
        };
        progress.start_epoch(epoch, epochs, steps, state.batch);
        let epoch_start = Instant::now();
        let mut epoch_units = 0u64;
        while state.batch < steps {
            let next_batch = batches.as_mut().and_then(|b| b.next());
            let micro_batches = next_batch.with_context(|| {
                format!(
                    "the training data ended at step {} of epoch {}",
                    state.batch,
                    epoch + 1
                )
            })??;
            let step_start = Instant::now();
            lr = recipe.lr(epoch, state.batch);
            let (next, output) = train_step(
                recipe,
                model,
                &mut optimizer,
                &micro_batches,
                &settings.devices,
                cluster.as_mut(),
                &settings.pipeline,
                state.step,
                lr,
                // Read before the step, so a cluster agrees on it in the step.
                options.interrupter.reason(),
            )
            .map_err(|e| with_last_checkpoint(e, last_checkpoint.as_deref()))?;
            model = next;
            state.step += 1;
            state.batch += 1;
            steps_this_run += 1;
            let step_seconds = step_start.elapsed().as_secs_f64();
            record_step(&mut state, &output, step_seconds);
            epoch_units += output.samples * recipe.units_per_sample();
            let throughput = epoch_units as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            if state
                .step
                .is_multiple_of(settings.log_every_steps.max(1) as u64)
            {
                metrics.write(&step_line(
                    recipe, epoch, state.step, lr, &output, throughput,
                ))?;
            }
            let r = &state.running;
            progress.step(&StepStatus {
                step: state.step,
                epoch,
                epochs,
                batch: state.batch,
                steps_in_epoch: steps,
                task_loss: r.task_loss / r.steps as f64,
                accuracy: recipe
                    .counts_correct()
                    .then(|| r.correct as f64 / r.images.max(1) as f64),
                mean_topo_loss: output.mean_topo_loss(),
                weighted_topo_loss: output.weighted_topo_loss(),
                lr,
                throughput,
                throughput_unit: &throughput_unit(recipe),
            });
            if output.topo.is_some() {
                last_report = output.topo;
            }
            // The epoch's end writes its own checkpoint, unless interrupted.
            let every = settings.checkpoint_every_steps as u64;
            let due = every > 0 && state.step.is_multiple_of(every) && state.batch < steps;
            let interrupted = output.stop;
            if due || interrupted.is_some() {
                save(&state, &model, &optimizer, &mut last_checkpoint)?;
            }
            if options.halt_after_steps == Some(steps_this_run) {
                return Err(Halted {
                    steps: steps_this_run,
                }
                .into());
            }
            if let Some(reason) = interrupted {
                return Err(interruption(&state, last_checkpoint, reason));
            }
        }
        drop(batches);
        progress.end_epoch();

        // End of epoch: evaluate, record, checkpoint.
        let evaluation = recipe.evaluate(&model.valid(), Some(epoch))?;
        let report = match settings.pipeline.topography {
            Some(t) => Some(t.report(&model, state.step)?),
            None => None,
        };
        let record = epoch_record(
            recipe,
            &state,
            lr,
            report.as_ref().or(last_report.as_ref()),
            evaluation,
        );
        eprintln!(
            "epoch {}/{}: train loss {:.4}{}{}{} ({:.0} {}, {:.1}s)",
            epoch + 1,
            epochs,
            record.train_loss,
            if recipe.counts_correct() {
                format!(" acc {:.2}%", 100.0 * record.train_acc)
            } else {
                String::new()
            },
            // Both at the epoch's end, like the summary's.
            report
                .as_ref()
                .and_then(|r| Some((r.mean_loss()?, r.total)))
                .map_or(String::new(), |(mean, weighted)| format!(
                    " TopoLoss {mean:.4} (tau-weighted {weighted:.4})"
                )),
            evaluation.map_or(String::new(), |e| format!(" | {e}")),
            epoch_units as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
            throughput_unit(recipe),
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
        save(&state, &model, &optimizer, &mut last_checkpoint)?;
        // A cluster stops only where its nodes agreed to, in a step.
        let local_stop = cluster.is_none().then(|| options.interrupter.reason());
        if let Some(reason) = local_stop.flatten() {
            if state.epoch < epochs {
                return Err(interruption(&state, last_checkpoint, reason));
            }
        }
    }
    Ok(Trained {
        model,
        state,
        last_checkpoint,
        last_report,
    })
}

/// Weights that are not finite after a step: the checkpoint due then is
/// not written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("after step {step} the weights hold {count} values that are NaN or infinite")]
pub struct NotFinite {
    pub step: u64,
    pub count: u64,
}

/// Adds where the run can be resumed from, and what to change, to a
/// divergence.
fn with_last_checkpoint(error: anyhow::Error, last: Option<&Path>) -> anyhow::Error {
    if !error.is::<Diverged>() && !error.is::<NotFinite>() {
        return error;
    }
    let kept = last.map_or("no checkpoint yet".to_string(), |p| {
        format!("the last good checkpoint is {}", p.display())
    });
    error.context(format!(
        "stopped without saving; {kept}; resuming from it repeats the divergence unless the config changes: lower the learning rate (lr.peak, or optimizer.lr for language runs)"
    ))
}

/// How many parameter values of `model` are NaN or infinite.
fn non_finite_values<B: AutodiffBackend, M: Module<B>>(model: &M) -> u64 {
    struct Count(u64);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>();
            let values = values.as_slice::<f32>().unwrap_or_default();
            self.0 += values.iter().filter(|v| !v.is_finite()).count() as u64;
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

fn interruption<S>(
    state: &TrainState<S>,
    checkpoint: Option<PathBuf>,
    reason: usize,
) -> anyhow::Error {
    Interrupted {
        step: state.step,
        checkpoint: checkpoint.unwrap_or_default(),
        reason,
    }
    .into()
}

fn record_step<S>(state: &mut TrainState<S>, output: &StepOutput, seconds: f64) {
    let r = &mut state.running;
    r.steps += 1;
    r.images += output.samples;
    r.correct += output.correct;
    r.task_loss += output.task_loss;
    r.weighted_topo_loss += output.weighted_topo_loss();
    r.seconds += seconds;
    state.train_seconds += seconds;
}

fn step_line<B: AutodiffBackend, R: Recipe<B>>(
    recipe: &R,
    epoch: usize,
    step: u64,
    lr: f64,
    output: &StepOutput,
    throughput: f64,
) -> serde_json::Value {
    let mut line = serde_json::json!({
        "kind": "train",
        "epoch": epoch + 1,
        "step": step,
        "lr": lr,
        "tau": output.topo.as_ref().map_or(0.0, TopoReport::mean_tau),
        "task_loss": output.task_loss,
        "mean_topo_loss": output.mean_topo_loss(),
        "weighted_topo_loss": output.weighted_topo_loss(),
        "topo_layers": output.topo.as_ref().map(TopoReport::layer_losses).unwrap_or_default(),
    });
    let fields = line.as_object_mut().expect("a JSON object");
    if let Some(resolution) = recipe.resolution(epoch) {
        fields.insert("resolution".into(), resolution.into());
    }
    if recipe.counts_correct() {
        let accuracy = output.correct as f64 / output.samples.max(1) as f64;
        fields.insert("train_acc".into(), accuracy.into());
    }
    fields.insert(recipe.throughput_name().into(), throughput.into());
    line
}

fn epoch_record<B: AutodiffBackend, R: Recipe<B>>(
    recipe: &R,
    state: &TrainState<R::Spec>,
    lr: f64,
    report: Option<&TopoReport>,
    evaluation: Option<Evaluation>,
) -> EpochRecord {
    let r = &state.running;
    EpochRecord {
        epoch: state.epoch + 1,
        step: state.step,
        resolution: recipe.resolution(state.epoch),
        lr,
        tau: report.map_or(0.0, TopoReport::mean_tau),
        train_loss: r.task_loss / r.steps.max(1) as f64,
        train_acc: r.correct as f64 / r.images.max(1) as f64,
        weighted_topo_loss: r.weighted_topo_loss / r.steps.max(1) as f64,
        mean_topo_loss: report.and_then(TopoReport::mean_loss),
        topo_layers: report.map(TopoReport::layer_losses).unwrap_or_default(),
        val_top1: evaluation.and_then(|e| e.top1),
        val_top5: evaluation.and_then(|e| e.top5),
        val_loss: evaluation.map(|e| e.loss),
        val_samples: evaluation.map(|e| e.samples),
        val_perplexity: evaluation.and_then(|e| e.perplexity()),
        images_per_sec: r.images as f64 * recipe.units_per_sample() as f64 / r.seconds.max(1e-9),
    }
}

/// "images/s" or "tokens/s": the unit of the recipe's throughput.
fn throughput_unit<B: AutodiffBackend, R: Recipe<B>>(recipe: &R) -> String {
    recipe.throughput_name().replace("_per_sec", "/s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::to_tensors;
    use crate::data::Batch;
    use crate::run_dir::{open_run_dir, OpenRunDir};
    use crate::sgd::InPlaceSgd;
    use crate::step::TaskBatch;
    use crate::CpuTrain;
    use burn::module::{ModuleVisitor, Param};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use models::topography::{TopoEngine, Topography, TopographyConfig};
    use models::{Architecture, Model, VitConfig};

    type Inner = <CpuTrain as AutodiffBackend>::InnerBackend;

    /// A tiny ViT (no BatchNorm, so micro-batches add up to the whole
    /// batch exactly) on images made from (epoch, step, micro-batch).
    struct Toy {
        epochs: usize,
        steps: usize,
        /// Micro-batches per step, and images in each.
        accum: usize,
        micro: usize,
        /// The step (1-based) whose loss is NaN.
        diverge_at: Option<u64>,
        /// A loss that does not depend on the model (no gradients).
        constant_loss: bool,
    }

    fn architecture() -> Architecture {
        Architecture::Vit(
            VitConfig::new()
                .with_image_size(8)
                .with_patch_size(4)
                .with_in_channels(1)
                .with_hidden_dim(8)
                .with_num_layers(1)
                .with_num_heads(2)
                .with_mlp_dim(16)
                .with_num_classes(3),
        )
    }

    /// `n` images whose pixels and labels depend on `key`.
    fn images(key: usize, n: usize) -> Batch {
        Batch {
            images: (0..n * 64)
                .map(|i| ((i * 31 + key * 97) % 251) as u8)
                .collect(),
            labels: (0..n).map(|i| ((i + key) % 3) as u32).collect(),
            channels: 1,
            height: 8,
            width: 8,
        }
    }

    fn cross_entropy<B: Backend>(
        model: &Model<B>,
        batch: &Batch,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let (x, y) = to_tensors::<B>(batch, &[128.0], &[64.0], device);
        CrossEntropyLossConfig::new()
            .init(device)
            .forward(model.forward(x), y)
    }

    impl Task<CpuTrain> for Toy {
        type Model = Model<CpuTrain>;
        type Batch = Batch;

        fn loss(
            &self,
            model: &Model<CpuTrain>,
            batch: &Batch,
            device: &burn::tensor::Device<CpuTrain>,
        ) -> Result<(Tensor<CpuTrain, 1>, u64)> {
            if self.constant_loss {
                return Ok((Tensor::from_floats([1.0], device).require_grad(), 0));
            }
            let loss = cross_entropy(model, batch, device);
            // The batch's first pixel marks the step that diverges.
            if batch.images[0] == 255 {
                return Ok((loss * f32::NAN, 0));
            }
            Ok((loss, 0))
        }
    }

    impl Recipe<CpuTrain> for Toy {
        type Spec = Architecture;

        fn spec(&self) -> Architecture {
            architecture()
        }
        fn describe(spec: &Architecture) -> String {
            spec.describe()
        }
        fn epochs(&self) -> usize {
            self.epochs
        }
        fn steps_in_epoch(&self, _epoch: usize) -> usize {
            self.steps
        }
        fn lr(&self, epoch: usize, step: usize) -> f64 {
            0.1 / (1 + epoch * self.steps + step) as f64
        }
        fn batches(
            &self,
            epoch: usize,
            start: usize,
            _node: NodeShard,
        ) -> Result<StepBatches<'_, Batch>> {
            Ok(Box::new((start..self.steps).map(move |step| {
                let global = (epoch * self.steps + step) as u64 + 1;
                Ok((0..self.accum)
                    .map(|micro| {
                        let mut batch = images(global as usize * 10 + micro, self.micro);
                        if self.diverge_at == Some(global) {
                            batch.images[0] = 255;
                        } else {
                            batch.images[0] = 0;
                        }
                        batch
                    })
                    .collect())
            })))
        }
        fn evaluate(
            &self,
            model: &Model<Inner>,
            epoch: Option<usize>,
        ) -> Result<Option<Evaluation>> {
            let Some(_) = epoch else { return Ok(None) };
            let loss = cross_entropy(model, &images(0, 4), &Default::default());
            Ok(Some(Evaluation {
                loss: loss.into_scalar() as f64,
                top1: Some(0.0),
                top5: Some(0.0),
                samples: 4,
            }))
        }
        fn throughput_name(&self) -> &'static str {
            "images_per_sec"
        }
    }

    /// Every parameter value of a model, in visiting order.
    fn weights<B: Backend>(model: &Model<B>) -> Vec<f32> {
        struct Values(Vec<f32>);
        impl<B: Backend> ModuleVisitor<B> for Values {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let values = param.val().into_data().convert::<f32>();
                self.0.extend(values.into_vec::<f32>().unwrap());
            }
        }
        let mut visitor = Values(vec![]);
        model.visit(&mut visitor);
        visitor.0
    }

    /// Two updates of `before` agree to 1e-4 of the largest change (other
    /// summation orders round differently; a gradient counted twice or
    /// missing would be off by whole changes), and most weights moved.
    fn assert_same_update(got: &[f32], want: &[f32], before: &[f32]) {
        let largest = want
            .iter()
            .zip(before)
            .fold(0.0f32, |m, (y, w)| m.max((y - w).abs()));
        let mut moved = 0;
        for ((x, y), w) in got.iter().zip(want).zip(before) {
            assert!(
                (x - y).abs() <= 1e-4 * largest,
                "{x} vs {y} (largest change {largest})"
            );
            moved += usize::from(y != w);
        }
        assert!(
            moved > before.len() / 2,
            "only {moved} of {} weights moved",
            before.len()
        );
    }

    /// The toy network with weights from a fixed formula: tests running in
    /// parallel share Burn's one random generator, so seeding it does not
    /// make an initialisation repeatable.
    fn fresh_model() -> Model<CpuTrain> {
        struct Fixed(u64);
        impl<B: Backend> burn::module::ModuleMapper<B> for Fixed {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                param.map(|t| {
                    let shape = t.shape();
                    let values: Vec<f32> = (0..shape.num_elements())
                        .map(|_| {
                            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
                            ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
                        })
                        .collect();
                    let data = burn::tensor::TensorData::new(values, shape);
                    Tensor::from_data(data, &t.device()).set_require_grad(t.is_require_grad())
                })
            }
        }
        let model: Model<CpuTrain> = architecture().init(&Default::default()).unwrap();
        model.map(&mut Fixed(7))
    }

    fn topography(model: &Model<CpuTrain>) -> Topography {
        let patterns = vec!["encoder.layers.*.mlp.0".to_string()];
        Topography::new(model, &TopographyConfig::uniform(&patterns, 2.0, 5.0)).unwrap()
    }

    fn settings(topography: Option<&Topography>) -> RunSettings<'_, CpuTrain> {
        RunSettings {
            devices: vec![Default::default()],
            pipeline: GradientPipeline {
                topography,
                engine: TopoEngine::Host,
                weight_decay: 0.01,
                frozen: None,
            },
            seed: 7,
            log_every_steps: 1,
            checkpoint_every_steps: 2,
            keep_checkpoints: 10,
        }
    }

    fn train(
        toy: &Toy,
        run_dir: &Path,
        options: &FitOptions,
    ) -> Result<Trained<Model<CpuTrain>, Architecture>> {
        let model = fresh_model();
        let topography = topography(&model);
        let how = OpenRunDir {
            resume: options.resume,
            ..OpenRunDir::default()
        };
        let run_dir = open_run_dir(run_dir, how, "")?;
        let optimizer = InPlaceSgd::new(0.9, false).init::<CpuTrain, Model<CpuTrain>>();
        run(
            toy,
            model,
            optimizer,
            &settings(Some(&topography)),
            options,
            &run_dir,
        )
    }

    const TOY: Toy = Toy {
        epochs: 2,
        steps: 3,
        accum: 2,
        micro: 2,
        diverge_at: None,
        constant_loss: false,
    };

    /// A stop asked on one node stops every node after the same step: the
    /// nodes agree on it in the step's gradient exchange.
    #[test]
    fn a_stop_on_one_node_is_agreed_by_every_node_in_the_step() {
        let pipeline = GradientPipeline {
            topography: None,
            engine: TopoEngine::Host,
            weight_decay: 0.0,
            frozen: None,
        };
        let stops = |asked: [Option<usize>; 2]| -> Vec<Option<usize>> {
            crate::cluster::on_loopback(&[0, 0], |rank, cluster| {
                let mut cluster = cluster.unwrap();
                let mut sgd = InPlaceSgd::new(0.0, false).init::<CpuTrain, Model<CpuTrain>>();
                let (_, output) = train_step(
                    &TOY,
                    fresh_model(),
                    &mut sgd,
                    &[images(rank, 2)],
                    &[Default::default()],
                    Some(&mut cluster),
                    &pipeline,
                    0,
                    0.1,
                    asked[rank],
                )
                .unwrap();
                output.stop
            })
        };
        assert_eq!(stops([None, Some(10)]), vec![Some(10), Some(10)]);
        assert_eq!(stops([None, None]), vec![None, None]);
    }

    #[test]
    fn micro_batches_add_up_to_the_whole_batch() {
        let device = Default::default();
        let pipeline = GradientPipeline {
            topography: None,
            engine: TopoEngine::Host,
            weight_decay: 0.0,
            frozen: None,
        };
        let whole = images(3, 4);
        let halves = [whole.slice(0..2), whole.slice(2..4)];
        // Two steps: the zero-initialised head (torchvision's ViT) passes no
        // gradient back in the first.
        let two_steps = |batches: &[Batch]| {
            let mut sgd = InPlaceSgd::new(0.0, false).init::<CpuTrain, Model<CpuTrain>>();
            let mut model = fresh_model();
            let mut output = None;
            for step in 0..2 {
                let (next, out) = train_step(
                    &TOY,
                    model,
                    &mut sgd,
                    batches,
                    &[device],
                    None,
                    &pipeline,
                    step,
                    1.0,
                    None,
                )
                .unwrap();
                (model, output) = (next, Some(out));
            }
            (weights(&model), output.unwrap())
        };
        let (accumulated, a) = two_steps(&halves);
        let (single, b) = two_steps(std::slice::from_ref(&whole));
        assert!(
            (a.task_loss - b.task_loss).abs() < 1e-6,
            "{} vs {}",
            a.task_loss,
            b.task_loss
        );
        assert_eq!((a.samples, b.samples), (4, 4));
        assert_same_update(&accumulated, &single, &weights(&fresh_model()));
    }

    #[test]
    fn the_update_adds_task_topoloss_and_decay_gradients_once_each() {
        let device = Default::default();
        let model = fresh_model();
        let topo = topography(&model);
        let batch = [images(5, 4)];
        let pipeline = GradientPipeline {
            topography: Some(&topo),
            engine: TopoEngine::Host,
            weight_decay: 0.01,
            frozen: None,
        };
        let mut sgd = InPlaceSgd::new(0.0, false).init::<CpuTrain, Model<CpuTrain>>();
        let (stepped, output) = train_step(
            &TOY,
            model.clone(),
            &mut sgd,
            &batch,
            &[device],
            None,
            &pipeline,
            0,
            0.5,
            None,
        )
        .unwrap();
        assert!(output.weighted_topo_loss() > 0.0);

        // The same gradient built by hand: task, then TopoLoss, then decay.
        let loss = cross_entropy(&model, &batch[0], &device);
        let mut grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        topo.add_to_gradients(&model, 0, TopoEngine::Host, &mut grads)
            .unwrap();
        crate::weight_decay::add_weight_decay(&model, 0.01, &mut grads);
        let mut plain = InPlaceSgd::new(0.0, false).init::<CpuTrain, Model<CpuTrain>>();
        let expected = plain.step(0.5, model.clone(), grads);
        assert_same_update(&weights(&stepped), &weights(&expected), &weights(&model));
    }

    #[test]
    fn a_diverged_step_updates_nothing_and_names_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let toy = Toy {
            diverge_at: Some(4),
            ..TOY
        };
        let error = train(&toy, dir.path(), &FitOptions::default())
            .err()
            .unwrap();
        let diverged = error.downcast_ref::<Diverged>().expect("a divergence");
        assert_eq!(diverged.step, 4);
        // Step 3 ended epoch 1 with a checkpoint; nothing was written after it.
        let message = format!("{error:#}");
        assert!(message.contains("last good checkpoint is"), "{message}");
        assert!(message.contains("step-0000000003"), "{message}");
        let latest = checkpoint::latest(dir.path()).unwrap().unwrap();
        assert!(latest.ends_with("step-0000000003"), "{}", latest.display());
    }

    #[test]
    fn weights_that_are_not_finite_make_no_checkpoint() {
        struct Poison;
        impl<B: Backend> burn::module::ModuleMapper<B> for Poison {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                param.map(|t| t.mul_scalar(f32::NAN))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let toy = Toy {
            constant_loss: true,
            ..TOY
        };
        let model = fresh_model().map(&mut Poison);
        assert_eq!(non_finite_values(&model), weights(&model).len() as u64);
        assert_eq!(non_finite_values(&fresh_model()), 0);
        let optimizer = InPlaceSgd::new(0.9, false).init::<CpuTrain, Model<CpuTrain>>();
        let error = run(
            &toy,
            model,
            optimizer,
            &settings(None),
            &FitOptions::default(),
            &open_run_dir(dir.path(), OpenRunDir::default(), "").unwrap(),
        )
        .err()
        .unwrap();
        let not_finite = error
            .downcast_ref::<NotFinite>()
            .expect("non-finite weights");
        assert_eq!(not_finite.step, 2);
        assert!(
            format!("{error:#}").contains("no checkpoint yet"),
            "{error:#}"
        );
        assert!(checkpoint::latest(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_checkpoint_of_another_network_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let halt = FitOptions {
            halt_after_steps: Some(2),
            ..FitOptions::default()
        };
        assert!(train(&TOY, dir.path(), &halt).is_err());
        let checkpoint = checkpoint::latest(dir.path()).unwrap().unwrap();
        // The same kinds of tensors, wider: Burn would load it.
        let Architecture::Vit(config) = architecture() else {
            unreachable!()
        };
        let wider: Model<CpuTrain> = Architecture::Vit(config.with_hidden_dim(12).with_mlp_dim(24))
            .init(&Default::default())
            .unwrap();
        wider
            .save_file(checkpoint.join("model"), &Rec::new())
            .unwrap();
        // Without checksums (as written before they were recorded), so the
        // shapes are what is checked.
        let state_path = checkpoint.join("state.json");
        let text = std::fs::read_to_string(&state_path).unwrap();
        let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
        state.as_object_mut().unwrap().remove("checksums");
        std::fs::write(&state_path, state.to_string()).unwrap();
        let resume = FitOptions {
            resume: true,
            ..FitOptions::default()
        };
        let error = format!("{:#}", train(&TOY, dir.path(), &resume).err().unwrap());
        assert!(error.contains("model.mpk holds another network"), "{error}");
        assert!(
            error.contains("conv_proj.weight is [12, 1, 4, 4] there"),
            "{error}"
        );
    }

    #[test]
    fn a_changed_thread_count_is_noted() {
        let note = thread_count_note(Some(4), 2).unwrap();
        assert!(note.contains("training.threads = 4"), "{note}");
        assert_eq!(thread_count_note(Some(2), 2), None);
        assert_eq!(thread_count_note(None, 2), None);
    }

    #[test]
    fn stopping_and_resuming_gives_the_uninterrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        let straight = train(&TOY, &dir.path().join("straight"), &FitOptions::default()).unwrap();
        assert_eq!(straight.state.step, 6);
        assert_eq!(straight.state.history.len(), 2);

        // Halted like a kill after step 5 (the checkpoint of step 4 stays).
        let halted = dir.path().join("halted");
        let options = FitOptions {
            halt_after_steps: Some(5),
            ..FitOptions::default()
        };
        let error = train(&TOY, &halted, &options).err().unwrap();
        assert!(error.is::<Halted>(), "{error:#}");
        let resumed = FitOptions {
            resume: true,
            ..FitOptions::default()
        };
        let halted = train(&TOY, &halted, &resumed).unwrap();

        // Interrupted (a signal) during the first step: a checkpoint there.
        let stopped = dir.path().join("stopped");
        let interrupter = Interrupter::new();
        interrupter.stop(15);
        let options = FitOptions {
            interrupter,
            ..FitOptions::default()
        };
        let error = train(&TOY, &stopped, &options).err().unwrap();
        let interrupted = error
            .downcast_ref::<Interrupted>()
            .expect("an interruption");
        assert_eq!((interrupted.step, interrupted.reason), (1, 15));
        assert!(interrupted.checkpoint.ends_with("step-0000000001"));
        let stopped = train(&TOY, &stopped, &resumed).unwrap();

        // Everything but the wall-clock figures is the same.
        let history = |trained: &Trained<Model<CpuTrain>, Architecture>| {
            let mut history = trained.state.history.clone();
            history
                .iter_mut()
                .for_each(|epoch| epoch.images_per_sec = 0.0);
            history
        };
        for other in [&halted, &stopped] {
            assert_eq!(weights(&other.model), weights(&straight.model));
            assert_eq!(history(other), history(&straight));
        }
    }
}
