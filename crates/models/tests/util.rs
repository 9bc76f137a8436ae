//! Shared helpers for the models integration tests.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use models::CpuBackend;

pub use test_support::golden;

/// Reads an f32 tensor from a safetensors file.
pub fn read_tensor<const D: usize>(path: &PathBuf, name: &str) -> Tensor<CpuBackend, D> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name} is not f32");
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_data(
        TensorData::new(values, view.shape().to_vec()),
        &Default::default(),
    )
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff<const D: usize>(a: Tensor<CpuBackend, D>, b: Tensor<CpuBackend, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

/// A scratch directory unique to this test process and `tag`.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("models-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
