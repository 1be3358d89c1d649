//! The runtime: runs saga definitions against a store and a transport.
//!
//! Each operation loads the instance, applies an event through the pure
//! [`machine`](crate::machine), saves the new state and its log entries with a
//! version check, and only then performs the effects (send commands, run
//! local steps, wake waiters). A version conflict reloads and re-applies, so
//! two engines working on the same saga never both dispatch.

mod apply;
mod census;
mod local;
mod run;
mod traces;
mod wait;

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::definition::{Saga, SagaData, SagaDefinition};
use crate::error::{Error, ErrorKind, Result};
use crate::id::SagaId;
use crate::machine::{self, Event};
use crate::message::ReplyMessage;
use crate::propagation::Propagator;
use crate::running::Running;
use crate::state::{LogEntry, SagaInstance, SagaStatus, Waiting};
use crate::store::{Created, DefinitionKey, SagaCount, SagaQuery, SagaStore};
use crate::stuck::{self, StuckReason, StuckRule, StuckSaga};
use crate::transport::Transport;

/// Tuning for an [`Engine`]; every field has a setter on [`EngineBuilder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The queue replies come back on, shared by all orchestrators of one app
    /// (default `saga_replies`).
    pub reply_queue: String,
    /// How often the due-saga poller looks for timeouts and retries (default
    /// 100 ms; at least 1 ms).
    pub poll_interval: Duration,
    /// How many due sagas one poll claims at most (default 64; at least 1).
    pub claim_batch: usize,
    /// How long a claimed saga is reserved for this engine (default 30 s).
    pub lease: Duration,
    /// This engine's name in leases and logs (default `engine-<random>`).
    pub instance_name: String,
    /// Replies processed concurrently (default 64).
    pub max_in_flight: usize,
    /// How often a version conflict is retried before giving up (default 16).
    pub conflict_retries: u32,
    /// How often [`Engine::wait`] re-reads the store when no notification
    /// comes (default 250 ms).
    pub wait_poll: Duration,
    /// How many unfinished sagas this engine keeps in memory after saving
    /// them, so a reply needs no load first (default 4096; 0 disables). A
    /// stale entry costs one version conflict and a reload, never a wrong
    /// transition.
    pub cache_capacity: usize,
    /// How many of the most recently updated in-flight sagas [`Engine::run`]
    /// sends their command again at start-up, to recover commands a crashed
    /// engine committed but never sent (default 1000; 0 disables). Older ones
    /// are recovered by their step's timeout.
    pub startup_resend_limit: usize,
    /// How long a reply for a definition this engine does not have is held
    /// before it goes back to the reply queue for an engine that has it (a
    /// rolling deploy of a new definition version; default 1 s).
    pub hand_back_delay: Duration,
    /// When an unfinished saga counts as stuck (see [`stuck`](crate::stuck);
    /// default 30 s of grace, 10 attempts of a step that retries without limit).
    pub stuck: StuckRule,
    /// How often [`Engine::run`] counts the unfinished sagas in the store for
    /// the `saga_running`, `saga_oldest_running_seconds` and `saga_stuck`
    /// gauges, and logs a warning for each newly stuck saga (default 15 s;
    /// zero disables).
    pub census_interval: Duration,
    /// How long finished sagas are kept (default `None`: forever). With a
    /// retention, [`Engine::run`] deletes every saga that ended `Completed`
    /// or `Compensated` longer than this ago, with its log, in the
    /// background (see [`Engine::prune`]); a `Failed` saga is kept until an
    /// operator deals with it. Once a saga is deleted, its idempotency key
    /// starts a new saga, and [`Engine::get`] no longer finds it: keep sagas
    /// longer than a client may repeat a start, and than anyone needs their
    /// history. Participants keep their inbox records at least as long
    /// (see [`Inbox`](crate::Inbox#retention)).
    pub retention: Option<Duration>,
    /// How often the background pruning runs when a
    /// [`retention`](Self::retention) is set (default 1 min).
    pub prune_interval: Duration,
    /// Most sagas deleted by one store call (one transaction) (default 500).
    pub prune_batch: usize,
    /// Pause between two batches of the background pruning, so it never
    /// holds the store for long (default 50 ms).
    pub prune_pause: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            reply_queue: "saga_replies".to_owned(),
            poll_interval: Duration::from_millis(100),
            claim_batch: 64,
            lease: Duration::from_secs(30),
            instance_name: format!("engine-{}", uuid::Uuid::new_v4().simple()),
            max_in_flight: 64,
            conflict_retries: 16,
            wait_poll: Duration::from_millis(250),
            cache_capacity: 4096,
            startup_resend_limit: 1000,
            hand_back_delay: Duration::from_secs(1),
            stuck: StuckRule::default(),
            census_interval: Duration::from_secs(15),
            retention: None,
            prune_interval: Duration::from_secs(60),
            prune_batch: 500,
            prune_pause: Duration::from_millis(50),
        }
    }
}

