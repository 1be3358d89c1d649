//! `checkout-bench`: the checkout's benchmark, a closed-loop load and its report.
//!
//! A program of its own, so that the service binary (`checkout-app`) carries
//! neither the load generator nor its dependencies. `N` clients each send a checkout, wait for its answer and send the next,
//! for a warm-up and then a measured period, at every concurrency level. Carts
//! are random (1–3 distinct catalogue products, 1–3 units each) from a seeded
//! generator, so two runs with the same seed send the same carts.
//!
//! Three targets:
//!
//! - a running stack, through the gateway (`POST /api/checkout`), the default;
//! - `--spawn`: the whole stack started in this process on ephemeral ports
//!   (embedded, or on Postgres and RabbitMQ with `DB_URL` / `RABBITMQ_URL`);
//! - `--engine memory|postgres-rabbitmq`: no HTTP at all: sagas are driven
//!   through `saga_core::Engine::start` and `saga_core::Engine::wait`
//!   against in-process participants, which separates the engine's cost from
//!   the transport's and the storage's.
//!
//! With database access (always with `--spawn` and `--engine`, with `--db-url`
//! against a running stack) the stock of every product is raised before the
//! run and the invariants are checked after it (see [`test_kit::invariants`]). With
//! `--limits` the same run measures the ceilings of the infrastructure
//! (Postgres single-row commits with `pgbench`, RabbitMQ confirmed publishes).
//! Reports: `report.json`, `report.md` and `latency.svg` in `--out`.

mod limits;
pub use limits::declare_with_confirms;
mod plot;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use checkout_app::error::{Error, Result};
use checkout_app::inventory::entity::products;
use checkout_app::runtime::{self, Databases, Ports, RunningStack, Shutdown, StackConfig};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use rust_decimal::Decimal;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Serialize;
use test_kit::invariants::{self, StackDbs};
use test_kit::load::{self, Driver, Product};
use test_kit::procfs;
use uuid::Uuid;

use self::report::{Report, RunInfo};

/// Which stack the engine-level mode builds in-process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineMode {
    /// In-memory saga store and transport (participants on embedded SQLite).
    Memory,
    /// Postgres saga store and participant databases, RabbitMQ transport
    /// (`--db-url` / `DB_URL` and `--rabbitmq-url` / `RABBITMQ_URL`).
    PostgresRabbitmq,
}

/// Load generator and benchmark report for the checkout: a closed loop
/// against the gateway of a running stack, a spawned stack, or the engine
/// alone (see docs/benchmarks.md).
///
/// Settings in capitals can also come from the environment or a `.env` file.
#[derive(Clone, Debug, Parser)]
#[command(name = "checkout-bench", version)]
pub struct BenchArgs {
    /// The gateway of a running stack (ignored with --spawn and --engine).
    #[arg(
        long,
        env = "BENCH_GATEWAY_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub gateway_url: String,
    /// The inventory service of a running stack: the catalogue, when --db-url is not given.
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:3002")]
    pub inventory_url: String,
    /// Concurrency levels (closed-loop clients), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Measured time per level (e.g. 20s, 500ms, 1m).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up per level, not measured.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Seed of the cart generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Folder for report.json, report.md and latency.svg.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Stock set on every catalogue product before the run (needs database access).
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i32,
    /// PostgreSQL server URL of the stack (each service's database on it, the
    /// seed's names, as `checkout-app all`): stock and invariant checks; with
    /// --spawn or --engine postgres-rabbitmq, the stack's storage.
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// Prefix of the database names (e.g. `bench_` to keep a spawned stack apart).
    #[arg(long, default_value = "")]
    pub db_prefix: String,
    /// RabbitMQ URL: the transport of --spawn / --engine postgres-rabbitmq, and --limits.
    #[arg(long, env = "RABBITMQ_URL", hide_env_values = true)]
    pub rabbitmq_url: Option<String>,
    /// RabbitMQ tuning of a stack this tool starts.
    #[command(flatten)]
    pub rabbitmq: checkout_app::cli::RabbitArgs,
    /// Tokio worker threads of this process (default: every core).
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Start the whole stack in this process (embedded unless DB_URL / RABBITMQ_URL are set).
    #[arg(long, conflicts_with = "engine")]
    pub spawn: bool,
    /// With --spawn and no DB_URL: keep the embedded stack's databases and
    /// saga store in SQLite files in this folder (durable, as `checkout-app`
    /// runs by default). Unset: in memory.
    #[arg(long, requires = "spawn")]
    pub data_dir: Option<PathBuf>,
    /// With --spawn: how long the spawned orchestrator keeps finished sagas
    /// (as `SAGA_RETENTION`; e.g. 1m). Unset: forever.
    #[arg(long, requires = "spawn", value_parser = parse_duration)]
    pub saga_retention: Option<Duration>,
    /// Engine-level mode: drive sagas through the library, no HTTP.
    #[arg(long, value_enum)]
    pub engine: Option<EngineMode>,
    /// Probability of a declined payment in a spawned stack or the engine mode.
    #[arg(long, default_value_t = 0.05)]
    pub payment_failure_rate: f64,
    /// Also measure the infrastructure's limits (pgbench commits/s, RabbitMQ confirmed publishes/s).
    #[arg(long)]
    pub limits: bool,
    /// Seconds per limit measurement.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub limits_duration: Duration,
    /// Processes whose RSS is sampled (default: every `checkout-app`
    /// process, or this one with --spawn / --engine).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// How long to wait after the last level for sagas still running before
    /// checking the invariants.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Timeout of one checkout request (or engine wait).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses `20s`, `500ms`, `2m` or a plain number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not a duration (e.g. 20s, 500ms, 2m)");
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// What the load is sent to, with what it needs around it.
struct Target {
    driver: Driver,
    label: String,
    dbs: Option<StackDbs>,
    stack: Option<RunningStack>,
    pids: Vec<u32>,
    fresh: bool,
}

/// Runs the benchmark and writes its report.
///
/// # Errors
/// Invalid arguments, an unreachable stack, or an invariant that does not hold.
pub async fn run(args: BenchArgs) -> Result<report::Report> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err(Error::Config(
            "--concurrency needs levels of at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&args.payment_failure_rate) {
        return Err(Error::Config(
            "--payment-failure-rate must be between 0 and 1".into(),
        ));
    }
    std::fs::create_dir_all(&args.out)?;
    let target = target(&args).await?;
    let result = measure(&args, &target).await;
    if let Some(stack) = target.stack {
        stack.stop().await?;
    }
    let report = result?;
    let failed: Vec<&str> = report
        .invariants
        .iter()
        .flat_map(|i| i.checks.iter())
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(Error::Config(format!(
            "bench: invariants violated: {}; see {}",
            failed.join(", "),
            args.out.join("report.md").display()
        )));
    }
    Ok(report)
}

