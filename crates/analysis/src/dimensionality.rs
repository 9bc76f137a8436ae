//! Effective dimensionality of a layer's responses over a set of images.
//!
//! # Definition
//!
//! Each image gives the layer a response vector of `d` features. For a conv
//! layer the features are its channels, each averaged over all spatial
//! positions ([`channel_means`]): the sheet's units are channels, and the
//! question is how many independent directions the population of units spans
//! across images. Per-position features would make `d = C x H x W` (802,816
//! for ResNet-18's first block), beyond any covariance. For a linear layer the
//! features are its outputs.
//!
//! The effective dimensionality is the participation ratio of the eigenvalues
//! `lambda_i` of the features' covariance across images:
//! `ED = (sum lambda_i)^2 / sum lambda_i^2`. It is 1 when one direction holds
//! all the variance and `d` when the variance is spread evenly.
//!
//! # Streaming
//!
//! [`StreamingCovariance`] keeps, in f64, the sum of the (shifted) feature
//! vectors and the sum of their outer products: `O(d^2)` memory whatever the
//! number of images. The outer products of a batch are one blocked
//! symmetric rank-k update (GEMM of the batch with itself, upper triangle
//! only, row blocks in parallel). Features are shifted by the first batch's
//! mean before accumulating, so the final `E[xx^T] - E[x]E[x]^T` does not
//! cancel catastrophically when means are large compared to spreads (ReLU
//! outputs).

use rayon::prelude::*;

use crate::linalg::{gemm, symmetric_eigenvalues, View};
use crate::{check_len, AnalysisError, Result};

/// Rows of the covariance updated per parallel task. Small enough that the
/// triangular work (early rows have more columns) balances across threads.
const ROW_BLOCK: usize = 32;

/// Running sums of a stream of `d`-dimensional feature vectors.
#[derive(Debug, Clone)]
pub struct StreamingCovariance {
    d: usize,
    count: u64,
    /// Subtracted from every vector before accumulating (first batch's mean).
    shift: Option<Vec<f64>>,
    /// Sum of the shifted vectors.
    sum: Vec<f64>,
    /// Sum of the shifted outer products, upper triangle (row-major d x d).
    cross: Vec<f64>,
    /// Scratch: the current batch, shifted, in f64.
    batch: Vec<f64>,
}

/// Effective dimensionality of one layer, with the spectrum it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dimensionality {
    /// Participation ratio `(sum lambda)^2 / sum lambda^2`.
    pub effective_dimensionality: f64,
    /// Eigenvalues of the covariance, largest first, negatives (rounding)
    /// clipped to zero.
    pub eigenvalues: Vec<f64>,
    /// Number of images (feature vectors) it was computed over.
    pub samples: u64,
    /// Number of features.
    pub features: usize,
}

impl StreamingCovariance {
    /// An empty accumulator for `d` features.
    pub fn new(d: usize) -> Result<Self> {
        if d == 0 {
            return Err(AnalysisError::TooFew {
                what: "features per response",
                needed: 1,
                got: 0,
            });
        }
        let len = d.checked_mul(d).ok_or(AnalysisError::TooLarge {
            what: "the response covariance",
        })?;
        Ok(StreamingCovariance {
            d,
            count: 0,
            shift: None,
            sum: vec![0.0; d],
            cross: vec![0.0; len],
            batch: Vec::new(),
        })
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.d
    }

    /// Number of vectors accumulated so far.
    pub fn samples(&self) -> u64 {
        self.count
    }

