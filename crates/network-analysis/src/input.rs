//! What `topotrain eval` and `topotrain analyze` share about reading a
//! checkpoint's validation data: the run config next to a checkpoint, the
//! input options (resolution, crop, normalisation) with the run's values as
//! defaults, and opening a validation set from a path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use data_prep::ValTransform;
use trainer::config::{DataFormat, DataSection, ResolutionSchedule};
use trainer::data::DataSet;
use trainer::overrides::Override;

/// torchvision's ImageNet normalisation, in 0-255 pixel units.
const IMAGENET_MEAN: [f32; 3] = [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0];
const IMAGENET_STD: [f32; 3] = [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0];

/// The `config.toml` of the run a checkpoint belongs to (in the checkpoint's
/// directory or any above it), if there is one. One that does not parse is
/// an error rather than silently falling back to other defaults.
pub fn run_config(checkpoint: &Path) -> Result<Option<trainer::RunConfig>> {
    run_config_with(checkpoint, &[])
}

/// [`run_config`] with `--set` overrides applied (an error without a run
/// config to apply them to).
pub fn run_config_with(
    checkpoint: &Path,
    overrides: &[Override],
) -> Result<Option<trainer::RunConfig>> {
    let Some(path) = checkpoint
        .ancestors()
        .map(|dir| dir.join("config.toml"))
        .find(|path| path.is_file())
    else {
        if let Some(first) = overrides.first() {
            bail!(
                "--set {}: {} has no run config (config.toml) beside it to change; \
                 give the input settings as options (--res, --crop-ratio, --mean, --std, --val-transform, --tta)",
                first.key,
                checkpoint.display()
            );
        }
        return Ok(None);
    };
    let config = trainer::overrides::read(&path, overrides)
        .and_then(|text| trainer::RunConfig::parse(&text))
        .with_context(|| {
        format!(
            "{} (the run config of {}) does not load; fix it, or move the checkpoint out of the run directory",
            path.display(),
            checkpoint.display()
        )
    })?;
    Ok(Some(config))
}

/// Resolution and normalisation of the network's input.
#[derive(Args, Clone, Debug, Default)]
pub struct InputArgs {
    /// Input resolution (default: the run's data.val_resolution, else 224).
    #[arg(long)]
    pub res: Option<usize>,
    /// Centre crop ratio of the validation set (default: the run's, else 224/256).
    #[arg(long)]
    pub crop_ratio: Option<f64>,
    /// Per-channel mean, 0-255 (default: the run's, else ImageNet's).
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std, 0-255 (default: the run's, else ImageNet's).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// Whose centre crop: "ffcv" or "torchvision" (Resize(256) +
    /// CenterCrop(224) at 224 px; default: the run's data.val_transform, else ffcv).
    #[arg(long)]
    pub val_transform: Option<ValTransform>,
}

/// Resolved input settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub res: usize,
    pub crop_ratio: f64,
    pub val_transform: ValTransform,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl InputArgs {
    /// Resolution and centre-crop ratio: explicit, else the run's, else
    /// ImageNet evaluation's (224 of 256).
    pub fn geometry(&self, run: Option<&trainer::RunConfig>) -> Result<(usize, f64, ValTransform)> {
        let res = self
            .res
            .or(run.map(|r| r.data.val_resolution))
            .unwrap_or(224);
        trainer::config::check_resolution("--res", res)?;
        let crop_ratio = self
            .crop_ratio
            .or(run.map(|r| r.data.val_crop_ratio))
            .unwrap_or(224.0 / 256.0);
        if !(crop_ratio.is_finite() && crop_ratio > 0.0 && crop_ratio <= 1.0) {
            bail!("--crop-ratio must be in (0, 1], got {crop_ratio}");
        }
        let val_transform = self
            .val_transform
            .or(run.map(|r| r.data.val_transform))
            .unwrap_or_default();
        Ok((res, crop_ratio, val_transform))
    }

    /// Per-channel mean and std for `channels` input channels: explicit, else
    /// the run's, else ImageNet's (its average for one channel).
    pub fn normalisation(
        &self,
        run: Option<&trainer::RunConfig>,
        channels: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let imagenet = |values: [f32; 3]| -> Vec<f32> {
            if channels == 3 {
                values.to_vec()
            } else {
                vec![values.iter().sum::<f32>() / 3.0; channels]
            }
        };
        let mean = self
            .mean
            .clone()
            .or(run.map(|r| r.data.mean.clone()))
            .unwrap_or_else(|| imagenet(IMAGENET_MEAN));
        let std = self
            .std
            .clone()
            .or(run.map(|r| r.data.std.clone()))
            .unwrap_or_else(|| imagenet(IMAGENET_STD));
        if mean.len() != channels || std.len() != channels {
            bail!(
                "--mean/--std need {channels} value(s) (the input's channels), got {} and {}",
                mean.len(),
                std.len()
            );
        }
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("--std values must be positive");
        }
        Ok((mean, std))
    }

    /// [`Self::geometry`] and [`Self::normalisation`] together.
    pub fn resolve(&self, run: Option<&trainer::RunConfig>, channels: usize) -> Result<Input> {
        let (res, crop_ratio, val_transform) = self.geometry(run)?;
        let (mean, std) = self.normalisation(run, channels)?;
        Ok(Input {
            res,
            crop_ratio,
            val_transform,
            mean,
            std,
        })
    }
}

