//! The analyses' linear algebra: matrix products from crate
//! matrix-product (re-exported), symmetric eigenproblems from `nalgebra`,
//! and Gram-Schmidt.

pub(crate) use matrix_product::gemm;

/// A strided view of an f64 matrix (the analyses work in f64).
pub(crate) type View<'a> = matrix_product::MatRef<'a, f64>;

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
