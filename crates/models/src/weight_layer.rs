//! Weight layers: the Conv2d and Linear layers that carry a weight TopoLoss
//! can act on, their weights in PyTorch layout, and the way back for
//! gradients.
//!
//! TopoLoss treats a layer's weight as one vector per output unit, so every
//! candidate exposes `[out, e]`: conv `[out, in, kh, kw] -> [out, in*kh*kw]`,
//! linear `[out, in]`. Burn's `Linear` stores `[in, out]`, hence the
//! transposes here and in [`WeightLayer::native_gradient`].
//!
//! Layers are named like the PyTorch modules they load from (`layer2.0.conv1.conv`
//! with BlurPool, `encoder.layers.encoder_layer_0.mlp.0`, `fc`), and selected
//! with dotted glob patterns, see [`select`].

use burn::module::ParamId;
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use glob::{MatchOptions, Pattern};

use crate::ModelError;

/// The layer types TopoLoss can be applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `Conv2d`, weight `[out, in, kh, kw]` in both PyTorch and Burn.
    Conv2d,
    /// `Linear`, weight `[out, in]` in PyTorch but `[in, out]` in Burn.
    Linear,
}

/// A named module of a model and its PyTorch type, e.g. `("bn1", "BatchNorm2d")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// PyTorch module name (`state_dict` key without the parameter suffix).
    pub name: String,
    /// PyTorch class name, for messages.
    pub kind: &'static str,
}

impl ModuleInfo {
    pub(crate) fn new(name: impl Into<String>, kind: &'static str) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }
}

/// A layer TopoLoss may act on, with its current weight.
#[derive(Debug, Clone)]
pub struct WeightLayer<B: Backend> {
    /// PyTorch module name holding the weight, e.g. `layer2.0.conv1.conv`.
    pub name: String,
    /// Conv2d or Linear.
    pub kind: LayerKind,
    /// Id of the weight parameter, the key of its gradient in [`GradientsParams`].
    pub param_id: ParamId,
    /// The weight in PyTorch layout, flattened to `[out, e]`.
    pub weight: Tensor<B, 2>,
    /// The bias, if the layer has one.
    pub bias: Option<Tensor<B, 1>>,
    /// Id of the bias parameter, for TopoLoss on the bias.
    pub bias_param_id: Option<ParamId>,
    /// Shape of the weight as Burn stores it, to map a gradient back.
    pub weight_shape: Vec<usize>,
}

/// A gradient in the native (Burn) shape of a candidate's weight.
#[derive(Debug, Clone)]
pub enum NativeGradient<B: Backend> {
    /// `[out, in, kh, kw]`.
    Conv2d(Tensor<B, 4>),
    /// `[in, out]`.
    Linear(Tensor<B, 2>),
}

impl<B: Backend> WeightLayer<B> {
    /// The candidate for a conv named `name`.
    pub fn from_conv(name: impl Into<String>, conv: &Conv2d<B>) -> Self {
        let weight = conv.weight.val();
        let [out, inp, kh, kw] = weight.dims();
        Self {
            name: name.into(),
            kind: LayerKind::Conv2d,
            param_id: conv.weight.id,
            weight: weight.reshape([out, inp * kh * kw]),
            bias: conv.bias.as_ref().map(|b| b.val()),
            bias_param_id: conv.bias.as_ref().map(|b| b.id),
            weight_shape: vec![out, inp, kh, kw],
        }
    }

    /// The candidate for a linear layer named `name`.
    pub fn from_linear(name: impl Into<String>, linear: &Linear<B>) -> Self {
        let weight = linear.weight.val();
        let [inp, out] = weight.dims();
        Self {
            name: name.into(),
            kind: LayerKind::Linear,
            param_id: linear.weight.id,
            weight: weight.transpose(),
            bias: linear.bias.as_ref().map(|b| b.val()),
            bias_param_id: linear.bias.as_ref().map(|b| b.id),
            weight_shape: vec![inp, out],
        }
    }

