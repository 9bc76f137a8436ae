//! Shared drawing plumbing: an in-memory RGB canvas drawn on by plotters and
//! written as PNG by `image` (plotters' own encoder would pull a second
//! version of `image` into the build).

use std::error::Error;
use std::path::Path;

use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{ensure_font, AnalysisError, Result};

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub(crate) type DrawResult = std::result::Result<(), Box<dyn Error>>;

/// Font sizes, in pixels, shared by all figures so they read alike.
pub(crate) const TITLE_SIZE: u32 = 22;
pub(crate) const LABEL_SIZE: u32 = 16;
pub(crate) const TICK_SIZE: u32 = 13;

/// Draws a `width x height` figure with `draw` on a white canvas and returns it.
pub(crate) fn render(
    width: u32,
    height: u32,
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<RgbImage> {
    ensure_font()?;
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| AnalysisError::Draw(e.to_string()))?;
        root.present()
            .map_err(|e| AnalysisError::Draw(e.to_string()))?;
    }
    RgbImage::from_raw(width, height, buffer).ok_or(AnalysisError::Draw("canvas size".into()))
}

/// Writes a rendered figure as PNG, creating the folder if needed.
pub(crate) fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AnalysisError::Write {
            path: path.to_path_buf(),
            source: image::ImageError::IoError(source),
        })?;
    }
    let write_error = |source| AnalysisError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file =
        std::fs::File::create(path).map_err(|e| write_error(image::ImageError::IoError(e)))?;
    // Figures are mostly flat colour: the best compression makes them about
    // three times smaller than the default, for milliseconds more.
    let encoder = PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        CompressionType::Best,
        PngFilter::Adaptive,
    );
    image.write_with_encoder(encoder).map_err(write_error)
}

/// Draws an RGB image with each pixel as a `block x block` square whose top
/// left corner is at `(x, y)` of `area`.
pub(crate) fn draw_blocks(area: &Area, image: &RgbImage, x: i32, y: i32, block: u32) -> DrawResult {
    let b = block as i32;
    for (col, row, px) in image.enumerate_pixels() {
        let (x0, y0) = (x + col as i32 * b, y + row as i32 * b);
        area.draw(&Rectangle::new(
            [(x0, y0), (x0 + b, y0 + b)],
            RGBColor(px[0], px[1], px[2]).filled(),
        ))?;
    }
    Ok(())
}

/// Text centred horizontally on `x_centre` with its top at `y`.
pub(crate) fn centred_text(
    area: &Area,
    text: &str,
    x_centre: i32,
    y: i32,
    size: u32,
) -> DrawResult {
    let style = TextStyle::from(("sans-serif", size).into_font())
        .color(&BLACK)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
    area.draw_text(text, &style, (x_centre, y))?;
    Ok(())
}

/// The largest whole block size at which a `w x h` picture fits `max_w x max_h`.
pub(crate) fn block_size(w: u32, h: u32, max_w: u32, max_h: u32) -> u32 {
    (max_w / w.max(1)).min(max_h / h.max(1)).max(1)
}
