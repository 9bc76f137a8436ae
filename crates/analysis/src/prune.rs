//! The two efficiency probes of the paper: L1 unstructured pruning, and
//! down-sampling the weight sheet. Both return new weights; the caller loads
//! them into the model and evaluates it.
//!
//! # Pruning
//!
//! `torch.nn.utils.prune.l1_unstructured` applied to each topographic layer
//! with the same `amount` ([`PruneScope::PerLayer`], the default): every
//! layer loses the same fraction of its weights, so no layer is emptied and
//! topographic and baseline models are compared layer for layer. The number
//! pruned is `round(sparsity * size)`, ties to even, as PyTorch. [`PruneScope::Global`]
//! ranks all the layers' weights together, as `prune.global_unstructured`.
//! Ties in `|w|` are pruned lowest index first, so masks are reproducible.
//!
//! # Sheet down-sampling
//!
//! The sheet of unit weight vectors is down-sampled by `factor` along each
//! axis and up-sampled back, both bilinear with `align_corners=False` (the
//! blur of TopoLoss, `topoloss::SheetBlur`). Only the `(h/k) x (w/k)` reduced
//! sheet has to be stored, so the parameters kept are `(h/k)(w/k) e` of `h w e`.

use topoloss::{Interpolation, SheetBlur};

use crate::{check_len, AnalysisError, Result, SheetShape};

/// Which weights compete for survival when pruning several layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneScope {
    /// Each layer loses `sparsity` of its own weights.
    #[default]
    PerLayer,
    /// The smallest `sparsity` of all the layers' weights together go.
    Global,
}

/// Masks (`true` = kept) that prune `sparsity` of the weights by magnitude.
pub fn l1_masks(layers: &[&[f32]], sparsity: f64, scope: PruneScope) -> Result<Vec<Vec<bool>>> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(AnalysisError::InvalidSparsity(sparsity));
    }
    if layers.iter().any(|l| l.iter().any(|v| v.is_nan())) {
        return Err(AnalysisError::NonFinite {
            what: "weights to prune",
        });
    }
    match scope {
        PruneScope::PerLayer => Ok(layers.iter().map(|l| layer_mask(l, sparsity)).collect()),
        PruneScope::Global => {
            let all: Vec<f32> = layers.iter().flat_map(|l| l.iter().copied()).collect();
            let mask = layer_mask(&all, sparsity);
            let mut rest = mask.as_slice();
            Ok(layers
                .iter()
                .map(|l| {
                    let (head, tail) = rest.split_at(l.len());
                    rest = tail;
                    head.to_vec()
                })
                .collect())
        }
    }
}

fn layer_mask(weights: &[f32], sparsity: f64) -> Vec<bool> {
    // Python's round(), ties to even, as PyTorch's _compute_nparams_toprune.
    let prune = (sparsity * weights.len() as f64).round_ties_even() as usize;
    let mut mask = vec![true; weights.len()];
    if prune == 0 {
        return mask;
    }
    let mut order: Vec<u32> = (0..weights.len() as u32).collect();
    let key = |i: &u32| (weights[*i as usize].abs(), *i);
    order.select_nth_unstable_by(prune - 1, |a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    for &i in &order[..prune] {
        mask[i as usize] = false;
    }
    mask
}

/// The weights with the masked-out ones set to zero.
pub fn apply_mask(weights: &[f32], mask: &[bool]) -> Result<Vec<f32>> {
    check_len("mask", mask.len(), weights.len(), 1)?;
    Ok(weights
        .iter()
        .zip(mask)
        .map(|(&w, &keep)| if keep { w } else { 0.0 })
        .collect())
}

/// A layer's weights after down- and up-sampling its sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct DownsampledSheet {
    /// The reconstructed `[units, e]` weights, same layout as the input.
    pub weights: Vec<f32>,
    /// Height and width of the stored, reduced sheet.
    pub reduced: (usize, usize),
    /// Parameters that have to be stored: `reduced.0 * reduced.1 * e`.
    pub params_kept: usize,
    /// Parameters of the original layer: `units * e`.
    pub params_total: usize,
}

