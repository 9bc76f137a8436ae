//! Pieces shared by the end-to-end tests: where the data lives, running the
//! binary, and the tiny Fashion-MNIST run config.

use std::path::Path;
use std::process::{Command, Output};

pub use test_support::{golden, read_tensors, require_fashion_mnist, shared, FASHION_MNIST};

/// Runs the topotrain binary; the caller checks the outcome.
pub fn topotrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .args(args)
        .output()
        .expect("topotrain runs")
}

/// Runs the topotrain binary and fails the test unless it succeeded.
pub fn topotrain_ok(args: &[&str]) -> Output {
    let output = topotrain(args);
    assert_success(&output);
    output
}

/// Fails the test, showing the program's output, unless it succeeded.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "topotrain failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A width-8 ResNet-18 (one channel) on Fashion-MNIST with TopoLoss at `tau`
/// on every conv of the residual stages, written to `out`; `training` is the
/// whole `[training]` section's body. The small stem (3x3, stride 1) keeps
/// 28 px in layer1; torchvision's (7x7 stride 2 and a max-pool) gives 7 px
/// there and is about 14 times cheaper per image.
pub fn fashion_config(
    out: &Path,
    small_stem: bool,
    tau: f64,
    warmup_epochs: f64,
    training: &str,
) -> String {
    format!(
        r#"
[model]
arch = "resnet18"
num_classes = 10
width = 8
small_stem = {small_stem}
in_channels = 1

[data]
format = "fashion-mnist-idx"
train = "{FASHION_MNIST}"
val = "{FASHION_MNIST}"
mean = [72.94]
std = [90.02]
resolution = {{ start = 28 }}
val_resolution = 28
val_crop_ratio = 1.0

[topography]
tau = {tau:?}
layers = [{{ patterns = ["layer*.**"], factor = 3.0, clamp_factor = true }}]

[optimizer]
weight_decay = 5e-4
label_smoothing = 0.1

[lr]
peak = 0.1
warmup_epochs = {warmup_epochs:?}
shape = "linear"

[training]
{training}
[output]
dir = "{}"
"#,
        out.display()
    )
}

/// `text` with `model.init_weights = weights`.
pub fn with_init_weights(text: &str, weights: &Path) -> String {
    let line = format!("init_weights = {:?}", weights.display().to_string());
    text.replace("[model]\n", &format!("[model]\n{line}\n"))
}

/// `topotrain export --checkpoint CHECKPOINT --out OUT`, which must succeed.
pub fn export(checkpoint: &Path, out: &Path) {
    topotrain_ok(&[
        "export",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
}
