//! `topotrain eval --checkpoint CKPT --data DIR`: top-1/top-5 of a run's
//! checkpoint, our safetensors or a PyTorch checkpoint on a prepared
//! validation set (or Fashion-MNIST IDX files).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use trainer::data::DataSet;
use trainer::eval::{EvalResult, EvalSettings, Tta};

use crate::backend::{run_on, BackendJob, DeviceChoice};
use network_analysis::input::{
    check_class_count, open_validation, run_classes, run_config_with, InputArgs,
};

#[derive(Args)]
pub struct EvalArgs {
    /// A run directory, one of its checkpoints, a .safetensors or a PyTorch .pt.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Validation data: a prepared `.topo` file, a directory holding
    /// `val.topo`, or a directory of Fashion-MNIST IDX files.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Images per forward pass.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 256)]
    pub batch: usize,
    #[command(flatten)]
    pub threads: crate::threads::ThreadsArg,
    /// Evaluate only this many batches.
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Test-time augmentation: "flip" averages the logits of each image and
    /// of its mirror (ffcv's lr_tta), "none" not (default: the run's
    /// data.val_tta, else none).
    #[arg(long)]
    pub tta: Option<Tta>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Change a value of the run's config.toml for this evaluation, e.g.
    /// `--set data.val_transform="torchvision"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<trainer::overrides::Override>,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    args.threads.apply();
    let run = run_config_with(&args.checkpoint, &args.set)?;
    let (res, crop_ratio, val_transform) = args.input.geometry(run.as_ref())?;
    let (data, path) = open_validation(&args.data, res, crop_ratio, val_transform)?;
    let (mean, std) = args.input.normalisation(run.as_ref(), data.channels())?;
    let tta = args
        .tta
        .or(run.as_ref().map(|r| r.data.val_tta))
        .unwrap_or_default();
    let settings = EvalSettings {
        resolution: res,
        batch_size: args.batch,
        mean: &mean,
        std: &std,
        max_batches: args.max_batches,
        tta,
    };
    let result = run_on(
        args.device,
        Evaluate {
            checkpoint: &args.checkpoint,
            data: &data,
            settings: &settings,
            run_classes: run_classes(run.as_ref(), &data, &path)?,
        },
    )?;
    let json = serde_json::json!({
        "checkpoint": args.checkpoint,
        "data": path,
        "resolution": res,
        "crop_ratio": crop_ratio,
        "val_transform": val_transform,
        "tta": tta,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "images": result.images,
    });
    if let Some(out) = &args.json {
        std::fs::write(out, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    eprintln!(
        "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  ({} images, test-time augmentation: {tta})",
        100.0 * result.top1,
        100.0 * result.top5,
        result.loss,
        result.images
    );
    println!("{}", serde_json::to_string(&json)?);
    Ok(())
}

struct Evaluate<'a> {
    checkpoint: &'a Path,
    data: &'a DataSet,
    settings: &'a EvalSettings<'a>,
    /// The run's classes, when known and equal to the data's.
    run_classes: Option<Vec<String>>,
}

impl BackendJob for Evaluate<'_> {
    type Output = EvalResult;
    /// Inference needs no autodiff: the model lives on the inner backend.
    fn run<B: AutodiffBackend>(self, device: B::Device, _: DeviceChoice) -> Result<EvalResult> {
        let model = trainer::eval::load_model::<B::InnerBackend>(self.checkpoint, &device)?;
        let res = self.settings.resolution;
        model
            .check_input(&[1, self.data.channels(), res, res])
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}: the data has {} channel(s); evaluate on data with the model's channels",
                    self.data.channels()
                )
            })?;
        if self.run_classes.is_none() {
            check_class_count(
                self.data,
                model.architecture().num_classes(),
                self.checkpoint,
            )?;
        }
        trainer::eval::evaluate(&model, self.data, self.settings, &device)
    }
}
