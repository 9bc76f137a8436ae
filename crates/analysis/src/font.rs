//! The one font every figure uses, loaded at run time so that no font file is
//! compiled into the binary and no system font library is needed, and the
//! text layout and rasterizer that PNG figures are drawn with.
//!
//! plotters' own `ab_glyph` text drawing offsets each glyph by
//! `(size / 2 + top) as i32`, which rounds toward zero: glyphs whose top is
//! above that line move down, short ones (a period) move up, a pixel or two
//! apart in small labels; it also drops each glyph's left bearing and
//! truncates the caret, so letters drift apart. Here glyphs sit on one
//! baseline at their exact sub-pixel caret positions, with the anchors of
//! plotters' SVG backend, so a PNG and its SVG place text alike.

use std::path::PathBuf;
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use crate::{AnalysisError, Result};

/// Environment variable naming a `.ttf` file to use instead of DejaVu Sans.
pub const FONT_ENV: &str = "TOPOTRAIN_FONT";

/// Where Debian's `fonts-dejavu-core` puts DejaVu Sans.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// A plotters font "size" is this many ems: its SVG backend writes
/// `font-size = size / 1.24`, and PNG text follows it.
const SIZE_PER_EM: f32 = 1.24;

/// Baseline below a top-anchored text's anchor, in ems (plotters' SVG `dy`).
const TOP_BASELINE_EM: f32 = 0.76;

/// The font file figures are drawn with: `$TOPOTRAIN_FONT`, else DejaVu Sans.
pub fn font_path() -> PathBuf {
    std::env::var_os(FONT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FONT))
}

/// Loads the font once per process; an error names the file and the fix.
///
/// The font bytes are read once and leaked (a few hundred kilobytes for the
/// life of the process), so the parsed font can be shared as `'static`.
pub fn ensure_font() -> Result<()> {
    font().map(|_| ())
}

