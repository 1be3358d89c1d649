//! A ticket sale: hold seats, redeem a voucher (a local step), charge the
//! card (the pivot), then issue the tickets and send a receipt (retriable
//! steps, remote and local).
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p example-ticket-sale
//! ```
//!
//! It sells three times on saga-core's in-memory adapters and prints what
//! each participant did and how each sale ended:
//!
//! - `sale-1` completes with voucher `WELCOME10`. Issuing the tickets fails
//!   transiently once and is retried: after the pivot the saga only goes
//!   forward.
//! - `sale-2`: the card is declined at the pivot, so the steps before it are
//!   compensated: voucher `SPRING10` is given back (a local compensation) and
//!   the seats released.
//! - `sale-3` tries `WELCOME10` again: the local step refuses, and the seats
//!   are released. Its compensation finds no redemption to undo.
//!
//! The local steps make their effects idempotent on their
//! [`LocalContext::idempotency_key`], which every attempt of a step shares:
//! an attempt that runs again (after a timeout or a crash) redeems nothing twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::memory::{InMemoryInbox, InMemoryStore, InMemoryTransport};
use saga_core::{
    Command, Direction, Engine, IdempotencyKey, LocalContext, Participant, Saga, StepError,
};
use serde::{Deserialize, Serialize};

/// The saga's data.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Sale {
    id: String,
    seats: u32,
    card: String,
    voucher: Option<String>,
    price: u32,
    hold: Option<String>,
    tickets: Vec<String>,
}

macro_rules! command {
    ($name:ident { $($field:ident: $ty:ty),* } => $wire:literal at $endpoint:literal, $reply:ty) => {
        #[derive(Debug, Serialize, Deserialize)]
        struct $name { $($field: $ty),* }
        impl Command for $name {
            const NAME: &'static str = $wire;
            const ENDPOINT: &'static str = $endpoint;
            type Reply = $reply;
        }
    };
}

command!(HoldSeats { sale: String, seats: u32 } => "hold_seats" at "venue", String);
command!(ReleaseSeats { sale: String } => "release_seats" at "venue", ());
command!(IssueTickets { sale: String, seats: u32 } => "issue_tickets" at "venue", Vec<String>);
command!(ChargeCard { sale: String, card: String, amount: u32 } => "charge_card" at "payments", String);

/// Vouchers and who redeemed them (the idempotency key of the redeeming
/// step), and receipts sent: the orchestrator's own state, which its local
/// steps change.
#[derive(Default)]
struct Office {
    vouchers: HashMap<String, Option<IdempotencyKey>>,
    receipts: HashSet<IdempotencyKey>,
}

type Shared = Arc<Mutex<Office>>;

