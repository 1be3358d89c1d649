//! The full engine on SQLite: InMemoryTransport + SqliteSagaStore, the
//! participants deduplicating through a SqliteInbox in their own file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_core::memory::InMemoryTransport;
use saga_core::{
    Command, Engine, EngineConfig, LogEvent, Participant, Saga, SagaId, SagaStatus, StepError,
};
use saga_sqlite::inbox::SqliteInbox;
use saga_sqlite::sea_orm::{ConnectionTrait, DatabaseConnection};
use saga_sqlite::{SqliteConfig, SqliteSagaStore};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A test's files: the orchestrator's saga store and the participants' inbox.
struct TestFiles {
    folder: tempfile::TempDir,
    inbox: DatabaseConnection,
}

impl TestFiles {
    async fn new() -> Self {
        let folder = tempfile::tempdir().expect("temporary folder");
        // One connection: claims serialize on it instead of on the file's lock.
        let inbox = SqliteConfig::file(folder.path().join("participants.db"))
            .max_connections(1)
            .connect()
            .await
            .expect("inbox database");
        saga_sqlite::migrate(&inbox).await.expect("migrate");
        Self { folder, inbox }
    }

    /// A store on the orchestrator's file, as a (re)started process opens it.
    async fn store(&self) -> SqliteSagaStore {
        SqliteSagaStore::open(&SqliteConfig::file(
            self.folder.path().join("orchestrator.db"),
        ))
        .await
        .expect("store")
    }
}

