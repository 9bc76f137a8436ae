//! Weight smoothness: how similar the weight vectors of two units are as a
//! function of their distance on the cortical sheet.
//!
//! # Definition
//!
//! * Distance between units `a` and `b` is the Euclidean distance between
//!   their sheet positions, in units of the unit spacing:
//!   `sqrt((row_a - row_b)^2 + (col_a - col_b)^2)`.
//! * Every unordered pair of distinct units with non-zero weights is used
//!   (no sampling: the Gram matrix of a 2048-unit layer is one GEMM).
//! * Bin `k` (k = 1, 2, ...) holds the pairs whose distance rounds to `k`,
//!   i.e. lies in `[k - 0.5, k + 0.5)`; `c_k` is the mean cosine similarity of
//!   their weight vectors. Bin 1 holds the 4- and the diagonal neighbours.
//! * `near = c_1`, the nearest-neighbour similarity.
//! * `far` is the mean cosine over all pairs at least half the sheet's
//!   diagonal apart, the similarity of units that topography does not tie
//!   together: the baseline `c_0` of TDANN-style scores.
//! * **score = (near - far) / (1 - far)**: the share of the similarity that is
//!   left to gain above the baseline which nearest neighbours do gain. It is 0
//!   when similarity does not depend on distance (untrained weights, or
//!   tau = 0, whose unit order is arbitrary), 1 when neighbours are identical,
//!   and bounded whatever the baseline.
//!
//! We do not use TDANN's `(max_k c_k - c_0) / max_k c_k`: without topography
//! `max_k c_k` is sampling noise around zero, so the ratio explodes or flips
//! sign exactly on the models it must tell apart. The full curve is reported,
//! so other scores can be computed from it.

use rayon::prelude::*;

use crate::linalg::{gemm, View};
use crate::{check_len, AnalysisError, Result, SheetShape};

/// Units whose weight norm is below this are treated as pruned: their cosine
/// similarity is undefined, so they take part in no pair.
const ZERO_NORM: f64 = 1e-12;

/// Rows of the Gram matrix computed per task.
const BLOCK_ROWS: usize = 128;

/// Cosine similarity against sheet distance for one layer, and its score.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmoothnessCurve {
    /// Centre of each non-empty distance bin (1, 2, ...), in unit spacings.
    pub distances: Vec<f64>,
    /// Mean cosine similarity of the pairs in each bin.
    pub mean_cosine: Vec<f64>,
    /// Number of unit pairs in each bin.
    pub pairs: Vec<u64>,
    /// Mean cosine of nearest neighbours (bin 1).
    pub near: f64,
    /// Mean cosine of pairs at least half the sheet diagonal apart.
    pub far: f64,
    /// `(near - far) / (1 - far)`, see the module documentation.
    pub score: f64,
    /// Units that took part (those with non-zero weights).
    pub units_used: usize,
}

