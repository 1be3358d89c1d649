//! The trip saga: book a flight, a hotel and a car; if no car is available,
//! cancel the hotel and the flight.
//!
//! Shared by two programs that differ only in where sagas and messages live:
//!
//! - `examples/trip-booking`: saga-core's in-memory store, transport and inbox
//!   (`cargo run -p example-trip-booking`);
//! - `examples/trip-booking-postgres-rabbitmq`: `saga-postgres` and
//!   `saga-rabbitmq` (`cargo run -p example-trip-booking-postgres-rabbitmq`).
//!
//! This crate holds what both run: the saga's data and messages, its
//! definition ([`saga`]), the three participants ([`participants`]) and the
//! two bookings ([`book_two_trips`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use saga_core::{
    Command, Engine, Error, Inbox, Participant, RetryPolicy, Saga, SagaStatus, StepError,
};
use serde::{Deserialize, Serialize};

/// The queue replies come back on: the engine consumes it, participants
/// send to it. Named after the app so other apps on the same broker keep
/// their own.
pub const REPLY_QUEUE: &str = "trip_replies";

/// The saga's data: the request and what each booking returned.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trip {
    /// Who travels.
    pub traveller: String,
    /// Where to.
    pub city: String,
    /// The airline's booking reference, once booked.
    pub flight: Option<String>,
    /// The hotel's booking reference, once booked.
    pub hotel: Option<String>,
    /// The car rental's booking reference, once booked.
    pub car: Option<String>,
}

/// What every provider needs to book.
#[derive(Debug, Serialize, Deserialize)]
pub struct Book {
    /// Who travels.
    pub traveller: String,
    /// Where to.
    pub city: String,
}

/// What every provider needs to cancel a booking.
#[derive(Debug, Serialize, Deserialize)]
pub struct CancelBooking {
    /// The booking to cancel; `None` when the booking never answered (the
    /// provider then refuses a late copy of it, see `participants`).
    pub reference: Option<String>,
}