    /// Adds a batch of `n` feature vectors, `[n, d]` row-major.
    pub fn update(&mut self, responses: &[f32], n: usize) -> Result<()> {
        let d = self.d;
        check_len("responses", responses.len(), n, d)?;
        if n == 0 {
            return Ok(());
        }
        if responses.iter().any(|v| !v.is_finite()) {
            return Err(AnalysisError::NonFinite { what: "responses" });
        }
        let shift = self.shift.get_or_insert_with(|| {
            let mut mean = vec![0.0; d];
            for row in responses.chunks_exact(d) {
                mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
            }
            mean.iter_mut().for_each(|m| *m /= n as f64);
            mean
        });
        self.batch.clear();
        self.batch.reserve(n * d);
        for row in responses.chunks_exact(d) {
            self.batch
                .extend(row.iter().zip(shift.iter()).map(|(&v, s)| v as f64 - s));
        }
        for row in self.batch.chunks_exact(d) {
            self.sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        // Upper triangle, row block [i0, i1): cross[i0..i1, i0..d] += X[:, i0..i1]^T X[:, i0..d].
        let batch = &self.batch;
        self.cross
            .par_chunks_mut(ROW_BLOCK * d)
            .enumerate()
            .for_each(|(block, rows)| {
                let i0 = block * ROW_BLOCK;
                let height = rows.len() / d;
                let left = View {
                    data: &batch[i0..],
                    rows: height,
                    cols: n,
                    row_stride: 1,
                    col_stride: d,
                };
                let right = View {
                    data: &batch[i0..],
                    rows: n,
                    cols: d - i0,
                    row_stride: d,
                    col_stride: 1,
                };
                gemm(1.0, left, right, 1.0, &mut rows[i0..], d);
            });
        self.count += n as u64;
        Ok(())
    }

    /// The unbiased (n - 1) covariance, full `d x d` row-major.
    pub fn covariance(&self) -> Result<Vec<f64>> {
        if self.count < 2 {
            return Err(AnalysisError::TooFew {
                what: "a covariance (images)",
                needed: 2,
                got: self.count as usize,
            });
        }
        let (d, n) = (self.d, self.count as f64);
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                let value = (self.cross[i * d + j] - self.sum[i] * self.sum[j] / n) / (n - 1.0);
                cov[i * d + j] = value;
                cov[j * d + i] = value;
            }
        }
        Ok(cov)
    }

    /// Eigenvalues of the covariance and their participation ratio.
    pub fn dimensionality(&self) -> Result<Dimensionality> {
        let cov = self.covariance()?;
        let eigenvalues: Vec<f64> = symmetric_eigenvalues(&cov, self.d)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        Ok(Dimensionality {
            effective_dimensionality: participation_ratio(&eigenvalues),
            eigenvalues,
            samples: self.count,
            features: self.d,
        })
    }
}

/// `(sum lambda)^2 / sum lambda^2`; 0 for an all-zero spectrum (constant
/// responses span no dimension).
pub fn participation_ratio(eigenvalues: &[f64]) -> f64 {
    let sum: f64 = eigenvalues.iter().sum();
    let squares: f64 = eigenvalues.iter().map(|v| v * v).sum();
    if squares > 0.0 {
        sum * sum / squares
    } else {
        0.0
    }
}

/// Per-image channel features of a conv layer's activations `[n, c, hw]`:
/// each channel averaged over its `hw` spatial positions, giving `[n, c]`.
pub fn channel_means(
    activations: &[f32],
    n: usize,
    channels: usize,
    positions: usize,
) -> Result<Vec<f32>> {
    let per_image = channels
        .checked_mul(positions)
        .ok_or(AnalysisError::TooLarge {
            what: "activations",
        })?;
    check_len("activations", activations.len(), n, per_image)?;
    if positions == 0 {
        return Err(AnalysisError::TooFew {
            what: "spatial positions per channel",
            needed: 1,
            got: 0,
        });
    }
    Ok(activations
        .chunks_exact(positions)
        .map(|plane| (plane.iter().map(|&v| v as f64).sum::<f64>() / positions as f64) as f32)
        .collect())
}

/// Mean effective dimensionality over layers (0 for none).
pub fn mean_dimensionality(layers: &[Dimensionality]) -> f64 {
    if layers.is_empty() {
        return 0.0;
    }
    layers
        .iter()
        .map(|l| l.effective_dimensionality)
        .sum::<f64>()
        / layers.len() as f64
}

/// Cost of the covariance update, for BENCHMARKS.md.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CovarianceTiming {
    pub features: usize,
    pub batch: usize,
    pub images: usize,
    /// Wall time of all updates, seconds.
    pub update_seconds: f64,
    /// Update time per image, microseconds.
    pub update_us_per_image: f64,
    /// Wall time of the final eigendecomposition, seconds.
    pub eigen_seconds: f64,
}

