//! Shared drawing plumbing: a [`Figure`] is drawn by plotters on a
//! [`Canvas`], either pixels (written as PNG by `image`, as plotters' own
//! encoder would pull a second version of `image` into the build) at any
//! whole-number scale, or SVG. Both place text with [`crate::font`].

use std::error::Error;
use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use crate::font;
use crate::{AnalysisError, Result};

pub(crate) type Area<'a> = DrawingArea<Canvas<'a>, Shift>;
pub(crate) type DrawResult = std::result::Result<(), Box<dyn Error>>;

/// Font sizes (plotters units: 1.24 em), shared by all figures so they read alike.
pub(crate) const TITLE_SIZE: u32 = 24;
pub(crate) const LABEL_SIZE: u32 = 19;
pub(crate) const TICK_SIZE: u32 = 16;

/// PNG pixels per figure pixel unless asked otherwise: a 800 x 560 chart
/// becomes 1600 x 1120, sharp in print at a column's width.
pub const DEFAULT_PNG_SCALE: u32 = 2;
/// The largest PNG scale accepted.
pub const MAX_PNG_SCALE: u32 = 8;

type DrawFn<'a> = dyn for<'b> Fn(&Area<'b>) -> DrawResult + 'a;

/// A figure of `width x height` figure pixels and how to draw it; draw it as
/// PNG pixels ([`Figure::to_image`]), SVG ([`Figure::to_svg`]) or both into
/// files ([`Figure::save`]).
pub struct Figure<'a> {
    width: u32,
    height: u32,
    draw: Box<DrawFn<'a>>,
}

/// The files [`Figure::save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FigureFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
}

impl<'a> Figure<'a> {
    pub(crate) fn new(
        width: u32,
        height: u32,
        draw: impl for<'b> Fn(&Area<'b>) -> DrawResult + 'a,
    ) -> Self {
        Figure {
            width,
            height,
            draw: Box::new(draw),
        }
    }

    /// Width and height in figure pixels (PNG pixels at scale 1).
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The figure on a white canvas, `scale` PNG pixels per figure pixel.
    pub fn to_image(&self, scale: u32) -> Result<RgbImage> {
        check_scale(scale)?;
        font::ensure_font()?;
        let (width, height) = (self.width * scale, self.height * scale);
        let mut buffer = vec![255u8; width as usize * height as usize * 3];
        {
            let pixels = BitMapBackend::with_buffer(&mut buffer, (width, height));
            let canvas = Canvas::Pixels { pixels, scale };
            self.paint(canvas.into_drawing_area())?;
        }
        RgbImage::from_raw(width, height, buffer).ok_or(AnalysisError::Draw("canvas size".into()))
    }

    /// The figure as an SVG document; text stays text.
    pub fn to_svg(&self) -> Result<String> {
        font::ensure_font()?;
        let mut svg = String::new();
        {
            let canvas = Canvas::Svg(SVGBackend::with_string(&mut svg, (self.width, self.height)));
            let root = canvas.into_drawing_area();
            root.fill(&WHITE)
                .map_err(|e| AnalysisError::Draw(e.to_string()))?;
            self.paint(root)?;
        }
        Ok(svg)
    }

    fn paint(&self, root: Area) -> Result<()> {
        (self.draw)(&root).map_err(|e| AnalysisError::Draw(e.to_string()))?;
        root.present()
            .map_err(|e| AnalysisError::Draw(e.to_string()))
    }

    /// Writes the figure as PNG to `png` (`png_scale` pixels per figure
    /// pixel) and as SVG beside it (same name, `.svg`), creating the folder.
    pub fn save(&self, png: &Path, png_scale: u32) -> Result<FigureFiles> {
        let svg = png.with_extension("svg");
        let image = self.to_image(png_scale)?;
        if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| write_error(png, e))?;
        }
        let file = std::fs::File::create(png).map_err(|e| write_error(png, e))?;
        // Figures are mostly flat colour: the best compression makes them about
        // three times smaller than the default, for milliseconds more.
        let encoder = PngEncoder::new_with_quality(
            std::io::BufWriter::new(file),
            CompressionType::Best,
            PngFilter::Adaptive,
        );
        image
            .write_with_encoder(encoder)
            .map_err(|source| AnalysisError::Write {
                path: png.to_path_buf(),
                source,
            })?;
        std::fs::write(&svg, self.to_svg()?).map_err(|e| write_error(&svg, e))?;
        Ok(FigureFiles {
            png: png.to_path_buf(),
            svg,
        })
    }
}

