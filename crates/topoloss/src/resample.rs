//! PyTorch's `F.interpolate` along one axis, written as a sparse matrix.
//!
//! The blur of the reference is `interpolate(interpolate(x, scale_factor=1/f), size=n)`.
//! Along each sheet axis that is a fixed linear map `U @ D`, where `D` (m x n)
//! down-samples and `U` (n x m) up-samples. Each row of `D` and `U` has at most
//! two non-zeros, so applying them costs a few operations per weight.

use crate::TopoError;

/// Interpolation mode of the blur, as in `F.interpolate(mode=...)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    #[default]
    Bilinear,
    Nearest,
}

impl std::str::FromStr for Interpolation {
    type Err = TopoError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "bilinear" | "linear" => Ok(Interpolation::Bilinear),
            "nearest" => Ok(Interpolation::Nearest),
            other => Err(TopoError::UnknownInterpolation(other.to_string())),
        }
    }
}

/// A matrix with at most two non-zeros per row, stored row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows {
    /// Number of columns.
    pub cols: usize,
    /// For each row, its (column, value) entries; zero entries are dropped.
    pub rows: Vec<Vec<(usize, f64)>>,
}

impl SparseRows {
    fn new(rows: usize, cols: usize) -> Self {
        SparseRows {
            cols,
            rows: vec![Vec::with_capacity(2); rows],
        }
    }

    fn add(&mut self, row: usize, col: usize, value: f64) {
        if value == 0.0 {
            return;
        }
        match self.rows[row].iter_mut().find(|(c, _)| *c == col) {
            Some(entry) => entry.1 += value,
            None => self.rows[row].push((col, value)),
        }
    }

    /// The transposed matrix, in the same row-wise form.
    pub fn transpose(&self) -> SparseRows {
        let mut out = SparseRows::new(self.cols, self.rows.len());
        for (row, entries) in self.rows.iter().enumerate() {
            for &(col, value) in entries {
                out.add(col, row, value);
            }
        }
        out
    }

    /// Dense row-major copy (rows x cols).
    pub fn to_dense(&self) -> Vec<f64> {
        let mut dense = vec![0.0; self.rows.len() * self.cols];
        for (row, entries) in self.rows.iter().enumerate() {
            for &(col, value) in entries {
                dense[row * self.cols + col] += value;
            }
        }
        dense
    }
}

/// Resampling matrix from `n_in` to `n_out` samples, with PyTorch's
/// `align_corners=False` arithmetic. `scale_factor` is what the caller passed to
/// `F.interpolate` (None when it passed `size`): PyTorch then maps coordinates
/// with `1/scale_factor`, not with the size ratio.
fn resample_matrix(
    n_in: usize,
    n_out: usize,
    scale_factor: Option<f64>,
    mode: Interpolation,
) -> SparseRows {
    let mut matrix = SparseRows::new(n_out, n_in);
    match mode {
        Interpolation::Bilinear => {
            // area_pixel_compute_scale, in double as for float64 tensors.
            let scale = match scale_factor {
                Some(factor) if factor > 0.0 => 1.0 / factor,
                _ => n_in as f64 / n_out as f64,
            };
            for out_index in 0..n_out {
                let source = (scale * (out_index as f64 + 0.5) - 0.5).max(0.0);
                let i0 = (source.floor() as usize).min(n_in - 1);
                let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
                let lambda1 = (source - i0 as f64).clamp(0.0, 1.0);
                matrix.add(out_index, i0, 1.0 - lambda1);
                matrix.add(out_index, i1, lambda1);
            }
        }
        Interpolation::Nearest => {
            // PyTorch's legacy `nearest` computes its index in float32 (floorf),
            // with shortcuts for equal and doubled sizes.
            let scale = match scale_factor {
                Some(factor) if factor > 0.0 => (1.0 / factor) as f32,
                _ => n_in as f32 / n_out as f32,
            };
            for out_index in 0..n_out {
                let source = if n_out == n_in {
                    out_index
                } else if n_out == 2 * n_in {
                    out_index >> 1
                } else {
                    ((out_index as f32 * scale).floor() as usize).min(n_in - 1)
                };
                matrix.add(out_index, source, 1.0);
            }
        }
    }
    matrix
}

