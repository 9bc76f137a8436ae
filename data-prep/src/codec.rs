//! Image decoding and encoding: source files (JPEG incl. CMYK/greyscale, PNG, EXIF
//! orientation) into RGB pixels, and dataset records (raw or JPEG) back into pixels.

use crate::resample::{CropBox, Layout, OutputSpec, Resampler, SourceView};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, Limits};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// An interleaved 8-bit image owned in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    /// `width * height * channels` bytes, row-major HWC.
    pub data: Vec<u8>,
}

impl Pixels {
    /// Borrows the pixels for resampling.
    pub fn view(&self) -> SourceView<'_> {
        SourceView {
            pixels: &self.data,
            width: self.width as usize,
            height: self.height as usize,
            channels: self.channels as usize,
        }
    }

    /// Downscales so that the longer side is at most `max_side` (aspect ratio kept,
    /// antialiased). Smaller images are returned unchanged.
    pub fn fit_within(self, max_side: u32, resampler: &mut Resampler) -> Pixels {
        let longer = self.width.max(self.height);
        if longer <= max_side {
            return self;
        }
        let scale = f64::from(max_side) / f64::from(longer);
        let width = ((f64::from(self.width) * scale).round() as u32).clamp(1, max_side);
        let height = ((f64::from(self.height) * scale).round() as u32).clamp(1, max_side);
        let mut data = vec![0; width as usize * height as usize * self.channels as usize];
        let spec = OutputSpec {
            width: width as usize,
            height: height as usize,
            flip: false,
            layout: Layout::Interleaved,
        };
        resampler.resample(
            self.view(),
            CropBox::full(self.width, self.height),
            spec,
            &mut data,
        );
        Pixels {
            width,
            height,
            channels: self.channels,
            data,
        }
    }
}

/// A decoded source file.
#[derive(Debug)]
pub struct DecodedSource {
    /// RGB pixels with EXIF orientation applied.
    pub pixels: Pixels,
    /// Set when the file decoded only leniently (e.g. stray bytes between markers).
    pub warning: Option<String>,
}

const JPEG_SIGNATURE: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// Refuses an image whose header claims more than `max_pixels` pixels, before
/// its pixels are allocated: a few hundred bytes can claim 60000x60000 (10 GB).
fn check_pixel_count(width: u64, height: u64, max_pixels: u64) -> Result<(), String> {
    let pixels = width * height;
    if pixels <= max_pixels {
        return Ok(());
    }
    Err(format!(
        "{width}x{height} pixels ({:.1} megapixels) is over the limit of {:.1} megapixels, \
         so it is not decoded (it would take {:.1} GB); raise --max-pixels to convert it",
        pixels as f64 / 1e6,
        max_pixels as f64 / 1e6,
        pixels as f64 * 3.0 / 1e9
    ))
}

/// The image crate's limits for a source of at most `max_pixels` pixels: a
/// second line of defence behind [`check_pixel_count`]. 8 bytes a pixel
/// holds the widest decoded format (16-bit RGBA).
fn source_limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    limits
}

/// Decodes a source image file into RGB, whatever its format (JPEG, including CMYK
/// and greyscale, or PNG, even when named `.JPEG`), applying EXIF orientation.
/// Images of more than `max_pixels` pixels are refused from their header.
/// Returns a reason a user can read when the bytes are not a decodable image.
pub fn decode_source(bytes: &[u8], max_pixels: u64) -> Result<DecodedSource, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    // The header's claim, read by the image crate before any decoder
    // allocates; an unreadable header is left to the decoders to report.
    let claimed = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::from)
        .and_then(|reader| reader.into_dimensions());
    if let Ok((width, height)) = claimed {
        check_pixel_count(width.into(), height.into(), max_pixels)?;
    }
    if bytes.starts_with(&JPEG_SIGNATURE) {
        return decode_source_jpeg(bytes, max_pixels);
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(source_limits(max_pixels));
    let Some(format) = reader.format() else {
        let start: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(format!(
            "not a JPEG or PNG image (starts with bytes {})",
            start.join(" ")
        ));
    };
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("{format:?} decoder: {e}"))?;
    let (width, height) = decoder.dimensions();
    check_pixel_count(width.into(), height.into(), max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| format!("{format:?} data: {e}"))?;
    image.apply_orientation(orientation);
    Ok(DecodedSource {
        pixels: rgb_pixels(image.into_rgb8()),
        warning: None,
    })
}

fn rgb_pixels(image: image::RgbImage) -> Pixels {
    Pixels {
        width: image.width(),
        height: image.height(),
        channels: 3,
        data: image.into_raw(),
    }
}

