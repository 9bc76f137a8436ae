//! TopoLoss of one layer, with its gradient in closed form.
//!
//! With `b_u = B(W)_u` and PyTorch's cosine (each norm clamped to `eps`
//! separately), the loss is `tau * (1 - mean_u cos(w_u, b_u))` and
//!
//! ```text
//! dL/dW = -(tau/N) * (G_w + B^T(G_b))
//! G_w(u) = b_u / (|w_u| |b_u|) - cos_u * w_u / |w_u|^2
//! G_b(u) = w_u / (|w_u| |b_u|) - cos_u * b_u / |b_u|^2
//! ```
//!
//! `G_w(u)` and `G_b(u)` depend on unit `u` alone, so one pass over the units
//! computes the loss, writes `G_w` and folds `G_b` straight into the small
//! down-sampled space; a second pass spreads that back. No graph, and each
//! weight is read twice.

use rayon::prelude::*;

use crate::blur::{axpy, dot3, SheetBlur, PARALLEL_THRESHOLD};
use crate::resample::Interpolation;
use crate::{Real, SheetShape, TopoError};

/// PyTorch's `F.cosine_similarity` default `eps`.
const COSINE_EPS: f64 = 1e-8;

/// What the sheet of a layer is made of (the reference's three loss classes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SheetSource {
    /// One unit per output channel, its vector the unit's incoming weights
    /// (`LaplacianPyramid`). The paper's TopoLoss.
    #[default]
    Weight,
    /// The bias as a sheet of scalars, one cosine over the whole sheet
    /// (`LaplacianPyramidOnBias`, Linear layers).
    Bias,
    /// One unit per input feature, its vector the weights leaving it
    /// (`LaplacianPyramidOnInput`, Linear layers).
    Input,
}

impl std::str::FromStr for SheetSource {
    type Err = TopoError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "weight" => Ok(SheetSource::Weight),
            "bias" => Ok(SheetSource::Bias),
            "input" => Ok(SheetSource::Input),
            other => Err(TopoError::UnknownSource(other.to_string())),
        }
    }
}

/// The TopoLoss of one layer with weight `[out, e]` (a Conv2d weight
/// `[out, in, kh, kw]` is `[out, in*kh*kw]` in the same memory).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTopoLoss {
    pub out_units: usize,
    pub unit_len: usize,
    pub source: SheetSource,
    pub blur: SheetBlur,
}

impl LayerTopoLoss {
    pub fn new(
        out_units: usize,
        unit_len: usize,
        source: SheetSource,
        factor_h: f64,
        factor_w: f64,
        mode: Interpolation,
    ) -> Result<Self, TopoError> {
        let sheet_units = match source {
            SheetSource::Weight | SheetSource::Bias => out_units,
            SheetSource::Input => unit_len,
        };
        let shape = SheetShape::for_units(sheet_units)?;
        Ok(LayerTopoLoss {
            out_units,
            unit_len,
            source,
            blur: SheetBlur::new(shape, factor_h, factor_w, mode)?,
        })
    }

    /// The sheet the loss is computed on.
    pub fn sheet(&self) -> SheetShape {
        self.blur.shape
    }

    /// Loss at `tau`, without the gradient. `values` is the weight `[out, e]`,
    /// or the bias `[out]` for [`SheetSource::Bias`].
    pub fn loss<T: Real>(&self, values: &[T], tau: f64) -> Result<f64, TopoError> {
        self.check_len(values)?;
        Ok(match self.source {
            SheetSource::Weight => sheet_loss(&self.blur, values, self.unit_len, tau, None),
            SheetSource::Input => {
                let sheet = transpose(values, self.out_units, self.unit_len);
                sheet_loss(&self.blur, &sheet, self.out_units, tau, None)
            }
            SheetSource::Bias => whole_sheet_loss(&self.blur, values, tau, None),
        })
    }