#[derive(Serialize, Deserialize)]
struct Reserve {
    sku: String,
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
struct Ship {
    order: u32,
}
impl Command for Ship {
    const NAME: &'static str = "ship";
    const ENDPOINT: &'static str = "shipping";
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct Order {
    number: u32,
    reservation: Option<String>,
    charged: bool,
}

fn checkout() -> Saga<Order> {
    Saga::<Order>::builder("checkout")
        .step("reserve", |step| {
            step.invoke(|o: &Order| Reserve {
                sku: format!("sku-{}", o.number),
            })
            .on_reply(|o, r| o.reservation = Some(r.reservation))
            .compensate(|o: &Order| Release {
                reservation: o.reservation.clone().unwrap_or_default(),
            })
            .timeout(Duration::from_secs(1))
        })
        .step("charge", |step| {
            step.local(|o: Order, _| async move {
                if o.number % 7 == 3 {
                    Err(StepError::business("card declined"))
                } else {
                    Ok(true)
                }
            })
            .on_reply(|o, charged| o.charged = charged)
            // A crash between saving "charge dispatched" and running it leaves
            // the step to its timeout (30 s by default, as long as the tests wait).
            .timeout(Duration::from_secs(1))
        })
        .step("ship", |step| {
            step.invoke(|o: &Order| Ship { order: o.number })
                .pivot()
                .timeout(Duration::from_secs(1))
        })
        .build()
        .expect("valid saga")
}

/// Counts how often each participant handler ran, per saga and command.
type Effects = Arc<Mutex<HashMap<(SagaId, &'static str), u32>>>;

fn count(effects: &Effects, saga: SagaId, command: &'static str) {
    *effects
        .lock()
        .expect("lock")
        .entry((saga, command))
        .or_default() += 1;
}

/// Runs the two participants (slow, deduplicating through `saga_inbox`) until `stop` changes.
fn participants(
    test: &TestFiles,
    transport: &InMemoryTransport,
    effects: &Effects,
    stop: &watch::Receiver<()>,
) -> Vec<JoinHandle<()>> {
    // Short: a claim holds the participants' file while its handler runs.
    let delay = Duration::from_millis(20);
    let inventory = Participant::builder()
        .inbox(SqliteInbox::new(test.inbox.clone()))
        .on({
            let effects = Arc::clone(effects);
            move |cmd: Reserve, ctx| {
                let effects = Arc::clone(&effects);
                async move {
                    tokio::time::sleep(delay).await;
                    count(&effects, ctx.saga_id, "reserve");
                    Ok(Reserved {
                        reservation: format!("r-{}", cmd.sku),
                    })
                }
            }
        })
        .on({
            let effects = Arc::clone(effects);
            move |_: Release, ctx| {
                let effects = Arc::clone(&effects);
                async move {
                    count(&effects, ctx.saga_id, "release");
                    Ok(())
                }
            }
        })
        .build()
        .expect("valid participant");
    let shipping = Participant::builder()
        .inbox(SqliteInbox::new(test.inbox.clone()))
        .on({
            let effects = Arc::clone(effects);
            move |_: Ship, ctx| {
                let effects = Arc::clone(&effects);
                async move {
                    tokio::time::sleep(delay).await;
                    count(&effects, ctx.saga_id, "ship");
                    Ok(())
                }
            }
        })
        .build()
        .expect("valid participant");
    [inventory, shipping]
        .into_iter()
        .map(|participant| {
            let transport = Arc::new(transport.clone());
            let mut stop = stop.clone();
            tokio::spawn(async move {
                participant
                    .run(transport, async move { drop(stop.changed().await) })
                    .await
                    .expect("participant runs");
            })
        })
        .collect()
}

fn engine(store: SqliteSagaStore, transport: &InMemoryTransport, saga: &Saga<Order>) -> Engine {
    // A short lease: when a loaded machine makes sagas due before the first
    // engine "crashes", the sagas it had claimed come free again in seconds,
    // well inside the tests' waits (the default lease is 30 s).
    let mut config = EngineConfig::default();
    config.poll_interval = Duration::from_millis(50);
    config.lease = Duration::from_secs(2);
    Engine::builder(store, transport.clone())
        .register(saga)
        .config(config)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_survives_being_dropped_and_rebuilt_mid_saga() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let effects = Effects::default();
    let (stop, stopped) = watch::channel(());
    let serving = participants(&test, &transport, &effects, &stopped);

    // First orchestrator process: starts the sagas, then dies mid-way.
    let first = engine(test.store().await, &transport, &saga);
    let runner = tokio::spawn({
        let first = first.clone();
        async move { first.run(std::future::pending()).await }
    });
    let mut ids = Vec::new();
    for number in 0..30 {
        ids.push(
            first
                .start(
                    &saga,
                    Order {
                        number,
                        reservation: None,
                        charged: false,
                    },
                )
                .await
                .expect("start"),
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    runner.abort(); // a crash: replies in hand are not acknowledged
    drop(runner.await);
    drop(first);
    let store = test.store().await;
    let mut unfinished = 0;
    for id in &ids {
        let saga = saga_core::SagaStore::load(&store, *id)
            .await
            .expect("load")
            .expect("exists");
        unfinished += usize::from(!saga.is_terminal());
    }
    assert!(
        unfinished > 0,
        "the first engine must stop mid-saga for this test to mean anything"
    );

    // Second process: a new engine on the reopened file finishes every saga.
    let second = engine(test.store().await, &transport, &saga);
    let runner = tokio::spawn({
        let second = second.clone();
        let mut stopped = stopped.clone();
        async move {
            second
                .run(async move { drop(stopped.changed().await) })
                .await
        }
    });
    for (number, id) in ids.iter().enumerate() {
        let done = second
            .wait(*id, Duration::from_secs(30))
            .await
            .expect("finishes");
        let declined = number % 7 == 3;
        let expected = if declined {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(done.status, expected, "saga {number}");
        let logs = second.logs(*id).await.expect("logs");
        assert_eq!(
            logs.iter().map(|l| l.seq).collect::<Vec<_>>(),
            (0..done.log_seq).collect::<Vec<_>>()
        );
        // Late duplicates of replies are logged as ignored after the end; skip them.
        let last = logs
            .iter()
            .rev()
            .map(|l| l.event)
            .find(|e| *e != LogEvent::ReplyIgnored)
            .expect("log");
        assert_eq!(
            last,
            if declined {
                LogEvent::SagaCompensated
            } else {
                LogEvent::SagaCompleted
            }
        );
        let effects = effects.lock().expect("lock");
        let ran = |command| effects.get(&(*id, command)).copied().unwrap_or(0);
        assert_eq!(ran("reserve"), 1, "saga {number}: reserved exactly once");
        if declined {
            assert_eq!(
                (ran("release"), ran("ship")),
                (1, 0),
                "saga {number}: released once, never shipped"
            );
        } else {
            assert_eq!(
                (ran("release"), ran("ship")),
                (0, 1),
                "saga {number}: shipped exactly once"
            );
        }
    }
    drop(stop);
    runner
        .await
        .expect("engine task")
        .expect("engine stops cleanly");
    for task in serving {
        task.await.expect("participant stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_learns_of_a_saga_finished_by_another_engine_on_the_store() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let effects = Effects::default();
    let (stop, stopped) = watch::channel(());
    let serving = participants(&test, &transport, &effects, &stopped);

    // Engine A only starts and waits; it never consumes replies, and it
    // re-reads the store only every minute: only a notification can wake it.
    let mut slow_poll = EngineConfig::default();
    slow_poll.wait_poll = Duration::from_secs(60);
    let store = test.store().await;
    let waiter = Engine::builder(store.clone(), transport.clone())
        .register(&saga)
        .config(slow_poll)
        .build();
    // Engine B, sharing the store, does the work.
    let worker = engine(store.clone(), &transport, &saga);
    let runner = tokio::spawn({
        let worker = worker.clone();
        let mut stopped = stopped.clone();
        async move {
            worker
                .run(async move { drop(stopped.changed().await) })
                .await
        }
    });

    let id = waiter
        .start(
            &saga,
            Order {
                number: 1,
                reservation: None,
                charged: false,
            },
        )
        .await
        .expect("start");
    let started = Instant::now();
    let done = waiter
        .wait(id, Duration::from_secs(20))
        .await
        .expect("finished elsewhere");
    assert_eq!(done.status, SagaStatus::Completed);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the store's notification, not by polling ({:?})",
        started.elapsed()
    );

    drop(stop);
    runner.await.expect("engine task").expect("engine stops");
    for task in serving {
        task.await.expect("participant stops");
    }
}

/// The seed guide's debugging query lists a saga's log in its real order:
/// entries written in one transaction get times of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_guides_query_lists_a_log_in_order() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let effects = Effects::default();
    let (stop, stopped) = watch::channel(());
    let serving = participants(&test, &transport, &effects, &stopped);
    let store = test.store().await;
    let engine = engine(store.clone(), &transport, &saga);
    let running = engine.spawn();
    // Order 3 is declined at `charge` (3 % 7 == 3): a compensated saga, whose
    // transitions write several entries at once.
    let mut ids = Vec::new();
    for number in [1, 3] {
        let order = Order {
            number,
            reservation: None,
            charged: false,
        };
        ids.push(engine.start(&saga, order).await.expect("start"));
    }
    for id in &ids {
        engine
            .wait(*id, Duration::from_secs(20))
            .await
            .expect("ends");
    }
    for id in ids {
        let sql = format!("SELECT * FROM saga_logs WHERE saga_id = '{id}' ORDER BY created_at;");
        let rows = store
            .connection()
            .query_all_raw(saga_sqlite::sea_orm::Statement::from_string(
                saga_sqlite::sea_orm::DbBackend::Sqlite,
                sql,
            ))
            .await
            .expect("the guide's query");
        let seqs: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get::<i64>("", "seq").expect("seq"))
            .collect();
        let times: Vec<String> = rows
            .iter()
            .map(|row| row.try_get("", "created_at").expect("created_at"))
            .collect();
        assert!(seqs.len() > 4, "{seqs:?}");
        assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
        // Not by luck: no two entries share a time.
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }
    running.shutdown().await.expect("engine stops");
    drop(stop);
    for task in serving {
        task.await.expect("participant");
    }
}

/// Several engines in one process, each on its own store opened on the same
/// file: the write lock makes their claims disjoint, so no step is
/// dispatched twice while its lease holds, and every saga ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_on_stores_of_one_file_share_the_work() {
    let test = TestFiles::new().await;
    let saga = checkout();
    let transport = InMemoryTransport::new();
    let effects = Effects::default();
    let (stop, stopped) = watch::channel(());
    let serving = participants(&test, &transport, &effects, &stopped);
    let engines = [
        engine(test.store().await, &transport, &saga),
        engine(test.store().await, &transport, &saga),
    ];
    let running: Vec<_> = engines.iter().map(|e| e.clone().spawn()).collect();
    let mut ids = Vec::new();
    for number in 0..40 {
        let order = Order {
            number,
            reservation: None,
            charged: false,
        };
        let starter = &engines[number as usize % 2];
        ids.push(starter.start(&saga, order).await.expect("start"));
    }
    for id in &ids {
        let done = engines[0]
            .wait(*id, Duration::from_secs(30))
            .await
            .expect("finishes");
        assert!(done.is_terminal());
        let logs = engines[1].logs(*id).await.expect("logs");
        assert_eq!(
            saga_core::testing::dispatched_twice(&logs),
            Vec::<String>::new(),
            "saga {id}"
        );
        let effects = effects.lock().expect("lock");
        assert_eq!(
            effects.get(&(*id, "reserve")).copied(),
            Some(1),
            "saga {id}"
        );
    }
    for engine in running {
        engine.shutdown().await.expect("engine stops");
    }
    drop(stop);
    for task in serving {
        task.await.expect("participant");
    }
}
