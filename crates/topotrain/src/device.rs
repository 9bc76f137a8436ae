//! `--device cpu|cuda[:N]`: which Burn backend a command runs on.
//!
//! Burn backends are types, so a command that runs on either implements
//! [`BackendJob`] once, generically, and [`run_on`] picks the type.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;

/// The CPU backend with autodiff: Burn's `flex`.
pub type CpuBackend = trainer::CpuTrain;

/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

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
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(index) => {
            job.run::<CudaBackend>(burn::backend::cuda::CudaDevice::new(index), choice)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => anyhow::bail!(
            "this topotrain was built without CUDA support; rebuild it with \
             `cargo build --release --features cuda` on a machine with the CUDA toolkit's runtime, \
             or use --device cpu"
        ),
    }
}
