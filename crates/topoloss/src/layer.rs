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

use crate::blur::{axpy, dot3, with_wide_simd, SheetBlur, PARALLEL_THRESHOLD};
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
            SheetSource::Bias => whole_sheet_loss(&self.blur, values, tau, &mut []),
        })
    }

    /// Loss at `tau`, writing its gradient into `grad` (same layout as
    /// `values`; the previous contents are replaced).
    pub fn loss_and_grad<T: Real>(
        &self,
        values: &[T],
        tau: f64,
        grad: &mut [T],
    ) -> Result<f64, TopoError> {
        self.loss_with_grad(values, tau, grad, GradWrite::Overwrite)
    }

    /// Loss at `tau`, adding its gradient to `grad` (same layout as `values`).
    pub fn loss_and_add_grad<T: Real>(
        &self,
        values: &[T],
        tau: f64,
        grad: &mut [T],
    ) -> Result<f64, TopoError> {
        self.loss_with_grad(values, tau, grad, GradWrite::Accumulate)
    }

    fn loss_with_grad<T: Real>(
        &self,
        values: &[T],
        tau: f64,
        grad: &mut [T],
        write: GradWrite,
    ) -> Result<f64, TopoError> {
        self.check_len(values)?;
        if grad.len() != values.len() {
            return Err(TopoError::LengthMismatch {
                what: "gradient buffer",
                expected: values.len(),
                got: grad.len(),
            });
        }
        if write == GradWrite::Overwrite && self.source != SheetSource::Weight {
            grad.iter_mut().for_each(|g| *g = T::zero());
        }
        Ok(match self.source {
            SheetSource::Weight => {
                sheet_loss(&self.blur, values, self.unit_len, tau, Some((grad, write)))
            }
            SheetSource::Input => {
                let sheet = transpose(values, self.out_units, self.unit_len);
                let mut sheet_grad = vec![T::zero(); sheet.len()];
                let loss = sheet_loss(
                    &self.blur,
                    &sheet,
                    self.out_units,
                    tau,
                    Some((&mut sheet_grad, GradWrite::Overwrite)),
                );
                let back = transpose(&sheet_grad, self.unit_len, self.out_units);
                grad.iter_mut().zip(back).for_each(|(g, b)| *g = *g + b);
                loss
            }
            SheetSource::Bias => whole_sheet_loss(&self.blur, values, tau, grad),
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

fn cosine_terms<T: Real>((wb, ww, bb): (T, T, T)) -> CosineTerms<T> {
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

/// Whether a gradient replaces the buffer's contents or is added to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GradWrite {
    Overwrite,
    Accumulate,
}

/// Scratch vectors of one worker, reused across sheet rows.
struct RowScratch<T> {
    /// The reduced sheet's rows mixed by the up-sampling along the height:
    /// the row of the sheet before up-sampling along the width.
    mixed: Vec<T>,
    /// One blurred unit vector, then its `G_b`.
    blurred: Vec<T>,
    /// `G_b` of the row, mapped by the width up-sampling's adjoint.
    folded_row: Vec<T>,
}

impl<T: Real> RowScratch<T> {
    fn new(reduced_w: usize, e: usize, with_grad: bool) -> Self {
        RowScratch {
            mixed: vec![T::zero(); reduced_w * e],
            blurred: vec![T::zero(); e],
            folded_row: vec![T::zero(); if with_grad { reduced_w * e } else { 0 }],
        }
    }
}

/// `out = sum_j c_j * rows[j]` over the (at most two) up-sampling entries.
#[inline]
fn mix_into<T: Real>(entries: &[(usize, f64)], rows: &[T], e: usize, out: &mut [T]) {
    let coef = |c: f64| T::from(c).unwrap_or_else(T::zero);
    match entries {
        [(j1, c1)] => {
            let (c1, v1) = (coef(*c1), &rows[j1 * e..][..e]);
            out.iter_mut().zip(v1).for_each(|(o, &v)| *o = c1 * v);
        }
        [(j1, c1), (j2, c2)] => {
            let (c1, v1) = (coef(*c1), &rows[j1 * e..][..e]);
            let (c2, v2) = (coef(*c2), &rows[j2 * e..][..e]);
            for ((o, &a), &b) in out.iter_mut().zip(v1).zip(v2) {
                *o = c1 * a + c2 * b;
            }
        }
        _ => {
            out.iter_mut().for_each(|o| *o = T::zero());
            for &(j, c) in entries {
                axpy(coef(c), &rows[j * e..][..e], out);
            }
        }
    }
}

/// The paper's TopoLoss of a sheet `[h, w, e]`, optionally with its gradient.
fn sheet_loss<T: Real>(
    blur: &SheetBlur,
    sheet: &[T],
    e: usize,
    tau: f64,
    grad: Option<(&mut [T], GradWrite)>,
) -> f64 {
    let shape = blur.shape;
    let units = shape.units();
    let reduced = blur.down(sheet, e);
    let (reduced_h, reduced_w) = blur.reduced_shape();
    let reduced_row_len = reduced_w * e;
    let up_h = &blur.along_height.up;
    let up_w = &blur.along_width.up;
    let coef = T::from(-tau / units as f64).unwrap_or_else(T::zero);
    let write = grad.as_ref().map(|(_, write)| *write);

    // One sheet row: the sum of its cosines; with a gradient buffer also G_w
    // written there and G_b folded into `folded` by the up-sampling's adjoint.
    let process_row = |a: usize,
                       grad_row: Option<&mut [T]>,
                       scratch: &mut RowScratch<T>,
                       folded: &mut [T]|
     -> f64 {
        with_wide_simd(
            #[inline(always)]
            || {
                let RowScratch {
                    mixed,
                    blurred,
                    folded_row,
                } = scratch;
                mix_into(&up_h.rows[a], &reduced, reduced_row_len, mixed);
                folded_row.iter_mut().for_each(|x| *x = T::zero());
                let mut cos_sum = 0.0;
                let mut grad_row = grad_row;
                for c in 0..shape.width {
                    let unit = &sheet[(a * shape.width + c) * e..][..e];
                    mix_into(&up_w.rows[c], mixed, e, blurred);
                    let terms = cosine_terms(dot3(unit, blurred));
                    cos_sum += terms.cos;
                    let Some(grad_row) = grad_row.as_deref_mut() else {
                        continue;
                    };
                    let grad_unit = &mut grad_row[c * e..][..e];
                    let (bw, ww) = (coef * terms.grad_w_from_b, coef * terms.grad_w_from_w);
                    let (wb, bb) = (terms.grad_b_from_w, terms.grad_b_from_b);
                    // G_w goes to the gradient; G_b replaces the blurred vector.
                    let units_iter = grad_unit.iter_mut().zip(unit).zip(blurred.iter_mut());
                    if write == Some(GradWrite::Overwrite) {
                        for ((g, &w), b) in units_iter {
                            *g = bw * *b - ww * w;
                            *b = wb * w - bb * *b;
                        }
                    } else {
                        for ((g, &w), b) in units_iter {
                            *g = *g + (bw * *b - ww * w);
                            *b = wb * w - bb * *b;
                        }
                    }
                    for &(j, weight) in &up_w.rows[c] {
                        let weight = T::from(weight).unwrap_or_else(T::zero);
                        axpy(weight, blurred, &mut folded_row[j * e..][..e]);
                    }
                }
                if grad_row.is_some() {
                    for &(i, weight) in &up_h.rows[a] {
                        let weight = T::from(weight).unwrap_or_else(T::zero);
                        axpy(
                            weight,
                            folded_row,
                            &mut folded[i * reduced_row_len..][..reduced_row_len],
                        );
                    }
                }
                cos_sum
            },
        )
    };

    let with_grad = grad.is_some();
    let new_scratch = || RowScratch::new(reduced_w, e, with_grad);
    let row_len = shape.width * e;
    let parallel = sheet.len() >= PARALLEL_THRESHOLD;
    let cos_sum = match grad {
        Some((grad, _)) => {
            let folded_len = reduced_h * reduced_row_len;
            // Each task owns a block of rows and one `folded` buffer; one task
            // per thread keeps those buffers (and their sum) few.
            let tasks = if parallel {
                rayon::current_num_threads().clamp(1, shape.height)
            } else {
                1
            };
            let rows_per_task = shape.height.div_ceil(tasks);
            let run_block = |(block, grad_block): (usize, &mut [T])| {
                let mut folded = vec![T::zero(); folded_len];
                let mut scratch = new_scratch();
                let mut cos_sum = 0.0;
                for (offset, grad_row) in grad_block.chunks_mut(row_len).enumerate() {
                    let a = block * rows_per_task + offset;
                    cos_sum += process_row(a, Some(grad_row), &mut scratch, &mut folded);
                }
                (folded, cos_sum)
            };
            let block_len = rows_per_task * row_len;
            let (folded, cos_sum) = if tasks > 1 {
                grad.par_chunks_mut(block_len)
                    .enumerate()
                    .map(run_block)
                    .reduce_with(add_partials)
                    .unwrap_or_default()
            } else {
                run_block((0, grad))
            };
            // The rest of B^T, the down-sampling's adjoint, spreads the folded
            // G_b back over the sheet.
            blur.add_down_transpose(&folded, e, coef, grad);
            cos_sum
        }
        None if parallel => (0..shape.height)
            .into_par_iter()
            .map_init(new_scratch, |scratch, a| {
                process_row(a, None, scratch, &mut [])
            })
            .sum(),
        None => {
            let mut scratch = new_scratch();
            (0..shape.height)
                .map(|a| process_row(a, None, &mut scratch, &mut []))
                .sum()
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
/// An empty `grad` asks for the loss alone; otherwise the gradient is added to it.
fn whole_sheet_loss<T: Real>(blur: &SheetBlur, values: &[T], tau: f64, grad: &mut [T]) -> f64 {
    let blurred = blur.apply(values, 1);
    let terms = cosine_terms(dot3(values, &blurred));
    if !grad.is_empty() {
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
    use crate::test_util::pseudo_random;

    /// A 4 x 4 sheet of 3-vectors, factor 2.
    fn small_weight_layer() -> LayerTopoLoss {
        LayerTopoLoss::new(
            16,
            3,
            SheetSource::Weight,
            2.0,
            2.0,
            Interpolation::Bilinear,
        )
        .unwrap()
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
        let layer = small_weight_layer();
        let mut values = pseudo_random(16 * 3, 9);
        values[..3].iter_mut().for_each(|v| *v = 0.0);
        let mut grad = vec![0.0; values.len()];
        let loss = layer.loss_and_grad(&values, 1.0, &mut grad).unwrap();
        assert!(loss.is_finite());
        assert!(grad.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn gradients_accumulate_into_the_buffer() {
        let layer = small_weight_layer();
        let values = pseudo_random(16 * 3, 4);
        let mut once = vec![7.0; values.len()];
        layer.loss_and_grad(&values, 1.0, &mut once).unwrap();
        let mut twice = vec![0.0; values.len()];
        layer.loss_and_add_grad(&values, 1.0, &mut twice).unwrap();
        layer.loss_and_add_grad(&values, 1.0, &mut twice).unwrap();
        for (a, b) in once.iter().zip(&twice) {
            assert!((2.0 * a - b).abs() < 1e-15);
        }
    }

    #[test]
    fn wrong_buffer_lengths_are_errors() {
        let layer = small_weight_layer();
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
