//! The trip booking saga of `examples/trip-booking`, durable: sagas in
//! PostgreSQL (`saga-postgres`), messages through RabbitMQ (`saga-rabbitmq`).
//!
//! Run it with the local servers (`./scripts/services` starts them):
//!
//! ```sh
//! cargo run -p example-trip-booking-postgres-rabbitmq
//! # or elsewhere:
//! cargo run -p example-trip-booking-postgres-rabbitmq -- \
//!     --database-url postgres://user:pass@db:5432/trip_booking \
//!     --rabbitmq-url amqp://user:pass@broker:5672/%2f
//! ```
//!
//! The URLs come from `--database-url` / `--rabbitmq-url`, else from
//! `DATABASE_URL` / `RABBITMQ_URL`, else the defaults below. The program
//! creates the database if it does not exist (saga-postgres migrates its
//! tables but never creates a database), runs the migrations, books the same
//! two trips as the in-memory example, prints what happened, and shuts down.
//! The sagas stay in the database: `psql trip_booking -c 'table saga_state'`.
//! Drop it with `psql -h 127.0.0.1 -U postgres -c 'drop database trip_booking'`.
//!
//! Compared with the in-memory example's `main`, three constructors change:
//! the store and the transport (the orchestrator's), and the participants'
//! inbox, which now survives a restart too.

mod database;

use saga_core::Engine;
use saga_postgres::inbox::PgInbox;
use saga_postgres::{PgConfig, PgSagaStore};
use saga_rabbitmq::{Config, RabbitTransport};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/trip_booking";
const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let database_url = setting("--database-url", "DATABASE_URL", DEFAULT_DATABASE_URL)?;
    let rabbitmq_url = setting("--rabbitmq-url", "RABBITMQ_URL", DEFAULT_RABBITMQ_URL)?;
    database::create_if_missing(&database_url).await?;
    let db = PgConfig::new(&database_url).connect().await?;
    saga_postgres::migrate(&db).await?;
    let saga = example_trip::saga()?;

    let store = PgSagaStore::new(db.clone()).await?;
    let transport = RabbitTransport::connect(Config::new(&rabbitmq_url)).await?;

    let engine = Engine::builder(store, transport.clone())
        .register(&saga)
        .reply_queue(example_trip::REPLY_QUEUE)
        .build();
    let running = engine.spawn();
    let participants = example_trip::participants(|| PgInbox::new(db.clone()))?;
    let serving = participants.map(|p| p.spawn(transport.clone()));

    println!("{}", saga.to_mermaid());
    example_trip::book_two_trips(&engine, &saga).await?;

    for participant in serving {
        participant.shutdown().await?;
    }
    running.shutdown().await?;
    // The engine holds the store (and its LISTEN connection) and the transport.
    drop(engine);
    db.close().await?;
    transport.close().await;
    Ok(())
}

/// The value of command-line option `flag`, else of environment variable
/// `env`, else `default`.
fn setting(flag: &str, env: &str, default: &str) -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == flag {
            return args.next().ok_or_else(|| format!("{flag} needs a value"));
        }
        if let Some(value) = arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            return Ok(value.to_owned());
        }
    }
    Ok(std::env::var(env).unwrap_or_else(|_| default.to_owned()))
}
