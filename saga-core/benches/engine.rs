//! Engine benchmark on the in-memory adapters: what the engine itself costs.
//!
//! ```sh
//! cargo bench -p saga-core --bench engine
//! ```
//!
//! Prints (1) the cost of one pure state-machine transition, single thread,
//! and (2) whole 4-step sagas per second through `Engine` + `Participant` on
//! the in-memory store and transport, on a tokio runtime with one and with two
//! worker threads. Every message is JSON-encoded and decoded as on a broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the checkout app ships with (a saga transition allocates
/// many small JSON values; glibc's malloc took about a third of this
/// benchmark's time in a profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use saga_core::machine::{Effect, Event, start, transition};
use saga_core::memory::{InMemoryStore, InMemoryTransport};
use saga_core::{Command, Direction, Engine, Participant, Saga, SagaId, SagaStore, Transport};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Checkout {
    user: String,
    order_id: Option<String>,
    reservation: Option<String>,
    payment: Option<String>,
    confirmed: bool,
}

/// The three participants of the benchmark.
const ENDPOINTS: [&str; 3] = ["order", "inventory", "payment"];

/// The work of a step, at participant `E` of [`ENDPOINTS`].
#[derive(Serialize, Deserialize)]
struct Do<const E: usize> {
    user: String,
}
impl<const E: usize> Command for Do<E> {
    const NAME: &'static str = "do";
    const ENDPOINT: &'static str = ENDPOINTS[E];
    type Reply = String;
}
/// Its compensation.
#[derive(Serialize, Deserialize)]
struct Undo<const E: usize>;
impl<const E: usize> Command for Undo<E> {
    const NAME: &'static str = "undo";
    const ENDPOINT: &'static str = ENDPOINTS[E];
    type Reply = ();
}

fn cmd<const E: usize>(c: &Checkout) -> Do<E> {
    Do {
        user: c.user.clone(),
    }
}

fn saga() -> Saga<Checkout> {
    Saga::<Checkout>::builder("bench")
        .step("create_order", |step| {
            step.invoke(cmd::<0>)
                .on_reply(|c, r| c.order_id = Some(r))
                .compensate(|_| Undo::<0>)
        })
        .step("reserve_inventory", |step| {
            step.invoke(cmd::<1>)
                .on_reply(|c, r| c.reservation = Some(r))
                .compensate(|_| Undo::<1>)
        })
        .step("process_payment", |step| {
            step.invoke(cmd::<2>)
                .on_reply(|c, r| c.payment = Some(r))
                .compensate(|_| Undo::<2>)
        })
        .step("confirm_order", |step| {
            step.invoke(cmd::<0>)
                .on_reply(|c, _| c.confirmed = true)
                .pivot()
        })
        .build()
        .expect("valid")
}

fn pure_transitions() {
    let saga = saga();
    let def = saga.definition();
    let now = chrono::Utc::now();
    let sagas = 50_000;
    let started = Instant::now();
    let mut transitions = 0u64;
    for _ in 0..sagas {
        let mut t = start(
            def,
            SagaId::new(),
            json!(Checkout {
                user: "u-1".into(),
                ..Default::default()
            }),
            None,
            now,
        );
        transitions += 1;
        while let Some(Effect::SendCommand(c)) = t.effects.first() {
            let event = Event::Reply {
                step: c.step as usize,
                direction: Direction::Invoke,
                attempt: c.attempt,
                outcome: Ok(json!(format!("ref-{}", c.step))),
            };
            t = transition(def, &t.instance, event, now);
            transitions += 1;
        }
    }
    let elapsed = started.elapsed();
    println!("pure state machine (1 thread)");
    println!(
        "  {transitions} transitions in {:.2?}: {:.0} transitions/s, {:.2} µs per transition, {:.0} sagas/s",
        elapsed,
        transitions as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / transitions as f64,
        sagas as f64 / elapsed.as_secs_f64()
    );
}

fn participant<const E: usize>() -> Participant {
    Participant::builder()
        .concurrency(256)
        .on(|c: Do<E>, ctx| async move { Ok(format!("{}-{}", c.user, ctx.step)) })
        .on(|_: Undo<E>, _| async { Ok(()) })
        .build()
        .expect("valid participant")
}

fn engine_run(workers: usize, sagas: usize, in_flight: usize) {
    engine_run_quietly(workers, sagas, in_flight, true);
}

/// One run; `report: false` is the warm-up (the allocator's pages faulted in,
/// caches warm) whose figures are not printed.
fn engine_run_quietly(workers: usize, sagas: usize, in_flight: usize, report: bool) {
    // One worker: a current-thread runtime, so everything runs on one core.
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .expect("runtime");
    runtime.block_on(async move {
        let saga = saga();
        let store = InMemoryStore::new();
        let transport = InMemoryTransport::with_limits(512, 5);
        let mut config = saga_core::EngineConfig::default();
        config.max_in_flight = 512;
        let engine = Engine::builder(store.clone(), transport.clone())
            .register(&saga)
            .config(config)
            .build();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        {
            let engine = engine.clone();
            let w = wait(rx.clone());
            tasks.push(tokio::spawn(async move { engine.run(w).await.expect("engine") }));
        }
        let shared: Arc<dyn Transport> = Arc::new(transport);
        for p in [participant::<0>(), participant::<1>(), participant::<2>()] {
            let t = Arc::clone(&shared);
            let w = wait(rx.clone());
            tasks.push(tokio::spawn(async move { p.run(t, w).await.expect("participant") }));
        }
        let mut finished = store.finished_events().expect("in-memory store notifies");
        let started = Instant::now();
        let limiter = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = {
            let limiter = Arc::clone(&limiter);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut count = 0;
                while count < sagas {
                    match finished.recv().await {
                        Ok(_) => {
                            count += 1;
                            limiter.add_permits(1);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            count += n as usize;
                            limiter.add_permits(n as usize);
                        }
                        Err(_) => break,
                    }
                    done.store(count, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        for i in 0..sagas {
            let permit = limiter.acquire().await.expect("open");
            permit.forget();
            let data = Checkout {
                user: format!("u-{i}"),
                ..Default::default()
            };
            engine.start(&saga, data).await.expect("start");
        }
        let _ = tokio::time::timeout(Duration::from_secs(120), counter).await;
        let elapsed = started.elapsed();
        let completed = done.load(std::sync::atomic::Ordering::Relaxed);
        let transitions = completed * 5;
        if report {
            println!(
            "  {workers} worker thread(s), {in_flight} in flight: {completed} sagas in {:.2?}: {:.0} sagas/s, {:.0} transitions/s",
            elapsed,
            completed as f64 / elapsed.as_secs_f64(),
            transitions as f64 / elapsed.as_secs_f64()
            );
        }
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
    });
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    pure_transitions();
    println!("engine + participants on the in-memory adapters (4-step sagas, 5 transitions each)");
    let sagas = if quick { 2_000 } else { 20_000 };
    engine_run_quietly(1, sagas, 256, false);
    for workers in [1, 2] {
        engine_run(workers, sagas, 256);
    }
}
