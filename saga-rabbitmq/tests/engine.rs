//! The full engine over RabbitMQ: `Engine::run` in one task, participants'
//! `Participant::run` in others, `InMemoryStore` as the store.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use saga_core::memory::{InMemoryInbox, InMemoryStore};
use saga_core::{Command, Engine, Participant, Saga, SagaStatus, StepError, Transport};
use serde::{Deserialize, Serialize};
use support::TestVhost;

#[derive(Serialize, Deserialize)]
struct Reserve {
    sku: String,
    quantity: u32,
}
#[derive(Serialize, Deserialize)]
struct Reserved {
    reservation: String,
}
impl Command for Reserve {
    const NAME: &'static str = "reserve";
    const ENDPOINT: &'static str = "inventory";
    type Reply = Reserved;
}

#[derive(Serialize, Deserialize)]
struct Release {
    reservation: String,
}
impl Command for Release {
    const NAME: &'static str = "release";
    const ENDPOINT: &'static str = "inventory";
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct Charge {
    amount: u32,
}
#[derive(Serialize, Deserialize)]
struct Charged {
    payment: String,
}
impl Command for Charge {
    const NAME: &'static str = "charge";
    const ENDPOINT: &'static str = "payment";
    type Reply = Charged;
}

#[derive(Serialize, Deserialize)]
struct Confirm {
    sku: String,
}
impl Command for Confirm {
    const NAME: &'static str = "confirm";
    const ENDPOINT: &'static str = "order";
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct Order {
    sku: String,
    quantity: u32,
    reservation: Option<String>,
    payment: Option<String>,
}

fn order(quantity: u32) -> Order {
    Order {
        sku: "book".to_owned(),
        quantity,
        reservation: None,
        payment: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_a_saga_with_compensation_over_rabbitmq() {
    let vhost = TestVhost::new("engine").await;
    let checkout = Saga::<Order>::builder("checkout")
        .step("reserve", |step| {
            step.invoke(|o: &Order| Reserve {
                sku: o.sku.clone(),
                quantity: o.quantity,
            })
            .on_reply(|o, r| o.reservation = Some(r.reservation))
            .compensate(|o: &Order| Release {
                reservation: o.reservation.clone().unwrap_or_default(),
            })
        })
        .step("charge", |step| {
            step.invoke(|o: &Order| Charge {
                amount: o.quantity * 10,
            })
            .on_reply(|o, r| o.payment = Some(r.payment))
            .pivot()
        })
        .step("confirm", |step| {
            step.invoke(|o: &Order| Confirm { sku: o.sku.clone() })
                .retriable()
        })
        .build()
        .expect("valid saga");

    let config = vhost
        .config()
        .endpoints(["order", "inventory", "payment"])
        .reply_queue("saga_replies");
    let orchestrator_transport = vhost.transport(config.clone()).await;
    let participant_transport: Arc<dyn Transport> = Arc::new(vhost.transport(config).await);

    let engine = Engine::builder(InMemoryStore::new(), orchestrator_transport)
        .register(&checkout)
        .poll_interval(Duration::from_millis(50))
        .build();

    let released = Arc::new(AtomicU32::new(0));
    let confirmed = Arc::new(AtomicU32::new(0));
    let inventory = {
        let released = Arc::clone(&released);
        Participant::builder()
            .inbox(InMemoryInbox::new())
            .on(|cmd: Reserve, ctx| async move {
                Ok(Reserved {
                    reservation: format!("r-{}-{}", cmd.sku, ctx.saga_id),
                })
            })
            .on(move |_cmd: Release, _ctx| {
                let released = Arc::clone(&released);
                async move {
                    released.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .build()
            .expect("valid participant")
    };
    let payment = Participant::builder()
        .inbox(InMemoryInbox::new())
        .on(|cmd: Charge, _ctx| async move {
            if cmd.amount > 100 {
                Err(StepError::business("card limit exceeded"))
            } else {
                Ok(Charged {
                    payment: format!("p-{}", cmd.amount),
                })
            }
        })
        .build()
        .expect("valid participant");
    let orders = {
        let confirmed = Arc::clone(&confirmed);
        Participant::builder()
            .inbox(InMemoryInbox::new())
            .on(move |_cmd: Confirm, _ctx| {
                let confirmed = Arc::clone(&confirmed);
                async move {
                    confirmed.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .build()
            .expect("valid participant")
    };

    let (stop, stopped) = tokio::sync::watch::channel(());
    let shutdown = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let runner = {
        let engine = engine.clone();
        let s = shutdown(stopped.clone());
        tokio::spawn(async move { engine.run(s).await })
    };
    let mut serving = Vec::new();
    for participant in [inventory, payment, orders] {
        let t = Arc::clone(&participant_transport);
        let s = shutdown(stopped.clone());
        serving.push(tokio::spawn(async move { participant.run(t, s).await }));
    }

    let ok = engine.start(&checkout, order(2)).await.expect("start");
    let too_expensive = engine.start(&checkout, order(50)).await.expect("start");
    let finished = engine
        .wait(ok, Duration::from_secs(30))
        .await
        .expect("finishes");
    assert_eq!(finished.status, SagaStatus::Completed, "{finished:?}");
    let compensated = engine
        .wait(too_expensive, Duration::from_secs(30))
        .await
        .expect("finishes");
    assert_eq!(
        compensated.status,
        SagaStatus::Compensated,
        "{compensated:?}"
    );
    assert_eq!(
        released.load(Ordering::SeqCst),
        1,
        "the reservation was released once"
    );
    assert_eq!(
        confirmed.load(Ordering::SeqCst),
        1,
        "only the paid order was confirmed"
    );

    // A batch of sagas in parallel: every one finishes.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            engine
                .start(&checkout, order(if i % 4 == 0 { 20 } else { 1 }))
                .await
                .expect("start"),
        );
    }
    for (i, id) in ids.into_iter().enumerate() {
        let done = engine
            .wait(id, Duration::from_secs(30))
            .await
            .expect("finishes");
        let expected = if i % 4 == 0 {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(done.status, expected, "saga {i}: {done:?}");
    }

    drop(stop);
    runner.await.expect("engine task").expect("engine ran");
    for s in serving {
        s.await.expect("participant task").expect("participant ran");
    }
    drop((engine, participant_transport));
    vhost.delete().await;
}
