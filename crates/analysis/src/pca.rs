//! Principal components of a layer's unit weight vectors, and the RGB colour
//! each unit gets from its first three components.

use image::{Rgb, RgbImage};

use crate::linalg::{gemm, orthonormalize_columns, symmetric_eigen, View};
use crate::{check_len, AnalysisError, Result, SheetShape};

/// Extra search directions of the subspace iteration: the convergence rate
/// of component `k` is `(lambda_{k_total+1} / lambda_k)`, so a few spare
/// directions make three components converge in tens of iterations.
const OVERSAMPLE: usize = 5;
const MAX_ITERATIONS: usize = 200;
const TOLERANCE: f64 = 1e-10;

/// Fraction of units clipped at each end when a component is scaled to a
/// colour channel, so that a few outlying units do not wash out the rest.
pub const ROBUST_QUANTILE: f64 = 0.02;

/// The leading principal components of `units` vectors of length `e`.
#[derive(Debug, Clone, PartialEq)]
pub struct Components {
    /// Variance along each component (population variance), largest first.
    pub variances: Vec<f64>,
    /// Projection of each unit on each component, `[units, k]` row-major.
    pub scores: Vec<f64>,
    /// Number of components found (`<= k` asked: the data may have fewer).
    pub k: usize,
}

/// First `k` principal components of the rows of the `[units, e]` matrix.
///
/// Rows are centred; components come from subspace iteration on the centred
/// matrix (never forming the `e x e` covariance, which for a 3x3 conv of 512
/// channels would be 4608 x 4608). Each component's sign is fixed so that its
/// largest-magnitude loading is positive, as scikit-learn's `svd_flip`, so the
/// same weights always give the same colours.
pub fn principal_components(
    weights: &[f32],
    units: usize,
    e: usize,
    k: usize,
) -> Result<Components> {
    check_len("unit weights", weights.len(), units, e)?;
    if e == 0 {
        return Err(AnalysisError::TooFew {
            what: "a unit weight vector (values per unit)",
            needed: 1,
            got: 0,
        });
    }
    if units < 2 {
        return Err(AnalysisError::TooFew {
            what: "principal components",
            needed: 2,
            got: units,
        });
    }
    if weights.iter().any(|v| !v.is_finite()) {
        return Err(AnalysisError::NonFinite {
            what: "unit weights",
        });
    }
    let centred = centre_rows(weights, units, e);
    let k = k.min(e).min(units - 1);
    let width = (k + OVERSAMPLE).min(e).min(units);
    if k == 0 {
        return Ok(Components {
            variances: vec![],
            scores: vec![],
            k: 0,
        });
    }
    let x = View::row_major(&centred, units, e);

    // Deterministic start: a fixed pseudo-random basis.
    let mut basis: Vec<f64> = (0..e * width)
        .map(|i| {
            let z = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((z >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect();
    orthonormalize_columns(&mut basis, e, width);
    let mut projected = vec![0.0; units * width];
    let mut previous = vec![0.0; k];
    for _ in 0..MAX_ITERATIONS {
        // basis <- orth(X^T X basis)
        gemm(
            1.0,
            x,
            View::row_major(&basis, e, width),
            0.0,
            &mut projected,
            width,
        );
        gemm(
            1.0,
            x.t(),
            View::row_major(&projected, units, width),
            0.0,
            &mut basis,
            width,
        );
        orthonormalize_columns(&mut basis, e, width);
        let ritz = rayleigh_ritz(x, &basis, e, width, &mut projected);
        let converged =
            ritz.iter().zip(&previous).take(k).all(|((value, _), old)| {
                (value - old).abs() <= TOLERANCE * value.abs().max(1e-300)
            });
        previous = ritz.iter().take(k).map(|(v, _)| *v).collect();
        if converged {
            break;
        }
    }

    // Rotate the basis onto the Ritz vectors and project the units.
    let ritz = rayleigh_ritz(x, &basis, e, width, &mut projected);
    let mut components = vec![0.0; e * k];
    for (c, (_, vector)) in ritz.iter().take(k).enumerate() {
        for row in 0..e {
            components[row * k + c] = (0..width).map(|j| basis[row * width + j] * vector[j]).sum();
        }
        // svd_flip: the largest-magnitude loading is positive.
        let (mut best, mut best_abs) = (0.0, -1.0);
        for row in 0..e {
            let v = components[row * k + c];
            if v.abs() > best_abs {
                (best, best_abs) = (v, v.abs());
            }
        }
        if best < 0.0 {
            for row in 0..e {
                components[row * k + c] = -components[row * k + c];
            }
        }
    }
    let mut scores = vec![0.0; units * k];
    gemm(
        1.0,
        x,
        View::row_major(&components, e, k),
        0.0,
        &mut scores,
        k,
    );
    let variances = ritz
        .iter()
        .take(k)
        .map(|(value, _)| value.max(0.0) / units as f64)
        .collect();
    Ok(Components {
        variances,
        scores,
        k,
    })
}

/// Eigenpairs of `B^T X^T X B` (the data's covariance restricted to the
/// subspace), largest first. `projected` is scratch of `units x width`.
fn rayleigh_ritz(
    x: View,
    basis: &[f64],
    e: usize,
    width: usize,
    projected: &mut [f64],
) -> Vec<(f64, Vec<f64>)> {
    gemm(
        1.0,
        x,
        View::row_major(basis, e, width),
        0.0,
        projected,
        width,
    );
    let mut small = vec![0.0; width * width];
    gemm(
        1.0,
        View::row_major(projected, x.rows, width).t(),
        View::row_major(projected, x.rows, width),
        0.0,
        &mut small,
        width,
    );
    symmetric_eigen(&small, width)
}

/// The rows minus their mean, in f64.
fn centre_rows(weights: &[f32], units: usize, e: usize) -> Vec<f64> {
    let mut mean = vec![0.0f64; e];
    for row in weights.chunks_exact(e) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= units as f64);
    weights
        .chunks_exact(e)
        .flat_map(|row| row.iter().zip(&mean).map(|(&v, m)| v as f64 - m))
        .collect()
}

/// A layer's sheet picture and the principal components it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct SheetColours {
    /// One pixel per unit, `width x height`: see [`sheet_pca_colors`].
    pub image: RgbImage,
    /// The first (up to) three components of the unit weights; unit `u`'s
    /// scores are `scores[u * k..(u + 1) * k]`.
    pub components: Components,
}

/// [`sheet_pca_colors`] with the components behind the colours.
pub fn sheet_pca(weights: &[f32], e: usize, sheet: SheetShape) -> Result<SheetColours> {
    let units = sheet.units();
    let pcs = principal_components(weights, units, e, 3)?;
    let mut channels = vec![[128u8; 3]; units];
    for c in 0..pcs.k {
        let column: Vec<f64> = (0..units).map(|u| pcs.scores[u * pcs.k + c]).collect();
        let (low, high) = quantile_range(&column, ROBUST_QUANTILE);
        for (rgb, value) in channels.iter_mut().zip(&column) {
            let t = if high > low {
                (value - low) / (high - low)
            } else {
                0.5
            };
            rgb[c] = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    let mut image = RgbImage::new(sheet.width as u32, sheet.height as u32);
    for (u, rgb) in channels.into_iter().enumerate() {
        let (row, col) = sheet.position(u);
        image.put_pixel(col as u32, row as u32, Rgb(rgb));
    }
    Ok(SheetColours {
        image,
        components: pcs,
    })
}

/// One pixel per unit, `width x height`: red, green and blue are the unit's
/// scores on the first, second and third principal component of the layer's
/// weight vectors, each mapped from its [2%, 98%] quantile range to [0, 255]
/// (see [`ROBUST_QUANTILE`]). A channel without a component (e < 3, or fewer
/// than four units) is mid-grey.
pub fn sheet_pca_colors(weights: &[f32], e: usize, sheet: SheetShape) -> Result<RgbImage> {
    Ok(sheet_pca(weights, e, sheet)?.image)
}

/// The `q` and `1 - q` quantiles (nearest rank) of finite values.
pub(crate) fn quantile_range(values: &[f64], q: f64) -> (f64, f64) {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return (0.0, 0.0);
    }
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    let at = |p: f64| sorted[((p * last as f64).round() as usize).min(last)];
    (at(q), at(1.0 - q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::symmetric_eigenvalues;
    use crate::testutil::Rng;

    /// Population covariance eigenvalues of the rows, by brute force.
    fn brute_force_variances(weights: &[f32], units: usize, e: usize) -> Vec<f64> {
        let x = centre_rows(weights, units, e);
        let mut cov = vec![0.0; e * e];
        gemm(
            1.0 / units as f64,
            View::row_major(&x, units, e).t(),
            View::row_major(&x, units, e),
            0.0,
            &mut cov,
            e,
        );
        symmetric_eigenvalues(&cov, e)
    }

    #[test]
    fn leading_variances_match_a_full_eigendecomposition() {
        let (units, e) = (60, 40);
        let mut rng = Rng::new(1);
        // Planted structure: three strong directions plus noise.
        let mut weights = rng.normals_f32(units * e);
        for u in 0..units {
            for (dir, scale) in [(0usize, 6.0f32), (1, 4.0), (2, 2.5)] {
                let a = rng.normal() as f32 * scale;
                for j in 0..e {
                    let loading = if (j + dir) % 3 == 0 {
                        0.3
                    } else {
                        -0.1 * dir as f32
                    };
                    weights[u * e + j] += a * loading;
                }
            }
        }
        let pcs = principal_components(&weights, units, e, 3).unwrap();
        let brute = brute_force_variances(&weights, units, e);
        for (got, want) in pcs.variances.iter().zip(&brute) {
            assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
        }
        // The scores' variance along each component is that component's variance.
        for c in 0..3 {
            let var: f64 = (0..units)
                .map(|u| pcs.scores[u * 3 + c].powi(2))
                .sum::<f64>()
                / units as f64;
            assert!((var - pcs.variances[c]).abs() < 1e-6 * var);
        }
    }

    #[test]
    fn colours_follow_a_gradient_across_the_sheet() {
        // Weights that vary linearly along the columns: the first component
        // is the column, so the red channel must be monotonic in it.
        let sheet = SheetShape::for_units(64).unwrap();
        let e = 5;
        let weights: Vec<f32> = (0..64)
            .flat_map(|u| {
                let col = (u % sheet.width) as f32;
                let row = (u / sheet.width) as f32;
                [col, col * 0.5, 0.1 * row, 0.0, col - 0.05 * row]
            })
            .collect();
        let img = sheet_pca_colors(&weights, e, sheet).unwrap();
        assert_eq!(img.dimensions(), (8, 8));
        let reds: Vec<u8> = (0..8).map(|c| img.get_pixel(c, 3)[0]).collect();
        assert!(reds.windows(2).all(|w| w[0] < w[1]), "{reds:?}");
        // The rows add a little to the first component, so the ends are
        // near, not exactly at, the clipped extremes.
        assert!(reds[0] < 32 && reds[7] > 223, "{reds:?}");
    }

    #[test]
    fn the_same_weights_always_give_the_same_picture() {
        let sheet = SheetShape::for_units(48).unwrap();
        let weights = Rng::new(3).normals_f32(48 * 12);
        let a = sheet_pca_colors(&weights, 12, sheet).unwrap();
        let b = sheet_pca_colors(&weights, 12, sheet).unwrap();
        assert_eq!(a, b);
        // And random weights use the whole colour range of each channel.
        for c in 0..3 {
            let values: Vec<u8> = a.pixels().map(|p| p[c]).collect();
            assert_eq!(values.iter().min(), Some(&0));
            assert_eq!(values.iter().max(), Some(&255));
        }
    }

    #[test]
    fn scalar_units_give_grey_green_and_blue() {
        let sheet = SheetShape::for_units(4).unwrap();
        let img = sheet_pca_colors(&[0.0, 1.0, 2.0, 3.0], 1, sheet).unwrap();
        assert!(img.pixels().all(|p| p[1] == 128 && p[2] == 128));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let sheet = SheetShape::for_units(4).unwrap();
        assert!(matches!(
            sheet_pca_colors(&[0.0; 10], 3, sheet),
            Err(AnalysisError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            sheet_pca_colors(&[f32::NAN; 8], 2, sheet),
            Err(AnalysisError::NonFinite { .. })
        ));
        assert!(principal_components(&[1.0; 3], 1, 3, 3).is_err());
    }
}
