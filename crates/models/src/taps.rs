//! Capturing intermediate module outputs during a forward pass.
//!
//! Every model's `forward` runs through `forward_with_taps`; each module
//! output is offered to a [`Taps`] recorder under its PyTorch module name,
//! and kept only when that name was asked for, so the plain forward pays a
//! set lookup per module and nothing else.

use std::collections::BTreeSet;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::weight_layer::ModuleInfo;
use crate::ModelError;

/// One captured module output; ranks differ between modules.
#[derive(Debug, Clone)]
pub enum Activation<B: Backend> {
    /// `[batch, features]`, e.g. `fc`.
    Rank2(Tensor<B, 2>),
    /// `[batch, tokens, features]`, e.g. a ViT encoder layer.
    Rank3(Tensor<B, 3>),
    /// `[batch, channels, height, width]`, e.g. a conv or residual block.
    Rank4(Tensor<B, 4>),
}

impl<B: Backend> Activation<B> {
    /// Shape of the captured tensor.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Rank2(t) => t.dims().to_vec(),
            Self::Rank3(t) => t.dims().to_vec(),
            Self::Rank4(t) => t.dims().to_vec(),
        }
    }

    /// The values, on the host.
    pub fn into_data(self) -> TensorData {
        match self {
            Self::Rank2(t) => t.into_data(),
            Self::Rank3(t) => t.into_data(),
            Self::Rank4(t) => t.into_data(),
        }
    }
}

impl<B: Backend> From<Tensor<B, 2>> for Activation<B> {
    fn from(t: Tensor<B, 2>) -> Self {
        Self::Rank2(t)
    }
}
impl<B: Backend> From<Tensor<B, 3>> for Activation<B> {
    fn from(t: Tensor<B, 3>) -> Self {
        Self::Rank3(t)
    }
}
impl<B: Backend> From<Tensor<B, 4>> for Activation<B> {
    fn from(t: Tensor<B, 4>) -> Self {
        Self::Rank4(t)
    }
}

/// Logits and the captured `(module name, output)` pairs of a tapped forward pass.
pub type TappedOutput<B> = (Tensor<B, 2>, Vec<(String, Activation<B>)>);

/// Records the outputs of the requested modules, in forward order.
#[derive(Debug)]
pub struct Taps<B: Backend> {
    wanted: BTreeSet<String>,
    captured: Vec<(String, Activation<B>)>,
}

impl<B: Backend> Taps<B> {
    /// A recorder that keeps nothing (the plain forward pass).
    pub fn none() -> Self {
        Self::wanting(std::iter::empty::<&str>())
    }

    /// A recorder keeping the outputs of the named modules. Names are not
    /// checked; see [`Taps::for_modules`].
    pub fn wanting<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            wanted: names.into_iter().map(|n| n.as_ref().to_string()).collect(),
            captured: Vec::new(),
        }
    }

    /// Whether any module output is wanted under `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.wanted.contains(name)
    }

    /// Offers `output` under `name`; clones it (cheap, reference counted)
    /// only when wanted. Returns `output` so calls chain in a forward pass.
    pub fn offer<const D: usize>(&mut self, name: &str, output: Tensor<B, D>) -> Tensor<B, D>
    where
        Tensor<B, D>: Into<Activation<B>>,
    {
        if self.wanted.contains(name) {
            self.captured
                .push((name.to_string(), output.clone().into()));
        }
        output
    }

    /// Like [`Taps::offer`] for a name built from a prefix, e.g. `layer1.0`
    /// + `.conv1`, formatting the name only when something is wanted.
    pub fn offer_in<const D: usize>(
        &mut self,
        prefix: &str,
        child: &str,
        output: Tensor<B, D>,
    ) -> Tensor<B, D>
    where
        Tensor<B, D>: Into<Activation<B>>,
    {
        if self.wanted.is_empty() {
            return output;
        }
        self.offer(&join_name(prefix, child), output)
    }

    /// The captured outputs, in forward order.
    pub fn into_captured(self) -> Vec<(String, Activation<B>)> {
        self.captured
    }

    /// A recorder for `names`, each of which must be one of `modules`
    /// (an error lists the unknown and the valid names otherwise).
    pub fn for_modules(names: &[String], modules: &[ModuleInfo]) -> Result<Self, ModelError> {
        let taps = Self::wanting(names);
        let valid: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
        let unknown: Vec<String> = taps
            .wanted
            .iter()
            .filter(|name| !valid.contains(name))
            .cloned()
            .collect();
        if unknown.is_empty() {
            Ok(taps)
        } else {
            Err(ModelError::UnknownModules { unknown, valid })
        }
    }
}

/// `prefix.child`, or `child` at the top level.
pub fn join_name(prefix: &str, child: &str) -> String {
    if prefix.is_empty() {
        child.to_string()
    } else {
        format!("{prefix}.{child}")
    }
}
