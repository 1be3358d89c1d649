//! The participant side: services that receive commands and reply.
//!
//! A [`Participant`] serves one endpoint. Register a typed handler per
//! [`Command`]; the runtime decodes each command, calls the handler with a
//! [`CommandContext`] carrying the stable idempotency key, sends the reply, and
//! only then acknowledges the message.
//!
//! # Effectively once
//! Delivery is at least once, so a handler must make its effect idempotent on
//! [`CommandContext::idempotency_key`]. The best place is the handler's own
//! database transaction: record the key in an inbox table in the same
//! transaction as the business change (`saga-postgres` ships such a helper).
//!
//! For handlers without a transaction, [`ParticipantBuilder::inbox`] makes the
//! runtime claim the key in an [`Inbox`] before calling the handler and record
//! the outcome after it.
//!
//! Either way, the contract is:
//! - the key is claimed before the handler runs: a duplicate that arrives
//!   while the first copy is still being handled (a handler slower than the
//!   step's timeout) waits for it, then gets its recorded reply;
//! - a key already processed is answered with the recorded reply, without
//!   running the handler again;
//! - a retryable or unknown failure is not recorded (nothing happened; try
//!   again): the claim is released;
//! - a compensation first records a refusal under the step's *invoke* key if
//!   that key has no outcome, so an invoke that arrives after its compensation
//!   (a delayed or redelivered command) is refused instead of creating an
//!   effect nobody will undo. If the invoke is being handled at that moment,
//!   the compensation waits for it to finish, and then undoes what it did.
//!
//! # Retention
//! Inbox records pile up with every command. With
//! [`ParticipantBuilder::inbox_retention`], [`Participant::run`] deletes the
//! records older than the retention in the background: the inbox's (see
//! [`Inbox::prune`]) and those of any [`ParticipantBuilder::prune_with`]
//! function (an inbox kept by the handlers in their own transactions, or a
//! business table's tombstones). The retention must be longer than any copy
//! of a command can arrive: a duplicate whose record is gone runs again (see
//! [`Inbox`](crate::Inbox#retention)). The default keeps records forever.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::definition::Command;
use crate::error::{Error, Result, StepError};
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::inbox::{Claim, Inbox};
use crate::message::{CommandMessage, ReplyMessage, ReplyOutcome};
use crate::propagation::Propagator;
use crate::running::Running;
use crate::transport::{Delivery, Transport};

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler =
    Arc<dyn Fn(Value, CommandContext) -> BoxFuture<Result<Value, StepError>> + Send + Sync>;
type Pruner = Arc<dyn Fn(DateTime<Utc>, usize) -> BoxFuture<Result<usize>> + Send + Sync>;

/// How a participant prunes its records (see [retention](self#retention)).
#[derive(Clone)]
struct Retention {
    /// `None`: records are kept forever.
    keep: Option<std::time::Duration>,
    interval: std::time::Duration,
    batch: usize,
    pause: std::time::Duration,
    pruners: Vec<Pruner>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: None,
            interval: std::time::Duration::from_secs(60),
            batch: 500,
            pause: std::time::Duration::from_millis(50),
            pruners: Vec::new(),
        }
    }
}

/// What a handler knows about the command it handles.
#[derive(Clone, Debug)]
pub struct CommandContext {
    /// The saga that sent it.
    pub saga_id: SagaId,
    /// The saga's type.
    pub saga_type: String,
    /// The step's name.
    pub step: String,
    /// Action or compensation.
    pub direction: Direction,
    /// The attempt (1 for the first; later attempts carry the same key).
    pub attempt: u32,
    /// The key to deduplicate on.
    pub idempotency_key: IdempotencyKey,
    /// How many times the broker delivered this message.
    pub delivery_count: u32,
}

impl CommandContext {
    /// The key of the step's forward action (what a compensation tombstones).
    #[must_use]
    pub fn invoke_key(&self) -> IdempotencyKey {
        IdempotencyKey::new(self.saga_id, &self.step, Direction::Invoke)
    }
}

/// Type state of a [`ParticipantBuilder`] whose handlers take no shared state.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoState;

/// Type state of a [`ParticipantBuilder`] whose handlers get a clone of `S`.
#[derive(Clone, Debug)]
pub struct WithState<S>(S);

