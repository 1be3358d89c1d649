//! The three-step saga a new user writes: a retried remote check, a
//! compensated reservation, and a local step that can refuse.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p example-first-saga
//! ```
//!
//! [`saga`] (`src/saga.rs`) is the saga itself: its messages, data and
//! definition, in under 60 lines. This file runs it with a warehouse
//! participant on saga-core's in-memory adapters and prints how three orders
//! end: one completes, one is refused by the local approval (its reservation
//! is released), one is refused by the stock check (nothing to undo). The
//! warehouse is too busy for every first stock check, so each check is
//! retried.

/// The saga: its data, messages and definition.
pub mod saga;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
use saga_core::{Engine, Participant, StepError};

use crate::saga::{CheckStock, Order, Release, Reserve, order_saga};

/// The warehouse's books: stock on hand and what each reservation holds.
#[derive(Default)]
struct Warehouse {
    stock: u32,
    held: HashMap<String, u32>,
}

type Shared = Arc<Mutex<Warehouse>>;

fn warehouse(books: Shared) -> Result<Participant, saga_core::Error> {
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .state(books)
        .on(|CheckStock(quantity), ctx, books: Shared| async move {
            if ctx.attempt == 1 {
                println!(
                    "  warehouse: too busy to check (attempt {}), try again",
                    ctx.attempt
                );
                return Err(StepError::retryable("warehouse busy"));
            }
            let stock = lock(&books)?.stock;
            println!("  warehouse: {quantity} wanted, {stock} on hand");
            if quantity > stock {
                return Err(StepError::business(format!("only {stock} in stock")));
            }
            Ok(())
        })
        .on(|Reserve(quantity), ctx, books: Shared| async move {
            let mut books = lock(&books)?;
            if quantity > books.stock {
                return Err(StepError::business("sold out since the check"));
            }
            // The saga's id makes a stable reservation id; the inbox answers
            // a redelivered `Reserve` with the first reply anyway.
            let saga = ctx.saga_id.to_string();
            let reservation = format!("res-{}", &saga[saga.len() - 6..]);
            books.stock -= quantity;
            books.held.insert(reservation.clone(), quantity);
            println!("  warehouse: holding {quantity} as {reservation}");
            Ok(reservation)
        })
        .on(|Release(reservation), _, books: Shared| async move {
            let mut books = lock(&books)?;
            // No reservation (it never answered) is nothing to undo; the
            // inbox has made sure a late `Reserve` of this saga is refused.
            let held = reservation.and_then(|r| books.held.remove(&r).map(|q| (r, q)));
            if let Some((reservation, quantity)) = held {
                books.stock += quantity;
                println!("  warehouse: released {quantity} held as {reservation}");
            }
            Ok(())
        })
        .build()
}

fn lock(books: &Shared) -> Result<std::sync::MutexGuard<'_, Warehouse>, StepError> {
    books
        .lock()
        .map_err(|_| StepError::retryable("warehouse books poisoned"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let saga = order_saga()?;
    let transport = InMemoryTransport::new();
    let engine = Engine::builder(InMemoryStore::new(), transport.clone())
        .register(&saga)
        .build();
    let books = Arc::new(Mutex::new(Warehouse {
        stock: 20,
        ..Warehouse::default()
    }));
    let (running, serving) = (engine.spawn(), warehouse(books.clone())?.spawn(transport));

    for (id, quantity) in [("order-1", 3), ("order-2", 12), ("order-3", 50)] {
        println!("{id}: {quantity} items");
        let order = Order {
            quantity,
            reservation: None,
        };
        let started = engine.start(&saga, order).await?;
        let done = engine
            .wait_for(&saga, started, Duration::from_secs(5))
            .await?;
        let reason = done.error.map(|e| format!(" ({e})")).unwrap_or_default();
        println!("=> {id}: {}{reason}", done.status);
        let stock = books.lock().map_err(|_| "poisoned")?.stock;
        println!(
            "   reservation {:?}, stock now {stock}\n",
            done.data.reservation
        );
    }

    serving.shutdown().await?;
    running.shutdown().await?;
    Ok(())
}
