//! End-to-end: `topotrain activations` on the shared torchvision ResNet-18
//! (BlurPool) checkpoint and its PyTorch input/logits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

use test_support::golden;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("topotrain-activations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `topotrain activations` on the shared checkpoint with `input`,
/// `out` and any further arguments.
fn activations_of_golden_resnet(input: &Path, out: &Path, more: &[&str]) -> Output {
    let checkpoint = golden("resnet18_blurpool.pt");
    Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .arg("activations")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(more)
        .output()
        .unwrap()
}

fn f32_values(file: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let view = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("no tensor '{name}'"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn saves_named_module_outputs_and_pytorch_logits() {
    let io = golden("resnet18_blurpool_io.safetensors");
    let out = scratch("resnet18.safetensors");
    // One image per pass, so the batch concatenation is exercised too.
    let more = [
        "--layers",
        "layer2.0.conv1.conv,layer4,fc",
        "--batch-size",
        "1",
    ];
    let output = activations_of_golden_resnet(&io, &out, &more);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let saved_bytes = std::fs::read(&out).unwrap();
    let saved = SafeTensors::deserialize(&saved_bytes).unwrap();
    let mut names: Vec<&String> = saved.names();
    names.sort();
    assert_eq!(names, ["fc", "layer2.0.conv1.conv", "layer4", "logits"]);

    let io_bytes = std::fs::read(&io).unwrap();
    let reference = SafeTensors::deserialize(&io_bytes).unwrap();
    let (_, expected_logits) = f32_values(&reference, "logits");
    let (logits_shape, logits) = f32_values(&saved, "logits");
    assert_eq!(logits_shape, [2, 1000]);
    let error = max_abs_diff(&logits, &expected_logits);
    assert!(error <= 1e-4, "max abs logit error {error}");
    assert_eq!(f32_values(&saved, "fc").1, logits);

    // 96 px: stride 2 stem, max-pool, then layer2 halves 24 -> 12 and layer4 ends at 3.
    assert_eq!(
        f32_values(&saved, "layer2.0.conv1.conv").0,
        [2, 128, 12, 12]
    );
    let (layer4_shape, layer4) = f32_values(&saved, "layer4");
    assert_eq!(layer4_shape, [2, 512, 3, 3]);
    assert!(layer4.iter().all(|v| *v >= 0.0), "layer4 ends in a ReLU");
    std::fs::remove_file(out).unwrap();
}

#[test]
fn unknown_layer_is_an_error_listing_valid_names() {
    let io = golden("resnet18_blurpool_io.safetensors");
    let out = scratch("never-written.safetensors");
    let output = activations_of_golden_resnet(&io, &out, &["--layers", "layer9"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("layer9"), "{stderr}");
    assert!(stderr.contains("layer2.0.downsample.0.conv"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn missing_input_tensor_names_the_file() {
    let not_images = golden("topoloss_cases.safetensors");
    let output = activations_of_golden_resnet(&not_images, &scratch("unused.safetensors"), &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("topoloss_cases.safetensors"), "{stderr}");
    assert!(stderr.contains("'input'"), "{stderr}");
}

#[test]
fn list_layers_needs_only_the_checkpoint() {
    let output = Command::new(env!("CARGO_BIN_EXE_topotrain"))
        .args(["activations", "--list-layers", "--checkpoint"])
        .arg(golden("resnet18_blurpool.pt"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("layer2.0.downsample.0.conv\tConv2d"),
        "{stdout}"
    );
}
