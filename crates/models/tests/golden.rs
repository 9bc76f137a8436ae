//! Parity with PyTorch: the shared torchvision ResNet-18 + BlurPool
//! checkpoint must reproduce PyTorch's eval-mode logits.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::util::{golden, max_abs_diff, read_tensor, scratch_dir};
use burn::tensor::Tensor;
use models::{
    inspect_checkpoint, load_checkpoint, save_checkpoint, Architecture, CpuBackend, ResNetConfig,
};

/// Max absolute logit error allowed (logits are O(10); f32 summation order
/// differs between PyTorch and Burn).
const TOLERANCE: f32 = 1e-4;

#[test]
fn resnet18_blurpool_architecture_is_inferred_from_the_pt_file() {
    let info = inspect_checkpoint(golden("resnet18_blurpool.pt")).unwrap();
    let expected = ResNetConfig::resnet18(1000).with_blurpool(true);
    assert_eq!(info.architecture, Architecture::ResNet(expected));
    assert_eq!(info.tensors.len(), 128);
    assert_eq!(info.key_prefix, "");
}

/// Names and shapes of a safetensors file's tensors.
fn safetensors_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

/// A BlurPool ResNet-18 of ours is saved with exactly torchvision's state
/// dict: every key of the golden file (BatchNorm buffers and BlurPool
/// filters included), each with its shape, and nothing else.
#[test]
fn saved_resnet18_blurpool_has_the_golden_keys_and_shapes() {
    let golden_shapes = inspect_checkpoint(golden("resnet18_blurpool.pt"))
        .unwrap()
        .tensors;
    let architecture = Architecture::ResNet(ResNetConfig::resnet18(1000).with_blurpool(true));
    let model = architecture
        .init::<CpuBackend>(&Default::default())
        .unwrap();
    let path = scratch_dir("golden-keys").join("fresh.safetensors");
    save_checkpoint(&model, &path).unwrap();
    assert_eq!(safetensors_shapes(&path), golden_shapes);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn resnet18_blurpool_reproduces_pytorch_logits() {
    let device = Default::default();
    let model = load_checkpoint::<CpuBackend>(golden("resnet18_blurpool.pt"), &device).unwrap();
    let io = golden("resnet18_blurpool_io.safetensors");
    let input: Tensor<CpuBackend, 4> = read_tensor(&io, "input");
    let expected: Tensor<CpuBackend, 2> = read_tensor(&io, "logits");

    let start = Instant::now();
    let logits = model.forward(input.clone());
    let error = max_abs_diff(logits, expected.clone());
    eprintln!(
        "resnet18 forward [2,3,96,96] on flex: {:.3}s, max abs error {error:e}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        error <= TOLERANCE,
        "max abs logit error {error} > {TOLERANCE}"
    );

    // Our checkpoint format must round-trip the same network exactly.
    let path = scratch_dir("golden").join("resnet18_blurpool.safetensors");
    save_checkpoint(&model, &path).unwrap();
    let reloaded = load_checkpoint::<CpuBackend>(&path, &device).unwrap();
    assert_eq!(reloaded.architecture(), model.architecture());
    let reloaded_error = max_abs_diff(reloaded.forward(input), expected);
    assert!(
        reloaded_error <= TOLERANCE,
        "after round trip: {reloaded_error}"
    );
    std::fs::remove_file(path).unwrap();
}
