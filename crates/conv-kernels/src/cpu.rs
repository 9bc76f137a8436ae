//! [`ConvKernels`] on Burn's CPU backend (Flex) for f32 convolutions without
//! groups: im2col and one matrix product over many samples at once (col2im
//! for the input gradient), each result written contiguous.
//!
//! Why not Flex's own: it multiplies one sample (and tile) at a time, so in
//! a ResNet's deep layers, with 2x2 to 8x8 output positions per sample, the
//! matrix kernel runs on slivers; and it computes the weight gradient as a
//! convolution over swapped axes whose result stays strided, so every later
//! element-wise step on it (the optimiser's momentum) walks it element by
//! element. Other dtypes and grouped convolutions run Burn's own kernels.

use burn::backend::Flex;
use burn::tensor::ops::conv::calculate_conv_output_size;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::FlexTensor;
use matrix_product::{gemm, MatRef};
use rayon::prelude::*;

use crate::{ConvChoice, ConvKernels};

mod scratch;

use scratch::Scratch;

/// How many floats an im2col buffer may hold before the batch is split into
/// chunks of samples (16 MB: big enough to keep the matrix kernel busy,
/// small enough that a 224 px ImageNet batch does not need gigabytes).
const CHUNK_FLOATS: usize = 1 << 22;

impl ConvKernels for Flex {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
        _choice: ConvChoice,
    ) -> FloatTensor<Self> {
        match Geometry::of(&x, &weight, &options) {
            Some(geometry) => geometry.forward(&x, &weight, CHUNK_FLOATS),
            None => Self::conv2d(x, weight, None, options),
        }
    }

    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        _choice: ConvChoice,
    ) -> FloatTensor<Self> {
        match Geometry::of(&x, &weight, &options) {
            Some(geometry) => geometry.input_grad(&weight, &output_grad, CHUNK_FLOATS),
            None => Self::conv2d_x_backward(x, weight, output_grad, options),
        }
    }

    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        _choice: ConvChoice,
    ) -> FloatTensor<Self> {
        match Geometry::of(&x, &weight, &options) {
            Some(geometry) => geometry.weight_grad(&x, &output_grad, CHUNK_FLOATS),
            None => Self::conv2d_weight_backward(x, weight, output_grad, options),
        }
    }
}

