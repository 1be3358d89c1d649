//! # checkout-app
//!
//! The reference e-commerce checkout, re-done in Rust on `saga-core`: an API
//! gateway, an orchestrator and order, inventory and payment services, talking
//! through RabbitMQ (or in-process), each with its own database (PostgreSQL or
//! embedded SQLite).
//!
//! One binary runs any service (`checkout-app order-service`, ...) or all of
//! them (`checkout-app all`, the default). The library is what the binary and
//! the tests share: one module per service, the saga definition, the messages.
//!
//! ```text
//! client -> gateway (validate, Idempotency-Key) -> orchestrator HTTP
//! orchestrator: price from the catalogue -> engine.start -> saga_state + first log -> create_order
//! order / inventory / payment: consume -> idempotent per order (one transaction) -> reply -> ack
//! orchestrator: reply -> transition -> save -> next command ... -> outcome to the client
//! ```

pub mod api_docs;
pub mod breaker;
pub mod cli;
pub mod db;
pub mod error;
mod fault_injection;
pub mod gateway;
pub mod http;
pub mod inventory;
pub mod messages;
pub mod metrics;
pub mod operator;
pub mod orchestrator;
pub mod order;
pub mod payment;
pub mod request;
pub mod runtime;
pub mod saga;
mod service;
pub mod telemetry;
