//! `--device cpu` (the flex backend), `cuda[:N]` or `wgpu`.

use std::str::FromStr;

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    /// Burn's wgpu backend on the system's default adapter (Vulkan, Metal or
    /// DX12).
    Wgpu,
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
        let bad =
            || format!("unknown device '{text}': use cpu, cuda, cuda:N (N = GPU index) or wgpu");
        match text {
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" => Ok(DeviceChoice::Wgpu),
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
            DeviceChoice::Wgpu => write!(f, "wgpu"),
        }
    }
}

/// Sets the size of the global rayon pool (the CPU backend's threads); 0
/// leaves rayon's default (all cores). Must run before any tensor work.
pub fn set_cpu_threads(threads: usize) {
    if threads > 0 {
        // Fails only if the pool already exists; then the existing one is used.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
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
        assert_eq!("wgpu".parse(), Ok(DeviceChoice::Wgpu));
        let error = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(
            error.contains("cpu, cuda, cuda:N (N = GPU index) or wgpu"),
            "{error}"
        );
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        assert_eq!(DeviceChoice::Wgpu.to_string(), "wgpu");
    }
}