/// Declares one command type per provider operation: its wire name, the
/// provider (endpoint) that handles it, and its reply.
macro_rules! command {
    ($(#[$doc:meta])* $name:ident($body:ty) => $wire:literal at $endpoint:literal, $reply:ty) => {
        $(#[$doc])*
        #[derive(Debug, Serialize, Deserialize)]
        pub struct $name(pub $body);
        impl Command for $name {
            const NAME: &'static str = $wire;
            const ENDPOINT: &'static str = $endpoint;
            type Reply = $reply;
        }
    };
}

command!(
    /// Books a seat; replies with the booking reference.
    BookFlight(Book) => "book_flight" at "airline", String
);
command!(
    /// Cancels a seat (the compensation of `book_flight`).
    CancelFlight(CancelBooking) => "cancel_flight" at "airline", ()
);
command!(
    /// Books a room; replies with the booking reference.
    BookHotel(Book) => "book_hotel" at "hotels", String
);
command!(
    /// Cancels a room (the compensation of `book_hotel`).
    CancelHotel(CancelBooking) => "cancel_hotel" at "hotels", ()
);
command!(
    /// Books a car; replies with the booking reference. The pivot: once the
    /// car is booked the trip is on, so it has no compensation.
    BookCar(Book) => "book_car" at "cars", String
);

fn request(t: &Trip) -> Book {
    Book {
        traveller: t.traveller.clone(),
        city: t.city.clone(),
    }
}

fn cancel(reference: &Option<String>) -> CancelBooking {
    CancelBooking {
        reference: reference.clone(),
    }
}

/// The trip saga's definition.
///
/// # Errors
/// [`Error::InvalidDefinition`] if the definition breaks a rule (it does not).
pub fn saga() -> Result<Saga<Trip>, Error> {
    Saga::<Trip>::builder("trip")
        .step("book_flight", |step| {
            step.invoke(|t: &Trip| BookFlight(request(t)))
                .on_reply(|t, reference| t.flight = Some(reference))
                .compensate(|t: &Trip| CancelFlight(cancel(&t.flight)))
        })
        .step("book_hotel", |step| {
            step.invoke(|t: &Trip| BookHotel(request(t)))
                .on_reply(|t, reference| t.hotel = Some(reference))
                .compensate(|t: &Trip| CancelHotel(cancel(&t.hotel)))
                .retry(
                    RetryPolicy::exponential(Duration::from_millis(50), Duration::from_secs(1))
                        .max_attempts(4),
                )
        })
        .step("book_car", |step| {
            step.invoke(|t: &Trip| BookCar(request(t)))
                .on_reply(|t, reference| t.car = Some(reference))
                .timeout(Duration::from_secs(2))
                .pivot()
        })
        .build()
}

/// The airline, the hotels and the car rental, each deduplicating commands
/// through an inbox from `inbox` (called once per participant).
///
/// # Errors
/// [`Error::InvalidParticipant`] if a participant is malformed (none is).
pub fn participants<I: Inbox>(inbox: impl Fn() -> I) -> Result<[Participant; 3], Error> {
    Ok([airline(inbox())?, hotels(inbox())?, cars(inbox())?])
}

fn airline(inbox: impl Inbox) -> Result<Participant, Error> {
    Participant::builder()
        .inbox(inbox)
        .on(|cmd: BookFlight, _| async move {
            println!(
                "  airline: booked a seat to {} for {}",
                cmd.0.city, cmd.0.traveller
            );
            Ok(format!("FL-{}", cmd.0.city.to_uppercase()))
        })
        .on(|cmd: CancelFlight, _| async move {
            // A cancel may find nothing to undo (the booking never happened):
            // that is a success too. The inbox has already made sure a late
            // `book_flight` for this saga will be refused.
            match cmd.0.reference {
                Some(reference) => println!("  airline: cancelled {reference}"),
                None => println!("  airline: nothing to cancel"),
            }
            Ok(())
        })
        .build()
}

fn hotels(inbox: impl Inbox) -> Result<Participant, Error> {
    // The handlers share a counter: state given once, a clone per call.
    Participant::builder()
        .inbox(inbox)
        .state(Arc::new(AtomicU32::new(0)))
        .on(|cmd: BookHotel, ctx, requests: Arc<AtomicU32>| async move {
            // The hotel system is flaky: every other request fails transiently.
            if requests.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
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
            match cmd.0.reference {
                Some(reference) => println!("  hotels: cancelled {reference}"),
                None => println!("  hotels: nothing to cancel"),
            }
            Ok(())
        })
        .build()
}

fn cars(inbox: impl Inbox) -> Result<Participant, Error> {
    Participant::builder()
        .inbox(inbox)
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

/// Books a trip to Lisbon (completes, after a retried hotel booking) and one
/// to Venice (no cars: the hotel and the flight are cancelled), and prints
/// each saga's outcome and log.
///
/// # Errors
/// When the engine cannot start or follow a saga (the store or the
/// transport fails, or a saga takes longer than 10 s).
pub async fn book_two_trips(engine: &Engine, saga: &Saga<Trip>) -> Result<(), Error> {
    for city in ["Lisbon", "Venice"] {
        println!("Booking a trip to {city}:");
        let trip = Trip {
            traveller: "Ada".into(),
            city: city.into(),
            ..Trip::default()
        };
        let id = engine.start(saga, trip).await?;
        let done = engine.wait_for(saga, id, Duration::from_secs(10)).await?;
        let trip = done.data;
        match done.status {
            SagaStatus::Completed => println!(
                "=> {city}: completed (flight {}, hotel {}, car {})",
                trip.flight.unwrap_or_default(),
                trip.hotel.unwrap_or_default(),
                trip.car.unwrap_or_default()
            ),
            status => println!("=> {city}: {status}: {}", done.error.unwrap_or_default()),
        }
        println!("   log of saga {id}:");
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
    Ok(())
}