/// The sizes of one convolution (NCHW input, OIHW weight).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    channels: usize,
    input: [usize; 2],
    out_channels: usize,
    kernel: [usize; 2],
    output: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Geometry {
    /// The geometry of an f32 convolution without groups; `None` for what
    /// these kernels leave to Burn.
    fn of(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || options.groups != 1 {
            return None;
        }
        let [batch, channels, height, width] = x.shape().dims();
        let [out_channels, _, kernel_h, kernel_w] = weight.shape().dims();
        let output = [0, 1].map(|axis| {
            calculate_conv_output_size(
                [kernel_h, kernel_w][axis],
                options.stride[axis],
                options.padding[axis],
                options.dilation[axis],
                [height, width][axis],
            )
        });
        Some(Self {
            batch,
            channels,
            input: [height, width],
            out_channels,
            kernel: [kernel_h, kernel_w],
            output,
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
        })
    }

    /// Output positions per sample.
    fn positions(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Input values per output value and output channel (im2col's rows).
    fn patch(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// The batch in chunks of samples whose im2col buffer holds at most
    /// `budget` floats (at least one sample each).
    fn chunks(&self, budget: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let per_chunk = (budget / (self.patch() * self.positions()).max(1)).max(1);
        let batch = self.batch;
        (0..batch)
            .step_by(per_chunk)
            .map(move |start| start..(start + per_chunk).min(batch))
    }

    /// Where kernel tap `tap` reads along `axis`: outputs `lo..hi` read the
    /// input at `first`, `first + stride`, ...; the others read padding.
    fn reach(&self, axis: usize, tap: usize) -> (usize, usize, usize) {
        let (stride, len) = (self.stride[axis] as isize, self.input[axis] as isize);
        let offset = (tap * self.dilation[axis]) as isize - self.padding[axis] as isize;
        // Input index = out * stride + offset, kept within 0..len.
        let lo = if offset >= 0 {
            0
        } else {
            (-offset + stride - 1) / stride
        };
        let hi = if len - 1 - offset < 0 {
            0
        } else {
            ((len - 1 - offset) / stride + 1).min(self.output[axis] as isize)
        };
        let lo = lo.min(hi);
        (
            lo as usize,
            hi as usize,
            (lo * stride + offset).max(0) as usize,
        )
    }

    /// The runs of output positions that kernel tap `tap` (row-major over
    /// the kernel) reads from an input plane; the same for every sample.
    fn tap_runs(&self, tap: usize) -> TapRuns {
        let (rows, cols) = (
            self.reach(0, tap / self.kernel[1]),
            self.reach(1, tap % self.kernel[1]),
        );
        TapRuns {
            rows,
            cols,
            row_stride: self.stride[0],
            output: self.output,
            input_width: self.input[1],
        }
    }

    /// im2col of `samples` consecutive samples of `x`: row `k` = (channel,
    /// tap) of `cols` holds, for every output position of every sample, the
    /// input value that tap reads (zero in the padding).
    fn im2col(&self, x: &[f32], samples: usize) -> Scratch {
        let (plane, positions) = (self.input[0] * self.input[1], self.positions());
        let taps = self.kernel[0] * self.kernel[1];
        let mut cols = Scratch::take(self.patch() * samples * positions);
        let stride = self.stride[1];
        cols.par_chunks_mut(samples * positions)
            .enumerate()
            .for_each(|(k, row)| {
                let (channel, runs) = (k / taps, self.tap_runs(k % taps));
                for sample in 0..samples {
                    let input = &x[(sample * self.channels + channel) * plane..][..plane];
                    let out = &mut row[sample * positions..][..positions];
                    runs.for_each_padding(|position, len| out[position..position + len].fill(0.0));
                    runs.for_each(|position, start, len| {
                        let out = &mut out[position..position + len];
                        if stride == 1 {
                            out.copy_from_slice(&input[start..start + len]);
                        } else {
                            for (o, v) in out.iter_mut().zip(input[start..].iter().step_by(stride))
                            {
                                *o = *v;
                            }
                        }
                    });
                }
            });
        cols
    }

    /// `grad`'s samples `chunk` as a matrix [output channel, (sample,
    /// position)].
    fn gather_output_grad(&self, grad: &[f32], chunk: &std::ops::Range<usize>) -> Scratch {
        let positions = self.positions();
        let samples = chunk.len();
        let mut rows = Scratch::take(self.out_channels * samples * positions);
        rows.par_chunks_mut(samples * positions)
            .enumerate()
            .for_each(|(channel, row)| {
                for (sample, out) in row.chunks_mut(positions).enumerate() {
                    let start = ((chunk.start + sample) * self.out_channels + channel) * positions;
                    out.copy_from_slice(&grad[start..start + positions]);
                }
            });
        rows
    }

    fn forward(&self, x: &FlexTensor, weight: &FlexTensor, budget: usize) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let (x, weight) = (f32_values(&x), f32_values(&weight));
        let (positions, patch) = (self.positions(), self.patch());
        let sample_in = self.channels * self.input[0] * self.input[1];
        let sample_out = self.out_channels * positions;
        let mut out = vec![0.0; self.batch * sample_out];
        for chunk in self.chunks(budget) {
            let samples = chunk.len();
            let cols = self.im2col(&x[chunk.start * sample_in..chunk.end * sample_in], samples);
            let weight = MatRef::row_major(weight, self.out_channels, patch);
            let cols = MatRef::row_major(&cols, patch, samples * positions);
            let out = &mut out[chunk.start * sample_out..chunk.end * sample_out];
            if samples == 1 {
                gemm(1.0, weight, cols, 0.0, out, positions);
            } else {
                let mut product = Scratch::take(sample_out * samples);
                gemm(1.0, weight, cols, 0.0, &mut product, samples * positions);
                to_sample_major(&product, out, samples, positions);
            }
        }
        tensor(
            out,
            [
                self.batch,
                self.out_channels,
                self.output[0],
                self.output[1],
            ],
        )
    }

    fn input_grad(
        &self,
        weight: &FlexTensor,
        output_grad: &FlexTensor,
        budget: usize,
    ) -> FlexTensor {
        let (weight, grad) = (weight.to_contiguous(), output_grad.to_contiguous());
        let (weight, grad) = (f32_values(&weight), f32_values(&grad));
        let (positions, patch) = (self.positions(), self.patch());
        let plane = self.input[0] * self.input[1];
        let taps = self.kernel[0] * self.kernel[1];
        let stride = self.stride[1];
        let mut input_grad = vec![0.0; self.batch * self.channels * plane];
        for chunk in self.chunks(budget) {
            let samples = chunk.len();
            let rows = self.gather_output_grad(grad, &chunk);
            // cols = weight^T x output grad: [patch, (sample, position)].
            let mut cols = Scratch::take(patch * samples * positions);
            gemm(
                1.0,
                MatRef::row_major(weight, self.out_channels, patch).t(),
                MatRef::row_major(&rows, self.out_channels, samples * positions),
                0.0,
                &mut cols,
                samples * positions,
            );
            // col2im, one channel per task: [channel, sample, plane].
            let mut planes = Scratch::take(self.channels * samples * plane);
            planes
                .par_chunks_mut(samples * plane)
                .enumerate()
                .for_each(|(channel, planes)| {
                    planes.fill(0.0);
                    for tap in 0..taps {
                        let row = &cols[(channel * taps + tap) * samples * positions..];
                        let runs = self.tap_runs(tap);
                        for (sample, input) in planes.chunks_mut(plane).enumerate() {
                            let row = &row[sample * positions..][..positions];
                            runs.for_each(|position, start, len| {
                                let values = &row[position..position + len];
                                if stride == 1 {
                                    // Contiguous: the compiler vectorises this.
                                    let input = &mut input[start..start + len];
                                    for (g, v) in input.iter_mut().zip(values) {
                                        *g += v;
                                    }
                                } else {
                                    let input = input[start..].iter_mut().step_by(stride);
                                    for (g, v) in input.zip(values) {
                                        *g += v;
                                    }
                                }
                            });
                        }
                    }
                });
            let sample_in = self.channels * plane;
            to_sample_major(
                &planes,
                &mut input_grad[chunk.start * sample_in..chunk.end * sample_in],
                samples,
                plane,
            );
        }
        tensor(
            input_grad,
            [self.batch, self.channels, self.input[0], self.input[1]],
        )
    }

    fn weight_grad(&self, x: &FlexTensor, output_grad: &FlexTensor, budget: usize) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), output_grad.to_contiguous());
        let (x, grad) = (f32_values(&x), f32_values(&grad));
        let (positions, patch) = (self.positions(), self.patch());
        let sample_in = self.channels * self.input[0] * self.input[1];
        // gemm copies (packs) the left operand of its row-major product
        // unless it is column-major. Multiplying as weight grad^T = cols x
        // output grad^T makes that operand the output gradient instead of
        // the patches, at the price of transposing the result: worth it
        // where the patches outweigh both (many positions, long patches).
        let (batch_positions, out_channels) = (self.batch * positions, self.out_channels);
        let transposed = patch * batch_positions > out_channels * (batch_positions + 2 * patch);
        let mut weight_grad = vec![0.0; self.out_channels * patch];
        for (index, chunk) in self.chunks(budget).enumerate() {
            let samples = chunk.len();
            let cols = self.im2col(&x[chunk.start * sample_in..chunk.end * sample_in], samples);
            let rows = self.gather_output_grad(grad, &chunk);
            let rows = MatRef::row_major(&rows, self.out_channels, samples * positions);
            let cols = MatRef::row_major(&cols, patch, samples * positions);
            let accumulate = if index > 0 { 1.0 } else { 0.0 };
            if transposed {
                // weight grad^T (+)= cols x output grad^T.
                gemm(
                    1.0,
                    cols,
                    rows.t(),
                    accumulate,
                    &mut weight_grad,
                    out_channels,
                );
            } else {
                // weight grad (+)= output grad x cols^T.
                gemm(1.0, rows, cols.t(), accumulate, &mut weight_grad, patch);
            }
        }
        if transposed {
            weight_grad = transpose(&weight_grad, patch, out_channels);
        }
        tensor(
            weight_grad,
            [
                self.out_channels,
                self.channels,
                self.kernel[0],
                self.kernel[1],
            ],
        )
    }
}

