//! Consumer tasks: one per [`Subscription`], feeding its channel across reconnects.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use saga_core::adapter::{Acker, Delivery, Subscription};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::QueueType;
use crate::connection::{Live, Outgoing, Shared};
use crate::error::Error;
use crate::properties::{self, long};
use crate::topology::{QueueSpec, short};
use crate::transport::Handle;

/// An open AMQP consumer: its channel, the lapin consumer (kept alive: dropping
/// it cancels), and the deliveries in broker order.
struct Open {
    channel: Channel,
    /// Cloned into every unsettled delivery's acker: while a clone lives, the
    /// channel must stay open for it to settle.
    unsettled: Arc<()>,
    consumer: Consumer,
    deliveries: mpsc::UnboundedReceiver<DeliveryResult>,
    queue: String,
    generation: u64,
}

/// Opens a consumer of `spec` on `live`, within the connect timeout: a
/// broker that accepts the connection and then stops answering must not
/// hold the consumer (it is tried again, on a new connection once the
/// supervisor has one).
async fn open(shared: &Shared, live: &Live, spec: &QueueSpec) -> Result<Open, Error> {
    let bound = shared.config.connect_timeout;
    tokio::time::timeout(bound, open_unbounded(shared, live, spec))
        .await
        .unwrap_or(Err(Error::NoAnswer {
            operation: "opening a consumer",
            timeout: bound,
        }))
}

async fn open_unbounded(shared: &Shared, live: &Live, spec: &QueueSpec) -> Result<Open, Error> {
    let queue = live.ensure(shared, spec).await?;
    let channel = live.channel().await?;
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| Error::amqp("basic.qos", e))?;
    let consumer = channel
        .basic_consume(
            short(&queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::amqp(format!("basic.consume `{queue}`"), e))?;
    let (tx, deliveries) = mpsc::unbounded_channel();
    // The delegate runs synchronously in broker order; prefetch bounds the buffer.
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let _ = tx.send(delivery);
        std::future::ready(())
    });
    Ok(Open {
        channel,
        unsettled: Arc::new(()),
        consumer,
        deliveries,
        queue,
        generation: live.generation,
    })
}

/// Opens the first consumer now (so errors reach the caller and the consumer
/// is registered when this returns), then keeps consuming in a task.
pub(crate) async fn subscribe<T>(
    handle: Arc<Handle>,
    spec: QueueSpec,
) -> Result<Subscription<T>, Error>
where
    T: DeserializeOwned + Send + 'static,
{
    let shared = Arc::clone(&handle.shared);
    let live = shared.live().await?;
    let first = open(&shared, &live, &spec).await?;
    let (tx, rx) = mpsc::channel(usize::from(shared.config.prefetch));
    let span = tracing::info_span!("saga.rabbitmq.consumer", queue = %first.queue);
    tokio::spawn(run(handle, spec, first, tx).instrument(span));
    Ok(Subscription::new(rx))
}

/// `handle` keeps the connection alive while the subscription exists.
async fn run<T>(handle: Arc<Handle>, spec: QueueSpec, first: Open, tx: mpsc::Sender<Delivery<T>>)
where
    T: DeserializeOwned + Send + 'static,
{
    let shared = Arc::clone(&handle.shared);
    let _running = shared.consumer_running();
    let mut current = Some(first);
    let mut last_generation = None;
    loop {
        let mut open = match current.take() {
            Some(open) => open,
            None => {
                let Some(open) = reopen(&shared, &spec, last_generation, &tx).await else {
                    return;
                };
                tracing::info!(generation = open.generation, "consuming again");
                open
            }
        };
        last_generation = Some(open.generation);
        match pump(&shared, &mut open, &tx).await {
            Pump::ConsumerEnded => {}
            Pump::SubscriptionDropped => {
                cancel(&open).await;
                // Acked, nacked or dropped (requeued), each unsettled delivery
                // lets go; then the channel can close. The connection is not
                // kept for them: with the last transport clone gone, it closes
                // and takes their channel along.
                drop(handle);
                while Arc::strong_count(&open.unsettled) > 1 && !shared.is_closed() {
                    tokio::select! {
                        () = shared.closing() => {}
                        () = tokio::time::sleep(SETTLE_POLL) => {}
                    }
                }
                close_channel(open).await;
                tracing::debug!("subscription dropped; consumer cancelled");
                return;
            }
            Pump::TransportClosed => {
                cancel(&open).await;
                close_channel(open).await;
                tracing::debug!("transport closed; consumer cancelled");
                return;
            }
        }
    }
}

