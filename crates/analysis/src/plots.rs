//! Line charts and labelled scatter plots: accuracy against parameters kept
//! (pruning, down-sampling), smoothness curves, effective dimensionality
//! against tau, and the accuracy-smoothness Pareto plot of a tau sweep.
//! Axes of whole numbers get whole-number ticks; layers get their names.

use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use crate::axis::{all_whole, TickedAxis};
use crate::figure::{Area, Canvas, DrawResult, Figure, LABEL_SIZE, TICK_SIZE, TITLE_SIZE};
use crate::font::text_size;
use crate::{AnalysisError, Result};

const WIDTH: u32 = 800;
const HEIGHT: u32 = 560;

/// One named curve.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Title and axis names of a chart.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// One point of a scatter plot with its own text (e.g. "tau=5").
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelledPoint {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// Qualitative colours (Tableau 10) for up to ten series; more cycle.
fn palette(i: usize) -> RGBColor {
    const COLOURS: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = COLOURS[i % COLOURS.len()];
    RGBColor(r, g, b)
}

/// The finite data range of `values`, widened by 5% (and to a unit width when
/// all values are equal) so points do not sit on the frame.
fn padded_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5_f64.max(0.05 * lo.abs())
    };
    Some((lo - pad, hi + pad))
}

type Chart<'a, 'b> = ChartContext<'a, Canvas<'b>, Cartesian2d<TickedAxis, TickedAxis>>;

/// Room between the plot and the x axis's name, figure pixels.
const X_LABEL_AREA: u32 = 50;

/// Titled axes with named, labelled axes and grid lines at the ticks. With
/// `rotated_x`, the x tick labels are drawn turned a quarter (reading
/// upward, ending under their tick) in a label area `rotated_x` pixels tall.
fn axes<'a, 'b>(
    area: &'a Area<'b>,
    labels: Labels,
    x: TickedAxis,
    y: TickedAxis,
    rotated_x: Option<u32>,
) -> std::result::Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let (x_for_labels, y_for_labels) = (x.clone(), y.clone());
    let mut chart = ChartBuilder::on(area)
        .caption(labels.title, ("sans-serif", TITLE_SIZE))
        .margin(15)
        .x_label_area_size(rotated_x.unwrap_or(X_LABEL_AREA))
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    let x_label = |v: &f64| {
        if rotated_x.is_some() {
            String::new()
        } else {
            x_for_labels.label(*v)
        }
    };
    let y_label = |v: &f64| y_for_labels.label(*v);
    chart
        .configure_mesh()
        .x_desc(labels.x)
        .y_desc(labels.y)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", TICK_SIZE))
        .axis_desc_style(("sans-serif", LABEL_SIZE))
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    if rotated_x.is_some() {
        let x_axis = chart.x_range();
        let y_bottom = chart.y_range().start;
        let style = TextStyle::from(("sans-serif", TICK_SIZE).into_font())
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center));
        let axis = &x_for_labels;
        for &tick in axis.ticks() {
            if x_axis.contains(&tick) {
                let (px, py) = chart.backend_coord(&(tick, y_bottom));
                area.draw_text(&axis.label(tick), &style, (px, py + 8))?;
            }
        }
    }
    Ok(chart)
}

/// The corner of the `xr x yr` plot whose quarter holds the fewest of
/// `points` (the first such of lower left, lower right, upper left, upper
/// right), so the legend box covers as little data as possible.
fn emptiest_corner(points: &[(f64, f64)], xr: (f64, f64), yr: (f64, f64)) -> SeriesLabelPosition {
    let mid = ((xr.0 + xr.1) / 2.0, (yr.0 + yr.1) / 2.0);
    let corners = [
        (SeriesLabelPosition::LowerLeft, false, false),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::UpperRight, true, true),
    ];
    let count = |right: bool, upper: bool| {
        points
            .iter()
            .filter(|p| (p.0 > mid.0) == right && (p.1 > mid.1) == upper)
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| count(right, upper))
        .map(|(position, _, _)| position)
        .unwrap_or(SeriesLabelPosition::LowerLeft)
}

/// The legend of the labelled series, at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", LABEL_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A numeric axis over the padded range of `values`, with whole-number
/// ticks when every value is whole.
fn number_axis(values: impl Iterator<Item = f64> + Clone) -> Option<TickedAxis> {
    let range = padded_range(values.clone())?;
    Some(TickedAxis::numbers(range, all_whole(values)))
}

/// Lines with point markers, one colour per series, legend when any series
/// has a label.
pub fn line_chart<'a>(labels: Labels<'a>, series: &'a [Series]) -> Result<Figure<'a>> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (Some(x), Some(y)) = (
        number_axis(xs),
        number_axis(series.iter().flat_map(|s| s.points.iter().map(|p| p.1))),
    ) else {
        return Err(AnalysisError::NothingToPlot(
            "no finite points in any series",
        ));
    };
    Ok(Figure::new(WIDTH, HEIGHT, move |area| {
        draw_lines(area, labels, series, x.clone(), y.clone(), None)
    }))
}

