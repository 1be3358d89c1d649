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
//! A call let through gets a [`Ticket`] and reports its outcome with it. Only
//! calls let through since the breaker last changed state count: a slow call
//! from before it opened cannot close a half-open breaker while its probe is
//! out, nor open it again, nor count towards the failures of a breaker that
//! has closed since.
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

/// A call let through; its outcome is reported with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The breaker's state change the call was let through after.
    epoch: u64,
}

/// Whether a call may go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes (the breaker is closed).
    Allowed(Ticket),
    /// Yes, as the one probe of a half-open breaker: its outcome decides.
    Probe(Ticket),
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
    /// Counts the state changes; tickets of an earlier one are stale.
    epoch: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
            epoch: 0,
        }
    }

    fn enter(&mut self, state: BreakerState) {
        self.state = state;
        self.epoch += 1;
    }

    fn ticket(&self) -> Ticket {
        Ticket { epoch: self.epoch }
    }

    /// Where the breaker is.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go through at `now`. An open breaker whose cool-down
    /// is over becomes half-open and lets this call through as its probe; a
    /// probe that has not answered within a cool-down (slow, or its caller
    /// gave up) gets a companion, and the first of them to answer decides.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed(self.ticket()),
            BreakerState::Open { until } if now < until => Admission::Refused {
                retry_after: until - now,
            },
            BreakerState::HalfOpen { since } if now < since + self.config.cool_down => {
                Admission::Refused {
                    retry_after: since + self.config.cool_down - now,
                }
            }
            BreakerState::Open { .. } => {
                self.enter(BreakerState::HalfOpen { since: now });
                Admission::Probe(self.ticket())
            }
            // A new probe beside the silent one, in the same epoch: whichever
            // answers first decides (a probe slower than the cool-down must
            // still be able to close the breaker).
            BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { since: now };
                Admission::Probe(self.ticket())
            }
        }
    }

    /// Records that the call of `ticket` succeeded: a closed breaker forgets
    /// its failures, a half-open one closes. A stale ticket changes nothing.
    pub fn succeeded(&mut self, ticket: Ticket) {
        if ticket.epoch != self.epoch {
            return;
        }
        match self.state {
            BreakerState::Closed { .. } => self.state = BreakerState::Closed { failures: 0 },
            BreakerState::HalfOpen { .. } => self.enter(BreakerState::Closed { failures: 0 }),
            BreakerState::Open { .. } => {}
        }
    }

    /// Records that the call of `ticket` failed at `now`: the `failures`-th
    /// in a row opens a closed breaker, a failed probe opens it again. A
    /// stale ticket changes nothing.
    pub fn failed(&mut self, ticket: Ticket, now: Instant) {
        if ticket.epoch != self.epoch {
            return;
        }
        let open = BreakerState::Open {
            until: now + self.config.cool_down,
        };
        match self.state {
            BreakerState::Closed { failures } if self.config.failures > 0 => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failures {
                    self.enter(open);
                } else {
                    self.state = BreakerState::Closed { failures };
                }
            }
            BreakerState::HalfOpen { .. } => self.enter(open),
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

    /// Whether a call may go through now (see [`CircuitBreaker::admit`]);
    /// its ticket to report the outcome with.
    ///
    /// # Errors
    /// How long until a call may be let through, when the breaker is open.
    pub fn admit(&self) -> Result<Ticket, Duration> {
        match self.lock().admit(Instant::now()) {
            Admission::Allowed(ticket) => Ok(ticket),
            Admission::Probe(ticket) => {
                tracing::info!(target_service = %self.name, "circuit half-open: probing");
                Ok(ticket)
            }
            Admission::Refused { retry_after } => Err(retry_after),
        }
    }

    /// Records that the call of `ticket` succeeded.
    pub fn succeeded(&self, ticket: Ticket) {
        let mut breaker = self.lock();
        let was = breaker.state();
        breaker.succeeded(ticket);
        if matches!(was, BreakerState::HalfOpen { .. })
            && matches!(breaker.state(), BreakerState::Closed { .. })
        {
            tracing::info!(target_service = %self.name, "circuit closed: the probe succeeded");
        }
    }

    /// Records that the call of `ticket` failed.
    pub fn failed(&self, ticket: Ticket) {
        let mut breaker = self.lock();
        let was = breaker.state();
        breaker.failed(ticket, Instant::now());
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

    /// A call let through at `now` (as a closed breaker's or as the probe).
    fn let_through(b: &mut CircuitBreaker, now: Instant) -> Ticket {
        match b.admit(now) {
            Admission::Allowed(ticket) | Admission::Probe(ticket) => ticket,
            Admission::Refused { .. } => panic!("refused at {now:?}: {:?}", b.state()),
        }
    }

    /// A call let through at `now` fails at once.
    fn fail(b: &mut CircuitBreaker, now: Instant) {
        let ticket = let_through(b, now);
        b.failed(ticket, now);
    }

    #[test]
    fn it_opens_after_the_configured_failures_in_a_row_only() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        fail(&mut b, t0);
        fail(&mut b, t0);
        let ticket = let_through(&mut b, t0);
        b.succeeded(ticket); // a success resets the count
        fail(&mut b, t0);
        fail(&mut b, t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        assert!(matches!(b.admit(t0), Admission::Allowed(_)));
        fail(&mut b, t0);
        assert_eq!(b.state(), BreakerState::Open { until: t0 + COOL });
    }

    #[test]
    fn an_open_breaker_refuses_until_the_cool_down_then_lets_one_probe_through() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let half = t0 + Duration::from_millis(500);
        assert_eq!(
            b.admit(half),
            Admission::Refused {
                retry_after: Duration::from_millis(1_500)
            }
        );
        let later = t0 + COOL;
        assert!(matches!(b.admit(later), Admission::Probe(_)));
        assert_eq!(b.state(), BreakerState::HalfOpen { since: later });
        // While the probe is out, the others are refused.
        assert!(!b.admit(later + Duration::from_millis(10)).is_allowed());
    }

    #[test]
    fn a_successful_probe_closes_and_a_failed_one_opens_for_another_cool_down() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let probe = t0 + COOL;
        fail(&mut b, probe);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: probe + COOL
            }
        );
        assert!(!b.admit(probe + Duration::from_secs(1)).is_allowed());
        let second = probe + COOL;
        let ticket = let_through(&mut b, second);
        b.succeeded(ticket);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert!(matches!(b.admit(second), Admission::Allowed(_)));
    }

    #[test]
    fn a_probe_that_never_reports_gets_a_companion_after_a_cool_down() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let _silent = let_through(&mut b, t0 + COOL);
        assert!(!b.admit(t0 + COOL + Duration::from_secs(1)).is_allowed());
        let second = t0 + COOL + COOL;
        assert!(matches!(b.admit(second), Admission::Probe(_)));
        assert_eq!(b.state(), BreakerState::HalfOpen { since: second });
    }

    /// Probes that each answer after more than a cool-down: the first
    /// success closes the breaker (with a new epoch per companion, none
    /// counted, and the breaker stayed half-open for good).
    #[test]
    fn a_probe_slower_than_the_cool_down_still_closes_the_breaker() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        fail(&mut b, t0);
        let slow = let_through(&mut b, t0 + COOL);
        let _companion = let_through(&mut b, t0 + COOL + COOL);
        b.succeeded(slow);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn late_answers_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        let slow = let_through(&mut b, t0);
        let slower = let_through(&mut b, t0);
        fail(&mut b, t0);
        b.succeeded(slow);
        b.failed(slower, t0 + Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::Open { until: t0 + COOL });
    }

    /// Before tickets, the slow call's success closed the breaker while its
    /// probe was out, and a slow failure opened it again.
    #[test]
    fn calls_from_before_the_breaker_opened_do_not_decide_for_its_probe() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        let slow_success = let_through(&mut b, t0);
        let slow_failure = let_through(&mut b, t0);
        fail(&mut b, t0);
        let probing = t0 + COOL;
        let probe = let_through(&mut b, probing);
        b.succeeded(slow_success);
        assert_eq!(b.state(), BreakerState::HalfOpen { since: probing });
        b.failed(slow_failure, probing);
        assert_eq!(b.state(), BreakerState::HalfOpen { since: probing });
        b.succeeded(probe);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    /// A failure from before the breaker opened does not count towards the
    /// failures of the breaker its probe closed.
    #[test]
    fn failures_from_an_earlier_closed_spell_do_not_count_again() {
        let t0 = Instant::now();
        let mut b = breaker(2);
        let slow = let_through(&mut b, t0);
        fail(&mut b, t0);
        fail(&mut b, t0);
        let probe = let_through(&mut b, t0 + COOL);
        b.succeeded(probe);
        b.failed(slow, t0 + COOL);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn zero_failures_disables_the_breaker() {
        let t0 = Instant::now();
        let mut b = breaker(0);
        for _ in 0..100 {
            fail(&mut b, t0);
        }
        assert!(matches!(b.admit(t0), Admission::Allowed(_)));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
