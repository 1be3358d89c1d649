//! Retry policies: pure values that say how long to wait before attempt `n`.
//!
//! The engine owns the retry loop and persists the next wake-up time, so a
//! retry survives a restart. The policy only answers two questions: may
//! attempt `n` happen, and how long after the previous failure.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a failed step or compensation is retried.
///
/// Exponential backoff `initial * multiplier^(attempt-1)`, capped at `max_delay`,
/// with deterministic jitter (a pure function of a seed and the attempt, so the
/// state machine stays reproducible).
///
/// ```
/// use std::time::Duration;
/// use saga_core::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5))
///     .max_attempts(5)
///     .jitter(0.0);
/// assert!(policy.allows(5));
/// assert!(!policy.allows(6));
/// assert_eq!(policy.delay_after(1, 0), Duration::from_millis(100));
/// assert_eq!(policy.delay_after(3, 0), Duration::from_millis(400));
/// assert_eq!(policy.delay_after(30, 0), Duration::from_secs(5));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    initial: Duration,
    max_delay: Duration,
    multiplier: f64,
    max_attempts: Option<u32>,
    jitter: f64,
}

impl RetryPolicy {
    /// Exponential backoff from `initial` up to `max_delay`, doubling, with 20%
    /// jitter and at most 5 attempts.
    #[must_use]
    pub const fn exponential(initial: Duration, max_delay: Duration) -> Self {
        Self {
            initial,
            max_delay,
            multiplier: 2.0,
            max_attempts: Some(5),
            jitter: 0.2,
        }
    }

    /// The same delay between every attempt, at most 5 attempts, no jitter.
    #[must_use]
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            initial: delay,
            max_delay: delay,
            multiplier: 1.0,
            max_attempts: Some(5),
            jitter: 0.0,
        }
    }

    /// A single attempt: never retry.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            initial: Duration::ZERO,
            max_delay: Duration::ZERO,
            multiplier: 1.0,
            max_attempts: Some(1),
            jitter: 0.0,
        }
    }

    /// Total attempts allowed, the first included (at least 1).
    #[must_use]
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(if attempts == 0 { 1 } else { attempts });
        self
    }

    /// Retry without limit (used for retriable steps and as an explicit choice).
    #[must_use]
    pub const fn unlimited(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// Growth factor between delays (clamped to at least 1.0; NaN is 1.0).
    #[must_use]
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        self
    }

    /// Fraction of each delay that is randomised, between 0.0 and 1.0: a delay
    /// `d` becomes a value in `[d * (1 - jitter), d]` (clamped to that range;
    /// NaN is 0.0).
    #[must_use]
    pub const fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The configured attempt limit, `None` when unlimited.
    #[must_use]
    pub const fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The longest delay between two attempts.
    #[must_use]
    pub const fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Whether attempt number `attempt` (1-based) is allowed.
    #[must_use]
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
    }

    /// The delay after failed attempt `attempt` (1-based) before the next one.
    /// `seed` makes the jitter differ between sagas yet stay reproducible.
    #[must_use]
    pub fn delay_after(&self, attempt: u32, seed: u64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let factor = 1.0 - self.jitter * unit_interval(seed, attempt);
        // Near `Duration::MAX` the round trip through `f64` can overflow.
        Duration::try_from_secs_f64((capped * factor).max(0.0)).unwrap_or(self.max_delay)
    }
}

impl Default for RetryPolicy {
    /// 100 ms doubling up to 10 s, 20% jitter, 5 attempts.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// A deterministic value in `[0, 1)` from a seed and an attempt (SplitMix64).
fn unit_interval(seed: u64, attempt: u32) -> f64 {
    let mut z = seed ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_allows_only_the_first_attempt() {
        let p = RetryPolicy::none();
        assert!(p.allows(1));
        assert!(!p.allows(2));
    }

    #[test]
    fn unlimited_allows_any_attempt() {
        let p = RetryPolicy::default().unlimited();
        assert!(p.allows(1_000_000));
    }

    #[test]
    fn jitter_stays_within_bounds_and_is_deterministic() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(0.5);
        for seed in 0..200u64 {
            let d = p.delay_after(2, seed);
            assert!(d <= Duration::from_millis(200), "{d:?}");
            assert!(d >= Duration::from_millis(100), "{d:?}");
            assert_eq!(d, p.delay_after(2, seed));
        }
    }

    #[test]
    fn delay_never_exceeds_the_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(50));
        assert!(p.delay_after(u32::MAX, 7) <= Duration::from_millis(50));
    }

    #[test]
    fn nan_settings_keep_the_delays_and_huge_caps_do_not_panic() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(f64::NAN)
            .multiplier(f64::NAN);
        for attempt in 1..5 {
            assert_eq!(
                p.delay_after(attempt, 3),
                Duration::from_millis(100),
                "{p:?}"
            );
        }
        let huge = RetryPolicy::exponential(Duration::MAX, Duration::MAX).jitter(0.0);
        assert_eq!(huge.delay_after(3, 0), Duration::MAX);
    }

    #[test]
    fn zero_max_attempts_means_one() {
        assert_eq!(
            RetryPolicy::default().max_attempts(0).attempt_limit(),
            Some(1)
        );
    }
}
