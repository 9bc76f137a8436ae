//! Helpers shared by the unit tests.

/// Deterministic values in [-0.5, 0.5) (a 64-bit LCG), so tests need no RNG crate.
pub(crate) fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect()
}