    /// Loss at `tau`, adding its gradient into `grad` (same layout as `values`).
    pub fn loss_and_grad<T: Real>(
        &self,
        values: &[T],
        tau: f64,
        grad: &mut [T],
    ) -> Result<f64, TopoError> {
        self.check_len(values)?;
        if grad.len() != values.len() {
            return Err(TopoError::LengthMismatch {
                what: "gradient buffer",
                expected: values.len(),
                got: grad.len(),
            });
        }
        Ok(match self.source {
            SheetSource::Weight => sheet_loss(&self.blur, values, self.unit_len, tau, Some(grad)),
            SheetSource::Input => {
                let sheet = transpose(values, self.out_units, self.unit_len);
                let mut sheet_grad = vec![T::zero(); sheet.len()];
                let loss = sheet_loss(
                    &self.blur,
                    &sheet,
                    self.out_units,
                    tau,
                    Some(&mut sheet_grad),
                );
                let back = transpose(&sheet_grad, self.unit_len, self.out_units);
                grad.iter_mut().zip(back).for_each(|(g, b)| *g = *g + b);
                loss
            }
            SheetSource::Bias => whole_sheet_loss(&self.blur, values, tau, Some(grad)),
        })
    }

    fn check_len<T>(&self, values: &[T]) -> Result<(), TopoError> {
        let (what, expected) = match self.source {
            SheetSource::Bias => ("bias", self.out_units),
            _ => ("weight", self.out_units * self.unit_len),
        };
        if values.len() == expected {
            Ok(())
        } else {
            Err(TopoError::LengthMismatch {
                what,
                expected,
                got: values.len(),
            })
        }
    }
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose<T: Real>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Per-unit cosine terms: `cos`, and the coefficients of `G_w = bw*b - ww*w`
/// and `G_b = wb*w - bb*b`.
struct CosineTerms<T> {
    cos: f64,
    grad_w_from_b: T,
    grad_w_from_w: T,
    grad_b_from_w: T,
    grad_b_from_b: T,
}

fn cosine_terms<T: Real>(w: &[T], b: &[T]) -> CosineTerms<T> {
    let (wb, ww, bb) = dot3(w, b);
    let eps = T::from(COSINE_EPS).unwrap_or_else(T::epsilon);
    let (norm_w, norm_b) = (ww.sqrt(), bb.sqrt());
    let inv_norms = T::one() / (norm_w.max(eps) * norm_b.max(eps));
    let cos = wb * inv_norms;
    // A norm below eps is clamped to the constant eps: it no longer depends
    // on the vector, so its derivative term vanishes (and no NaN appears).
    let grad_w_from_w = if norm_w > eps { cos / ww } else { T::zero() };
    let grad_b_from_b = if norm_b > eps { cos / bb } else { T::zero() };
    CosineTerms {
        cos: cos.to_f64().unwrap_or(f64::NAN),
        grad_w_from_b: inv_norms,
        grad_w_from_w,
        grad_b_from_w: inv_norms,
        grad_b_from_b,
    }
}

/// The paper's TopoLoss of a sheet `[h, w, e]`, optionally adding its gradient.
fn sheet_loss<T: Real>(
    blur: &SheetBlur,
    sheet: &[T],
    e: usize,
    tau: f64,
    grad: Option<&mut [T]>,
) -> f64 {
    let shape = blur.shape;
    let units = shape.units();
    let reduced = blur.down(sheet, e);
    let (reduced_h, reduced_w) = blur.reduced_shape();
    let up_h = &blur.along_height.up;
    let up_w = &blur.along_width.up;
    let coef = T::from(-tau / units as f64).unwrap_or_else(T::zero);
    let want_grad = grad.is_some();

    // One sheet row at a time: sum of cosines, and (for the gradient) G_b
    // already mapped by the up-sampling's adjoint into the reduced sheet.
    let process_row = |a: usize, mut grad_row: Option<&mut [T]>, folded: &mut Vec<T>| -> f64 {
        let mut blurred = vec![T::zero(); e];
        let mut grad_b = vec![T::zero(); if want_grad { e } else { 0 }];
        let mut cos_sum = 0.0;
        for c in 0..shape.width {
            blurred.iter_mut().for_each(|x| *x = T::zero());
            for &(i, weight_h) in &up_h.rows[a] {
                for &(j, weight_w) in &up_w.rows[c] {
                    let start = (i * reduced_w + j) * e;
                    let scale = T::from(weight_h * weight_w).unwrap_or_else(T::zero);
                    axpy(scale, &reduced[start..start + e], &mut blurred);
                }
            }
            let unit = &sheet[(a * shape.width + c) * e..][..e];
            let terms = cosine_terms(unit, &blurred);
            cos_sum += terms.cos;
            if let Some(grad_row) = grad_row.as_deref_mut() {
                let grad_unit = &mut grad_row[c * e..(c + 1) * e];
                for k in 0..e {
                    grad_unit[k] = grad_unit[k]
                        + coef * (terms.grad_w_from_b * blurred[k] - terms.grad_w_from_w * unit[k]);
                    grad_b[k] = terms.grad_b_from_w * unit[k] - terms.grad_b_from_b * blurred[k];
                }
                for &(i, weight_h) in &up_h.rows[a] {
                    for &(j, weight_w) in &up_w.rows[c] {
                        let start = (i * reduced_w + j) * e;
                        let scale = T::from(weight_h * weight_w).unwrap_or_else(T::zero);
                        axpy(scale, &grad_b, &mut folded[start..start + e]);
                    }
                }
            }
        }
        cos_sum
    };

    let folded_len = if want_grad {
        reduced_h * reduced_w * e
    } else {
        0
    };
    let row_len = shape.width * e;
    let parallel = sheet.len() >= PARALLEL_THRESHOLD;
    let cos_sum = match grad {
        Some(grad) => {
            let fold_rows = |(mut folded, cos_sum): (Vec<T>, f64),
                             (a, grad_row): (usize, &mut [T])| {
                let row_sum = process_row(a, Some(grad_row), &mut folded);
                (folded, cos_sum + row_sum)
            };
            let (folded, cos_sum) = if parallel {
                grad.par_chunks_mut(row_len)
                    .enumerate()
                    .fold(|| (vec![T::zero(); folded_len], 0.0), fold_rows)
                    .reduce(|| (vec![T::zero(); folded_len], 0.0), add_partials)
            } else {
                grad.chunks_mut(row_len)
                    .enumerate()
                    .fold((vec![T::zero(); folded_len], 0.0), fold_rows)
            };
            // Spread B^T's remaining factor, the down-sampling's adjoint, over the sheet.
            blur.add_down_transpose(&folded, e, coef, grad);
            cos_sum
        }
        None => {
            if parallel {
                (0..shape.height)
                    .into_par_iter()
                    .map(|a| process_row(a, None, &mut Vec::new()))
                    .sum()
            } else {
                (0..shape.height)
                    .map(|a| process_row(a, None, &mut Vec::new()))
                    .sum()
            }
        }
    };
    tau * (1.0 - cos_sum / units as f64)
}

fn add_partials<T: Real>(left: (Vec<T>, f64), right: (Vec<T>, f64)) -> (Vec<T>, f64) {
    let (mut sum, cos_left) = left;
    sum.iter_mut().zip(&right.0).for_each(|(a, &b)| *a = *a + b);
    (sum, cos_left + right.1)
}

/// The bias variant: one cosine between the whole sheet of scalars and its blur.
fn whole_sheet_loss<T: Real>(
    blur: &SheetBlur,
    values: &[T],
    tau: f64,
    grad: Option<&mut [T]>,
) -> f64 {
    let blurred = blur.apply(values, 1);
    let terms = cosine_terms(values, &blurred);
    if let Some(grad) = grad {
        let coef = T::from(-tau).unwrap_or_else(T::zero);
        let grad_b: Vec<T> = values
            .iter()
            .zip(&blurred)
            .map(|(&x, &b)| terms.grad_b_from_w * x - terms.grad_b_from_b * b)
            .collect();
        let spread = blur.apply_transpose(&grad_b, 1);
        for k in 0..values.len() {
            let grad_x = terms.grad_w_from_b * blurred[k] - terms.grad_w_from_w * values[k];
            grad[k] = grad[k] + coef * (grad_x + spread[k]);
        }
    }
    tau * (1.0 - terms.cos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect()
    }

    /// Central finite differences of the loss, for checking gradients.
    fn numeric_grad(layer: &LayerTopoLoss, values: &[f64], tau: f64) -> Vec<f64> {
        let step = 1e-6;
        (0..values.len())
            .map(|k| {
                let mut plus = values.to_vec();
                let mut minus = values.to_vec();
                plus[k] += step;
                minus[k] -= step;
                (layer.loss(&plus, tau).unwrap() - layer.loss(&minus, tau).unwrap()) / (2.0 * step)
            })
            .collect()
    }

    fn assert_grad_matches_finite_differences(layer: &LayerTopoLoss, values: &[f64], tau: f64) {
        let mut grad = vec![0.0; values.len()];
        let loss = layer.loss_and_grad(values, tau, &mut grad).unwrap();
        assert!((loss - layer.loss(values, tau).unwrap()).abs() < 1e-15);
        let numeric = numeric_grad(layer, values, tau);
        for (k, (a, n)) in grad.iter().zip(&numeric).enumerate() {
            assert!(
                (a - n).abs() < 1e-6,
                "{:?} element {k}: {a} vs {n}",
                layer.source
            );
        }
    }

    #[test]
    fn weight_gradient_matches_finite_differences() {
        for mode in [Interpolation::Bilinear, Interpolation::Nearest] {
            let layer = LayerTopoLoss::new(24, 5, SheetSource::Weight, 2.0, 3.0, mode).unwrap();
            assert_grad_matches_finite_differences(&layer, &pseudo_random(24 * 5, 11), 2.5);
        }
    }

    #[test]
    fn input_gradient_matches_finite_differences() {
        let layer =
            LayerTopoLoss::new(5, 36, SheetSource::Input, 2.0, 2.0, Interpolation::Bilinear)
                .unwrap();
        assert_eq!(
            layer.sheet(),
            SheetShape {
                height: 6,
                width: 6
            }
        );
        assert_grad_matches_finite_differences(&layer, &pseudo_random(5 * 36, 12), 1.0);
    }

    #[test]
    fn bias_gradient_matches_finite_differences() {
        let layer = LayerTopoLoss::new(30, 8, SheetSource::Bias, 2.0, 2.0, Interpolation::Bilinear)
            .unwrap();
        assert_grad_matches_finite_differences(&layer, &pseudo_random(30, 13), 3.0);
    }

    #[test]
    fn a_smooth_sheet_has_a_lower_loss_than_a_random_one() {
        let layer = LayerTopoLoss::new(
            64,
            4,
            SheetSource::Weight,
            2.0,
            2.0,
            Interpolation::Bilinear,
        )
        .unwrap();
        let random = pseudo_random(64 * 4, 5);
        // Unit vectors rotating slowly across the sheet.
        let smooth: Vec<f64> = (0..64)
            .flat_map(|u| {
                let (row, col) = (u / 8, u % 8);
                let angle = 0.1 * row as f64 + 0.07 * col as f64;
                [angle.cos(), angle.sin(), 0.5, 0.2]
            })
            .collect();
        assert!(layer.loss(&smooth, 1.0).unwrap() < 0.01);
        assert!(layer.loss(&random, 1.0).unwrap() > 0.3);
    }

    #[test]
    fn a_zero_unit_gives_finite_values() {
        let layer = LayerTopoLoss::new(
            16,
            3,
            SheetSource::Weight,
            2.0,
            2.0,
            Interpolation::Bilinear,
        )
        .unwrap();
        let mut values = pseudo_random(16 * 3, 9);
        values[..3].iter_mut().for_each(|v| *v = 0.0);
        let mut grad = vec![0.0; values.len()];
        let loss = layer.loss_and_grad(&values, 1.0, &mut grad).unwrap();
        assert!(loss.is_finite());
        assert!(grad.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn gradients_accumulate_into_the_buffer() {
        let layer = LayerTopoLoss::new(
            16,
            3,
            SheetSource::Weight,
            2.0,
            2.0,
            Interpolation::Bilinear,
        )
        .unwrap();
        let values = pseudo_random(16 * 3, 4);
        let mut once = vec![0.0; values.len()];
        layer.loss_and_grad(&values, 1.0, &mut once).unwrap();
        let mut twice = vec![0.0; values.len()];
        layer.loss_and_grad(&values, 1.0, &mut twice).unwrap();
        layer.loss_and_grad(&values, 1.0, &mut twice).unwrap();
        for (a, b) in once.iter().zip(&twice) {
            assert!((2.0 * a - b).abs() < 1e-15);
        }
    }

    #[test]
    fn wrong_buffer_lengths_are_errors() {
        let layer = LayerTopoLoss::new(
            16,
            3,
            SheetSource::Weight,
            2.0,
            2.0,
            Interpolation::Bilinear,
        )
        .unwrap();
        assert!(layer.loss(&[0.0f64; 10], 1.0).is_err());
        let mut grad = vec![0.0f64; 5];
        assert!(layer.loss_and_grad(&[0.0f64; 48], 1.0, &mut grad).is_err());
    }

    #[test]
    fn a_prime_unit_count_with_a_factor_is_an_error() {
        let error = LayerTopoLoss::new(
            13,
            3,
            SheetSource::Weight,
            2.0,
            2.0,
            Interpolation::Bilinear,
        )
        .unwrap_err();
        assert!(error.to_string().contains("prime"), "{error}");
    }
}