/// One value per name (e.g. per layer, in forward order) as a line with
/// markers, each name written under its tick.
pub fn named_line_chart<'a>(
    labels: Labels<'a>,
    names: &'a [String],
    values: &[f64],
) -> Result<Figure<'a>> {
    if names.len() != values.len() {
        return Err(AnalysisError::ShapeMismatch {
            what: "values of a named chart",
            expected: names.len(),
            got: values.len(),
            rows: names.len(),
            cols: 1,
        });
    }
    let Some(y) = number_axis(values.iter().copied()) else {
        return Err(AnalysisError::NothingToPlot("no finite values"));
    };
    let widest = names
        .iter()
        .map(|n| text_size(n, TICK_SIZE as f64).map(|(w, _)| w))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    // Names, then the axis name below them.
    let label_area = widest + 16 + 2 * LABEL_SIZE;
    let series = vec![Series {
        label: String::new(),
        points: values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64, v))
            .collect(),
    }];
    let x = TickedAxis::names(names);
    Ok(Figure::new(
        WIDTH,
        HEIGHT - X_LABEL_AREA + label_area,
        move |area| {
            draw_lines(
                area,
                labels,
                &series,
                x.clone(),
                y.clone(),
                Some(label_area),
            )
        },
    ))
}

fn draw_lines(
    area: &Area,
    labels: Labels,
    series: &[Series],
    x: TickedAxis,
    y: TickedAxis,
    rotated_x: Option<u32>,
) -> DrawResult {
    let (xr, yr) = (x.range(), y.range());
    let mut chart = axes(area, labels, x, y, rotated_x)?;
    for (i, s) in series.iter().enumerate() {
        let colour = palette(i);
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    if series.iter().any(|s| !s.label.is_empty()) {
        let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
        legend(
            &mut chart,
            emptiest_corner(&all, (xr.start, xr.end), (yr.start, yr.end)),
        )?;
    }
    Ok(())
}

/// Indices of the points no other point beats on both x and y (larger is
/// better on both), ordered by x: the Pareto front.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    // Sweep from the largest x down, keeping points that raise the best y.
    order.sort_by(|&a, &b| {
        points[b]
            .0
            .total_cmp(&points[a].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut front = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for i in order {
        if points[i].1 > best_y {
            best_y = points[i].1;
            front.push(i);
        }
    }
    front.reverse();
    front
}

/// A scatter of labelled points with their Pareto front (larger x and y are
/// better) drawn as a dashed line, like Figure 2 of the TopoNets paper.
pub fn pareto_plot<'a>(labels: Labels<'a>, points: &'a [LabelledPoint]) -> Result<Figure<'a>> {
    // Extra room on the right for the labels of the rightmost points.
    let xs = padded_range(points.iter().map(|p| p.x)).map(|(lo, hi)| (lo, hi + 0.1 * (hi - lo)));
    let (Some(xr), Some(y)) = (xs, number_axis(points.iter().map(|p| p.y))) else {
        return Err(AnalysisError::NothingToPlot("no finite points"));
    };
    let x = TickedAxis::numbers(xr, all_whole(points.iter().map(|p| p.x)));
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.x, p.y)).collect();
    let front: Vec<(f64, f64)> = pareto_front(&xy).into_iter().map(|i| xy[i]).collect();
    Ok(Figure::new(WIDTH, HEIGHT, move |area| {
        let yr = y.range();
        let mut chart = axes(area, labels, x.clone(), y.clone(), None)?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                front.clone(),
                6,
                4,
                grey.stroke_width(2),
            ))?
            .label("Pareto front")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey.stroke_width(2)));
        for (i, p) in points.iter().enumerate() {
            if !(p.x.is_finite() && p.y.is_finite()) {
                continue;
            }
            let colour = palette(i);
            // Marker with its label beside it, offset in pixels so the
            // text never covers the point.
            let marker = EmptyElement::at((p.x, p.y))
                + Circle::new((0, 0), 6, colour.filled())
                + Text::new(
                    p.label.clone(),
                    (9, -7),
                    ("sans-serif", TICK_SIZE).into_font(),
                );
            chart.draw_series(std::iter::once(marker))?;
        }
        legend(&mut chart, emptiest_corner(&xy, xr, (yr.start, yr.end)))?;
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svg_texts;
    use crate::testutil::temp_dir;

    const LABELS: Labels = Labels {
        title: "Accuracy against parameters kept",
        x: "parameters kept (%)",
        y: "top-1 accuracy (%)",
    };

    #[test]
    fn legend_goes_to_the_emptiest_corner() {
        let (xr, yr) = ((0.0, 10.0), (0.0, 10.0));
        // Points in the lower left (collapsed variants) and upper right.
        let points = [(1.0, 1.0), (2.0, 1.0), (9.0, 9.0)];
        assert!(matches!(
            emptiest_corner(&points, xr, yr),
            SeriesLabelPosition::LowerRight
        ));
        let rising = [(1.0, 1.0), (5.5, 4.0), (9.0, 9.0), (6.0, 9.0), (9.0, 2.0)];
        assert!(matches!(
            emptiest_corner(&rising, xr, yr),
            SeriesLabelPosition::UpperLeft
        ));
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let points = [
            (0.1, 70.0),
            (0.5, 68.0),
            (0.3, 65.0),
            (0.9, 60.0),
            (0.9, 55.0),
            (f64::NAN, 99.0),
        ];
        assert_eq!(pareto_front(&points), vec![0, 1, 3]);
        assert!(pareto_front(&[]).is_empty());
    }

    #[test]
    fn padded_ranges_never_collapse() {
        assert_eq!(padded_range([1.0, 3.0].into_iter()), Some((0.9, 3.1)));
        assert_eq!(padded_range([2.0].into_iter()), Some((1.5, 2.5)));
        assert_eq!(padded_range([f64::NAN].into_iter()), None);
    }

    #[test]
    fn charts_draw_their_series_in_distinct_colours() {
        if crate::ensure_font().is_err() {
            return;
        }
        let series = vec![
            Series {
                label: "tau=0".into(),
                points: vec![(100.0, 70.0), (80.0, 69.0), (50.0, 60.0), (20.0, 20.0)],
            },
            Series {
                label: "tau=50".into(),
                points: vec![(100.0, 68.0), (80.0, 68.0), (50.0, 66.0), (20.0, 50.0)],
            },
        ];
        let figure = line_chart(LABELS, &series).unwrap();
        let img = figure.to_image(1).unwrap();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let has = |c: RGBColor| img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count() > 50;
        assert!(has(palette(0)) && has(palette(1)));
        let dir = temp_dir("plots");
        let files = figure.save(&dir.join("prune.png"), 2).unwrap();
        assert_eq!(
            image::open(&files.png).unwrap().width(),
            2 * WIDTH,
            "PNG at twice the figure's size"
        );
        let svg = std::fs::read_to_string(&files.svg).unwrap();
        assert!(svg_texts(&svg).contains(&"tau=50") && svg.contains("<polyline"));
        let points: Vec<LabelledPoint> = [(0.0, 0.02, 70.1), (1.0, 0.3, 69.8), (50.0, 0.8, 65.0)]
            .iter()
            .map(|&(tau, x, y)| LabelledPoint {
                x,
                y,
                label: format!("tau={tau}"),
            })
            .collect();
        let files = pareto_plot(LABELS, &points)
            .unwrap()
            .save(&dir.join("pareto.png"), 1)
            .unwrap();
        assert!(image::open(&files.png).is_ok());
        assert!(std::fs::read_to_string(&files.svg)
            .unwrap()
            .contains("Pareto front"));
    }

    #[test]
    fn layer_axes_show_names_and_whole_axes_whole_ticks() {
        if crate::ensure_font().is_err() {
            return;
        }
        let names: Vec<String> = [
            "conv1",
            "layer1.0.conv1",
            "layer2.0.downsample.0.conv",
            "fc",
        ]
        .map(String::from)
        .to_vec();
        let figure = named_line_chart(LABELS, &names, &[3.5, 7.25, 12.0, 4.0]).unwrap();
        let svg = figure.to_svg().unwrap();
        let texts = svg_texts(&svg);
        for name in &names {
            assert!(texts.contains(&name.as_str()), "{name} not in {texts:?}");
        }
        // Taller than a plain chart by the room the longest name needs.
        assert!(figure.size().1 > HEIGHT);
        assert!(named_line_chart(LABELS, &names, &[1.0]).is_err());

        // Smoothness against whole-number sheet distances 1 to 4.
        let curve = [Series {
            label: String::new(),
            points: vec![(1.0, 0.5), (2.0, 0.3), (3.0, 0.2), (4.0, 0.1)],
        }];
        let svg = line_chart(LABELS, &curve).unwrap().to_svg().unwrap();
        let texts = svg_texts(&svg);
        for x in ["1", "2", "3", "4"] {
            assert!(texts.contains(&x), "tick {x} missing from {texts:?}");
        }
        assert!(
            !texts.contains(&"1.5") && !texts.contains(&"2.5"),
            "{texts:?}"
        );
        assert!(texts.contains(&"0.3"), "{texts:?}");
    }

    #[test]
    fn empty_charts_are_errors() {
        assert!(line_chart(LABELS, &[]).is_err());
        let nan = Series {
            label: String::new(),
            points: vec![(f64::NAN, 1.0)],
        };
        assert!(line_chart(LABELS, &[nan]).is_err());
        assert!(pareto_plot(LABELS, &[]).is_err());
    }
}
