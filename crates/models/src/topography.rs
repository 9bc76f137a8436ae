//! TopoLoss on a Burn model: which layers, with which factor and tau, and how
//! their loss and gradient join training.
//!
//! The TopoLoss of a layer depends on its weight alone, so it needs no place
//! in the autodiff graph: [`Topography::add_to_gradients`] computes each
//! selected layer's loss and gradient in closed form and adds the gradient
//! to the task loss's gradients before the optimiser step. Two engines do
//! the arithmetic:
//! - [`TopoEngine::Host`] copies the weights to the host and runs the
//!   `topoloss` crate's sparse kernel (the CPU backend's fast path);
//! - [`TopoEngine::Device`] expresses the same closed form as tensor ops
//!   (two small dense matmuls per blur), so weights never leave a GPU
//!   ([`device_engine`]).

mod device_engine;

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::any::Any;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use topoloss::{Interpolation, LayerTopoLoss, Reduction, SheetSource, TauSchedule, TopoError};

use crate::weight_layer::{add_gradient, HasWeightLayers, WeightLayer};
use crate::ModelError;
use device_engine::{DeviceEngine, LayerValues};

/// The `[topography]` section of a run's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopographyConfig {
    /// Tau over training steps; a plain number is a constant. Selections may
    /// override it.
    #[serde(deserialize_with = "topoloss::deserialize_tau")]
    pub tau: TauSchedule,
    /// How the selected layers' losses combine: "mean" (the reference) or "sum".
    #[serde(default)]
    pub reduction: Reduction,
    /// Which layers are topographic, and how.
    pub layers: Vec<LayerSelection>,
    /// "auto" (host on CPU backends, device on GPUs), "host" or "device".
    #[serde(default)]
    pub engine: TopoEngine,
}

/// One group of layers sharing a factor and (optionally) a tau.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSelection {
    /// Dotted glob patterns over PyTorch module names, e.g. `layer*.*.conv*`.
    pub patterns: Vec<String>,
    /// Blur factor along both sheet axes (the paper uses 3 for ResNets).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Blur factor along the sheet height, overriding `factor`.
    #[serde(default)]
    pub factor_h: Option<f64>,
    /// Blur factor along the sheet width, overriding `factor`.
    #[serde(default)]
    pub factor_w: Option<f64>,
    /// Clamp the factor to the sheet's sides (`min(factor, h, w)`) instead of
    /// failing on small sheets.
    #[serde(default)]
    pub clamp_factor: bool,
    #[serde(default)]
    pub interpolation: Interpolation,
    /// "weight" (the paper), "bias" or "input".
    #[serde(default)]
    pub source: SheetSource,
    /// Tau for these layers, overriding the section's.
    #[serde(default, deserialize_with = "topoloss::deserialize_optional_tau")]
    pub tau: Option<TauSchedule>,
}

fn default_factor() -> f64 {
    3.0
}

impl LayerSelection {
    /// All Conv2d/Linear layers (`**`) with one factor.
    pub fn all_layers(factor: f64) -> Self {
        LayerSelection {
            patterns: vec!["**".to_string()],
            factor,
            factor_h: None,
            factor_w: None,
            clamp_factor: false,
            interpolation: Interpolation::Bilinear,
            source: SheetSource::Weight,
            tau: None,
        }
    }