/// Options for [`Engine::start_with`].
///
/// ```
/// # use saga_core::{SagaId, StartOptions};
/// let options = StartOptions::new().idempotency_key("order-42").id(SagaId::new());
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StartOptions {
    /// Use this id instead of a fresh one.
    pub id: Option<SagaId>,
    /// Starting twice with the same key returns the first saga's id.
    pub idempotency_key: Option<String>,
}

impl StartOptions {
    /// No options: a fresh id, no idempotency key.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starting twice with the same key starts one saga; the second start
    /// returns the first one's id.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Uses `id` instead of a fresh one.
    #[must_use]
    pub fn id(mut self, id: SagaId) -> Self {
        self.id = Some(id);
        self
    }
}

/// A finished saga, with its data as the definition's type.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Outcome<D> {
    /// The saga.
    pub id: SagaId,
    /// `Completed`, `Compensated` or `Failed`.
    pub status: SagaStatus,
    /// The saga's data as it ended. A compensation does not change the data:
    /// a compensated saga's data is what its steps left before it compensated.
    pub data: D,
    /// Why it compensated or failed.
    pub error: Option<String>,
}

impl<D> Outcome<D> {
    /// Whether every step succeeded.
    #[must_use]
    pub fn is_completed(&self) -> bool {
        self.status == SagaStatus::Completed
    }
}

/// Builds an [`Engine`]; see [`Engine::builder`].
#[must_use]
pub struct EngineBuilder {
    store: Arc<dyn SagaStore>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    definitions: HashMap<(String, u32), Arc<SagaDefinition>>,
    config: EngineConfig,
    propagator: Option<Arc<dyn Propagator>>,
}

impl EngineBuilder {
    /// Registers a saga definition. Register every version that still has running instances.
    pub fn register<D: SagaData>(mut self, saga: &Saga<D>) -> Self {
        let def = Arc::clone(saga.definition());
        self.definitions
            .insert((def.name().to_owned(), def.version()), def);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`EngineConfig::reply_queue`].
    pub fn reply_queue(mut self, queue: impl Into<String>) -> Self {
        self.config.reply_queue = queue.into();
        self
    }

    /// See [`EngineConfig::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// See [`EngineConfig::claim_batch`].
    pub fn claim_batch(mut self, batch: usize) -> Self {
        self.config.claim_batch = batch;
        self
    }

