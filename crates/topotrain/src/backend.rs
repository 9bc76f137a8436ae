//! `--device cpu|cuda[:N]|wgpu`: which Burn backend a command runs on.
//!
//! Burn backends are types, so a command that runs on either implements
//! [`BackendJob`] once, generically, and [`run_on`] picks the type.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;

/// The CPU backend with autodiff: Burn's `flex`.
pub type CpuBackend = trainer::CpuTrain;

/// The CUDA backend with autodiff (`cuda-untuned` is on in both CUDA builds;
/// `cuda` adds autotuning).
#[cfg(feature = "cuda-untuned")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// Burn's wgpu backend (with fusion) with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Autodiff<burn::backend::Wgpu>;

pub use trainer::device::DeviceChoice;

/// Work that runs on any autodiff backend.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        choice: DeviceChoice,
    ) -> Result<Self::Output>;
}

/// Runs `job` on the backend of `choice`.
pub fn run_on<J: BackendJob>(choice: DeviceChoice, job: J) -> Result<J::Output> {
    match choice {
        DeviceChoice::Cpu => job.run::<CpuBackend>(Default::default(), choice),
        #[cfg(feature = "cuda-untuned")]
        DeviceChoice::Cuda(index) => {
            cuda_setup::prepare()?;
            job.run::<CudaBackend>(burn::backend::cuda::CudaDevice::new(index), choice)
        }
        #[cfg(not(feature = "cuda-untuned"))]
        DeviceChoice::Cuda(_) => anyhow::bail!(
            "this topotrain was built without CUDA support; rebuild it with \
             `cargo build --release --features cuda` on a machine with the CUDA toolkit's runtime, \
             or use --device cpu"
        ),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => job.run::<WgpuBackend>(Default::default(), choice),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => anyhow::bail!(
            "this topotrain was built without wgpu support; rebuild it with \
             `cargo build --release --features wgpu`, or use --device cpu"
        ),
    }
}

/// Refuses `TOPOTRAIN_CONV_KERNELS`, which chose the convolution kernels
/// before the choice became a setting: a run that silently ignored it would
/// use other kernels than its user asked for.
pub fn refuse_old_kernel_variable(value: Option<&str>) -> Result<()> {
    match value {
        None => Ok(()),
        Some(choice) => anyhow::bail!(
            "TOPOTRAIN_CONV_KERNELS={choice:?} is no longer read: unset it and set \
             `training.conv_kernels = \"{choice}\"` in the config (or `--set \
             training.conv_kernels={choice}`), or pass `bench train --conv-kernels {choice}`"
        ),
    }
}

/// Getting CUDA ready: the libraries it needs, and a kernel cache. Compiled
/// and tested in every build; only CUDA builds call it.
#[cfg_attr(not(feature = "cuda-untuned"), allow(dead_code))]
mod cuda_setup {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    use anyhow::{bail, Result};

    /// The libraries Burn's CUDA backend opens at run time: what each is, the
    /// file names it answers to, and what to do when none loads.
    const CUDA_LIBRARIES: [(&str, &[&str], &str); 2] = [
        (
            "the NVIDIA driver (libcuda)",
            &["libcuda.so.1", "libcuda.so"],
            "install the NVIDIA driver or run on a machine with an NVIDIA GPU; use --device cpu elsewhere",
        ),
        (
            "CUDA's run-time compiler NVRTC (libnvrtc)",
            &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"],
            "install the CUDA toolkit (or the nvidia-cuda-nvrtc wheel) and add the folder holding \
             libnvrtc.so to LD_LIBRARY_PATH, e.g. /usr/local/cuda/lib64",
        ),
    ];

    /// Fails with `hint` unless one of `names` loads. Burn's backend would
    /// otherwise panic on a worker thread when it first needs the library.
    fn find_library(what: &str, names: &[&str], hint: &str) -> Result<()> {
        // SAFETY: opening a shared library runs its initialisers; these are the
        // libraries the CUDA backend opens next anyway.
        if names
            .iter()
            .any(|name| unsafe { libloading::Library::new(*name) }.is_ok())
        {
            return Ok(());
        }
        bail!("--device cuda needs {what}, but none of {names:?} could be loaded: {hint}")
    }

    /// Where compiled CUDA kernels and autotune results are kept between runs:
    /// `TOPOTRAIN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/topotrain/cuda-kernels`,
    /// else `~/.cache/topotrain/cuda-kernels`. `env` reads a variable.
    pub fn kernel_cache_dir(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
        if let Some(dir) = env("TOPOTRAIN_KERNEL_CACHE") {
            return Some(dir.into());
        }
        let cache = env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(cache.join("topotrain").join("cuda-kernels"))
    }

