//! A circuit breaker for calls to another service: after `failures`
//! consecutive failures it opens and refuses calls at once for `cool_down`;
//! then it lets one probe through (half-open) and closes when the probe
//! succeeds, or opens again for another cool-down when it fails.
//!
//! [`CircuitBreaker`] is the state machine alone, with the time passed in, so
//! it is tested without waiting; [`Breaker`] is the shared, clocked one the
//! gateway (one per orchestrator URL) and the orchestrator (the catalogue)
//! call through.
//!
//! ```text
//! closed --(failures in a row)--> open --(cool-down over)--> half-open (one probe)
//!   ^                              ^                             |
//!   |                              +-------(probe fails)---------+
//!   +-----------------------------------(probe succeeds)---------+
//! ```

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker; 0 disables it (it never opens).
    pub failures: u32,
    /// How long an open breaker refuses calls before it lets a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    /// 5 failures in a row open it for 2 s.
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(2),
        }
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; counts the failures in a row.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When a probe may go through.
        until: Instant,
    },
    /// One probe is through (since `since`); other calls are refused until it answers.
    HalfOpen {
        /// When the probe was let through.
        since: Instant,
    },
}

/// Whether a call may go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes (the breaker is closed).
    Allowed,
    /// Yes, as the one probe of a half-open breaker: its outcome decides.
    Probe,
    /// No: the breaker is open (or its probe is out); try again after this long.
    Refused {
        /// How long until a call may be let through.
        retry_after: Duration,
    },
}

impl Admission {
    /// Whether the call may go through.
    #[must_use]
    pub fn is_allowed(self) -> bool {
        !matches!(self, Self::Refused { .. })
    }
}

/// The breaker's state machine; every method takes the current time.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// Where the breaker is.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go through at `now`. An open breaker whose cool-down
    /// is over becomes half-open and lets this call through as its probe; a
    /// probe that never reported (its caller gave up) is replaced by another
    /// after a cool-down.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until } if now < until => Admission::Refused {
                retry_after: until - now,
            },
            BreakerState::HalfOpen { since } if now < since + self.config.cool_down => {
                Admission::Refused {
                    retry_after: since + self.config.cool_down - now,
                }
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { since: now };
                Admission::Probe
            }
        }
    }

    /// Records a call that succeeded: a closed breaker forgets its failures, a
    /// half-open one closes. (A late success while open changes nothing: the
    /// probe decides.)
    pub fn succeeded(&mut self) {
        match self.state {
            BreakerState::Closed { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::Closed { failures: 0 };
            }
            BreakerState::Open { .. } => {}
        }
    }

    /// Records a call that failed at `now`: the `failures`-th in a row opens a
    /// closed breaker, a failed probe opens it again. (A late failure while
    /// open changes nothing.)
    pub fn failed(&mut self, now: Instant) {
        let open = BreakerState::Open {
            until: now + self.config.cool_down,
        };
        match self.state {
            BreakerState::Closed { failures } if self.config.failures > 0 => {
                let failures = failures.saturating_add(1);
                self.state = if failures >= self.config.failures {
                    open
                } else {
                    BreakerState::Closed { failures }
                };
            }
            BreakerState::HalfOpen { .. } => self.state = open,
            BreakerState::Closed { .. } | BreakerState::Open { .. } => {}
        }
    }
}

/// A named [`CircuitBreaker`] shared by the tasks calling one service, on the
/// real clock. Clones share the state.
#[derive(Clone, Debug)]
pub struct Breaker {
    name: Arc<str>,
    inner: Arc<Mutex<CircuitBreaker>>,
}

impl Breaker {
    /// A closed breaker for calls to `name` (in logs).
    #[must_use]
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        Self {
            name: name.into(),
            inner: Arc::new(Mutex::new(CircuitBreaker::new(config))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CircuitBreaker> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a call may go through now (see [`CircuitBreaker::admit`]).
    ///
    /// # Errors
    /// How long until a call may be let through, when the breaker is open.
    pub fn admit(&self) -> Result<(), Duration> {
        match self.lock().admit(Instant::now()) {
            Admission::Allowed => Ok(()),
            Admission::Probe => {
                tracing::info!(target_service = %self.name, "circuit half-open: probing");
                Ok(())
            }
            Admission::Refused { retry_after } => Err(retry_after),
        }
    }

    /// Records a call that succeeded.
    pub fn succeeded(&self) {
        let mut breaker = self.lock();
        let was = breaker.state();
        breaker.succeeded();
        if matches!(was, BreakerState::HalfOpen { .. }) {
            tracing::info!(target_service = %self.name, "circuit closed: the probe succeeded");
        }
    }

    /// Records a call that failed.
    pub fn failed(&self) {
        let mut breaker = self.lock();
        let was = breaker.state();
        breaker.failed(Instant::now());
        if !matches!(was, BreakerState::Open { .. })
            && let BreakerState::Open { until } = breaker.state()
        {
            tracing::warn!(
                target_service = %self.name,
                cool_down_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                "circuit open: calls fail fast until the cool-down ends"
            );
        }
    }

    /// Where the breaker is now.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }
}

/// `retry_after` as a `Retry-After` value: whole seconds, rounded up, at least 1.
#[must_use]
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(2);

    fn breaker(failures: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failures,
            cool_down: COOL,
        })
    }

    #[test]
    fn it_opens_after_the_configured_failures_in_a_row_only() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        b.failed(t0);
        b.failed(t0);
        b.succeeded(); // a success resets the count
        b.failed(t0);
        b.failed(t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        assert_eq!(b.admit(t0), Admission::Allowed);
        b.failed(t0);
        assert_eq!(b.state(), BreakerState::Open { until: t0 + COOL });
    }

    #[test]
    fn an_open_breaker_refuses_until_the_cool_down_then_lets_one_probe_through() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failed(t0);
        let half = t0 + Duration::from_millis(500);
        assert_eq!(
            b.admit(half),
            Admission::Refused {
                retry_after: Duration::from_millis(1_500)
            }
        );
        let later = t0 + COOL;
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen { since: later });
        // While the probe is out, the others are refused.
        assert!(!b.admit(later + Duration::from_millis(10)).is_allowed());
    }

    #[test]
    fn a_successful_probe_closes_and_a_failed_one_opens_for_another_cool_down() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failed(t0);
        let probe = t0 + COOL;
        assert_eq!(b.admit(probe), Admission::Probe);
        b.failed(probe);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: probe + COOL
            }
        );
        assert!(!b.admit(probe + Duration::from_secs(1)).is_allowed());
        let second = probe + COOL;
        assert_eq!(b.admit(second), Admission::Probe);
        b.succeeded();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.admit(second), Admission::Allowed);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cool_down() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failed(t0);
        assert_eq!(b.admit(t0 + COOL), Admission::Probe);
        assert!(!b.admit(t0 + COOL + Duration::from_secs(1)).is_allowed());
        assert_eq!(b.admit(t0 + COOL + COOL), Admission::Probe);
    }

    #[test]
    fn late_answers_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.failed(t0);
        b.succeeded();
        b.failed(t0 + Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::Open { until: t0 + COOL });
    }

    #[test]
    fn zero_failures_disables_the_breaker() {
        let t0 = Instant::now();
        let mut b = breaker(0);
        for _ in 0..100 {
            b.failed(t0);
        }
        assert_eq!(b.admit(t0), Admission::Allowed);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