    /// See [`EngineConfig::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// See [`EngineConfig::instance_name`].
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.config.instance_name = name.into();
        self
    }

    /// See [`EngineConfig::max_in_flight`].
    pub fn max_in_flight(mut self, replies: usize) -> Self {
        self.config.max_in_flight = replies;
        self
    }

    /// See [`EngineConfig::conflict_retries`].
    pub fn conflict_retries(mut self, retries: u32) -> Self {
        self.config.conflict_retries = retries;
        self
    }

    /// See [`EngineConfig::wait_poll`].
    pub fn wait_poll(mut self, interval: Duration) -> Self {
        self.config.wait_poll = interval;
        self
    }

    /// See [`EngineConfig::cache_capacity`].
    pub fn cache_capacity(mut self, sagas: usize) -> Self {
        self.config.cache_capacity = sagas;
        self
    }

    /// See [`EngineConfig::startup_resend_limit`].
    pub fn startup_resend_limit(mut self, sagas: usize) -> Self {
        self.config.startup_resend_limit = sagas;
        self
    }

    /// See [`EngineConfig::hand_back_delay`].
    pub fn hand_back_delay(mut self, delay: Duration) -> Self {
        self.config.hand_back_delay = delay;
        self
    }

    /// Sets when an unfinished saga counts as stuck.
    pub fn stuck_rule(mut self, rule: StuckRule) -> Self {
        self.config.stuck = rule;
        self
    }

    /// Sets how often the census counts unfinished and stuck sagas (zero disables it).
    pub fn census_interval(mut self, interval: Duration) -> Self {
        self.config.census_interval = interval;
        self
    }

    /// Carries trace context in the headers of the commands sent and reads it
    /// from the replies received (see [`propagation`](crate::propagation)).
    pub fn propagator(mut self, propagator: impl Propagator) -> Self {
        self.propagator = Some(Arc::new(propagator));
        self
    }

    /// Keeps finished sagas for `retention`, then deletes them in the
    /// background; see [`EngineConfig::retention`] (the default keeps them
    /// forever).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = Some(retention);
        self
    }

    /// See [`EngineConfig::prune_interval`].
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.config.prune_interval = interval;
        self
    }

    /// See [`EngineConfig::prune_batch`].
    pub fn prune_batch(mut self, batch: usize) -> Self {
        self.config.prune_batch = batch;
        self
    }

    /// See [`EngineConfig::prune_pause`].
    pub fn prune_pause(mut self, pause: Duration) -> Self {
        self.config.prune_pause = pause;
        self
    }

    /// Uses another clock (a [`ManualClock`](crate::clock::ManualClock) in simulations).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Finishes the engine.
    pub fn build(self) -> Engine {
        let mut known: Vec<DefinitionKey> = self
            .definitions
            .keys()
            .map(|(name, version)| DefinitionKey::new(name.clone(), *version))
            .collect();
        known.sort();
        let built_at = self.clock.now();
        Engine {
            inner: Arc::new(Inner {
                built_at,
                store: self.store,
                transport: self.transport,
                clock: self.clock,
                definitions: self.definitions,
                known,
                waiters: Arc::default(),
                cache: Mutex::default(),
                unsure: Mutex::default(),
                local: local::LocalRuns::default(),
                traces: traces::Traces::new(self.propagator, self.config.cache_capacity),
                config: self.config,
            }),
        }
    }
}

struct Inner {
    store: Arc<dyn SagaStore>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    definitions: HashMap<(String, u32), Arc<SagaDefinition>>,
    /// The registered definitions, for claiming only sagas this engine can run.
    known: Vec<DefinitionKey>,
    config: EngineConfig,
    /// Who waits for which saga's end.
    waiters: Arc<wait::Waiters>,
    /// Last saved state of unfinished sagas this engine worked on.
    cache: Mutex<HashMap<SagaId, Arc<SagaInstance>>>,
    /// Saves whose outcome is unknown (the store reported an error and the
    /// read-back failed too): the version each tried to write, by saga.
    unsure: Mutex<HashMap<SagaId, u64>>,
    /// Local step attempts running in this process.
    local: local::LocalRuns,
    /// Trace propagation.
    traces: traces::Traces,
    /// When [`EngineBuilder::build`] ran: the start-up resend looks only at
    /// sagas updated before, whose commands this engine did not send itself.
    built_at: DateTime<Utc>,
}

