//! The blur of a cortical sheet, `B = (Uh Dh) ⊗ (Uw Dw)`, applied to every
//! component of the units' vectors alike.
//!
//! A sheet is stored as `[height, width, e]` row-major: the vector of unit
//! `(row, col)` is the contiguous slice `[(row * width + col) * e ..][.. e]`,
//! which is exactly the memory of a PyTorch weight `[out, in, kh, kw]`.

use rayon::prelude::*;

use crate::resample::{AxisBlur, Interpolation, SparseRows};
use crate::{Real, SheetShape, TopoError};

/// Below this many values a pass runs on the calling thread: spawning rayon
/// tasks costs more than the work.
pub(crate) const PARALLEL_THRESHOLD: usize = 1 << 15;

/// The blur of one sheet shape with one factor per axis.
#[derive(Debug, Clone, PartialEq)]
pub struct SheetBlur {
    pub shape: SheetShape,
    pub along_height: AxisBlur,
    pub along_width: AxisBlur,
}

impl SheetBlur {
    pub fn new(
        shape: SheetShape,
        factor_h: f64,
        factor_w: f64,
        mode: Interpolation,
    ) -> Result<Self, TopoError> {
        Ok(SheetBlur {
            shape,
            along_height: AxisBlur::new(shape.height, factor_h, mode, "height")?,
            along_width: AxisBlur::new(shape.width, factor_w, mode, "width")?,
        })
    }

    /// Height and width of the down-sampled sheet.
    pub fn reduced_shape(&self) -> (usize, usize) {
        (self.along_height.reduced_len, self.along_width.reduced_len)
    }

    /// `B(sheet)`: the blurred sheet, same layout as the input.
    pub fn apply<T: Real>(&self, sheet: &[T], e: usize) -> Vec<T> {
        let reduced = self.down(sheet, e);
        let mut out = vec![T::zero(); sheet.len()];
        separable_into(
            &self.along_height.up,
            &self.along_width.up,
            &reduced,
            self.along_width.reduced_len,
            e,
            T::one(),
            &mut out,
            self.shape.width,
        );
        out
    }

    /// `B^T(sheet)`: the adjoint of the blur, used by the gradient.
    pub fn apply_transpose<T: Real>(&self, sheet: &[T], e: usize) -> Vec<T> {
        let (reduced_h, reduced_w) = self.reduced_shape();
        let mut reduced = vec![T::zero(); reduced_h * reduced_w * e];
        separable_into(
            &self.along_height.up_t,
            &self.along_width.up_t,
            sheet,
            self.shape.width,
            e,
            T::one(),
            &mut reduced,
            reduced_w,
        );
        let mut out = vec![T::zero(); sheet.len()];
        self.add_down_transpose(&reduced, e, T::one(), &mut out);
        out
    }

    /// `Dh W Dw^T`: the down-sampled sheet, `[reduced_h, reduced_w, e]`.
    pub(crate) fn down<T: Real>(&self, sheet: &[T], e: usize) -> Vec<T> {
        let (reduced_h, reduced_w) = self.reduced_shape();
        let mut reduced = vec![T::zero(); reduced_h * reduced_w * e];
        separable_into(
            &self.along_height.down,
            &self.along_width.down,
            sheet,
            self.shape.width,
            e,
            T::one(),
            &mut reduced,
            reduced_w,
        );
        reduced
    }

    /// `out += coef * (Dh^T ⊗ Dw^T) reduced`.
    pub(crate) fn add_down_transpose<T: Real>(
        &self,
        reduced: &[T],
        e: usize,
        coef: T,
        out: &mut [T],
    ) {
        separable_into(
            &self.along_height.down_t,
            &self.along_width.down_t,
            reduced,
            self.along_width.reduced_len,
            e,
            coef,
            out,
            self.shape.width,
        );
    }
}

/// `out[i, j, :] += coef * sum_b sum_d rows_h[i, b] * rows_w[j, d] * input[b, d, :]`.
///
/// Both matrices have at most two non-zeros per row, so each output vector
/// is a sum of at most four scaled input vectors.
#[allow(clippy::too_many_arguments)]
fn separable_into<T: Real>(
    rows_h: &SparseRows,
    rows_w: &SparseRows,
    input: &[T],
    input_width: usize,
    e: usize,
    coef: T,
    out: &mut [T],
    out_width: usize,
) {
    let out_row_len = out_width * e;
    let fill_row = |(i, out_row): (usize, &mut [T])| {
        with_wide_simd(
            #[inline(always)]
            || {
                for (j, out_unit) in out_row.chunks_exact_mut(e).enumerate() {
                    for &(b, weight_h) in &rows_h.rows[i] {
                        for &(d, weight_w) in &rows_w.rows[j] {
                            let scale = coef * T::from(weight_h * weight_w).unwrap_or_else(T::zero);
                            let start = (b * input_width + d) * e;
                            axpy(scale, &input[start..start + e], out_unit);
                        }
                    }
                }
            },
        )
    };
    if out.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(out_row_len)
            .enumerate()
            .for_each(fill_row);
    } else {
        out.chunks_mut(out_row_len).enumerate().for_each(fill_row);
    }
}