/// Builds a [`Participant`]; returned by [`Participant::builder`].
#[must_use = "a participant does nothing until it is built and run"]
pub struct ParticipantBuilder<S = NoState> {
    state: S,
    endpoint: Option<String>,
    handlers: HashMap<String, Handler>,
    inbox: Option<Arc<dyn Inbox>>,
    concurrency: usize,
    retention: Retention,
    problems: Vec<String>,
    propagator: Option<Arc<dyn Propagator>>,
}

impl<S> ParticipantBuilder<S> {
    fn add<C: Command>(mut self, handler: Handler) -> Self {
        match &self.endpoint {
            None => self.endpoint = Some(C::ENDPOINT.to_owned()),
            Some(endpoint) if endpoint != C::ENDPOINT => self.problems.push(format!(
                "command `{}` goes to endpoint `{}`, but this participant serves `{endpoint}` \
                 (its first command's): give it a participant of its own",
                C::NAME,
                C::ENDPOINT
            )),
            Some(_) => {}
        }
        if self.handlers.insert(C::NAME.to_owned(), handler).is_some() {
            self.problems
                .push(format!("command `{}` has two handlers", C::NAME));
        }
        self
    }

    /// Deduplicates through `inbox` around every handler call (see the
    /// [module docs](self); a handler with a database transaction of its own
    /// is better served by an inbox inside that transaction).
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// Makes the trace context in each command's headers the parent of its
    /// `saga.command` span, and writes that span's context into the reply
    /// (see [`propagation`](crate::propagation)).
    pub fn propagator(mut self, propagator: impl Propagator) -> Self {
        self.propagator = Some(Arc::new(propagator));
        self
    }

    /// How many commands are handled at once (default 16).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Deletes inbox records older than `retention` in the background while
    /// the participant [runs](Participant::run): the [`inbox`](Self::inbox)'s
    /// and those of every [`prune_with`](Self::prune_with) function, every
    /// [`prune_interval`](Self::prune_interval). The default keeps them
    /// forever. The retention must be longer than any copy of a command can
    /// arrive (see [`Inbox`](crate::Inbox#retention)): days, and at least the
    /// orchestrator's [retention](crate::EngineBuilder::retention).
    pub fn inbox_retention(mut self, retention: std::time::Duration) -> Self {
        self.retention.keep = Some(retention);
        self
    }

    /// How often the [`inbox_retention`](Self::inbox_retention) pruning runs
    /// (default 1 min), and the most records one call deletes (default 500).
    pub fn prune_interval(mut self, interval: std::time::Duration, batch: usize) -> Self {
        self.retention.interval = interval;
        self.retention.batch = batch.max(1);
        self
    }

    /// Also prunes records the handlers keep themselves (an inbox table used
    /// inside their own transactions, like `saga_postgres::inbox::check_in`'s,
    /// or a business table's tombstones) when an
    /// [`inbox_retention`](Self::inbox_retention) is set: `prune(before,
    /// batch)` deletes at most `batch` records written before `before` and
    /// returns how many. It is called again while it returns a full batch.
    pub fn prune_with<F, Fut>(mut self, prune: F) -> Self
    where
        F: Fn(DateTime<Utc>, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<usize>> + Send + 'static,
    {
        self.retention.pruners.push(Arc::new(move |before, batch| {
            Box::pin(prune(before, batch))
        }));
        self
    }

    /// Finishes the participant. It serves the endpoint of its commands
    /// ([`Command::ENDPOINT`]).
    ///
    /// # Errors
    /// [`Error::InvalidParticipant`] when it has no handler, or commands of
    /// different endpoints, or two handlers for one command.
    pub fn build(self) -> Result<Participant> {
        let Some(endpoint) = self.endpoint else {
            return Err(Error::InvalidParticipant(
                "a participant needs at least one handler (`.on(..)`)".to_owned(),
            ));
        };
        let mut problems = self.problems;
        if self.retention.keep.is_some()
            && self.inbox.is_none()
            && self.retention.pruners.is_empty()
        {
            problems.push(
                "an inbox retention needs an inbox (`.inbox(..)`) or a `.prune_with(..)` \
                 function: there is nothing to prune"
                    .to_owned(),
            );
        }
        if !problems.is_empty() {
            return Err(Error::InvalidParticipant(format!(
                "participant `{endpoint}`: {}",
                problems.join("; ")
            )));
        }
        Ok(Participant {
            inner: Arc::new(Inner {
                endpoint,
                handlers: self.handlers,
                inbox: self.inbox,
                concurrency: self.concurrency,
                propagator: self.propagator,
                retention: self.retention,
            }),
        })
    }
}

fn erase<C, Fut>(handler: impl Fn(C, CommandContext) -> Fut + Send + Sync + 'static) -> Handler
where
    C: Command,
    Fut: Future<Output = Result<C::Reply, StepError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |payload: Value, ctx: CommandContext| {
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let command: C = serde_json::from_value(payload).map_err(|e| {
                StepError::business(format!("command `{}` does not decode: {e}", C::NAME))
            })?;
            let reply = handler(command, ctx).await?;
            serde_json::to_value(reply)
                .map_err(|e| StepError::unknown(format!("reply does not encode: {e}")))
        })
    })
}

