//! The checkout's integration tests, in one test binary (one link instead of
//! five): end to end on the embedded stack and on PostgreSQL and RabbitMQ,
//! the inventory participant on PostgreSQL, hostile input, the fault suite
//! on five `checkout-app` processes, the embedded binary killed and
//! restarted on its SQLite files, the edge under failure and overload
//! (gateway failover, rate limit, circuit breakers, load shedding), a
//! RabbitMQ node lost under two replicas of every service (a three-node
//! cluster), and the orchestrator's web pages in headless Chromium.
//!
//! `broker_stopped_and_started_mid_load_loses_nothing` restarts the broker:
//! it runs alone (`scripts/test`, `.config/nextest.toml`).

mod docs;
mod durable;
mod edge;
mod embedded;
mod faults;
mod fuzz;
mod inventory_postgres;
mod observability;
mod order_postgres;
mod postgres_rabbitmq;
mod scale;
mod support;
mod traces;
mod ui;
