//! Pictures of cortical sheets: a layer's PCA colours ([`crate::pca`]), a
//! grid of all the topographic layers of a model, and maps of one value per
//! unit (selectivity) in a diverging colour map with a colour bar.

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use crate::axis::TickedAxis;
use crate::figure::{
    block_size, centred_text, draw_blocks, size_to_fit, Area, DrawResult, Figure, LABEL_SIZE,
    TICK_SIZE, TITLE_SIZE,
};
use crate::{check_len, AnalysisError, Result, SheetShape};

/// Room for a title above a picture, pixels.
const TITLE_BAND: u32 = 40;
const MARGIN: u32 = 20;

/// One picture of a grid: a layer name and its sheet colours.
#[derive(Debug, Clone)]
pub struct SheetPanel {
    pub title: String,
    pub image: RgbImage,
}

/// A sheet picture (one pixel per unit) drawn with one square block per
/// unit, at most 512 pixels a side, under `title`.
pub fn render_sheet<'a>(image: &'a RgbImage, title: &'a str) -> Figure<'a> {
    let (w, h) = image.dimensions();
    let block = block_size(w, h, 512, 512);
    let (pw, ph) = (w * block, h * block);
    let width = (pw + 2 * MARGIN).max(360);
    let height = ph + TITLE_BAND + MARGIN;
    Figure::new(width, height, move |area| {
        centred_text(area, title, width as i32 / 2, 10, TITLE_SIZE)?;
        draw_blocks(
            area,
            image,
            ((width - pw) / 2) as i32,
            TITLE_BAND as i32,
            block,
        )
    })
}

/// Side of one grid cell's picture area, pixels.
const CELL: u32 = 200;

/// All `panels` in a grid of `columns` columns under a common `title`, each
/// sheet scaled by whole blocks to fit a 200-pixel cell, its name above it.
pub fn render_sheet_grid<'a>(
    panels: &'a [SheetPanel],
    title: &'a str,
    columns: usize,
) -> Result<Figure<'a>> {
    if panels.is_empty() {
        return Err(AnalysisError::NothingToPlot(
            "no layers to draw in the grid",
        ));
    }
    let columns = columns.clamp(1, panels.len()) as u32;
    let rows = (panels.len() as u32).div_ceil(columns);
    let cell_w = CELL + MARGIN;
    let cell_h = CELL + 30 + MARGIN;
    let width = (columns * cell_w + MARGIN).max(360);
    let height = TITLE_BAND + rows * cell_h;
    Ok(Figure::new(width, height, move |area| {
        centred_text(area, title, width as i32 / 2, 10, TITLE_SIZE)?;
        for (i, panel) in panels.iter().enumerate() {
            let (col, row) = (i as u32 % columns, i as u32 / columns);
            let x0 = MARGIN / 2 + col * cell_w + MARGIN / 2;
            let y0 = TITLE_BAND + row * cell_h;
            centred_text(
                area,
                &panel.title,
                (x0 + CELL / 2) as i32,
                y0 as i32,
                size_to_fit(&panel.title, TICK_SIZE, cell_w - 4)?,
            )?;
            let fitted = fit(&panel.image, CELL);
            let (w, h) = fitted.0.dimensions();
            let (pw, ph) = (w * fitted.1, h * fitted.1);
            let x = x0 + (CELL - pw.min(CELL)) / 2;
            let y = y0 + 24 + (CELL - ph.min(CELL)) / 2;
            draw_blocks(area, &fitted.0, x as i32, y as i32, fitted.1)?;
        }
        Ok(())
    }))
}

/// The picture and block size that fit `side`: whole blocks when the sheet
/// is small enough, otherwise a nearest-neighbour shrink (a 1 x 997 sheet).
fn fit(image: &RgbImage, side: u32) -> (RgbImage, u32) {
    let (w, h) = image.dimensions();
    if w <= side && h <= side {
        return (image.clone(), block_size(w, h, side, side));
    }
    let scale = side as f64 / w.max(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale) as u32).max(1),
        ((h as f64 * scale) as u32).max(1),
    );
    (
        image::imageops::resize(image, nw, nh, image::imageops::FilterType::Nearest),
        1,
    )
}

/// Colour of `t` in [-1, 1] on a blue-white-red diverging map (the end
/// colours of matplotlib's `coolwarm`, through white so 0 reads as neutral).
pub fn diverging_color(t: f64) -> [u8; 3] {
    const BLUE: [f64; 3] = [59.0, 76.0, 192.0];
    const RED: [f64; 3] = [180.0, 4.0, 38.0];
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let end = if t < 0.0 { BLUE } else { RED };
    let a = t.abs();
    let mix = |j: usize| (255.0 * (1.0 - a) + end[j] * a).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// The end of the symmetric colour scale of a value map: the largest
/// |value|, or 1 for a map of zeros so its colour bar is still usable.
pub fn value_map_limit(values: &[f32]) -> f64 {
    let limit = values.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    if limit > 0.0 {
        limit
    } else {
        1.0
    }
}

/// A map of one value per unit (e.g. a selectivity t map) on its sheet, in
/// the diverging colour map from `-limit` to `limit` ([`value_map_limit`]),
/// with a colour bar labelled `value_label`.
pub fn render_value_map<'a>(
    values: &[f32],
    sheet: SheetShape,
    title: &'a str,
    value_label: &'a str,
) -> Result<Figure<'a>> {
    check_len("map values", values.len(), sheet.height, sheet.width)?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(AnalysisError::NonFinite { what: "map values" });
    }
    let limit = value_map_limit(values);
    let mut pixels = RgbImage::new(sheet.width as u32, sheet.height as u32);
    for (u, &v) in values.iter().enumerate() {
        let (r, c) = sheet.position(u);
        pixels.put_pixel(c as u32, r as u32, Rgb(diverging_color(v as f64 / limit)));
    }
    let (w, h) = pixels.dimensions();
    let block = block_size(w, h, 480, 480);
    let (pw, ph) = (w * block, h * block);
    let bar_width = 130;
    let width = (pw + 2 * MARGIN + bar_width).max(420);
    let height = (ph + TITLE_BAND + MARGIN).max(260);
    Ok(Figure::new(width, height, move |area| {
        centred_text(area, title, width as i32 / 2, 10, TITLE_SIZE)?;
        draw_blocks(area, &pixels, MARGIN as i32, TITLE_BAND as i32, block)?;
        let bar_area = area.margin(TITLE_BAND, MARGIN, (width - bar_width) as i32, 0);
        colour_bar(&bar_area, limit, value_label)
    }))
}