/// The loaded font. Only success is cached, so a later call after
/// installing the font works.
pub(crate) fn font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    if let Some(font) = FONT.get() {
        return Ok(font);
    }
    let path = font_path();
    let bytes = std::fs::read(&path).map_err(|source| AnalysisError::FontMissing {
        path: path.clone(),
        source,
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let parsed = FontRef::try_from_slice(bytes).map_err(|_| AnalysisError::FontInvalid { path })?;
    Ok(FONT.get_or_init(|| parsed))
}

/// One line of text laid out at a size: glyph carets on a baseline at y = 0.
struct Line {
    glyphs: Vec<ab_glyph::Glyph>,
    width: f32,
    em: f32,
    x_height: f32,
}

fn lay_out(font: &FontRef<'static>, text: &str, size: f32) -> Line {
    let em = size / SIZE_PER_EM;
    let units_per_em = font.units_per_em().unwrap_or(1000.0);
    let scale = PxScale::from(em * font.height_unscaled() / units_per_em);
    let scaled = font.as_scaled(scale);
    let mut caret = 0.0;
    let mut previous = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        glyphs.push(id.with_scale_and_position(scale, point(caret, 0.0)));
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    // The height of a lower-case x, as SVG's `ex`; half an em without one.
    let x_height = font
        .outline(font.glyph_id('x'))
        .map(|o| o.bounds.max.y * em / units_per_em)
        .filter(|h| *h > 0.0)
        .unwrap_or(em / 2.0);
    Line {
        glyphs,
        width: caret,
        em,
        x_height,
    }
}

/// Width and height, in pixels, of `text` at plotters font `size`.
pub(crate) fn text_size(text: &str, size: f64) -> Result<(u32, u32)> {
    let font = font()?;
    let line = lay_out(font, text, size as f32);
    let units_per_em = font.units_per_em().unwrap_or(1000.0);
    let height = line.em * font.height_unscaled() / units_per_em;
    Ok((line.width.ceil() as u32, height.ceil() as u32))
}

/// Calls `paint(x, y, coverage)` for every pixel that `text` at plotters font
/// `size` covers, relative to its anchor point: `anchor` says which point of
/// the text that is (as in plotters' SVG backend), and `transform` rotates
/// the text around it.
pub(crate) fn rasterize(
    text: &str,
    size: f64,
    anchor: Pos,
    transform: FontTransform,
    mut paint: impl FnMut(i32, i32, f32),
) -> Result<()> {
    let font = font()?;
    let line = lay_out(font, text, size as f32);
    let dx = match anchor.h_pos {
        HPos::Left => 0.0,
        HPos::Center => -line.width / 2.0,
        HPos::Right => -line.width,
    };
    let baseline = match anchor.v_pos {
        VPos::Top => TOP_BASELINE_EM * line.em,
        VPos::Center => line.x_height / 2.0,
        VPos::Bottom => -line.x_height / 2.0,
    };
    for mut glyph in line.glyphs {
        glyph.position = point(glyph.position.x + dx, baseline);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // a space
        };
        let bounds = outline.px_bounds();
        let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
        outline.draw(|x, y, coverage| {
            let (x, y) = transform.transform(left + x as i32, top + y as i32);
            paint(x, y, coverage.min(1.0));
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pixels `text` touches (any visible coverage), top-anchored at
    /// the origin.
    fn covered(text: &str, size: f64) -> Vec<(i32, i32)> {
        let mut pixels = Vec::new();
        rasterize(
            text,
            size,
            Pos::new(HPos::Left, VPos::Top),
            FontTransform::None,
            |x, y, c| {
                if c > 0.02 {
                    pixels.push((x, y));
                }
            },
        )
        .unwrap();
        pixels
    }

    #[test]
    fn periods_sit_on_the_baseline_at_small_sizes() {
        ensure_font().expect("the analyses' font (scripts/setup.sh installs it)");
        for size in [9.0, 11.0, 13.0, 16.0, 22.0, 40.0] {
            // "l" spans ascender to baseline; the period's bottom must be
            // the l's, not half-way up.
            let l = covered("l", size);
            let with_period = covered("l.", size);
            let l_right = l.iter().map(|p| p.0).max().unwrap();
            let l_bottom = l.iter().map(|p| p.1).max().unwrap();
            let period: Vec<_> = with_period.iter().filter(|p| p.0 > l_right + 1).collect();
            assert!(!period.is_empty(), "size {size}: no period drawn");
            let period_bottom = period.iter().map(|p| p.1).max().unwrap();
            let period_top = period.iter().map(|p| p.1).min().unwrap();
            assert_eq!(
                period_bottom, l_bottom,
                "size {size}: the period's bottom row is not the baseline's"
            );
            let l_top = l.iter().map(|p| p.1).min().unwrap();
            assert!(
                period_top > l_top + (l_bottom - l_top) / 2,
                "size {size}: the period reaches above mid-height"
            );
        }
    }

    #[test]
    fn anchors_place_and_rotate_the_text() {
        if ensure_font().is_err() {
            return;
        }
        let (w, h) = text_size("layer1.0.conv1", 13.0).unwrap();
        assert!(w > 60 && w < 120 && h > 8 && h < 16, "{w} x {h}");
        let extent = |pos: Pos, transform: FontTransform| {
            let mut xs = (i32::MAX, i32::MIN);
            let mut ys = (i32::MAX, i32::MIN);
            rasterize("layer1.0.conv1", 13.0, pos, transform, |x, y, _| {
                xs = (xs.0.min(x), xs.1.max(x));
                ys = (ys.0.min(y), ys.1.max(y));
            })
            .unwrap();
            (xs, ys)
        };
        let (xs, ys) = extent(Pos::new(HPos::Center, VPos::Top), FontTransform::None);
        assert!((xs.0 + xs.1).abs() <= 2, "centred: {xs:?}");
        assert!(ys.0 >= 0, "below a top anchor: {ys:?}");
        // Rotated a quarter turn anticlockwise and right-anchored: the text
        // runs upward and ends at the anchor, as a rotated tick label.
        let (xs, ys) = extent(
            Pos::new(HPos::Right, VPos::Center),
            FontTransform::Rotate270,
        );
        assert!(ys.0 >= 0 && ys.1 as u32 <= w + 1, "{ys:?}");
        assert!(xs.1 - xs.0 < h as i32 + 2, "{xs:?}");
    }
}
