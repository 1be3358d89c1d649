//! Wiring: shutdown, infrastructure, the whole stack in one process, or one
//! service per process.
//!
//! - [`Shutdown`] (`shutdown`): the signal every task of a process stops on.
//! - Infrastructure (`infra`): database URLs ([`with_database`]), creating
//!   databases ([`ensure_database`]), a service's database ([`service_db`]),
//!   the saga store ([`saga_store`]) and the transport ([`transport`]).
//! - The whole stack (`stack`): [`start_all`] runs all five services as tasks
//!   of one process ([`StackConfig`], [`RunningStack`]).
//! - One service (`one_service`): [`run_service`] runs one of the five in
//!   this process ([`Service`], [`ServiceConfig`]).
//! - The process's Tokio runtime (`executor`): [`executor`].
//! - One process per data folder (`data_lock`): [`lock_data_dir`].
//!
//! Every service binds its listener first, so a stack started on port 0
//! (tests) knows all addresses before any service needs another's URL.

mod data_lock;
mod executor;
mod infra;
mod one_service;
mod shutdown;
mod stack;
mod tasks;

pub use data_lock::{DataDirLock, LOCK_FILE, lock_data_dir};
pub use executor::executor;
pub use infra::{
    Databases, RabbitTuning, Storage, ensure_database, saga_store, saga_store_with_pool,
    service_db, sqlite_file, transport, with_database,
};
pub use one_service::{Service, ServiceConfig, run_service, service_name};
pub use shutdown::Shutdown;
pub use stack::{Ports, RunningStack, StackConfig, start_all};
pub use tasks::orchestrator_engine;
