//! One keyed checkout at a time per Idempotency-Key in an orchestrator.
//!
//! A client that gives up on a slow checkout and retries it with the same
//! key must get that checkout, not a refusal: the retry may be priced
//! differently (a price changed, the inventory service went down) while the
//! first try, already priced, goes on to place the order. A retry that finds
//! the saga is answered with it ([`super::routes`]), but while the first try
//! is still being priced there is no saga to find. So the requests of one
//! key take turns: a retry waits until the earlier request with its key has
//! answered, or for at most [`KEY_TURN_TIMEOUT`], longer than a pricing can
//! take; by then the earlier request has created its saga or given its
//! refusal, and the retry finds the saga by its key. Requests without a key,
//! or with different keys, never wait for each other.
//!
//! In one process only: behind a gateway that sends a retry to another
//! orchestrator, the window stays open (documented in
//! `docs/reliability.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The longest a request waits for the earlier requests with its key: longer
/// than the catalogue's 5 s timeout, so an earlier request still holding
/// its turn by then is waiting for its saga's outcome, with the saga created.
pub(crate) const KEY_TURN_TIMEOUT: Duration = Duration::from_secs(6);

/// A key's lock, and how many requests hold it or wait for it.
#[derive(Debug, Default)]
struct Entry {
    lock: Arc<AsyncMutex<()>>,
    requests: usize,
}

/// The keys of the checkouts in flight, each with the lock its requests
/// take turns on.
#[derive(Debug)]
pub(crate) struct KeyLocks {
    held: Mutex<HashMap<String, Entry>>,
    turn_timeout: Duration,
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self::with_turn_timeout(KEY_TURN_TIMEOUT)
    }
}

impl KeyLocks {
    /// Key locks whose requests wait at most `turn_timeout` for their turn.
    pub(crate) fn with_turn_timeout(turn_timeout: Duration) -> Self {
        Self {
            held: Mutex::default(),
            turn_timeout,
        }
    }

    /// Waits for the earlier requests with `key` (in arrival order) and
    /// holds the key until the guard is dropped. `None` when the earlier
    /// requests kept the key longer than the turn timeout
    /// ([`KEY_TURN_TIMEOUT`] by default).
    pub(crate) async fn lock(self: &Arc<Self>, key: &str) -> Option<KeyGuard> {
        let (registration, lock) = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = held.entry(key.to_owned()).or_default();
            entry.requests += 1;
            let registration = Registration {
                locks: Arc::clone(self),
                key: key.to_owned(),
            };
            (registration, Arc::clone(&entry.lock))
        };
        let turn = tokio::time::timeout(self.turn_timeout, lock.lock_owned())
            .await
            .ok()?;
        Some(KeyGuard {
            _turn: turn,
            _registration: registration,
        })
    }

    /// How many keys have requests in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A request's place among the requests of its key, from its arrival to
/// its answer (or its cancellation, waiting or not): the key is forgotten
/// when the last one goes.
#[derive(Debug)]
struct Registration {
    locks: Arc<KeyLocks>,
    key: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = held.get_mut(&self.key) {
            entry.requests -= 1;
            if entry.requests == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A request's turn on its key; dropping it lets the next request with the
/// key run (the turn goes first, then the registration: fields drop in
/// order).
#[derive(Debug)]
pub(crate) struct KeyGuard {
    _turn: OwnedMutexGuard<()>,
    _registration: Registration,
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};

    use super::*;

    #[tokio::test]
    async fn requests_with_one_key_take_turns_and_other_keys_do_not_wait() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("u:k").await.expect("free");
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.lock("u:k").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the retry ran beside the first try");
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock("u:other"))
            .await
            .expect("another key does not wait")
            .expect("free");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the retry runs once the first try answered")
            .expect("task")
            .expect("its turn");
        assert_eq!(locks.len(), 2);
        drop(second);
        drop(other);
        assert_eq!(locks.len(), 0, "keys are forgotten when nobody holds them");
    }

    #[tokio::test]
    async fn a_request_waits_for_its_turn_at_most_the_turn_timeout() {
        let locks = Arc::new(KeyLocks::with_turn_timeout(Duration::from_millis(100)));
        let _first = locks.lock("u:k").await.expect("free");
        let started = std::time::Instant::now();
        assert!(locks.lock("u:k").await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(locks.len(), 1, "the holder's key stays");
    }

    /// Cancelled while waiting, before or after the holder left: nothing of
    /// the key stays behind.
    #[tokio::test]
    async fn a_request_dropped_while_waiting_leaves_nothing_behind() {
        let locks = Arc::new(KeyLocks::default());
        let mut context = Context::from_waker(Waker::noop());
        for holder_leaves_first in [false, true] {
            let first = locks.lock("u:k").await.expect("free");
            let mut waiting = Box::pin(locks.lock("u:k"));
            assert!(waiting.as_mut().poll(&mut context).is_pending());
            if holder_leaves_first {
                drop(first);
                drop(waiting);
            } else {
                drop(waiting);
                drop(first);
            }
            assert_eq!(locks.len(), 0, "holder left first: {holder_leaves_first}");
        }
    }
}
