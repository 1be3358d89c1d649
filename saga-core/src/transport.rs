//! The messaging contract: commands to participants, replies to orchestrators.
//!
//! Delivery is at least once. A consumer acknowledges a message only after
//! its work is durable; a message dropped without an acknowledgement is
//! redelivered; a message that cannot be processed is rejected to a
//! dead-letter queue with a reason.

use std::fmt;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::message::{CommandMessage, ReplyMessage};

/// Sends and receives saga messages.
///
/// `async-trait` for the same reason as [`SagaStore`](crate::SagaStore): the
/// engine and participants hold the transport as a trait object.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends a command to its endpoint's queue; returns once the broker has it.
    async fn send_command(&self, command: &CommandMessage) -> Result<()>;

    /// Sends a reply to the queue named in its `reply_to`.
    async fn send_reply(&self, reply: &ReplyMessage) -> Result<()>;

    /// Consumes the command queue of `endpoint` (competing with other consumers).
    async fn consume_commands(&self, endpoint: &str) -> Result<Subscription<CommandMessage>>;

    /// Consumes the reply queue `queue` (competing with other orchestrators).
    async fn consume_replies(&self, queue: &str) -> Result<Subscription<ReplyMessage>>;
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn send_command(&self, command: &CommandMessage) -> Result<()> {
        (**self).send_command(command).await
    }

    async fn send_reply(&self, reply: &ReplyMessage) -> Result<()> {
        (**self).send_reply(reply).await
    }

    async fn consume_commands(&self, endpoint: &str) -> Result<Subscription<CommandMessage>> {
        (**self).consume_commands(endpoint).await
    }

    async fn consume_replies(&self, queue: &str) -> Result<Subscription<ReplyMessage>> {
        (**self).consume_replies(queue).await
    }
}

/// Calls `subscribe` until it succeeds, retrying transient failures (the
/// broker restarting, a queue not ready yet) with backoff from 100 ms to 5 s,
/// until `shutdown` resolves (then `None`). Other errors are returned at once.
///
/// # Errors
/// The first error that is not transient.
pub async fn subscribe_with_retry<T, F, Fut>(
    what: &str,
    mut subscribe: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<Option<Subscription<T>>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<Subscription<T>>>,
{
    tokio::pin!(shutdown);
    let mut delays = reconnect_backoff();
    loop {
        match subscribe().await {
            Ok(subscription) => return Ok(Some(subscription)),
            Err(e) if e.is_transient() => {
                let delay = delays.next().unwrap_or(RECONNECT_MAX);
                tracing::warn!(queue = what, error = %e, ?delay, "cannot consume yet; retrying");
                tokio::select! {
                    () = &mut shutdown => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The in-process backoff of the engine's and participants' loops: 100 ms
/// doubling to 5 s, with jitter, without end.
pub(crate) fn reconnect_backoff() -> backon::ExponentialBackoff {
    backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(100))
            .with_max_delay(RECONNECT_MAX)
            .with_jitter()
            .without_max_times(),
    )
}

/// A stream of deliveries from one queue; dropping it stops consuming, and
/// unacknowledged deliveries go back to the queue.
pub struct Subscription<T> {
    receiver: mpsc::Receiver<Delivery<T>>,
}

impl<T> Subscription<T> {
    /// Wraps a channel an adapter's consumer task feeds.
    #[must_use]
    pub fn new(receiver: mpsc::Receiver<Delivery<T>>) -> Self {
        Self { receiver }
    }

    /// The next delivery; `None` once the transport closed the subscription.
    pub async fn next(&mut self) -> Option<Delivery<T>> {
        self.receiver.recv().await
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Settles one delivery with the broker. Adapters implement it.
#[async_trait]
pub trait Acker: Send + 'static {
    /// The message was processed: remove it.
    async fn ack(self: Box<Self>) -> Result<()>;
    /// Processing failed transiently: put the message back for redelivery.
    async fn nack(self: Box<Self>) -> Result<()>;
    /// The message can never be processed: move it to the dead-letter queue.
    async fn reject(self: Box<Self>, reason: &str) -> Result<()>;
}

/// One received message and the means to settle it.
pub struct Delivery<T> {
    /// The decoded message.
    pub message: T,
    /// How many times the broker delivered this message, this one included.
    pub delivery_count: u32,
    acker: Box<dyn Acker>,
}

impl<T> Delivery<T> {
    /// A delivery settled through `acker`.
    pub fn new(message: T, delivery_count: u32, acker: Box<dyn Acker>) -> Self {
        Self {
            message,
            delivery_count,
            acker,
        }
    }

    /// Acknowledges: the work is durable.
    ///
    /// # Errors
    /// When the broker connection is gone (the message will be redelivered).
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Returns the message to the queue for another try.
    ///
    /// # Errors
    /// When the broker connection is gone (the message will be redelivered anyway).
    pub async fn nack(self) -> Result<()> {
        self.acker.nack().await
    }

    /// Dead-letters the message with `reason`.
    ///
    /// # Errors
    /// When the broker connection is gone.
    pub async fn reject(self, reason: &str) -> Result<()> {
        self.acker.reject(reason).await
    }
}

impl<T: fmt::Debug> fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}
