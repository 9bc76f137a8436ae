//! Chart axes whose ticks are chosen here rather than by plotters: round
//! numbers written with just the decimals their spacing needs, whole numbers
//! only when every value on the axis is whole, or one tick per name.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// Most intervals between ticks on an axis: the step is the first round
/// number that keeps to it.
const MAX_INTERVALS: f64 = 8.0;

/// A linear axis over `lo..hi` with ticks exactly at `ticks`, each with its
/// label.
#[derive(Debug, Clone)]
pub(crate) struct TickedAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    labels: Vec<String>,
}

impl TickedAxis {
    /// Round-number ticks over `range`; whole numbers only when `integers`.
    pub(crate) fn numbers(range: (f64, f64), integers: bool) -> Self {
        let (ticks, step) = round_ticks(range.0, range.1, integers);
        let labels = ticks.iter().map(|&t| tick_label(t, step)).collect();
        TickedAxis {
            lo: range.0,
            hi: range.1,
            ticks,
            labels,
        }
    }

    /// One tick per name at 0, 1, 2, ..., with half a step of room each side.
    pub(crate) fn names(names: &[String]) -> Self {
        TickedAxis {
            lo: -0.5,
            hi: names.len() as f64 - 0.5,
            ticks: (0..names.len()).map(|i| i as f64).collect(),
            labels: names.to_vec(),
        }
    }

    /// The label of tick `value` (empty if `value` is no tick).
    pub(crate) fn label(&self, value: f64) -> String {
        self.ticks
            .iter()
            .position(|&t| t == value)
            .map(|i| self.labels[i].clone())
            .unwrap_or_default()
    }

    pub(crate) fn ticks(&self) -> &[f64] {
        &self.ticks
    }
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    /// The ticks as bold points (labelled, with grid lines); no light ones.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Multiples of a round step (1, 2 or 5 times a power of ten; at least 1
/// when `integers`) within `[lo, hi]`, at most [`MAX_INTERVALS`] apart in
/// all, and the step.
pub(crate) fn round_ticks(lo: f64, hi: f64, integers: bool) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return (vec![lo], 1.0);
    }
    let raw = span / MAX_INTERVALS;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let step = if integers {
        step.max(1.0).round()
    } else {
        step
    };
    // A little slack so that an end on a multiple counts despite rounding.
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    // Multiples of the step, so 0.1 * 3 prints as 0.3, not 0.30000000000000004.
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, step)
}

/// `value` written with as many decimals as a tick `step` needs: none for
/// whole-number steps.
pub(crate) fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().max(0.0) as usize
    };
    // Rounding may leave -0 for a tick at zero.
    let value = if value.abs() < step * 1e-9 {
        0.0
    } else {
        value
    };
    format!("{value:.decimals$}")
}

/// Whether every finite value is a whole number (and there is one).
pub(crate) fn all_whole(values: impl Iterator<Item = f64>) -> bool {
    let mut any = false;
    for v in values.filter(|v| v.is_finite()) {
        if v.fract() != 0.0 {
            return false;
        }
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(lo: f64, hi: f64, integers: bool) -> Vec<String> {
        let (ticks, step) = round_ticks(lo, hi, integers);
        ticks.iter().map(|&t| tick_label(t, step)).collect()
    }

    #[test]
    fn whole_number_axes_have_whole_number_ticks() {
        // Sheet distances 1 to 4: a round step of 0.5 would print 1.5, 2.5.
        assert_eq!(labels(0.85, 4.15, true), ["1", "2", "3", "4"]);
        assert_eq!(labels(-0.5, 20.5, true), ["0", "5", "10", "15", "20"]);
        for label in labels(0.0, 3.0, true) {
            assert!(!label.contains('.'), "{label}");
        }
        assert!(all_whole([1.0, 2.0, f64::NAN, 16.0].into_iter()));
        assert!(!all_whole([1.0, 2.5].into_iter()));
        assert!(!all_whole(std::iter::empty()));
    }

    #[test]
    fn fractional_axes_print_the_decimals_their_step_needs() {
        assert_eq!(
            labels(0.0, 1.0, false),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(
            labels(-0.12, 0.12, false),
            ["-0.10", "-0.05", "0.00", "0.05", "0.10"]
        );
        assert_eq!(labels(55.0, 72.0, false), ["55", "60", "65", "70"]);
        assert_eq!(tick_label(-1e-17, 0.1), "0.0");
        assert_eq!(round_ticks(3.0, 3.0, false).0, [3.0]);
    }

    #[test]
    fn named_axes_put_one_tick_per_name() {
        let names: Vec<String> = ["layer1.0.conv1", "layer1.0.conv2", "fc"]
            .map(String::from)
            .to_vec();
        let axis = TickedAxis::names(&names);
        assert_eq!(axis.ticks(), [0.0, 1.0, 2.0]);
        assert_eq!(axis.label(1.0), "layer1.0.conv2");
        assert_eq!(axis.label(0.5), "");
        assert_eq!(axis.map(&0.0, (0, 300)), 50);
        assert_eq!(axis.map(&2.0, (0, 300)), 250);
    }
}
