//! Measurements of topographic vision models, independent of any deep-learning
//! backend: the analyses of TopoNets (Deb, Deb & Murty, ICLR 2025) and its
//! peers (TDANN), computed on plain `f32` slices with explicit shapes.
//!
//! * [`pca`] and [`sheet_image`]: pictures of a layer's cortical sheet, each
//!   unit coloured by the first three principal components of its weights.
//! * [`smoothness`]: cosine similarity of unit weights against sheet distance,
//!   and a single smoothness score per layer.
//! * [`dimensionality`]: streaming response covariance and the effective
//!   dimensionality (participation ratio) of a layer.
//! * [`selectivity`]: per-unit Welch t maps of category selectivity, and the
//!   correlation / SSIM between two maps.
//! * [`prune`]: L1 unstructured pruning masks and sheet down-sampling, the two
//!   efficiency probes.
//! * [`plots`]: line charts, labelled scatter (Pareto) plots and sheet maps
//!   with colour bars: [`Figure`]s, written as PNG (at any scale) and SVG.
//!
//! A layer's unit weights are a row-major `[units, e]` slice: a conv weight
//! `[out, in, kh, kw]` flattened per output unit, or a linear weight as is.
//! Unit `u` sits on the sheet `topoloss::SheetShape::for_units(units)` at row
//! `u / width`, column `u % width`. The models crate turns checkpoints into
//! such slices; this crate never sees a tensor.

mod axis;
pub mod dimensionality;
mod error;
mod figure;
mod font;
mod linalg;
pub mod pca;
pub mod plots;
pub mod prune;
pub mod selectivity;
pub mod sheet_image;
pub mod smoothness;
#[cfg(test)]
mod testutil;

pub use error::AnalysisError;
pub use figure::{svg_texts, Figure, FigureFiles, DEFAULT_PNG_SCALE, MAX_PNG_SCALE};
pub use font::{ensure_font, font_path, FONT_ENV};
pub use topoloss::SheetShape;

/// Result of every fallible analysis.
pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;

/// Checks that `values` holds `rows x cols` numbers.
pub(crate) fn check_len(what: &'static str, values: usize, rows: usize, cols: usize) -> Result<()> {
    let expected = rows
        .checked_mul(cols)
        .ok_or(AnalysisError::TooLarge { what })?;
    if values != expected {
        return Err(AnalysisError::ShapeMismatch {
            what,
            expected,
            got: values,
            rows,
            cols,
        });
    }
    Ok(())
}
