//! sea-orm entities for the tables this crate owns.
//!
//! They are the read model of the store: [`PgSagaStore`](crate::PgSagaStore)
//! loads and lists through them, and an application may query them directly
//! (for a dashboard or an operator report). Write through the store or the
//! [`inbox`](crate::inbox) functions, which keep the invariants (version
//! checks, gap-free log sequences, leases).
//!
//! The derive macros generate the usual sea-orm items (`Entity`, `Column`,
//! `ActiveModel`, `PrimaryKey`...) in each module.

pub mod saga_inbox;
pub mod saga_logs;
pub mod saga_state;
