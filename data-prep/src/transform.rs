//! Per-sample randomness and crop geometry: torchvision's RandomResizedCrop and
//! ffcv's centre crop, computed from a counter-based generator so that a sample's
//! augmentation depends only on (seed, epoch, position), never on thread timing.

use crate::resample::CropBox;

/// SplitMix64 finaliser: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Small deterministic generator (SplitMix64) keyed by a sample's identity.
#[derive(Clone, Debug)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    /// Generator for the sample at `position` of `epoch` under `seed`.
    pub fn new(seed: u64, epoch: u64, position: u64) -> Self {
        let state =
            mix64(mix64(mix64(seed) ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ position);
        SampleRng { state }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Uniform integer in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Parameters of RandomResizedCrop (torchvision semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image area.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    /// torchvision's defaults: scale 0.08-1, ratio 3/4-4/3.
    fn default() -> Self {
        RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

impl RandomResizedCrop {
    /// Draws a crop of a `width` x `height` image exactly as torchvision's
    /// `RandomResizedCrop.get_params` does: ten attempts, then a centre crop
    /// clamped to the ratio range.
    pub fn sample(&self, width: u32, height: u32, rng: &mut SampleRng) -> CropBox {
        let (w, h) = (i64::from(width), i64::from(height));
        let area = (w * h) as f64;
        let log_ratio = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_ratio.0, log_ratio.1).exp();
            let crop_w = (target_area * aspect).sqrt().round() as i64;
            let crop_h = (target_area / aspect).sqrt().round() as i64;
            if 0 < crop_w && crop_w <= w && 0 < crop_h && crop_h <= h {
                let top = rng.below((h - crop_h + 1) as u64) as i64;
                let left = rng.below((w - crop_w + 1) as u64) as i64;
                return integer_box(left, top, crop_w, crop_h);
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (crop_w, crop_h) = if in_ratio < self.ratio.0 {
            (w, ((w as f64 / self.ratio.0).round() as i64).clamp(1, h))
        } else if in_ratio > self.ratio.1 {
            (((h as f64 * self.ratio.1).round() as i64).clamp(1, w), h)
        } else {
            (w, h)
        };
        integer_box((w - crop_w) / 2, (h - crop_h) / 2, crop_w, crop_h)
    }
}

/// ffcv's centre crop: the central square of side `ratio * min(width, height)`
/// (ffcv's default ratio is 224/256).
pub fn center_crop(width: u32, height: u32, ratio: f64) -> CropBox {
    let (w, h) = (i64::from(width), i64::from(height));
    let side = ((ratio * w.min(h) as f64) as i64).clamp(1, w.min(h));
    integer_box((w - side) / 2, (h - side) / 2, side, side)
}

/// torchvision's evaluation crop, `Resize(resize)` (shorter side) then
/// `CenterCrop(crop)`, as a box in the source image: resampling the box to
/// `crop` pixels reads the same pixels with the same filter as resizing the
/// whole image and cropping it.
pub fn torchvision_center_crop(width: u32, height: u32, resize: usize, crop: usize) -> CropBox {
    let (w, h) = (f64::from(width), f64::from(height));
    // torchvision's `_compute_resized_output_size`: the long side truncated.
    let (resized_w, resized_h) = if width <= height {
        (resize, (resize as f64 * h / w) as usize)
    } else {
        ((resize as f64 * w / h) as usize, resize)
    };
    // `CenterCrop`: offsets rounded half to even, as Python's round().
    let offset = |size: usize| ((size as f64 - crop as f64) / 2.0).round_ties_even();
    let (scale_x, scale_y) = (w / resized_w as f64, h / resized_h as f64);
    CropBox {
        x: offset(resized_w) * scale_x,
        y: offset(resized_h) * scale_y,
        width: crop as f64 * scale_x,
        height: crop as f64 * scale_y,
    }
}

fn integer_box(left: i64, top: i64, width: i64, height: i64) -> CropBox {
    CropBox {
        x: left as f64,
        y: top as f64,
        width: width as f64,
        height: height as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_crop_is_resize_256_then_centre_224_in_source_pixels() {
        // 500 x 375: Resize(256) gives 341 x 256 (341.33 truncated), and
        // CenterCrop(224) starts at round(58.5) = 58 (half to even), 16.
        let crop = torchvision_center_crop(500, 375, 256, 224);
        let (sx, sy) = (500.0 / 341.0, 375.0 / 256.0);
        assert!((crop.x - 58.0 * sx).abs() < 1e-9, "{crop:?}");
        assert!((crop.y - 16.0 * sy).abs() < 1e-9, "{crop:?}");
        assert!((crop.width - 224.0 * sx).abs() < 1e-9, "{crop:?}");
        assert!((crop.height - 224.0 * sy).abs() < 1e-9, "{crop:?}");
        // A portrait image: the width is the short side.
        let tall = torchvision_center_crop(256, 512, 256, 224);
        assert_eq!(
            (tall.x, tall.y, tall.width, tall.height),
            (16.0, 144.0, 224.0, 224.0)
        );
        // ffcv's crop of the same image differs: 328 source pixels, offsets 86, 23.
        let ffcv = center_crop(500, 375, 224.0 / 256.0);
        assert_eq!((ffcv.x, ffcv.y, ffcv.width), (86.0, 23.0, 328.0));
    }

    #[test]
    fn rng_is_keyed_and_uniform_enough() {
        let draw = |seed, epoch, pos| SampleRng::new(seed, epoch, pos).next_u64();
        assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
        assert_ne!(draw(1, 2, 3), draw(1, 2, 4));
        assert_ne!(draw(1, 2, 3), draw(1, 3, 3));
        assert_ne!(draw(1, 2, 3), draw(2, 2, 3));
        let mut rng = SampleRng::new(0, 0, 0);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[rng.below(4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn random_resized_crop_stays_inside_and_respects_ranges() {
        let crop = RandomResizedCrop::default();
        let (w, h) = (500u32, 375u32);
        let mut mean_area = 0.0;
        for position in 0..2000 {
            let mut rng = SampleRng::new(7, 0, position);
            let b = crop.sample(w, h, &mut rng);
            assert!(b.x >= 0.0 && b.y >= 0.0 && b.width >= 1.0 && b.height >= 1.0);
            assert!(b.x + b.width <= f64::from(w) && b.y + b.height <= f64::from(h));
            let aspect = b.width / b.height;
            assert!((0.74..=1.35).contains(&aspect), "{aspect}");
            mean_area += b.width * b.height / f64::from(w * h) / 2000.0;
        }
        // Uniform scale in [0.08, 1] averages 0.54 before rejections of too-wide crops.
        assert!((0.4..0.6).contains(&mean_area), "{mean_area}");
    }

    #[test]
    fn random_resized_crop_falls_back_for_extreme_shapes() {
        // A 1000x2 strip cannot hold any crop with ratio <= 4/3 and >= 8% area.
        let b = RandomResizedCrop::default().sample(1000, 2, &mut SampleRng::new(0, 0, 0));
        assert_eq!((b.width, b.height), (3.0, 2.0));
        assert_eq!(b.x, ((1000 - 3) / 2) as f64);
    }

    #[test]
    fn center_crop_matches_ffcv() {
        let b = center_crop(500, 375, 224.0 / 256.0);
        assert_eq!((b.width, b.height), (328.0, 328.0));
        assert_eq!((b.x, b.y), (86.0, 23.0));
        assert_eq!(center_crop(28, 28, 1.0), CropBox::full(28, 28));
    }
}
