//! # test-kit
//!
//! The harness the checkout's tests and its benchmark share, written once:
//!
//! - [`Rng`]: the one seeded generator (`saga_core::testing`'s) for
//!   everything drawn at random.
//! - [`load`]: the load generator: random carts of the catalogue, sent
//!   through the gateway or straight into the engine by closed-loop clients,
//!   for a time (the benchmark) or for a number of checkouts (the fault suite).
//! - [`invariants`]: the cross-database checks after a run (stock, payments,
//!   reservations, orders).
//! - [`cluster`]: the five services as OS processes of a built
//!   `checkout-app`, with faults (kill -9, connections cut, poison messages).
//! - [`infra`]: fresh PostgreSQL databases and a RabbitMQ vhost for one test.
//! - [`rabbitmq`]: a client of RabbitMQ's management HTTP API.
//! - [`rabbitmq_cluster`]: a three-node RabbitMQ cluster on this machine
//!   (`scripts/rabbitmq-cluster`), with node kills and restarts.
//! - [`procfs`]: processes, their memory and the load average from `/proc`.
//! - [`webdriver`]: headless Chromium through chromedriver (W3C WebDriver),
//!   to look at pages as a person does.
//!
//! Not published. Where a test should fail (a server missing, a query
//! refused), the harness panics with a message that says what to do.

pub mod cluster;
pub mod infra;
pub mod invariants;
pub mod load;
pub mod procfs;
pub mod rabbitmq;
pub mod rabbitmq_cluster;
pub mod webdriver;

#[doc(inline)]
pub use saga_core::testing::Rng;
