//! A trip booking saga: book a flight, a hotel and a car; if the car is not
//! available, cancel the hotel and the flight.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p example-trip-booking
//! ```
//!
//! Everything runs in one process on saga-core's in-memory store and
//! transport; swap in `saga-postgres` and `saga-rabbitmq` for durability
//! across processes. Set `RUST_LOG=saga_core=debug` to see the engine's spans.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
use saga_core::{Command, Engine, Participant, RetryPolicy, Saga, SagaStatus, StepError};
use serde::{Deserialize, Serialize};

/// The saga's data: the request and what each booking returned.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Trip {
    traveller: String,
    city: String,
    flight: Option<String>,
    hotel: Option<String>,
    car: Option<String>,
}

/// Books something with a provider.
#[derive(Debug, Serialize, Deserialize)]
struct Book {
    traveller: String,
    city: String,
}

/// Cancels a booking.
#[derive(Debug, Serialize, Deserialize)]
struct CancelBooking {
    reference: String,
}

/// Declares one command type per provider operation: the wire name, the
/// provider (endpoint) that handles it, and the reply.
macro_rules! command {
    ($name:ident($body:ty) => $wire:literal at $endpoint:literal, $reply:ty) => {
        #[derive(Debug, Serialize, Deserialize)]
        struct $name($body);
        impl Command for $name {
            const NAME: &'static str = $wire;
            const ENDPOINT: &'static str = $endpoint;
            type Reply = $reply;
        }
    };
}

command!(BookFlight(Book) => "book_flight" at "airline", String);
command!(CancelFlight(CancelBooking) => "cancel_flight" at "airline", ());
command!(BookHotel(Book) => "book_hotel" at "hotels", String);
command!(CancelHotel(CancelBooking) => "cancel_hotel" at "hotels", ());
// The car is the pivot: once it is booked the trip is on, so it needs no
// compensation; a refusal (no cars) cancels the hotel and the flight.
command!(BookCar(Book) => "book_car" at "cars", String);

fn request(t: &Trip) -> Book {
    Book {
        traveller: t.traveller.clone(),
        city: t.city.clone(),
    }
}

fn reference(r: &Option<String>) -> CancelBooking {
    CancelBooking {
        reference: r.clone().unwrap_or_default(),
    }
}

fn trip_saga() -> Result<Saga<Trip>, saga_core::Error> {
    Saga::<Trip>::builder("trip")
        .step("book_flight", |step| {
            step.invoke(|t| BookFlight(request(t)))
                .on_reply(|t, r| t.flight = Some(r))
                .compensate(|t| CancelFlight(reference(&t.flight)))
        })
        .step("book_hotel", |step| {
            step.invoke(|t| BookHotel(request(t)))
                .on_reply(|t, r| t.hotel = Some(r))
                .compensate(|t| CancelHotel(reference(&t.hotel)))
                .retry(
                    RetryPolicy::exponential(Duration::from_millis(50), Duration::from_secs(1))
                        .max_attempts(4),
                )
        })
        .step("book_car", |step| {
            step.invoke(|t| BookCar(request(t)))
                .on_reply(|t, r| t.car = Some(r))
                .timeout(Duration::from_secs(2))
                .pivot()
        })
        .build()
}

fn airline() -> Result<Participant, saga_core::Error> {
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(|cmd: BookFlight, _| async move {
            println!(
                "  airline: booked a seat to {} for {}",
                cmd.0.city, cmd.0.traveller
            );
            Ok(format!("FL-{}", cmd.0.city.to_uppercase()))
        })
        .on(|cmd: CancelFlight, _| async move {
            println!("  airline: cancelled {}", cmd.0.reference);
            Ok(())
        })
        .build()
}

fn hotels() -> Result<Participant, saga_core::Error> {
    // The handlers share a counter: state given once, a clone per call.
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .state(Arc::new(AtomicU32::new(0)))
        .on(|cmd: BookHotel, ctx, attempts: Arc<AtomicU32>| async move {
            // The hotel system is flaky: every other request fails transiently.
            if attempts.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                println!("  hotels: busy (attempt {}), try again", ctx.attempt);
                return Err(StepError::retryable("hotel system busy"));
            }
            println!(
                "  hotels: booked a room in {} (attempt {})",
                cmd.0.city, ctx.attempt
            );
            Ok(format!("HT-{}", cmd.0.city.to_uppercase()))
        })
        .on(|cmd: CancelHotel, _, _| async move {
            println!("  hotels: cancelled {}", cmd.0.reference);
            Ok(())
        })
        .build()
}

fn cars() -> Result<Participant, saga_core::Error> {
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(|cmd: BookCar, _| async move {
            if cmd.0.city == "Venice" {
                println!("  cars: no cars in {}", cmd.0.city);
                return Err(StepError::business(format!(
                    "no cars available in {}",
                    cmd.0.city
                )));
            }
            println!("  cars: booked a car in {}", cmd.0.city);
            Ok(format!("CR-{}", cmd.0.city.to_uppercase()))
        })
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let saga = trip_saga()?;
    let transport = InMemoryTransport::new();
    let engine = Engine::builder(InMemoryStore::new(), transport.clone())
        .register(&saga)
        .poll_interval(Duration::from_millis(20))
        .build();

    let running = engine.spawn();
    let serving = [airline()?, hotels()?, cars()?].map(|p| p.spawn(transport.clone()));

    println!("{}", saga.to_mermaid());
    for city in ["Lisbon", "Venice"] {
        println!("Booking a trip to {city}:");
        let trip = Trip {
            traveller: "Ada".into(),
            city: city.into(),
            ..Trip::default()
        };
        let id = engine.start(&saga, trip).await?;
        let done = engine.wait_for(&saga, id, Duration::from_secs(10)).await?;
        let data = done.data;
        match done.status {
            SagaStatus::Completed => println!(
                "=> {city}: completed (flight {}, hotel {}, car {})",
                data.flight.unwrap_or_default(),
                data.hotel.unwrap_or_default(),
                data.car.unwrap_or_default()
            ),
            status => println!("=> {city}: {status}: {}", done.error.unwrap_or_default()),
        }
        println!("   log:");
        for entry in engine.logs(id).await? {
            println!(
                "   {:>2} {:<24} {:<12} attempt {}",
                entry.seq,
                entry.event,
                entry.step.unwrap_or_default(),
                entry.attempt.map_or("-".to_owned(), |a| a.to_string())
            );
        }
        println!();
    }

    for participant in serving {
        participant.shutdown().await?;
    }
    running.shutdown().await?;
    Ok(())
}