/// The smoothness curve and score of a layer's `[units, e]` unit weights laid
/// on `sheet`.
pub fn smoothness(weights: &[f32], e: usize, sheet: SheetShape) -> Result<SmoothnessCurve> {
    let units = sheet.units();
    check_len("unit weights", weights.len(), units, e)?;
    if weights.iter().any(|v| !v.is_finite()) {
        return Err(AnalysisError::NonFinite {
            what: "unit weights",
        });
    }
    // Unit-normalised rows of the units that have weights.
    let mut kept = Vec::with_capacity(units);
    let mut normalised = Vec::with_capacity(weights.len());
    for (u, row) in weights.chunks_exact(e.max(1)).enumerate().take(units) {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        if norm > ZERO_NORM {
            kept.push(sheet.position(u));
            normalised.extend(row.iter().map(|&v| v as f64 / norm));
        }
    }
    let n = kept.len();
    if n < 2 || e == 0 {
        return Err(AnalysisError::TooFew {
            what: "smoothness (units with non-zero weights)",
            needed: 2,
            got: n,
        });
    }

    // Bin of every (|d row|, |d col|) offset, and whether it counts as far.
    let diagonal = (((sheet.height - 1).pow(2) + (sheet.width - 1).pow(2)) as f64).sqrt();
    let bins = diagonal.round() as usize + 1;
    let offset_bin = |dr: usize, dc: usize| -> (usize, bool) {
        let distance = ((dr * dr + dc * dc) as f64).sqrt();
        (distance.round() as usize, distance >= diagonal / 2.0)
    };
    let table: Vec<(usize, bool)> = (0..sheet.height)
        .flat_map(|dr| (0..sheet.width).map(move |dc| (dr, dc)))
        .map(|(dr, dc)| offset_bin(dr, dc))
        .collect();

    let x = View::row_major(&normalised, n, e);
    let starts: Vec<usize> = (0..n).step_by(BLOCK_ROWS).collect();
    let (sums, counts, far_sum, far_count) = starts
        .par_iter()
        .map(|&start| {
            let end = (start + BLOCK_ROWS).min(n);
            let rows = end - start;
            let block = View::row_major(&normalised[start * e..end * e], rows, e);
            let mut gram = vec![0.0; rows * n];
            gemm(1.0, block, x.t(), 0.0, &mut gram, n);
            let mut sums = vec![0.0f64; bins];
            let mut counts = vec![0u64; bins];
            let (mut far_sum, mut far_count) = (0.0f64, 0u64);
            for i in start..end {
                let (ri, ci) = kept[i];
                let gram_row = &gram[(i - start) * n..(i - start + 1) * n];
                for (j, &cosine) in gram_row.iter().enumerate().skip(i + 1) {
                    let (rj, cj) = kept[j];
                    let (bin, far) = table[ri.abs_diff(rj) * sheet.width + ci.abs_diff(cj)];
                    sums[bin] += cosine;
                    counts[bin] += 1;
                    if far {
                        far_sum += cosine;
                        far_count += 1;
                    }
                }
            }
            (sums, counts, far_sum, far_count)
        })
        .reduce(
            || (vec![0.0; bins], vec![0; bins], 0.0, 0),
            |mut a, b| {
                a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
                a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
                (a.0, a.1, a.2 + b.2, a.3 + b.3)
            },
        );

    let mut curve = SmoothnessCurve {
        distances: vec![],
        mean_cosine: vec![],
        pairs: vec![],
        near: 0.0,
        far: 0.0,
        score: 0.0,
        units_used: n,
    };
    for (bin, (&sum, &count)) in sums.iter().zip(&counts).enumerate().skip(1) {
        if count > 0 {
            curve.distances.push(bin as f64);
            curve.mean_cosine.push(sum / count as f64);
            curve.pairs.push(count);
        }
    }
    if counts.get(1).copied().unwrap_or(0) == 0 || far_count == 0 {
        // Only possible when pruning removed every neighbour pair.
        return Err(AnalysisError::TooFew {
            what: "smoothness (neighbouring units with non-zero weights)",
            needed: 1,
            got: 0,
        });
    }
    curve.near = sums[1] / counts[1] as f64;
    curve.far = far_sum / far_count as f64;
    // All units pointing the same way leaves no headroom: nothing is
    // topographic about a sheet with no variation, so the score is 0.
    curve.score = if 1.0 - curve.far > 1e-9 {
        (curve.near - curve.far) / (1.0 - curve.far)
    } else {
        0.0
    };
    Ok(curve)
}

