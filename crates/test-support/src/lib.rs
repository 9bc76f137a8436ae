//! Fixtures shared by every crate's tests, under one policy: a fixture that
//! is missing fails the test, naming the path and how to get it, so a test
//! never passes by skipping its work. Also random tensors that depend on
//! their seed alone: Burn's generator is one per process, so draws from it
//! change with the order in which a binary's tests run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The Debian package `dataset-fashion-mnist`'s files.
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The read-only fixtures: `$TOPOTRAIN_SHARED`, else `shared/` beside the
/// workspace (where CI puts it).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("TOPOTRAIN_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// `relative` inside [`shared_dir`]; panics naming the path if it is
/// missing.
pub fn shared(relative: &str) -> PathBuf {
    let path = shared_dir().join(relative);
    assert!(
        path.exists(),
        "test fixture {} is missing: put the project's shared/ folder beside the \
         checkout, or point TOPOTRAIN_SHARED at it",
        path.display()
    );
    path
}

/// `name` in `shared/golden` (reference values from the authors' package).
pub fn golden(name: &str) -> PathBuf {
    shared(&format!("golden/{name}"))
}

/// Panics, naming the package, unless Fashion-MNIST is installed at
/// [`FASHION_MNIST`].
pub fn require_fashion_mnist() {
    require_package(
        &Path::new(FASHION_MNIST).join("train-images-idx3-ubyte.gz"),
        "dataset-fashion-mnist",
    );
}

/// Panics unless `path`, which Debian's `package` installs, exists.
pub fn require_package(path: &Path, package: &str) {
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (apt-get install {package})",
        path.display()
    );
}

/// A tensor of `shape` drawn from N(`mean`, `std`^2) by `seed` alone
/// (splitmix64 and Box-Muller).
pub fn seeded_normal<B: Backend, const D: usize>(
    shape: [usize; D],
    mean: f32,
    std: f32,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // 53 random bits in (0, 1].
        (((z ^ (z >> 31)) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let count = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| {
            let radius = (-2.0 * uniform().ln()).sqrt();
            let angle = std::f64::consts::TAU * uniform();
            mean + std * (radius * angle.cos()) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A safetensors file's tensors: name to (shape, raw bytes).
pub fn read_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect()
}

/// The mean and (population) standard deviation of `values`, in f64.
pub fn mean_and_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeded_draws_depend_on_the_seed_alone() {
        type Cpu = burn::backend::Flex;
        let device = Default::default();
        let draw = |seed| super::seeded_normal::<Cpu, 1>([20_000], 1.0, 2.0, seed, &device);
        let a = draw(7).into_data();
        assert_eq!(a, draw(7).into_data());
        assert_ne!(a, draw(8).into_data());
        let values = a.to_vec::<f32>().unwrap();
        let (mean, std) = super::mean_and_std(&values);
        let n = values.len() as f64;
        // Within 5 standard errors of N(1, 4)'s mean and std.
        assert!((mean - 1.0).abs() < 5.0 * 2.0 / n.sqrt(), "mean {mean}");
        assert!(
            (std / 2.0 - 1.0).abs() < 5.0 / (2.0 * n).sqrt(),
            "std {std}"
        );
    }

    #[test]
    fn a_missing_fixture_fails_naming_its_path() {
        let missing = std::panic::catch_unwind(|| super::shared("no-such-fixture"))
            .expect_err("a missing fixture must fail");
        let message = missing.downcast_ref::<String>().unwrap();
        assert!(message.contains("no-such-fixture"), "{message}");
        assert!(message.contains("TOPOTRAIN_SHARED"), "{message}");
    }
}
