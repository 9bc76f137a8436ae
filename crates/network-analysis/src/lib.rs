//! The TopoNets analyses of a trained network: what `topotrain analyze`
//! runs, callable from Rust. Crate `analysis` holds the backend-independent
//! maths and figures; this crate opens checkpoints and data, drives the
//! networks through one interface ([`Analysed`], for vision models and
//! GPTs alike) and writes each analysis's figures and JSON.
//!
//! Each analysis module has its options (`...Args`, clap-derived, so the
//! binary flattens them into its command line) and a `run` that returns what
//! to print ([`Printout`]): a table, or with `--json` the report that
//! `--out DIR` also writes as `DIR/<analysis>.json` beside the figures.
//!
//! Checkpoints are anything `topotrain eval` takes: a run directory, one of
//! its checkpoints, a safetensors file or a PyTorch state dict. Layers
//! default to the `[topography]` layers of the run's `config.toml` when the
//! checkpoint sits in a run directory, else to every Conv2d and Linear layer
//! (a GPT's: every block's `mlp.c_fc`).

pub mod data;
pub mod dimensionality;
pub mod input;
pub mod network;
pub mod output;
pub mod prune;
pub mod selectivity;
pub mod sheets;
pub mod smoothness;
pub mod sweep_report;
pub mod topo_loss;

pub use network::{
    input_channels, layer_patterns, Analysed, HostWeights, ModelArgs, ModuleArgs, Opened,
    OpenedNetwork, Responses, Samples, Score,
};
pub use output::{FigurePaths, OutputArgs, PngScale, Printout};

/// The CPU inference backend every analysis runs on.
pub type Cpu = trainer::Cpu;
/// Its device.
pub type CpuDevice = <Cpu as burn::tensor::backend::BackendTypes>::Device;

/// Fails unless `value` is finite and within `range`.
pub fn check_range(name: &str, value: f64, low: f64, high: f64) -> anyhow::Result<()> {
    if !(value.is_finite() && value >= low && value <= high) {
        anyhow::bail!("{name} must be in [{low}, {high}], got {value}");
    }
    Ok(())
}
