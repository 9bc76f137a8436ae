//! Models for topotrain: ResNet-18/50 and ViT-B/32 in Burn, with
//! torchvision's module names so PyTorch checkpoints load key for key, and a
//! GPT with NanoGPT's names.
//!
//! - [`resnet`], [`vit`], [`blurpool`]: the networks ([`Model`] holds either).
//! - [`state_dict`]: load PyTorch `.pt` and safetensors state dicts, infer
//!   the architecture from tensor names and shapes, save our own
//!   (safetensors in torchvision layout). Run checkpoints (weights,
//!   optimiser, schedule) are the trainer's.
//! - [`weight_layer`]: the Conv2d/Linear layers TopoLoss can act on
//!   ([`HasWeightLayers`], [`WeightLayer`]), pattern selection and the
//!   mapping of gradients back to Burn's parameter shapes.
//! - [`norm`]: batch normalisation arranged for the CPU backend.
//! - [`precision`]: bf16 convolutions and linear layers over f32 parameters,
//!   and the convolution kernels a network runs ([`Compute`]).
//! - [`taps`]: capturing intermediate module outputs by name.
//! - [`topography`]: TopoLoss on a model's selected layers, its gradient
//!   added to training's gradients on the host or on the device.
//! - [`gpt`], [`gpt_state_dict`]: a NanoGPT-named GPT language model
//!   (TopoLoss on each block's `mlp.c_fc`) and its state-dict IO.

pub mod blurpool;
mod error;
pub mod gpt;
pub mod gpt_state_dict;
pub mod model;
pub mod norm;
pub mod precision;
pub mod resnet;
pub mod state_dict;
pub mod taps;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topography;
pub mod vit;
pub mod weight_layer;

pub use error::ModelError;
pub use gpt::{Gpt, GptConfig, LoraConfig, LORA_TARGETS};
pub use gpt_state_dict::{
    export_gpt, inspect_gpt_checkpoint, load_gpt, save_gpt, GptCheckpointInfo,
};
pub use model::{Architecture, Model, ARCHITECTURE_NAMES};
pub use precision::{Compute, ConvChoice, Precision};
pub use resnet::{ResNet, ResNetConfig};
pub use state_dict::{
    infer_architecture, inspect_checkpoint, load_checkpoint, load_weights, load_weights_new_head,
    save_checkpoint, torch_parameter_names, CheckpointFormat, CheckpointInfo, NewHead,
};
pub use taps::{Activation, TappedOutput, Taps};
pub use vit::{VisionTransformer, VitConfig};
pub use weight_layer::{
    select, HasWeightLayers, LayerKind, LayerPattern, ModuleInfo, NativeGradient, WeightLayer,
};

/// The CPU backend used by tests and CPU runs.
pub type CpuBackend = burn::backend::Flex;
