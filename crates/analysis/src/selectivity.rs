//! Category selectivity: how much more each unit responds to one category of
//! stimuli (faces, bodies, places, ...) than to all the others.
//!
//! * [`welch_t`]: per unit, Welch's t-statistic of its responses to the
//!   category against its responses to every other image:
//!   `t = (mean_in - mean_out) / sqrt(var_in / n_in + var_out / n_out)` with
//!   unbiased variances. A unit whose responses are constant in both groups
//!   has t = 0 (no evidence either way) rather than a division by zero.
//! * [`map_correlation`]: Pearson correlation of two maps over all units.
//! * [`map_ssim`]: the structural similarity of two maps on the sheet, as
//!   scikit-image's `structural_similarity` with a uniform 7x7 window
//!   (smaller on small sheets), `data_range` the joint range of both maps,
//!   `K1 = 0.01`, `K2 = 0.03`, sample covariances, averaged over the windows
//!   that fit inside the sheet.

use crate::{check_len, AnalysisError, Result, SheetShape};

/// Window side of the SSIM, scikit-image's default.
pub const SSIM_WINDOW: usize = 7;
/// The smallest sheet side [`map_ssim`] accepts (a 3 x 3 window).
pub const MIN_SSIM_SIDE: usize = 3;

/// Welch t of `category` against the rest, for every unit.
///
/// `responses` is `[images, units]` row-major (one row per stimulus image),
/// `labels[i]` the category index of image `i`.
pub fn welch_t(
    responses: &[f32],
    units: usize,
    labels: &[usize],
    category: usize,
) -> Result<Vec<f32>> {
    let images = labels.len();
    check_len("responses", responses.len(), images, units)?;
    if responses.iter().any(|v| !v.is_finite()) {
        return Err(AnalysisError::NonFinite { what: "responses" });
    }
    let inside = labels.iter().filter(|&&l| l == category).count();
    let outside = images - inside;
    for (what, got) in [
        ("images of the category", inside),
        ("images of the other categories", outside),
    ] {
        if got < 2 {
            return Err(AnalysisError::TooFew {
                what,
                needed: 2,
                got,
            });
        }
    }
    // Welford-free two-pass in f64: the stimulus sets are small.
    let mut sum = [vec![0.0f64; units], vec![0.0f64; units]];
    for (row, &label) in responses.chunks_exact(units.max(1)).zip(labels) {
        let group = usize::from(label != category);
        sum[group]
            .iter_mut()
            .zip(row)
            .for_each(|(s, &v)| *s += v as f64);
    }
    let counts = [inside as f64, outside as f64];
    let mean: Vec<Vec<f64>> = (0..2)
        .map(|g| sum[g].iter().map(|s| s / counts[g]).collect())
        .collect();
    let mut squares = [vec![0.0f64; units], vec![0.0f64; units]];
    for (row, &label) in responses.chunks_exact(units.max(1)).zip(labels) {
        let group = usize::from(label != category);
        for ((s, &v), m) in squares[group].iter_mut().zip(row).zip(&mean[group]) {
            *s += (v as f64 - m).powi(2);
        }
    }
    Ok((0..units)
        .map(|u| {
            let var_in = squares[0][u] / (counts[0] - 1.0);
            let var_out = squares[1][u] / (counts[1] - 1.0);
            let se = (var_in / counts[0] + var_out / counts[1]).sqrt();
            let diff = mean[0][u] - mean[1][u];
            if se > 0.0 {
                (diff / se) as f32
            } else {
                0.0
            }
        })
        .collect())
}

