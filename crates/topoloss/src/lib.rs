//! TopoLoss, the topographic loss of the TopoNets paper (Deb, Deb & Murty,
//! ICLR 2025), matching the authors' `topoloss` 0.0.2 package.
//!
//! Each selected layer's output units are laid on a 2-D cortical sheet
//! ([`SheetShape`]); the sheet of weight vectors is blurred by bilinear
//! down- then up-sampling ([`SheetBlur`]); the layer's loss is
//! `tau * (1 - mean cos(w, blur(w)))` ([`LayerTopoLoss`]).
//!
//! The blur is a fixed separable linear map with at most two non-zeros per
//! row on each axis, so the loss and its gradient are computed in closed form
//! on plain slices, in f32 or f64, without an autodiff graph. The crate knows
//! nothing about any deep-learning framework: the models crate hands it
//! weights and takes gradients back.

mod blur;
mod layer;
mod resample;
mod schedule;
mod sheet;
#[cfg(test)]
mod test_util;

pub use blur::SheetBlur;
pub use layer::{LayerTopoLoss, SheetSource};
pub use resample::{AxisBlur, Interpolation, SparseRows};
pub use schedule::{deserialize_optional_tau, deserialize_tau, TauSchedule};
pub use sheet::SheetShape;

/// Floating-point types the loss is computed in (f32 for training, f64 for
/// parity checks).
pub trait Real:
    num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::fmt::Debug + 'static
{
}
impl<T> Real for T where
    T: num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::fmt::Debug + 'static
{
}

/// How the losses of several layers combine into the model's TopoLoss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Mean over the selected layers, the reference's `compute(reduce_mean=True)`.
    #[default]
    Mean,
    /// Sum over the selected layers.
    Sum,
}

impl Reduction {
    /// Weight that each layer's loss (and gradient) gets in the total.
    pub fn layer_weight(&self, layers: usize) -> f64 {
        match self {
            Reduction::Mean if layers > 0 => 1.0 / layers as f64,
            _ => 1.0,
        }
    }
}

/// Everything that can be wrong with a TopoLoss request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TopoError {
    #[error("a layer with no output units has no cortical sheet")]
    NoUnits,
    #[error("the blur factor along the {axis} must be a finite number >= 1 (it is a down-sampling factor), got {factor}")]
    InvalidFactor { axis: &'static str, factor: f64 },
    #[error("{}", factor_too_large_message(axis, *factor, *len))]
    FactorLargerThanSheet {
        axis: &'static str,
        factor: f64,
        len: usize,
    },
    #[error("unknown interpolation {0:?}: use \"bilinear\" or \"nearest\"")]
    UnknownInterpolation(String),
    #[error("unknown sheet source {0:?}: use \"weight\", \"bias\" or \"input\"")]
    UnknownSource(String),
    #[error("{what} has {got} values, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("invalid tau schedule: {0}")]
    InvalidSchedule(String),
    /// `error` is in the message and not a `source`, so a printed chain
    /// does not repeat it.
    #[error("layer {layer}: {error}")]
    InLayer {
        layer: String,
        error: Box<TopoError>,
    },
}

impl TopoError {
    /// The same error, naming the layer it concerns.
    pub fn in_layer(self, layer: impl Into<String>) -> TopoError {
        TopoError::InLayer {
            layer: layer.into(),
            error: Box::new(self),
        }
    }
}

fn factor_too_large_message(axis: &str, factor: f64, len: usize) -> String {
    let hint = if len == 1 {
        "; its unit count is prime, so its sheet is 1 x N: use factor 1 along the height or leave this layer out"
    } else {
        "; use a factor no larger than the sheet side"
    };
    format!("the blur factor {factor} along the {axis} is larger than the sheet's {axis} of {len}{hint}")
}