fn zune_options(strict: bool, colorspace: ColorSpace) -> DecoderOptions {
    DecoderOptions::default()
        .set_strict_mode(strict)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .jpeg_set_out_colorspace(colorspace)
}

/// Whether the last scan of a JPEG is followed by an end-of-image marker: a file
/// cut short loses it (entropy-coded data cannot contain `FF D9`).
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let last = |marker: u8| {
        bytes
            .windows(2)
            .rposition(|w| w[0] == 0xFF && w[1] == marker)
    };
    match (last(0xDA), last(0xD9)) {
        (Some(start_of_scan), Some(end)) => end > start_of_scan,
        _ => false,
    }
}

fn decode_source_jpeg(bytes: &[u8], max_pixels: u64) -> Result<DecodedSource, String> {
    let strict = decode_jpeg_rgb(bytes, true, max_pixels);
    let (pixels, exif, warning) = match strict {
        Ok(decoded) => (decoded.0, decoded.1, None),
        Err(strict_error) => {
            if !jpeg_has_end_marker(bytes) {
                return Err(format!(
                    "truncated JPEG (no end-of-image marker): {strict_error}"
                ));
            }
            // Like libjpeg, accept files with recoverable oddities, but record them.
            let decoded =
                decode_jpeg_rgb(bytes, false, max_pixels).map_err(|e| format!("JPEG data: {e}"))?;
            (
                decoded.0,
                decoded.1,
                Some(format!("decoded leniently: {strict_error}")),
            )
        }
    };
    let orientation = exif
        .and_then(|chunk| Orientation::from_exif_chunk(&chunk))
        .unwrap_or(Orientation::NoTransforms);
    let pixels = if orientation == Orientation::NoTransforms {
        pixels
    } else {
        let buffer = image::RgbImage::from_raw(pixels.width, pixels.height, pixels.data)
            .expect("decoder output matches its dimensions");
        let mut image = DynamicImage::ImageRgb8(buffer);
        image.apply_orientation(orientation);
        rgb_pixels(image.into_rgb8())
    };
    Ok(DecodedSource { pixels, warning })
}

fn decode_jpeg_rgb(
    bytes: &[u8],
    strict: bool,
    max_pixels: u64,
) -> Result<(Pixels, Option<Vec<u8>>), String> {
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        ZCursor::new(bytes),
        zune_options(strict, ColorSpace::RGB),
    );
    decoder.decode_headers().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions().ok_or("JPEG without dimensions")?;
    check_pixel_count(width as u64, height as u64, max_pixels)?;
    let data = decoder.decode().map_err(|e| e.to_string())?;
    if data.len() != width * height * 3 {
        return Err(format!(
            "decoder returned {} bytes for {width}x{height} RGB",
            data.len()
        ));
    }
    let exif = decoder.exif().cloned();
    Ok((
        Pixels {
            width: width as u32,
            height: height as u32,
            channels: 3,
            data,
        },
        exif,
    ))
}

