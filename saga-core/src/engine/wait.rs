//! Waiting for a saga's end.
//!
//! A waiter learns of the end from three sources: the engine's own notice of
//! a saga it finished (which carries the final state, so nothing is read), the
//! store's notice of a saga any engine finished (which carries only the id,
//! so the saga is read), and, as the safety net, a read every
//! [`EngineConfig::wait_poll`](super::EngineConfig::wait_poll).
//!
//! Two reads are avoided on the common path. A waiter that listens before the
//! saga exists ([`Engine::start_and_wait`]) cannot miss its end, so it does not
//! read the saga first. And when the store's notice of a saga this engine is
//! finishing right now arrives before the engine's own (both follow the same
//! commit), the waiter waits a moment for the engine's notice instead of
//! reading: [`FINISH_GRACE`] bounds that moment for the rare save that then
//! fails.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

use super::Engine;
use crate::error::{Error, Result};
use crate::id::SagaId;
use crate::state::SagaInstance;

/// How long a waiter that heard the store's notice of a saga this engine is
/// finishing waits for the engine's own notice before reading the saga.
const FINISH_GRACE: Duration = Duration::from_millis(50);

/// A waiter's subscriptions to both notices, taken before it looks.
pub(super) struct Listeners {
    local: broadcast::Receiver<Arc<SagaInstance>>,
    remote: Option<broadcast::Receiver<SagaId>>,
}

/// What a waiter heard.
enum Heard {
    /// The engine's own notice: the saga's final state.
    Finished(Arc<SagaInstance>),
    /// Time to read the saga: the store's notice, a missed notice, or the poll.
    Read,
}

/// Counts this engine's saves of a terminal transition in flight, per saga;
/// the count is released on drop, after the engine's notice went out.
pub(super) struct Finishing<'a> {
    engine: &'a Engine,
    id: SagaId,
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        let mut finishing = self.engine.finishing_set();
        if let Some(count) = finishing.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                finishing.remove(&self.id);
            }
        }
    }
}

impl Engine {
    /// Subscribes to both notices.
    pub(super) fn listen(&self) -> Listeners {
        Listeners {
            local: self.inner.finished.subscribe(),
            remote: self.inner.store.finished_events(),
        }
    }

    /// Marks `id` as being finished by this engine until the guard drops.
    pub(super) fn finishing(&self, id: SagaId) -> Finishing<'_> {
        *self.finishing_set().entry(id).or_insert(0) += 1;
        Finishing { engine: self, id }
    }

    fn finishing_set(&self) -> MutexGuard<'_, HashMap<SagaId, usize>> {
        self.inner
            .finishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_finishing(&self, id: SagaId) -> bool {
        self.finishing_set().contains_key(&id)
    }

    /// Waits for `id` to end with `listeners` taken beforehand; reads the
    /// saga first unless `listening_since_start` (the listeners were taken
    /// before the saga was created, so no end can have been missed).
    pub(super) async fn wait_listening(
        &self,
        id: SagaId,
        timeout: Duration,
        mut listeners: Listeners,
        listening_since_start: bool,
    ) -> Result<SagaInstance> {
        let deadline = Instant::now() + timeout;
        let mut read = !listening_since_start;
        loop {
            if read {
                let instance = self.get(id).await?.ok_or(Error::NotFound(id))?;
                if instance.is_terminal() {
                    return Ok(instance);
                }
            }
            read = true;
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimeout(id));
            }
            let until = deadline.min(now + self.inner.config.wait_poll);
            if let Heard::Finished(done) = self.listen_until(id, &mut listeners, until).await {
                return Ok(SagaInstance::clone(&done));
            }
        }
    }

    /// Listens until the engine's notice of `id`, a reason to read it, or `until`.
    async fn listen_until(&self, id: SagaId, listeners: &mut Listeners, until: Instant) -> Heard {
        let mut until = until;
        loop {
            tokio::select! {
                biased;
                r = listeners.local.recv() => match r {
                    Ok(done) if done.id == id => return Heard::Finished(done),
                    Ok(_) => {}
                    // Ours may be among the missed ones.
                    Err(RecvError::Lagged(_)) => return Heard::Read,
                    // The engine holds the sender: cannot happen while we run.
                    Err(RecvError::Closed) => return Heard::Read,
                },
                r = recv_remote(&mut listeners.remote) => match r {
                    Ok(done) if done == id => {
                        if let Some(done) = drain_local(&mut listeners.local, id) {
                            return done;
                        }
                        if !self.is_finishing(id) {
                            return Heard::Read;
                        }
                        // The engine's own notice follows its save.
                        until = until.min(Instant::now() + FINISH_GRACE);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return Heard::Read,
                    Err(RecvError::Closed) => {
                        // The store stopped notifying: the poll remains.
                        listeners.remote = None;
                        return Heard::Read;
                    }
                },
                () = tokio::time::sleep_until(until) => return Heard::Read,
            }
        }
    }
}

/// The engine's notice of `id` if it is already queued; `Read` if some were missed.
fn drain_local(local: &mut broadcast::Receiver<Arc<SagaInstance>>, id: SagaId) -> Option<Heard> {
    loop {
        match local.try_recv() {
            Ok(done) if done.id == id => return Some(Heard::Finished(done)),
            Ok(_) => {}
            Err(TryRecvError::Lagged(_)) => return Some(Heard::Read),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
        }
    }
}

async fn recv_remote(
    remote: &mut Option<broadcast::Receiver<SagaId>>,
) -> Result<SagaId, RecvError> {
    match remote {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
