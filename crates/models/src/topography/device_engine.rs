//! [`TopoEngine::Device`](super::TopoEngine::Device): the TopoLoss closed
//! form as tensor ops on the weights' own device.
//!
//! On a GPU the cost of TopoLoss is the number of kernels it launches, not
//! its arithmetic (a ResNet-18's weights are 11 M numbers). Two things keep
//! that number down:
//! - layers whose sheets share a shape and a blur (a ResNet stage's convs)
//!   run as one batch: their sheets `[units, e]` are zero-padded to the
//!   widest `e` and stacked, which changes no dot product, so neither the
//!   loss nor the gradient;
//! - the blur matrices are uploaded once, when the engine is built, instead
//!   of per layer and step.

use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::{Tensor, TensorData};
use topoloss::SheetSource;

use super::SheetLayer;

/// The device engine of one topography on one device.
pub(super) struct DeviceEngine<G: Backend> {
    device: G::Device,
    /// The layers it was built for (the topography's list is public).
    layer_names: Vec<String>,
    groups: Vec<LayerGroup<G>>,
}

/// Layers computed as one batch.
struct LayerGroup<G: Backend> {
    /// Indices of the member layers in the topography's layer list.
    members: Vec<usize>,
    source: SheetSource,
    height: usize,
    width: usize,
    blur_h: Tensor<G, 2>,
    blur_w: Tensor<G, 2>,
}

/// A layer's values as the loss reads them: the weight `[out, e]` or the bias.
pub(super) enum LayerValues<G: Backend> {
    Weight(Tensor<G, 2>),
    Bias(Tensor<G, 1>),
}

/// The loss of each layer at tau = 1 (in the topography's layer order) and
/// each layer's gradient at its tau, in the shape of its values.
pub(super) struct DeviceResult<G: Backend> {
    pub(super) losses: Tensor<G, 1>,
    /// Where each layer's loss sits in `losses`.
    pub(super) loss_index: Vec<usize>,
    pub(super) gradients: Vec<LayerValues<G>>,
}

impl<G: Backend> DeviceEngine<G> {
    /// Groups `layers` by source, sheet and blur, uploading each group's
    /// blur matrices.
    pub(super) fn new(layers: &[SheetLayer], device: &G::Device) -> Self {
        let mut groups: Vec<(Vec<usize>, &SheetLayer)> = Vec::new();
        for (index, layer) in layers.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(_, first)| same_sheet_and_blur(first, layer))
            {
                Some((members, _)) => members.push(index),
                None => groups.push((vec![index], layer)),
            }
        }
        let matrix = |values: Vec<f64>, n: usize| {
            let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            Tensor::<G, 2>::from_data(TensorData::new(values, [n, n]), device)
        };
        let groups = groups
            .into_iter()
            .map(|(members, first)| {
                let shape = first.loss.sheet();
                LayerGroup {
                    members,
                    source: first.loss.source,
                    height: shape.height,
                    width: shape.width,
                    blur_h: matrix(first.loss.blur.along_height.dense(), shape.height),
                    blur_w: matrix(first.loss.blur.along_width.dense(), shape.width),
                }
            })
            .collect();
        DeviceEngine {
            device: device.clone(),
            layer_names: layers.iter().map(|l| l.name.clone()).collect(),
            groups,
        }
    }

    /// Whether it was built for `layers` on `device`.
    pub(super) fn serves(&self, layers: &[SheetLayer], device: &G::Device) -> bool {
        self.device == *device && layers.iter().map(|l| &l.name).eq(&self.layer_names)
    }

    /// Loss and gradient of every layer; `values[i]` and `taus[i]` belong to
    /// the topography's layer `i` (`taus` already carry the reduction's weight).
    pub(super) fn loss_and_grads(
        &self,
        values: Vec<LayerValues<G>>,
        taus: &[f64],
    ) -> DeviceResult<G> {
        let mut values: Vec<Option<LayerValues<G>>> = values.into_iter().map(Some).collect();
        let mut gradients: Vec<Option<LayerValues<G>>> = values.iter().map(|_| None).collect();
        let mut loss_index = vec![0; values.len()];
        let mut losses = Vec::with_capacity(self.groups.len());
        let mut next_loss = 0;
        for group in &self.groups {
            let sheets = group
                .members
                .iter()
                .map(|&i| group.sheet(values[i].take().expect("each layer is in one group")))
                .collect();
            let group_taus: Vec<f64> = group.members.iter().map(|&i| taus[i]).collect();
            let (loss, grads) = group.loss_and_grads(sheets, &group_taus, &self.device);
            for (&i, grad) in group.members.iter().zip(grads) {
                gradients[i] = Some(group.values(grad));
                loss_index[i] = next_loss;
                next_loss += 1;
            }
            losses.push(loss);
        }
        DeviceResult {
            losses: Tensor::cat(losses, 0),
            loss_index,
            gradients: gradients
                .into_iter()
                .map(|g| g.expect("each layer is in one group"))
                .collect(),
        }
    }
}