/// Down-samples the `[units, e]` sheet by `factor` (>= 1) and back.
pub fn downsample_sheet(
    weights: &[f32],
    e: usize,
    sheet: SheetShape,
    factor: f64,
) -> Result<DownsampledSheet> {
    check_len("unit weights", weights.len(), sheet.units(), e)?;
    let blur = SheetBlur::new(sheet, factor, factor, Interpolation::Bilinear)?;
    let reduced = blur.reduced_shape();
    Ok(DownsampledSheet {
        weights: blur.apply(weights, e),
        reduced,
        params_kept: reduced.0 * reduced.1 * e,
        params_total: weights.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_layer_masks_prune_the_smallest_of_each_layer() {
        let a = [0.5, -0.1, 0.3, -0.9, 0.2];
        let b = [10.0, 20.0, -30.0, 40.0];
        let masks = l1_masks(&[&a, &b], 0.5, PruneScope::PerLayer).unwrap();
        assert_eq!(masks[1], vec![false, false, true, true]);
        let pruned = masks[0].iter().filter(|k| !**k).count();
        assert_eq!(pruned, 2, "round(2.5) is 2 in Python");
        assert!(!masks[0][1] && !masks[0][4], "the two smallest go first");
    }

    #[test]
    fn global_masks_rank_all_layers_together() {
        let a = [0.5, -0.1, 0.3];
        let b = [10.0, 20.0, -30.0];
        let masks = l1_masks(&[&a, &b], 0.5, PruneScope::Global).unwrap();
        assert_eq!(masks[0], vec![false, false, false]);
        assert_eq!(masks[1], vec![true, true, true]);
    }

    #[test]
    fn sparsity_counts_and_ties_are_reproducible() {
        let weights = vec![1.0f32; 10];
        for (sparsity, pruned) in [(0.0, 0), (0.2, 2), (0.8, 8), (1.0, 10)] {
            let mask = &l1_masks(&[&weights], sparsity, PruneScope::PerLayer).unwrap()[0];
            assert_eq!(mask.iter().filter(|k| !**k).count(), pruned);
            // Ties go lowest index first.
            assert!(mask[..pruned].iter().all(|k| !k));
        }
        let applied = apply_mask(&[1.0, 2.0, 3.0], &[true, false, true]).unwrap();
        assert_eq!(applied, vec![1.0, 0.0, 3.0]);
    }

    #[test]
    fn invalid_requests_are_errors() {
        assert!(matches!(
            l1_masks(&[&[1.0]], 1.5, PruneScope::PerLayer),
            Err(AnalysisError::InvalidSparsity(_))
        ));
        assert!(l1_masks(&[&[f32::NAN]], 0.5, PruneScope::PerLayer).is_err());
        assert!(apply_mask(&[1.0, 2.0], &[true]).is_err());
        let sheet = SheetShape::for_units(16).unwrap();
        assert!(downsample_sheet(&[0.0; 16], 1, sheet, 0.5).is_err());
        assert!(downsample_sheet(&[0.0; 16], 1, sheet, 5.0).is_err());
        assert!(downsample_sheet(&[0.0; 15], 1, sheet, 2.0).is_err());
    }

    #[test]
    fn downsampling_keeps_a_quarter_and_preserves_smooth_sheets() {
        let sheet = SheetShape::for_units(256).unwrap();
        let e = 3;
        // A linear ramp is reproduced exactly by bilinear resampling away
        // from the borders; a checkerboard is averaged away.
        let ramp: Vec<f32> = (0..256)
            .flat_map(|u| {
                let (r, c) = sheet.position(u);
                [r as f32, c as f32, 1.0]
            })
            .collect();
        let out = downsample_sheet(&ramp, e, sheet, 2.0).unwrap();
        assert_eq!(out.reduced, (8, 8));
        assert_eq!((out.params_kept, out.params_total), (8 * 8 * 3, 256 * 3));
        let at = |r: usize, c: usize, j: usize| out.weights[(r * 16 + c) * e + j];
        assert!((at(5, 7, 0) - 5.0).abs() < 1e-5 && (at(5, 7, 1) - 7.0).abs() < 1e-5);
        let checker: Vec<f32> = (0..256)
            .map(|u| {
                let (r, c) = sheet.position(u);
                if (r + c) % 2 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let flat = downsample_sheet(&checker, 1, sheet, 2.0).unwrap();
        assert!(flat.weights.iter().all(|v| v.abs() < 1e-6));
        // Factor 1 changes nothing.
        assert_eq!(
            downsample_sheet(&ramp, e, sheet, 1.0).unwrap().weights,
            ramp
        );
    }
}
