//! Fused crop + resize (+ horizontal flip) of 8-bit images, antialiased like PIL's
//! bilinear filter: when shrinking, the triangle filter widens with the scale
//! factor, so every source pixel contributes. Fixed-point weights (22 bits) and an
//! 8-bit intermediate row buffer, as in PIL. Resizing to the same size with the
//! crop covering the whole image reproduces the input exactly.

/// A crop rectangle in source pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width (> 0).
    pub width: f64,
    /// Height (> 0).
    pub height: f64,
}

impl CropBox {
    /// The crop covering a whole `width` x `height` image.
    pub fn full(width: u32, height: u32) -> Self {
        CropBox {
            x: 0.0,
            y: 0.0,
            width: f64::from(width),
            height: f64::from(height),
        }
    }
}

/// Memory layout of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Pixels with their channels together (HWC), like the source.
    Interleaved,
    /// One plane per channel (CHW), as networks take them.
    Planar,
}

/// Where and how to write the output of [`Resampler::resample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// Output width.
    pub width: usize,
    /// Output height.
    pub height: usize,
    /// Mirror left-right.
    pub flip: bool,
    /// Interleaved or planar.
    pub layout: Layout,
}

/// An interleaved 8-bit source image.
#[derive(Clone, Copy, Debug)]
pub struct SourceView<'a> {
    /// `width * height * channels` bytes, row-major, channels interleaved.
    pub pixels: &'a [u8],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 or 3.
    pub channels: usize,
}

const PRECISION_BITS: u32 = 22;
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Filter taps for every output coordinate along one axis.
#[derive(Default)]
struct Taps {
    starts: Vec<usize>,
    lens: Vec<usize>,
    stride: usize,
    weights: Vec<i32>,
    float_weights: Vec<f64>,
}

impl Taps {
    fn compute(&mut self, in_size: usize, crop_start: f64, crop_len: f64, out_size: usize) {
        let scale = crop_len / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // triangle filter has support 1
        self.stride = (2.0 * support).ceil() as usize + 2;
        self.starts.clear();
        self.lens.clear();
        self.weights.clear();
        self.weights.resize(out_size * self.stride, 0);
        for out in 0..out_size {
            let center = crop_start + (out as f64 + 0.5) * scale;
            let first = ((center - support + 0.5).floor().max(0.0) as usize).min(in_size - 1);
            let end = ((center + support + 0.5).floor() as usize).clamp(first + 1, in_size);
            let len = (end - first).min(self.stride);
            self.float_weights.clear();
            let mut total = 0.0;
            for k in 0..len {
                let distance = ((first + k) as f64 - center + 0.5) / filter_scale;
                let weight = (1.0 - distance.abs()).max(0.0);
                self.float_weights.push(weight);
                total += weight;
            }
            if total <= 0.0 {
                // Degenerate crop (outside the image): take the nearest pixel.
                self.float_weights.iter_mut().for_each(|w| *w = 0.0);
                self.float_weights[0] = 1.0;
                total = 1.0;
            }
            let row = &mut self.weights[out * self.stride..out * self.stride + len];
            for (fixed, weight) in row.iter_mut().zip(&self.float_weights) {
                *fixed = (weight / total * f64::from(1u32 << PRECISION_BITS)).round() as i32;
            }
            self.starts.push(first);
            self.lens.push(len);
        }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let len = self.lens[out];
        (
            self.starts[out],
            &self.weights[out * self.stride..out * self.stride + len],
        )
    }
}

#[inline]
fn to_u8(accumulator: i32) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Reusable buffers for resampling; keep one per thread.
#[derive(Default)]
pub struct Resampler {
    horizontal: Taps,
    vertical: Taps,
    rows: Vec<u8>,
    accumulator: Vec<i32>,
}