/// Opens validation data at `res`: a prepared `.topo` file, a directory
/// holding `val.topo`, or a directory of Fashion-MNIST IDX files (its test
/// split). Returns the set and the file or directory actually read.
pub fn open_validation(
    path: &Path,
    res: usize,
    crop_ratio: f64,
    val_transform: ValTransform,
) -> Result<(DataSet, PathBuf)> {
    let (format, file) = if path.join("t10k-images-idx3-ubyte.gz").exists() {
        (DataFormat::FashionMnistIdx, path.to_path_buf())
    } else if path.is_dir() {
        (DataFormat::Prepared, path.join("val.topo"))
    } else {
        (DataFormat::Prepared, path.to_path_buf())
    };
    if !file.exists() {
        bail!(
            "no validation data at {}: give a prepared .topo file, a directory holding val.topo (`topotrain prep ...`), or a directory of Fashion-MNIST IDX files",
            file.display()
        );
    }
    let section = DataSection {
        format,
        train: file.clone(),
        val: file.clone(),
        // Normalisation happens when batches become tensors, not here.
        mean: Vec::new(),
        std: Vec::new(),
        resolution: ResolutionSchedule {
            start: res,
            end: None,
            ramp_start: 0,
            ramp_end: 0,
            multiple: 32,
        },
        val_resolution: res,
        val_crop_ratio: crop_ratio,
        val_transform,
        // Test-time augmentation is the evaluation's, not the data's.
        val_tta: Default::default(),
        flip: false,
        crop_scale: [0.08, 1.0],
        workers: 0,
    };
    let data = match format {
        DataFormat::FashionMnistIdx => DataSet::InMemory(Arc::new(
            trainer::data::InMemory::fashion_mnist(&file, false, &section)
                .with_context(|| format!("cannot read {} at --res {res}", file.display()))?,
        )),
        DataFormat::Prepared => trainer::data::open_prepared(&file, &section)?,
    };
    Ok((data, file))
}

/// The classes of the run a checkpoint belongs to (its data.val's), if
/// known; `data` must have the same. Without them, see [`check_class_count`].
pub fn run_classes(
    run: Option<&trainer::RunConfig>,
    data: &DataSet,
    data_path: &Path,
) -> Result<Option<Vec<String>>> {
    let Some(run) = run else { return Ok(None) };
    if !run.data.val.is_file() {
        return Ok(None);
    }
    let Ok(run_val) = trainer::data::open_prepared(&run.data.val, &run.data) else {
        return Ok(None);
    };
    let (Some(run_names), Some(names)) = (run_val.class_names(), data.class_names()) else {
        return Ok(None);
    };
    let shown = data_path.display().to_string();
    trainer::classification::check_class_lists(("the run's data.val", run_names), (&shown, names))?;
    Ok(Some(run_names.to_vec()))
}

/// Fails unless `data` has as many classes as the network of `checkpoint`
/// outputs, so that no label is compared with another class's logit.
pub fn check_class_count(data: &DataSet, classes: usize, checkpoint: &Path) -> Result<()> {
    if data.num_classes() != classes {
        bail!(
            "the data has {} classes but {} outputs {classes}, so its labels would be \
             compared with other classes; use data prepared with the model's classes \
             (for an ImageNet model, the whole 1000-class validation set)",
            data.num_classes(),
            checkpoint.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_imagenet_and_grey_for_one_channel() {
        let args = InputArgs::default();
        let rgb = args.resolve(None, 3).unwrap();
        assert_eq!((rgb.res, rgb.crop_ratio), (224, 0.875));
        assert_eq!(rgb.mean, IMAGENET_MEAN.to_vec());
        let grey = args.resolve(None, 1).unwrap();
        assert_eq!(grey.mean.len(), 1);
        assert!((grey.mean[0] - IMAGENET_MEAN.iter().sum::<f32>() / 3.0).abs() < 1e-4);
    }

    #[test]
    fn bad_values_are_errors_naming_the_option() {
        let wrong_count = InputArgs {
            mean: Some(vec![1.0, 2.0]),
            ..Default::default()
        };
        let err = wrong_count.resolve(None, 3).unwrap_err().to_string();
        assert!(err.contains("--mean/--std need 3"), "{err}");
        let zero_std = InputArgs {
            std: Some(vec![0.0]),
            ..Default::default()
        };
        assert!(zero_std
            .resolve(None, 1)
            .unwrap_err()
            .to_string()
            .contains("--std"));
        let zero_res = InputArgs {
            res: Some(0),
            ..Default::default()
        };
        assert!(zero_res
            .geometry(None)
            .unwrap_err()
            .to_string()
            .contains("--res"));
        let crop = InputArgs {
            crop_ratio: Some(1.5),
            ..Default::default()
        };
        assert!(crop
            .geometry(None)
            .unwrap_err()
            .to_string()
            .contains("--crop-ratio"));
    }

    #[test]
    fn missing_data_names_the_path() {
        let err = open_validation(Path::new("/nonexistent/val"), 32, 1.0, ValTransform::Ffcv)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/val"), "{err}");
    }
}
