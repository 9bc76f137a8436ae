//! Each selected layer's sheet and its TopoLoss at tau = 1, as `topotrain
//! inspect` reports them.

use anyhow::{bail, Result};
use models::topography::{SheetLayer, Topography, TopographyConfig};
use serde::Serialize;

/// One layer: its sheet, blur factor and TopoLoss at tau = 1.
#[derive(Debug, Serialize)]
pub struct LayerSummary {
    pub name: String,
    pub sheet_h: usize,
    pub sheet_w: usize,
    pub factor: f64,
    pub topo_loss: f64,
}

/// Sheet and TopoLoss (tau = 1) of each layer `selection` picks.
pub fn summarise_layers<B: burn::tensor::backend::Backend>(
    model: &impl models::HasWeightLayers<B>,
    selection: &TopographyConfig,
) -> Result<Vec<LayerSummary>> {
    for layers in &selection.layers {
        if !(layers.factor.is_finite() && layers.factor >= 1.0) {
            bail!("--factor must be a number >= 1, got {}", layers.factor);
        }
    }
    let topography = Topography::new(model, selection)?;
    let report = topography.report(model, 0)?;
    Ok(topography
        .layers
        .iter()
        .zip(report.layers)
        .map(|(layer, loss): (&SheetLayer, _)| LayerSummary {
            name: layer.name.clone(),
            sheet_h: layer.loss.sheet().height,
            sheet_w: layer.loss.sheet().width,
            factor: layer.factor_h.min(layer.factor_w),
            topo_loss: loss.unscaled_loss,
        })
        .collect())
}
