//! topotrain's trainer: the paper's (ffcv) ImageNet recipe for topographic
//! networks, and the same loop for small data.
//!
//! - [`config`]: the run's TOML (`[model]`, `[data]`, `[topography]`,
//!   `[optimizer]`, `[lr]`, `[training]`, `[output]`), validated.
//! - [`data`]: deterministic batches per (seed, epoch, batch index) from
//!   data-prep files or Fashion-MNIST IDX files in memory.
//! - [`engine`]: the one training loop (run, epoch, step) every task runs:
//!   metrics ([`metrics`], also as [`tensorboard`] event files), checkpoints ([`checkpoint`]) with exact resume,
//!   stopping through an [`engine::Interrupter`].
//! - [`overrides`]: `--set KEY=VALUE` over a config file.
//! - [`run_dir`]: the run directory's lock, and what a resume may change.
//! - [`step`]: one optimiser step: forward and backward over micro-batches
//!   and devices, then cluster mean, TopoLoss, weight decay, divergence
//!   guard, optimiser.
//! - [`classification`]: image classification (the ffcv ImageNet recipe):
//!   SGD + momentum, label-smoothed cross-entropy + TopoLoss, warm-up and
//!   step/linear LR, progressive resizing.
//! - [`progress`]: a bar on a terminal, plain lines in batch jobs.
//! - [`eval`]: top-1/top-5 of our checkpoints and PyTorch ones.
//! - [`sheet`]: the picture of one topographic layer's sheet a run ends with.
//! - [`parallel`]: data parallelism over the devices of one process.
//! - [`cluster`]: several processes (nodes) training one run, gradients
//!   averaged between them over TCP.
//! - [`launch`]: rank, world size and rendezvous address of a one-process-per-GPU
//!   launch, from torchrun's or SLURM's variables and flags.
//! - [`rendezvous`]: rank 0 hands every rank a blob (NCCL's unique id) over TCP,
//!   checking world size, run and step.
//! - [`star`]: the TCP links (rank 0 listens, the others connect) that
//!   [`cluster`] and [`rendezvous`] talk over.
//! - [`buckets`]: a model's gradients as a few flat buffers, as DDP all-reduces them.
//! - `nccl` (feature `cuda`): gradient averaging over NCCL; compiled, not yet run.
//! - [`sweep`]: one run per tau and the results table.
//! - [`bench`]: the training-step benchmark.
//! - [`sgd`]: SGD with momentum, updating weights and buffers in place.
//! - [`weight_decay`]: L2 decay with BatchNorm parameters exempt (ffcv).
//! - [`language`]: GPT language models: training on token files, LoRA
//!   fine-tuning, pruning.

pub mod bench;
pub mod buckets;
pub mod checkpoint;
pub mod classification;
pub mod cluster;
pub mod config;
pub mod data;
pub mod device;
pub mod engine;
pub mod eval;
pub mod freeze;
pub mod language;
pub mod launch;
pub mod metrics;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod overrides;
pub mod parallel;
pub mod progress;
pub mod rendezvous;
pub mod run_dir;
pub mod sgd;
pub mod sheet;
pub mod star;
pub mod step;
pub mod sweep;
pub mod tensorboard;
#[cfg(test)]
mod test_models;
pub mod weight_decay;

pub use classification::{fit, Summary};
pub use config::RunConfig;
pub use device::DeviceChoice;
pub use engine::FitOptions;

/// The CPU training backend.
pub type CpuTrain = burn::backend::Autodiff<burn::backend::Flex>;
/// The CPU inference backend.
pub type Cpu = burn::backend::Flex;
