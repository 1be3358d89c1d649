//! Local steps: async functions the engine runs itself.
//!
//! One attempt of a step runs at a time in a process (a lock per saga and
//! step), an attempt's future is dropped when its timeout passes, and the
//! machine wakes the saga only [`LOCAL_STEP_GRACE`](crate::machine::LOCAL_STEP_GRACE)
//! after that, so no later attempt and no compensation starts while one may
//! still run, on this engine or another. [`Engine::run`] waits for the
//! attempts in flight before it returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::JoinSet;
use tracing::Instrument;

use super::Engine;
use crate::definition::{Action, LocalContext, SagaDefinition};
use crate::id::{Direction, SagaId};
use crate::machine::{Event, LocalRun};

type StepLock = Arc<tokio::sync::Mutex<()>>;

/// The local step attempts of one engine.
#[derive(Default)]
pub(super) struct LocalRuns {
    tasks: Mutex<JoinSet<()>>,
    locks: Mutex<HashMap<(SagaId, usize), StepLock>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalRuns {
    fn step_lock(&self, saga: SagaId, step: usize) -> StepLock {
        Arc::clone(lock(&self.locks).entry((saga, step)).or_default())
    }

    /// Forgets the step's lock once no attempt holds or waits for it.
    fn release(&self, saga: SagaId, step: usize, step_lock: StepLock) {
        let mut locks = lock(&self.locks);
        // The map's reference and ours: nobody else wants it.
        if Arc::strong_count(&step_lock) <= 2 {
            locks.remove(&(saga, step));
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Waits until no attempt runs, including ones started while waiting.
    pub(super) async fn drain(&self) {
        loop {
            let mut tasks = std::mem::take(&mut *lock(&self.tasks));
            if tasks.is_empty() {
                return;
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Drops every attempt in flight.
    #[cfg(feature = "testing")]
    pub(super) fn abort(&self) {
        lock(&self.tasks).abort_all();
    }
}

impl Engine {
    /// Runs a local attempt in the background; its result comes back as a reply.
    pub(super) fn spawn_local(&self, def: &Arc<SagaDefinition>, id: SagaId, run: LocalRun) {
        let Some(step) = def.steps().get(run.step) else {
            return;
        };
        let action = match run.direction {
            Direction::Invoke => Some(step.action()),
            Direction::Compensate => step.compensation(),
        };
        let Some(Action::Local { run: function }) = action.cloned() else {
            return;
        };
        let ctx = LocalContext {
            saga_id: id,
            step: step.name().to_owned(),
            direction: run.direction,
            attempt: run.attempt,
            idempotency_key: run.idempotency_key.clone(),
        };
        let span = tracing::info_span!(
            "saga.local", saga_id = %id, saga_type = %def.name(), step = %step.name(),
            direction = %run.direction, attempt = run.attempt,
        );
        let engine = self.clone();
        let timed_out = self.inner.clock.sleep_until(run.until);
        let step_lock = self.inner.local.step_lock(id, run.step);
        self.inner.local.spawn(
            async move {
                let outcome = {
                    let _attempt = step_lock.lock().await;
                    // Past its timeout (it waited for the lock), the attempt
                    // must not start: the next one may be due elsewhere.
                    if engine.inner.clock.now() >= run.until {
                        None
                    } else {
                        tokio::select! {
                            biased;
                            () = timed_out => None,
                            outcome = function(run.data, ctx) => Some(outcome),
                        }
                    }
                };
                engine.inner.local.release(id, run.step, step_lock);
                let Some(outcome) = outcome else {
                    tracing::warn!("local step attempt dropped at its timeout");
                    return;
                };
                let event = Event::Reply {
                    step: run.step,
                    direction: run.direction,
                    attempt: run.attempt,
                    outcome,
                };
                // The cached state saves a read; a stale one conflicts and is reloaded.
                let cached = engine.cached(id);
                if let Err(e) = engine.apply_to(cached, id, &event, |_, _| Ok(())).await {
                    tracing::warn!(error = %e, "local step result not saved; its timeout will run it again");
                }
            }
            .instrument(span),
        );
    }

    /// Waits for the local step attempts in flight.
    pub(super) async fn drain_local(&self) {
        self.inner.local.drain().await;
    }
}
