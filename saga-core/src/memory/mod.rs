//! In-memory adapters: a [`SagaStore`](crate::SagaStore), a [`Transport`](crate::Transport)
//! and an [`Inbox`](crate::Inbox) that live in the process.
//!
//! They back unit tests, the examples and the checkout app's embedded mode,
//! and they keep the same semantics as the production adapters (version
//! checks, leases, redelivery of unacknowledged messages, dead-letter queues),
//! so code tested on them behaves the same on Postgres and RabbitMQ. Nothing
//! survives the process.

mod inbox;
mod store;
mod transport;

pub use inbox::InMemoryInbox;
pub use store::InMemoryStore;
pub use transport::{DeadLetter, InMemoryTransport};

/// Locks a std mutex, recovering the data if a panicking thread poisoned it
/// (every critical section here leaves the data consistent).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
