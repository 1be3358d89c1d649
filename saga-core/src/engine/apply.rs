//! The core loop: load, transition, save with a version check, then act.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::Instrument;

use super::{Engine, wait};
use crate::definition::SagaDefinition;
use crate::error::{Error, Result};
use crate::id::SagaId;
use crate::machine::{self, Effect, Event, Transition};
use crate::message::CommandMessage;
use crate::state::SagaInstance;

type Applied = (Arc<SagaInstance>, Arc<SagaInstance>);

/// How sure a save is to have been this engine's.
#[derive(Clone, Debug, PartialEq)]
enum Saved {
    /// The store said so.
    Surely,
    /// The store reported an error (or, for a save whose outcome was
    /// unknown, a conflict), but holds this very transition, as read back:
    /// ours, or another engine's that applied the same event to the same
    /// state.
    Probably(Arc<SagaInstance>),
}

/// Most saves of unknown outcome remembered (a database down for long).
const MOST_UNSURE: usize = 1024;

/// How long a save that reported an error reads the saga back, while the
/// store does not answer, before its outcome is left unknown.
const READ_BACK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Engine {
    /// Load (unless given), transition, save with version check, perform effects.
    /// Returns the instance before and after.
    pub(super) async fn apply_to(
        &self,
        mut loaded: Option<Arc<SagaInstance>>,
        id: SagaId,
        event: &Event,
        check: impl Fn(&SagaDefinition, &SagaInstance) -> Result<()>,
    ) -> Result<Applied> {
        for attempt in 0..=self.inner.config.conflict_retries {
            if attempt > 0 {
                self.forget(id);
            }
            let instance = match loaded.take() {
                Some(instance) => instance,
                None => self
                    .inner
                    .store
                    .load(id)
                    .await?
                    .map(Arc::new)
                    .ok_or(Error::NotFound(id))?,
            };
            let def =
                Arc::clone(self.definition(&instance.saga_type, instance.definition_version)?);
            check(&def, &instance)?;
            let step = instance
                .cursor
                .and_then(|c| def.steps().get(c.step))
                .map(|s| s.name().to_owned())
                .unwrap_or_default();
            let span = tracing::debug_span!("saga.transition", saga_id = %id, saga_type = %def.name(), step = %step);
            let t = machine::transition(&def, &instance, event.clone(), self.inner.clock.now());
            if t.is_noop() {
                return Ok((instance, Arc::new(t.instance)));
            }
            // Held through the save and the effects, so that a waiter who
            // hears the store's notice first waits for the engine's own.
            let _finishing = t
                .instance
                .is_terminal()
                .then(|| self.inner.waiters.finishing(id));
            let saved = match self.save(&instance, &t).instrument(span.clone()).await {
                Ok(saved) => saved,
                Err(Error::Conflict { .. }) => {
                    let stored = self
                        .inner
                        .store
                        .load(id)
                        .await?
                        .map(Arc::new)
                        .ok_or(Error::NotFound(id))?;
                    // An earlier try of this event whose save failed after
                    // its commit, and whose read-back failed too, left this
                    // very transition stored: its effects are due, or the
                    // next command would wait for the step's timeout (and
                    // cost an attempt). Any other conflict is another
                    // writer's: reload and apply the event again.
                    if holds(&stored, &t.instance) && self.was_unsure(id, stored.version) {
                        tracing::warn!(saga_id = %id, "a save of unknown outcome is stored after all; going on");
                        Saved::Probably(stored)
                    } else {
                        tracing::debug!(saga_id = %id, "version conflict; reloading");
                        loaded = Some(stored);
                        continue;
                    }
                }
                Err(e) => return Err(e),
            };
            crate::metrics::transition(
                &instance.saga_type,
                instance.updated_at,
                &t.logs,
                t.instance.updated_at,
            );
            let mut effects = t.effects;
            let after = match saved {
                Saved::Surely => Arc::new(t.instance),
                Saved::Probably(stored) => {
                    // Another engine may have committed this very transition
                    // and be running its local step: sending a command twice
                    // is harmless, running an attempt twice is not. Its
                    // timeout starts the next attempt.
                    effects.retain(|e| !matches!(e, Effect::RunLocal(_)));
                    stored
                }
            };
            self.remember(&after);
            self.perform(&def, &after, effects).instrument(span).await;
            return Ok((instance, after));
        }
        Err(Error::Conflict { id, expected: 0 })
    }

    /// [`apply_to`](Self::apply_to) boxed, for the one place that applies an
    /// event while performing another's effects.
    fn apply_boxed<'a>(
        &'a self,
        loaded: Arc<SagaInstance>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<Applied>> {
        Box::pin(self.apply_to(Some(Arc::clone(&loaded)), loaded.id, event, |_, _| Ok(())))
    }

    /// Saves a transition. A store error that is not a conflict may have hit
    /// after the commit (the connection dropped while committing), so the saga
    /// is read back, for up to [`READ_BACK_PATIENCE`] while the store does not
    /// answer: if it holds this transition, the save (ours, or another
    /// engine's identical one) succeeded and its effects must be performed, or
    /// a dispatched command would be lost.
    async fn save(&self, before: &SagaInstance, t: &Transition) -> Result<Saved> {
        let id = t.instance.id;
        let store = &self.inner.store;
        let error = match store.save(&t.instance, before.version, &t.logs).await {
            Ok(()) => {
                self.sure(id);
                return Ok(Saved::Surely);
            }
            Err(e @ (Error::Conflict { .. } | Error::NotFound(_))) => return Err(e),
            Err(e) => e,
        };
        let started = tokio::time::Instant::now();
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match store.load(id).await {
                Ok(Some(stored)) if holds(&stored, &t.instance) => {
                    tracing::warn!(saga_id = %id, error = %error, "the save reported an error but the transition is stored; going on");
                    self.sure(id);
                    return Ok(Saved::Probably(Arc::new(stored)));
                }
                // Another writer's version: reload at once.
                Ok(Some(stored)) if stored.version >= t.instance.version => {
                    return Err(Error::Conflict {
                        id,
                        expected: before.version,
                    });
                }
                // Not written: the event is applied again.
                Ok(_) => return Err(error),
                Err(e) if !e.is_transient() || started.elapsed() + delay > READ_BACK_PATIENCE => {
                    // Still unknown. The event is applied again later (a
                    // reply stays in hand) and may meet this save as a
                    // conflict; or the step's timeout sends again.
                    tracing::warn!(saga_id = %id, error = %e, "the save reported an error and the saga cannot be read back; its outcome is unknown");
                    self.unsure(id, t.instance.version);
                    return Err(error);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// A save of saga `id` is known to be stored: no earlier one of unknown
    /// outcome is to be settled any more.
    fn sure(&self, id: SagaId) {
        let mut unsure = self
            .inner
            .unsure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !unsure.is_empty() {
            unsure.remove(&id);
        }
    }

    /// Remembers that the save of `version` of saga `id` may have committed.
    fn unsure(&self, id: SagaId, version: u64) {
        let mut unsure = self
            .inner
            .unsure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if unsure.len() >= MOST_UNSURE {
            unsure.clear();
        }
        unsure.insert(id, version);
    }

    /// Whether the last save of saga `id` was left of unknown outcome: the
    /// store did not answer the read-back for [`READ_BACK_PATIENCE`].
    pub(super) fn is_unsure(&self, id: SagaId) -> bool {
        self.inner
            .unsure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&id)
    }

    /// Whether a save of `version` of saga `id` had an unknown outcome
    /// (forgotten once it matched).
    fn was_unsure(&self, id: SagaId, version: u64) -> bool {
        let mut unsure = self
            .inner
            .unsure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let matched = unsure.get(&id) == Some(&version);
        if matched {
            unsure.remove(&id);
        }
        matched
    }

    pub(super) fn cached(&self, id: SagaId) -> Option<Arc<SagaInstance>> {
        self.cache().get(&id).cloned()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<SagaId, Arc<SagaInstance>>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self, id: SagaId) {
        self.cache().remove(&id);
    }

    /// Keeps an unfinished saga's last saved state; drops finished ones.
    pub(super) fn remember(&self, instance: &Arc<SagaInstance>) {
        let capacity = self.inner.config.cache_capacity;
        let mut cache = self.cache();
        if instance.is_terminal() {
            self.inner.traces.forget(instance.id);
        }
        if instance.is_terminal() || capacity == 0 {
            cache.remove(&instance.id);
            return;
        }
        if cache.len() >= capacity && !cache.contains_key(&instance.id) {
            // Crude but bounded: start over rather than track recency.
            cache.clear();
        }
        cache.insert(instance.id, Arc::clone(instance));
    }

    pub(super) async fn perform(
        &self,
        def: &Arc<SagaDefinition>,
        instance: &Arc<SagaInstance>,
        effects: Vec<Effect>,
    ) {
        for effect in effects {
            match effect {
                Effect::SendCommand(command) => {
                    self.send(instance, *command).await;
                }
                Effect::RunLocal(run) => self.spawn_local(def, instance.id, *run),
                Effect::Finished(status) => {
                    tracing::info!(saga_id = %instance.id, saga_type = %instance.saga_type, %status, "saga finished");
                    self.inner
                        .waiters
                        .notify(instance.id, || wait::Heard::Finished(Arc::clone(instance)));
                }
            }
        }
    }

    /// Sends a command of `instance`'s in-flight attempt. When the transport
    /// refuses it, the store records that the command must be sent again
    /// ([`Event::SendFailed`]): the poller does it shortly, without consuming
    /// an attempt. Returns whether the command was sent.
    pub(super) async fn send(
        &self,
        instance: &Arc<SagaInstance>,
        mut command: CommandMessage,
    ) -> bool {
        command.reply_to = Some(self.inner.config.reply_queue.clone());
        let span = tracing::info_span!(
            "saga.step",
            saga_id = %command.saga_id,
            saga_type = %command.saga_type,
            step = %command.step_name,
            direction = %command.direction,
            attempt = command.attempt,
        );
        self.inner
            .traces
            .inject(command.saga_id, &span, &mut command.headers);
        let sent = self
            .inner
            .transport
            .send_command(&command)
            .instrument(span)
            .await;
        let Err(e) = sent else {
            return true;
        };
        tracing::warn!(
            saga_id = %command.saga_id, step = %command.step_name, attempt = command.attempt, error = %e,
            "command not sent; it is sent again from the store"
        );
        let event = Event::SendFailed {
            step: command.step as usize,
            direction: command.direction,
            attempt: command.attempt,
            error: e.to_string(),
        };
        if let Err(e) = self.apply_boxed(Arc::clone(instance), &event).await {
            tracing::warn!(
                saga_id = %command.saga_id, step = %command.step_name, error = %e,
                "could not record the failed send; the step's timeout sends it again"
            );
        }
        false
    }
}

/// Whether `stored` is the state `saved` tried to write.
pub(super) fn holds(stored: &SagaInstance, saved: &SagaInstance) -> bool {
    stored.version == saved.version
        && stored.log_seq == saved.log_seq
        && stored.status == saved.status
        && stored.cursor == saved.cursor
        && stored.steps == saved.steps
        && stored.data == saved.data
        && stored.error == saved.error
}