async fn measure(args: &BenchArgs, target: &Target) -> Result<Report> {
    let catalogue = match &target.dbs {
        Some(dbs) => {
            let mut catalogue = catalogue_from_db(&dbs.inventory).await?;
            if catalogue.is_empty() {
                // A fresh inventory database: load the seed catalogue (idempotent).
                checkout_app::inventory::seed(&dbs.inventory).await?;
                catalogue = catalogue_from_db(&dbs.inventory).await?;
            }
            catalogue
        }
        None => catalogue_from_http(&args.inventory_url).await?,
    };
    if catalogue.is_empty() {
        return Err(Error::Config(
            "the catalogue is empty: run `checkout-app seed`".into(),
        ));
    }
    let since = Utc::now();
    let before = match &target.dbs {
        Some(dbs) => {
            for p in &catalogue {
                checkout_app::inventory::set_stock(&dbs.inventory, p.id, args.stock).await?;
            }
            Some(invariants::stock(&dbs.inventory).await?)
        }
        None => None,
    };
    let info = RunInfo::collect(args, &target.label, target.pids.clone());
    let driver = Arc::new(target.driver.clone());
    let catalogue = Arc::new(catalogue);
    let mut levels = Vec::new();
    let mut totals = load::Totals::default();
    for &clients in &args.concurrency {
        let level = load::run_level(
            &driver,
            &catalogue,
            load::LevelConfig {
                clients,
                warmup: args.warmup,
                duration: args.duration,
                seed: args.seed,
                progress: !args.quiet,
                pids: target.pids.clone(),
            },
        )
        .await;
        totals.add(&level.all);
        levels.push(level);
    }
    let invariants = match (&target.dbs, before) {
        (Some(dbs), Some(before)) => {
            let scope = (!target.fresh).then_some(since);
            Some(invariants::check_all(dbs, &before, scope, &totals, args.drain).await?)
        }
        _ => None,
    };
    let limits = if args.limits {
        Some(limits::measure(args).await)
    } else {
        None
    };
    let report = Report::new(info, levels, invariants, limits);
    report.write(&args.out)?;
    report.print(&args.out);
    Ok(report)
}