fn office(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Office>, StepError> {
    shared
        .lock()
        .map_err(|_| StepError::retryable("office books poisoned"))
}

/// Redeems the sale's voucher (if any); returns the discount in percent.
async fn redeem(shared: Shared, sale: Sale, ctx: LocalContext) -> Result<u32, StepError> {
    let Some(code) = sale.voucher else {
        return Ok(0);
    };
    let mut office = office(&shared)?;
    match office.vouchers.get_mut(&code) {
        None => Err(StepError::business(format!("no voucher {code}"))),
        // Redeemed by an earlier attempt of this very step: the same answer.
        Some(Some(by)) if *by == ctx.idempotency_key => Ok(10),
        Some(Some(_)) => Err(StepError::business(format!("voucher {code} already used"))),
        Some(slot) => {
            *slot = Some(ctx.idempotency_key);
            println!("  office: voucher {code} redeemed by {}", sale.id);
            Ok(10)
        }
    }
}

/// Gives the voucher back if this saga's redemption took it.
async fn give_back(shared: Shared, sale: Sale, ctx: LocalContext) -> Result<(), StepError> {
    let redeemed_by = IdempotencyKey::new(ctx.saga_id, &ctx.step, Direction::Invoke);
    let mut office = office(&shared)?;
    for (code, slot) in &mut office.vouchers {
        if slot.as_ref() == Some(&redeemed_by) {
            *slot = None;
            println!("  office: voucher {code} given back by {}", sale.id);
        }
    }
    Ok(())
}

/// Sends the receipt once per saga, however often the step runs.
async fn receipt(shared: Shared, sale: Sale, ctx: LocalContext) -> Result<(), StepError> {
    if office(&shared)?.receipts.insert(ctx.idempotency_key) {
        println!(
            "  office: receipt for {} ({} cents): {:?}",
            sale.id, sale.price, sale.tickets
        );
    }
    Ok(())
}

fn sale_saga(shared: &Shared) -> Result<Saga<Sale>, saga_core::Error> {
    let (redeeming, giving_back, sending) = (shared.clone(), shared.clone(), shared.clone());
    Saga::<Sale>::builder("ticket_sale")
        .step("hold_seats", |step| {
            step.invoke(|s: &Sale| HoldSeats {
                sale: s.id.clone(),
                seats: s.seats,
            })
            .on_reply(|s, hold| s.hold = Some(hold))
            .compensate(|s: &Sale| ReleaseSeats { sale: s.id.clone() })
        })
        .step("redeem_voucher", |step| {
            step.local(move |s, ctx| redeem(redeeming.clone(), s, ctx))
                .on_reply(|s, percent| s.price -= s.price * percent / 100)
                .compensate_local(move |s, ctx| give_back(giving_back.clone(), s, ctx))
        })
        .step("charge_card", |step| {
            step.invoke(|s: &Sale| ChargeCard {
                sale: s.id.clone(),
                card: s.card.clone(),
                amount: s.price,
            })
            .pivot()
        })
        .step("issue_tickets", |step| {
            step.invoke(|s: &Sale| IssueTickets {
                sale: s.id.clone(),
                seats: s.seats,
            })
            .on_reply(|s, tickets| s.tickets = tickets)
            .retriable()
        })
        .step("send_receipt", |step| {
            step.local(move |s, ctx| receipt(sending.clone(), s, ctx))
                .retriable()
        })
        .default_timeout(Duration::from_secs(2))
        .build()
}

fn venue() -> Result<Participant, saga_core::Error> {
    let printer_jammed = Arc::new(AtomicBool::new(true));
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .state(printer_jammed)
        .on(|cmd: HoldSeats, _, _| async move {
            println!("  venue: holding {} seats for {}", cmd.seats, cmd.sale);
            Ok(format!("hold-{}", cmd.sale))
        })
        .on(|cmd: ReleaseSeats, _, _| async move {
            println!("  venue: released the seats of {}", cmd.sale);
            Ok(())
        })
        .on(
            |cmd: IssueTickets, ctx, jammed: Arc<AtomicBool>| async move {
                if jammed.swap(false, Ordering::SeqCst) {
                    println!("  venue: ticket printer jammed (attempt {})", ctx.attempt);
                    return Err(StepError::retryable("ticket printer jammed"));
                }
                println!(
                    "  venue: issued {} tickets for {} (attempt {})",
                    cmd.seats, cmd.sale, ctx.attempt
                );
                Ok((1..=cmd.seats)
                    .map(|n| format!("{}-T{n}", cmd.sale))
                    .collect())
            },
        )
        .build()
}

fn payments() -> Result<Participant, saga_core::Error> {
    Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(|cmd: ChargeCard, _| async move {
            if cmd.card.ends_with("0000") {
                println!("  payments: card declined for {}", cmd.sale);
                return Err(StepError::business("card declined"));
            }
            println!("  payments: charged {} cents for {}", cmd.amount, cmd.sale);
            Ok(format!("charge-{}", cmd.sale))
        })
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = Shared::default();
    for code in ["WELCOME10", "SPRING10"] {
        office(&shared)?.vouchers.insert(code.into(), None);
    }
    let saga = sale_saga(&shared)?;
    let transport = InMemoryTransport::new();
    let engine = Engine::builder(InMemoryStore::new(), transport.clone())
        .register(&saga)
        .build();
    let running = engine.spawn();
    let serving = [venue()?, payments()?].map(|p| p.spawn(transport.clone()));

    println!("{}", saga.to_mermaid());
    let sales = [
        ("sale-1", "4242", "WELCOME10"),
        ("sale-2", "0000", "SPRING10"),
        ("sale-3", "4242", "WELCOME10"),
    ];
    for (id, card, voucher) in sales {
        println!("{id}:");
        let sale = Sale {
            id: id.into(),
            seats: 2,
            card: card.into(),
            voucher: Some(voucher.into()),
            price: 9000,
            hold: None,
            tickets: Vec::new(),
        };
        let started = engine.start(&saga, sale).await?;
        let done = engine
            .wait_for(&saga, started, Duration::from_secs(10))
            .await?;
        let reason = done.error.map(|e| format!(" ({e})")).unwrap_or_default();
        println!("=> {id}: {}{reason}", done.status);
        let events: Vec<String> = engine
            .logs(started)
            .await?
            .into_iter()
            .map(|e| {
                format!(
                    "{}{}",
                    e.event,
                    e.step.map(|s| format!("({s})")).unwrap_or_default()
                )
            })
            .collect();
        println!("   {}\n", events.join(", "));
    }

    let mut free: Vec<String> = office(&shared)?
        .vouchers
        .iter()
        .filter(|(_, by)| by.is_none())
        .map(|(code, _)| code.clone())
        .collect();
    free.sort();
    println!("vouchers still free: {free:?}");

    for participant in serving {
        participant.shutdown().await?;
    }
    running.shutdown().await?;
    Ok(())
}
