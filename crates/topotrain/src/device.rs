//! `--device cpu|cuda[:N]`: which Burn backend a command runs on.
//!
//! Burn backends are types, so a command that runs on either implements
//! [`BackendJob`] once, generically, and [`run_on`] picks the type.

use std::str::FromStr;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;

/// The CPU backend with autodiff: Burn's `flex`.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// Whether tensors live in host memory (so host-side kernels need no copy across a bus).
    pub fn is_cpu(&self) -> bool {
        matches!(self, DeviceChoice::Cpu)
    }
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("unknown device '{text}': use cpu, cuda or cuda:N (N = GPU index)");
        match text {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match text.strip_prefix("cuda:") {
                Some(index) => index.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(choice: DeviceChoice) -> String {
        choice.to_string()
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        let error = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(error.contains("cpu, cuda or cuda:N"), "{error}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
    }
}