/// The text of each `<text>` element of an SVG that [`Figure::to_svg`]
/// wrote, in drawing order: what a reader of the figure sees written.
pub fn svg_texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(text, _)| text.trim())
        .collect()
}

fn write_error(path: &Path, source: std::io::Error) -> AnalysisError {
    AnalysisError::Write {
        path: path.to_path_buf(),
        source: image::ImageError::IoError(source),
    }
}

fn check_scale(scale: u32) -> Result<()> {
    if (1..=MAX_PNG_SCALE).contains(&scale) {
        Ok(())
    } else {
        Err(AnalysisError::PngScale {
            scale,
            max: MAX_PNG_SCALE,
        })
    }
}

/// What a [`Canvas`] failed at.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CanvasError(String);

/// Where a figure is drawn: plotters' bitmap backend with every coordinate,
/// stroke and font size multiplied by `scale`, or its SVG backend. Text on
/// both is measured, and on pixels drawn, by [`crate::font`].
pub(crate) enum Canvas<'a> {
    Pixels {
        pixels: BitMapBackend<'a>,
        scale: u32,
    },
    Svg(SVGBackend<'a>),
}

type CanvasResult = std::result::Result<(), DrawingErrorKind<CanvasError>>;

fn lift<E: Error + Send + Sync>(
    result: std::result::Result<(), DrawingErrorKind<E>>,
) -> CanvasResult {
    result.map_err(|e| match e {
        DrawingErrorKind::DrawingError(e) => {
            DrawingErrorKind::DrawingError(CanvasError(e.to_string()))
        }
        DrawingErrorKind::FontError(e) => DrawingErrorKind::FontError(e),
    })
}

/// A style with its stroke `scale` times wider.
struct Wider<'s, S>(&'s S, u32);

impl<S: BackendStyle> BackendStyle for Wider<'_, S> {
    fn color(&self) -> BackendColor {
        self.0.color()
    }
    fn stroke_width(&self) -> u32 {
        self.0.stroke_width() * self.1
    }
}

/// The centre of figure pixel `p` on a canvas of `scale`.
fn centre(p: BackendCoord, scale: u32) -> BackendCoord {
    let s = scale as i32;
    (p.0 * s + s / 2, p.1 * s + s / 2)
}

