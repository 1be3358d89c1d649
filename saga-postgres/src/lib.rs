//! # saga-postgres: PostgreSQL storage for saga-core
//!
//! The production [`SagaStore`](saga_core::SagaStore) for
//! [saga-core](saga_core), on [sea-orm](sea_orm) and
//! [sea-orm-migration](sea_orm_migration):
//!
//! - [`PgSagaStore`]: saga state in `saga_state`, the audit trail in
//!   `saga_logs`, version-checked saves, due-saga claims with
//!   `FOR UPDATE SKIP LOCKED` and a lease, operator listings, and outcome
//!   notifications across processes with `LISTEN`/`NOTIFY`.
//! - [`inbox`]: the participant side, a `saga_inbox` table and functions that
//!   a participant calls *inside its own business transaction* to handle each
//!   command effectively once; [`inbox::PgInbox`] for handlers without one.
//! - [`Migrator`] / [`migrate`]: the schema, owned by this crate.
//! - [`PgConfig`]: the connection pool (the crate reads no environment
//!   variable: the application passes the URL).
//!
//! ## Quick start
//!
//! The library migrates its tables but does not create the database: create
//! it once (`createdb orchestrator`, or your deployment's tooling), then:
//!
//! ```no_run
//! use std::time::Duration;
//! use saga_core::memory::InMemoryTransport;
//! use saga_core::{Command, Engine, Participant, Saga, SagaStatus};
//! use saga_postgres::{PgConfig, PgSagaStore, inbox::PgInbox};
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
//! let db = PgConfig::new("postgres://postgres@localhost:5432/orchestrator").connect().await?;
//! saga_postgres::migrate(&db).await?; // idempotent; or run it at deployment
//!
//! let checkout = Saga::<Order>::builder("checkout")
//!     .step("reserve", |step| {
//!         step.invoke(|o: &Order| Reserve { sku: o.sku.clone() })
//!             .on_reply(|o, reservation| o.reservation = Some(reservation))
//!             .compensate(|o: &Order| Release { reservation: o.reservation.clone() })
//!             .timeout(Duration::from_secs(10))
//!     })
//!     .build()?;
//! let transport = InMemoryTransport::new(); // saga-rabbitmq in production
//! let store = PgSagaStore::new(db.clone()).await?;
//! let engine = Engine::builder(store, transport.clone()).register(&checkout).build();
//!
//! let inventory = Participant::builder()
//!     .inbox(PgInbox::new(db.clone()))
//!     .on(|cmd: Reserve, _ctx| async move { Ok(format!("r-{}", cmd.sku)) })
//!     .on(|_cmd: Release, _ctx| async move { Ok(()) })
//!     .build()?;
//! let (running, serving) = (engine.spawn(), inventory.spawn(transport));
//!
//! let id = engine.start(&checkout, Order { sku: "book".into(), reservation: None }).await?;
//! assert_eq!(engine.wait(id, Duration::from_secs(10)).await?.status, SagaStatus::Completed);
//! for entry in engine.logs(id).await? {
//!     println!("{:>3} {:<24} {:?}", entry.seq, entry.event, entry.step);
//! }
//!
//! serving.shutdown().await?;
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The integration test `tests/postgres/guide.rs` runs this example against a
//! real server.
//!
//! ## Tables
//!
//! | table | columns | keys and indexes |
//! |---|---|---|
//! | `saga_state` | `id uuid`, `saga_type text`, `definition_version int`, `status text`, `current_step int`, `phase text` (`invoke`/`compensate`), `attempt int`, `waiting text` (`reply`/`retry`), `uncertain bool`, `steps jsonb`, `data jsonb`, `error text`, `idempotency_key text`, `version bigint`, `next_wake_at timestamptz`, `deadline_at timestamptz`, `log_seq bigint`, `lease_owner text`, `lease_until timestamptz`, `created_at timestamptz`, `updated_at timestamptz` | primary key `id`; unique `idempotency_key`; `saga_state_due_idx (next_wake_at) WHERE next_wake_at IS NOT NULL` for the due-saga claim; `saga_state_status_updated_idx (status, updated_at)` for listings and stuck sagas; `saga_state_finished_idx (updated_at) WHERE status IN ('completed', 'compensated')` for [`prune`](saga_core::SagaStore::prune); check on `status` |
//! | `saga_logs` | `saga_id uuid`, `seq bigint`, `event text`, `step text`, `attempt int`, `payload jsonb`, `created_at timestamptz` | primary key `(saga_id, seq)` (the log order); foreign key to `saga_state` with `ON DELETE CASCADE` |
//! | `saga_inbox` | `idempotency_key text`, `outcome jsonb` (null while claimed), `created_at timestamptz` | primary key `idempotency_key`; index on `created_at` for [`inbox::prune_in`] and [`inbox::prune_batch_in`] |
//! | `saga_migrations` | sea-orm-migration's record of applied migrations | kept apart from `seaql_migrations` so the application's own migrator can share the database |
//!
//! A trigger, `saga_state_finished`, calls `pg_notify('saga_finished', id)`
//! when a row is written with a terminal status. Columns are nullable exactly
//! where [`SagaInstance`](saga_core::SagaInstance) has an `Option`; timestamps
//! keep microseconds. The [`entity`] module has the sea-orm entities for
//! reading the tables directly.
//!
//! Participants keep `saga_inbox` in *their* database, next to their business
//! tables: run [`migrate`] there too (the saga tables stay empty).
//!
//! ## Guarantees
//!
//! - **Atomic transitions.** [`save`](saga_core::SagaStore::save) replaces the
//!   state if the stored `version` is the expected one, appends the log
//!   entries, and releases the lease, in one statement (one implicit
//!   transaction, one round trip). A stale writer gets
//!   [`saga_core::Error::Conflict`] and writes nothing, logs included.
//! - **Group commit.** Saves that arrive while earlier ones are running go
//!   to the database together: one statement and one commit for up to
//!   [`StoreConfig::save_batch`] sagas, each row still checked against its
//!   own expected version and written with its own log entries. A batch never
//!   holds two saves of one saga; a batch that fails as a whole is retried
//!   row by row, so one bad row fails only its own save.
//! - **Idempotent start.** [`create`](saga_core::SagaStore::create) inserts
//!   with `ON CONFLICT (idempotency_key) DO NOTHING`; a duplicate key returns
//!   the first saga, even when the two starts race, and writes no log.
//! - **Disjoint claims.** [`claim_due`](saga_core::SagaStore::claim_due) leases
//!   due sagas in one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`:
//!   concurrent engines get disjoint sets without blocking each other; a
//!   lease that expired (its engine died) is claimed again.
//! - **Ordered, complete logs.** Entries are keyed by `(saga_id, seq)` and
//!   written only together with the state change they belong to.
//! - **Retention without waiting.** [`prune`](saga_core::SagaStore::prune)
//!   deletes a batch of completed and compensated sagas and their logs in one
//!   `DELETE … WHERE id IN (SELECT … ORDER BY updated_at LIMIT n FOR UPDATE
//!   SKIP LOCKED)`: concurrent pruners delete disjoint sets, and a saga an
//!   engine is writing is skipped, never waited for.
//! - **Outcomes across processes.** The NOTIFY is sent inside the committing
//!   transaction, so [`finished_events`](saga_core::SagaStore::finished_events)
//!   announces only committed outcomes, whichever process wrote them. A
//!   notification lost with a connection is covered by the engine's polling.
//! - **Effectively-once participants.** See [`inbox`].
//!
//! Faithfulness: `load` returns exactly what `create`/`save` stored (the
//! conformance suite, `saga_core::testing::store_conformance`, checks it with
//! `==`), apart from timestamps, which PostgreSQL keeps to the microsecond.
//!
//! ## Configuration
//!
//! [`PgConfig::new`] takes the URL; its setters the pool size (10),
//! idle connections (0), acquire timeout (5 s) and statement timeout (none).
//! The store holds one pool connection for LISTEN. The crate reads no
//! environment variable.
//!
//! ## Errors
//!
//! One [`Error`] type with [`Error::kind`]; it converts into
//! [`saga_core::Error`] with the same [`ErrorKind`](saga_core::ErrorKind):
//! an unreachable server or a lost connection is `Unavailable` (retry); a
//! missing table is `Schema`, with a message telling to run the migrations;
//! a unique violation is `Duplicate`; a stale save is
//! [`saga_core::Error::Conflict`].
//!
//! ## Feature flags
//!
//! None. The crate needs PostgreSQL 11 or later and is tested on 15 (the
//! tests themselves need 13 or later for `DROP DATABASE … WITH (FORCE)`).

mod batch;
mod config;
mod convert;
pub mod entity;
mod error;
pub mod inbox;
pub mod migration;
mod notify;
mod store;

#[doc(inline)]
pub use config::PgConfig;
pub use error::Error;
#[doc(inline)]
pub use migration::{Migrator, migrate};
pub use notify::FINISHED_CHANNEL;
/// The sea-orm this crate is built on: its connection and transaction types
/// appear in this crate's API (`DatabaseConnection`, `ConnectionTrait`), so
/// handlers can name them without a version-matched dependency of their own.
pub use sea_orm;
#[doc(inline)]
pub use store::{PgSagaStore, StoreConfig};
