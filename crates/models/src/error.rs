//! Errors of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong building, loading, saving or probing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or parsed.
    #[error("{path}: cannot read checkpoint: {message}")]
    Read { path: PathBuf, message: String },

    /// The file could not be written.
    #[error("{path}: cannot write checkpoint: {message}")]
    Write { path: PathBuf, message: String },

    /// The tensor names and shapes match none of ResNet / ViT.
    #[error("{path}: unknown architecture: {reason}")]
    UnknownArchitecture { path: PathBuf, reason: String },

    /// The model expects tensors the file lacks.
    #[error("{path}: {count} tensor(s) missing for {architecture}: {}", .keys.join(", "))]
    MissingTensors {
        path: PathBuf,
        architecture: String,
        count: usize,
        keys: Vec<String>,
    },

    /// Tensors exist but have the wrong shape or type.
    #[error("{path}: tensors do not fit {architecture}: {}", .details.join("; "))]
    Mismatch {
        path: PathBuf,
        architecture: String,
        details: Vec<String>,
    },

    /// A configuration that cannot describe a working network.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),

    /// Module names that the model does not have (taps, layer selection).
    #[error("unknown module name(s) {}; valid names: {}", .unknown.join(", "), .valid.join(", "))]
    UnknownModules {
        unknown: Vec<String>,
        valid: Vec<String>,
    },

    /// A layer pattern that is not valid glob syntax.
    #[error("invalid layer pattern '{pattern}': {message}")]
    InvalidPattern { pattern: String, message: String },

    /// A layer pattern that matches no module at all.
    #[error("layer pattern '{pattern}' matches no module; Conv2d/Linear layers are: {}", .layers.join(", "))]
    PatternMatchesNothing {
        pattern: String,
        layers: Vec<String>,
    },

    /// A layer pattern that only matches modules without a topographic weight.
    #[error("layer pattern '{pattern}' matches only {} which {} not Conv2d or Linear; Conv2d/Linear layers are: {}",
        .matched.join(", "), if .matched.len() == 1 { "is" } else { "are" }, .layers.join(", "))]
    NotConvOrLinear {
        pattern: String,
        matched: Vec<String>,
        layers: Vec<String>,
    },

    /// A gradient handed back for a layer has the wrong shape.
    #[error("gradient for layer '{layer}' has shape {found:?}, expected {expected:?}")]
    GradientShape {
        layer: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// An input tensor the model cannot take.
    #[error("input of shape {found:?} does not fit the model: {reason}")]
    InputShape { found: Vec<usize>, reason: String },
}