    /// `[out, e]`, the shape of [`WeightLayer::weight`].
    pub fn flat_shape(&self) -> [usize; 2] {
        let out = match self.kind {
            LayerKind::Conv2d => self.weight_shape[0],
            LayerKind::Linear => self.weight_shape[1],
        };
        let total: usize = self.weight_shape.iter().product();
        [out, total / out.max(1)]
    }

    /// Maps a gradient w.r.t. the `[out, e]` weight back to the native shape
    /// (reshaping for conv, transposing for linear). Works on any backend, so
    /// a gradient computed on the inner backend maps without autodiff.
    pub fn native_gradient<G: Backend>(
        &self,
        grad: Tensor<G, 2>,
    ) -> Result<NativeGradient<G>, ModelError> {
        let found = grad.dims();
        if found != self.flat_shape() {
            return Err(ModelError::GradientShape {
                layer: self.name.clone(),
                expected: self.flat_shape().to_vec(),
                found: found.to_vec(),
            });
        }
        Ok(match self.kind {
            LayerKind::Conv2d => {
                let s = &self.weight_shape;
                NativeGradient::Conv2d(grad.reshape([s[0], s[1], s[2], s[3]]))
            }
            LayerKind::Linear => NativeGradient::Linear(grad.transpose()),
        })
    }

    /// Removes the weight's gradient from `grads` and returns it as `[out, e]`
    /// (the inverse of [`WeightLayer::native_gradient`]), if it has one.
    pub fn take_flat_gradient<G: Backend>(
        &self,
        grads: &mut GradientsParams,
    ) -> Option<Tensor<G, 2>> {
        let [out, e] = self.flat_shape();
        match self.kind {
            LayerKind::Conv2d => grads
                .remove::<G, 4>(self.param_id)
                .map(|g| g.reshape([out, e])),
            LayerKind::Linear => grads.remove::<G, 2>(self.param_id).map(|g| g.transpose()),
        }
    }

    /// Makes `grad` (w.r.t. the `[out, e]` weight) the weight's gradient in
    /// `grads`, replacing any.
    pub fn set_gradient<G: Backend>(
        &self,
        grads: &mut GradientsParams,
        grad: Tensor<G, 2>,
    ) -> Result<(), ModelError> {
        match self.native_gradient(grad)? {
            NativeGradient::Conv2d(g) => grads.register(self.param_id, g),
            NativeGradient::Linear(g) => grads.register(self.param_id, g),
        }
        Ok(())
    }

    /// Adds `grad` (w.r.t. the `[out, e]` weight) to the weight's gradient
    /// in `grads`, registering it if the task loss gave none. `G` is the
    /// backend the optimizer's gradients live on (the autodiff inner backend).
    pub fn accumulate_gradient<G: Backend>(
        &self,
        grads: &mut GradientsParams,
        grad: Tensor<G, 2>,
    ) -> Result<(), ModelError> {
        match self.native_gradient(grad)? {
            NativeGradient::Conv2d(g) => add_gradient(grads, self.param_id, g),
            NativeGradient::Linear(g) => add_gradient(grads, self.param_id, g),
        }
        Ok(())
    }
}

/// Adds `grad` to parameter `id`'s gradient in `grads`, registering it if
/// there is none.
pub(crate) fn add_gradient<G: Backend, const D: usize>(
    grads: &mut GradientsParams,
    id: ParamId,
    grad: Tensor<G, D>,
) {
    let total = match grads.remove::<G, D>(id) {
        Some(existing) => existing + grad,
        None => grad,
    };
    grads.register(id, total);
}

/// Models that list their Conv2d and Linear layers (the ones TopoLoss can
/// make topographic) and their named modules.
pub trait HasWeightLayers<B: Backend> {
    /// Every Conv2d and Linear layer, in forward order.
    fn weight_layers(&self) -> Vec<WeightLayer<B>>;