/// A vertical colour bar from `-limit` to `limit` with labelled ticks.
fn colour_bar(area: &Area, limit: f64, label: &str) -> DrawResult {
    let values = TickedAxis::numbers((-limit, limit), false);
    let tick_label = |v: &f64| values.label(*v);
    let mut chart = ChartBuilder::on(area)
        .margin(5)
        .x_label_area_size(0)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, values.clone())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_y_mesh()
        .disable_x_axis()
        .y_desc(label)
        .y_label_formatter(&tick_label)
        .label_style(("sans-serif", TICK_SIZE))
        .axis_desc_style(("sans-serif", LABEL_SIZE))
        .draw()?;
    let steps = 200;
    chart.draw_series((0..steps).map(|i| {
        let lo = -limit + 2.0 * limit * i as f64 / steps as f64;
        let hi = -limit + 2.0 * limit * (i + 1) as f64 / steps as f64;
        let [r, g, b] = diverging_color((lo + hi) / 2.0 / limit);
        Rectangle::new([(0.0, lo), (1.0, hi)], RGBColor(r, g, b).filled())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pca::sheet_pca_colors;
    use crate::svg_texts;
    use crate::testutil::{temp_dir, Rng};

    #[test]
    fn diverging_map_ends_and_middle() {
        assert_eq!(diverging_color(0.0), [255, 255, 255]);
        assert_eq!(diverging_color(-1.0), [59, 76, 192]);
        assert_eq!(diverging_color(1.0), [180, 4, 38]);
        assert_eq!(diverging_color(7.0), diverging_color(1.0));
        assert_eq!(diverging_color(f64::NAN), [255, 255, 255]);
    }

    #[test]
    fn sheet_picture_has_the_unit_colours_in_blocks() {
        let sheet = SheetShape::for_units(128).unwrap();
        let weights = Rng::new(2).normals_f32(128 * 9);
        let colours = sheet_pca_colors(&weights, 9, sheet).unwrap();
        if crate::ensure_font().is_err() {
            return;
        }
        let fig = render_sheet(&colours, "layer1.0.conv1")
            .to_image(1)
            .unwrap();
        // 16 x 8 units at 32 px per unit, centred under the title band.
        assert_eq!(fig.dimensions(), (16 * 32 + 40, 8 * 32 + 60));
        let x0 = (fig.width() - 16 * 32) / 2;
        for (u, (col, row)) in [(0u32, 0u32), (5, 3), (15, 7)].into_iter().enumerate() {
            let px = fig.get_pixel(x0 + col * 32 + 16, 40 + row * 32 + 16);
            assert_eq!(px, colours.get_pixel(col, row), "unit {u}");
        }
        // The title band has dark (text) pixels.
        assert!((0..fig.width()).any(|x| (5..35).any(|y| fig.get_pixel(x, y)[0] < 100)));
    }

    #[test]
    fn grid_and_value_map_write_pngs_and_svgs() {
        if crate::ensure_font().is_err() {
            return;
        }
        let dir = temp_dir("sheet-image");
        let panels: Vec<SheetPanel> = [64usize, 128, 256, 997]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let sheet = SheetShape::for_units(n).unwrap();
                let weights = Rng::new(i as u64).normals_f32(n * 4);
                SheetPanel {
                    title: format!("layer{i} ({sheet})"),
                    image: sheet_pca_colors(&weights, 4, sheet).unwrap(),
                }
            })
            .collect();
        let path = dir.join("grid.png");
        let files = render_sheet_grid(&panels, "all layers", 2)
            .unwrap()
            .save(&path, 1)
            .unwrap();
        let grid = image::open(&path).unwrap();
        assert_eq!(grid.width(), 2 * 220 + 20);
        let svg = std::fs::read_to_string(files.svg).unwrap();
        assert!(svg_texts(&svg).contains(&"layer3 (1 x 997)"));

        let sheet = SheetShape::for_units(256).unwrap();
        let values: Vec<f32> = (0..256).map(|u| (u as f32 - 128.0) / 10.0).collect();
        let path = dir.join("map.png");
        render_value_map(&values, sheet, "faces vs rest", "Welch t")
            .unwrap()
            .save(&path, 1)
            .unwrap();
        let map = image::open(&path).unwrap().to_rgb8();
        // First unit sets the limit (-12.8): full blue; the last is 12.7.
        assert_eq!(map.get_pixel(21, 41).0, diverging_color(-1.0));
        let block = 480 / 16;
        assert_eq!(
            map.get_pixel(20 + 16 * block - 2, 40 + 16 * block - 2).0,
            diverging_color(12.7 / 12.8)
        );
        assert!(render_sheet_grid(&[], "none", 2).is_err());
        assert!(render_value_map(&[0.0; 3], sheet, "x", "t").is_err());
        assert_eq!(value_map_limit(&values), 12.8f32 as f64);
        assert_eq!(value_map_limit(&[0.0; 4]), 1.0);
    }
}
