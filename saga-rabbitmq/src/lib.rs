//! # saga-rabbitmq: the RabbitMQ transport for saga-core
//!
//! [`RabbitTransport`] implements [`saga_core::Transport`] on
//! [lapin](https://docs.rs/lapin): orchestrators ([`saga_core::Engine`]) send
//! commands to participant endpoints and consume replies; participants
//! ([`saga_core::Participant`]) consume their endpoint's commands and send
//! replies. It passes the saga-core transport conformance suite, the same one
//! the in-memory transport passes.
//!
//! ## Quick start
//!
//! ```no_run
//! use saga_core::memory::InMemoryStore;
//! use saga_core::{Command, Engine, Participant};
//! use saga_rabbitmq::{Config, RabbitTransport};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Reserve { sku: String }
//! # impl Command for Reserve { const NAME: &'static str = "reserve"; const ENDPOINT: &'static str = "inventory"; type Reply = String; }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::new("amqp://guest:guest@localhost:5672/%2f")
//!     .endpoints(["order", "inventory", "payment"]) // declared at every (re)connect
//!     .reply_queue("saga_replies");
//! let transport = RabbitTransport::connect(config).await?;
//!
//! // Orchestrator: the engine consumes `saga_replies` and sends commands.
//! let engine = Engine::builder(InMemoryStore::new(), transport.clone()).build();
//! let running = engine.spawn();
//!
//! // Participant: consumes `inventory_commands`, replies, then acks.
//! let inventory = Participant::builder()
//!     .on(|cmd: Reserve, _ctx| async move { Ok(format!("r-{}", cmd.sku)) })
//!     .build()?;
//! let serving = inventory.spawn(transport.clone());
//!
//! // At exit: stop consuming, then close the connection and wait for it.
//! serving.shutdown().await?;
//! running.shutdown().await?;
//! transport.close().await;
//! # Ok(()) }
//! ```
//!
//! ## Topology
//!
//! Declared idempotently at connect, again after every reconnect, and for any
//! queue before the first publish to it or consume from it (cached per
//! connection), so a command sent before any participant ever consumed is
//! kept in its queue.
//!
//! ```text
//!                     routing key = endpoint
//!  Engine ──publish──▶ [saga.commands] (direct) ──"order"────▶ order_commands ─────┐
//!                                               ──"inventory"▶ inventory_commands ─┤ consumed by
//!                                               ──"payment"──▶ payment_commands ───┘ participants
//!
//!                     routing key = reply queue
//!  Participant ─────▶ [saga.replies] (direct) ──"saga_replies"──▶ saga_replies ──▶ every Engine
//!                                                                 (competing consumers)
//!
//!  every queue Q: x-dead-letter-exchange = saga.dead_letter, x-dead-letter-routing-key = Q
//!  quorum queues also: x-dead-letter-strategy = at-least-once, x-overflow = reject-publish
//!  poison / rejected / over the delivery limit
//!      Q ──────────▶ [saga.dead_letter] (direct) ──"Q"──▶ Q.dlq   (e.g. order_commands.dlq)
//! ```
//!
//! | what | name | settings |
//! |---|---|---|
//! | command exchange | `saga.commands` ([`Config::commands_exchange`]) | direct, durable |
//! | command queue of endpoint `e` | `e_commands` ([`Config::command_queue`]) | durable, quorum, `x-delivery-limit`, at-least-once dead-lettering |
//! | reply exchange | `saga.replies` ([`Config::replies_exchange`]) | direct, durable |
//! | reply queue | the engine's `reply_queue` (`saga_replies`) | durable, quorum, at-least-once dead-lettering, shared by all orchestrators |
//! | dead-letter exchange | `saga.dead_letter` ([`Config::dead_letter_exchange`]) | direct, durable |
//! | dead-letter queue of `q` | `q.dlq` ([`Config::dead_letter_queue`]) | durable |
//!
//! Queues are **quorum queues** by default (RabbitMQ 3.8+): replicated, they
//! survive the loss of a node in a cluster, and the broker itself counts
//! deliveries. [`QueueType::Classic`] is the option for brokers or policies
//! without them. A queue's type cannot change once declared: declaring it with
//! another type fails with [`Error::TopologyMismatch`] (kind `Invalid`).
//!
//! ## Messages
//!
//! Bodies are the JSON of [`saga_core::adapter::CommandMessage`] /
//! [`saga_core::adapter::ReplyMessage`], readable in the management UI. Properties:
//! `delivery_mode = 2` (persistent), `content_type = application/json`,
//! `message_id`, `correlation_id` = saga id, `type` = the command name (or
//! `saga.reply`), `reply_to`, `timestamp`. Headers: every entry of the
//! message's `headers` (W3C `traceparent` / `tracestate`), plus
//! [`x-idempotency-key`](properties::IDEMPOTENCY_KEY_HEADER), `x-saga-id`,
//! `x-saga-type`, `x-saga-step`, `x-saga-direction` and `x-saga-attempt`.
//!
//! ## Delivery guarantees
//!
//! - **Publishing is confirmed.** `send_command` / `send_reply` return `Ok`
//!   only once the broker confirmed the persistent message (publisher
//!   confirms) and routed it to a queue (`mandatory`). A nack, an unroutable
//!   message, a lost connection or a missing confirm within
//!   [`Config::confirm_timeout`] is an error the engine sees (`Unavailable` or
//!   `Timeout`); the message may then be lost or delivered, so the caller
//!   retries, and saga-core's step timeouts re-send what was not confirmed.
//!   A nacked publish is first tried once more on a fresh channel (the
//!   channel it went out on is closed and replaced): after a quorum queue's
//!   leader moved, a channel can keep refusing every publish to it.
//!   [`Config::confirm_timeout`] bounds each try of a publish once it has a
//!   connection (declaring its queue, opening a channel, writing, the
//!   confirm), so a broker that stops reading cannot hold a sender; while
//!   the broker blocks publishers (a memory or disk alarm, which holds on
//!   every node) a send fails at once with [`Error::Blocked`].
//!   A connection on which [`Config::confirm_timeouts_before_reconnect`]
//!   publishes timed out, with no confirm since the first of them started
//!   that many timeouts ago (3 and 30 s by default), is given up and a new
//!   one opened, on the next broker of the list first: a node that keeps
//!   its connections alive but confirms nothing is left then, not when its
//!   heartbeats stop. Its consumers end with it, and the broker redelivers
//!   what they held once it lets the connection go; with one broker, the
//!   transport connects to it again. Publishes tell: a process that only
//!   consumes stays on such a node. A connection the transport abandons (a
//!   connect or a reconnect's declarations that timed out, one given up, a
//!   close not answered within 5 s) has its socket shut down, so neither the
//!   socket nor lapin's thread for it outlives it, whatever the peer does.
//! - **At least once.** A delivery is acknowledged only when the handler calls
//!   [`Delivery::ack`](saga_core::adapter::Delivery::ack) — `Participant`
//!   does so after its work committed and its reply was confirmed, `Engine`
//!   after the saga's new state was saved. A delivery dropped unsettled is
//!   requeued; one whose consumer or connection died is redelivered by the
//!   broker to another consumer. Duplicates are possible; participants
//!   deduplicate on the idempotency key.
//! - **Bounded prefetch.** At most [`Config::prefetch`] unacknowledged
//!   messages per consumer.
//! - **Poison messages never block a queue.** A message is dead-lettered to
//!   `Q.dlq` after [`Config::max_deliveries`] deliveries (quorum queues:
//!   `x-delivery-limit`, counted by the broker, which counts a failed
//!   delivery returned with `basic.reject` and, from RabbitMQ 4.3 on, not one
//!   returned with `basic.nack`, so a failure is returned with a reject;
//!   classic queues: a failure republishes the message with an
//!   `x-saga-delivery-count` header, and a crash of the process shows as the
//!   `redelivered` flag). A delivery dropped unsettled while its subscription
//!   is open (its handler panicked) counts as a failure; one the
//!   subscription buffered and never handed out goes back with a nack
//!   (counted by quorum queues before RabbitMQ 4.3, not from 4.3 on).
//!   [`Delivery::reject`](saga_core::adapter::Delivery::reject) and
//!   undecodable messages go straight to the dead-letter queue.
//! - **Dead letters say why.** A rejected or undecodable message is
//!   *republished* (confirmed) to the dead-letter exchange with an
//!   [`x-saga-dead-reason`](properties::DEAD_REASON_HEADER) header and
//!   [`x-saga-dead-queue`](properties::DEAD_QUEUE_HEADER), and only then is
//!   the original acknowledged. Chosen over a plain `basic.reject` because
//!   AMQP cannot attach a reason to a reject; if the republish fails, the
//!   original is rejected without requeue instead, and the broker
//!   dead-letters it with its standard `x-death` header. Messages over the
//!   quorum delivery limit are dead-lettered by the broker (`x-death` reason
//!   `delivery_limit`).
//! - **Dead-lettering is at least once on quorum queues** (RabbitMQ 3.10+).
//!   Their command and reply queues are declared with
//!   `x-dead-letter-strategy = at-least-once` and its prerequisite
//!   `x-overflow = reject-publish`: the broker keeps a message it dead-letters
//!   (over the delivery limit, or rejected when the republish above failed)
//!   in the source queue, out of consumers' reach, until the dead-letter
//!   queue confirmed it. With RabbitMQ's default (at most once) such a
//!   message is lost when `Q.dlq` or its binding is missing or the queue is
//!   unavailable. The broker retries such a message at once when the queue's
//!   policy changes, otherwise every
//!   `dead_letter_worker_publisher_confirm_timeout` (3 minutes by default);
//!   the transport declares `Q.dlq` and its binding again at every
//!   reconnect. No length limit is set, so `reject-publish` never refuses a
//!   publish; an operator who sets one (`max-length` policy) should know
//!   that dead letters awaiting their route count towards it. Classic
//!   queues keep at-most-once dead-lettering: the broker has no other
//!   strategy for them and refuses the argument.
//! - **No ordering promise** beyond what one queue and one consumer give:
//!   requeued and redelivered messages can overtake others, as in every
//!   competing-consumer setup.
//!
//! ## Upgrading: queues declared without at-least-once dead-lettering
//!
//! Earlier versions declared quorum queues without `x-dead-letter-strategy`
//! and `x-overflow`, and RabbitMQ refuses to redeclare a queue with other
//! arguments (`PRECONDITION_FAILED`). So when the broker refuses the new
//! arguments for a quorum queue, the transport declares it with the earlier
//! ones and uses it as it is: the upgrade needs no downtime and no deleted
//! queue, and processes of the earlier version keep working beside it (both
//! declare those queues the same way). It logs a warning once per queue,
//! naming the queue and the fix, because such a queue still dead-letters at
//! most once. Two ways to upgrade it:
//!
//! - **A policy, in place** (the queue keeps its messages). Policies override
//!   what the queue's arguments leave unset:
//!
//!   ```text
//!   rabbitmqctl set_policy -p <vhost> --apply-to queues saga-dead-letter-at-least-once \
//!     '^(order_commands|inventory_commands|payment_commands|saga_replies)$' \
//!     '{"dead-letter-strategy":"at-least-once","overflow":"reject-publish"}'
//!   ```
//!
//!   Only one policy applies to a queue (the one with the highest priority):
//!   if one already matches these queues, add both keys to it instead. The
//!   transport cannot see policies, so the warning stays (once per queue and
//!   process) after the policy is set.
//! - **Delete the queue once it is empty** (no sagas in flight), and let the
//!   transport declare it anew with the new arguments.
//!
//! Any other difference (queue type, delivery limit, dead-letter exchange) is
//! an [`Error::TopologyMismatch`] (kind `Invalid`) whose message quotes the
//! broker, which names the argument. A queue this version created cannot be
//! declared by an earlier version (which sends fewer arguments and gets that
//! error): before rolling back, delete such queues once they are empty. On
//! RabbitMQ 3.10 a policy's `overflow` wins over the queue's argument, so a
//! policy that sets `drop-head` on these queues silently turns their
//! dead-lettering back to at most once.
//!
//! ## Reconnects
//!
//! A supervisor task owns the connection. It checks it every 250 ms and
//! whenever a publish or consumer hits an error; when it is gone, it
//! reconnects with exponential backoff and jitter ([`backon`],
//! [`Config::reconnect_min_delay`] to [`Config::reconnect_max_delay`], without
//! a limit), declares the topology again, then publishes the new connection.
//! Each [`Subscription`](saga_core::adapter::Subscription) is fed by its own
//! task, which opens a new channel and consumer on the new connection, so it
//! keeps yielding across reconnects. Publishes during an outage wait up to
//! [`Config::connect_timeout`] for the connection, then fail `Unavailable`.
//! Acks of deliveries from the old connection fail (the broker redelivers
//! those messages).
//!
//! lapin 4's `ConnectionProperties::enable_auto_recover()` is deliberately
//! not used: it replays the topology lapin recorded and gives up after a
//! bounded number of attempts, while this loop re-declares queues from our own
//! configuration (including queues the broker lost), retries without limit,
//! and lets every consumer and publisher see a plain error and a fresh channel,
//! which is easier to reason about and to test (the tests close connections
//! through the management API mid-stream).
//!
//! ## Throughput
//!
//! Publishes are pipelined: they are spread round robin over
//! [`Config::publisher_channels`] channels in confirm mode and each awaits its
//! own confirm, so concurrent senders never wait for each other's confirms
//! (no lock is held across a publish). See `examples/transport_bench.rs` and
//! `docs/benchmarks/rabbitmq.md`.
//!
//! ## Configuration
//!
//! [`Config::new`] takes the broker URL; every setting is a field of
//! [`Config`] with a setter of the same name. The crate reads no environment
//! variable: the application decides (the checkout app's `RABBITMQ_URL`,
//! `RABBITMQ_PREFETCH`... are its own command-line settings).
//!
//! ## Operations
//!
//! - Inspect dead letters in the management UI (queue `<queue>.dlq`, header
//!   `x-saga-dead-reason`). Dead letters that a quorum queue holds because
//!   their route is missing show in its `messages` but not in
//!   `messages_ready` (management API: `messages_dlx`), and the broker logs
//!   "Cannot forward any dead-letter messages from source quorum queue".
//!   After fixing the cause, move a message back with
//!   the management UI's *shovel* / *move messages* or with
//!   [`RabbitTransport::publish_raw`].
//! - Errors convert into [`saga_core::Error`] with a kind: `Unavailable`
//!   (broker down; retried), `Timeout` (no confirm), `Invalid`
//!   (configuration, topology mismatch).
//!
//! ## Testing
//!
//! The integration tests in `tests/` run against a real broker, each in its
//! own vhost created through the management API (`SAGA_TEST_AMQP_URL`,
//! `SAGA_TEST_RABBITMQ_API`); they fail, never skip, when it is unreachable.

mod config;
mod connection;
mod consume;
mod error;
pub mod properties;
mod socket;
mod stall;
mod topology;
mod transport;

#[doc(inline)]
pub use config::{
    Config, DEFAULT_URL, QueueType, default_command_queue, default_dead_letter_queue,
};
#[doc(inline)]
pub use error::Error;
#[doc(inline)]
pub use transport::RabbitTransport;
