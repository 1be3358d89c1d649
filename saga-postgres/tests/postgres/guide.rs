//! The crate documentation's quick start, run against the real server.

use std::time::Duration;

use saga_core::memory::InMemoryTransport;
use saga_core::{Command, Engine, LogEvent, Participant, Saga, SagaStatus};
use saga_postgres::{PgConfig, PgSagaStore, inbox::PgInbox};
use serde::{Deserialize, Serialize};

use crate::common::TestDb;

#[derive(Serialize, Deserialize)]
struct Reserve {
    sku: String,
}
impl Command for Reserve {
    const NAME: &'static str = "reserve";
    const ENDPOINT: &'static str = "inventory";
    type Reply = String;
}
#[derive(Serialize, Deserialize)]
struct Release {
    reservation: Option<String>,
}
impl Command for Release {
    const NAME: &'static str = "release";
    const ENDPOINT: &'static str = "inventory";
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct Order {
    sku: String,
    reservation: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_runs_against_postgres() -> Result<(), Box<dyn std::error::Error>> {
    let test = TestDb::empty().await; // no schema: the example migrates

    // From here on, the crate docs' example.
    let db = PgConfig::new(&test.url).connect().await?;
    saga_postgres::migrate(&db).await?; // idempotent; or run it at deployment

    let checkout = Saga::<Order>::builder("checkout")
        .step("reserve", |step| {
            step.invoke(|o: &Order| Reserve { sku: o.sku.clone() })
                .on_reply(|o, reservation| o.reservation = Some(reservation))
                .compensate(|o: &Order| Release {
                    reservation: o.reservation.clone(),
                })
                .timeout(Duration::from_secs(10))
        })
        .build()?;
    let transport = InMemoryTransport::new(); // saga-rabbitmq in production
    let store = PgSagaStore::new(db.clone()).await?;
    let engine = Engine::builder(store, transport.clone())
        .register(&checkout)
        .build();

    let inventory = Participant::builder()
        .inbox(PgInbox::new(db.clone()))
        .on(|cmd: Reserve, _ctx| async move { Ok(format!("r-{}", cmd.sku)) })
        .on(|_cmd: Release, _ctx| async move { Ok(()) })
        .build()?;
    let (running, serving) = (engine.spawn(), inventory.spawn(transport));

    let id = engine
        .start(
            &checkout,
            Order {
                sku: "book".into(),
                reservation: None,
            },
        )
        .await?;
    assert_eq!(
        engine.wait(id, Duration::from_secs(10)).await?.status,
        SagaStatus::Completed
    );
    let logs = engine.logs(id).await?;
    for entry in &logs {
        println!("{:>3} {:<24} {:?}", entry.seq, entry.event, entry.step);
    }

    serving.shutdown().await?;
    running.shutdown().await?;

    // What the example leaves behind.
    assert_eq!(logs.first().map(|l| l.event), Some(LogEvent::SagaStarted));
    assert_eq!(logs.last().map(|l| l.event), Some(LogEvent::SagaCompleted));
    let done = engine.get(id).await?.ok_or("saga exists")?;
    assert_eq!(done.data["reservation"], "r-book");
    Ok(())
}