    /// Checks that each blur factor given is a finite number >= 1. Done
    /// before clamping, where `min(NaN or inf, side)` would hide the typo.
    pub fn validate(&self) -> Result<(), TopoError> {
        for (axis, factor) in [
            ("height and width (`factor`)", Some(self.factor)),
            ("height (`factor_h`)", self.factor_h),
            ("width (`factor_w`)", self.factor_w),
        ] {
            match factor {
                Some(factor) if !(factor.is_finite() && factor >= 1.0) => {
                    return Err(TopoError::InvalidFactor { axis, factor })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl TopographyConfig {
    /// Every layer matching `patterns`, one factor (clamped to each sheet's
    /// sides), one constant tau: what `inspect` and the benchmarks measure.
    pub fn uniform(patterns: &[String], factor: f64, tau: f64) -> Self {
        let mut selection = LayerSelection::all_layers(factor);
        selection.patterns = patterns.to_vec();
        selection.clamp_factor = true;
        TopographyConfig {
            tau: TauSchedule::constant(tau),
            reduction: Reduction::Mean,
            layers: vec![selection],
            engine: TopoEngine::Auto,
        }
    }
}

/// Where the TopoLoss arithmetic runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopoEngine {
    /// Host for CPU devices, device for accelerators (decided by the caller).
    #[default]
    Auto,
    Host,
    Device,
}

impl TopoEngine {
    /// `Auto` made concrete: the host kernel when the model lives in host
    /// memory, tensor ops on the device for an accelerator.
    pub fn resolve(self, on_accelerator: bool) -> TopoEngine {
        match self {
            TopoEngine::Auto if on_accelerator => TopoEngine::Device,
            TopoEngine::Auto => TopoEngine::Host,
            chosen => chosen,
        }
    }
}

impl std::str::FromStr for TopoEngine {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(TopoEngine::Auto),
            "host" => Ok(TopoEngine::Host),
            "device" => Ok(TopoEngine::Device),
            _ => Err(format!(
                "unknown TopoLoss engine '{text}': use auto, host or device"
            )),
        }
    }
}

/// Errors of building or applying a topography.
#[derive(Debug, thiserror::Error)]
pub enum TopographyError {
    #[error(transparent)]
    Selection(#[from] ModelError),
    /// Not `#[from]`: that would also make the error its source, and the
    /// printed chain would repeat it.
    #[error("topography: {0}")]
    Loss(TopoError),
    #[error("topography: layer {layer} is selected twice (by '{first}' and '{second}'); each layer may appear in one selection only")]
    SelectedTwice {
        layer: String,
        first: String,
        second: String,
    },
    #[error("topography: layer {layer} has no bias, so `source = \"bias\"` cannot apply to it")]
    NoBias { layer: String },
    #[error("topography: cannot read the weights of layer {layer}: {message}")]
    Data { layer: String, message: String },
    #[error("topography: the model's layers changed since the topography was built: {0}")]
    ModelChanged(String),
}

impl From<TopoError> for TopographyError {
    fn from(error: TopoError) -> Self {
        TopographyError::Loss(error)
    }
}

/// A selected layer on its cortical sheet: its TopoLoss and tau.
#[derive(Debug, Clone)]
pub struct SheetLayer {
    pub name: String,
    pub loss: LayerTopoLoss,
    pub tau: TauSchedule,
    pub factor_h: f64,
    pub factor_w: f64,
    /// Selection pattern(s) that chose it, for messages.
    selected_by: String,
}

/// Loss values of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct TopoReport {
    /// The total TopoLoss added to training (tau applied, reduced).
    pub total: f64,
    /// Per layer: name, tau, and the loss at tau = 1.
    pub layers: Vec<LayerReport>,
}

impl TopoReport {
    /// The mean tau over the layers (0 with none): the tau a run reports.
    pub fn mean_tau(&self) -> f64 {
        if self.layers.is_empty() {
            0.0
        } else {
            self.layers.iter().map(|l| l.tau).sum::<f64>() / self.layers.len() as f64
        }
    }

    /// The mean over layers of the loss at tau = 1 (None with no layers):
    /// the TopoLoss every report names plainly `mean_topo_loss`.
    pub fn mean_loss(&self) -> Option<f64> {
        (!self.layers.is_empty()).then(|| {
            self.layers.iter().map(|l| l.unscaled_loss).sum::<f64>() / self.layers.len() as f64
        })
    }

    /// Each layer's loss at tau = 1, by name (the metrics' `topo_layers`).
    pub fn layer_losses(&self) -> std::collections::BTreeMap<String, f64> {
        self.layers
            .iter()
            .map(|l| (l.name.clone(), l.unscaled_loss))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub name: String,
    pub tau: f64,
    pub unscaled_loss: f64,
}

/// The topographic layers of one model.
#[derive(Debug, Clone)]
pub struct Topography {
    pub layers: Vec<SheetLayer>,
    pub reduction: Reduction,
    device_engines: DeviceEngines,
}

/// The device engines built so far, one per backend and device (a run has
/// one), kept so their blur matrices are uploaded once. Type-erased because
/// a topography is not tied to a backend. A clone starts empty, since its
/// layers may then change.
#[derive(Default)]
struct DeviceEngines(Mutex<Vec<Box<dyn Any + Send>>>);

impl Clone for DeviceEngines {
    fn clone(&self) -> Self {
        DeviceEngines::default()
    }
}

impl std::fmt::Debug for DeviceEngines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceEngines")
    }
}

impl Topography {
    /// Resolves `config` against a model's candidate layers.
    pub fn new<B: Backend>(
        model: &impl HasWeightLayers<B>,
        config: &TopographyConfig,
    ) -> Result<Self, TopographyError> {
        let mut layers: Vec<SheetLayer> = Vec::new();
        for selection in &config.layers {
            let patterns: Vec<&str> = selection.patterns.iter().map(String::as_str).collect();
            let selected_by = selection.patterns.join(", ");
            for candidate in model.select_layers(&patterns)? {
                if let Some(earlier) = layers.iter().find(|l| l.name == candidate.name) {
                    return Err(TopographyError::SelectedTwice {
                        layer: candidate.name,
                        first: earlier.selected_by.clone(),
                        second: selected_by,
                    });
                }
                layers.push(SheetLayer::new(
                    &candidate,
                    selection,
                    config.tau.clone(),
                    selected_by.clone(),
                )?);
            }
        }
        Ok(Topography {
            layers,
            reduction: config.reduction,
            device_engines: DeviceEngines::default(),
        })
    }