/// Runs `body` inside a function compiled for AVX2 when the CPU has it, so
/// that the loops inlined into it use 256-bit vectors in a portable build
/// (the default x86-64 target stops at SSE2). Only lane width changes: Rust
/// never fuses `a * b + c` on its own, so results are the same bit for bit.
#[inline(always)]
pub(crate) fn with_wide_simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was just found to support AVX2.
            return unsafe { avx2(body) };
        }
    }
    body()
}

/// `y += a * x`.
#[inline]
pub(crate) fn axpy<T: Real>(a: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + a * x;
    }
}

/// `(<x, y>, <x, x>, <y, y>)`. Three separate reductions, each over eight
/// partial sums: the form the compiler turns into packed SIMD.
#[inline]
pub(crate) fn dot3<T: Real>(x: &[T], y: &[T]) -> (T, T, T) {
    (dot(x, y), dot(x, x), dot(y, y))
}

/// `<x, y>` with eight partial sums.
#[inline]
pub(crate) fn dot<T: Real>(x: &[T], y: &[T]) -> T {
    const LANES: usize = 8;
    let mut partial = [T::zero(); LANES];
    let x_chunks = x.chunks_exact(LANES);
    let y_chunks = y.chunks_exact(LANES);
    let tail = x_chunks
        .remainder()
        .iter()
        .zip(y_chunks.remainder())
        .fold(T::zero(), |sum, (&a, &b)| sum + a * b);
    for (xc, yc) in x_chunks.zip(y_chunks) {
        for lane in 0..LANES {
            partial[lane] = partial[lane] + xc[lane] * yc[lane];
        }
    }
    partial.iter().fold(tail, |sum, &p| sum + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

    fn dense_blur(blur: &SheetBlur, sheet: &[f64], e: usize) -> Vec<f64> {
        let (h, w) = (blur.shape.height, blur.shape.width);
        let bh = blur.along_height.dense();
        let bw = blur.along_width.dense();
        let mut out = vec![0.0; sheet.len()];
        for a in 0..h {
            for c in 0..w {
                for b in 0..h {
                    for d in 0..w {
                        let weight = bh[a * h + b] * bw[c * w + d];
                        for k in 0..e {
                            out[(a * w + c) * e + k] += weight * sheet[(b * w + d) * e + k];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn sparse_blur_equals_the_dense_matrices() {
        let shape = SheetShape::for_units(120).unwrap();
        for mode in [Interpolation::Bilinear, Interpolation::Nearest] {
            let blur = SheetBlur::new(shape, 2.5, 3.0, mode).unwrap();
            let sheet = pseudo_random(120 * 5, 7);
            let sparse = blur.apply(&sheet, 5);
            let dense = dense_blur(&blur, &sheet, 5);
            for (s, d) in sparse.iter().zip(&dense) {
                assert!((s - d).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn transpose_is_the_adjoint() {
        // <B x, y> == <x, B^T y> for random x, y.
        let shape = SheetShape::for_units(16 * 32).unwrap();
        let blur = SheetBlur::new(shape, 3.0, 3.0, Interpolation::Bilinear).unwrap();
        let e = 3;
        let x = pseudo_random(shape.units() * e, 1);
        let y = pseudo_random(shape.units() * e, 2);
        let bx = blur.apply(&x, e);
        let bty = blur.apply_transpose(&y, e);
        let left: f64 = bx.iter().zip(&y).map(|(a, b)| a * b).sum();
        let right: f64 = x.iter().zip(&bty).map(|(a, b)| a * b).sum();
        assert!((left - right).abs() < 1e-10, "{left} vs {right}");
    }

    #[test]
    fn dot3_matches_a_plain_loop() {
        let x = pseudo_random(37, 3);
        let y = pseudo_random(37, 4);
        let (xy, xx, yy) = dot3(&x, &y);
        let plain: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((xy - plain).abs() < 1e-14);
        assert!((xx - x.iter().map(|a| a * a).sum::<f64>()).abs() < 1e-14);
        assert!((yy - y.iter().map(|a| a * a).sum::<f64>()).abs() < 1e-14);
    }
}