/// The `cols x rows` transpose of a row-major `rows x cols` matrix.
fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; matrix.len()];
    for (row, values) in matrix.chunks_exact(cols).enumerate() {
        for (col, &value) in values.iter().enumerate() {
            out[col * rows + row] = value;
        }
    }
    out
}

/// Where one kernel tap reads: output rows `rows.0..rows.1` read input rows
/// `rows.2`, `rows.2 + row_stride`, ...; likewise for columns.
struct TapRuns {
    rows: (usize, usize, usize),
    cols: (usize, usize, usize),
    row_stride: usize,
    output: [usize; 2],
    input_width: usize,
}

impl TapRuns {
    /// Calls `run(position, input, len)` for each run of output positions
    /// (one per output row): the outputs `position..position + len` of a
    /// sample read its input plane at `input`, `input + column stride`, ...
    fn for_each(&self, mut run: impl FnMut(usize, usize, usize)) {
        let ((row_lo, row_hi, first_row), (col_lo, col_hi, first_col)) = (self.rows, self.cols);
        // A tap that reads only padding along the width has no runs (and its
        // `first_col` may lie past the plane).
        if col_lo == col_hi {
            return;
        }
        for (step, out_row) in (row_lo..row_hi).enumerate() {
            let in_row = first_row + step * self.row_stride;
            run(
                out_row * self.output[1] + col_lo,
                in_row * self.input_width + first_col,
                col_hi - col_lo,
            );
        }
    }