async fn target(args: &BenchArgs) -> Result<Target> {
    let me = std::process::id();
    if args.spawn || args.engine.is_some() {
        let (postgres, rabbitmq) = match args.engine {
            Some(EngineMode::Memory) => (None, None),
            Some(EngineMode::PostgresRabbitmq) => {
                let (Some(db), Some(mq)) = (&args.db_url, &args.rabbitmq_url) else {
                    return Err(Error::Config(
                        "--engine postgres-rabbitmq needs --db-url (DB_URL) and --rabbitmq-url (RABBITMQ_URL)".into(),
                    ));
                };
                (Some(db.clone()), Some(mq.clone()))
            }
            None => (args.db_url.clone(), args.rabbitmq_url.clone()),
        };
        // An embedded run on files starts fresh only in an empty folder.
        let data_dir = args.data_dir.clone().filter(|_| postgres.is_none());
        let empty_folder = data_dir.as_ref().is_none_or(|folder| {
            std::fs::read_dir(folder).map_or(true, |mut entries| entries.next().is_none())
        });
        let mut config = StackConfig {
            ports: Ports::ephemeral(),
            postgres: postgres.clone(),
            data_dir: data_dir.clone(),
            saga_retention: args.saga_retention,
            rabbitmq: rabbitmq.clone(),
            rabbitmq_tuning: args.rabbitmq.tuning(),
            databases: Databases::with_prefix(&args.db_prefix),
            ..StackConfig::default()
        };
        config.payment.failure_rate = args.payment_failure_rate;
        config.payment.seed = args.seed;
        config.orchestrator.wait = args.request_timeout;
        let stack = runtime::start_all(config.clone(), Shutdown::new()).await?;
        let dbs = StackDbs {
            orders: stack.order_db.clone(),
            inventory: stack.inventory_db.clone(),
            payments: stack.payment_db.clone(),
        };
        let storage = match (&postgres, &rabbitmq) {
            (None, None) if data_dir.is_some() => {
                "embedded (SQLite files, synchronous=FULL; in-process transport)".to_owned()
            }
            (None, None) => "embedded (in-memory SQLite, in-process transport)".to_owned(),
            (db, mq) => format!(
                "{} + {}",
                if db.is_some() { "Postgres" } else { "SQLite" },
                if mq.is_some() {
                    "RabbitMQ"
                } else {
                    "in-process transport"
                }
            ),
        };
        let (driver, label) = match args.engine {
            Some(mode) => (
                Driver::engine(
                    stack.engine.clone(),
                    checkout_app::saga::definition(config.timing)?,
                    args.request_timeout,
                ),
                format!(
                    "engine-level ({}; no HTTP): {storage}",
                    match mode {
                        EngineMode::Memory => "memory",
                        EngineMode::PostgresRabbitmq => "postgres-rabbitmq",
                    }
                ),
            ),
            None => (
                Driver::http(&stack.gateway_url(), args.request_timeout)?,
                format!("spawned stack, one process, through HTTP: {storage}"),
            ),
        };
        let pids = if args.pids.is_empty() {
            vec![me]
        } else {
            args.pids.clone()
        };
        // A spawned embedded stack starts empty; on Postgres the databases may hold earlier runs.
        let fresh = postgres.is_none() && empty_folder;
        return Ok(Target {
            driver,
            label,
            dbs: Some(dbs),
            stack: Some(stack),
            pids,
            fresh,
        });
    }
    let dbs = match &args.db_url {
        Some(url) => {
            let names = Databases::with_prefix(&args.db_prefix);
            let connect = |name: String| {
                let url = runtime::with_database(url, &name);
                async move { checkout_app::db::connect(&url, 4).await }
            };
            Some(StackDbs {
                orders: connect(names.orders).await?,
                inventory: connect(names.inventory).await?,
                payments: connect(names.payments).await?,
            })
        }
        None => None,
    };
    let pids = if args.pids.is_empty() {
        procfs::discover("checkout-app", me)
    } else {
        args.pids.clone()
    };
    Ok(Target {
        driver: Driver::http(&args.gateway_url, args.request_timeout)?,
        label: format!("running stack at {}, through HTTP", args.gateway_url),
        dbs,
        stack: None,
        pids,
        fresh: false,
    })
}

async fn catalogue_from_db(db: &DatabaseConnection) -> Result<Vec<Product>> {
    let mut products: Vec<Product> = products::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|p| Product {
            id: p.id,
            price: p.price,
        })
        .collect();
    products.sort_by_key(|p| p.id);
    Ok(products)
}

async fn catalogue_from_http(inventory_url: &str) -> Result<Vec<Product>> {
    #[derive(serde::Deserialize)]
    struct View {
        id: Uuid,
        #[serde(with = "rust_decimal::serde::str")]
        price: Decimal,
    }
    let upstream = |message: String| Error::Upstream {
        service: "inventory",
        message,
    };
    let views: Vec<View> =
        reqwest::get(format!("{}/products", inventory_url.trim_end_matches('/')))
            .await
            .map_err(|e| upstream(e.to_string()))?
            .json()
            .await
            .map_err(|e| upstream(e.to_string()))?;
    let mut products: Vec<Product> = views
        .into_iter()
        .map(|v| Product {
            id: v.id,
            price: v.price,
        })
        .collect();
    products.sort_by_key(|p| p.id);
    Ok(products)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