    /// CubeCL's own settings file in `dir` or a folder above it, the places
    /// CubeCL itself looks; where there is one, its settings stand.
    pub fn cubecl_settings_file(dir: &Path) -> Option<PathBuf> {
        dir.ancestors()
            .flat_map(|folder| {
                ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"]
                    .map(|name| folder.join(name))
            })
            .find(|path| path.is_file())
    }

    /// Checks the CUDA libraries, then keeps compiled kernels between runs.
    /// Burn compiles every CUDA kernel with NVRTC at first use and by default
    /// keeps none: on an H200 the first ResNet-18 step took 14 s cold and 2 s
    /// with a warm cache (BENCHMARKS.md).
    #[cfg(feature = "cuda-untuned")]
    pub fn prepare() -> Result<()> {
        for (what, names, hint) in CUDA_LIBRARIES {
            find_library(what, names, hint)?;
        }
        static KERNEL_CACHE: std::sync::Once = std::sync::Once::new();
        KERNEL_CACHE.call_once(|| {
            use cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
            let here = std::env::current_dir().unwrap_or_default();
            if cubecl_settings_file(&here).is_some() {
                return;
            }
            let Some(dir) = kernel_cache_dir(|name| std::env::var_os(name)) else {
                return;
            };
            if let Err(err) = std::fs::create_dir_all(&dir) {
                eprintln!(
                    "warning: CUDA kernels are not kept between runs: cannot create {}: {err} \
                     (set TOPOTRAIN_KERNEL_CACHE to a writable folder)",
                    dir.display()
                );
                return;
            }
            eprintln!(
                "CUDA kernels and autotune results are kept in {} (TOPOTRAIN_KERNEL_CACHE moves them)",
                dir.display()
            );
            let mut config = CubeClRuntimeConfig::default();
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
            config.autotune.cache = CacheConfig::File(dir);
            // CUBECL_AUTOTUNE_LEVEL and CUBECL_DEBUG_LOG still apply.
            CubeClRuntimeConfig::set(config.override_from_env());
        });
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_missing_library_is_an_error_naming_it_and_the_fix() {
            let err = find_library("a test library", &["libtopotrain-no-such.so"], "install it")
                .unwrap_err()
                .to_string();
            assert!(err.contains("a test library"), "{err}");
            assert!(err.contains("libtopotrain-no-such.so"), "{err}");
            assert!(err.ends_with("install it"), "{err}");
        }

        #[test]
        fn a_library_that_loads_passes() {
            // The C library is on every Linux machine that runs these tests.
            find_library(
                "the C library",
                &["libtopotrain-no-such.so", "libc.so.6"],
                "",
            )
            .unwrap();
        }

        /// Reads variables from `pairs`, as `std::env::var_os` would.
        fn env_of<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
            move |name| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        }

        #[test]
        fn kernel_cache_dir_prefers_the_variable_then_xdg_then_home() {
            let all = [
                ("TOPOTRAIN_KERNEL_CACHE", "/scratch/kernels"),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/me"),
            ];
            let dir = |pairs| kernel_cache_dir(env_of(pairs));
            assert_eq!(dir(&all), Some("/scratch/kernels".into()));
            assert_eq!(dir(&all[1..]), Some("/xdg/topotrain/cuda-kernels".into()));
            assert_eq!(
                dir(&all[2..]),
                Some("/home/me/.cache/topotrain/cuda-kernels".into())
            );
            assert_eq!(dir(&[]), None);
        }

        #[test]
        fn cubecl_settings_are_found_here_or_above() {
            let root = tempfile::tempdir().unwrap();
            let deep = root.path().join("a/b");
            std::fs::create_dir_all(&deep).unwrap();
            assert_eq!(cubecl_settings_file(&deep), None);
            std::fs::write(root.path().join("a/cubecl.toml"), "").unwrap();
            assert_eq!(
                cubecl_settings_file(&deep),
                Some(root.path().join("a/cubecl.toml"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_old_kernel_variable_is_refused_with_the_setting_to_use() {
        assert!(super::refuse_old_kernel_variable(None).is_ok());
        let error = super::refuse_old_kernel_variable(Some("implicit-gemm"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("training.conv_kernels = \"implicit-gemm\"")
                && error.contains("--conv-kernels implicit-gemm"),
            "{error}"
        );
    }
}