    /// Names of the selected layers, in model order of selection.
    pub fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.name.as_str()).collect()
    }

    fn candidates_in_order<B: Backend>(
        &self,
        model: &impl HasWeightLayers<B>,
    ) -> Result<Vec<WeightLayer<B>>, TopographyError> {
        let mut all = model.weight_layers();
        self.layers
            .iter()
            .map(|layer| {
                let index = all
                    .iter()
                    .position(|c| c.name == layer.name)
                    .ok_or_else(|| {
                        TopographyError::ModelChanged(format!("no layer {}", layer.name))
                    })?;
                Ok(all.swap_remove(index))
            })
            .collect()
    }

    /// Loss values at optimiser step `step`, without gradients.
    pub fn report<B: Backend>(
        &self,
        model: &impl HasWeightLayers<B>,
        step: u64,
    ) -> Result<TopoReport, TopographyError> {
        let candidates = self.candidates_in_order(model)?;
        let mut reports = Vec::with_capacity(self.layers.len());
        for (layer, candidate) in self.layers.iter().zip(&candidates) {
            let values = layer.host_values(candidate)?;
            let unscaled_loss = layer.loss.loss(&values, 1.0)?;
            reports.push(LayerReport {
                name: layer.name.clone(),
                tau: layer.tau.value(step),
                unscaled_loss,
            });
        }
        Ok(self.summarise(reports))
    }

    fn summarise(&self, layers: Vec<LayerReport>) -> TopoReport {
        let weight = self.reduction.layer_weight(layers.len());
        let total = layers.iter().map(|l| l.tau * l.unscaled_loss).sum::<f64>() * weight;
        TopoReport { total, layers }
    }

    /// Computes the TopoLoss at step `step` and adds its gradient to `grads`
    /// (the task loss's gradients, on the autodiff backend's inner backend).
    pub fn add_to_gradients<B: AutodiffBackend>(
        &self,
        model: &impl HasWeightLayers<B>,
        step: u64,
        engine: TopoEngine,
        grads: &mut GradientsParams,
    ) -> Result<TopoReport, TopographyError> {
        let candidates = self.candidates_in_order(model)?;
        let layer_weight = self.reduction.layer_weight(self.layers.len());
        let scaled_taus: Vec<f64> = self
            .layers
            .iter()
            .map(|layer| layer.tau.value(step) * layer_weight)
            .collect();
        let losses = match engine {
            TopoEngine::Device => {
                self.device_losses_adding_grads(&candidates, &scaled_taus, grads)?
            }
            TopoEngine::Host | TopoEngine::Auto => self
                .layers
                .iter()
                .zip(&candidates)
                .zip(&scaled_taus)
                .map(|((layer, candidate), &tau)| {
                    layer.host_loss_adding_grad(candidate, tau, grads)
                })
                .collect::<Result<_, _>>()?,
        };
        let reports = self
            .layers
            .iter()
            .zip(losses)
            .map(|(layer, unscaled_loss)| LayerReport {
                name: layer.name.clone(),
                tau: layer.tau.value(step),
                unscaled_loss,
            })
            .collect();
        Ok(self.summarise(reports))
    }

    /// The device engine: each layer's loss at tau = 1 (read back once for
    /// all layers), its gradient at `taus[i]` added to `grads`.
    fn device_losses_adding_grads<B: AutodiffBackend>(
        &self,
        candidates: &[WeightLayer<B>],
        taus: &[f64],
        grads: &mut GradientsParams,
    ) -> Result<Vec<f64>, TopographyError> {
        let Some(first) = candidates.first() else {
            return Ok(Vec::new());
        };
        let device = first.weight.device();
        let values = self
            .layers
            .iter()
            .zip(candidates)
            .map(|(layer, candidate)| {
                Ok(match layer.loss.source {
                    SheetSource::Bias => LayerValues::Bias(
                        candidate
                            .bias
                            .clone()
                            .ok_or_else(|| layer.no_bias())?
                            .inner(),
                    ),
                    _ => LayerValues::Weight(candidate.weight.clone().inner()),
                })
            })
            .collect::<Result<Vec<_>, TopographyError>>()?;
        let result = {
            let mut engines = self
                .device_engines
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let found = engines.iter().position(|engine| {
                engine
                    .downcast_ref::<DeviceEngine<B::InnerBackend>>()
                    .is_some_and(|engine| engine.serves(&self.layers, &device))
            });
            let index = found.unwrap_or_else(|| {
                engines.push(Box::new(DeviceEngine::<B::InnerBackend>::new(
                    &self.layers,
                    &device,
                )));
                engines.len() - 1
            });
            let engine = engines[index]
                .downcast_ref::<DeviceEngine<B::InnerBackend>>()
                .expect("found or built for this backend");
            engine.loss_and_grads(values, taus)
        };
        for ((layer, candidate), (gradient, &tau)) in self
            .layers
            .iter()
            .zip(candidates)
            .zip(result.gradients.into_iter().zip(taus))
        {
            if tau == 0.0 {
                continue;
            }
            match gradient {
                LayerValues::Weight(grad) => candidate.accumulate_gradient(grads, grad)?,
                LayerValues::Bias(grad) => {
                    let id = candidate.bias_param_id.ok_or_else(|| layer.no_bias())?;
                    add_gradient(grads, id, grad);
                }
            }
        }
        // One read-back for all layers keeps the device busy.
        let losses = result
            .losses
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| TopographyError::Data {
                layer: "(all)".to_string(),
                message: format!("{e:?}"),
            })?;
        Ok(result.loss_index.iter().map(|&i| losses[i]).collect())
    }
}