    /// Calls `gap(position, len)` for each run of output positions that
    /// read padding (the positions [`TapRuns::for_each`] leaves out).
    fn for_each_padding(&self, mut gap: impl FnMut(usize, usize)) {
        let ((row_lo, row_hi, _), (col_lo, col_hi, _)) = (self.rows, self.cols);
        let [height, width] = self.output;
        let mut gap = |position, len| {
            if len > 0 {
                gap(position, len)
            }
        };
        if col_lo == col_hi {
            return gap(0, height * width);
        }
        gap(0, row_lo * width);
        for out_row in row_lo..row_hi {
            gap(out_row * width, col_lo);
            gap(out_row * width + col_hi, width - col_hi);
        }
        gap(row_hi * width, (height - row_hi) * width);
    }
}

/// Copies `src`, laid out [channel, sample, value] for `samples` samples of
/// `len` values per channel, into `dst` laid out [sample, channel, value]
/// (NCHW), one sample per task.
fn to_sample_major(src: &[f32], dst: &mut [f32], samples: usize, len: usize) {
    assert_eq!(src.len(), dst.len(), "to_sample_major: sizes differ");
    dst.par_chunks_mut(dst.len() / samples)
        .enumerate()
        .for_each(|(sample, out)| {
            for (channel, out) in out.chunks_mut(len).enumerate() {
                let start = (channel * samples + sample) * len;
                out.copy_from_slice(&src[start..start + len]);
            }
        });
}

