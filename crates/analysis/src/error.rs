//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in an analysis, worded for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("{what} has {got} values, expected {expected} ({rows} x {cols})")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
        rows: usize,
        cols: usize,
    },
    #[error("{what} is too large to index on this machine")]
    TooLarge { what: &'static str },
    #[error("{what} needs at least {needed}, got {got}")]
    TooFew {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("{what} contains a NaN or infinite value; check the checkpoint or the responses")]
    NonFinite { what: &'static str },
    #[error("sparsity must be a fraction in [0, 1], got {0}")]
    InvalidSparsity(f64),
    #[error("label {label} of image {image} is out of range: there are {categories} categories")]
    LabelOutOfRange {
        image: usize,
        label: usize,
        categories: usize,
    },
    #[error("the figure has nothing to draw: {0}")]
    NothingToPlot(&'static str),
    #[error("cannot read the font {path}: {source}. Install Debian's fonts-dejavu-core or point {env} at a .ttf file", env = crate::FONT_ENV)]
    FontMissing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable TrueType/OpenType font; point {env} at another .ttf file", env = crate::FONT_ENV)]
    FontInvalid { path: PathBuf },
    #[error("PNG scale {scale} is not a whole number from 1 to {max}")]
    PngScale { scale: u32, max: u32 },
    #[error("drawing the figure failed: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(transparent)]
    Sheet(#[from] topoloss::TopoError),
}
