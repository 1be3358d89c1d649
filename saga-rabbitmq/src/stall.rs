//! When a connection counts as stalled: its publishes time out and no
//! confirm has come for long enough.

use std::time::{Duration, Instant};

/// The publishes that timed out on one connection since its last confirm,
/// and since when it has been without one.
#[derive(Debug)]
pub(crate) struct Stall {
    timeouts: u32,
    since: Instant,
}

impl Stall {
    /// A connection opened at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            timeouts: 0,
            since: now,
        }
    }

    /// A publish was confirmed at `now` (acked, nacked or returned).
    pub(crate) fn confirmed(&mut self, now: Instant) {
        self.timeouts = 0;
        self.since = now;
    }

    /// A publish that started at `now - timeout` timed out at `now`; whether
    /// the connection is stalled: `limit` publishes (`0`: never) timed out,
    /// and no confirm came since the first of them started, `limit`
    /// timeouts ago or more. So a burst of publishes that time out together
    /// in one slow moment is not enough, however long the connection was
    /// quiet before. While `blocked` (the broker holds publishers back for a
    /// memory or disk alarm) nothing counts, and the count starts again.
    pub(crate) fn timed_out(
        &mut self,
        now: Instant,
        blocked: bool,
        limit: u32,
        timeout: Duration,
    ) -> bool {
        if blocked {
            self.confirmed(now);
            return false;
        }
        if self.timeouts == 0 {
            // The stall began when this publish started, not at the last
            // confirm, which may be long ago on a quiet connection.
            let started = now.checked_sub(timeout).unwrap_or(now);
            self.since = self.since.max(started);
        }
        self.timeouts = self.timeouts.saturating_add(1);
        limit > 0
            && self.timeouts >= limit
            && now.duration_since(self.since) >= timeout.saturating_mul(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn publishes_one_after_another_stall_at_the_limit() {
        let start = Instant::now();
        let mut stall = Stall::new(start);
        // Each publish starts as the one before it times out.
        assert!(!stall.timed_out(start + T, false, 3, T));
        assert!(!stall.timed_out(start + 2 * T, false, 3, T));
        assert!(stall.timed_out(start + 3 * T, false, 3, T));
    }

    #[test]
    fn a_burst_after_a_quiet_spell_is_not_a_stall() {
        let start = Instant::now();
        let mut stall = Stall::new(start);
        // An hour without a publish, then three that time out together.
        let slow = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(!stall.timed_out(slow, false, 3, T));
        }
        // Still nothing confirmed a whole window later: now it is one.
        assert!(stall.timed_out(slow + 2 * T, false, 3, T));
    }

    #[test]
    fn a_confirm_starts_the_count_again() {
        let start = Instant::now();
        let mut stall = Stall::new(start);
        assert!(!stall.timed_out(start + T, false, 3, T));
        assert!(!stall.timed_out(start + 2 * T, false, 3, T));
        stall.confirmed(start + 2 * T);
        assert!(!stall.timed_out(start + 3 * T, false, 3, T));
        assert!(!stall.timed_out(start + 4 * T, false, 3, T));
        assert!(stall.timed_out(start + 5 * T, false, 3, T));
    }

    #[test]
    fn timeouts_while_blocked_do_not_count_and_start_the_count_again() {
        let start = Instant::now();
        let mut stall = Stall::new(start);
        assert!(!stall.timed_out(start + T, false, 3, T));
        assert!(!stall.timed_out(start + 2 * T, false, 3, T));
        for k in 3..10 {
            assert!(!stall.timed_out(start + k * T, true, 3, T));
        }
        assert!(!stall.timed_out(start + 10 * T, false, 3, T));
        assert!(!stall.timed_out(start + 11 * T, false, 3, T));
        assert!(stall.timed_out(start + 12 * T, false, 3, T));
    }

    #[test]
    fn a_limit_of_zero_never_stalls() {
        let start = Instant::now();
        let mut stall = Stall::new(start);
        for k in 1..100 {
            assert!(!stall.timed_out(start + k * T, false, 0, T));
        }
    }
}