/// The values of a contiguous f32 tensor.
fn f32_values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("conv-kernels: a contiguous f32 tensor (Geometry::of checked the dtype)")
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tensor, TensorPrimitive};

    fn random(shape: [usize; 4], seed: u64) -> FlexTensor {
        <Flex as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
        Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
            .into_primitive()
            .tensor()
    }

    /// The crate's comparison ([`crate::tests::assert_close`]) on the
    /// backend's raw tensors.
    fn assert_close(a: FlexTensor, b: FlexTensor) {
        let tensor = |t| Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(t));
        crate::tests::assert_close(tensor(a), tensor(b));
    }

    /// The three kernels equal Burn's own on the CPU for rectangular
    /// kernels, unequal strides, padding and dilation, a kernel smaller than
    /// its stride, patches longer and shorter than the output channels, and
    /// batches split into chunks of one and two samples.
    #[test]
    fn the_kernels_agree_with_burns_own() {
        // (batch, in, out, kernel, stride, padding, dilation, input side)
        let cases = [
            (3, 4, 5, [3, 2], [1, 2], [1, 0], [1, 1], [9, 8]),
            (2, 3, 4, [3, 3], [2, 1], [2, 1], [2, 1], [10, 7]),
            (3, 2, 3, [2, 2], [3, 3], [0, 0], [1, 1], [8, 9]),
            (2, 6, 4, [1, 1], [2, 2], [0, 0], [1, 1], [7, 8]),
            // More output channels than a patch holds: the weight gradient
            // multiplies in the other orientation than the cases above.
            (2, 2, 5, [1, 1], [2, 2], [0, 0], [1, 1], [7, 8]),
            (1, 3, 2, [7, 7], [2, 2], [3, 3], [1, 1], [11, 12]),
            // Inputs smaller than the kernel's reach: most taps read only
            // padding (a ResNet stem on 1 and 2 px images).
            (2, 3, 2, [7, 7], [2, 2], [3, 3], [1, 1], [1, 1]),
            (2, 3, 2, [7, 7], [2, 2], [3, 3], [1, 1], [2, 3]),
            (2, 2, 3, [3, 3], [1, 1], [1, 1], [1, 1], [1, 2]),
        ];
        for (seed, (batch, c_in, c_out, kernel, stride, padding, dilation, side)) in
            cases.into_iter().enumerate()
        {
            let x = random([batch, c_in, side[0], side[1]], seed as u64);
            let weight = random([c_out, c_in, kernel[0], kernel[1]], 100 + seed as u64);
            let options = ConvOptions::new(stride, padding, dilation, 1);
            let expected = Flex::conv2d(x.clone(), weight.clone(), None, options.clone());
            let grad = random(expected.shape().dims(), 200 + seed as u64);
            let geometry = Geometry::of(&x, &weight, &options).unwrap();
            for budget in [1, geometry.patch() * geometry.positions() * 2, CHUNK_FLOATS] {
                // Shown when an assertion below fails.
                eprintln!("case {seed}, chunk budget {budget}");
                // Reused buffers start as NaN: a value not written shows.
                scratch::poison();
                assert_close(geometry.forward(&x, &weight, budget), expected.clone());
                scratch::poison();
                assert_close(
                    geometry.input_grad(&weight, &grad, budget),
                    Flex::conv2d_x_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    ),
                );
                scratch::poison();
                assert_close(
                    geometry.weight_grad(&x, &grad, budget),
                    Flex::conv2d_weight_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    ),
                );
            }
        }
    }

    /// Every output position of every tap is either read from the input
    /// (once) or padding (once).
    #[test]
    fn runs_and_padding_cover_each_position_once() {
        // (kernel, stride, padding, dilation, input side)
        let cases = [
            (3, 1, 1, 1, [5, 4]),
            (7, 2, 3, 1, [9, 12]),
            (7, 2, 3, 1, [1, 2]),
            (3, 2, 2, 2, [6, 3]),
            (1, 2, 0, 1, [7, 8]),
            (2, 3, 0, 1, [8, 9]),
        ];
        for (kernel, stride, padding, dilation, side) in cases {
            let x = random([1, 1, side[0], side[1]], 0);
            let weight = random([1, 1, kernel, kernel], 1);
            let options = ConvOptions::new([stride; 2], [padding; 2], [dilation; 2], 1);
            let geometry = Geometry::of(&x, &weight, &options).unwrap();
            for tap in 0..kernel * kernel {
                let mut seen = vec![0; geometry.positions()];
                let runs = geometry.tap_runs(tap);
                runs.for_each(|position, _, len| {
                    seen[position..position + len]
                        .iter_mut()
                        .for_each(|n| *n += 1)
                });
                runs.for_each_padding(|position, len| {
                    seen[position..position + len]
                        .iter_mut()
                        .for_each(|n| *n += 1)
                });
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{geometry:?}, tap {tap}: {seen:?}"
                );
            }
        }
    }

    /// A non-contiguous input (a transposed view) is read as its values.
    #[test]
    fn a_strided_input_is_read_by_value() {
        let x = random([2, 3, 6, 5], 7);
        let weight = random([4, 3, 3, 3], 8);
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let swapped = x.transpose(2, 3).to_contiguous().transpose(2, 3);
        assert!(!swapped.is_contiguous());
        assert_close(
            Flex::conv2d_forward(swapped, weight.clone(), options.clone(), ConvChoice::Direct),
            Flex::conv2d(x, weight, None, options),
        );
    }

    /// f64 and grouped convolutions are left to Burn.
    #[test]
    fn other_dtypes_and_groups_are_left_to_burn() {
        let x = random([1, 4, 5, 5], 1);
        let weight = random([4, 2, 3, 3], 2);
        assert!(Geometry::of(&x, &weight, &ConvOptions::new([1, 1], [1, 1], [1, 1], 2)).is_none());
        let x64 = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(x))
            .cast(burn::tensor::FloatDType::F64)
            .into_primitive()
            .tensor();
        assert!(
            Geometry::of(&x64, &weight, &ConvOptions::new([1, 1], [1, 1], [1, 1], 1)).is_none()
        );
    }
}