/// Runs sagas. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance", &self.inner.config.instance_name)
            .field(
                "definitions",
                &self.inner.definitions.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Engine {
    /// An engine over `store` and `transport` (an `Arc` of either works too).
    pub fn builder(store: impl SagaStore, transport: impl Transport) -> EngineBuilder {
        EngineBuilder {
            store: Arc::new(store),
            transport: Arc::new(transport),
            clock: Arc::new(SystemClock),
            definitions: HashMap::new(),
            config: EngineConfig::default(),
            propagator: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.inner.store
    }

    fn definition(&self, name: &str, version: u32) -> Result<&Arc<SagaDefinition>> {
        self.inner
            .definitions
            .get(&(name.to_owned(), version))
            .ok_or_else(|| Error::UnknownDefinition {
                name: name.to_owned(),
                version,
            })
    }

    /// Starts a saga with `data` and dispatches its first step.
    ///
    /// # Errors
    /// The definition is not registered; the data does not serialize; the store fails.
    pub async fn start<D: SagaData>(&self, saga: &Saga<D>, data: D) -> Result<SagaId> {
        self.start_with(saga, data, StartOptions::default()).await
    }

    /// Starts a saga with options. With an idempotency key that was used
    /// before, returns the first saga's id and starts nothing.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with<D: SagaData>(
        &self,
        saga: &Saga<D>,
        data: D,
        options: StartOptions,
    ) -> Result<SagaId> {
        Ok(self.create(saga, data, options).await?.0)
    }

    /// Starts a saga like [`start_with`](Self::start_with) and waits for its
    /// end like [`wait`](Self::wait), for at most `timeout`.
    ///
    /// Cheaper than the two calls: the waiter listens before the saga exists,
    /// so it does not read the saga back first. With an idempotency key used
    /// before, it waits for the first saga instead.
    ///
    /// # Errors
    /// As [`start_with`](Self::start_with) and [`wait`](Self::wait); on
    /// [`Error::WaitTimeout`] the saga was started and runs on.
    pub async fn start_and_wait<D: SagaData>(
        &self,
        saga: &Saga<D>,
        data: D,
        options: StartOptions,
        timeout: Duration,
    ) -> Result<SagaInstance> {
        let mut options = options;
        let id = *options.id.get_or_insert_with(SagaId::new);
        let waiter = self.waiter(id);
        let (created, new) = self.create(saga, data, options).await?;
        if new {
            return self.wait_with(waiter, timeout, true).await;
        }
        drop(waiter);
        self.wait_with(self.waiter(created), timeout, false).await
    }

    /// Creates the saga and dispatches its first step; its id and whether
    /// it is new (`false`: the idempotency key named an existing saga).
    async fn create<D: SagaData>(
        &self,
        saga: &Saga<D>,
        data: D,
        options: StartOptions,
    ) -> Result<(SagaId, bool)> {
        let def = Arc::clone(self.definition(saga.name(), saga.version())?);
        let data = serde_json::to_value(data)?;
        let id = options.id.unwrap_or_default();
        let span = tracing::info_span!("saga.start", saga_id = %id, saga_type = %def.name(), step = tracing::field::Empty);
        async {
            let t = machine::start(&def, id, data, options.idempotency_key, self.inner.clock.now());
            match self.create_or_read_back(&t).await? {
                Created::New => {
                    tracing::info!("saga started");
                    crate::metrics::transition(
                        def.name(),
                        t.instance.created_at,
                        &t.logs,
                        t.instance.updated_at,
                    );
                    let instance = Arc::new(t.instance);
                    self.remember(&instance);
                    self.perform(&def, &instance, t.effects).await;
                    Ok((id, true))
                }
                Created::Existing(existing) => {
                    tracing::info!(existing = %existing.id, "idempotency key already used; returning the first saga");
                    Ok((existing.id, false))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Creates the saga of `t`. A store error that is not a refusal may have
    /// hit after the commit (the connection dropped while committing), so the
    /// saga is read back: if it holds `t`, it was created and its first
    /// command must be sent, or the saga would wait for the step's timeout
    /// (and a client retrying with the idempotency key would get a saga
    /// whose command nobody sends).
    async fn create_or_read_back(&self, t: &machine::Transition) -> Result<Created> {
        let store = &self.inner.store;
        let error = match store.create(&t.instance, &t.logs).await {
            Ok(created) => return Ok(created),
            Err(e) if matches!(e.kind(), ErrorKind::Duplicate | ErrorKind::Invalid) => {
                return Err(e);
            }
            Err(e) => e,
        };
        match store.load(t.instance.id).await {
            Ok(Some(stored)) if apply::holds(&stored, &t.instance) => {
                tracing::warn!(error = %error, "the create reported an error but the saga is stored; going on");
                Ok(Created::New)
            }
            _ => Err(error),
        }
    }

    /// Applies a participant's reply.
    ///
    /// # Errors
    /// `NotFound` for an unknown saga; `UnknownDefinition` when the saga's
    /// definition is not registered with this engine (another engine may have
    /// it: [`run`](Self::run) hands such a reply back to the queue);
    /// `MalformedMessage` when the step index and name disagree with the
    /// definition; store errors.
    pub async fn handle_reply(&self, reply: ReplyMessage) -> Result<()> {
        let id = reply.saga_id;
        let span = tracing::info_span!(
            "saga.reply",
            saga_id = %id,
            step = %reply.step_name,
            direction = %reply.direction,
            attempt = reply.attempt,
        );
        self.inner.traces.extract(id, &reply.headers, &span);
        self.apply_reply(reply).instrument(span).await
    }

    async fn apply_reply(&self, reply: ReplyMessage) -> Result<()> {
        let id = reply.saga_id;
        let event = Event::Reply {
            step: reply.step as usize,
            direction: reply.direction,
            attempt: reply.attempt,
            outcome: reply.outcome.into_result(),
        };
        let step_name = reply.step_name;
        let cached = self.cached(id);
        self.apply_to(cached, id, &event, move |def, _| {
            match def.steps().get(reply.step as usize) {
                Some(step) if step.name() == step_name => Ok(()),
                _ => Err(Error::MalformedMessage(format!(
                    "reply names step {} `{step_name}`, which saga `{}` v{} does not have",
                    reply.step,
                    def.name(),
                    def.version()
                ))),
            }
        })
        .await
        .map(drop)
    }

    /// Claims due sagas (timeouts, retries, deadlines) and wakes them.
    /// Returns how many were claimed. [`run`](Self::run) calls this on every poll.
    ///
    /// # Errors
    /// When the store cannot be queried, or stops answering while a woken
    /// saga's save is read back (the batch's other sagas then wait for
    /// their leases to end).
    pub async fn tick(&self) -> Result<usize> {
        let config = &self.inner.config;
        let due = self
            .inner
            .store
            .claim_due(
                self.inner.clock.now(),
                config.claim_batch.max(1),
                &config.instance_name,
                config.lease,
                &self.inner.known,
            )
            .await?;
        let count = due.len();
        for instance in due {
            let id = instance.id;
            let span =
                tracing::info_span!("saga.wake", saga_id = %id, saga_type = %instance.saga_type);
            self.inner.traces.resume(id, &span);
            // A task of its own, so that a panic (a payload or retry closure
            // with a bug, for this saga's data) stays this saga's.
            let engine = self.clone();
            let woken = tokio::spawn(
                async move {
                    let event = Event::WakeUp;
                    engine
                        .apply_to(Some(Arc::new(instance)), id, &event, |_, _| Ok(()))
                        .await
                }
                .instrument(span),
            );
            match woken.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if self.is_unsure(id) => {
                    // The store did not answer for the whole read-back: the
                    // rest of the batch would wait as long, one after the
                    // other. This poll fails; their leases run out and a
                    // later poll claims them again.
                    return Err(e);
                }
                Ok(Err(e)) => {
                    tracing::warn!(saga_id = %id, error = %e, "waking a due saga failed; it stays due");
                }
                Err(e) if e.is_panic() => {
                    tracing::error!(
                        saga_id = %id, panic = panic_message(e.into_panic().as_ref()),
                        "waking a due saga panicked (a payload or retry closure of its definition?); \
                         it stays due, leased to this engine until its lease ends"
                    );
                }
                Err(_) => {}
            }
        }
        Ok(count)
    }

    /// Sends the in-flight command of a running saga again now (its timeout is
    /// not extended), or performs its scheduled retry or pending send now. A
    /// local step that may still be running is not run again.
    ///
    /// # Errors
    /// `NotFound`; `InvalidOperation` when the saga has finished.
    pub async fn resume(&self, id: SagaId) -> Result<SagaInstance> {
        self.operator(id, "resume", Event::Resume, |_, s| {
            (!s.is_terminal())
                .then_some(())
                .ok_or("the saga has finished")
        })
        .await
    }

    /// Retries a `Failed` saga from the step (or compensation) where it
    /// stopped: a new attempt with a new message id and a fresh attempt
    /// budget. If the participant refused the step (a business failure, which
    /// it records), the new attempt carries a new idempotency key so the
    /// participant runs it again; otherwise the key stays, so a command whose
    /// outcome is unknown cannot take effect twice.
    ///
    /// # Errors
    /// `NotFound`; `InvalidOperation` unless the saga is `Failed`.
    pub async fn retry(&self, id: SagaId) -> Result<SagaInstance> {
        self.operator(id, "retry", Event::Retry, |_, s| {
            (s.status == SagaStatus::Failed)
                .then_some(())
                .ok_or("only a failed saga can be retried")
        })
        .await
    }

    /// Cancels a running saga that has not reached its pivot: it compensates.
    ///
    /// # Errors
    /// `NotFound`; `InvalidOperation` when the saga is not running or is past its pivot.
    pub async fn cancel(&self, id: SagaId, reason: impl Into<String>) -> Result<SagaInstance> {
        let event = Event::Cancel {
            reason: reason.into(),
        };
        self.operator(id, "cancel", event, |def, s| {
            machine::can_cancel(def, s)
                .then_some(())
                .ok_or("only a running saga before its pivot can be cancelled")
        })
        .await
    }

    async fn operator(
        &self,
        id: SagaId,
        action: &'static str,
        event: Event,
        allowed: impl Fn(&SagaDefinition, &SagaInstance) -> Result<(), &'static str>,
    ) -> Result<SagaInstance> {
        self.apply_to(None, id, &event, |def, instance| {
            allowed(def, instance).map_err(|reason| Error::InvalidOperation {
                id,
                action,
                reason: reason.to_owned(),
            })
        })
        .await
        .map(|(_, after)| SagaInstance::clone(&after))
    }

    /// Loads a saga.
    ///
    /// # Errors
    /// Store errors.
    pub async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        self.inner.store.load(id).await
    }

    /// A saga's log, in order.
    ///
    /// # Errors
    /// Store errors.
    pub async fn logs(&self, id: SagaId) -> Result<Vec<LogEntry>> {
        self.inner.store.logs(id).await
    }

    /// Sagas matching `query`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>> {
        self.inner.store.list(query).await
    }

    /// How many sagas match `query`, by type and status (the limit aside).
    ///
    /// # Errors
    /// Store errors.
    pub async fn counts(&self, query: &SagaQuery) -> Result<Vec<SagaCount>> {
        self.inner.store.counts(query).await
    }

    /// The unfinished sagas matching `query` that count as stuck under the
    /// engine's [`StuckRule`], with the reason, least recently updated first.
    ///
    /// The rules need the saga's definition, so they run here rather than in
    /// the store: the engine examines the [`STUCK_SCAN`](Self::STUCK_SCAN)
    /// least recently updated unfinished sagas that match `query` (a saga
    /// that made no progress is among them; one retrying without limit keeps
    /// changing, and in a backlog larger than the scan may be missed), and
    /// returns at most `query.limit` of the stuck ones. Sagas of definitions this
    /// engine does not have are not judged.
    ///
    /// # Errors
    /// Store errors.
    pub async fn stuck(&self, query: &SagaQuery) -> Result<Vec<StuckSaga>> {
        let candidates = self
            .inner
            .store
            .list(
                &query
                    .clone()
                    .unfinished()
                    .oldest_first()
                    .limit(Self::STUCK_SCAN),
            )
            .await?;
        Ok(candidates
            .into_iter()
            .filter_map(|instance| {
                let reason = self.stuck_reason(&instance)?;
                Some(StuckSaga { instance, reason })
            })
            .take(query.limit)
            .collect())
    }

    /// Why `instance` counts as stuck now under the engine's [`StuckRule`];
    /// `None` when it does not, or when this engine lacks its definition.
    #[must_use]
    pub fn stuck_reason(&self, instance: &SagaInstance) -> Option<StuckReason> {
        let def = self
            .definition(&instance.saga_type, instance.definition_version)
            .ok()?;
        stuck::check(
            def,
            instance,
            self.inner.clock.now(),
            self.inner.config.stuck,
        )
    }

    /// How many unfinished sagas [`stuck`](Self::stuck) examines at most.
    pub const STUCK_SCAN: usize = 10_000;

    /// Deletes every saga that ended `Completed` or `Compensated` before
    /// `finished_before` (by its last update), with its log, one batch of
    /// [`EngineConfig::prune_batch`] sagas (one transaction) after another
    /// until none is left, and returns how many it deleted. `Failed`,
    /// running and compensating sagas stay. For manual runs; with
    /// [`EngineBuilder::retention`], [`run`](Self::run) does it in the
    /// background. Safe while engines run on the same store, and while other
    /// processes prune it too (see [`SagaStore::prune`]).
    ///
    /// # Errors
    /// Store errors (the batches deleted before stay deleted).
    pub async fn prune(&self, finished_before: DateTime<Utc>) -> Result<usize> {
        self.prune_until(finished_before, None).await
    }

    /// [`prune`](Self::prune), with `pause` between batches; stops early
    /// (between batches) once `stop` says so.
    async fn prune_until(
        &self,
        finished_before: DateTime<Utc>,
        mut pause: Option<(Duration, &mut tokio::sync::watch::Receiver<bool>)>,
    ) -> Result<usize> {
        let batch = self.inner.config.prune_batch.max(1);
        let mut total = 0;
        loop {
            let pruned = self.inner.store.prune(finished_before, batch).await?;
            total += pruned;
            tracing::debug!(
                pruned,
                total,
                %finished_before,
                "retention: batch of finished sagas deleted"
            );
            if pruned < batch {
                return Ok(total);
            }
            match &mut pause {
                None => tokio::task::yield_now().await,
                Some((pause, stop)) => {
                    tokio::select! {
                        biased;
                        () = run::stopped(stop) => return Ok(total),
                        () = tokio::time::sleep(*pause) => {}
                    }
                }
            }
        }
    }

    /// A Mermaid diagram of the instance's progress, if its definition is registered.
    #[must_use]
    pub fn mermaid(&self, instance: &SagaInstance) -> Option<String> {
        let def = self
            .definition(&instance.saga_type, instance.definition_version)
            .ok()?;
        Some(crate::mermaid::instance(def, instance))
    }

    /// Waits until the saga reaches a terminal status, even when another
    /// engine process finishes it, for at most `timeout`.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when time runs out; `NotFound`; store errors.
    pub async fn wait(&self, id: SagaId, timeout: Duration) -> Result<SagaInstance> {
        self.wait_with(self.waiter(id), timeout, false).await
    }

    /// Waits until the saga reaches a terminal status, like [`wait`](Self::wait),
    /// and returns its data as the definition's type.
    ///
    /// # Errors
    /// As [`wait`](Self::wait); [`Error::Serialization`] when the stored data
    /// does not decode as `D` (the saga is not of this definition).
    pub async fn wait_for<D: SagaData>(
        &self,
        saga: &Saga<D>,
        id: SagaId,
        timeout: Duration,
    ) -> Result<Outcome<D>> {
        let _ = saga;
        let finished = self.wait(id, timeout).await?;
        Ok(Outcome {
            id: finished.id,
            status: finished.status,
            data: finished.data_as()?,
            error: finished.error,
        })
    }

    /// Runs the engine in a task of its own (reply consumer and due-saga
    /// poller, as [`run`](Self::run)) until the returned handle is shut down.
    pub fn spawn(&self) -> Running {
        let engine = self.clone();
        Running::spawn(move |stop| async move { engine.run(stop).await })
    }

    /// Runs the engine until `shutdown` resolves: consumes replies and polls
    /// for due sagas. On shutdown it stops taking replies, finishes the ones in
    /// hand, and returns. A transient failure to subscribe to the reply queue
    /// (the broker is restarting) is retried with backoff.
    ///
    /// # Errors
    /// When the reply queue cannot be consumed for a reason that is not transient.
    ///
    /// # Panics
    /// Resumes a panic of the due-saga poller outside any one saga's wake (in
    /// the store, say), after stopping like a shutdown: an engine without its
    /// poller would never time a step out again. A panic while waking one
    /// saga is logged with its id and leaves the engine running.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        run::run(self, shutdown).await
    }

    /// Sends again the command of every recently updated saga that waits for
    /// a reply (up to [`EngineConfig::startup_resend_limit`], newest first),
    /// so that a command a crashed engine committed but never sent is not lost
    /// until its timeout. Participants deduplicate; no attempt is consumed.
    /// Sagas updated after this engine was built are left out: their
    /// commands went out through this engine already.
    /// [`run`](Self::run) calls it once at start-up. Returns how many were sent.
    ///
    /// # Errors
    /// When the store cannot be queried.
    pub async fn resend_in_flight(&self) -> Result<usize> {
        let now = self.inner.clock.now();
        let mut sent = 0;
        for status in [SagaStatus::Running, SagaStatus::Compensating] {
            // Stores keep microseconds: one more takes in a saga saved in
            // the same microsecond as the build (a crash at that instant).
            let query = SagaQuery::new()
                .status(status)
                .updated_before(self.inner.built_at + chrono::TimeDelta::microseconds(1))
                .limit(self.inner.config.startup_resend_limit);
            for instance in self.inner.store.list(&query).await? {
                let Some(cursor) = instance.cursor else {
                    continue;
                };
                // Due ones are the poller's; a pending send is already recorded.
                let due = instance.next_wake_at.is_none_or(|at| at <= now);
                if cursor.waiting != Waiting::Reply || due {
                    continue;
                }
                let Ok(def) = self.definition(&instance.saga_type, instance.definition_version)
                else {
                    continue;
                };
                // Payload closures run here: one that panics for this saga's
                // data must not stop the others' re-sends.
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    machine::command_for(def, &instance, cursor)
                }));
                let command = match built {
                    Ok(Ok(Some(command))) => command,
                    Ok(_) => continue,
                    Err(panic) => {
                        tracing::error!(
                            saga_id = %instance.id, panic = panic_message(panic.as_ref()),
                            "building an in-flight command to send again panicked; skipped"
                        );
                        continue;
                    }
                };
                if self.send(&Arc::new(instance), command).await {
                    sent += 1;
                }
            }
        }
        if sent > 0 {
            tracing::info!(
                sent,
                "sent the commands of in-flight sagas again at start-up"
            );
        }
        Ok(sent)
    }

    /// Stops at once, like a crash: drops the local step attempts in flight.
    /// A clean stop is [`run`](Self::run)'s shutdown. For simulations.
    #[cfg(feature = "testing")]
    pub fn abort(&self) {
        self.inner.local.abort();
    }
}

/// The message of a panic's payload, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