/// Welch t maps of every category in `0..categories` against the rest.
pub fn selectivity_maps(
    responses: &[f32],
    units: usize,
    labels: &[usize],
    categories: usize,
) -> Result<Vec<Vec<f32>>> {
    if let Some((image, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= categories) {
        return Err(AnalysisError::LabelOutOfRange {
            image,
            label,
            categories,
        });
    }
    (0..categories)
        .map(|c| welch_t(responses, units, labels, c))
        .collect()
}

/// Pearson correlation of two maps of equal length.
pub fn map_correlation(a: &[f32], b: &[f32]) -> Result<f64> {
    check_len("second map", b.len(), a.len(), 1)?;
    if a.len() < 2 {
        return Err(AnalysisError::TooFew {
            what: "units to correlate",
            needed: 2,
            got: a.len(),
        });
    }
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    // A constant map correlates with nothing.
    Ok(if saa > 0.0 && sbb > 0.0 {
        sab / (saa * sbb).sqrt()
    } else {
        0.0
    })
}

/// Mean structural similarity of two maps laid on `sheet` (see the module
/// documentation for the exact constants).
pub fn map_ssim(a: &[f32], b: &[f32], sheet: SheetShape) -> Result<f64> {
    check_len("first map", a.len(), sheet.height, sheet.width)?;
    check_len("second map", b.len(), sheet.height, sheet.width)?;
    // The largest odd window that fits, at most 7.
    let fit = sheet.height.min(sheet.width);
    let win = if fit >= SSIM_WINDOW {
        SSIM_WINDOW
    } else if fit % 2 == 1 {
        fit
    } else {
        fit - 1
    };
    if win < MIN_SSIM_SIDE {
        return Err(AnalysisError::TooFew {
            what: "sheet rows and columns for a 3x3 SSIM window",
            needed: MIN_SSIM_SIDE,
            got: fit,
        });
    }
    let (lo, hi) = a
        .iter()
        .chain(b)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v as f64), hi.max(v as f64))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(AnalysisError::NonFinite {
            what: "selectivity maps",
        });
    }
    let range = hi - lo;
    if range == 0.0 {
        return Ok(1.0); // two identical constant maps
    }
    let c1 = (0.01 * range).powi(2);
    let c2 = (0.03 * range).powi(2);
    let np = (win * win) as f64;
    let cov_norm = np / (np - 1.0);
    let w = sheet.width;
    let mut total = 0.0;
    let mut windows = 0usize;
    for r0 in 0..=sheet.height - win {
        for c0 in 0..=w - win {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for r in r0..r0 + win {
                for c in c0..c0 + win {
                    let (x, y) = (a[r * w + c] as f64, b[r * w + c] as f64);
                    sa += x;
                    sb += y;
                    saa += x * x;
                    sbb += y * y;
                    sab += x * y;
                }
            }
            let (ux, uy) = (sa / np, sb / np);
            let vx = cov_norm * (saa / np - ux * ux);
            let vy = cov_norm * (sbb / np - uy * uy);
            let vxy = cov_norm * (sab / np - ux * uy);
            total += ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            windows += 1;
        }
    }
    Ok(total / windows as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn welch_t_matches_a_hand_computation() {
        // One unit; category 0: 1, 2, 3 (mean 2, var 1); rest: 0, 0, 0, 4
        // (mean 1, var 4). t = 1 / sqrt(1/3 + 4/4) = 0.8660...
        let responses = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 4.0];
        let labels = [0, 0, 0, 1, 2, 1, 2];
        let t = welch_t(&responses, 1, &labels, 0).unwrap();
        assert!((t[0] as f64 - 1.0 / (1.0f64 / 3.0 + 1.0).sqrt()).abs() < 1e-6);
        // Against the rest from the other side, the sign flips.
        let labels_flipped = [1, 1, 1, 0, 0, 0, 0];
        let t2 = welch_t(&responses, 1, &labels_flipped, 0).unwrap();
        assert!((t2[0] + t[0]).abs() < 1e-6);
    }

    #[test]
    fn planted_selective_units_stand_out() {
        // 40 images in 2 categories, 30 units; units 0..5 respond +2 to category 0.
        let mut rng = Rng::new(4);
        let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let mut responses = rng.normals_f32(40 * 30);
        for (i, &l) in labels.iter().enumerate() {
            if l == 0 {
                for u in 0..5 {
                    responses[i * 30 + u] += 2.0;
                }
            }
        }
        let maps = selectivity_maps(&responses, 30, &labels, 2).unwrap();
        assert!(maps[0][..5].iter().all(|&t| t > 3.0), "{:?}", &maps[0][..5]);
        assert!(maps[0][5..].iter().all(|&t| t.abs() < 4.0));
        // With two categories, each map is the negative of the other.
        assert!(maps[0]
            .iter()
            .zip(&maps[1])
            .all(|(a, b)| (a + b).abs() < 1e-5));
        assert!((map_correlation(&maps[0], &maps[1]).unwrap() + 1.0).abs() < 1e-9);
    }

    #[test]
    fn constant_units_have_zero_t() {
        let t = welch_t(&[1.0; 6], 1, &[0, 0, 0, 1, 1, 1], 0).unwrap();
        assert_eq!(t, vec![0.0]);
    }

    #[test]
    fn ssim_of_identical_opposite_and_unrelated_maps() {
        let sheet = SheetShape::for_units(256).unwrap();
        let smooth: Vec<f32> = (0..256)
            .map(|u| {
                let (r, c) = sheet.position(u);
                ((r as f32) * 0.3).sin() + ((c as f32) * 0.2).cos()
            })
            .collect();
        assert!((map_ssim(&smooth, &smooth, sheet).unwrap() - 1.0).abs() < 1e-12);
        let noise = Rng::new(9).normals_f32(256);
        // SSIM's luminance and structure terms both flip sign under negation,
        // so a negated map is judged by correlation, not SSIM; a mildly noisy
        // copy must stay similar.
        let noisy: Vec<f32> = smooth
            .iter()
            .zip(&noise)
            .map(|(s, n)| s + 0.1 * n)
            .collect();
        let similar = map_ssim(&smooth, &noisy, sheet).unwrap();
        assert!(similar > 0.7 && similar < 1.0, "{similar}");
        let unrelated = map_ssim(&smooth, &noise, sheet).unwrap();
        assert!(unrelated.abs() < 0.3, "{unrelated}");
    }

    #[test]
    fn ssim_matches_a_single_window_by_hand() {
        // A 3x3 sheet has exactly one 3x3 window.
        let sheet = SheetShape::for_units(9).unwrap();
        let a: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..9).map(|v| (2 * v) as f32).collect();
        // Joint range 16; ux 4, uy 8; vx = 7.5, vy = 30, vxy = 15 (sample).
        let (c1, c2) = ((0.16f64).powi(2), (0.48f64).powi(2));
        let want = ((2.0 * 32.0 + c1) * (30.0 + c2)) / ((16.0 + 64.0 + c1) * (37.5 + c2));
        assert!((map_ssim(&a, &b, sheet).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(
            welch_t(&[1.0; 4], 1, &[0, 1, 1, 1], 0).is_err(),
            "one image in the category"
        );
        assert!(
            welch_t(&[1.0; 4], 2, &[0, 1, 1, 1], 0).is_err(),
            "wrong length"
        );
        assert!(selectivity_maps(&[1.0; 4], 1, &[0, 0, 1, 5], 2).is_err());
        assert!(map_correlation(&[1.0, 2.0], &[1.0]).is_err());
        assert!(map_ssim(&[0.0; 4], &[0.0; 4], SheetShape::for_units(4).unwrap()).is_err());
    }
}
