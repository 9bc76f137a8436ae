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
        DeviceChoice::Wgpu => {
            note_gpu_conv_kernels();
            job.run::<WgpuBackend>(Default::default(), choice)
        }
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => anyhow::bail!(
            "this topotrain was built without wgpu support; rebuild it with \
             `cargo build --release --features wgpu`, or use --device cpu"
        ),
    }
}

/// `TOPOTRAIN_CONV_KERNELS` (its value, if set) as the kernels of the
/// CubeCL backends: `None` for Burn's own convolutions everywhere.
fn conv_kernels_choice(value: Option<&str>) -> Result<Option<conv_kernels::ConvChoice>> {
    use conv_kernels::ConvChoice;
    match value {
        None | Some("direct") => Ok(Some(ConvChoice::Direct)),
        Some("implicit-gemm") => Ok(Some(ConvChoice::ImplicitGemm)),
        Some("burn") => Ok(None),
        Some(other) => anyhow::bail!(
            "TOPOTRAIN_CONV_KERNELS={other:?} is not a kernel choice: use direct (the default), \
             implicit-gemm or burn"
        ),
    }
}

/// Routes every Conv2d layer of the program through crate conv-kernels,
/// unless `TOPOTRAIN_CONV_KERNELS=burn`: on the CPU its f32 kernels (im2col
/// and one matrix product over many samples, contiguous gradients); on the
/// CubeCL backends (CUDA, wgpu) the kernels `TOPOTRAIN_CONV_KERNELS` names:
/// `direct` (the default; Burn's direct kernels with a correct strided input
/// gradient) or `implicit-gemm` (tensor cores; experimental, not yet run on
/// a GPU). `burn` leaves every convolution to Burn, whose CubeCL input
/// gradient through a 1x1 stride-2 conv is zero; for comparison only.
pub fn route_convolutions() -> Result<()> {
    use std::any::Any;
    fn through_conv_kernels(conv: &dyn Any, x: &dyn Any) -> Option<Box<dyn Any>> {
        if let Some(out) = conv_kernels::conv2d_any::<CpuBackend>(conv, x)
            .or_else(|| conv_kernels::conv2d_any::<trainer::Cpu>(conv, x))
        {
            return Some(out);
        }
        #[cfg(feature = "cuda-untuned")]
        if let Some(out) = conv_kernels::conv2d_any::<CudaBackend>(conv, x)
            .or_else(|| conv_kernels::conv2d_any::<burn::backend::Cuda>(conv, x))
        {
            return Some(out);
        }
        #[cfg(feature = "wgpu")]
        if let Some(out) = conv_kernels::conv2d_any::<WgpuBackend>(conv, x)
            .or_else(|| conv_kernels::conv2d_any::<burn::backend::Wgpu>(conv, x))
        {
            return Some(out);
        }
        None
    }
    let value = std::env::var("TOPOTRAIN_CONV_KERNELS").ok();
    match conv_kernels_choice(value.as_deref())? {
        Some(choice) => {
            conv_kernels::choose(choice);
            models::precision::set_conv2d_override(through_conv_kernels);
        }
        None => eprintln!(
            "Conv2d layers use Burn's own kernels (TOPOTRAIN_CONV_KERNELS=burn); on CUDA and \
             wgpu their input gradient through 1x1 stride-2 convs is zero"
        ),
    }
    Ok(())
}

/// Says so when a GPU run uses the experimental implicit-GEMM kernels.
#[cfg(any(feature = "cuda-untuned", feature = "wgpu"))]
fn note_gpu_conv_kernels() {
    if conv_kernels::conv_choice() == conv_kernels::ConvChoice::ImplicitGemm {
        eprintln!("Conv2d layers use the implicit-GEMM kernels (TOPOTRAIN_CONV_KERNELS)");
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
        super::note_gpu_conv_kernels();
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
    fn conv_kernels_are_chosen_by_name() {
        use conv_kernels::ConvChoice;
        let choice = super::conv_kernels_choice;
        assert_eq!(choice(None).unwrap(), Some(ConvChoice::Direct));
        assert_eq!(choice(Some("direct")).unwrap(), Some(ConvChoice::Direct));
        assert_eq!(
            choice(Some("implicit-gemm")).unwrap(),
            Some(ConvChoice::ImplicitGemm)
        );
        assert_eq!(choice(Some("burn")).unwrap(), None);
        let error = choice(Some("cudnn")).unwrap_err().to_string();
        assert!(
            error.contains("\"cudnn\" is not a kernel choice"),
            "{error}"
        );
    }
}
