//! Store benchmark: saga state transitions per second on PostgreSQL.
//!
//! A transition is what the engine writes per event: `PgSagaStore::save` of
//! the new state with its version check plus two log entries, in one
//! transaction. The benchmark runs it at 1, 8 and 32 concurrent sagas (one
//! task per saga, each saving its own saga back to back), and measures a plain
//! single-row `INSERT` commit rate at the same concurrency in the same run:
//! that is the server's commit limit, the ceiling for any durable store.
//!
//! ```text
//! cargo run --release -p saga-postgres --example store_bench -- [seconds per run, default 5]
//! ```
//!
//! `SAGA_BENCH_DATABASE_URL` (else `SAGA_TEST_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`) is an admin URL: the
//! benchmark creates a database `saga_bench_<uuid>` there and drops it at the end.

use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use saga_core::{
    Direction, LogEntry, LogEvent, SagaId, SagaInstance, SagaStatus, SagaStore, StepStatus,
    adapter::Cursor,
};
use saga_postgres::{PgConfig, PgSagaStore};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::json;

const CONCURRENCY: [usize; 3] = [1, 8, 32];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let run_for = Duration::from_secs(seconds);
    let admin_url = std::env::var("SAGA_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("SAGA_TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = PgConfig::new(&admin_url)
        .max_connections(1)
        .connect()
        .await?;
    let name = format!("saga_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let result = run(&admin, &admin_url, &name, run_for).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    result
}

async fn run(
    admin: &DatabaseConnection,
    admin_url: &str,
    name: &str,
    run_for: Duration,
) -> Result<(), BoxError> {
    let url = match admin_url.rsplit_once('/') {
        Some((root, _)) => format!("{root}/{name}"),
        None => return Err("the admin URL has no database name".into()),
    };
    let db = PgConfig::new(&url).max_connections(40).connect().await?;
    saga_postgres::migrate(&db).await?;
    db.execute_unprepared(
        "CREATE TABLE bench_insert (id uuid PRIMARY KEY, payload jsonb NOT NULL)",
    )
    .await?;
    let store = PgSagaStore::new(db.clone()).await?;

    let settings = admin
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT version() AS v, current_setting('synchronous_commit') AS sc, current_setting('fsync') AS f",
        ))
        .await?
        .ok_or("no settings row")?;
    println!("server: {}", settings.try_get::<String>("", "v")?);
    println!(
        "synchronous_commit={} fsync={}; {} s per run; {} CPUs",
        settings.try_get::<String>("", "sc")?,
        settings.try_get::<String>("", "f")?,
        run_for.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!();
    println!(
        "| concurrency | plain INSERT commits/s | transitions/s (save + 2 log rows) | ratio | transition p50 | transition p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for concurrency in CONCURRENCY {
        let inserts = measure(concurrency, run_for, |_| {
            let db = db.clone();
            move || {
                let db = db.clone();
                async move {
                    db.execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "INSERT INTO bench_insert (id, payload) VALUES ($1, $2)",
                        [uuid::Uuid::now_v7().into(), json!({ "n": 1 }).into()],
                    ))
                    .await
                    .map(drop)
                    .map_err(BoxError::from)
                }
            }
        })
        .await?;
        let mut sagas = Vec::new();
        for _ in 0..concurrency {
            let saga = saga();
            store.create(&saga, &[]).await?;
            sagas.push(saga);
        }
        let transitions = measure(concurrency, run_for, |worker| {
            let store = store.clone();
            let current = std::sync::Arc::new(tokio::sync::Mutex::new(sagas[worker].clone()));
            move || {
                let store = store.clone();
                let current = std::sync::Arc::clone(&current);
                async move {
                    let mut current = current.lock().await;
                    let (next, logs) = transition(&current);
                    store.save(&next, current.version, &logs).await?;
                    *current = next;
                    Ok(())
                }
            }
        })
        .await?;
        println!(
            "| {concurrency} | {:.0} | {:.0} | {:.2} | {:.2} ms | {:.2} ms |",
            inserts.rate,
            transitions.rate,
            transitions.rate / inserts.rate,
            transitions.p50.as_secs_f64() * 1e3,
            transitions.p99.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `concurrency` workers, each calling its operation back to back for
/// `run_for` (after a short warm-up), and returns the aggregate rate.
async fn measure<F, Op, Fut>(
    concurrency: usize,
    run_for: Duration,
    make: F,
) -> Result<Measured, BoxError>
where
    F: Fn(usize) -> Op,
    Op: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let warm_up = Duration::from_millis(500);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let op = make(worker);
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            while start.elapsed() < warm_up {
                op().await?;
            }
            let start = Instant::now();
            let mut latencies = Vec::new();
            while start.elapsed() < run_for {
                let t = Instant::now();
                op().await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, BoxError>((latencies, start.elapsed()))
        }));
    }
    let mut all = Vec::new();
    let mut rate = 0.0;
    for task in tasks {
        let (latencies, elapsed) = task.await??;
        rate += latencies.len() as f64 / elapsed.as_secs_f64();
        all.extend(latencies);
    }
    all.sort();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Measured {
        rate,
        p50: at(0.5),
        p99: at(0.99),
    })
}

fn saga() -> SagaInstance {
    let now = Utc::now().trunc_subsecs(6);
    SagaInstance {
        id: SagaId::new(),
        saga_type: "checkout".to_owned(),
        definition_version: 1,
        status: SagaStatus::Running,
        steps: vec![
            StepStatus::Running,
            StepStatus::Pending,
            StepStatus::Pending,
            StepStatus::Pending,
        ],
        cursor: Some(Cursor::first(0, Direction::Invoke)),
        data: json!({
            "order_id": uuid::Uuid::new_v4(),
            "customer_id": "c-1042",
            "items": [{ "product_id": "p-7", "quantity": 2, "price": "19.99" }, { "product_id": "p-9", "quantity": 1, "price": "5.00" }],
            "total": "44.98",
            "reservation_id": null,
            "payment_id": null
        }),
        error: None,
        idempotency_key: Some(format!("bench-{}", uuid::Uuid::new_v4())),
        version: 1,
        next_wake_at: Some(now + chrono::Duration::seconds(30)),
        deadline_at: None,
        log_seq: 0,
        created_at: now,
        updated_at: now,
    }
}

/// One engine-like transition: a step succeeded, the next one is dispatched.
fn transition(current: &SagaInstance) -> (SagaInstance, Vec<LogEntry>) {
    let now = Utc::now().trunc_subsecs(6);
    let mut next = current.clone();
    next.version += 1;
    next.log_seq += 2;
    next.updated_at = now;
    next.next_wake_at = Some(now + chrono::Duration::seconds(30));
    let step = current.cursor.map_or(0, |c| c.step);
    next.cursor = Some(Cursor::first((step + 1) % 4, Direction::Invoke));
    let entry = |seq, event| LogEntry {
        saga_id: current.id,
        seq,
        event,
        step: Some(format!("step-{step}")),
        attempt: Some(1),
        payload: json!({ "reply": { "ok": true }, "step": step }),
        at: now,
    };
    let logs = vec![
        entry(current.log_seq, LogEvent::StepSucceeded),
        entry(current.log_seq + 1, LogEvent::StepDispatched),
    ];
    (next, logs)
}
