//! The cortical sheet: where each output unit of a layer sits in 2-D.

use crate::TopoError;

/// Height and width of the cortical sheet of a layer.
///
/// A layer with `n` units gets `height` = the largest divisor of `n` that is
/// `<= sqrt(n)`, and `width = n / height`, exactly as the reference's
/// `find_cortical_sheet_size`. Unit `u` sits at row `u / width`, column
/// `u % width` (row-major), so a weight tensor `[out, ...]` reshapes to
/// `[height, width, e]` without moving any data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SheetShape {
    pub height: usize,
    pub width: usize,
}

impl SheetShape {
    /// The sheet of a layer with `units` output units.
    pub fn for_units(units: usize) -> Result<Self, TopoError> {
        if units == 0 {
            return Err(TopoError::NoUnits);
        }
        // Integer square root without floating-point rounding surprises.
        let mut height = (units as f64).sqrt() as usize;
        while height * height > units {
            height -= 1;
        }
        while (height + 1) * (height + 1) <= units {
            height += 1;
        }
        while !units.is_multiple_of(height) {
            height -= 1;
        }
        Ok(SheetShape {
            height,
            width: units / height,
        })
    }

    /// Number of units on the sheet.
    pub fn units(&self) -> usize {
        self.height * self.width
    }

    /// Row and column of unit `u`.
    pub fn position(&self, unit: usize) -> (usize, usize) {
        (unit / self.width, unit % self.width)
    }
}

impl std::fmt::Display for SheetShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {}", self.height, self.width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_sizes_match_the_reference_rule() {
        let cases = [
            (64, 8, 8),
            (128, 8, 16),
            (256, 16, 16),
            (512, 16, 32),
            (1000, 25, 40),
            (120, 10, 12),
            (96, 8, 12),
            (3072, 48, 64),
            (2048, 32, 64),
            (7, 1, 7),
            (1, 1, 1),
        ];
        for (units, height, width) in cases {
            let shape = SheetShape::for_units(units).unwrap();
            assert_eq!(
                (shape.height, shape.width),
                (height, width),
                "{units} units"
            );
        }
    }

    #[test]
    fn zero_units_is_an_error() {
        assert!(SheetShape::for_units(0).is_err());
    }

    #[test]
    fn positions_are_row_major() {
        let shape = SheetShape::for_units(12).unwrap();
        assert_eq!(shape.position(0), (0, 0));
        assert_eq!(shape.position(5), (1, 1));
        assert_eq!(shape.position(11), (2, 3));
    }
}
