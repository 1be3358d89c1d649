//! # saga-core: durable sagas for Rust
//!
//! A saga is a sequence of steps across services where every step has a
//! compensation: if a later step fails, the earlier ones are undone in reverse
//! order. `saga-core` runs *orchestrated* sagas durably: every transition is
//! persisted before anything is sent, so a crash at any point resumes the saga
//! instead of losing or repeating work.
//!
//! - **Define** a saga with the typed [`Saga::builder`]: steps that send a
//!   [`Command`] to a participant or run a local function, each with a
//!   compensation, a [`RetryPolicy`], a timeout and a kind (compensatable,
//!   pivot, retriable).
//! - **Run** it with an [`Engine`] over a [`SagaStore`] and a [`Transport`].
//!   This crate ships in-memory ones ([`memory`]); `saga-postgres` and
//!   `saga-rabbitmq` are the production adapters.
//! - **Serve** commands in participant services with a [`Participant`].
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
//! use saga_core::{Command, Engine, Participant, Saga, SagaStatus, StepError};
//!
//! // Messages, shared by the orchestrator and the participant. A command
//! // names the participant endpoint that handles it.
//! #[derive(Serialize, Deserialize)]
//! struct Reserve { sku: String, quantity: u32 }
//! impl Command for Reserve { const NAME: &'static str = "reserve"; const ENDPOINT: &'static str = "inventory"; type Reply = String; }
//! #[derive(Serialize, Deserialize)]
//! struct Release { reservation: Option<String> }
//! impl Command for Release { const NAME: &'static str = "release"; const ENDPOINT: &'static str = "inventory"; type Reply = (); }
//!
//! // The saga's data.
//! #[derive(Serialize, Deserialize)]
//! struct Order { sku: String, quantity: u32, reservation: Option<String>, charged: bool }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), saga_core::Error> {
//! let checkout = Saga::<Order>::builder("checkout")
//!     .step("reserve", |step| {
//!         step.invoke(|o: &Order| Reserve { sku: o.sku.clone(), quantity: o.quantity })
//!             .on_reply(|o, reservation| o.reservation = Some(reservation))
//!             .compensate(|o: &Order| Release { reservation: o.reservation.clone() })
//!     })
//!     .step("charge", |step| {
//!         step.local(|o: Order, _| async move {
//!             if o.quantity > 10 { Err(StepError::business("card limit exceeded")) } else { Ok(true) }
//!         })
//!         .on_reply(|o, charged| o.charged = charged)
//!         .pivot()
//!     })
//!     .build()?;
//!
//! let transport = InMemoryTransport::new();
//! let engine = Engine::builder(InMemoryStore::new(), transport.clone()).register(&checkout).build();
//!
//! // A participant: idempotent through an inbox.
//! let inventory = Participant::builder()
//!     .inbox(InMemoryInbox::new())
//!     .on(|cmd: Reserve, _ctx| async move { Ok(format!("r-{}", cmd.sku)) })
//!     .on(|_cmd: Release, _ctx| async move { Ok(()) })
//!     .build()?;
//!
//! let running = engine.spawn();
//! let serving = inventory.spawn(transport);
//!
//! let order = |quantity| Order { sku: "book".into(), quantity, reservation: None, charged: false };
//! let ok = engine.start(&checkout, order(2)).await?;
//! let done = engine.wait_for(&checkout, ok, Duration::from_secs(5)).await?;
//! assert_eq!((done.status, done.data.charged), (SagaStatus::Completed, true));
//!
//! let too_many = engine.start(&checkout, order(50)).await?;
//! let undone = engine.wait_for(&checkout, too_many, Duration::from_secs(5)).await?;
//! assert_eq!(undone.status, SagaStatus::Compensated); // the reservation was released
//!
//! serving.shutdown().await?;
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Concepts
//!
//! - **Definition vs instance.** A [`Saga<D>`] is immutable and holds no
//!   connection. A [`SagaInstance`] is one run: status, per-step state, the
//!   data `D` as JSON, the attempt in progress and when to wake next.
//! - **Functional core.** [`machine::transition`] is a pure function from
//!   (definition, instance, event, now) to (new instance, log entries,
//!   effects). The [`Engine`] persists, then performs the effects.
//! - **Error classes.** A participant or local step reports a [`StepError`]:
//!   *retryable* (retried per policy), *business* (compensate now) or
//!   *unknown* (the step's [`OnUnknown`] decides; the step is compensated too).
//! - **Statuses.** [`SagaStatus::Running`], `Compensating`, then one of
//!   `Completed`, `Compensated`, or `Failed` (needs an operator: see
//!   [`Engine::retry`]).
//! - **Idempotency.** Every command carries an [`IdempotencyKey`] stable across
//!   attempts and redeliveries; participants deduplicate on it (see
//!   [`participant`]). Starting with [`StartOptions::idempotency_key`] makes
//!   `start` itself idempotent.
//! - **Adapters** implement the traits in [`adapter`] (store, transport,
//!   inbox) and prove themselves with the conformance suites of `testing`.
//!
//! ## Guarantees
//!
//! Nothing lost, nothing done twice, every started step undone in reverse,
//! under the conditions docs/concepts.md spells out (participants follow the
//! [`participant`] inbox contract, local steps are idempotent on their key,
//! engines' clocks differ by less than a second):
//!
//! - Steps run in order; compensation runs for every step that was started
//!   (succeeded, uncertain, or failed: the failed one's compensation makes the
//!   participant refuse a late redelivered copy of its command), in reverse
//!   order, and never starts while a local step's attempt may still run.
//! - No step action is dispatched after compensation began; after the pivot
//!   nothing is compensated; the pivot and the steps after it never give up.
//!   The builder refuses a remote step that may be compensated but has no
//!   compensation at its own endpoint (only that participant can refuse a
//!   late copy of its command).
//! - Retries, timeouts and deadlines are persisted (`next_wake_at`): a restart
//!   neither forgets a retry nor repeats a finished step. A command the
//!   transport refused is sent again from the store; a crashed engine's
//!   commands are sent again when it restarts; a save that reported an error
//!   but committed still sends; none of these costs an attempt.
//! - A participant claims a command's key before it works on it: a duplicate
//!   waits for the copy in flight, and a compensation racing its invoke waits
//!   and then undoes it.
//! - A reply the engine cannot apply yet (its store is down, its definition
//!   is only on a newer engine) waits instead of being dead-lettered.
//! - An operator's [`Engine::retry`] runs the step again with a new attempt,
//!   under a new key when the participant had refused the old one.
//! - Several engines may share a store: saves are version-checked, due sagas
//!   are claimed with a lease, and any engine can process any reply.
//!
//! ## Adapters
//!
//! | crate | store | transport |
//! |---|---|---|
//! | `saga-core` ([`memory`]) | [`memory::InMemoryStore`] | [`memory::InMemoryTransport`] |
//! | `saga-postgres` | `PgSagaStore` (sea-orm) | |
//! | `saga-rabbitmq` | | `RabbitTransport` (lapin) |
//!
//! ## Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `testing` | [`testing`]: conformance suites for store and transport adapters, and a deterministic simulation harness |

pub mod adapter;
pub mod clock;
pub mod definition;
mod engine;
mod error;
mod id;
mod inbox;
pub mod machine;
pub mod memory;
mod mermaid;
mod message;
pub mod metrics;
pub mod participant;
pub mod propagation;
mod retry;
mod running;
mod state;
mod store;
pub mod stuck;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

#[doc(inline)]
pub use definition::{Command, LocalContext, OnUnknown, Saga, SagaData, StepKind};
#[doc(inline)]
pub use engine::{Engine, EngineBuilder, EngineConfig, Outcome, StartOptions};
pub use error::{BoxError, Error, ErrorKind, Result, StepError, StepErrorKind};
pub use id::{Direction, IdempotencyKey, SagaId};
#[doc(inline)]
pub use inbox::Inbox;
#[doc(inline)]
pub use participant::{CommandContext, Participant};
pub use retry::RetryPolicy;
pub use running::Running;
pub use state::{LogEntry, LogEvent, SagaInstance, SagaStatus, StepStatus};
#[doc(inline)]
pub use store::SagaStore;
#[doc(inline)]
pub use transport::Transport;