impl ParticipantBuilder<NoState> {
    /// Handles command `C` with `handler`.
    pub fn on<C, F, Fut>(self, handler: F) -> Self
    where
        C: Command,
        F: Fn(C, CommandContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply, StepError>> + Send + 'static,
    {
        self.add::<C>(erase(handler))
    }

    /// Gives every handler registered from here on a clone of `state` as its
    /// third argument (a database pool, a client, a config): handlers need not
    /// clone what they capture.
    pub fn state<S: Clone + Send + Sync + 'static>(
        self,
        state: S,
    ) -> ParticipantBuilder<WithState<S>> {
        ParticipantBuilder {
            state: WithState(state),
            endpoint: self.endpoint,
            handlers: self.handlers,
            inbox: self.inbox,
            concurrency: self.concurrency,
            retention: self.retention,
            problems: self.problems,
            propagator: self.propagator,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> ParticipantBuilder<WithState<S>> {
    /// Handles command `C` with `handler`, which gets a clone of the state.
    pub fn on<C, F, Fut>(self, handler: F) -> Self
    where
        C: Command,
        F: Fn(C, CommandContext, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply, StepError>> + Send + 'static,
    {
        let state = self.state.0.clone();
        self.add::<C>(erase(move |command: C, ctx| {
            handler(command, ctx, state.clone())
        }))
    }
}

struct Inner {
    endpoint: String,
    handlers: HashMap<String, Handler>,
    inbox: Option<Arc<dyn Inbox>>,
    concurrency: usize,
    propagator: Option<Arc<dyn Propagator>>,
    retention: Retention,
}

/// A service endpoint that handles saga commands. Cheap to clone.
#[derive(Clone)]
pub struct Participant {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut commands: Vec<&String> = self.inner.handlers.keys().collect();
        commands.sort();
        f.debug_struct("Participant")
            .field("endpoint", &self.inner.endpoint)
            .field("commands", &commands)
            .finish()
    }
}

impl Participant {
    /// A participant; it serves the endpoint of the commands it handles.
    pub fn builder() -> ParticipantBuilder {
        ParticipantBuilder {
            state: NoState,
            endpoint: None,
            handlers: HashMap::new(),
            inbox: None,
            concurrency: 16,
            retention: Retention::default(),
            problems: Vec::new(),
            propagator: None,
        }
    }

    /// The endpoint served.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Handles one command and returns the reply to send, without any transport.
    ///
    /// # Errors
    /// [`Error::MalformedMessage`] for a command this participant has no handler
    /// for (it belongs in the dead-letter queue); inbox errors.
    pub async fn handle(
        &self,
        command: &CommandMessage,
        delivery_count: u32,
    ) -> Result<ReplyMessage> {
        let handler = self.inner.handlers.get(&command.command).ok_or_else(|| {
            Error::MalformedMessage(format!(
                "endpoint `{}` has no handler for command `{}`",
                self.inner.endpoint, command.command
            ))
        })?;
        let ctx = CommandContext {
            saga_id: command.saga_id,
            saga_type: command.saga_type.clone(),
            step: command.step_name.clone(),
            direction: command.direction,
            attempt: command.attempt,
            idempotency_key: command.idempotency_key.clone(),
            delivery_count,
        };
        let started = std::time::Instant::now();
        let mut duplicate = false;
        let outcome = match &self.inner.inbox {
            None => ReplyOutcome::from(handler(command.payload.clone(), ctx).await),
            Some(inbox) => {
                let tombstone =
                    (command.direction == Direction::Compensate).then(|| ctx.invoke_key());
                match inbox
                    .claim(&command.idempotency_key, tombstone.as_ref())
                    .await?
                {
                    Claim::Recorded(recorded) => {
                        tracing::debug!("duplicate command answered from the inbox");
                        duplicate = true;
                        recorded
                    }
                    Claim::Claimed(claim) => {
                        let outcome =
                            ReplyOutcome::from(handler(command.payload.clone(), ctx).await);
                        match &outcome {
                            ReplyOutcome::Failure(e)
                                if e.kind != crate::StepErrorKind::Business =>
                            {
                                claim.release().await?;
                                outcome
                            }
                            _ => claim.record(&outcome).await?,
                        }
                    }
                }
            }
        };
        let label = match &outcome {
            _ if duplicate => "duplicate",
            ReplyOutcome::Success(_) => "succeeded",
            ReplyOutcome::Failure(e) if e.kind == crate::StepErrorKind::Business => "refused",
            ReplyOutcome::Failure(_) => "failed",
        };
        crate::metrics::command_handled(&command.command, label, started.elapsed());
        Ok(command.reply(outcome))
    }

    /// Deletes the records written before `before` from the inbox and
    /// through every [`prune_with`](ParticipantBuilder::prune_with) function,
    /// batch after batch until none is left, and returns how many. For manual
    /// runs; with an [`inbox_retention`](ParticipantBuilder::inbox_retention),
    /// [`run`](Self::run) does it in the background.
    ///
    /// # Errors
    /// The first inbox or pruning error (what was deleted before stays deleted).
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<usize> {
        self.prune_until(before, None).await
    }

    async fn prune_until(
        &self,
        before: DateTime<Utc>,
        mut pause: Option<&mut watch::Receiver<bool>>,
    ) -> Result<usize> {
        let retention = &self.inner.retention;
        let batch = retention.batch.max(1);
        let inbox = self.inner.inbox.clone().map(|inbox| -> Pruner {
            Arc::new(move |before, batch| {
                let inbox = Arc::clone(&inbox);
                Box::pin(async move { inbox.prune(before, batch).await })
            })
        });
        let mut total = 0;
        for prune in inbox.iter().chain(&retention.pruners) {
            loop {
                let pruned = prune(before, batch).await?;
                total += pruned;
                tracing::debug!(endpoint = %self.inner.endpoint, pruned, "inbox retention: batch deleted");
                if pruned < batch {
                    break;
                }
                match &mut pause {
                    None => tokio::task::yield_now().await,
                    Some(stop) => {
                        tokio::select! {
                            biased;
                            _ = stop.wait_for(|stop| *stop) => return Ok(total),
                            () = tokio::time::sleep(retention.pause) => {}
                        }
                    }
                }
            }
        }
        Ok(total)
    }

    /// The background pruning of [`ParticipantBuilder::inbox_retention`].
    async fn retain(self, keep: std::time::Duration, mut stop: watch::Receiver<bool>) {
        let endpoint = &self.inner.endpoint;
        let every = self
            .inner
            .retention
            .interval
            .max(std::time::Duration::from_millis(1));
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                _ = interval.tick() => {}
            }
            let before = crate::clock::sub(Utc::now(), keep);
            match self.prune_until(before, Some(&mut stop)).await {
                Ok(0) => tracing::debug!(%endpoint, %before, "inbox retention: nothing to delete"),
                Ok(pruned) => {
                    tracing::info!(%endpoint, pruned, %before, "inbox retention: records deleted");
                }
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "inbox retention: pruning failed");
                }
            }
        }
    }

    /// Serves the endpoint over `transport` in a task of its own until the
    /// returned handle is shut down (see [`Running`]).
    pub fn spawn(&self, transport: impl Transport) -> Running {
        let participant = self.clone();
        Running::spawn(move |stop| async move { participant.run(transport, stop).await })
    }

    /// Consumes the endpoint's queue until `shutdown` resolves, then finishes
    /// the commands in hand. A transient failure to subscribe (the broker is
    /// restarting) is retried with backoff.
    ///
    /// # Errors
    /// When the subscription cannot be opened for a reason that is not transient.
    pub async fn run(
        &self,
        transport: impl Transport,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let transport: Arc<dyn Transport> = Arc::new(transport);
        tokio::pin!(shutdown);
        let endpoint = &self.inner.endpoint;
        let subscribed = crate::transport::subscribe_with_retry(
            endpoint,
            || transport.consume_commands(endpoint),
            &mut shutdown,
        )
        .await?;
        let Some(mut commands) = subscribed else {
            return Ok(());
        };
        let (stop_retention, stopped) = watch::channel(false);
        let retention = self
            .inner
            .retention
            .keep
            .map(|keep| tokio::spawn(self.clone().retain(keep, stopped)));
        let permits = Arc::new(Semaphore::new(self.inner.concurrency));
        let mut tasks = JoinSet::new();
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&permits).acquire_owned() => permit.map_err(|_| Error::Shutdown)?,
            };
            let delivery = tokio::select! {
                () = &mut shutdown => break,
                delivery = commands.next() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            while tasks.try_join_next().is_some() {}
            let participant = self.clone();
            let transport = Arc::clone(&transport);
            tasks.spawn(async move {
                participant.process(delivery, transport.as_ref()).await;
                drop(permit);
            });
        }
        drop(commands);
        let _ = stop_retention.send(true);
        while tasks.join_next().await.is_some() {}
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        Ok(())
    }

    async fn process(&self, delivery: Delivery<CommandMessage>, transport: &dyn Transport) {
        let command = &delivery.message;
        let span = tracing::info_span!(
            "saga.command",
            endpoint = %self.inner.endpoint,
            saga_id = %command.saga_id,
            saga_type = %command.saga_type,
            step = %command.step_name,
            direction = %command.direction,
            attempt = command.attempt,
        );
        if let Some(propagator) = &self.inner.propagator {
            propagator.extract(&command.headers, &span);
        }
        let command_span = span.clone();
        async move {
            // Checked before the handler runs: its effects would otherwise be
            // applied for a command whose reply can go nowhere.
            if delivery.message.reply_to.is_none() {
                tracing::warn!("command without reply_to dead-lettered");
                let _ = delivery.reject("command has no reply_to").await;
                return;
            }
            let mut reply = match self
                .handle(&delivery.message, delivery.delivery_count)
                .await
            {
                Ok(reply) => reply,
                Err(Error::MalformedMessage(reason)) => {
                    tracing::warn!(%reason, "command dead-lettered");
                    let _ = delivery.reject(&reason).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "command failed; it will be redelivered");
                    let _ = delivery.nack().await;
                    return;
                }
            };
            if let Some(propagator) = &self.inner.propagator {
                propagator.inject(&command_span, &mut reply.headers);
            }
            match send_reply(transport, &reply).await {
                Ok(()) => {
                    if let Err(e) = delivery.ack().await {
                        tracing::warn!(error = %e, "ack failed; the command will be redelivered");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reply not sent; the command will be redelivered");
                    let _ = delivery.nack().await;
                }
            }
        }
        .instrument(span)
        .await;
    }
}