/// Times `images` synthetic feature vectors of `d` features streamed through
/// [`StreamingCovariance`] in batches of `batch`, then its eigenvalues.
pub fn time_covariance(d: usize, batch: usize, images: usize) -> Result<CovarianceTiming> {
    let batch = batch.max(1);
    // Cheap deterministic data; its values do not change the cost.
    let data: Vec<f32> = (0..batch * d)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / 16_777_216.0)
        .collect();
    let mut acc = StreamingCovariance::new(d)?;
    let start = std::time::Instant::now();
    let mut done = 0;
    while done < images {
        let n = batch.min(images - done);
        acc.update(&data[..n * d], n)?;
        done += n;
    }
    let update_seconds = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    acc.dimensionality()?;
    Ok(CovarianceTiming {
        features: d,
        batch,
        images,
        update_seconds,
        update_us_per_image: update_seconds * 1e6 / images.max(1) as f64,
        eigen_seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::orthonormalize_columns;
    use crate::testutil::Rng;

    /// `n` samples whose covariance has the given eigenvalues, in a random
    /// orthonormal basis, around a large mean.
    fn samples_with_spectrum(spectrum: &[f64], n: usize, mean: f64, seed: u64) -> Vec<f32> {
        let d = spectrum.len();
        let mut rng = Rng::new(seed);
        let mut basis: Vec<f64> = (0..d * d).map(|_| rng.normal()).collect();
        assert_eq!(orthonormalize_columns(&mut basis, d, d), d);
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let z: Vec<f64> = spectrum.iter().map(|l| l.sqrt() * rng.normal()).collect();
            for row in 0..d {
                let v: f64 = (0..d).map(|k| basis[row * d + k] * z[k]).sum();
                out.push((mean + v) as f32);
            }
        }
        out
    }

    #[test]
    fn participation_ratio_of_known_spectra() {
        assert_eq!(participation_ratio(&[1.0; 10]), 10.0);
        assert_eq!(participation_ratio(&[5.0, 0.0, 0.0]), 1.0);
        // (4 + 1 + 1)^2 / (16 + 1 + 1) = 2.
        assert!((participation_ratio(&[4.0, 1.0, 1.0]) - 2.0).abs() < 1e-15);
        assert_eq!(participation_ratio(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn recovers_a_known_spectrum_streamed_in_uneven_batches() {
        let spectrum: Vec<f64> = (0..40).map(|i| 10.0 * 0.8f64.powi(i)).collect();
        let expected = participation_ratio(&spectrum);
        let n = 20_000;
        let data = samples_with_spectrum(&spectrum, n, 50.0, 11);
        let mut acc = StreamingCovariance::new(40).unwrap();
        let mut start = 0;
        for (i, size) in [1usize, 7, 256, 1000].iter().cycle().enumerate() {
            if start >= n || i > 10_000 {
                break;
            }
            let end = (start + size).min(n);
            acc.update(&data[start * 40..end * 40], end - start)
                .unwrap();
            start = end;
        }
        assert_eq!(acc.samples(), n as u64);
        let dim = acc.dimensionality().unwrap();
        // Sampling error of the eigenvalues with 20k samples is ~1-2%.
        assert!(
            (dim.effective_dimensionality - expected).abs() < 0.03 * expected,
            "{} vs {expected}",
            dim.effective_dimensionality
        );
        assert!(
            (dim.eigenvalues[0] - 10.0).abs() < 0.5,
            "{}",
            dim.eigenvalues[0]
        );
    }

    #[test]
    fn streaming_matches_the_two_pass_covariance() {
        let (n, d) = (300, 70); // d > ROW_BLOCK, not a multiple of it
        let data = Rng::new(5).normals_f32(n * d);
        let mut acc = StreamingCovariance::new(d).unwrap();
        acc.update(&data[..100 * d], 100).unwrap();
        acc.update(&data[100 * d..], 200).unwrap();
        let cov = acc.covariance().unwrap();
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| data[i * d + j] as f64).sum::<f64>() / n as f64)
            .collect();
        for (a, b) in [(0, 0), (3, 69), (69, 3), (40, 41), (69, 69)] {
            let want = (0..n)
                .map(|i| (data[i * d + a] as f64 - mean[a]) * (data[i * d + b] as f64 - mean[b]))
                .sum::<f64>()
                / (n - 1) as f64;
            assert!(
                (cov[a * d + b] - want).abs() < 1e-9,
                "({a},{b}) {} vs {want}",
                cov[a * d + b]
            );
        }
    }

    #[test]
    fn channel_means_average_each_plane() {
        // 2 images, 2 channels, 3 positions.
        let acts = [
            1.0, 2.0, 3.0, 0.0, 0.0, 6.0, -1.0, -1.0, -1.0, 3.0, 3.0, 3.0,
        ];
        assert_eq!(
            channel_means(&acts, 2, 2, 3).unwrap(),
            vec![2.0, 2.0, -1.0, 3.0]
        );
        assert!(channel_means(&acts, 2, 2, 2).is_err());
    }

    #[test]
    fn errors_instead_of_panics() {
        assert!(StreamingCovariance::new(0).is_err());
        let mut acc = StreamingCovariance::new(3).unwrap();
        assert!(acc.update(&[1.0; 5], 2).is_err());
        assert!(acc.update(&[f32::NAN; 3], 1).is_err());
        acc.update(&[1.0, 2.0, 3.0], 1).unwrap();
        assert!(acc.dimensionality().is_err(), "one image has no covariance");
    }

    #[test]
    fn timing_reports_every_image() {
        let timing = time_covariance(16, 10, 25).unwrap();
        assert_eq!((timing.images, timing.features), (25, 16));
        assert!(timing.update_seconds > 0.0 && timing.update_us_per_image > 0.0);
    }
}
