//! A trip booking saga on saga-core's in-memory adapters: book a flight, a
//! hotel and a car; if no car is available, cancel the hotel and the flight.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p example-trip-booking
//! ```
//!
//! It prints the saga's Mermaid diagram, then books a trip to Lisbon (it
//! completes after the flaky hotel system's retry) and one to Venice (no
//! cars: the hotel and the flight are cancelled), with each saga's log.
//! Everything runs in this process and is forgotten when it exits.
//! `RUST_LOG=saga_core=debug` shows the engine's spans.
//!
//! The saga and its participants live in `examples/trip` (crate
//! `example-trip`), shared with `examples/trip-booking-postgres-rabbitmq`,
//! which runs the same program on PostgreSQL and RabbitMQ: compare the two
//! `main` functions to see what changes (the store, the transport and the
//! participants' inbox).

use saga_core::Engine;
use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let saga = example_trip::saga()?;

    let store = InMemoryStore::new();
    let transport = InMemoryTransport::new();

    let engine = Engine::builder(store, transport.clone())
        .register(&saga)
        .reply_queue(example_trip::REPLY_QUEUE)
        .build();
    let running = engine.spawn();
    let participants = example_trip::participants(InMemoryInbox::new)?;
    let serving = participants.map(|p| p.spawn(transport.clone()));

    println!("{}", saga.to_mermaid());
    example_trip::book_two_trips(&engine, &saga).await?;

    for participant in serving {
        participant.shutdown().await?;
    }
    running.shutdown().await?;
    Ok(())
}
