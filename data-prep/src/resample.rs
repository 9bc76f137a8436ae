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

/// Filter taps for every output coordinate along one axis, padded with zero
/// weights to the same count `taps` so that inner loops have a fixed length.
#[derive(Default)]
struct Taps {
    starts: Vec<usize>,
    taps: usize,
    weights: Vec<i32>,
    float_weights: Vec<f64>,
    spans: Vec<(usize, usize)>,
}

impl Taps {
    fn compute(&mut self, in_size: usize, crop_start: f64, crop_len: f64, out_size: usize) {
        let scale = crop_len / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle filter has support 1
        self.spans.clear();
        self.float_weights.clear();
        for out in 0..out_size {
            let center = crop_start + (out as f64 + 0.5) * scale;
            let first = ((center - support + 0.5).floor().max(0.0) as usize).min(in_size - 1);
            let end = ((center + support + 0.5).floor() as usize).clamp(first + 1, in_size);
            self.spans.push((first, end - first));
        }
        let taps = self.spans.iter().map(|&(_, len)| len).max().unwrap_or(1);
        self.taps = taps;
        self.starts.clear();
        self.weights.clear();
        self.weights.resize(out_size * taps, 0);
        for out in 0..out_size {
            let (first, len) = self.spans[out];
            let center = crop_start + (out as f64 + 0.5) * scale;
            // Shift the window left near the right edge so that it holds `taps` pixels.
            let start = first.min(in_size - taps);
            let weights = &mut self.weights[out * taps..(out + 1) * taps];
            let mut total = 0.0;
            let mut float_weights = [0.0f64; 64];
            let use_heap = taps > float_weights.len();
            if use_heap {
                self.float_weights.clear();
                self.float_weights.resize(taps, 0.0);
            }
            let slots: &mut [f64] = if use_heap {
                &mut self.float_weights
            } else {
                &mut float_weights[..taps]
            };
            for pixel in first..first + len {
                let distance = (pixel as f64 - center + 0.5) / filter_scale;
                let weight = (1.0 - distance.abs()).max(0.0);
                slots[pixel - start] = weight;
                total += weight;
            }
            if total <= 0.0 {
                // Degenerate crop outside the image: take the nearest pixel.
                slots[first - start] = 1.0;
                total = 1.0;
            }
            for (fixed, weight) in weights.iter_mut().zip(slots.iter()) {
                *fixed = (weight / total * f64::from(1u32 << PRECISION_BITS)).round() as i32;
            }
            self.starts.push(start);
        }
    }
}

#[inline(always)]
fn to_u8(accumulator: i32) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Reusable buffers for resampling; keep one per thread.
#[derive(Default)]
pub struct Resampler {
    horizontal: Taps,
    vertical: Taps,
    planes: Vec<u8>,
    accumulator: Vec<i32>,
    planar_out: Vec<u8>,
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
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { self.passes_avx2(source, spec, out) };
                return;
            }
        }
        self.passes(source, spec, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn passes_avx2(&mut self, source: SourceView<'_>, spec: OutputSpec, out: &mut [u8]) {
        self.passes(source, spec, out);
    }

    /// Horizontal pass into planar rows, then vertical pass; inlined into the
    /// AVX2 variant so that the compiler vectorises both with wide registers.
    #[inline(always)]
    fn passes(&mut self, source: SourceView<'_>, spec: OutputSpec, out: &mut [u8]) {
        let first_row = self
            .vertical
            .starts
            .iter()
            .copied()
            .min()
            .expect("height > 0");
        let end_row = self
            .vertical
            .starts
            .iter()
            .copied()
            .max()
            .expect("height > 0")
            + self.vertical.taps;
        let rows = end_row - first_row;
        self.planes.resize(source.channels * rows * spec.width, 0);
        match source.channels {
            1 => horizontal_pass::<1>(
                &self.horizontal,
                source,
                first_row,
                rows,
                spec,
                &mut self.planes,
            ),
            _ => horizontal_pass::<3>(
                &self.horizontal,
                source,
                first_row,
                rows,
                spec,
                &mut self.planes,
            ),
        }
        let interleave = spec.layout == Layout::Interleaved;
        if interleave {
            self.planar_out.resize(out.len(), 0);
        }
        let target: &mut [u8] = if interleave {
            &mut self.planar_out
        } else {
            &mut *out
        };
        vertical_pass(
            &self.vertical,
            &self.planes,
            first_row,
            rows,
            source.channels,
            spec,
            &mut self.accumulator,
            target,
        );
        if interleave {
            let plane = spec.width * spec.height;
            for (pixel, values) in out.chunks_exact_mut(source.channels).enumerate() {
                for (c, value) in values.iter_mut().enumerate() {
                    *value = self.planar_out[c * plane + pixel];
                }
            }
        }
    }
}

