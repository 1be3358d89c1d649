//! The embedded default keeps its data: `checkout-app` as an OS process on
//! SQLite files in a temporary folder, killed with SIGKILL in the middle of
//! concurrent checkouts, started again on the same folder. Nothing
//! acknowledged is lost, every saga ends, and the invariants hold across
//! the four files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use checkout_app::runtime::{Databases, Storage, service_db};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use test_kit::invariants::{StackDbs, check_all, stock};
use test_kit::load::{Product, Totals, load};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

/// A `checkout-app` process on `data` at `ip` (the seed's ports on a
/// loopback address of its own, so tests run side by side).
struct App {
    data: PathBuf,
    ip: String,
    log: PathBuf,
    starts: usize,
}

impl App {
    fn gateway(&self) -> String {
        format!("http://{}:3000", self.ip)
    }

    async fn start(&mut self) -> Child {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_checkout-app"))
            .env("DATA_DIR", &self.data)
            .env("BIND_ADDR", &self.ip)
            .env("STEP_TIMEOUT_MS", "1500")
            .env("RETRY_MAX_DELAY_MS", "1000")
            .env("PAYMENT_FAILURE_RATE", "0.1")
            .env("CHECKOUT_WAIT_MS", "5000")
            .env("RUST_LOG", "warn")
            .env_remove("DB_URL")
            .env_remove("RABBITMQ_URL")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = http.get(format!("{}/health", self.gateway())).send().await;
            if matches!(&up, Ok(r) if r.status().is_success()) {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "start {} not ready in 60 s:\n{}",
                self.starts,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn open(data: &Path, database: &str) -> DatabaseConnection {
    service_db(&Storage::Files(data.to_owned()), database, 1)
        .await
        .expect("opens the file")
}

async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(DbBackend::Sqlite, sql))
        .await
        .expect("query")
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("text"))
        .collect()
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
        .await
        .expect("query")
        .expect("a row")
        .try_get_by_index::<i64>(0)
        .expect("a count")
}

async fn catalogue(gateway: &str) -> Vec<Product> {
    let products: serde_json::Value = reqwest::get(format!("{gateway}/api/products"))
        .await
        .expect("catalogue")
        .json()
        .await
        .expect("JSON");
    let mut catalogue: Vec<Product> = products["products"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| Product {
            id: p["id"].as_str().and_then(|id| id.parse().ok()).expect("id"),
            price: p["price"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("price"),
        })
        .collect();
    catalogue.sort_by_key(|p| p.id);
    catalogue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_then_restart_on_the_same_folder_loses_nothing() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let mut app = App {
        data: folder.path().join("data"),
        ip: format!(
            "127.{}.{}.{}",
            1 + rand_byte(),
            rand_byte(),
            1 + rand_byte() % 250
        ),
        log: folder.path().join("checkout-app.log"),
        starts: 0,
    };
    let mut process = app.start().await;
    let names = Databases::default();
    let inventory = open(&app.data, &names.inventory).await;
    let before = stock(&inventory).await.expect("stock");
    inventory.close().await.expect("close");
    let products = catalogue(&app.gateway()).await;

    let (progress, handle) = load(vec![app.gateway()], products, 16, 300, 7);
    progress.reached(100).await;
    // What the files hold as confirmed right before the crash.
    let orders = open(&app.data, &names.orders).await;
    let confirmed_before = strings(
        &orders,
        "SELECT hex(id) FROM orders WHERE status = 'CONFIRMED'",
    )
    .await;
    orders.close().await.expect("close");
    process.kill().await.expect("SIGKILL");
    let orchestrator = open(&app.data, &names.orchestrator).await;
    let in_flight = count(
        &orchestrator,
        "SELECT count(*) FROM saga_state WHERE status IN ('running', 'compensating')",
    )
    .await;
    orchestrator.close().await.expect("close");
    assert!(
        in_flight > 0,
        "the kill must interrupt sagas for this test to mean anything"
    );

    // The clients retry with their Idempotency-Keys while it is down.
    let _restarted = app.start().await;
    let report = handle.await.expect("load");
    assert_eq!(
        report.other,
        0,
        "unexpected answers: {report:?}\n{}",
        app.logs()
    );

    // Every saga ends within a bounded time, none Failed.
    let orchestrator = open(&app.data, &names.orchestrator).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open_sagas = count(
            &orchestrator,
            "SELECT count(*) FROM saga_state WHERE status IN ('running', 'compensating')",
        )
        .await;
        if open_sagas == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open_sagas} saga(s) still running 60 s after the load:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let failed = count(
        &orchestrator,
        "SELECT count(*) FROM saga_state WHERE status = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "no saga Failed:\n{}", app.logs());

    // Confirmed before the crash, still confirmed after it.
    let dbs = StackDbs {
        orders: open(&app.data, &names.orders).await,
        inventory: open(&app.data, &names.inventory).await,
        payments: open(&app.data, &names.payments).await,
    };
    let confirmed_after: std::collections::BTreeSet<String> = strings(
        &dbs.orders,
        "SELECT hex(id) FROM orders WHERE status = 'CONFIRMED'",
    )
    .await
    .into_iter()
    .collect();
    assert!(
        !confirmed_before.is_empty(),
        "orders were confirmed before the crash"
    );
    for id in &confirmed_before {
        assert!(
            confirmed_after.contains(id),
            "order {id} was confirmed before the crash"
        );
    }

    // Stock conservation, one SUCCESS payment per confirmed order, nothing
    // held for a cancelled order, no PENDING order left. (Requests cut by the
    // crash were retried, so the clients' outcomes are not compared.)
    let totals = Totals {
        errors: 1,
        ..Totals::default()
    };
    let invariants = check_all(&dbs, &before, None, &totals, Duration::from_secs(30))
        .await
        .expect("reads the files");
    assert!(
        invariants.all_hold(),
        "{:#?}\n{}",
        invariants.checks,
        app.logs()
    );
    assert!(
        invariants.confirmed > 0 && invariants.pending == 0,
        "{invariants:#?}"
    );
    println!(
        "SIGKILL mid-load: {} sagas in flight at the kill; after restart {} confirmed, {} cancelled ({} confirmed before the crash); {report:?}",
        in_flight,
        invariants.confirmed,
        invariants.cancelled,
        confirmed_before.len()
    );
}

fn rand_byte() -> u8 {
    Uuid::new_v4().as_bytes()[0] % 250
}

/// A second `checkout-app` on a folder another one runs on is refused at
/// start with the reason, and the first one goes on serving.
#[tokio::test]
async fn a_second_process_on_the_same_folder_is_refused_with_the_reason() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let loopback = || {
        format!(
            "127.{}.{}.{}",
            1 + rand_byte(),
            rand_byte(),
            1 + rand_byte() % 250
        )
    };
    let mut app = App {
        data: folder.path().join("data"),
        ip: loopback(),
        log: folder.path().join("checkout-app.log"),
        starts: 0,
    };
    let _first = app.start().await;

    // Its own address, so that only the folder is shared.
    let second = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_checkout-app"))
            .env("DATA_DIR", &app.data)
            .env("BIND_ADDR", loopback())
            .env("RUST_LOG", "warn")
            .env_remove("DB_URL")
            .env_remove("RABBITMQ_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second process ends at once")
    .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second one started: {stderr}");
    assert!(
        stderr.contains(&format!(
            "the data folder {} is in use by another checkout-app process",
            app.data.display()
        )),
        "{stderr}"
    );
    let health = reqwest::get(format!("{}/health", app.gateway()))
        .await
        .expect("the first one answers");
    assert!(health.status().is_success());
}