/// The model's smoothness: the mean score over its layers (0 for no layers).
pub fn mean_score(layers: &[SmoothnessCurve]) -> f64 {
    if layers.is_empty() {
        return 0.0;
    }
    layers.iter().map(|c| c.score).sum::<f64>() / layers.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use topoloss::{Interpolation, SheetBlur};

    fn random_sheet(sheet: SheetShape, e: usize, seed: u64) -> Vec<f32> {
        Rng::new(seed).normals_f32(sheet.units() * e)
    }

    /// Weights that vary slowly over the sheet: each component is a low
    /// frequency sinusoid of the position with its own phase.
    fn smooth_sheet(sheet: SheetShape, e: usize) -> Vec<f32> {
        (0..sheet.units())
            .flat_map(|u| {
                let (r, c) = sheet.position(u);
                (0..e).map(move |j| {
                    let phase = j as f32 * 0.7;
                    let fr = 0.15 + 0.05 * (j % 3) as f32;
                    let fc = 0.1 + 0.04 * (j % 4) as f32;
                    (fr * r as f32 + fc * c as f32 + phase).sin()
                })
            })
            .collect()
    }

    #[test]
    fn smooth_beats_blurred_beats_random() {
        let sheet = SheetShape::for_units(512).unwrap();
        let e = 27;
        let random = random_sheet(sheet, e, 7);
        let blur = SheetBlur::new(sheet, 4.0, 4.0, Interpolation::Bilinear).unwrap();
        let blurred = blur.apply(&random, e);
        let smooth = smooth_sheet(sheet, e);
        let s_random = smoothness(&random, e, sheet).unwrap();
        let s_blurred = smoothness(&blurred, e, sheet).unwrap();
        let s_smooth = smoothness(&smooth, e, sheet).unwrap();
        assert!(s_random.score.abs() < 0.05, "random {}", s_random.score);
        assert!(
            s_blurred.score > s_random.score + 0.2,
            "blurred {}",
            s_blurred.score
        );
        assert!(
            s_smooth.score > s_blurred.score,
            "smooth {} vs {}",
            s_smooth.score,
            s_blurred.score
        );
        // The curve of a smooth sheet falls with distance at first.
        assert!(s_smooth.mean_cosine[0] > s_smooth.mean_cosine[3]);
        assert_eq!(s_random.units_used, 512);
    }

    #[test]
    fn bins_hold_the_right_pairs() {
        // A 2 x 3 sheet: distances 1 (7 pairs), sqrt 2 (4 pairs, bin 1),
        // 2 (2 pairs), sqrt 5 (2 pairs, bin 2). 15 pairs in all.
        let sheet = SheetShape::for_units(6).unwrap();
        let weights: Vec<f32> = (0..6).flat_map(|u| [1.0, u as f32]).collect();
        let curve = smoothness(&weights, 2, sheet).unwrap();
        assert_eq!(curve.distances, vec![1.0, 2.0]);
        assert_eq!(curve.pairs, vec![11, 4]);
    }

    #[test]
    fn score_is_exact_on_a_hand_computed_sheet() {
        // 1 x 3 sheet with vectors e0, e0, e1: pairs (0,1) d=1 cos 1,
        // (1,2) d=1 cos 0, (0,2) d=2 cos 0. The diagonal is 2, so pairs at
        // distance >= 1 are far: all three, far = 1/3; near = 1/2.
        let sheet = SheetShape::for_units(3).unwrap();
        let curve = smoothness(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0], 2, sheet).unwrap();
        assert!((curve.near - 0.5).abs() < 1e-12);
        assert!((curve.far - 1.0 / 3.0).abs() < 1e-12);
        assert!((curve.score - (0.5 - 1.0 / 3.0) / (2.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn pruned_units_are_left_out() {
        let sheet = SheetShape::for_units(64).unwrap();
        let mut weights = random_sheet(sheet, 4, 1);
        weights[..8].fill(0.0);
        assert_eq!(smoothness(&weights, 4, sheet).unwrap().units_used, 62);
    }

    #[test]
    fn model_mean_averages_layers() {
        let sheet = SheetShape::for_units(64).unwrap();
        let a = smoothness(&smooth_sheet(sheet, 6), 6, sheet).unwrap();
        let b = smoothness(&random_sheet(sheet, 6, 2), 6, sheet).unwrap();
        assert!((mean_score(&[a.clone(), b.clone()]) - (a.score + b.score) / 2.0).abs() < 1e-15);
        assert_eq!(mean_score(&[]), 0.0);
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        let sheet = SheetShape::for_units(4).unwrap();
        assert!(smoothness(&[0.0; 8], 2, sheet).is_err());
        assert!(smoothness(&[1.0; 7], 2, sheet).is_err());
        assert!(smoothness(&[f32::INFINITY; 8], 2, sheet).is_err());
        assert!(smoothness(&[1.0], 1, SheetShape::for_units(1).unwrap()).is_err());
    }
}
