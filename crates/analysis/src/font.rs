//! The one font every figure uses, loaded at run time so that no font file is
//! compiled into the binary and no system font library is needed.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{AnalysisError, Result};

/// Environment variable naming a `.ttf` file to use instead of DejaVu Sans.
pub const FONT_ENV: &str = "TOPOTRAIN_FONT";

/// Where Debian's `fonts-dejavu-core` puts DejaVu Sans.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The font file figures are drawn with: `$TOPOTRAIN_FONT`, else DejaVu Sans.
pub fn font_path() -> PathBuf {
    std::env::var_os(FONT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FONT))
}

/// Registers the font with plotters as "sans-serif", once per process.
///
/// plotters keeps `&'static` font bytes, so the file is read once and leaked:
/// a few hundred kilobytes for the life of the process.
pub fn ensure_font() -> Result<()> {
    // Only success is cached, so a later call after installing the font works.
    static REGISTERED: OnceLock<()> = OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let path = font_path();
    let bytes = std::fs::read(&path).map_err(|source| AnalysisError::FontMissing {
        path: path.clone(),
        source,
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| AnalysisError::FontInvalid { path })?;
    let _ = REGISTERED.set(());
    Ok(())
}
