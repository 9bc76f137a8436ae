//! Matrix products over strided views of slices, for f32 and f64, on the
//! `gemm` crate (the matrix kernel of Burn's CPU backend) and rayon's
//! threads, with the bounds checks that make its raw-pointer call sound.
//! The CPU convolutions (conv-kernels, f32) and the analyses (f64) share it,
//! so no other crate touches a pointer for a matrix product.

/// A read-only `rows x cols` matrix inside a slice: element `(r, c)` is
/// `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// The row-major `rows x cols` matrix at the start of `data`.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix larger than its slice");
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// The element types `gemm` multiplies natively (it dispatches on the type
/// at run time and panics on others, so the set is closed here).
pub trait Element:
    Copy + PartialEq + std::ops::Mul<Output = Self> + std::fmt::Debug + 'static + sealed::Sealed
{
    const ZERO: Self;
    const ONE: Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `dst = alpha * lhs @ rhs + beta * dst`, where `dst` is the row-major
/// `lhs.rows x rhs.cols` block at the start of `dst` with rows
/// `dst_row_stride` apart. With `beta` 0 the old `dst` is not read (it may
/// hold anything). Large products run on rayon's threads.
pub fn gemm<T: Element>(
    alpha: T,
    lhs: MatRef<T>,
    rhs: MatRef<T>,
    beta: T,
    dst: &mut [T],
    dst_row_stride: usize,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner sizes differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_row_stride >= n && (m - 1) * dst_row_stride + n <= dst.len(),
        "gemm: destination block outside its slice or rows overlapping"
    );
    assert!(lhs.fits() && rhs.fits(), "gemm: operand outside its slice");
    if k == 0 {
        for row in dst.chunks_mut(dst_row_stride).take(m) {
            for value in &mut row[..n] {
                *value = if beta == T::ZERO {
                    T::ZERO
                } else {
                    beta * *value
                };
            }
        }
        return;
    }
    // SAFETY: every element gemm reads (row * row_stride + col * col_stride
    // within each operand's rows and cols) or writes (row * dst_row_stride
    // + col, col < n) lies inside the slices, as checked above; the written
    // rows do not overlap (dst_row_stride >= n), and dst does not alias the
    // operands (it is borrowed mutably). T is f32 or f64, which gemm
    // multiplies.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            beta != T::ZERO,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `alpha * lhs @ rhs + beta * dst` one element at a time.
    fn naive(
        alpha: f64,
        lhs: MatRef<f64>,
        rhs: MatRef<f64>,
        beta: f64,
        dst: &mut [f64],
        stride: usize,
    ) {
        for r in 0..lhs.rows {
            for c in 0..rhs.cols {
                let dot: f64 = (0..lhs.cols)
                    .map(|i| {
                        lhs.data[r * lhs.row_stride + i * lhs.col_stride]
                            * rhs.data[i * rhs.row_stride + c * rhs.col_stride]
                    })
                    .sum();
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta * dst[r * stride + c]
                };
                dst[r * stride + c] = alpha * dot + old;
            }
        }
    }

    fn values(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 7 + seed * 13) % 17) as f64 / 4.0 - 2.0)
            .collect()
    }

    #[test]
    fn products_match_the_naive_one_for_views_strides_and_both_types() {
        // Sizes past gemm's small-matrix path and its threading threshold.
        for (m, k, n) in [(3, 2, 4), (1, 5, 1), (70, 300, 90)] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let stride = n + 3;
            let start = values(m * stride, 3);
            for (transpose, alpha, beta) in
                [(false, 1.0, 0.0), (true, 0.5, 1.0), (false, 2.0, -1.5)]
            {
                let mut expected = start.clone();
                naive(
                    alpha,
                    lhs(&a, m, k, transpose),
                    MatRef::row_major(&b, k, n),
                    beta,
                    &mut expected,
                    stride,
                );
                let mut got = start.clone();
                gemm(
                    alpha,
                    lhs(&a, m, k, transpose),
                    MatRef::row_major(&b, k, n),
                    beta,
                    &mut got,
                    stride,
                );
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (g - e).abs() <= 1e-9 * (1.0 + e.abs()),
                        "{m}x{k}x{n}: {g} vs {e}"
                    );
                }
                let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
                let (a, b) = (to_f32(&a), to_f32(&b));
                let mut got = to_f32(&start);
                gemm(
                    alpha as f32,
                    lhs(&a, m, k, transpose),
                    MatRef::row_major(&b, k, n),
                    beta as f32,
                    &mut got,
                    stride,
                );
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "f32 {m}x{k}x{n}: {g} vs {e}"
                    );
                }
            }
        }
    }

    /// The `m x k` left operand: `data` row-major, or stored `k x m` and
    /// viewed transposed.
    fn lhs<T>(data: &[T], m: usize, k: usize, transpose: bool) -> MatRef<'_, T> {
        if transpose {
            MatRef::row_major(data, k, m).t()
        } else {
            MatRef::row_major(data, m, k)
        }
    }

    #[test]
    fn beta_zero_ignores_the_old_destination_and_empty_inner_sizes_scale_it() {
        let a = [1.0, 2.0];
        let b = [3.0, 4.0];
        let mut dst = [f64::NAN];
        gemm(
            1.0,
            MatRef::row_major(&a, 1, 2),
            MatRef::row_major(&b, 2, 1),
            0.0,
            &mut dst,
            1,
        );
        assert_eq!(dst, [11.0]);
        // A 2 x 0 times 0 x 2 product into rows 3 apart (dst[2] is outside).
        let empty_product = |beta: f64, dst: &mut [f64]| {
            let (lhs, rhs) = (MatRef::row_major(&[], 2, 0), MatRef::row_major(&[], 0, 2));
            gemm(1.0, lhs, rhs, beta, dst, 3);
        };
        let mut dst = [1.0, 2.0, f64::NAN, 3.0, 4.0];
        empty_product(2.0, &mut dst);
        assert!(dst[..2] == [2.0, 4.0] && dst[2].is_nan() && dst[3..] == [6.0, 8.0]);
        empty_product(0.0, &mut dst);
        assert!(dst[..2] == [0.0, 0.0] && dst[2].is_nan() && dst[3..] == [0.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "operand outside its slice")]
    fn an_operand_past_its_slice_is_refused() {
        let a = [1.0f32; 4];
        let wide = MatRef {
            row_stride: 3,
            ..MatRef::row_major(&a, 2, 2)
        };
        gemm(
            1.0,
            wide,
            MatRef::row_major(&a, 2, 2),
            0.0,
            &mut [0.0; 4],
            2,
        );
    }

    #[test]
    #[should_panic(expected = "rows overlapping")]
    fn overlapping_destination_rows_are_refused() {
        let a = [1.0f32; 4];
        gemm(
            1.0,
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&a, 2, 2),
            0.0,
            &mut [0.0; 4],
            1,
        );
    }
}
