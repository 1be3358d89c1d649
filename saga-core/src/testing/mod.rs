//! Test support for adapter authors and for the engine itself (feature `testing`).
//!
//! - [`store_conformance`]: the behaviour every [`SagaStore`](crate::SagaStore)
//!   must have. `saga-postgres` runs it against a real database.
//! - [`transport_conformance`]: the behaviour every [`Transport`](crate::Transport)
//!   must have. `saga-rabbitmq` runs it against a real broker.
//! - [`simulation`]: a deterministic simulation of many sagas through the real
//!   [`Engine`](crate::Engine) with a virtual clock, injecting crashes,
//!   duplicated, lost, delayed and reordered messages, and checking the
//!   guarantees at the end.
//! - [`CountingStore`]: a store wrapper that counts reads.
//!
//! The suites panic with a message naming the broken rule, like `assert!`.

mod counting_store;
pub mod engine_suite;
pub mod simulation;
mod store_suite;
mod transport_suite;

pub use counting_store::CountingStore;
pub use engine_suite::engine_survives_a_crash;
pub use store_suite::store_conformance;
pub use transport_suite::transport_conformance;

use crate::state::{LogEntry, LogEvent};

/// Attempts a saga's log shows dispatched more than once, one line each
/// (empty when none was). A command whose send failed is dispatched again;
/// that second dispatch is not counted.
#[must_use]
pub fn dispatched_twice(logs: &[LogEntry]) -> Vec<String> {
    let mut count: std::collections::BTreeMap<(Option<String>, u32, bool), i32> =
        std::collections::BTreeMap::new();
    for log in logs {
        let key = |compensate| (log.step.clone(), log.attempt.unwrap_or(0), compensate);
        match log.event {
            LogEvent::StepDispatched => *count.entry(key(false)).or_default() += 1,
            LogEvent::CompensationDispatched => *count.entry(key(true)).or_default() += 1,
            LogEvent::SendFailed => {
                *count.entry(key(false)).or_default() -= 1;
                *count.entry(key(true)).or_default() -= 1;
            }
            _ => {}
        }
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((step, attempt, compensate), n)| {
            let what = if compensate { "compensation" } else { "step" };
            format!("{what} {step:?} attempt {attempt} dispatched {n} times")
        })
        .collect()
}

/// A small deterministic random number generator (SplitMix64) so simulations
/// need no extra dependency and replay exactly from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}
