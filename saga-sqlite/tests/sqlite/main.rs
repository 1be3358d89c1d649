//! Integration tests of saga-sqlite on real database files (one temporary
//! folder per test, so they run in parallel).

mod conformance;
mod durability;
mod engine;
mod inbox;
