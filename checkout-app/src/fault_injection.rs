//! Deterministic pseudo-random choices for the simulated faults (payment
//! declines, confirmation rejections): the same seed and order id always give
//! the same answer, so redeliveries agree and tests are reproducible.

use uuid::Uuid;

/// SplitMix64's finalizer: a fast, well-mixed 64-bit hash step.
const fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number in `[0, 1)` determined by `seed` and `id`.
pub(crate) fn chance(seed: u64, id: Uuid) -> f64 {
    let (hi, lo) = id.as_u64_pair();
    let x = splitmix64(splitmix64(seed ^ hi) ^ lo);
    // The top 53 bits fill an f64 mantissa exactly.
    (x >> 11) as f64 / (1_u64 << 53) as f64
}

/// Whether the fault with probability `rate` hits `id` (`rate` <= 0 or NaN:
/// never; `rate` >= 1: always).
pub(crate) fn fails(rate: f64, seed: u64, id: Uuid) -> bool {
    rate > 0.0 && chance(seed, id) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_zero_and_one_are_exact() {
        for _ in 0..1000 {
            let id = Uuid::new_v4();
            assert!(!fails(0.0, 7, id));
            assert!(fails(1.0, 7, id));
            assert!(!fails(f64::NAN, 7, id));
        }
    }

    #[test]
    fn the_choice_is_deterministic_and_roughly_calibrated() {
        let id = Uuid::new_v4();
        assert_eq!(chance(42, id).to_bits(), chance(42, id).to_bits());
        let hits = (0..20_000)
            .filter(|_| fails(0.05, 42, Uuid::new_v4()))
            .count();
        // 5% of 20 000 = 1 000; the bounds are > 6 standard deviations wide.
        assert!((800..1200).contains(&hits), "{hits} declines of 20 000");
    }

    #[test]
    fn seeds_change_the_choice() {
        let id = Uuid::new_v4();
        let distinct = (0..64)
            .map(|seed| chance(seed, id).to_bits())
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(distinct.len(), 64);
    }
}