impl Resampler {
    /// Creates a resampler with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resamples `crop` of `source` into `out` (exactly
    /// `spec.width * spec.height * source.channels` bytes).
    ///
    /// # Panics
    /// If the buffer sizes do not match, the channel count is not 1 or 3, or the
    /// source is empty: these are programming errors, not data errors.
    pub fn resample(
        &mut self,
        source: SourceView<'_>,
        crop: CropBox,
        spec: OutputSpec,
        out: &mut [u8],
    ) {
        let channels = source.channels;
        assert!(
            channels == 1 || channels == 3,
            "1 or 3 channels, got {channels}"
        );
        assert!(source.width > 0 && source.height > 0 && spec.width > 0 && spec.height > 0);
        assert_eq!(source.pixels.len(), source.width * source.height * channels);
        assert_eq!(out.len(), spec.width * spec.height * channels);
        self.horizontal
            .compute(source.width, crop.x, crop.width, spec.width);
        self.vertical
            .compute(source.height, crop.y, crop.height, spec.height);
        let first_row = self
            .vertical
            .starts
            .iter()
            .copied()
            .min()
            .expect("height > 0");
        let end_row = (0..spec.height)
            .map(|y| self.vertical.starts[y] + self.vertical.lens[y])
            .max()
            .expect("height > 0");
        let row_len = spec.width * channels;
        self.rows.resize((end_row - first_row) * row_len, 0);
        match channels {
            1 => self.horizontal_pass::<1>(source, first_row..end_row, spec),
            _ => self.horizontal_pass::<3>(source, first_row..end_row, spec),
        }
        self.vertical_pass(first_row, row_len, channels, spec, out);
    }

    fn horizontal_pass<const C: usize>(
        &mut self,
        source: SourceView<'_>,
        rows: std::ops::Range<usize>,
        spec: OutputSpec,
    ) {
        let row_len = spec.width * C;
        let source_row_len = source.width * C;
        for (index, y) in rows.enumerate() {
            let source_row = &source.pixels[y * source_row_len..(y + 1) * source_row_len];
            let out_row = &mut self.rows[index * row_len..(index + 1) * row_len];
            for x in 0..spec.width {
                let (start, weights) = self.horizontal.taps(x);
                let window = &source_row[start * C..(start + weights.len()) * C];
                let mut sums = [ROUNDING; C];
                for (k, &weight) in weights.iter().enumerate() {
                    for c in 0..C {
                        sums[c] += weight * i32::from(window[k * C + c]);
                    }
                }
                let out_x = if spec.flip { spec.width - 1 - x } else { x };
                for c in 0..C {
                    out_row[out_x * C + c] = to_u8(sums[c]);
                }
            }
        }
    }

