//! `topotrain eval --checkpoint CKPT --data DIR`: top-1/top-5 of a run's
//! checkpoint, our safetensors or a PyTorch checkpoint on a prepared
//! validation set (or Fashion-MNIST IDX files).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use trainer::config::{DataFormat, DataSection, ResolutionSchedule};
use trainer::data::DataSet;
use trainer::eval::EvalResult;

use crate::device::{run_on, BackendJob, DeviceChoice};

#[derive(Args)]
pub struct EvalArgs {
    /// A run directory, one of its checkpoints, a .safetensors or a PyTorch .pt.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Validation data: a prepared `.topo` file, a directory holding
    /// `val.topo`, or a directory of Fashion-MNIST IDX files.
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluation resolution (default: the run's data.val_resolution, else 224).
    #[arg(long)]
    pub res: Option<usize>,
    /// Centre crop ratio (default: the run's, else 224/256).
    #[arg(long)]
    pub crop_ratio: Option<f64>,
    /// Per-channel mean, 0-255 (default: the run's, else ImageNet's).
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std, 0-255 (default: the run's, else ImageNet's).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Evaluate only this many batches.
    #[arg(long)]
    pub max_batches: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The run config next to a checkpoint, if any (for defaults).
fn run_config(checkpoint: &std::path::Path) -> Option<trainer::RunConfig> {
    let mut dir = Some(checkpoint);
    while let Some(d) = dir {
        let path = d.join("config.toml");
        if path.exists() {
            return trainer::RunConfig::load(path).ok();
        }
        dir = d.parent();
    }
    None
}

pub fn run(args: EvalArgs) -> Result<()> {
    let run = run_config(&args.checkpoint);
    let imagenet_mean = vec![0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0];
    let imagenet_std = vec![0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0];
    let mean = args
        .mean
        .clone()
        .or(run.as_ref().map(|r| r.data.mean.clone()))
        .unwrap_or(imagenet_mean);
    let std = args
        .std
        .clone()
        .or(run.as_ref().map(|r| r.data.std.clone()))
        .unwrap_or(imagenet_std);
    let res = args
        .res
        .or(run.as_ref().map(|r| r.data.val_resolution))
        .unwrap_or(224);
    let crop_ratio = args
        .crop_ratio
        .or(run.as_ref().map(|r| r.data.val_crop_ratio))
        .unwrap_or(224.0 / 256.0);
    let (format, path) = if args.data.join("t10k-images-idx3-ubyte.gz").exists() {
        (DataFormat::FashionMnistIdx, args.data.clone())
    } else if args.data.is_dir() {
        (DataFormat::Prepared, args.data.join("val.topo"))
    } else {
        (DataFormat::Prepared, args.data.clone())
    };
    let section = DataSection {
        format,
        train: path.clone(),
        val: path.clone(),
        mean: mean.clone(),
        std: std.clone(),
        resolution: ResolutionSchedule {
            start: res,
            end: None,
            ramp_start: 0,
            ramp_end: 0,
            multiple: 32,
        },
        val_resolution: res,
        val_crop_ratio: crop_ratio,
        flip: false,
        crop_scale: [0.08, 1.0],
        workers: 0,
    };
    let data = match format {
        DataFormat::FashionMnistIdx => trainer::data::DataSet::InMemory(std::sync::Arc::new(
            trainer::data::InMemory::fashion_mnist(&path, false, &section)?,
        )),
        DataFormat::Prepared => trainer::data::open_prepared(&path, &section)?,
    };
    if mean.len() != data.channels() || std.len() != data.channels() {
        bail!(
            "--mean/--std need {} value(s) (the data's channels), got {} and {}",
            data.channels(),
            mean.len(),
            std.len()
        );
    }
    let result = run_on(
        args.device,
        Evaluate {
            args: &args,
            data: &data,
            res,
            mean: &mean,
            std: &std,
        },
    )?;
    let json = serde_json::json!({
        "checkpoint": args.checkpoint,
        "data": path,
        "resolution": res,
        "crop_ratio": crop_ratio,
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
        "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  ({} images)",
        100.0 * result.top1,
        100.0 * result.top5,
        result.loss,
        result.images
    );
    println!("{}", serde_json::to_string(&json)?);
    Ok(())
}

struct Evaluate<'a> {
    args: &'a EvalArgs,
    data: &'a DataSet,
    res: usize,
    mean: &'a [f32],
    std: &'a [f32],
}

impl BackendJob for Evaluate<'_> {
    type Output = EvalResult;
    /// Inference needs no autodiff: the model lives on the inner backend.
    fn run<B: AutodiffBackend>(self, device: B::Device, _: DeviceChoice) -> Result<EvalResult> {
        let model = trainer::eval::load_model::<B::InnerBackend>(&self.args.checkpoint, &device)?;
        trainer::eval::evaluate(
            &model,
            self.data,
            self.res,
            self.args.batch,
            self.mean,
            self.std,
            self.args.max_batches,
            &device,
        )
    }
}
