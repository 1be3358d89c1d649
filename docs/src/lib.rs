//! The guides of saga-rs, compiled.
//!
//! Every Markdown page in `docs/`, the repository's `README.md` and the
//! library crates' READMEs are included here as the documentation of an item
//! that exists only when doc tests are collected (`cfg(doctest)`), so
//!
//! ```sh
//! cargo test -p saga-guides --doc
//! ```
//!
//! compiles every Rust snippet in them, and runs those that need no server
//! (snippets that need PostgreSQL or RabbitMQ are `no_run`: compiled, not
//! run). `cargo doc` renders none of it; the pages are read on GitHub.
//!
//! `tests/links.rs` checks that every relative link in those pages points to
//! a file (and heading) that exists, and that every page of `docs/` is
//! included below.

/// Includes the Markdown file at `$path` (relative to this file) as the
/// documentation of a doctest-only item named `$name`.
macro_rules! guide {
    ($name:ident, $path:literal) => {
        #[cfg(doctest)]
        #[doc = include_str!($path)]
        pub struct $name;
    };
}

guide!(Readme, "../../README.md");
guide!(SagaCoreReadme, "../../saga-core/README.md");
guide!(SagaPostgresReadme, "../../saga-postgres/README.md");
guide!(SagaRabbitmqReadme, "../../saga-rabbitmq/README.md");
guide!(SagaSqliteReadme, "../../saga-sqlite/README.md");
guide!(Index, "../README.md");
guide!(GettingStarted, "../getting-started.md");
guide!(Concepts, "../concepts.md");
guide!(DefiningSagas, "../defining-sagas.md");
guide!(Participants, "../participants.md");
guide!(Adapters, "../adapters.md");
guide!(Scaling, "../scaling.md");
guide!(Reliability, "../reliability.md");
guide!(Operations, "../operations.md");
guide!(Benchmarks, "../benchmarks.md");
guide!(BenchmarksHistory, "../benchmarks/history.md");
guide!(BenchmarksPostgres, "../benchmarks/postgres.md");
guide!(BenchmarksRabbitmq, "../benchmarks/rabbitmq.md");
