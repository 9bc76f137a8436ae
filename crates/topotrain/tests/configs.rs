//! The shipped configs: every one (vision and language) parses and says what
//! its name says, and
//! the ImageNet ones (ResNet-18, ResNet-50, ViT-B/32) train a few steps on
//! the shared ImageNet-mini, prepared by `topotrain prep imagenet`. Only
//! the size of the run is overridden (batch, resolution, steps, device), so
//! the rest of each config runs as shipped.

use std::path::{Path, PathBuf};

use trainer::config::TaskKind;
use trainer::language::LanguageConfig;
use trainer::RunConfig;

use crate::util::{shared, topotrain_ok};

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// `resnet18_tau0.5_88ep.toml` -> ("resnet18", 0.5, 88 epochs or 16).
fn name_parts(stem: &str) -> (String, f64, usize) {
    let (stem, epochs) = match stem.strip_suffix("_88ep") {
        Some(s) => (s, 88),
        None => (stem, 16),
    };
    let (arch, tau) = stem.rsplit_once("_tau").expect("NAME_tauX");
    (arch.to_string(), tau.parse().expect("tau"), epochs)
}

#[test]
fn every_config_parses_and_matches_its_name() {
    let mut imagenet = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        // Every config says what it trains.
        let table: toml::Table = text.parse().unwrap();
        assert!(table.contains_key("task"), "{}: no task", path.display());
        if TaskKind::of(&text).unwrap() == TaskKind::Language {
            check_language_config(&path, &stem);
            continue;
        }
        let config = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let topography = config.topography.as_ref().expect("[topography]");
        let (arch, tau, epochs) = name_parts(&stem);
        assert_eq!(topography.tau.value(0), tau, "{stem}: tau");
        if arch == "fashion_mnist" {
            assert_eq!(config.model.in_channels, 1, "{stem}");
            continue;
        }
        imagenet += 1;
        assert_eq!(config.model.arch, arch, "{stem}: model.arch");
        assert_eq!(config.training.epochs, epochs, "{stem}: training.epochs");
        assert_eq!(config.model.num_classes, 1000, "{stem}");
        // The ffcv recipe the paper followed.
        let o = &config.optimizer;
        assert_eq!((o.momentum, o.label_smoothing), (0.9, 0.1), "{stem}");
        let decay = if arch == "resnet50" { 1e-4 } else { 5e-5 };
        assert_eq!(o.weight_decay, decay, "{stem}: optimizer.weight_decay");
        if arch.starts_with("resnet") {
            assert!(config.model.blurpool, "{stem}: BlurPool");
            assert_eq!(config.data.val_resolution, 256, "{stem}");
            assert_eq!(config.data.val_crop_ratio, 224.0 / 256.0, "{stem}");
        }
        check_ffcv_schedule_and_validation(&config, &arch, &stem);
        if arch == "vit_b_32" {
            assert_eq!(topography.layers.len(), 1, "{stem}: one layer selection");
            assert_eq!(
                topography.layers[0].patterns,
                ["encoder.layers.*.mlp.3"],
                "{stem}: the paper's TopoLoss is on mlp.3 only"
            );
        }
    }
    // One config per recipe, as ffcv has one YAML per schedule: ResNet-18,
    // ResNet-50 and ViT-B/32 at 16 and 88 epochs; other taus come from
    // `sweep --tau` or `--set topography.tau=...`.
    assert_eq!(imagenet, 6, "ImageNet configs");
}

/// ffcv-imagenet's learning rate per image (lr over the images of a step:
/// `batch_size` per process x `world_size`), its cyclic schedule's start
/// (train_imagenet.py:110-113) and flip TTA (`validation.lr_tta: true`).
/// ResNet-18 and ViT (which has no ffcv recipe) follow
/// rn18_configs/rn18_*_epochs.yaml: lr 0.5, batch_size 1024, world_size 1;
/// ResNet-50 rn50_configs/rn50_*_epochs.yaml: lr 1.7, batch_size 512,
/// world_size 8.
fn check_ffcv_schedule_and_validation(config: &RunConfig, arch: &str, stem: &str) {
    let per_sample = if arch == "resnet50" {
        1.7 / (512.0 * 8.0)
    } else {
        0.5 / 1024.0
    };
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    assert!(
        same(config.peak_lr_per_sample(), per_sample),
        "{stem}: peak learning rate per image {} (peak {} at a step of {} images), ffcv's {per_sample}",
        config.peak_lr_per_sample(),
        config.lr.peak * config.lr_scale(),
        config.step_batch()
    );
    // The same rate per image at another batch, e.g. one that fits a
    // smaller GPU.
    let mut smaller = config.clone();
    smaller.training.batch_size /= 4;
    assert!(
        same(smaller.peak_lr_per_sample(), per_sample),
        "{stem}: at a quarter of the batch"
    );
    // Cyclic: 1e-4 x lr at epoch 0, lr at epoch 2, 0 at the last epoch.
    let peak = config.lr_at(2.0);
    assert!(
        same(peak, per_sample * config.step_batch() as f64),
        "{stem}: the peak at epoch 2"
    );
    assert!(
        same(config.lr_at(0.0), 1e-4 * peak),
        "{stem}: the schedule starts at 1e-4 x lr"
    );
    assert!(
        same(config.lr_at(1.0), (1e-4 + (1.0 - 1e-4) / 2.0) * peak),
        "{stem}: warm-up"
    );
    assert_eq!(
        config.lr_at(config.training.epochs as f64),
        0.0,
        "{stem}: ends at 0"
    );
    let midway = 2.0 + (config.training.epochs as f64 - 2.0) / 2.0;
    assert!(
        same(config.lr_at(midway), peak / 2.0),
        "{stem}: linear decay"
    );
    assert_eq!(
        config.data.val_tta,
        trainer::eval::Tta::Flip,
        "{stem}: flip TTA"
    );
}

