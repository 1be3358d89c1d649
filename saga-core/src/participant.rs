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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::definition::Command;
use crate::error::{Error, Result, StepError};
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::message::{CommandMessage, ReplyMessage, ReplyOutcome};
use crate::transport::{Delivery, Transport};

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler =
    Arc<dyn Fn(Value, CommandContext) -> BoxFuture<Result<Value, StepError>> + Send + Sync>;

/// Records which commands a participant processed, and their replies.
///
/// The runtime [claims](Inbox::claim) a command's key before its handler
/// runs and [records](InboxClaim::record) the outcome after, so a key is
/// handled by one copy of a command at a time. See the [module docs](self).
///
/// `async-trait` because the participant holds its inbox as a trait object.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Claims `key`, or returns the outcome recorded for it.
    ///
    /// While another claim on `key` is held (its command is being handled),
    /// waits for it to be recorded or released. With `tombstone` (for a
    /// compensation: its step's invoke key), also records a business refusal
    /// under `tombstone` unless it holds an outcome, waiting first while it is
    /// claimed. A claim dropped without [`record`](InboxClaim::record) is
    /// released, as on a crash.
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim>;
}

#[async_trait]
impl<T: Inbox + ?Sized> Inbox for Arc<T> {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        tombstone: Option<&IdempotencyKey>,
    ) -> Result<Claim> {
        (**self).claim(key, tombstone).await
    }
}

/// What [`Inbox::claim`] found.
pub enum Claim {
    /// The key was processed: answer with this outcome, do not run the handler.
    Recorded(ReplyOutcome),
    /// The key is now held by this handling: run the handler, then settle the claim.
    Claimed(Box<dyn InboxClaim>),
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Recorded(outcome) => f.debug_tuple("Recorded").field(outcome).finish(),
            Self::Claimed(_) => f.write_str("Claimed"),
        }
    }
}

/// A held claim on a key; dropping it releases the claim.
#[async_trait]
pub trait InboxClaim: Send {
    /// Records `outcome` (a success or a business failure) under the key,
    /// releases the claim, and returns the recorded outcome.
    async fn record(self: Box<Self>, outcome: &ReplyOutcome) -> Result<ReplyOutcome>;

    /// Releases the claim without recording anything (nothing happened).
    async fn release(self: Box<Self>) -> Result<()>;
}

/// The refusal a compensation records under its step's invoke key.
#[must_use]
pub fn compensated_refusal() -> ReplyOutcome {
    ReplyOutcome::Failure(StepError::business(
        "refused: the step was compensated before this command ran",
    ))
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

/// Builds a [`Participant`].
#[must_use]
pub struct ParticipantBuilder {
    endpoint: String,
    handlers: HashMap<String, Handler>,
    inbox: Option<Arc<dyn Inbox>>,
    concurrency: usize,
}

impl ParticipantBuilder {
    /// Handles command `C` with `handler`.
    pub fn on<C, F, Fut>(mut self, handler: F) -> Self
    where
        C: Command,
        F: Fn(C, CommandContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply, StepError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.handlers.insert(
            C::NAME.to_owned(),
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
            }),
        );
        self
    }

    /// Deduplicates through `inbox` around every handler call.
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.inbox = Some(Arc::new(inbox));
        self
    }

    /// How many commands are handled at once (default 16).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Finishes the participant.
    pub fn build(self) -> Participant {
        Participant {
            inner: Arc::new(self),
        }
    }
}

/// A service endpoint that handles saga commands. Cheap to clone.
#[derive(Clone)]
pub struct Participant {
    inner: Arc<ParticipantBuilder>,
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
    /// A participant serving `endpoint` (the queue commands are sent to).
    pub fn builder(endpoint: impl Into<String>) -> ParticipantBuilder {
        ParticipantBuilder {
            endpoint: endpoint.into(),
            handlers: HashMap::new(),
            inbox: None,
            concurrency: 16,
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
        Ok(command.reply(outcome))
    }

    /// Consumes the endpoint's queue until `shutdown` resolves, then finishes
    /// the commands in hand. A transient failure to subscribe (the broker is
    /// restarting) is retried with backoff.
    ///
    /// # Errors
    /// When the subscription cannot be opened for a reason that is not transient.
    pub async fn run(
        &self,
        transport: Arc<dyn Transport>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
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
        while tasks.join_next().await.is_some() {}
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
        async move {
            let reply = match self
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
            if reply.reply_to.is_none() {
                let _ = delivery.reject("command has no reply_to").await;
                return;
            }
            match transport.send_reply(&reply).await {
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
