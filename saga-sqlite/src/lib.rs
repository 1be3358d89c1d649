//! # saga-sqlite: SQLite storage for saga-core
//!
//! The embedded [`SagaStore`](saga_core::SagaStore) for
//! [saga-core](saga_core): durable sagas in one file, with no server to
//! install, on [sea-orm](sea_orm) (`sqlx-sqlite`, SQLite compiled in).
//!
//! - [`SqliteSagaStore`]: saga state in `saga_state`, the audit trail in
//!   `saga_logs`, version-checked saves, due-saga claims with a lease,
//!   operator listings, retention, and outcome notifications inside the
//!   process.
//! - [`inbox`]: the participant side, `saga_inbox` and the functions that
//!   make a participant effectively once inside its own transaction;
//!   [`inbox::SqliteInbox`] for handlers without one.
//! - [`SqliteConfig`]: the file (WAL mode, `synchronous=FULL` by default) or
//!   an in-memory database. The crate reads no environment variable.
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use saga_core::memory::InMemoryTransport;
//! use saga_core::{Command, Engine, Participant, Saga, SagaStatus};
//! use saga_sqlite::{SqliteConfig, SqliteSagaStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Reserve { sku: String }
//! impl Command for Reserve { const NAME: &'static str = "reserve"; const ENDPOINT: &'static str = "inventory"; type Reply = String; }
//! #[derive(Serialize, Deserialize)]
//! struct Release { reservation: Option<String> }
//! impl Command for Release { const NAME: &'static str = "release"; const ENDPOINT: &'static str = "inventory"; type Reply = (); }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { sku: String, reservation: Option<String> }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let folder = std::env::temp_dir().join(format!("saga-sqlite-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&folder)?;
//! // A file, created and migrated if missing; `SqliteConfig::memory()` keeps nothing.
//! let store = SqliteSagaStore::open(&SqliteConfig::file(folder.join("sagas.db"))).await?;
//!
//! let checkout = Saga::<Order>::builder("checkout")
//!     .step("reserve", |step| {
//!         step.invoke(|o: &Order| Reserve { sku: o.sku.clone() })
//!             .on_reply(|o, reservation| o.reservation = Some(reservation))
//!             .compensate(|o: &Order| Release { reservation: o.reservation.clone() })
//!             .timeout(Duration::from_secs(10))
//!     })
//!     .build()?;
//! let transport = InMemoryTransport::new();
//! let engine = Engine::builder(store, transport.clone()).register(&checkout).build();
//! let inventory = Participant::builder()
//!     .on(|cmd: Reserve, _ctx| async move { Ok(format!("r-{}", cmd.sku)) })
//!     .on(|_cmd: Release, _ctx| async move { Ok(()) })
//!     .build()?;
//! let (running, serving) = (engine.spawn(), inventory.spawn(transport));
//!
//! let id = engine.start(&checkout, Order { sku: "book".into(), reservation: None }).await?;
//! assert_eq!(engine.wait(id, Duration::from_secs(10)).await?.status, SagaStatus::Completed);
//!
//! serving.shutdown().await?;
//! running.shutdown().await?;
//! # std::fs::remove_dir_all(&folder)?;
//! # Ok(()) }
//! ```
//!
//! ## Tables
//!
//! Ids are UUID text, JSON is text, booleans are 0/1, and every time is UTC
//! text with six fractional digits (`2026-12-05T10:00:00.000000Z`), so text
//! order is time order and the file reads well in the `sqlite3` shell:
//! `SELECT * FROM saga_logs WHERE saga_id = '…' ORDER BY created_at;` lists
//! a saga's log in its order.
//!
//! | table | keys and indexes |
//! |---|---|
//! | `saga_state` (the columns of `saga_postgres`'s table) | primary key `id`; unique `idempotency_key`; `(next_wake_at)` for claims; `(status, updated_at)` for listings; `(updated_at) WHERE status IN ('completed', 'compensated')` for [`prune`](saga_core::SagaStore::prune) |
//! | `saga_logs` | primary key `(saga_id, seq)`; foreign key to `saga_state` with `ON DELETE CASCADE` |
//! | `saga_inbox` | primary key `idempotency_key`; `(created_at)` for pruning |
//! | `saga_migrations` | sea-orm-migration's record of applied migrations |
//!
//! ## Guarantees
//!
//! - **Nothing acknowledged is lost.** Every write commits before its call
//!   returns, and with [`Durability::Full`] (the default) the commit is on
//!   the disk: a transition the engine acted on survives a crash of the
//!   process and a power loss. [`Durability::Normal`] survives a crash of
//!   the process only.
//! - **One writer, group commit.** The store's writes go through one task
//!   that commits whatever is waiting as one transaction, each write in its
//!   own savepoint: one disk flush for many sagas, and a failing write
//!   rolls back alone.
//! - **Atomic transitions.** [`save`](saga_core::SagaStore::save) replaces
//!   the state if the stored `version` is the expected one, appends the log
//!   entries and releases the lease, all or nothing; a stale writer gets
//!   [`saga_core::Error::Conflict`] and writes nothing.
//! - **Idempotent start.** A duplicate idempotency key returns the first saga
//!   and writes nothing.
//! - **Disjoint claims.** A claim leases due sagas in one statement under
//!   the write lock, so engines sharing the store (clones of it, or stores
//!   opened on the same file in one process) never claim the same saga
//!   while its lease holds; an expired lease is claimed again.
//! - **Retention.** [`prune`](saga_core::SagaStore::prune) deletes a batch of
//!   old completed and compensated sagas with their logs; failed sagas stay.
//!
//! ## One process per file
//!
//! A file is meant for one process: writes are serialized inside the
//! process, and outcome notifications
//! ([`finished_events`](saga_core::SagaStore::finished_events)) reach only
//! that process. A second process on the same file would work (SQLite locks
//! the file, and each group of writes waits up to
//! [`SqliteConfig::busy_timeout`] for the other's), but it is not supported: its waiters learn of outcomes only
//! by polling, and the two contend for one write lock. To run several
//! processes, use `saga-postgres`.
//!
//! ## Errors
//!
//! One [`Error`] type with [`Error::kind`]; it converts into
//! [`saga_core::Error`] with the same kind: a file that cannot be opened, or
//! a write lock held past the busy timeout, is `Unavailable`; a missing
//! table is `Schema`; a duplicate id is `Duplicate`; a stale save is
//! [`saga_core::Error::Conflict`].

mod config;
mod convert;
mod error;
pub mod inbox;
pub mod migration;
mod ops;
mod store;
mod writer;

pub use config::{Durability, SqliteConfig};
pub use error::Error;
#[doc(inline)]
pub use migration::{Migrator, migrate};
/// The sea-orm this crate is built on, for the application's own queries on
/// the same connection.
pub use sea_orm;
pub use store::SqliteSagaStore;