impl SheetLayer {
    fn new<B: Backend>(
        candidate: &WeightLayer<B>,
        selection: &LayerSelection,
        tau: TauSchedule,
        selected_by: String,
    ) -> Result<Self, TopographyError> {
        let [out, unit_len] = candidate.flat_shape();
        if selection.source == SheetSource::Bias && candidate.bias.is_none() {
            return Err(TopographyError::NoBias {
                layer: candidate.name.clone(),
            });
        }
        selection
            .validate()
            .map_err(|e| e.in_layer(&candidate.name))?;
        let mut factor_h = selection.factor_h.unwrap_or(selection.factor);
        let mut factor_w = selection.factor_w.unwrap_or(selection.factor);
        if selection.clamp_factor {
            // min(factor, h, w) on both axes, as `topotrain inspect` reports it.
            let sheet_units = match selection.source {
                SheetSource::Input => unit_len,
                _ => out,
            };
            let sheet = topoloss::SheetShape::for_units(sheet_units)
                .map_err(|e| e.in_layer(&candidate.name))?;
            let side = sheet.height.min(sheet.width) as f64;
            factor_h = factor_h.min(side);
            factor_w = factor_w.min(side);
        }
        let loss = LayerTopoLoss::new(
            out,
            unit_len,
            selection.source,
            factor_h,
            factor_w,
            selection.interpolation,
        )
        .map_err(|e| e.in_layer(&candidate.name))?;
        Ok(SheetLayer {
            name: candidate.name.clone(),
            loss,
            tau: selection.tau.clone().unwrap_or(tau),
            factor_h,
            factor_w,
            selected_by,
        })
    }