/// The corner of figure pixel `p` on a canvas of `scale`.
fn corner(p: BackendCoord, scale: u32) -> BackendCoord {
    (p.0 * scale as i32, p.1 * scale as i32)
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = CanvasError;

    fn get_size(&self) -> (u32, u32) {
        match self {
            Canvas::Pixels { pixels, scale } => {
                let (w, h) = pixels.get_size();
                (w / scale, h / scale)
            }
            Canvas::Svg(svg) => svg.get_size(),
        }
    }

    fn ensure_prepared(&mut self) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, .. } => lift(pixels.ensure_prepared()),
            Canvas::Svg(svg) => lift(svg.ensure_prepared()),
        }
    }

    fn present(&mut self) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, .. } => lift(pixels.present()),
            Canvas::Svg(svg) => lift(svg.present()),
        }
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, scale } => {
                let (x, y) = corner(point, *scale);
                let s = *scale as i32;
                lift(pixels.draw_rect((x, y), (x + s, y + s), &color, true))
            }
            Canvas::Svg(svg) => lift(svg.draw_pixel(point, color)),
        }
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, scale } => lift(pixels.draw_line(
                centre(from, *scale),
                centre(to, *scale),
                &Wider(style, *scale),
            )),
            Canvas::Svg(svg) => lift(svg.draw_line(from, to, style)),
        }
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> CanvasResult {
        match self {
            // A filled rectangle covers whole pixels; an outline runs
            // through pixel centres like a line.
            Canvas::Pixels { pixels, scale } if fill => lift(pixels.draw_rect(
                corner(upper_left, *scale),
                corner(bottom_right, *scale),
                style,
                true,
            )),
            Canvas::Pixels { pixels, scale } => lift(pixels.draw_rect(
                centre(upper_left, *scale),
                centre(bottom_right, *scale),
                &Wider(style, *scale),
                false,
            )),
            Canvas::Svg(svg) => lift(svg.draw_rect(upper_left, bottom_right, style, fill)),
        }
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, scale } => {
                let s = *scale;
                lift(pixels.draw_path(path.into_iter().map(|p| centre(p, s)), &Wider(style, s)))
            }
            Canvas::Svg(svg) => lift(svg.draw_path(path, style)),
        }
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, scale } => lift(pixels.draw_circle(
                centre(center, *scale),
                radius * *scale,
                &Wider(style, *scale),
                fill,
            )),
            Canvas::Svg(svg) => lift(svg.draw_circle(center, radius, style, fill)),
        }
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, scale } => {
                let s = *scale;
                lift(pixels.fill_polygon(vert.into_iter().map(|p| centre(p, s)), style))
            }
            Canvas::Svg(svg) => lift(svg.fill_polygon(vert, style)),
        }
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> CanvasResult {
        match self {
            Canvas::Pixels { pixels, scale } => {
                let color = style.color();
                if color.alpha == 0.0 {
                    return Ok(());
                }
                let (x0, y0) = corner(pos, *scale);
                let mut painted = Ok(());
                font::rasterize(
                    text,
                    style.size() * *scale as f64,
                    style.anchor(),
                    style.transform(),
                    |x, y, coverage| {
                        if painted.is_ok() {
                            let ink = BackendColor {
                                alpha: color.alpha * coverage as f64,
                                rgb: color.rgb,
                            };
                            painted = pixels.draw_pixel((x0 + x, y0 + y), ink);
                        }
                    },
                )
                .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
                lift(painted)
            }
            Canvas::Svg(svg) => lift(svg.draw_text(text, style, pos)),
        }
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<CanvasError>> {
        font::text_size(text, style.size()).map_err(|e| DrawingErrorKind::FontError(Box::new(e)))
    }
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

/// `size`, or the largest smaller size at which `text` is at most
/// `max_width` wide (a long layer name over a narrow panel).
pub(crate) fn size_to_fit(text: &str, size: u32, max_width: u32) -> Result<u32> {
    let (width, _) = font::text_size(text, size as f64)?;
    if width <= max_width {
        return Ok(size);
    }
    Ok((size as u64 * max_width as u64 / width as u64).max(1) as u32)
}

/// The largest whole block size at which a `w x h` picture fits `max_w x max_h`.
pub(crate) fn block_size(w: u32, h: u32, max_w: u32, max_h: u32) -> u32 {
    (max_w / w.max(1)).min(max_h / h.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::temp_dir;

    fn labelled_box() -> Figure<'static> {
        Figure::new(200, 60, |area| {
            area.draw(&Rectangle::new([(10, 10), (30, 30)], RED.filled()))?;
            centred_text(area, "layer1.0.conv1", 120, 20, TICK_SIZE)
        })
    }

    #[test]
    fn scaled_pixels_cover_the_same_figure() {
        if font::ensure_font().is_err() {
            return;
        }
        let figure = labelled_box();
        let one = figure.to_image(1).unwrap();
        let three = figure.to_image(3).unwrap();
        assert_eq!(three.dimensions(), (600, 180));
        // The filled square is exactly three times larger.
        let red = |img: &RgbImage| img.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        assert_eq!(red(&one), 20 * 20);
        assert_eq!(red(&three), 60 * 60);
        // Text drawn at three times the size has about nine times the ink.
        let ink = |img: &RgbImage| img.pixels().filter(|p| p.0[1] < 128).count() - red(img);
        let ratio = ink(&three) as f64 / ink(&one) as f64;
        assert!((6.0..12.0).contains(&ratio), "{ratio}");
        assert!(figure.to_image(0).is_err());
        assert!(figure.to_image(MAX_PNG_SCALE + 1).is_err());
    }

    #[test]
    fn long_text_shrinks_to_fit() {
        if font::ensure_font().is_err() {
            return;
        }
        assert_eq!(size_to_fit("fc", TICK_SIZE, 200).unwrap(), TICK_SIZE);
        let long = "layer2.0.downsample.0.conv.with.a.long.suffix";
        let size = size_to_fit(long, TICK_SIZE, 200).unwrap();
        assert!(size < TICK_SIZE);
        assert!(font::text_size(long, size as f64).unwrap().0 <= 200);
    }

    #[test]
    fn save_writes_a_png_and_an_svg_with_the_text() {
        if font::ensure_font().is_err() {
            return;
        }
        let dir = temp_dir("figure");
        let files = labelled_box()
            .save(&dir.join("box.png"), DEFAULT_PNG_SCALE)
            .unwrap();
        assert_eq!(files.svg, dir.join("box.svg"));
        let png = image::open(&files.png).unwrap();
        assert_eq!((png.width(), png.height()), (400, 120));
        let svg = std::fs::read_to_string(&files.svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg_texts(&svg), ["layer1.0.conv1"]);
        assert!(svg.contains(r#"width="200""#) && svg.contains("<rect"));
    }
}
