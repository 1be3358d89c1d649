use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use super::lock;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{CommandMessage, ReplyMessage};
use crate::transport::{Acker, Delivery, Subscription, Transport};

/// A message that was dead-lettered, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The raw message body.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
}

#[derive(Clone)]
struct Envelope {
    body: Arc<[u8]>,
    deliveries: u32,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Envelope>,
    unacked: usize,
    dead: Vec<DeadLetter>,
    notify: Arc<Notify>,
}

struct Shared {
    queues: Mutex<HashMap<String, Queue>>,
    max_deliveries: u32,
    prefetch: usize,
}

impl Shared {
    fn with_queue<R>(&self, name: &str, f: impl FnOnce(&mut Queue) -> R) -> R {
        f(lock(&self.queues).entry(name.to_owned()).or_default())
    }

    fn push(&self, name: &str, envelope: Envelope, front: bool) {
        let notify = self.with_queue(name, |q| {
            if front {
                q.ready.push_front(envelope);
            } else {
                q.ready.push_back(envelope);
            }
            Arc::clone(&q.notify)
        });
        notify.notify_waiters();
    }

    fn dead_letter(&self, name: &str, envelope: &Envelope, reason: String) {
        crate::metrics::record_dead_letter(name);
        self.with_queue(name, |q| {
            q.dead.push(DeadLetter {
                body: envelope.body.to_vec(),
                reason,
            });
        });
    }
}

/// An in-process [`Transport`] with RabbitMQ-like semantics: competing
/// consumers, bounded prefetch, redelivery of unacknowledged messages,
/// dead-lettering after `max_deliveries` or on reject. Messages are stored as
/// JSON, as on a real broker. Clones share the same queues.
#[derive(Clone)]
pub struct InMemoryTransport {
    shared: Arc<Shared>,
}

impl Default for InMemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryTransport").finish_non_exhaustive()
    }
}

impl InMemoryTransport {
    /// Prefetch 32, dead-letter after 5 deliveries.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limits(32, 5)
    }

    /// With a given prefetch (unacknowledged messages per consumer) and delivery limit.
    #[must_use]
    pub fn with_limits(prefetch: usize, max_deliveries: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                queues: Mutex::default(),
                max_deliveries: max_deliveries.max(1),
                prefetch: prefetch.max(1),
            }),
        }
    }

    /// Puts raw bytes on a queue, as a misbehaving producer would.
    pub fn publish_raw(&self, queue: &str, body: impl Into<Vec<u8>>) {
        let body: Vec<u8> = body.into();
        self.shared.push(
            queue,
            Envelope {
                body: body.into(),
                deliveries: 0,
            },
            false,
        );
    }

    /// Messages waiting in `queue` (not counting those delivered and unacknowledged).
    #[must_use]
    pub fn ready_count(&self, queue: &str) -> usize {
        self.shared.with_queue(queue, |q| q.ready.len())
    }

    /// Messages delivered from `queue` and not yet settled.
    #[must_use]
    pub fn unacked_count(&self, queue: &str) -> usize {
        self.shared.with_queue(queue, |q| q.unacked)
    }

    /// The dead letters of `queue`.
    #[must_use]
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        self.shared.with_queue(queue, |q| q.dead.clone())
    }

    fn publish<T: Serialize>(&self, queue: &str, message: &T) -> Result<()> {
        let body = serde_json::to_vec(message)?;
        self.shared.push(
            queue,
            Envelope {
                body: body.into(),
                deliveries: 0,
            },
            false,
        );
        Ok(())
    }

    fn subscribe<T: DeserializeOwned + Send + 'static>(&self, queue: &str) -> Subscription<T> {
        let (tx, rx) = mpsc::channel(self.shared.prefetch);
        let shared = Arc::clone(&self.shared);
        let queue = queue.to_owned();
        tokio::spawn(async move {
            loop {
                let notify = shared.with_queue(&queue, |q| Arc::clone(&q.notify));
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = shared.with_queue(&queue, |q| {
                    let envelope = q.ready.pop_front()?;
                    q.unacked += 1;
                    Some(envelope)
                });
                let Some(mut envelope) = next else {
                    tokio::select! {
                        () = &mut notified => continue,
                        () = tx.closed() => return,
                    }
                };
                envelope.deliveries += 1;
                let acker = MemoryAcker {
                    shared: Arc::clone(&shared),
                    queue: queue.clone(),
                    envelope: Some(envelope.clone()),
                };
                let message = match serde_json::from_slice::<T>(&envelope.body) {
                    Ok(message) => message,
                    Err(e) => {
                        let _ = Box::new(acker)
                            .reject(&format!("undecodable message: {e}"))
                            .await;
                        continue;
                    }
                };
                let delivery = Delivery::new(message, envelope.deliveries, Box::new(acker));
                if tx.send(delivery).await.is_err() {
                    // Dropping the delivery requeued it.
                    return;
                }
                // Let competing consumers take the next message, as a broker
                // dispatches round-robin.
                tokio::task::yield_now().await;
            }
        });
        Subscription::new(rx)
    }
}

struct MemoryAcker {
    shared: Arc<Shared>,
    queue: String,
    envelope: Option<Envelope>,
}

impl MemoryAcker {
    fn settle(&mut self) -> Option<Envelope> {
        let envelope = self.envelope.take()?;
        self.shared.with_queue(&self.queue, |q| q.unacked -= 1);
        Some(envelope)
    }

    fn requeue(&mut self) {
        if let Some(envelope) = self.settle() {
            if envelope.deliveries >= self.shared.max_deliveries {
                let reason = format!("delivery limit of {} reached", self.shared.max_deliveries);
                self.shared.dead_letter(&self.queue, &envelope, reason);
            } else {
                self.shared.push(&self.queue, envelope, true);
            }
        }
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        self.requeue();
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.settle();
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> Result<()> {
        self.requeue();
        Ok(())
    }

    async fn reject(mut self: Box<Self>, reason: &str) -> Result<()> {
        if let Some(envelope) = self.settle() {
            self.shared
                .dead_letter(&self.queue, &envelope, reason.to_owned());
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for InMemoryTransport {
    async fn send_command(&self, command: &CommandMessage) -> Result<()> {
        self.publish(&command.endpoint, command)
    }

    async fn send_reply(&self, reply: &ReplyMessage) -> Result<()> {
        let queue = reply.reply_to.as_deref().ok_or_else(|| {
            Error::backend(
                ErrorKind::Invalid,
                format!("reply {} has no reply_to", reply.message_id),
            )
        })?;
        self.publish(queue, reply)
    }

    async fn consume_commands(&self, endpoint: &str) -> Result<Subscription<CommandMessage>> {
        Ok(self.subscribe(endpoint))
    }

    async fn consume_replies(&self, queue: &str) -> Result<Subscription<ReplyMessage>> {
        Ok(self.subscribe(queue))
    }
}