/// Encodes pixels as a baseline JPEG with 4:2:0 chroma subsampling (what libjpeg
/// and PIL produce by default; about twice as fast to decode as 4:4:4).
pub fn encode_jpeg(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, String> {
    let width = u16::try_from(pixels.width).map_err(|_| "JPEG width is limited to 65535 pixels")?;
    let height =
        u16::try_from(pixels.height).map_err(|_| "JPEG height is limited to 65535 pixels")?;
    let mut out = Vec::with_capacity(pixels.data.len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    let color = if pixels.channels == 1 {
        jpeg_encoder::ColorType::Luma
    } else {
        jpeg_encoder::ColorType::Rgb
    };
    encoder
        .encode(&pixels.data, width, height, color)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes a JPEG record written by [`encode_jpeg`] into `out` (resized to fit)
/// with the given channel count; returns `(width, height)`.
pub fn decode_jpeg_record(
    bytes: &[u8],
    channels: u32,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), String> {
    let colorspace = if channels == 1 {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        ZCursor::new(bytes),
        zune_options(false, colorspace),
    );
    decoder.decode_headers().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions().ok_or("JPEG without dimensions")?;
    let size = decoder.output_buffer_size().ok_or("JPEG without size")?;
    if size != width * height * channels as usize {
        return Err(format!(
            "JPEG decodes to {size} bytes, expected {width}x{height}x{channels}"
        ));
    }
    out.resize(size, 0);
    decoder.decode_into(out).map_err(|e| e.to_string())?;
    Ok((width, height))
}

/// Decodes a JPEG record written by [`encode_jpeg`] at reduced scale, in the DCT
/// domain: `1/factor` (2, 4 or 8) of `full_width` x `full_height`, rounded up.
/// Much cheaper than a full decode followed by downscaling. Returns `(width, height)`.
pub fn decode_jpeg_record_reduced(
    bytes: &[u8],
    channels: u32,
    factor: u32,
    full_width: u32,
    full_height: u32,
    out: &mut Vec<u8>,
) -> Result<(usize, usize), String> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let requested = |size: u32| u16::try_from(size.div_ceil(factor)).unwrap_or(u16::MAX);
    let (width, height) = decoder
        .scale(requested(full_width), requested(full_height))
        .map_err(|e| e.to_string())?;
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let (width, height) = (usize::from(width), usize::from(height));
    if pixels.len() != width * height * channels as usize {
        return Err(format!(
            "reduced JPEG decode gave {} bytes for {width}x{height}x{channels}",
            pixels.len()
        ));
    }
    out.clear();
    out.extend_from_slice(&pixels);
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prep::DEFAULT_MAX_PIXELS;

    fn photo_like(width: u32, height: u32) -> Pixels {
        let data = (0..height)
            .flat_map(|y| {
                (0..width)
                    .flat_map(move |x| [(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
            })
            .collect();
        Pixels {
            width,
            height,
            channels: 3,
            data,
        }
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn jpeg_round_trip_is_close() {
        let pixels = photo_like(64, 48);
        let bytes = encode_jpeg(&pixels, 90).unwrap();
        let mut out = Vec::new();
        assert_eq!(decode_jpeg_record(&bytes, 3, &mut out).unwrap(), (64, 48));
        assert!(mean_abs_diff(&out, &pixels.data) < 3.0);
        let decoded = decode_source(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(decoded.pixels.data, out);
        assert!(decoded.warning.is_none());
    }

    #[test]
    fn reduced_decode_halves_and_stays_close() {
        let pixels = photo_like(64, 48);
        let bytes = encode_jpeg(&pixels, 95).unwrap();
        let mut half = Vec::new();
        assert_eq!(
            decode_jpeg_record_reduced(&bytes, 3, 2, 64, 48, &mut half).unwrap(),
            (32, 24)
        );
        let reference = pixels.fit_within(32, &mut Resampler::new());
        assert!(mean_abs_diff(&half, &reference.data) < 4.0);
    }

    #[test]
    fn png_source_is_detected_by_content() {
        let pixels = photo_like(5, 3);
        let mut bytes = Vec::new();
        image::RgbImage::from_raw(5, 3, pixels.data.clone())
            .unwrap()
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        assert_eq!(
            decode_source(&bytes, DEFAULT_MAX_PIXELS).unwrap().pixels,
            pixels
        );
    }

    #[test]
    fn greyscale_jpeg_becomes_rgb_with_equal_channels() {
        let grey = Pixels {
            width: 16,
            height: 16,
            channels: 1,
            data: (0..=255).collect(),
        };
        let bytes = encode_jpeg(&grey, 95).unwrap();
        let decoded = decode_source(&bytes, DEFAULT_MAX_PIXELS).unwrap().pixels;
        assert_eq!(decoded.channels, 3);
        assert!(decoded.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn cmyk_jpeg_converts_to_rgb() {
        // Pure red is C=0 M=255 Y=255 K=0 (non-inverted, as Adobe JPEGs with transform 0 store it).
        let cmyk: Vec<u8> = (0..32 * 32).flat_map(|_| [0u8, 255, 255, 0]).collect();
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(&cmyk, 32, 32, jpeg_encoder::ColorType::Cmyk)
            .unwrap();
        let decoded = decode_source(&bytes, DEFAULT_MAX_PIXELS).unwrap().pixels;
        let mean = |c: usize| {
            decoded
                .data
                .iter()
                .skip(c)
                .step_by(3)
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / 1024.0
        };
        assert!(
            mean(0) > 240.0 && mean(1) < 15.0 && mean(2) < 15.0,
            "{} {} {}",
            mean(0),
            mean(1),
            mean(2)
        );
    }

    #[test]
    fn broken_inputs_give_reasons() {
        assert_eq!(
            decode_source(&[], DEFAULT_MAX_PIXELS).unwrap_err(),
            "empty file"
        );
        assert!(decode_source(b"not an image", DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .contains("not a JPEG or PNG"));
        let bytes = encode_jpeg(&photo_like(64, 64), 90).unwrap();
        let error = decode_source(&bytes[..bytes.len() / 2], DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(error.contains("truncated"), "{error}");
    }

    #[test]
    fn fit_within_keeps_aspect_and_small_images() {
        let mut resampler = Resampler::new();
        let small = photo_like(30, 20);
        assert_eq!(small.clone().fit_within(30, &mut resampler), small);
        let fitted = photo_like(300, 200).fit_within(30, &mut resampler);
        assert_eq!((fitted.width, fitted.height), (30, 20));
    }
}