/// Delays between tries of a reply whose send failed transiently, in order.
const REPLY_RETRY_DELAYS: [std::time::Duration; 5] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(800),
    std::time::Duration::from_millis(1200),
];

/// How long a reply whose send failed transiently is tried again, the tries
/// themselves included.
const REPLY_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// Sends `reply`; after a transient failure (the broker refused it or was
/// unreachable) tries again for at most [`REPLY_RETRY_BUDGET`] before giving
/// up. Without the wait, the command would go back to its queue at once,
/// come back, fail the same way, and use up its deliveries in a moment: a
/// quorum queue electing a new leader refuses publishes for a second or
/// two, which was enough to dead-letter commands whose work was done.
async fn send_reply(transport: &dyn Transport, reply: &ReplyMessage) -> Result<()> {
    let transient = |e: &Error| {
        e.kind() == crate::error::ErrorKind::Unavailable && !matches!(e, Error::Shutdown)
    };
    let mut last = match transport.send_reply(reply).await {
        Err(e) if transient(&e) => e,
        other => return other,
    };
    let deadline = tokio::time::Instant::now() + REPLY_RETRY_BUDGET;
    for delay in REPLY_RETRY_DELAYS {
        if tokio::time::Instant::now() + delay >= deadline {
            break;
        }
        tracing::debug!(error = %last, ?delay, "reply not sent; trying again");
        tokio::time::sleep(delay).await;
        match tokio::time::timeout_at(deadline, transport.send_reply(reply)).await {
            Ok(Err(e)) if transient(&e) => last = e,
            Ok(other) => return other,
            // This try ran out of the budget: give up with the last error.
            Err(_) => break,
        }
    }
    Err(last)
}
