//! Renders each kind of figure from synthetic weights and responses, to look
//! at them: `cargo run -p analysis --example demo_figures -- OUT_DIR`.
//!
//! Three sheets of 512 units with 3x3x8 weights: random (like an untrained
//! or tau = 0 layer, whose unit order is arbitrary), the random sheet blurred
//! by TopoLoss's factor-4 blur, and a sheet varying smoothly with position.

use std::path::PathBuf;

use analysis::plots::{line_chart, Labels, Series};
use analysis::sheet_image::{render_sheet, render_sheet_grid, render_value_map, SheetPanel};
use analysis::{pca, selectivity, smoothness, SheetShape, DEFAULT_PNG_SCALE};
use topoloss::{Interpolation, SheetBlur};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "demo-figures".into()),
    );
    let sheet = SheetShape::for_units(512)?;
    let e = 72;
    let mut state = 1u64;
    let mut normal = move || {
        // Sum of 12 uniforms: a cheap, dependency-free near-normal.
        (0..12)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64
            })
            .sum::<f64>() as f32
            - 6.0
    };
    let random: Vec<f32> = (0..sheet.units() * e).map(|_| normal()).collect();
    let blurred = SheetBlur::new(sheet, 4.0, 4.0, Interpolation::Bilinear)?.apply(&random, e);
    let smooth: Vec<f32> = (0..sheet.units())
        .flat_map(|u| {
            let (r, c) = sheet.position(u);
            (0..e).map(move |j| {
                (0.2 * r as f32 * (1.0 + (j % 3) as f32 * 0.3) + 0.15 * c as f32 + j as f32).sin()
            })
        })
        .collect();

    let mut panels = Vec::new();
    let mut curves = Vec::new();
    for (name, weights) in [
        ("random", &random),
        ("blurred random", &blurred),
        ("smooth", &smooth),
    ] {
        let colours = pca::sheet_pca_colors(weights, e, sheet)?;
        let curve = smoothness::smoothness(weights, e, sheet)?;
        println!("{name}: smoothness score {:.3}", curve.score);
        panels.push(SheetPanel {
            title: format!("{name} ({sheet})"),
            image: colours.clone(),
        });
        curves.push(Series {
            label: format!("{name} (score {:.2})", curve.score),
            points: curve
                .distances
                .iter()
                .copied()
                .zip(curve.mean_cosine.iter().copied())
                .collect(),
        });
        if name == "blurred random" {
            render_sheet(&colours, "blurred random: first 3 PCs of unit weights")
                .save(&out.join("sheet.png"), DEFAULT_PNG_SCALE)?;
        }
    }
    render_sheet_grid(&panels, "Sheets coloured by weight PCs", 3)?
        .save(&out.join("grid.png"), DEFAULT_PNG_SCALE)?;
    line_chart(
        Labels {
            title: "Weight similarity against sheet distance",
            x: "distance on the sheet (units)",
            y: "mean cosine similarity",
        },
        &curves,
    )?
    .save(&out.join("smoothness.png"), DEFAULT_PNG_SCALE)?;

    // Selectivity: 40 images of 2 categories; the blurred sheet's first
    // weight component decides how much a unit prefers category 0.
    let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
    let responses: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..sheet.units()).map(move |u| (u, l)))
        .map(|(u, l)| normal() + if l == 0 { 3.0 * blurred[u * e] } else { 0.0 })
        .collect();
    let t = selectivity::welch_t(&responses, sheet.units(), &labels, 0)?;
    render_value_map(&t, sheet, "Category 0 vs rest", "Welch t")?
        .save(&out.join("selectivity.png"), DEFAULT_PNG_SCALE)?;
    println!("figures in {}", out.display());
    Ok(())
}
