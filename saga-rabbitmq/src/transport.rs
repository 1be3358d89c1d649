//! [`RabbitTransport`]: the [`Transport`] implementation.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use saga_core::adapter::{CommandMessage, ReplyMessage};
use saga_core::adapter::{Subscription, Transport};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::connection::{self, Outgoing, Shared};
use crate::consume;
use crate::error::Error;
use crate::properties;
use crate::topology::QueueSpec;

/// Owned by every transport clone and subscription; the last one to go stops
/// the supervisor, which closes the connection.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// The supervisor task, which closes the connection when told to stop.
    supervisor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A [`Transport`] over RabbitMQ (lapin). Cheap to clone; clones share one
/// connection.
///
/// See the [crate documentation](crate) for the topology and the guarantees.
#[derive(Clone)]
pub struct RabbitTransport {
    handle: Arc<Handle>,
}

impl fmt::Debug for RabbitTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitTransport")
            .field("url", &self.handle.shared.config.redacted_url())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RabbitTransport {
    /// Connects, declares the exchanges and the queues named in `config`, and
    /// starts the reconnect supervisor. Retries with backoff for up to
    /// [`Config::connect_timeout`].
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::Connect`] when the broker cannot be reached in time;
    /// [`Error::Config`] for bad settings; [`Error::TopologyMismatch`] when a
    /// queue exists with other arguments.
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let (shutdown, stop) = watch::channel(false);
        let (shared, supervisor) = connection::start(config, stop).await?;
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                shutdown,
                supervisor: std::sync::Mutex::new(Some(supervisor)),
            }),
        })
    }

    /// Closes the connection cleanly and waits until it is closed: call it
    /// last, after the engine and the participants using the transport have
    /// shut down. Subscriptions still open end (their `next` returns `None`)
    /// and their unsettled deliveries go back to their queues; sends through
    /// any clone fail at once with [`Error::Closed`] afterwards. Waits up to
    /// the connect timeout for the consumers to close their channels.
    ///
    /// Dropping the last clone closes the connection too, but in the
    /// background: a process that exits right away may cut it off, and the
    /// broker then logs an unexpected close.
    pub async fn close(&self) {
        let shared = &self.handle.shared;
        shared.stop_consumers(shared.config.connect_timeout).await;
        self.handle.shutdown.send_replace(true);
        let supervisor = self
            .handle
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.handle.shared.config
    }

    /// Whether the connection is up right now (it reconnects by itself when not).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.handle.shared.current().is_some()
    }

    /// The broker of the current connection (its URL, password redacted),
    /// or `None` while reconnecting. With several brokers
    /// ([`Config::brokers`](crate::Config::brokers)) it tells which one the
    /// transport failed over to.
    #[must_use]
    pub fn broker(&self) -> Option<String> {
        self.handle
            .shared
            .current()
            .map(|_| self.handle.shared.broker())
    }

    /// A number that grows with every (re)connect.
    #[must_use]
    pub fn connection_generation(&self) -> Option<u64> {
        self.handle.shared.current().map(|l| l.generation)
    }

    /// The command queue of `endpoint` (`order` → `order_commands` by default).
    #[must_use]
    pub fn command_queue(&self, endpoint: &str) -> String {
        (self.config().command_queue)(endpoint)
    }

    /// The dead-letter queue of `queue` (`order_commands` → `order_commands.dlq` by default).
    #[must_use]
    pub fn dead_letter_queue(&self, queue: &str) -> String {
        (self.config().dead_letter_queue)(queue)
    }

    /// Declares `endpoint`'s command queue and dead-letter queue now (and again
    /// after every reconnect); returns the queue's name.
    ///
    /// # Errors
    /// When not connected, or the queue exists with other arguments.
    pub async fn declare_endpoint(&self, endpoint: &str) -> Result<String, Error> {
        self.declare(QueueSpec::Commands(endpoint.to_owned())).await
    }

    /// Declares the reply queue `queue` and its dead-letter queue now (and
    /// again after every reconnect).
    ///
    /// # Errors
    /// When not connected, or the queue exists with other arguments.
    pub async fn declare_reply_queue(&self, queue: &str) -> Result<String, Error> {
        self.declare(QueueSpec::Replies(queue.to_owned())).await
    }

    async fn declare(&self, spec: QueueSpec) -> Result<String, Error> {
        let shared = &self.handle.shared;
        shared.live().await?.ensure(shared, &spec).await
    }

    /// Publishes raw bytes straight to `queue` (through the default exchange),
    /// persistent and confirmed: for operator tooling, such as moving a fixed
    /// message back from a dead-letter queue, and for tests.
    ///
    /// # Errors
    /// When not connected, or the broker refuses or cannot route the message.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) -> Result<(), Error> {
        let message_id = uuid::Uuid::now_v7().to_string();
        self.handle
            .shared
            .publish(Outgoing {
                ensure: None,
                exchange: "",
                routing_key: queue,
                body,
                properties: properties::raw(&message_id),
                message_id: &message_id,
            })
            .await
    }
}

#[async_trait]
impl Transport for RabbitTransport {
    async fn send_command(&self, command: &CommandMessage) -> saga_core::Result<()> {
        let span = tracing::debug_span!(
            "saga.rabbitmq.send_command",
            saga_id = %command.saga_id,
            step = %command.step_name,
            direction = %command.direction,
            attempt = command.attempt,
            endpoint = %command.endpoint,
        );
        async {
            let body = serde_json::to_vec(command).map_err(Error::from)?;
            let spec = QueueSpec::Commands(command.endpoint.clone());
            let config = self.config();
            self.handle
                .shared
                .publish(Outgoing {
                    ensure: Some(&spec),
                    exchange: &config.commands_exchange,
                    routing_key: &command.endpoint,
                    body: &body,
                    properties: properties::command(command),
                    message_id: &command.message_id,
                })
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "command not published"))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn send_reply(&self, reply: &ReplyMessage) -> saga_core::Result<()> {
        let queue = reply
            .reply_to
            .as_deref()
            .ok_or_else(|| Error::NoReplyTo(reply.message_id.clone()))?;
        let span = tracing::debug_span!(
            "saga.rabbitmq.send_reply",
            saga_id = %reply.saga_id,
            step = %reply.step_name,
            direction = %reply.direction,
            attempt = reply.attempt,
            queue = %queue,
        );
        async {
            let body = serde_json::to_vec(reply).map_err(Error::from)?;
            let spec = QueueSpec::Replies(queue.to_owned());
            let config = self.config();
            self.handle
                .shared
                .publish(Outgoing {
                    ensure: Some(&spec),
                    exchange: &config.replies_exchange,
                    routing_key: queue,
                    body: &body,
                    properties: properties::reply(reply),
                    message_id: &reply.message_id,
                })
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "reply not published"))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn consume_commands(
        &self,
        endpoint: &str,
    ) -> saga_core::Result<Subscription<CommandMessage>> {
        let spec = QueueSpec::Commands(endpoint.to_owned());
        Ok(consume::subscribe(Arc::clone(&self.handle), spec).await?)
    }

    async fn consume_replies(&self, queue: &str) -> saga_core::Result<Subscription<ReplyMessage>> {
        let spec = QueueSpec::Replies(queue.to_owned());
        Ok(consume::subscribe(Arc::clone(&self.handle), spec).await?)
    }
}