    /// The values the loss reads (weight `[out, e]` or bias), as f32 on the host.
    fn host_values<B: Backend>(
        &self,
        candidate: &WeightLayer<B>,
    ) -> Result<Vec<f32>, TopographyError> {
        let data = match self.loss.source {
            SheetSource::Bias => candidate
                .bias
                .clone()
                .ok_or_else(|| self.no_bias())?
                .into_data(),
            _ => candidate.weight.clone().into_data(),
        };
        self.host_f32(data)
    }

    fn host_f32(&self, data: TensorData) -> Result<Vec<f32>, TopographyError> {
        data.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| TopographyError::Data {
                layer: self.name.clone(),
                message: format!("{e:?}"),
            })
    }

    fn no_bias(&self) -> TopographyError {
        TopographyError::NoBias {
            layer: self.name.clone(),
        }
    }

    /// The host kernel: returns the loss at tau = 1 and, unless `tau` is 0,
    /// adds the gradient at `tau` to the layer's gradient in `grads`. The
    /// existing gradient is copied to the host and the kernel accumulates
    /// into it, which costs one contiguous copy each way instead of a tensor
    /// addition (strided, for a conv's weight gradient, on the CPU backend);
    /// the gradient put back is contiguous, which the optimiser's
    /// element-wise ops also run faster on.
    fn host_loss_adding_grad<B: AutodiffBackend>(
        &self,
        candidate: &WeightLayer<B>,
        tau: f64,
        grads: &mut GradientsParams,
    ) -> Result<f64, TopographyError> {
        let values = self.host_values(candidate)?;
        if tau == 0.0 {
            return Ok(self.loss.loss(&values, 1.0)?);
        }
        let bias_id = candidate.bias_param_id;
        let existing = match self.loss.source {
            SheetSource::Bias => {
                let id = bias_id.ok_or_else(|| self.no_bias())?;
                grads
                    .remove::<B::InnerBackend, 1>(id)
                    .map(Tensor::into_data)
            }
            _ => candidate
                .take_flat_gradient::<B::InnerBackend>(grads)
                .map(Tensor::into_data),
        };
        let mut grad = match existing {
            Some(data) => self.host_f32(data)?,
            None => vec![0.0f32; values.len()],
        };
        let loss = self.loss.loss_and_add_grad(&values, tau, &mut grad)?;
        let device = candidate.weight.clone().inner().device();
        match (self.loss.source, bias_id) {
            (SheetSource::Bias, Some(id)) => grads.register(
                id,
                Tensor::<B::InnerBackend, 1>::from_data(
                    TensorData::new(grad, [self.loss.out_units]),
                    &device,
                ),
            ),
            _ => candidate.set_gradient(
                grads,
                Tensor::<B::InnerBackend, 2>::from_data(
                    TensorData::new(grad, [self.loss.out_units, self.loss.unit_len]),
                    &device,
                ),
            )?,
        }
        Ok(loss / tau)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight_layer::LayerKind;
    use crate::ResNetConfig;
    use burn::backend::flex::Flex;
    use burn::backend::Autodiff;

    type Train = Autodiff<Flex>;

    /// Sheets from 4 x 4 (16 units) to 8 x 16 (128 units), and fc 2 x 5.
    /// A narrow ResNet-18 with random weights and a fixed classifier bias.
    /// Random biases can nearly cancel, the blurred bias sheet (10 units,
    /// blurred to almost their mean) is then almost zero, and the cosine's
    /// gradient, which grows as its norm shrinks, carries the engines' f32
    /// rounding (1 in 80 runs past 1e-5 of the gradient's scale).
    fn tiny_resnet() -> crate::ResNet<Train> {
        let mut model = ResNetConfig::resnet18(10)
            .with_width(16)
            .with_small_stem(true)
            .init::<Train>(&Default::default())
            .unwrap();
        let bias: Vec<f32> = (0..10).map(|i| 0.05 * (i + 1) as f32).collect();
        model.fc.bias = model.fc.bias.map(|param| {
            param.map(|old| {
                Tensor::from_data(TensorData::new(bias, [10]), &old.device()).require_grad()
            })
        });
        model
    }

    fn config(tau: f64, factor: f64) -> TopographyConfig {
        TopographyConfig::uniform(&["**".to_string()], factor, tau)
    }

    fn flat_grad(grads: &GradientsParams, candidate: &WeightLayer<Train>) -> Vec<f32> {
        let data = match candidate.kind {
            LayerKind::Conv2d => grads
                .get::<Flex, 4>(candidate.param_id)
                .unwrap()
                .into_data(),
            LayerKind::Linear => grads
                .get::<Flex, 2>(candidate.param_id)
                .unwrap()
                .transpose()
                .into_data(),
        };
        data.into_vec::<f32>().unwrap()
    }

    /// Largest difference between `a` and `b`, checked against 1e-4 of
    /// `a`'s largest magnitude (which must be above 0).
    fn assert_gradients_agree(a: &[f32], b: &[f32], what: &str) {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{what} got no gradient");
        assert_eq!(a.len(), b.len(), "{what}");
        let error = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(error <= 1e-4 * scale, "{what}: {error} vs scale {scale}");
    }

    /// Both engines give every layer the same loss and gradient, for all
    /// three sheet sources, several taus and factors. The device engine
    /// batches layers by sheet (conv1 with layer1, listed apart; layer2's
    /// 1x1 downsample zero-padded beside its 3x3 convs).
    #[test]
    fn host_and_device_engines_agree() {
        let model = tiny_resnet();
        let text = r#"
            tau = 2.0
            [[layers]]
            patterns = ["conv1", "layer2.**"]
            factor = 2.0
            [[layers]]
            patterns = ["layer1.**"]
            factor = 2.0
            tau = 3.0
            [[layers]]
            patterns = ["layer3.**"]
            factor = 2.0
            tau = 5.0
            [[layers]]
            patterns = ["layer4.**"]
            source = "input"
            factor = 3.0
            [[layers]]
            patterns = ["fc"]
            source = "bias"
            factor = 2.0
            tau = 0.5
        "#;
        let config: TopographyConfig = toml::from_str(text).unwrap();
        let topography = Topography::new(&model, &config).unwrap();
        assert_eq!(topography.layers.len(), 21);
        let mut host = GradientsParams::new();
        let mut device = GradientsParams::new();
        let host_report = topography
            .add_to_gradients(&model, 0, TopoEngine::Host, &mut host)
            .unwrap();
        // Twice: the second step reuses the engine built by the first.
        for _ in 0..2 {
            device = GradientsParams::new();
            let device_report = topography
                .add_to_gradients(&model, 0, TopoEngine::Device, &mut device)
                .unwrap();
            assert!((host_report.total - device_report.total).abs() < 1e-5);
            for (h, d) in host_report.layers.iter().zip(&device_report.layers) {
                assert_eq!((&h.name, h.tau), (&d.name, d.tau));
                assert!(
                    (h.unscaled_loss - d.unscaled_loss).abs() < 1e-5,
                    "{}: {} vs {}",
                    h.name,
                    h.unscaled_loss,
                    d.unscaled_loss
                );
            }
        }
        for candidate in model.weight_layers() {
            if candidate.name == "fc" {
                let (h, d) = (
                    flat_bias_grad(&host, &candidate),
                    flat_bias_grad(&device, &candidate),
                );
                assert_gradients_agree(&h, &d, "fc.bias");
            } else {
                let (h, d) = (flat_grad(&host, &candidate), flat_grad(&device, &candidate));
                assert_gradients_agree(&h, &d, &candidate.name);
            }
        }
    }

    /// The task loss's gradients for a fixed batch.
    fn task_gradients(model: &crate::ResNet<Train>) -> GradientsParams {
        let values: Vec<f32> = (0..2 * 3 * 8 * 8)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let input = Tensor::<Train, 4>::from_data(
            TensorData::new(values, [2, 3, 8, 8]),
            &Default::default(),
        );
        let loss = model.forward(input).powi_scalar(2).mean();
        GradientsParams::from_grads(loss.backward(), model)
    }

    fn flat_bias_grad(grads: &GradientsParams, candidate: &WeightLayer<Train>) -> Vec<f32> {
        grads
            .get::<Flex, 1>(candidate.bias_param_id.unwrap())
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap()
    }

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let error = got
            .iter()
            .zip(expected)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            error <= 1e-5 * scale,
            "{what}: error {error}, scale {scale}"
        );
    }

    #[test]
    fn gradients_add_to_the_task_gradients_on_both_engines() {
        let model = tiny_resnet();
        let weights = Topography::new(&model, &config(2.0, 2.0)).unwrap();
        let mut bias_config = TopographyConfig::uniform(&["fc".to_string()], 2.0, 3.0);
        bias_config.layers[0].source = SheetSource::Bias;
        let bias = Topography::new(&model, &bias_config).unwrap();
        let task = task_gradients(&model);
        let (mut alone, mut host, mut device) = (
            GradientsParams::new(),
            task_gradients(&model),
            task_gradients(&model),
        );
        for (engine, grads) in [
            (TopoEngine::Host, &mut alone),
            (TopoEngine::Host, &mut host),
            (TopoEngine::Device, &mut device),
        ] {
            weights.add_to_gradients(&model, 0, engine, grads).unwrap();
            bias.add_to_gradients(&model, 0, engine, grads).unwrap();
        }
        for candidate in model.weight_layers() {
            let name = &candidate.name;
            let expected: Vec<f32> = flat_grad(&task, &candidate)
                .iter()
                .zip(flat_grad(&alone, &candidate))
                .map(|(t, a)| t + a)
                .collect();
            assert_close(&flat_grad(&host, &candidate), &expected, name);
            assert_close(&flat_grad(&device, &candidate), &expected, name);
        }
        let fc = model
            .weight_layers()
            .into_iter()
            .find(|c| c.name == "fc")
            .unwrap();
        let expected: Vec<f32> = flat_bias_grad(&task, &fc)
            .iter()
            .zip(flat_bias_grad(&alone, &fc))
            .map(|(t, a)| t + a)
            .collect();
        assert_close(&flat_bias_grad(&host, &fc), &expected, "fc bias");
        assert_close(&flat_bias_grad(&device, &fc), &expected, "fc bias");
    }

    #[test]
    fn the_added_gradient_is_the_layer_gradient_times_tau_over_layers() {
        let model = tiny_resnet();
        let topography = Topography::new(&model, &config(4.0, 2.0)).unwrap();
        let mut grads = GradientsParams::new();
        let report = topography
            .add_to_gradients(&model, 0, TopoEngine::Host, &mut grads)
            .unwrap();
        let candidate = model
            .weight_layers()
            .into_iter()
            .find(|c| c.name == "layer2.0.conv2")
            .unwrap();
        let layer = &topography.layers[topography
            .layer_names()
            .iter()
            .position(|n| *n == "layer2.0.conv2")
            .unwrap()];
        let weights = candidate
            .weight
            .clone()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let mut expected = vec![0.0f32; weights.len()];
        let loss = layer
            .loss
            .loss_and_grad(&weights, 4.0 / 21.0, &mut expected)
            .unwrap();
        let got = flat_grad(&grads, &candidate);
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
        let reported = report
            .layers
            .iter()
            .find(|l| l.name == "layer2.0.conv2")
            .unwrap();
        assert!((reported.unscaled_loss * 4.0 / 21.0 - loss).abs() < 1e-9);
        let mean: f64 = report
            .layers
            .iter()
            .map(|l| 4.0 * l.unscaled_loss)
            .sum::<f64>()
            / 21.0;
        assert!((report.total - mean).abs() < 1e-12);
    }

    #[test]
    fn the_gradient_lowers_the_loss() {
        // One small step against the TopoLoss gradient must reduce it.
        let model = tiny_resnet();
        let topography = Topography::new(&model, &config(1.0, 2.0)).unwrap();
        let mut grads = GradientsParams::new();
        let before = topography
            .add_to_gradients(&model, 0, TopoEngine::Host, &mut grads)
            .unwrap();
        let mut optimizer = burn::optim::SgdConfig::new().init::<Train, crate::ResNet<Train>>();
        use burn::optim::Optimizer;
        let model = optimizer.step(1.0, model, grads);
        let after = topography.report(&model, 0).unwrap();
        assert!(
            after.total < before.total,
            "{} -> {}",
            before.total,
            after.total
        );
    }

    #[test]
    fn config_parses_from_toml_with_defaults_and_overrides() {
        let text = r#"
            tau = 10.0
            [[layers]]
            patterns = ["layer*.*.conv*"]
            [[layers]]
            patterns = ["conv1"]
            factor_h = 2.0
            tau = { kind = "linear", from = 0.0, to = 5.0, steps = 100 }
        "#;
        let config: TopographyConfig = toml::from_str(text).unwrap();
        assert_eq!(config.tau, TauSchedule::constant(10.0));
        assert_eq!(config.layers[0].factor, 3.0);
        assert_eq!(config.layers[1].factor_h, Some(2.0));
        let model = tiny_resnet();
        let topography = Topography::new(&model, &config).unwrap();
        let conv1 = topography
            .layers
            .iter()
            .find(|l| l.name == "conv1")
            .unwrap();
        assert_eq!((conv1.factor_h, conv1.factor_w), (2.0, 3.0));
        assert_eq!(conv1.tau.value(50), 2.5);
        let bad = toml::from_str::<TopographyConfig>("tau = 1.0\nlayers = []\nfactr = 2");
        assert!(bad.unwrap_err().to_string().contains("factr"));
    }

    #[test]
    fn selection_errors_name_the_problem() {
        let model = tiny_resnet();
        let mut twice = config(1.0, 2.0);
        twice.layers.push(LayerSelection::all_layers(2.0));
        let error = Topography::new(&model, &twice).unwrap_err().to_string();
        assert!(error.contains("selected twice"), "{error}");

        let mut too_big = config(1.0, 5.0);
        too_big.layers[0].clamp_factor = false;
        let error = Topography::new(&model, &too_big).unwrap_err().to_string();
        assert!(
            error.contains("conv1") && error.contains("larger than"),
            "{error}"
        );

        let mut bias = config(1.0, 2.0);
        bias.layers[0].patterns = vec!["conv1".into()];
        bias.layers[0].source = SheetSource::Bias;
        let error = Topography::new(&model, &bias).unwrap_err().to_string();
        assert!(error.contains("no bias"), "{error}");

        // The message holds its cause, so no source repeats it when the
        // program prints the chain (`{:#}`).
        let error = Topography::new(&model, &config(1.0, 0.0)).unwrap_err();
        let text = error.to_string();
        assert_eq!(text.matches("blur factor").count(), 1, "{text}");
        assert!(text.starts_with("topography: layer conv1: "), "{text}");
        assert!(std::error::Error::source(&error).is_none(), "{text}");
    }

    /// `config` clamps the factor to each sheet, which once turned NaN and
    /// infinity into the sheet's side without a word.
    #[test]
    fn clamped_factors_must_still_be_numbers() {
        let model = tiny_resnet();
        for factor in [f64::NAN, f64::INFINITY, 0.5] {
            let error = Topography::new(&model, &config(1.0, factor))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("`factor`") && error.contains("finite number >= 1"),
                "{error}"
            );
        }
        let mut height = config(1.0, 2.0);
        height.layers[0].factor_h = Some(f64::NAN);
        let error = Topography::new(&model, &height).unwrap_err().to_string();
        assert!(error.contains("`factor_h`"), "{error}");
    }

    #[test]
    fn auto_engine_follows_the_device() {
        assert_eq!(TopoEngine::Auto.resolve(false), TopoEngine::Host);
        assert_eq!(TopoEngine::Auto.resolve(true), TopoEngine::Device);
        assert_eq!(TopoEngine::Host.resolve(true), TopoEngine::Host);
        assert_eq!(TopoEngine::Device.resolve(false), TopoEngine::Device);
        assert_eq!("device".parse(), Ok(TopoEngine::Device));
        assert!("gpu"
            .parse::<TopoEngine>()
            .unwrap_err()
            .contains("auto, host or device"));
    }
}