/// Filters `rows` source rows from `first_row` horizontally into `planes`
/// (`C` planes of `rows x spec.width`), mirroring if asked.
#[inline(always)]
fn horizontal_pass<const C: usize>(
    taps: &Taps,
    source: SourceView<'_>,
    first_row: usize,
    rows: usize,
    spec: OutputSpec,
    planes: &mut [u8],
) {
    let source_row_len = source.width * C;
    let plane_len = rows * spec.width;
    let count = taps.taps;
    for row in 0..rows {
        let y = first_row + row;
        let source_row = &source.pixels[y * source_row_len..(y + 1) * source_row_len];
        for x in 0..spec.width {
            let start = taps.starts[x] * C;
            let window = &source_row[start..start + count * C];
            let weights = &taps.weights[x * count..(x + 1) * count];
            let mut sums = [ROUNDING; C];
            for (pixel, &weight) in window.chunks_exact(C).zip(weights) {
                for c in 0..C {
                    sums[c] += weight * i32::from(pixel[c]);
                }
            }
            let out_x = if spec.flip { spec.width - 1 - x } else { x };
            for (c, &sum) in sums.iter().enumerate() {
                planes[c * plane_len + row * spec.width + out_x] = to_u8(sum);
            }
        }
    }
}

/// Filters the planar rows vertically into planar `out` (`channels` planes of
/// `spec.height x spec.width`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn vertical_pass(
    taps: &Taps,
    planes: &[u8],
    first_row: usize,
    rows: usize,
    channels: usize,
    spec: OutputSpec,
    accumulator: &mut Vec<i32>,
    out: &mut [u8],
) {
    let width = spec.width;
    accumulator.resize(width, 0);
    for c in 0..channels {
        let plane = &planes[c * rows * width..(c + 1) * rows * width];
        let out_plane = &mut out[c * spec.height * width..(c + 1) * spec.height * width];
        for (y, out_row) in out_plane.chunks_exact_mut(width).enumerate() {
            let start = taps.starts[y] - first_row;
            let weights = &taps.weights[y * taps.taps..(y + 1) * taps.taps];
            accumulator.iter_mut().for_each(|a| *a = ROUNDING);
            for (k, &weight) in weights.iter().enumerate() {
                if weight == 0 {
                    continue;
                }
                let row = &plane[(start + k) * width..(start + k + 1) * width];
                for (sum, &value) in accumulator.iter_mut().zip(row) {
                    *sum += weight * i32::from(value);
                }
            }
            for (value, &sum) in out_row.iter_mut().zip(accumulator.iter()) {
                *value = to_u8(sum);
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

    fn view(pixels: &[u8], width: usize, height: usize, channels: usize) -> SourceView<'_> {
        SourceView {
            pixels,
            width,
            height,
            channels,
        }
    }

    fn output(width: usize, height: usize, flip: bool, layout: Layout) -> OutputSpec {
        OutputSpec {
            width,
            height,
            flip,
            layout,
        }
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
        let source = view(&pixels, w, h, 3);
        let spec = output(w, h, false, Layout::Interleaved);
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
        let source = view(&pixels, w, h, 1);
        let spec = output(w, h, true, Layout::Planar);
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
        let source = view(&pixels, w, h, 3);
        let crop = CropBox {
            x: 3.0,
            y: 2.0,
            width: 4.0,
            height: 5.0,
        };
        let spec = output(4, 5, false, Layout::Interleaved);
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
        let source = view(&pixels, w, h, 1);
        let spec = output(8, 2, false, Layout::Planar);
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
        let source = view(&constant, 9, 5, 3);
        let spec = output(23, 3, true, Layout::Planar);
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
