//! The connection supervisor: connects, declares the topology, watches the
//! connection and reconnects with backoff; and the publish path.
//!
//! One [`Live`] value exists per AMQP connection. It is published through a
//! `watch` channel; publishers and consumers take the current one, and the
//! supervisor replaces it after a reconnect (declaring the topology again).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::LongString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::config::{Config, QueueType, redact};
use crate::error::Error;
use crate::socket::{self, Socket};
use crate::stall::Stall;
use crate::topology::{self, DeadLettering, QueueSpec, short};

/// How often the supervisor checks the connection when nobody reports a problem.
const HEALTH_CHECK: Duration = Duration::from_millis(250);

/// How long closing a connection may wait for the broker's answer (a node
/// that stopped answering never gives one).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the transport handles, the supervisor and the consumer tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    live: watch::Sender<Option<Arc<Live>>>,
    /// Every queue declared so far, declared again after a reconnect.
    known: Mutex<BTreeSet<QueueSpec>>,
    /// Wakes the supervisor early when an operation saw a broken connection.
    kick: Notify,
    generations: AtomicU64,
    /// The broker ([`Config::brokers`]) to try first on the next connect.
    next_broker: AtomicUsize,
    /// The broker of the current connection.
    connected_to: AtomicUsize,
    /// Queues found with an earlier version's arguments (at-most-once
    /// dead-lettering) and already warned about.
    at_most_once: Mutex<HashSet<String>>,
    /// Set for good when the transport closes: operations fail at once
    /// from then on, and consumers stop.
    closed: watch::Sender<bool>,
    /// Consumer tasks still running (each closes its channel before it ends).
    consumers: watch::Sender<usize>,
}

/// One AMQP connection with its publisher channels.
pub(crate) struct Live {
    pub(crate) generation: u64,
    connection: Connection,
    publishers: Vec<tokio::sync::Mutex<Option<Channel>>>,
    next_publisher: AtomicUsize,
    declared: Mutex<HashSet<QueueSpec>>,
    /// The broker ([`Config::brokers`]) it is connected to.
    broker: usize,
    /// Whether its publishes stopped being confirmed.
    stalled: Mutex<Stall>,
    /// Given up after its publishes stopped being confirmed: no longer
    /// offered to publishers and consumers, while it closes.
    given_up: AtomicBool,
    /// Its TCP socket, ended when the connection is abandoned.
    socket: Arc<Socket>,
}

impl Live {
    pub(crate) fn connected(&self) -> bool {
        !self.given_up.load(Ordering::Relaxed) && self.connection.status().connected()
    }

    /// A publish was confirmed (acked, nacked or returned): the broker works.
    fn confirmed(&self) {
        lock(&self.stalled).confirmed(Instant::now());
    }