/// How often a dropped subscription's consumer looks whether its deliveries
/// are all settled.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Closes the channel now rather than leaving it to lapin's drop, which
/// closes it in the background and may then find the connection closed
/// (lapin logs that at ERROR level). Unsettled deliveries return to the queue.
async fn close_channel(open: Open) {
    let Open {
        channel, consumer, ..
    } = open;
    drop(consumer);
    if channel.status().connected() {
        let _ = channel.close(200, "OK".into()).await;
    }
}

/// Re-opens a consumer with backoff; `None` when the subscription went away.
async fn reopen<T>(
    shared: &Shared,
    spec: &QueueSpec,
    last_generation: Option<u64>,
    tx: &mpsc::Sender<Delivery<T>>,
) -> Option<Open> {
    let mut delays = shared.consumer_backoff();
    loop {
        let live = tokio::select! {
            () = tx.closed() => return None,
            () = shared.closing() => return None,
            live = shared.next_live(None) => live,
        };
        // The queue may have been deleted: declare it again.
        live.forget(spec);
        match open(shared, &live, spec).await {
            Ok(open) => return Some(open),
            Err(e) => {
                shared.kick();
                let delay = delays.next().unwrap_or(shared.config.reconnect_max_delay);
                tracing::warn!(error = %e, ?delay, last_generation, "re-opening consumer failed; retrying");
                tokio::select! {
                    () = tx.closed() => return None,
                    () = shared.closing() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Pump {
    SubscriptionDropped,
    ConsumerEnded,
    TransportClosed,
}

async fn pump<T>(shared: &Arc<Shared>, open: &mut Open, tx: &mpsc::Sender<Delivery<T>>) -> Pump
where
    T: DeserializeOwned + Send + 'static,
{
    // Subscribed once: this loop runs per delivery.
    let mut closed = shared.closed_signal();
    let subscribed: Subscribed = {
        let weak = tx.downgrade();
        Arc::new(move || weak.upgrade().is_some_and(|tx| !tx.is_closed()))
    };
    loop {
        let event = tokio::select! {
            biased;
            _ = closed.wait_for(|closed| *closed) => return Pump::TransportClosed,
            () = tx.closed() => return Pump::SubscriptionDropped,
            event = open.deliveries.recv() => event,
        };
        let delivery = match event {
            Some(Ok(Some(delivery))) => delivery,
            Some(Ok(None)) | None => {
                tracing::warn!(
                    generation = open.generation,
                    "consumer cancelled by the broker or the connection closed"
                );
                shared.kick();
                return Pump::ConsumerEnded;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, generation = open.generation, "consumer failed");
                shared.kick();
                return Pump::ConsumerEnded;
            }
        };
        let Some(delivery) = prepare::<T>(shared, open, &subscribed, delivery).await else {
            continue;
        };
        // Waits while the subscriber is busy; the prefetch bounds what piles up.
        if tx.send(delivery).await.is_err() {
            // The delivery was dropped with the channel: its acker requeues it.
            return Pump::SubscriptionDropped;
        }
    }
}

async fn cancel(open: &Open) {
    let _ = open
        .channel
        .basic_cancel(open.consumer.tag(), BasicCancelOptions::default())
        .await;
}

/// How many times the message was delivered, this delivery included.
fn delivery_count(queue_type: QueueType, properties: &BasicProperties, redelivered: bool) -> u32 {
    let count = match queue_type {
        QueueType::Quorum => {
            properties::header_u64(properties, properties::BROKER_DELIVERY_COUNT_HEADER)
                .unwrap_or(0)
                + 1
        }
        QueueType::Classic => {
            properties::header_u64(properties, properties::DELIVERY_COUNT_HEADER).unwrap_or(0)
                + 1
                + u64::from(redelivered)
        }
    };
    let count = if redelivered { count.max(2) } else { count };
    u32::try_from(count).unwrap_or(u32::MAX)
}

async fn prepare<T: DeserializeOwned>(
    shared: &Arc<Shared>,
    open: &Open,
    subscribed: &Subscribed,
    delivery: lapin::message::Delivery,
) -> Option<Delivery<T>> {
    let config = &shared.config;
    let count = delivery_count(
        config.queue_type,
        &delivery.properties,
        delivery.redelivered,
    );
    let decoded = serde_json::from_slice::<T>(&delivery.data);
    let acker = RabbitAcker {
        shared: Arc::clone(shared),
        channel: open.channel.clone(),
        unsettled: Arc::clone(&open.unsettled),
        acker: Some(delivery.acker),
        body: delivery.data,
        properties: delivery.properties,
        queue: open.queue.clone(),
        delivery_count: count,
        subscribed: Arc::clone(subscribed),
    };
    if config.queue_type == QueueType::Classic && count > config.max_deliveries {
        let reason = format!("delivery limit of {} reached", config.max_deliveries);
        tracing::warn!(%reason, "message dead-lettered");
        let _ = Box::new(acker).reject(&reason).await;
        return None;
    }
    match decoded {
        Ok(message) => Some(Delivery::new(message, count, Box::new(acker))),
        Err(e) => {
            let reason = format!("undecodable message: {e}");
            tracing::warn!(%reason, "message dead-lettered");
            let _ = Box::new(acker).reject(&reason).await;
            None
        }
    }
}

/// Whether the subscription a consumer feeds still takes deliveries.
type Subscribed = Arc<dyn Fn() -> bool + Send + Sync>;

/// Settles one delivery. Holding the channel keeps it open until every
/// delivery taken from it is settled. Dropping an unsettled one requeues it:
/// as a failure (counted toward the delivery limit) while its subscription
/// is open, since then its handler had it (and panicked, say); with a nack once
/// the subscription is gone (a delivery it buffered and never handed out).
struct RabbitAcker {
    shared: Arc<Shared>,
    channel: Channel,
    /// Counts this delivery as unsettled on its consumer.
    unsettled: Arc<()>,
    acker: Option<lapin::Acker>,
    body: Vec<u8>,
    properties: BasicProperties,
    queue: String,
    delivery_count: u32,
    subscribed: Subscribed,
}

fn settled(operation: &str, result: lapin::Result<bool>) -> Result<(), Error> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::ChannelClosed),
        Err(e) => Err(Error::amqp(operation, e)),
    }
}

impl RabbitAcker {
    fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map_or_else(String::new, |id| id.as_str().to_owned())
    }

    async fn ack_inner(&mut self) -> Result<(), Error> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        settled("basic.ack", acker.ack(BasicAckOptions::default()).await)
    }

    /// Returns the delivery to its queue as a failed one: `basic.reject`,
    /// which the broker counts toward a quorum queue's delivery limit
    /// (`basic.nack` is not counted from RabbitMQ 4.3 on).
    async fn requeue_failed(&mut self) -> Result<(), Error> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        settled(
            "basic.reject",
            acker.reject(BasicRejectOptions { requeue: true }).await,
        )
    }

    /// Publishes a copy with `headers` to `exchange`/`routing_key`, then acks the original.
    async fn republish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        headers: &[(&str, AMQPValue)],
    ) -> Result<(), Error> {
        let message_id = self.message_id();
        self.shared
            .publish(Outgoing {
                ensure: None,
                exchange,
                routing_key,
                body: &self.body,
                properties: properties::with_headers(&self.properties, headers),
                message_id: &message_id,
            })
            .await?;
        self.ack_inner().await
    }

    async fn dead_letter(&mut self, reason: &str) -> Result<(), Error> {
        let exchange = self.shared.config.dead_letter_exchange.clone();
        let queue = self.queue.clone();
        let headers = [
            (properties::DEAD_REASON_HEADER, long(reason)),
            (properties::DEAD_QUEUE_HEADER, long(&queue)),
            (
                properties::DELIVERY_COUNT_HEADER,
                AMQPValue::LongLongInt(i64::from(self.delivery_count)),
            ),
        ];
        match self.republish(&exchange, &queue, &headers).await {
            Ok(()) => {
                saga_core::metrics::record_dead_letter(&queue);
                Ok(())
            }
            Err(e) if self.acker.is_some() => {
                // The copy did not make it: let the broker dead-letter the
                // original (its `x-death` header says `rejected`).
                tracing::warn!(error = %e, "dead-letter copy failed; rejecting to the dead-letter exchange");
                let Some(acker) = self.acker.take() else {
                    return Err(e);
                };
                let rejected = settled(
                    "basic.reject",
                    acker.reject(BasicRejectOptions { requeue: false }).await,
                );
                if rejected.is_ok() {
                    saga_core::metrics::record_dead_letter(&queue);
                }
                rejected
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(mut self: Box<Self>) -> saga_core::Result<()> {
        Ok(self.ack_inner().await?)
    }

    async fn nack(mut self: Box<Self>) -> saga_core::Result<()> {
        let config = &self.shared.config;
        if config.queue_type == QueueType::Quorum {
            // The broker counts and dead-letters past `x-delivery-limit`.
            return Ok(self.requeue_failed().await?);
        }
        if self.delivery_count >= config.max_deliveries {
            let reason = format!("delivery limit of {} reached", config.max_deliveries);
            return Ok(self.dead_letter(&reason).await?);
        }
        // Classic queues do not count: requeue a copy that carries the count.
        let queue = self.queue.clone();
        let count = AMQPValue::LongLongInt(i64::from(self.delivery_count));
        match self
            .republish("", &queue, &[(properties::DELIVERY_COUNT_HEADER, count)])
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if self.acker.is_some() => {
                tracing::warn!(error = %e, "requeue copy failed; requeueing the original");
                Ok(self.requeue_failed().await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn reject(mut self: Box<Self>, reason: &str) -> saga_core::Result<()> {
        Ok(self.dead_letter(reason).await?)
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        // Without a runtime the channel closes with the last clone, which
        // requeues the message as well.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !acker.usable() {
            // Its channel is gone: the broker has returned it already.
            return;
        }
        if (self.subscribed)() {
            // Handed out and dropped unsettled: its handler failed (a panic
            // unwinds through it). Counted like a nack, or a message that
            // always panics its handler would come back for ever.
            let failed = Self {
                shared: Arc::clone(&self.shared),
                channel: self.channel.clone(),
                unsettled: Arc::clone(&self.unsettled),
                acker: Some(acker),
                body: std::mem::take(&mut self.body),
                properties: std::mem::take(&mut self.properties),
                queue: std::mem::take(&mut self.queue),
                delivery_count: self.delivery_count,
                // Dropped itself unsettled (its task cancelled as the runtime
                // shuts down), it goes back the plain way: no second round.
                subscribed: Arc::new(|| false),
            };
            runtime.spawn(async move {
                if let Err(e) = Acker::nack(Box::new(failed)).await {
                    tracing::warn!(error = %e, "an unsettled delivery could not be returned; the broker returns it when its channel closes");
                }
            });
            return;
        }
        // Never handed out: back to the queue with a nack (not a failure).
        let channel = self.channel.clone();
        let unsettled = Arc::clone(&self.unsettled);
        runtime.spawn(async move {
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            let _ = acker.nack(options).await;
            drop((channel, unsettled));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn with_header(key: &str, value: i64) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(key.into(), AMQPValue::LongLongInt(value));
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn quorum_counts_come_from_the_broker() {
        let none = BasicProperties::default();
        assert_eq!(delivery_count(QueueType::Quorum, &none, false), 1);
        assert_eq!(
            delivery_count(QueueType::Quorum, &with_header("x-delivery-count", 2), true),
            3
        );
        assert_eq!(delivery_count(QueueType::Quorum, &none, true), 2);
    }

    #[test]
    fn classic_counts_come_from_the_adapter_header_and_the_redelivered_flag() {
        let none = BasicProperties::default();
        assert_eq!(delivery_count(QueueType::Classic, &none, false), 1);
        assert_eq!(delivery_count(QueueType::Classic, &none, true), 2);
        let counted = with_header(properties::DELIVERY_COUNT_HEADER, 3);
        assert_eq!(delivery_count(QueueType::Classic, &counted, false), 4);
        assert_eq!(delivery_count(QueueType::Classic, &counted, true), 5);
    }
}
