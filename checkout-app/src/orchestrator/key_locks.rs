//! One keyed checkout at a time per Idempotency-Key in an orchestrator.
//!
//! A client that gives up on a slow checkout and retries it with the same
//! key must get that checkout, not a refusal: the retry may be priced
//! differently (a price changed, the inventory service went down) while the
//! first try, already priced, goes on to place the order. A retry that finds
//! the saga is answered with it ([`super::routes`]), but while the first try
//! is still being priced there is no saga to find. So the requests of one
//! key take turns: a retry waits until the earlier request with its key has
//! answered (its saga created, or its refusal given), then runs and finds the
//! saga by its key. Requests without a key, or with different keys, never
//! wait for each other.
//!
//! In one process only: behind a gateway that sends a retry to another
//! orchestrator, the window stays open (documented in
//! `docs/reliability.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The keys of the checkouts in flight, each with the lock its requests
/// take turns on.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    held: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl KeyLocks {
    /// Waits for the earlier requests with `key` (in arrival order) and
    /// holds the key until the guard is dropped.
    pub(crate) async fn lock(self: &Arc<Self>, key: &str) -> KeyGuard {
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(held.entry(key.to_owned()).or_default())
        };
        let turn = Arc::clone(&lock).lock_owned().await;
        KeyGuard {
            locks: Arc::clone(self),
            key: key.to_owned(),
            lock,
            turn: Some(turn),
        }
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

/// A request's turn on its key; dropping it lets the next request with the
/// key run, and forgets the key when no request holds or waits for it.
#[derive(Debug)]
pub(crate) struct KeyGuard {
    locks: Arc<KeyLocks>,
    key: String,
    lock: Arc<AsyncMutex<()>>,
    turn: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.turn.take());
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map's reference and ours: nobody else holds or waits for the
        // key (others clone it only under the map's lock, held here).
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn requests_with_one_key_take_turns_and_other_keys_do_not_wait() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("u:k").await;
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.lock("u:k").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the retry ran beside the first try");
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock("u:other"))
            .await
            .expect("another key does not wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the retry runs once the first try answered")
            .expect("task");
        assert_eq!(locks.len(), 2);
        drop(second);
        drop(other);
        assert_eq!(locks.len(), 0, "keys are forgotten when nobody holds them");
    }

    #[tokio::test]
    async fn a_request_dropped_while_waiting_leaves_nothing_behind() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("u:k").await;
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.lock("u:k").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(first);
        assert_eq!(locks.len(), 0);
    }
}