/// `configs/<name>.toml` resized to a few seconds of CPU work on `data`.
/// `gpt_tiny_tau5.toml` trains a GPT with TopoLoss at tau 5 on c_fc;
/// `gpt_tiny_lora.toml` fine-tunes a base with LoRA adapters.
fn check_language_config(path: &Path, stem: &str) {
    let config = LanguageConfig::load(path).unwrap_or_else(|e| panic!("{e:#}"));
    if stem.ends_with("_lora") {
        assert!(config.lora.is_some() && config.base.is_some(), "{stem}");
        return;
    }
    assert!(config.gpt.is_some(), "{stem}: [gpt]");
    let (_, tau, _) = name_parts(stem);
    let topography = config.topography.as_ref().expect("[topography]");
    assert_eq!(topography.tau.value(0), tau, "{stem}: tau");
    assert_eq!(
        topography.layers[0].patterns,
        ["transformer.h.*.mlp.c_fc"],
        "{stem}: TopoLoss on c_fc"
    );
}

fn small_run(name: &str, data: &Path, out: &Path) -> PathBuf {
    let text = std::fs::read_to_string(configs_dir().join(format!("{name}.toml"))).unwrap();
    let mut value: toml::Table = text.parse().unwrap();
    let res = 32;
    let set = |value: &mut toml::Table, section: &str, key: &str, v: toml::Value| {
        value[section].as_table_mut().unwrap().insert(key.into(), v);
    };
    let path = |p: PathBuf| toml::Value::String(p.to_str().unwrap().into());
    set(&mut value, "data", "train", path(data.join("train.topo")));
    set(&mut value, "data", "val", path(data.join("val.topo")));
    let mut resolution = toml::Table::new();
    resolution.insert("start".into(), res.into());
    set(&mut value, "data", "resolution", resolution.into());
    set(&mut value, "data", "val_resolution", res.into());
    set(&mut value, "data", "workers", 2.into());
    if value["model"].get("image_size").is_some() {
        set(&mut value, "model", "image_size", res.into());
    }
    set(&mut value, "lr", "warmup_epochs", 0.5.into());
    // lr.reference_batch scales the recipe's learning rate to the batch of 4
    // (at the full peak two steps diverge, and evaluation rightly refuses
    // the non-finite logits).
    assert!(value["lr"].get("reference_batch").is_some(), "{name}");
    for (key, v) in [
        ("epochs", 1),
        ("batch_size", 4),
        ("grad_accum", 1),
        ("eval_batch_size", 8),
        ("max_steps_per_epoch", 2),
        ("max_eval_batches", 1),
        ("checkpoint_every_steps", 0),
        ("log_every_steps", 1),
        ("threads", 2),
    ] {
        set(&mut value, "training", key, v.into());
    }
    set(&mut value, "training", "device", "cpu".into());
    set(&mut value, "output", "dir", path(out.join(name)));
    let config = out.join(format!("{name}.toml"));
    std::fs::write(&config, toml::to_string(&value).unwrap()).unwrap();
    config
}

