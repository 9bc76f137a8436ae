//! Thin, checked wrappers over `matrixmultiply` (blocked GEMM) and `nalgebra`
//! (symmetric eigenproblems), so the analyses never touch raw pointers.

/// A strided read-only view of a matrix stored in a slice.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f64],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f64], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn last_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

/// `c = alpha * a @ b + beta * c`, with `c` a strided `a.rows x b.cols` block
/// starting at `c[0]` with row stride `c_row_stride` (column stride 1).
pub(crate) fn gemm(alpha: f64, a: View, b: View, beta: f64, c: &mut [f64], c_row_stride: usize) {
    assert_eq!(a.cols, b.rows, "gemm inner dimensions");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    // The bounds checks that make the unsafe call below sound.
    assert!(k == 0 || a.last_index() < a.data.len());
    assert!(k == 0 || b.last_index() < b.data.len());
    assert!((m - 1) * c_row_stride + n <= c.len());
    // SAFETY: every element the kernel reads lies inside `a.data` / `b.data`
    // and every element it writes inside `c`, as checked just above; the
    // slices do not alias because `c` is borrowed mutably.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            c_row_stride as isize,
            1,
        );
    }
}

/// Eigenvalues of the symmetric `d x d` row-major matrix, largest first.
pub(crate) fn symmetric_eigenvalues(matrix: &[f64], d: usize) -> Vec<f64> {
    let m = nalgebra::DMatrix::from_row_slice(d, d, matrix);
    let mut values: Vec<f64> = m.symmetric_eigenvalues().iter().copied().collect();
    values.sort_by(|a, b| b.total_cmp(a));
    values
}

/// Eigenvalues (largest first) and the matching unit eigenvectors, each as a
/// `d`-vector, of a small symmetric matrix.
pub(crate) fn symmetric_eigen(matrix: &[f64], d: usize) -> Vec<(f64, Vec<f64>)> {
    let m = nalgebra::DMatrix::from_row_slice(d, d, matrix);
    let eig = m.symmetric_eigen();
    let mut pairs: Vec<(f64, Vec<f64>)> = (0..d)
        .map(|i| {
            (
                eig.eigenvalues[i],
                eig.eigenvectors.column(i).iter().copied().collect(),
            )
        })
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    pairs
}

/// Orthonormalises the columns of the row-major `rows x cols` matrix in place
/// (modified Gram-Schmidt, twice for stability). Returns how many columns are
/// independent; the dependent ones are set to zero.
pub(crate) fn orthonormalize_columns(m: &mut [f64], rows: usize, cols: usize) -> usize {
    let mut rank = 0;
    for j in 0..cols {
        for _pass in 0..2 {
            for p in 0..j {
                let dot: f64 = (0..rows).map(|r| m[r * cols + p] * m[r * cols + j]).sum();
                for r in 0..rows {
                    m[r * cols + j] -= dot * m[r * cols + p];
                }
            }
        }
        let norm = (0..rows)
            .map(|r| m[r * cols + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if norm > 1e-12 {
            for r in 0..rows {
                m[r * cols + j] /= norm;
            }
            rank += 1;
        } else {
            for r in 0..rows {
                m[r * cols + j] = 0.0;
            }
        }
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_with_a_transposed_view_matches_the_naive_product() {
        // a is stored 3 x 2; we multiply a^T (2 x 3) by b (3 x 2).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [1.0; 4];
        gemm(
            1.0,
            View::row_major(&a, 3, 2).t(),
            View::row_major(&b, 3, 2),
            1.0,
            &mut c,
            2,
        );
        // a^T b = [[1+5, 3+5], [2+6, 4+6]] plus the 1s already in c.
        assert_eq!(c, [7.0, 9.0, 9.0, 11.0]);
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1.
        let values = symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((values[0] - 3.0).abs() < 1e-12 && (values[1] - 1.0).abs() < 1e-12);
        let pairs = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        let v = &pairs[0].1;
        assert!((v[0].abs() - 0.5f64.sqrt()).abs() < 1e-12 && (v[0] - v[1]).abs() < 1e-12);
    }

    #[test]
    fn orthonormalization_drops_dependent_columns() {
        // Columns (1, 0, 0), (2, 0, 0), (1, 1, 0).
        let mut m = [1.0, 2.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(orthonormalize_columns(&mut m, 3, 3), 2);
        assert_eq!(m, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }
}
