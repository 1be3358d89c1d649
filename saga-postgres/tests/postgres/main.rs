//! Integration tests against a real PostgreSQL server (see `common`).

mod common;
mod conformance;
mod engine;
mod errors;
mod guide;
mod inbox;
mod simulation;
mod store;