    /// Every named module (PyTorch names and types), in forward order.
    fn modules(&self) -> Vec<ModuleInfo>;

    /// The candidates matching any of `patterns`, see [`select`].
    fn select_layers(&self, patterns: &[&str]) -> Result<Vec<WeightLayer<B>>, ModelError> {
        select(self.weight_layers(), &self.modules(), patterns)
    }
}

/// Glob matching on dotted module names: `*`, `?` and `[...]` stay inside
/// one dotted segment (`layer*.*.conv*` matches `layer1.0.conv1` but not
/// `layer2.0.conv1.conv`); a whole segment `**` spans any number of
/// segments (`**.mlp.0`, `layer4.**`).
pub struct LayerPattern {
    text: String,
    pattern: Pattern,
}

impl LayerPattern {
    /// Parses a pattern.
    pub fn new(text: &str) -> Result<Self, ModelError> {
        // glob's separator-aware matching works on '/', so dots become slashes.
        let pattern =
            Pattern::new(&text.replace('.', "/")).map_err(|e| ModelError::InvalidPattern {
                pattern: text.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            text: text.to_string(),
            pattern,
        })
    }

    /// Whether the dotted module name matches.
    pub fn matches(&self, name: &str) -> bool {
        let options = MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.pattern.matches_with(&name.replace('.', "/"), options)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The candidates matching any pattern, in model order, each once.
///
/// Fails on a pattern that matches no module, or only modules that are not
/// Conv2d/Linear (e.g. `bn1`), naming the pattern and the valid layers.
pub fn select<B: Backend>(
    candidates: Vec<WeightLayer<B>>,
    modules: &[ModuleInfo],
    patterns: &[&str],
) -> Result<Vec<WeightLayer<B>>, ModelError> {
    let layer_names = || candidates.iter().map(|c| c.name.clone()).collect();
    let mut selected = vec![false; candidates.len()];
    for text in patterns {
        let pattern = LayerPattern::new(text)?;
        let mut any = false;
        for (candidate, chosen) in candidates.iter().zip(selected.iter_mut()) {
            if pattern.matches(&candidate.name) {
                *chosen = true;
                any = true;
            }
        }
        if any {
            continue;
        }
        let matched: Vec<String> = modules
            .iter()
            .filter(|m| pattern.matches(&m.name))
            .map(|m| format!("{} ({})", m.name, m.kind))
            .collect();
        return Err(if matched.is_empty() {
            ModelError::PatternMatchesNothing {
                pattern: text.to_string(),
                layers: layer_names(),
            }
        } else {
            ModelError::NotConvOrLinear {
                pattern: text.to_string(),
                matched,
                layers: layer_names(),
            }
        });
    }
    Ok(candidates
        .into_iter()
        .zip(selected)
        .filter_map(|(c, chosen)| chosen.then_some(c))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_inside_a_segment() {
        let p = LayerPattern::new("layer*.*.conv*").unwrap();
        assert!(p.matches("layer1.0.conv1"));
        assert!(p.matches("layer4.1.conv2"));
        assert!(!p.matches("layer2.0.conv1.conv"));
        assert!(!p.matches("layer2.0.downsample.0"));
        assert!(!p.matches("conv1"));
    }

    #[test]
    fn double_star_spans_segments() {
        let p = LayerPattern::new("**.mlp.3").unwrap();
        assert!(p.matches("encoder.layers.encoder_layer_11.mlp.3"));
        assert!(!p.matches("encoder.layers.encoder_layer_11.mlp.0"));
        let p = LayerPattern::new("layer2.**").unwrap();
        assert!(p.matches("layer2.0.conv1.conv"));
        assert!(!p.matches("layer3.0.conv1.conv"));
    }

    #[test]
    fn malformed_pattern_is_an_error_naming_it() {
        let err = LayerPattern::new("layer[1").err().unwrap();
        assert!(err.to_string().contains("layer[1"), "{err}");
    }
}