/// The blur along one sheet axis: down-sample by `factor`, then back up.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisBlur {
    /// Length of the axis.
    pub len: usize,
    /// Length after down-sampling, `floor(len * (1/factor))`.
    pub reduced_len: usize,
    /// Down-sampling matrix (reduced_len x len).
    pub down: SparseRows,
    /// Up-sampling matrix (len x reduced_len).
    pub up: SparseRows,
    /// `down` transposed (len x reduced_len), for the gradient.
    pub down_t: SparseRows,
    /// `up` transposed (reduced_len x len), for the gradient.
    pub up_t: SparseRows,
}

impl AxisBlur {
    /// Blur of an axis of `len` samples by `factor`. `axis` names the axis in errors.
    pub fn new(
        len: usize,
        factor: f64,
        mode: Interpolation,
        axis: &'static str,
    ) -> Result<Self, TopoError> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(TopoError::InvalidFactor { axis, factor });
        }
        // The reference passes scale_factor = 1/factor; PyTorch sizes the output
        // as floor(len * scale_factor) in double precision.
        let scale_factor = 1.0 / factor;
        let reduced_len = (len as f64 * scale_factor).floor() as usize;
        if reduced_len == 0 {
            return Err(TopoError::FactorLargerThanSheet { axis, factor, len });
        }
        let down = resample_matrix(len, reduced_len, Some(scale_factor), mode);
        let up = resample_matrix(reduced_len, len, None, mode);
        Ok(AxisBlur {
            len,
            reduced_len,
            down_t: down.transpose(),
            up_t: up.transpose(),
            down,
            up,
        })
    }

    /// The dense blur matrix `up @ down` (len x len), row-major.
    pub fn dense(&self) -> Vec<f64> {
        let down = self.down.to_dense();
        let mut dense = vec![0.0; self.len * self.len];
        for (row, entries) in self.up.rows.iter().enumerate() {
            for &(mid, weight) in entries {
                for col in 0..self.len {
                    dense[row * self.len + col] += weight * down[mid * self.len + col];
                }
            }
        }
        dense
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_sampling_uses_the_given_factor_not_the_size_ratio() {
        // The worked example of the design note: n = 10, f = 3 gives m = 3 and
        // samples source coordinates 1.0, 4.0 and 7.0.
        let blur = AxisBlur::new(10, 3.0, Interpolation::Bilinear, "height").unwrap();
        assert_eq!(blur.reduced_len, 3);
        let sampled = blur.down.rows.clone();
        assert_eq!(
            sampled,
            vec![vec![(1, 1.0)], vec![(4, 1.0)], vec![(7, 1.0)]]
        );
    }

    #[test]
    fn rows_of_a_blur_sum_to_one() {
        for (len, factor) in [(8, 2.0), (16, 3.0), (25, 8.0), (12, 2.5), (10, 1.5)] {
            for mode in [Interpolation::Bilinear, Interpolation::Nearest] {
                let blur = AxisBlur::new(len, factor, mode, "width").unwrap();
                let dense = blur.dense();
                for row in 0..len {
                    let sum: f64 = dense[row * len..(row + 1) * len].iter().sum();
                    assert!(
                        (sum - 1.0).abs() < 1e-12,
                        "{len} {factor} {mode:?} row {row}"
                    );
                }
            }
        }
    }

    #[test]
    fn factor_one_is_the_identity() {
        let blur = AxisBlur::new(6, 1.0, Interpolation::Bilinear, "height").unwrap();
        let dense = blur.dense();
        for row in 0..6 {
            for col in 0..6 {
                assert_eq!(dense[row * 6 + col], if row == col { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn a_factor_larger_than_the_axis_is_an_error() {
        let error = AxisBlur::new(4, 5.0, Interpolation::Bilinear, "height").unwrap_err();
        assert!(error.to_string().contains("larger than"), "{error}");
        assert!(AxisBlur::new(4, 0.5, Interpolation::Bilinear, "height").is_err());
        assert!(AxisBlur::new(4, f64::NAN, Interpolation::Bilinear, "height").is_err());
    }

    #[test]
    fn transposes_are_consistent() {
        let blur = AxisBlur::new(13, 2.7, Interpolation::Bilinear, "width").unwrap();
        let down = blur.down.to_dense();
        let down_t = blur.down_t.to_dense();
        for i in 0..blur.reduced_len {
            for j in 0..blur.len {
                assert_eq!(down[i * blur.len + j], down_t[j * blur.reduced_len + i]);
            }
        }
    }
}
