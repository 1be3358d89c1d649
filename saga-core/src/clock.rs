//! Time as an input: the engine reads the clock, the state machine never does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// A boxed future that sleeps.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current time, and of sleeps measured by it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// A future that completes once [`now`](Self::now) reaches `at`. The
    /// engine uses it to stop a local step at its timeout.
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// Wall-clock time measured by tokio's clock: the time it was created plus
/// the [`tokio::time::Instant`] elapsed since. Under tokio's paused test time
/// (`#[tokio::test(start_paused = true)]`) it moves with
/// `tokio::time::advance` and the runtime's auto-advance, so an engine's
/// timeouts and retries take no real time in tests.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: DateTime<Utc>,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that starts at the current wall-clock time.
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: Utc::now(),
            started: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        add(self.origin, self.started.elapsed())
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let wait = (at - self.origin).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep_until(self.started + wait))
    }
}

/// A clock that moves only when told to: for deterministic tests and simulations.
///
/// Sleeps wake in the order they started waiting (one `Notify`; a `watch`
/// channel would wake them in a randomised order), so a simulation replays
/// exactly.
#[derive(Debug)]
pub struct ManualClock {
    inner: Arc<ManualTime>,
}

#[derive(Debug)]
struct ManualTime {
    now: std::sync::Mutex<DateTime<Utc>>,
    moved: Notify,
}

impl ManualTime {
    fn now(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn change(&self, change: impl FnOnce(&mut DateTime<Utc>)) {
        change(
            &mut self
                .now
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.moved.notify_waiters();
    }
}

impl ManualClock {
    /// A clock stopped at `start`.
    #[must_use]
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            inner: Arc::new(ManualTime {
                now: std::sync::Mutex::new(start),
                moved: Notify::new(),
            }),
        }
    }

    /// Moves the clock forward, waking the sleeps that are due.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.inner.change(|now| *now += by);
    }

    /// Sets the clock to `to`, waking the sleeps that are due.
    pub fn set(&self, to: DateTime<Utc>) {
        self.inner.change(|now| *now = to);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let time = Arc::clone(&self.inner);
        Box::pin(async move {
            loop {
                let moved = time.moved.notified();
                tokio::pin!(moved);
                // Registered before the time is read: a move in between wakes it.
                moved.as_mut().enable();
                if time.now() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// Adds a std duration to a timestamp, saturating far in the future.
#[must_use]
pub fn add(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Subtracts a std duration from a timestamp, saturating far in the past.
#[must_use]
pub fn sub(at: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|d| at.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