    fn vertical_pass(
        &mut self,
        first_row: usize,
        row_len: usize,
        channels: usize,
        spec: OutputSpec,
        out: &mut [u8],
    ) {
        self.accumulator.resize(row_len, 0);
        let plane = spec.width * spec.height;
        for y in 0..spec.height {
            let (start, weights) = self.vertical.taps(y);
            self.accumulator.iter_mut().for_each(|a| *a = ROUNDING);
            for (k, &weight) in weights.iter().enumerate() {
                let row_start = (start + k - first_row) * row_len;
                let row = &self.rows[row_start..row_start + row_len];
                for (sum, &value) in self.accumulator.iter_mut().zip(row) {
                    *sum += weight * i32::from(value);
                }
            }
            match spec.layout {
                Layout::Interleaved => {
                    let out_row = &mut out[y * row_len..(y + 1) * row_len];
                    for (value, &sum) in out_row.iter_mut().zip(&self.accumulator) {
                        *value = to_u8(sum);
                    }
                }
                Layout::Planar => {
                    for c in 0..channels {
                        let out_row =
                            &mut out[c * plane + y * spec.width..c * plane + (y + 1) * spec.width];
                        for (x, value) in out_row.iter_mut().enumerate() {
                            *value = to_u8(self.accumulator[x * channels + c]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize, channels: usize) -> Vec<u8> {
        (0..width * height * channels)
            .map(|i| ((i * 7 + i / (width * channels) * 13) % 256) as u8)
            .collect()
    }

    fn run(source: SourceView<'_>, crop: CropBox, spec: OutputSpec) -> Vec<u8> {
        let mut out = vec![0; spec.width * spec.height * source.channels];
        Resampler::new().resample(source, crop, spec, &mut out);
        out
    }

    #[test]
    fn same_size_is_exact_copy_and_planar_transposes() {
        let (w, h) = (7, 5);
        let pixels = gradient(w, h, 3);
        let source = SourceView {
            pixels: &pixels,
            width: w,
            height: h,
            channels: 3,
        };
        let spec = OutputSpec {
            width: w,
            height: h,
            flip: false,
            layout: Layout::Interleaved,
        };
        assert_eq!(run(source, CropBox::full(w as u32, h as u32), spec), pixels);
        let planar = run(
            source,
            CropBox::full(w as u32, h as u32),
            OutputSpec {
                layout: Layout::Planar,
                ..spec
            },
        );
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    assert_eq!(planar[c * w * h + y * w + x], pixels[(y * w + x) * 3 + c]);
                }
            }
        }
    }

    #[test]
    fn flip_mirrors_columns() {
        let (w, h) = (6, 4);
        let pixels = gradient(w, h, 1);
        let source = SourceView {
            pixels: &pixels,
            width: w,
            height: h,
            channels: 1,
        };
        let spec = OutputSpec {
            width: w,
            height: h,
            flip: true,
            layout: Layout::Planar,
        };
        let out = run(source, CropBox::full(w as u32, h as u32), spec);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(out[y * w + x], pixels[y * w + (w - 1 - x)]);
            }
        }
    }

    #[test]
    fn integer_crop_at_same_scale_extracts_the_window() {
        let (w, h) = (10, 8);
        let pixels = gradient(w, h, 3);
        let source = SourceView {
            pixels: &pixels,
            width: w,
            height: h,
            channels: 3,
        };
        let crop = CropBox {
            x: 3.0,
            y: 2.0,
            width: 4.0,
            height: 5.0,
        };
        let spec = OutputSpec {
            width: 4,
            height: 5,
            flip: false,
            layout: Layout::Interleaved,
        };
        let out = run(source, crop, spec);
        for y in 0..5 {
            for x in 0..4 {
                for c in 0..3 {
                    assert_eq!(
                        out[(y * 4 + x) * 3 + c],
                        pixels[((y + 2) * w + x + 3) * 3 + c]
                    );
                }
            }
        }
    }

    #[test]
    fn downscale_averages_and_constant_stays_constant() {
        // 2x downscale of alternating 0/200 columns averages to 100 (antialiasing).
        let (w, h) = (16, 4);
        let pixels: Vec<u8> = (0..w * h)
            .map(|i| if i % 2 == 0 { 0 } else { 200 })
            .collect();
        let source = SourceView {
            pixels: &pixels,
            width: w,
            height: h,
            channels: 1,
        };
        let spec = OutputSpec {
            width: 8,
            height: 2,
            flip: false,
            layout: Layout::Planar,
        };
        let out = run(source, CropBox::full(w as u32, h as u32), spec);
        for y in 0..2 {
            // Interior columns; the edges see fewer taps.
            assert!(
                out[y * 8 + 1..y * 8 + 7]
                    .iter()
                    .all(|&v| (98..=102).contains(&v)),
                "{out:?}"
            );
        }
        let constant = vec![77u8; 9 * 5 * 3];
        let source = SourceView {
            pixels: &constant,
            width: 9,
            height: 5,
            channels: 3,
        };
        let spec = OutputSpec {
            width: 23,
            height: 3,
            flip: true,
            layout: Layout::Planar,
        };
        assert!(run(
            source,
            CropBox {
                x: 1.5,
                y: 0.25,
                width: 6.0,
                height: 4.5
            },
            spec
        )
        .iter()
        .all(|&v| v == 77));
    }
}