    /// Counts a publish that was not confirmed within `timeout`; `true` when
    /// that makes the connection stalled ([`Stall::timed_out`], `limit`
    /// publishes) and it is given up now, by this call.
    fn confirm_timed_out(self: &Arc<Self>, limit: u32, timeout: Duration) -> bool {
        let blocked = self.connection.status().blocked();
        let stalled = lock(&self.stalled).timed_out(Instant::now(), blocked, limit, timeout);
        if !stalled {
            return false;
        }
        if self.given_up.swap(true, Ordering::Relaxed) {
            return false;
        }
        // Its consumers end as soon as it starts closing. Publishes still
        // awaiting a confirm on it fail once the broker answers the close,
        // as on any lost connection, and until then time out; the broker
        // gives its consumers' unacknowledged deliveries to others once it
        // lets the connection go (on the close, or when its heartbeats stop).
        let live = Arc::clone(self);
        tokio::spawn(async move {
            let closed = live
                .connection
                .close(200, "no publisher confirms in time; reconnecting".into());
            if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
                // lapin stops its heartbeats while closing, so a broker that
                // never answers would keep the socket (and lapin's thread for
                // it) open.
                tracing::warn!(
                    generation = live.generation,
                    "the connection given up did not close within {CLOSE_WAIT:?}; ending its socket"
                );
                live.socket.end();
            }
        });
        true
    }

    /// A channel for anything but publishing (declarations, consumers).
    pub(crate) async fn channel(&self) -> Result<Channel, Error> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| Error::amqp("channel.open", e))
    }

    /// Takes the channel in slot `index` out of the publisher pool if it is
    /// still `channel`, so the next publish there opens a fresh one. The
    /// channel is closed once the publishes still awaiting their confirms on
    /// it have them: closing it at once would fail those (and have their
    /// callers send them again, although the broker may hold them).
    async fn retire_publisher(&self, index: usize, channel: &Channel) {
        let mut slot = self.publishers[index].lock().await;
        if slot.as_ref().is_some_and(|c| c.id() == channel.id()) {
            *slot = None;
        }
        drop(slot);
        let channel = channel.clone();
        tokio::spawn(async move {
            let _ = channel.wait_for_confirms().await;
            let _ = channel
                .close(200, "retired after a negative confirm".into())
                .await;
        });
    }

    /// A publisher channel in confirm mode and its slot: the slot `index`
    /// when given, else the next one round robin; a closed one is reopened.
    async fn publisher(&self, index: Option<usize>) -> Result<(usize, Channel), Error> {
        let index = index.unwrap_or_else(|| {
            self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len()
        });
        let mut slot = self.publishers[index].lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok((index, channel.clone()));
        }
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::amqp("confirm.select", e))?;
        *slot = Some(channel.clone());
        Ok((index, channel))
    }

    /// Forgets that `spec` was declared, so the next use declares it again
    /// (after its consumer was cancelled or a publish to it was unroutable,
    /// which is what a deleted queue looks like).
    pub(crate) fn forget(&self, spec: &QueueSpec) {
        lock(&self.declared).remove(spec);
    }

    /// Declares `spec` unless this connection already did; returns the queue name.
    ///
    /// A quorum queue is declared with at-least-once dead-lettering. When the
    /// broker refuses that because the queue exists with the arguments of an
    /// earlier version (without the strategy), it is declared with those and
    /// used as it is, with a warning that says how to upgrade it; any other
    /// difference is an [`Error::TopologyMismatch`].
    pub(crate) async fn ensure(&self, shared: &Shared, spec: &QueueSpec) -> Result<String, Error> {
        let name = spec.queue_name(&shared.config);
        if lock(&self.declared).contains(spec) {
            return Ok(name);
        }
        match self.declare(shared, spec, DeadLettering::AtLeastOnce).await {
            Ok(_) => {}
            Err(Error::TopologyMismatch {
                name: mismatched,
                source: refused,
            }) if shared.config.queue_type == QueueType::Quorum && mismatched == name => {
                // The broker closed that channel; try the earlier arguments on
                // a new one.
                match self.declare(shared, spec, DeadLettering::AtMostOnce).await {
                    Ok(_) => shared.warn_at_most_once(&name, &refused),
                    Err(Error::TopologyMismatch {
                        name,
                        source: again,
                    }) if again.to_string().contains("x-dead-letter-strategy") => {
                        // The queue has the strategy, so the first refusal
                        // names the argument that really differs.
                        return Err(Error::TopologyMismatch {
                            name,
                            source: refused,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        lock(&self.declared).insert(spec.clone());
        lock(&shared.known).insert(spec.clone());
        tracing::debug!(queue = %name, generation = self.generation, "queue declared");
        Ok(name)
    }

    /// Declares `spec` on a channel of its own (a refused declaration closes it).
    async fn declare(
        &self,
        shared: &Shared,
        spec: &QueueSpec,
        dead_lettering: DeadLettering,
    ) -> Result<String, Error> {
        let channel = self.channel().await?;
        let declared =
            topology::declare_queue(&channel, &shared.config, spec, dead_lettering).await;
        let _ = channel.close(200, "OK".into()).await;
        declared
    }
}

/// Counts one running consumer task in [`Shared`].
pub(crate) struct ConsumerGuard(Arc<Shared>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.0.consumers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What to publish.
pub(crate) struct Outgoing<'a> {
    /// Declare this queue (once per connection) before publishing.
    pub(crate) ensure: Option<&'a QueueSpec>,
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    pub(crate) message_id: &'a str,
}

impl Shared {
    fn new(config: Config) -> Self {
        let (live, _) = watch::channel(None);
        Self {
            config,
            live,
            known: Mutex::new(BTreeSet::new()),
            kick: Notify::new(),
            generations: AtomicU64::new(0),
            next_broker: AtomicUsize::new(0),
            connected_to: AtomicUsize::new(0),
            at_most_once: Mutex::new(HashSet::new()),
            closed: watch::channel(false).0,
            consumers: watch::channel(0).0,
        }
    }

    /// Says, once per queue and transport, that `queue` keeps an earlier
    /// version's at-most-once dead-lettering, and how to upgrade it.
    fn warn_at_most_once(&self, queue: &str, refused: &lapin::Error) {
        let dead_letter_queue = (self.config.dead_letter_queue)(queue);
        if !lock(&self.at_most_once).insert(queue.to_owned()) {
            tracing::debug!(
                queue,
                "queue declared with the earlier arguments (at-most-once dead-lettering)"
            );
            return;
        }
        tracing::warn!(
            queue,
            dead_letter_queue = %dead_letter_queue,
            refused = %refused,
            "{}",
            at_most_once_warning(queue, &dead_letter_queue)
        );
    }

    /// Whether the transport was closed.
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// A receiver that sees the transport close (wait with `wait_for`).
    pub(crate) fn closed_signal(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Resolves once the transport is closed.
    pub(crate) async fn closing(&self) {
        let _ = self.closed_signal().wait_for(|closed| *closed).await;
    }

    /// Marks the transport closed and waits up to `within` for the consumer
    /// tasks to close their channels.
    pub(crate) async fn stop_consumers(&self, within: Duration) {
        self.closed.send_replace(true);
        let mut running = self.consumers.subscribe();
        if tokio::time::timeout(within, running.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                running = *running.borrow(),
                "consumers still closing their channels; closing the connection anyway"
            );
        }
    }

    /// Counts a consumer task until the guard drops.
    pub(crate) fn consumer_running(self: &Arc<Self>) -> ConsumerGuard {
        self.consumers.send_modify(|n| *n += 1);
        ConsumerGuard(Arc::clone(self))
    }

    /// Asks the supervisor to check the connection now.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// The current connection if it is up.
    pub(crate) fn current(&self) -> Option<Arc<Live>> {
        self.live
            .borrow()
            .as_ref()
            .filter(|l| l.connected())
            .cloned()
    }

    /// The current connection, waiting up to the connect timeout for a reconnect.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(live) = self.current() {
            return Ok(live);
        }
        self.kick();
        let mut rx = self.live.subscribe();
        let wait = rx.wait_for(|l| l.as_ref().is_some_and(|l| l.connected()));
        match tokio::time::timeout(self.config.connect_timeout, wait).await {
            Ok(Ok(live)) => live.as_ref().cloned().ok_or(Error::NotConnected),
            _ => Err(Error::NotConnected),
        }
    }

    /// Waits for a connection newer than `generation` (or any when `None`), or forever.
    pub(crate) async fn next_live(&self, after: Option<u64>) -> Arc<Live> {
        let mut rx = self.live.subscribe();
        loop {
            if let Some(live) = rx
                .borrow_and_update()
                .as_ref()
                .filter(|l| l.connected() && after.is_none_or(|g| l.generation > g))
            {
                return Arc::clone(live);
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Publishes with `mandatory` and waits for the broker's confirm.
    pub(crate) async fn publish(&self, out: Outgoing<'_>) -> Result<(), Error> {
        match self.publish_once(&out, None).await {
            Err((Error::Nacked { .. }, Some(slot))) => {
                // The broker refused it, and its channel was retired: after a
                // quorum queue's leader moved, a channel's view of the queue
                // can stay stale and refuse every publish (seen on RabbitMQ
                // 3.10 after a node was killed). One more try, on a channel
                // opened anew in the same slot; a refused message was not
                // enqueued, so this try does not duplicate it.
                tracing::debug!(
                    message_id = out.message_id,
                    "publish refused by the broker; trying once more on a fresh channel"
                );
                self.publish_once(&out, Some(slot))
                    .await
                    .map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One publish on the publisher channel of `slot` (or the next one);
    /// on an error, the slot it used when it got that far. Once it has a
    /// connection, all of it (declaring the queue, opening the channel,
    /// writing, the confirm) must finish within the confirm timeout: a broker
    /// that stops reading stalls any of them.
    async fn publish_once(
        &self,
        out: &Outgoing<'_>,
        slot: Option<usize>,
    ) -> Result<(), (Error, Option<usize>)> {
        let live = self.live().await.map_err(|e| (e, None))?;
        let timeout = self.config.confirm_timeout;
        match tokio::time::timeout(timeout, self.publish_with(&live, out, slot)).await {
            Ok(published) => published,
            Err(_) => {
                let limit = self.config.confirm_timeouts_before_reconnect;
                if live.confirm_timed_out(limit, timeout) {
                    tracing::warn!(
                        generation = live.generation,
                        broker = %self.broker_url(live.broker),
                        "{limit} publishes timed out and RabbitMQ confirmed nothing for {:?}; \
                         giving the connection up and connecting anew (to the next broker first)",
                        timeout.saturating_mul(limit)
                    );
                }
                self.kick();
                Err((
                    Error::ConfirmTimeout {
                        message_id: out.message_id.to_owned(),
                        timeout,
                    },
                    None,
                ))
            }
        }
    }

    /// [`publish_once`](Self::publish_once) on `live`, without its bound.
    async fn publish_with(
        &self,
        live: &Arc<Live>,
        out: &Outgoing<'_>,
        slot: Option<usize>,
    ) -> Result<(), (Error, Option<usize>)> {
        // While the broker blocks publishers nothing written leaves lapin's
        // buffer: a publish would only time out there, and its retries pile
        // up behind it.
        if live.connection.status().blocked() {
            return Err((Error::Blocked, None));
        }
        if let Some(spec) = out.ensure {
            live.ensure(self, spec)
                .await
                .inspect_err(|_| self.kick())
                .map_err(|e| (e, None))?;
        }
        let (index, channel) = live
            .publisher(slot)
            .await
            .inspect_err(|_| self.kick())
            .map_err(|e| (e, None))?;
        self.publish_on(live, index, &channel, out)
            .await
            .map_err(|e| (e, Some(index)))
    }

    /// Publishes `out` on `channel` (publisher slot `index`) and awaits its confirm.
    async fn publish_on(
        &self,
        live: &Arc<Live>,
        index: usize,
        channel: &Channel,
        out: &Outgoing<'_>,
    ) -> Result<(), Error> {
        let confirm = channel
            .basic_publish(
                short(out.exchange)?,
                short(out.routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                out.body,
                out.properties.clone(),
            )
            .await
            .map_err(|e| {
                self.kick();
                Error::amqp("basic.publish", e)
            })?;
        // Bounded by the caller (`publish_once`).
        let confirmation = match confirm.await {
            Err(e) => {
                self.kick();
                return Err(Error::amqp("publisher confirm", e));
            }
            Ok(confirmation) => {
                live.confirmed();
                confirmation
            }
        };
        if confirmation.is_nack() {
            live.retire_publisher(index, channel).await;
            return Err(Error::Nacked {
                message_id: out.message_id.to_owned(),
            });
        }
        if confirmation.take_message().is_some() {
            if let Some(spec) = out.ensure {
                live.forget(spec);
            }
            return Err(Error::Unroutable {
                message_id: out.message_id.to_owned(),
                exchange: out.exchange.to_owned(),
                routing_key: out.routing_key.to_owned(),
            });
        }
        Ok(())
    }

    /// Connects to the first broker that answers, from the one to try first
    /// round the list; the connection and its socket.
    async fn connect_any(&self) -> Result<(Connection, Arc<Socket>), Error> {
        let config = &self.config;
        let brokers = config.brokers();
        // One broker that hangs must leave time to try the others.
        let per_broker = (config.connect_timeout / u32::try_from(brokers.len()).unwrap_or(1))
            .max(Duration::from_secs(1));
        let first = self.next_broker.load(Ordering::Relaxed);
        let mut last = Error::NotConnected;
        for offset in 0..brokers.len() {
            let index = (first + offset) % brokers.len();
            let properties = ConnectionProperties::default()
                .with_connection_name(LongString::from(config.connection_name.as_str()));
            let socket = Arc::new(Socket::default());
            let attempt = socket::connect(brokers[index], properties, &socket);
            match tokio::time::timeout(per_broker, attempt).await {
                Ok(Ok(connection)) => {
                    self.next_broker.store(index, Ordering::Relaxed);
                    self.connected_to.store(index, Ordering::Relaxed);
                    return Ok((connection, socket));
                }
                Ok(Err(e)) => {
                    tracing::debug!(broker = %redact(brokers[index]), error = %e, "broker unreachable");
                    last = Error::amqp("connect", e);
                }
                Err(_) => {
                    tracing::debug!(broker = %redact(brokers[index]), "broker did not answer in time");
                    last = Error::NotConnected;
                    // Abandoned mid-way: lapin's thread would wait on it.
                    socket.end();
                }
            }
        }
        Err(last)
    }

    /// After a lost connection: try the next broker first (its node may be down).
    fn fail_over(&self) {
        let brokers = self.config.brokers().len();
        let next = (self.connected_to.load(Ordering::Relaxed) + 1) % brokers;
        self.next_broker.store(next, Ordering::Relaxed);
    }

    /// The broker of the current connection, password redacted.
    pub(crate) fn broker(&self) -> String {
        self.broker_url(self.connected_to.load(Ordering::Relaxed))
    }

    /// Broker `index` of [`Config::brokers`], password redacted.
    fn broker_url(&self, index: usize) -> String {
        self.config
            .brokers()
            .get(index)
            .map_or_else(String::new, |url| redact(url))
    }

    /// Opens a connection, declares the topology and the publisher channels.
    /// A broker that accepts the connection but fails the declarations (a
    /// node cut off from its cluster) is left for the next one.
    async fn open(&self) -> Result<Arc<Live>, Error> {
        let (connection, socket) = self.connect_any().await?;
        // A broker that accepts the connection and then stops answering
        // must not hold the reconnect.
        let bound = self.config.connect_timeout;
        let opened = tokio::time::timeout(bound, self.prepare(connection, Arc::clone(&socket)))
            .await
            .unwrap_or(Err(Error::NoAnswer {
                operation: "declaring the topology",
                timeout: bound,
            }));
        if let Err(e) = &opened {
            // A broker that answered with an error is closed gracefully (the
            // connection is dropped); one that stopped answering is cut off.
            if matches!(e, Error::NoAnswer { .. }) {
                socket.end();
            }
            if self.config.brokers().len() > 1 {
                self.fail_over();
            }
        }
        opened
    }

    /// Declares the topology and the publisher channels on `connection`.
    async fn prepare(
        &self,
        connection: Connection,
        socket: Arc<Socket>,
    ) -> Result<Arc<Live>, Error> {
        let config = &self.config;
        let live = Live {
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            connection,
            publishers: (0..config.publisher_channels)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_publisher: AtomicUsize::new(0),
            declared: Mutex::new(HashSet::new()),
            broker: self.connected_to.load(Ordering::Relaxed),
            stalled: Mutex::new(Stall::new(Instant::now())),
            given_up: AtomicBool::new(false),
            socket,
        };
        let channel = live.channel().await?;
        topology::declare_exchanges(&channel, config).await?;
        let _ = channel.close(200, "OK".into()).await;
        let mut specs: BTreeSet<QueueSpec> = lock(&self.known).clone();
        specs.extend(config.endpoints.iter().cloned().map(QueueSpec::Commands));
        specs.extend(config.reply_queues.iter().cloned().map(QueueSpec::Replies));
        for spec in &specs {
            live.ensure(self, spec).await?;
        }
        for _ in 0..config.publisher_channels {
            live.publisher(None).await?;
        }
        Ok(Arc::new(live))
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.reconnect_min_delay)
            .with_max_delay(self.config.reconnect_max_delay)
            .with_jitter()
            .without_max_times()
    }

    /// Reconnect delays for consumers re-opening their channel.
    pub(crate) fn consumer_backoff(&self) -> backon::ExponentialBackoff {
        backon::BackoffBuilder::build(self.backoff())
    }
}

/// What the operator reads when `queue` keeps an earlier version's arguments.
fn at_most_once_warning(queue: &str, dead_letter_queue: &str) -> String {
    format!(
        "queue `{queue}` exists with the arguments of an earlier saga-rabbitmq, without \
         x-dead-letter-strategy=at-least-once; it is used as it is, so unless a policy sets the \
         strategy the broker dead-letters its messages at most once (one dead-lettered while \
         `{dead_letter_queue}` is missing or unavailable is lost). A queue's arguments cannot \
         change: upgrade it in place with a policy, `rabbitmqctl set_policy -p <vhost> \
         --apply-to queues saga-dead-letter-at-least-once '{pattern}' \
         '{{\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\"}}'` \
         (or add both keys to the policy that already applies to it), or delete it once it is \
         empty so that it is declared anew",
        pattern = topology::policy_pattern(queue),
    )
}

/// Connects (retrying within the connect timeout) and starts the supervisor,
/// which stops when `shutdown` turns true or its sender is dropped.
pub(crate) async fn start(
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<Shared>, tokio::task::JoinHandle<()>), Error> {
    config.validate()?;
    let shared = Arc::new(Shared::new(config));
    let last_error = Mutex::new(None::<String>);
    let connect = (|| shared.open())
        .retry(shared.backoff())
        .sleep(tokio::time::sleep)
        .when(|e: &Error| e.kind() == saga_core::ErrorKind::Unavailable)
        .notify(|e: &Error, delay| {
            tracing::debug!(error = %e, ?delay, "RabbitMQ not reachable yet; retrying");
            *lock(&last_error) = Some(e.to_string());
        });
    let timeout = shared.config.connect_timeout;
    let live = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(live)) => live,
        Ok(Err(e)) if e.kind() != saga_core::ErrorKind::Unavailable => return Err(e),
        Ok(Err(e)) => return Err(connect_error(&shared.config, timeout, e.to_string())),
        Err(_) => {
            let reason = lock(&last_error)
                .take()
                .unwrap_or_else(|| "connection attempt timed out".to_owned());
            return Err(connect_error(&shared.config, timeout, reason));
        }
    };
    tracing::info!(url = %shared.broker(), generation = live.generation, "connected to RabbitMQ");
    shared.live.send_replace(Some(live));
    let span = tracing::info_span!("saga.rabbitmq.supervisor", url = %shared.config.redacted_url());
    let supervisor = tokio::spawn(supervise(Arc::clone(&shared), shutdown).instrument(span));
    Ok((shared, supervisor))
}

fn connect_error(config: &Config, timeout: Duration, reason: String) -> Error {
    Error::Connect {
        url: config.redacted_url(),
        timeout,
        reason,
    }
}

async fn supervise(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        // Watch the current connection until it breaks.
        loop {
            let stop = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => true,
                () = shared.kick.notified() => false,
                () = tokio::time::sleep(HEALTH_CHECK) => false,
            };
            if stop {
                return close(&shared).await;
            }
            if shared.current().is_none() {
                break;
            }
        }
        let old = shared.live.send_replace(None);
        if old
            .as_ref()
            .is_some_and(|l| l.given_up.load(Ordering::Relaxed))
        {
            tracing::info!(
                generation = old.as_ref().map(|l| l.generation),
                broker = %shared.broker(),
                "reconnecting after giving up a connection that confirmed nothing"
            );
        } else {
            tracing::warn!(
                generation = old.as_ref().map(|l| l.generation),
                broker = %shared.broker(),
                "RabbitMQ connection lost; reconnecting"
            );
        }
        if shared.config.brokers().len() > 1 {
            shared.fail_over();
        }
        // A lost connection's socket goes with its `Live` (lapin's thread
        // for it has ended); one given up ends its socket itself if the
        // broker does not answer its close.
        drop(old);
        let reconnect = (|| shared.open())
            .retry(shared.backoff())
            .sleep(tokio::time::sleep)
            .notify(|e: &Error, delay| {
                tracing::warn!(error = %e, ?delay, "reconnect to RabbitMQ failed; retrying");
            });
        let result = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => None,
            result = reconnect => Some(result),
        };
        match result {
            None => return close(&shared).await,
            Some(Ok(live)) => {
                tracing::info!(
                    generation = live.generation,
                    broker = %shared.broker(),
                    "reconnected to RabbitMQ; topology declared again"
                );
                shared.live.send_replace(Some(live));
            }
            Some(Err(e)) => {
                // Unreachable without a retry limit, but never give up silently.
                tracing::error!(error = %e, "reconnect gave up");
            }
        }
    }
}

async fn close(shared: &Shared) {
    shared.closed.send_replace(true);
    if let Some(live) = shared.live.send_replace(None) {
        if live.connected() {
            let closed = live.connection.close(200, "OK".into());
            if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
                tracing::warn!(
                    generation = live.generation,
                    "RabbitMQ did not answer the close within {CLOSE_WAIT:?}; ending the socket"
                );
                live.socket.end();
            }
        }
        tracing::debug!(generation = live.generation, "RabbitMQ connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_at_most_once_warning_names_the_queue_and_the_fix() {
        let text = at_most_once_warning("saga.replies", "saga.replies.dlq");
        assert!(text.contains("queue `saga.replies` exists"), "{text}");
        assert!(text.contains("`saga.replies.dlq` is missing"), "{text}");
        assert!(
            text.contains(
                "rabbitmqctl set_policy -p <vhost> --apply-to queues saga-dead-letter-at-least-once \
                 '^saga\\.replies$' \
                 '{\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\"}'"
            ),
            "{text}"
        );
        assert!(!text.contains("  "), "no stray spaces: {text}");
    }
}