#[test]
fn imagenet_configs_train_a_few_steps_on_imagenet_mini() {
    let src = shared("imagenet-mini");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("imagenet");
    topotrain_ok(&[
        "prep",
        "imagenet",
        "--src",
        src.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
        "--max-side",
        "64",
        "--threads",
        "2",
    ]);
    for name in ["resnet18_tau10", "resnet50_tau30", "vit_b_32_tau10"] {
        let config = small_run(name, &data, dir.path());
        let output = topotrain_ok(&["fit", "--quiet", "--config", config.to_str().unwrap()]);
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["steps"], 2, "{name}");
        assert!(
            summary["train_loss"].as_f64().unwrap().is_finite(),
            "{name}"
        );
        assert!(summary["val_top1"].as_f64().is_some(), "{name}: {summary}");
        let tau = summary["tau"].as_f64().unwrap();
        assert!(tau > 0.0, "{name}: tau {tau}");
        let layers = summary["topo_layers"].as_object().unwrap();
        assert!(!layers.is_empty(), "{name}: no TopoLoss per layer");
        if name.starts_with("vit") {
            // The 12 encoder blocks' mlp.3, nothing else.
            assert!(
                layers.len() == 12 && layers.keys().all(|k| k.ends_with(".mlp.3")),
                "{name}: {layers:?}"
            );
        }
        assert_eq!(summary["val_tta"], "flip", "{name}: {summary}");
        if name == "resnet18_tau10" {
            assert_validation_crops_differ(&dir.path().join(name), &data);
        }
        // The run's own weights are deleted as soon as they are checked:
        // ViT-B/32's checkpoint and final weights are over a gigabyte.
        std::fs::remove_dir_all(dir.path().join(name)).unwrap();
    }
}

/// `eval` of a run takes torchvision's centre crop (`--set
/// data.val_transform=...` on the run's config, or `--val-transform`) or
/// ffcv's: other pixels, so another loss, on the same images.
fn assert_validation_crops_differ(run: &Path, data: &Path) {
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--checkpoint", run.to_str().unwrap()];
        let val = data.join("val.topo");
        args.extend_from_slice(&["--data", val.to_str().unwrap(), "--tta", "none"]);
        args.extend_from_slice(extra);
        serde_json::from_slice(&topotrain_ok(&args).stdout).unwrap()
    };
    let ffcv = eval(&[]);
    let torchvision = eval(&["--set", "data.val_transform=torchvision"]);
    assert_eq!(ffcv["val_transform"], "ffcv");
    assert_eq!(torchvision["val_transform"], "torchvision");
    assert_eq!(ffcv["images"], torchvision["images"]);
    assert_ne!(ffcv["loss"], torchvision["loss"]);
    assert_eq!(
        eval(&["--val-transform", "torchvision"])["loss"],
        torchvision["loss"]
    );
}

/// The GPU smoke run keeps one tensor shape for training and evaluation
/// (each new shape costs a round of CUDA kernel compilation) and ResNet-18's
/// ImageNet recipe at tau 10 otherwise.
#[test]
fn gpu_smoke_config_uses_one_tensor_shape() {
    let path = configs_dir().join("smoke/resnet18_tau10_imagenet_mini_gpu.toml");
    let config = RunConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    let resolution = &config.data.resolution;
    assert_eq!(resolution.end.unwrap_or(resolution.start), resolution.start);
    assert_eq!(config.data.val_resolution, resolution.start);
    assert_eq!(
        config.training.eval_batch_size,
        Some(config.training.batch_size)
    );
    assert!(config.training.device.starts_with("cuda"));
    assert_eq!(config.model.arch, "resnet18");
    assert!(config.model.blurpool);
    assert_eq!(config.topography.as_ref().unwrap().tau.value(0), 10.0);
}

/// `fit --set KEY=VALUE` and the short flags reach the config before it is
/// validated: typed, checked like the file, and named in errors.
#[test]
fn set_overrides_are_typed_and_validated_like_the_file() {
    let config = configs_dir().join("fashion_mnist_tau5.toml");
    let out = tempfile::tempdir().unwrap();
    let out = out.path().to_str().unwrap().to_string();
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--quiet", "--config", config.to_str().unwrap()];
        args.extend_from_slice(&["--out", &out]);
        args.extend_from_slice(extra);
        let output = crate::util::topotrain(&args);
        assert!(!output.status.success(), "{extra:?} should be refused");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = fit(&["--set", "training.grad_accum=0"]);
    assert!(error.contains("training.grad_accum"), "{error}");
    let error = fit(&["--batch-size", "0"]);
    assert!(error.contains("training.batch_size"), "{error}");
    let error = fit(&["--set", "training.bacth_size=64"]);
    assert!(error.contains("bacth_size"), "{error}");
    let error = fit(&["--set", "lr.peak=fast"]);
    assert!(error.contains("peak"), "{error}");
    // An override that parses reaches the run: the data path it names is read.
    let error = fit(&["--set", "data.train=/nonexistent/fashion", "--seed", "3"]);
    assert!(error.contains("/nonexistent/fashion"), "{error}");
    let error = fit(&["--set", "batch_size"]);
    assert!(error.contains("KEY=VALUE"), "{error}");
}