/// Whether two layers can share a batch: same source, sheet and blur.
fn same_sheet_and_blur(a: &SheetLayer, b: &SheetLayer) -> bool {
    a.loss.source == b.loss.source && a.loss.blur == b.loss.blur
}

impl<G: Backend> LayerGroup<G> {
    /// The sheet `[units, e]` of a member's values.
    fn sheet(&self, values: LayerValues<G>) -> Tensor<G, 2> {
        match (self.source, values) {
            (SheetSource::Input, LayerValues::Weight(w)) => w.transpose(),
            (_, LayerValues::Weight(w)) => w,
            (_, LayerValues::Bias(b)) => {
                let [out] = b.dims();
                b.reshape([out, 1])
            }
        }
    }

    /// A sheet-shaped gradient back in the shape of the member's values.
    fn values(&self, grad: Tensor<G, 2>) -> LayerValues<G> {
        match self.source {
            SheetSource::Weight => LayerValues::Weight(grad),
            SheetSource::Input => LayerValues::Weight(grad.transpose()),
            SheetSource::Bias => {
                let [out, _] = grad.dims();
                LayerValues::Bias(grad.reshape([out]))
            }
        }
    }

    /// The members' losses at tau = 1 (`[members]`) and their sheets'
    /// gradients at `taus`. The bias variant takes the cosine over the
    /// whole sheet at once.
    fn loss_and_grads(
        &self,
        sheets: Vec<Tensor<G, 2>>,
        taus: &[f64],
        device: &G::Device,
    ) -> (Tensor<G, 1>, Vec<Tensor<G, 2>>) {
        let (h, w) = (self.height, self.width);
        let units = h * w;
        let count = sheets.len();
        let widths: Vec<usize> = sheets.iter().map(|s| s.dims()[1]).collect();
        let widest = widths.iter().copied().max().unwrap_or(0);
        let mut padded: Vec<Tensor<G, 3>> = sheets
            .into_iter()
            .zip(&widths)
            .map(|(sheet, &e)| {
                let sheet = if e < widest {
                    sheet.pad([(0, widest - e)], PadMode::Constant(0.0))
                } else {
                    sheet
                };
                sheet.unsqueeze::<3>()
            })
            .collect();
        // [count, units, widest]; a lone layer needs no copy.
        let sheet = if count == 1 {
            padded.remove(0)
        } else {
            Tensor::cat(padded, 0)
        };
        // B(x) = Bh x Bw^T on the sheet axes: one batched matmul over the
        // sheets' rows, one over their columns.
        let apply = |x: Tensor<G, 3>, mh: Tensor<G, 2>, mw: Tensor<G, 2>| {
            let mh = mh.unsqueeze::<3>().expand([count, h, h]);
            let x = mh.matmul(x.reshape([count, h, w * widest]));
            let mw = mw.unsqueeze::<3>().expand([count * h, w, w]);
            mw.matmul(x.reshape([count * h, w, widest]))
                .reshape([count, units, widest])
        };
        let blurred = apply(sheet.clone(), self.blur_h.clone(), self.blur_w.clone());
        let whole_sheet = self.source == SheetSource::Bias;
        let reduce = |x: Tensor<G, 3>| -> Tensor<G, 3> {
            let per_unit = x.sum_dim(2);
            if whole_sheet {
                per_unit.sum_dim(1)
            } else {
                per_unit
            }
        };
        let eps = 1e-8f32;
        let dot_wb = reduce(sheet.clone() * blurred.clone());
        let dot_ww = reduce(sheet.clone() * sheet.clone());
        let dot_bb = reduce(blurred.clone() * blurred.clone());
        let inv_norms =
            (dot_ww.clone().sqrt().clamp_min(eps) * dot_bb.clone().sqrt().clamp_min(eps)).recip();
        let cos = dot_wb * inv_norms.clone();
        // A norm clamped to eps no longer depends on its vector: its term is 0.
        let self_term = |dot: Tensor<G, 3>| {
            let live = dot.clone().greater_elem(eps * eps).float();
            cos.clone() / dot.clamp_min(eps * eps) * live
        };
        let grad_w = blurred.clone() * inv_norms.clone() - sheet.clone() * self_term(dot_ww);
        let grad_b = sheet * inv_norms - blurred * self_term(dot_bb);
        let spread = apply(
            grad_b,
            self.blur_h.clone().transpose(),
            self.blur_w.clone().transpose(),
        );
        let cos_count = if whole_sheet { 1 } else { units };
        let scales: Vec<f32> = taus
            .iter()
            .map(|tau| (-tau / cos_count as f64) as f32)
            .collect();
        // One tau for the whole group (the usual case) needs no upload.
        let grad = if scales.iter().all(|&s| s == scales[0]) {
            (grad_w + spread).mul_scalar(scales[0])
        } else {
            let scales = TensorData::new(scales, [count, 1, 1]);
            (grad_w + spread) * Tensor::<G, 3>::from_data(scales, device)
        };
        let loss = cos
            .sum_dim(1)
            .reshape([count])
            .div_scalar(cos_count as f32)
            .neg()
            .add_scalar(1.0);
        let grads = widths
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                grad.clone()
                    .slice([i..i + 1, 0..units, 0..e])
                    .reshape([units, e])
            })
            .collect();
        (loss, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topography::{Topography, TopographyConfig};
    use crate::ResNetConfig;
    use burn::backend::flex::Flex;

    /// A narrow ResNet-18 with TopoLoss on every layer.
    fn resnet18_everywhere() -> Topography {
        let model = ResNetConfig::resnet18(10)
            .with_width(16)
            .with_small_stem(true)
            .init::<Flex>(&Default::default())
            .unwrap();
        let config = TopographyConfig::uniform(&["**".to_string()], 3.0, 1.0);
        Topography::new(&model, &config).unwrap()
    }

    /// A ResNet-18 with TopoLoss on every layer runs as one batch per stage
    /// (its convs share a sheet) and one for the classifier.
    #[test]
    fn a_resnet_runs_one_batch_per_stage_and_one_for_the_classifier() {
        let topography = resnet18_everywhere();
        let engine = DeviceEngine::<Flex>::new(&topography.layers, &Default::default());
        let sizes: Vec<usize> = engine.groups.iter().map(|g| g.members.len()).collect();
        assert_eq!(sizes, [5, 5, 5, 5, 1]);
    }

    /// A layer list of the same length in another order is not the one the
    /// engine's groups index.
    #[test]
    fn an_engine_serves_only_the_layers_it_was_built_for() {
        let device = Default::default();
        let topography = resnet18_everywhere();
        let engine = DeviceEngine::<Flex>::new(&topography.layers, &device);
        assert!(engine.serves(&topography.layers, &device));
        let mut reordered = topography.layers.clone();
        reordered.swap(0, 1);
        assert!(!engine.serves(&reordered, &device));
        assert!(!engine.serves(&topography.layers[1..], &device));
    }
}
