//! The command line: one binary, a subcommand per service, plus operator tools.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::breaker::BreakerConfig;
use crate::error::{Error, Result};
use crate::gateway::{RateLimitConfig, RetryPolicy};
use crate::orchestrator::OrchestratorConfig;
use crate::order::OrderConfig;
use crate::payment::PaymentConfig;
use crate::request::Limits;
use crate::runtime::{
    self, Databases, Ports, Service, ServiceConfig, Shutdown, StackConfig, Storage,
};
use crate::saga::Timing;

/// The e-commerce checkout on the saga engine.
///
/// Every setting can also come from the environment or a `.env` file (the
/// names in capitals).
#[derive(Debug, Parser)]
#[command(name = "checkout-app", version, about)]
pub struct Cli {
    /// What to run (default: `all`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Tokio worker threads (default: 1 for a single service, every core for `all`).
    #[arg(long, env = "WORKER_THREADS", global = true)]
    pub worker_threads: Option<usize>,
    /// Log lines as text for people, or as one JSON object per line for a
    /// log pipeline (with the span fields: saga id, step...).
    #[arg(long, env = "LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export traces over OTLP/HTTP to this collector (its base URL, e.g.
    /// `http://localhost:4318`; spans go to `/v1/traces`), named after the
    /// service this process runs; the other standard `OTEL_EXPORTER_OTLP_*`
    /// settings (headers, timeout) apply. Unset: no traces are exported and no
    /// trace context is propagated.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`,
    /// the current `span` and the list of enclosing `spans`.
    Json,
}

impl Cli {
    /// The service name traces carry: the service this process runs.
    #[must_use]
    pub fn service_name(&self) -> &'static str {
        match self.command {
            Some(Command::Gateway(_)) => "api-gateway",
            Some(Command::Orchestrator(_)) => "orchestrator",
            Some(Command::OrderService(_)) => "order-service",
            Some(Command::InventoryService(_)) => "inventory-service",
            Some(Command::PaymentService(_)) => "payment-service",
            _ => "checkout-app",
        }
    }

    /// Whether the command runs one service of the five on its own (one
    /// process per service): such a process is best served by a single-threaded
    /// runtime, since several processes share the machine's cores and a
    /// thread hand-off costs more than the work of one message.
    #[must_use]
    pub fn is_single_service(&self) -> bool {
        matches!(
            self.command,
            Some(
                Command::Gateway(_)
                    | Command::Orchestrator(_)
                    | Command::OrderService(_)
                    | Command::InventoryService(_)
                    | Command::PaymentService(_)
            )
        )
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// All five services in one process. Without DB_URL and RABBITMQ_URL it needs no
    /// server at all (embedded SQLite and the in-process transport).
    All(AllArgs),
    /// The API gateway (port 3000).
    Gateway(ServiceArgs),
    /// The orchestrator (port 3004): needs DB_URL and RABBITMQ_URL.
    Orchestrator(ServiceArgs),
    /// The order service (port 3001): needs DB_URL and RABBITMQ_URL.
    OrderService(ServiceArgs),
    /// The inventory service (port 3002): needs DB_URL and RABBITMQ_URL.
    InventoryService(ServiceArgs),
    /// The payment service (port 3003): needs DB_URL and RABBITMQ_URL.
    PaymentService(ServiceArgs),
    /// Creates the databases (if missing) and applies every service's migrations.
    Migrate(DbArgs),
    /// Loads the 10 catalogue products into the inventory database.
    Seed(DbArgs),
    /// Operator commands for sagas (through the orchestrator's HTTP API).
    Saga {
        /// The action.
        #[command(subcommand)]
        action: SagaAction,
        /// The orchestrator's URL (the first, when it lists several).
        #[arg(
            long,
            env = "ORCHESTRATOR_URL",
            default_value = "http://127.0.0.1:3004",
            global = true
        )]
        orchestrator_url: String,
        /// The operator token (required for retry, cancel, resume and prune).
        #[arg(long, env = "OPERATOR_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
    },
}

/// Operator actions.
#[derive(Debug, Subcommand)]
pub enum SagaAction {
    /// A saga's state and log.
    Show {
        /// The saga id.
        id: String,
    },
    /// Recent sagas, optionally by status (running, compensating, completed, compensated, failed).
    List {
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only unfinished sagas that count as stuck (no progress past their
        /// step's timeout and retry delay, past their deadline, or retrying
        /// without limit), with the reason.
        #[arg(long)]
        stuck: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Retries a failed saga.
    Retry {
        /// The saga id.
        id: String,
    },
    /// Cancels a running saga that has not reached its pivot.
    Cancel {
        /// The saga id.
        id: String,
    },
    /// Re-sends a running saga's in-flight command.
    Resume {
        /// The saga id.
        id: String,
    },
    /// Deletes the sagas that ended completed or compensated longer ago than
    /// DURATION, with their logs (failed and unfinished sagas stay).
    Prune {
        /// How old a finished saga must be (e.g. 0s, 90m, 7d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        older_than: String,
    },
}

/// Parses a duration: a number and a unit, `ms`, `s`, `m` (or `min`), `h`
/// or `d` (`500ms`, `90m`, `7d`, `1.5h`); a bare number is seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not a duration (e.g. 0s, 500ms, 90m, 12h, 7d)");
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        "d" => value * 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// A limit of at least 1: 0 would refuse every checkout.
fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 would refuse every checkout)".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// [`parse_duration`] for an argument kept as text (sent on as given).
fn parse_duration_arg(text: &str) -> std::result::Result<String, String> {
    parse_duration(text).map(|_| text.trim().to_owned())
}

/// How long something is kept: a duration, or `off` (forever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

impl std::str::FromStr for Retention {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "off" | "never" | "forever" => Ok(Self(None)),
            other => parse_duration(other)
                .map(|d| Self(Some(d)))
                .map_err(|e| format!("{e}, or `off` to keep everything")),
        }
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(d) => {
                let secs = d.as_secs();
                match (d.subsec_nanos(), secs) {
                    (0, s) if s > 0 && s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
                    (0, s) if s > 0 && s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
                    (0, s) if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
                    (0, s) => write!(f, "{s}s"),
                    _ => write!(f, "{}ms", d.as_millis()),
                }
            }
        }
    }
}

/// RabbitMQ tuning, for every process that connects to it.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct RabbitArgs {
    /// Messages a consumer holds unacknowledged (transport default: 32).
    #[arg(long, env = "RABBITMQ_PREFETCH")]
    pub rabbitmq_prefetch: Option<u16>,
    /// Deliveries before a message is dead-lettered (transport default: 5).
    #[arg(long, env = "RABBITMQ_MAX_DELIVERIES")]
    pub rabbitmq_max_deliveries: Option<u32>,
    /// Queue type of the queues declared: quorum (the default) or classic.
    #[arg(long, env = "RABBITMQ_QUEUE_TYPE")]
    pub rabbitmq_queue_type: Option<saga_rabbitmq::QueueType>,
}

impl RabbitArgs {
    /// The tuning these arguments ask for.
    #[must_use]
    pub fn tuning(&self) -> runtime::RabbitTuning {
        runtime::RabbitTuning {
            prefetch: self.rabbitmq_prefetch,
            max_deliveries: self.rabbitmq_max_deliveries,
            queue_type: self.rabbitmq_queue_type,
        }
    }
}

/// Settings every service shares.
#[derive(Clone, Debug, Args)]
pub struct Shared {
    /// Address to bind.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// RabbitMQ URL (e.g. amqp://user:pass@localhost:5672/%2f); several
    /// comma-separated URLs name the nodes of one cluster, tried in turn.
    #[arg(long, env = "RABBITMQ_URL", hide_env_values = true)]
    pub rabbitmq_url: Option<String>,
    /// RabbitMQ tuning.
    #[command(flatten)]
    pub rabbitmq: RabbitArgs,
    /// Probability that a payment fails (0 to 1).
    #[arg(long, env = "PAYMENT_FAILURE_RATE", default_value_t = 0.05)]
    pub payment_failure_rate: f64,
    /// Seed of the payment simulation (same seed, same declines).
    #[arg(long, env = "PAYMENT_SEED", default_value_t = 0)]
    pub payment_seed: u64,
    /// Fault injection: probability that confirming an order fails, which refunds the payment.
    #[arg(long, env = "ORDER_CONFIRM_FAILURE_RATE", default_value_t = 0.0)]
    pub confirm_failure_rate: f64,
    /// How long POST /api/checkout waits for the saga before answering 202.
    #[arg(long, env = "CHECKOUT_WAIT_MS", default_value_t = 10_000)]
    pub checkout_wait_ms: u64,
    /// How long a saga step waits for its reply before retrying.
    #[arg(long, env = "STEP_TIMEOUT_MS", default_value_t = 5_000)]
    pub step_timeout_ms: u64,
    /// Longest delay between two retries of a step (compensations wait up to 6 times this).
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 5_000)]
    pub retry_max_delay_ms: u64,
    /// Attempts of a saga step (first try included) before the saga compensates.
    #[arg(long, env = "STEP_MAX_ATTEMPTS", default_value_t = 5)]
    pub step_max_attempts: u32,
    /// Attempts of a compensation before the saga ends Failed for an operator.
    #[arg(long, env = "COMPENSATION_MAX_ATTEMPTS", default_value_t = 20)]
    pub compensation_max_attempts: u32,
    /// Most database connections this process opens (per database).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Token required by operator actions; unset disables them.
    #[arg(long, env = "OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Largest accepted request body in bytes (at least 1).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = at_least_one)]
    pub max_body_bytes: usize,
    /// Most line items per order (at least 1).
    #[arg(long, env = "MAX_ITEMS", default_value_t = 100, value_parser = at_least_one)]
    pub max_items: usize,
    /// Most units of one product per order (at least 1).
    #[arg(long, env = "MAX_QUANTITY", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_quantity: u32,
    /// How long the orchestrator keeps sagas that ended completed or
    /// compensated, with their logs, before deleting them (e.g. 90m, 7d; `off`
    /// keeps them forever). Failed sagas are kept until an operator acts.
    /// Their idempotency keys are free again once deleted.
    #[arg(long, env = "SAGA_RETENTION", default_value = "7d")]
    pub saga_retention: Retention,
    /// How long the participants keep the records that refuse a late command
    /// (the tombstones a compensation leaves when it arrives before its
    /// command). Must be at least SAGA_RETENTION, and longer than any command
    /// can be redelivered: a command that arrives after its record is gone
    /// runs again. `off` keeps them forever.
    #[arg(long, env = "INBOX_RETENTION", default_value = "14d")]
    pub inbox_retention: Retention,
    /// The orchestrator: most checkouts handled at once (each until its
    /// answer); one more is refused at once with 503 `overloaded` and
    /// Retry-After, nothing started. 0: no bound.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = crate::orchestrator::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Circuit breakers (the gateway's, one per orchestrator; the
    /// orchestrator's, in front of the inventory catalogue): this many
    /// failed calls in a row open one, and calls then fail fast with 503 and
    /// Retry-After. 0: no breaker.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// How long an open circuit breaker fails calls fast before it lets one
    /// probe through; the probe's success closes it.
    #[arg(long, env = "BREAKER_COOL_DOWN_MS", default_value_t = 2_000)]
    pub breaker_cool_down_ms: u64,
    /// The gateway: tries of one request across the orchestrators, the first
    /// included, when one refuses the connection, dies before answering or
    /// answers 502-504 (same body, same Idempotency-Key). 1: no retry.
    #[arg(long, env = "ORCHESTRATOR_ATTEMPTS", default_value_t = 3)]
    pub orchestrator_attempts: u32,
    /// The gateway: no new try of a request starts this long after its first.
    #[arg(long, env = "ORCHESTRATOR_RETRY_BUDGET_MS", default_value_t = 5_000)]
    pub orchestrator_retry_budget_ms: u64,
    /// The gateway: requests per second one client (IP address) may send to
    /// /api/...; more are answered 429 with Retry-After. 0: no limit. Behind a
    /// proxy every request has the proxy's address: limit per client there.
    #[arg(long, env = "RATE_LIMIT_PER_CLIENT", default_value_t = 0)]
    pub rate_limit_per_client: u32,
    /// The gateway: requests one client may send at once above its rate
    /// (0: one second's worth of RATE_LIMIT_PER_CLIENT).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,
    /// The gateway: requests per second of all clients together; more are
    /// answered 429 with Retry-After. 0: no limit.
    #[arg(long, env = "RATE_LIMIT_TOTAL", default_value_t = 0)]
    pub rate_limit_total: u32,
}

impl Shared {
    fn validate(&self) -> Result<()> {
        for (name, rate) in [
            ("PAYMENT_FAILURE_RATE", self.payment_failure_rate),
            ("ORDER_CONFIRM_FAILURE_RATE", self.confirm_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::Config(format!(
                    "{name} must be between 0 and 1, got {rate}"
                )));
            }
        }
        match (self.inbox_retention.0, self.saga_retention.0) {
            (Some(inbox), Some(saga)) if inbox < saga => {
                return Err(Error::Config(format!(
                    "INBOX_RETENTION ({}) must be at least SAGA_RETENTION ({}): a participant \
                     must remember a command at least as long as the orchestrator keeps its saga, \
                     or a command redelivered after its record is gone runs again",
                    self.inbox_retention, self.saga_retention
                )));
            }
            (Some(_), None) => {
                return Err(Error::Config(format!(
                    "INBOX_RETENTION ({}) must be `off` when SAGA_RETENTION is `off`: a \
                     participant must remember a command at least as long as the orchestrator \
                     keeps its saga",
                    self.inbox_retention
                )));
            }
            _ => {}
        }
        if self.operator_token().is_some_and(|t| t.len() < 16) {
            return Err(Error::Config(
                "OPERATOR_TOKEN must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    /// The operator token; an empty `OPERATOR_TOKEN` (as `docker compose`
    /// passes `${OPERATOR_TOKEN:-}`) counts as unset.
    fn operator_token(&self) -> Option<&str> {
        self.operator_token
            .as_deref()
            .filter(|t| !t.trim().is_empty())
    }

    fn timing(&self) -> Timing {
        Timing {
            step_timeout: Duration::from_millis(self.step_timeout_ms.max(1)),
            retry_max: Duration::from_millis(self.retry_max_delay_ms.max(1)),
            step_attempts: self.step_max_attempts.max(1),
            compensation_attempts: self.compensation_max_attempts.max(1),
            ..Timing::default()
        }
    }

    fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failures: self.breaker_failures,
            cool_down: Duration::from_millis(self.breaker_cool_down_ms.max(1)),
        }
    }

    fn gateway_retry(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.orchestrator_attempts.max(1),
            budget: Duration::from_millis(self.orchestrator_retry_budget_ms),
            ..RetryPolicy::default()
        }
    }

    fn rate_limit(&self) -> RateLimitConfig {
        RateLimitConfig {
            per_client: self.rate_limit_per_client,
            burst: self.rate_limit_burst,
            total: self.rate_limit_total,
        }
    }

    fn orchestrator(&self) -> OrchestratorConfig {
        OrchestratorConfig {
            max_in_flight: self.max_in_flight,
            breaker: self.breaker(),
            wait: Duration::from_millis(self.checkout_wait_ms),
            operator_token: self.operator_token().map(str::to_owned),
            limits: Limits {
                max_items: self.max_items,
                max_quantity: self.max_quantity,
                ..Limits::default()
            },
        }
    }

    fn payment(&self) -> PaymentConfig {
        PaymentConfig {
            failure_rate: self.payment_failure_rate,
            seed: self.payment_seed,
        }
    }

    fn order(&self) -> OrderConfig {
        OrderConfig {
            confirm_failure_rate: self.confirm_failure_rate,
            seed: self.payment_seed,
        }
    }
}

/// Arguments of `all`.
#[derive(Clone, Debug, Args)]
pub struct AllArgs {
    /// PostgreSQL server URL; each service uses its own database on it
    /// (orders, inventory, payments, orchestrator), created if missing.
    /// Unset: embedded SQLite files in the data folder.
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// Without DB_URL: the folder of the embedded SQLite files (created if
    /// missing; a second start on it resumes where the first stopped).
    /// `:memory:` keeps nothing, like --in-memory.
    #[arg(long, env = "DATA_DIR", default_value = "checkout-data")]
    pub data_dir: PathBuf,
    /// Without DB_URL: keep everything in memory (nothing survives a stop).
    #[arg(long, conflicts_with = "db_url")]
    pub in_memory: bool,
    /// Settings every service shares.
    #[command(flatten)]
    pub shared: Shared,
}

impl AllArgs {
    /// Where the stack keeps its data.
    fn storage(&self) -> Storage {
        match &self.db_url {
            Some(url) => Storage::Postgres(url.clone()),
            None if self.in_memory || self.data_dir.as_os_str() == ":memory:" => Storage::Memory,
            None => Storage::Files(self.data_dir.clone()),
        }
    }
}

/// Arguments of a single service.
#[derive(Clone, Debug, Args)]
pub struct ServiceArgs {
    /// Port (default: the service's port from the seed guide).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// This service's own database URL.
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// The orchestrator's URL, or several comma-separated (gateway): checkouts
    /// are spread over them and one that fails is tried on the next.
    #[arg(
        long,
        env = "ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:3004"
    )]
    pub orchestrator_url: String,
    /// The order service's URL (gateway).
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:3001"
    )]
    pub order_url: String,
    /// The inventory service's URL (orchestrator: catalogue prices; gateway: `/api/products`).
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:3002")]
    pub inventory_url: String,
    /// Settings every service shares.
    #[command(flatten)]
    pub shared: Shared,
}

/// Arguments of `migrate` and `seed`.
#[derive(Clone, Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL server URL; the seed's database names are used on it.
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: String,
}

fn default_port(service: Service) -> u16 {
    let ports = Ports::default();
    match service {
        Service::Gateway => ports.gateway,
        Service::Orchestrator => ports.orchestrator,
        Service::Order => ports.order,
        Service::Inventory => ports.inventory,
        Service::Payment => ports.payment,
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command fails with; `main` prints it.
pub async fn run(cli: Cli) -> Result<()> {
    let command = cli
        .command
        .unwrap_or_else(|| Command::All(AllArgs::parse_from_env()));
    match command {
        Command::All(args) => run_all(args).await,
        Command::Gateway(args) => run_one(Service::Gateway, args).await,
        Command::Orchestrator(args) => run_one(Service::Orchestrator, args).await,
        Command::OrderService(args) => run_one(Service::Order, args).await,
        Command::InventoryService(args) => run_one(Service::Inventory, args).await,
        Command::PaymentService(args) => run_one(Service::Payment, args).await,
        Command::Migrate(args) => migrate(&args.db_url).await,
        Command::Seed(args) => {
            let storage = Storage::Postgres(args.db_url.clone());
            let db = runtime::service_db(&storage, &Databases::default().inventory, 2).await?;
            crate::inventory::migrate(&db).await?;
            let n = crate::inventory::seed(&db).await?;
            println!(
                "catalogue ready: {n} product(s) added to the inventory database (existing ones are kept)"
            );
            Ok(())
        }
        Command::Saga {
            action,
            orchestrator_url,
            token,
        } => {
            let first = orchestrator_url
                .split(',')
                .next()
                .unwrap_or_default()
                .trim();
            crate::operator::run(action, first, token.as_deref()).await
        }
    }
}

impl AllArgs {
    /// `all`'s arguments from the environment alone (when no subcommand is given).
    fn parse_from_env() -> Self {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            all: AllArgs,
        }
        Wrapper::parse_from(["checkout-app"]).all
    }
}

async fn migrate(db_url: &str) -> Result<()> {
    let names = Databases::default();
    let storage = Storage::Postgres(db_url.to_owned());
    let order = runtime::service_db(&storage, &names.orders, 2).await?;
    crate::order::migrate(&order).await?;
    let inventory = runtime::service_db(&storage, &names.inventory, 2).await?;
    crate::inventory::migrate(&inventory).await?;
    let payment = runtime::service_db(&storage, &names.payments, 2).await?;
    crate::payment::migrate(&payment).await?;
    runtime::saga_store(&storage, &names.orchestrator).await?;
    println!(
        "migrated databases {}, {}, {} and {} on {}",
        names.orders,
        names.inventory,
        names.payments,
        names.orchestrator,
        crate::db::redact(db_url)
    );
    Ok(())
}

async fn run_all(args: AllArgs) -> Result<()> {
    args.shared.validate()?;
    let shared = &args.shared;
    let storage = args.storage();
    let config = StackConfig {
        bind: shared.bind,
        postgres: storage.postgres().map(str::to_owned),
        data_dir: match &storage {
            Storage::Files(folder) => Some(folder.clone()),
            Storage::Postgres(_) | Storage::Memory => None,
        },
        rabbitmq: shared.rabbitmq_url.clone(),
        rabbitmq_tuning: shared.rabbitmq.tuning(),
        payment: shared.payment(),
        order: shared.order(),
        orchestrator: shared.orchestrator(),
        timing: shared.timing(),
        max_body_bytes: shared.max_body_bytes,
        saga_retention: shared.saga_retention.0,
        inbox_retention: shared.inbox_retention.0,
        gateway_retry: shared.gateway_retry(),
        rate_limit: shared.rate_limit(),
        ..StackConfig::default()
    };
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let stack = runtime::start_all(config, shutdown).await?;
    let messaging = shared
        .rabbitmq_url
        .as_deref()
        .map_or("in-process".to_owned(), crate::db::redact);
    println!("checkout-app is running");
    println!("  data          {}", storage.describe());
    println!("  messaging     {messaging}");
    match &storage {
        Storage::Files(folder) => println!(
            "  (kept across restarts; to start fresh, stop and delete {}; --in-memory keeps nothing; DB_URL and RABBITMQ_URL run on Postgres and RabbitMQ)",
            folder.display()
        ),
        Storage::Memory => {
            println!(
                "  (nothing is kept; without --in-memory the data stays in DATA_DIR, ./checkout-data by default)"
            )
        }
        Storage::Postgres(_) => {}
    }
    println!();
    println!("  gateway       {}", stack.gateway_url());
    println!("  order         http://{}", stack.order);
    println!("  inventory     http://{}", stack.inventory);
    println!("  payment       http://{}", stack.payment);
    println!("  orchestrator  http://{}", stack.orchestrator);
    println!();
    println!("Try:");
    println!(
        "  curl -X POST {}/api/checkout -H 'Content-Type: application/json' \\\n    -d '{{\"userId\": \"user-123\", \"items\": [{{\"productId\": \"660facf7-b9cf-417a-8ee1-27afe2fb2c72\", \"quantity\": 2, \"price\": \"29.99\"}}]}}'",
        stack.gateway_url()
    );
    println!("Press Ctrl-C to stop.");
    stack.wait().await
}

async fn run_one(service: Service, args: ServiceArgs) -> Result<()> {
    args.shared.validate()?;
    let shared = &args.shared;
    let config = ServiceConfig {
        bind: shared.bind,
        port: args.port.unwrap_or_else(|| default_port(service)),
        db_url: args.db_url.clone(),
        rabbitmq_url: shared.rabbitmq_url.clone(),
        rabbitmq_tuning: shared.rabbitmq.tuning(),
        orchestrator_url: args.orchestrator_url.clone(),
        order_url: args.order_url.clone(),
        inventory_url: args.inventory_url.clone(),
        payment: shared.payment(),
        order: shared.order(),
        orchestrator: shared.orchestrator(),
        timing: shared.timing(),
        max_body_bytes: shared.max_body_bytes,
        db_max_connections: shared.db_max_connections.max(1),
        saga_retention: shared.saga_retention.0,
        inbox_retention: shared.inbox_retention.0,
        gateway_retry: shared.gateway_retry(),
        rate_limit: shared.rate_limit(),
    };
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    runtime::run_service(service, config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        for bad in ["", "soon", "-1s", "7w", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!("off".parse::<Retention>(), Ok(Retention(None)));
        assert_eq!(
            "14d".parse::<Retention>().map(|r| r.to_string()),
            Ok("14d".into())
        );
    }

    fn shared(args: &[&str]) -> Shared {
        let mut argv = vec!["checkout-app", "all"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Some(Command::All(all)) => all.shared,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_edge_settings_default_to_no_rate_limit_and_a_high_in_flight_bound() {
        let defaults = shared(&[]);
        assert!(!defaults.rate_limit().is_on(), "no rate limit by default");
        assert_eq!(defaults.orchestrator().max_in_flight, 1024);
        assert_eq!(defaults.breaker(), BreakerConfig::default());
        assert_eq!(defaults.gateway_retry(), RetryPolicy::default());
        let set = shared(&[
            "--rate-limit-per-client",
            "50",
            "--rate-limit-burst",
            "100",
            "--rate-limit-total",
            "1000",
            "--max-in-flight",
            "64",
            "--breaker-failures",
            "0",
            "--orchestrator-attempts",
            "1",
        ]);
        assert_eq!(
            set.rate_limit(),
            RateLimitConfig {
                per_client: 50,
                burst: 100,
                total: 1000
            }
        );
        assert_eq!(set.orchestrator().max_in_flight, 64);
        assert_eq!(set.orchestrator().breaker.failures, 0);
        assert_eq!(set.gateway_retry().attempts, 1);
    }

    #[test]
    fn limits_of_zero_are_refused() {
        for flag in ["--max-items", "--max-quantity", "--max-body-bytes"] {
            assert!(
                Cli::try_parse_from(["checkout-app", "all", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
        let set = shared(&["--max-items", "3", "--max-quantity", "2"]);
        assert_eq!((set.max_items, set.max_quantity), (3, 2));
    }

    #[test]
    fn an_empty_operator_token_disables_operator_actions_instead_of_failing() {
        let empty = shared(&["--operator-token", ""]);
        assert!(empty.validate().is_ok());
        assert_eq!(empty.orchestrator().operator_token, None);
        assert!(shared(&["--operator-token", "short"]).validate().is_err());
        let set = shared(&["--operator-token", "0123456789abcdef"]);
        assert_eq!(
            set.orchestrator().operator_token.as_deref(),
            Some("0123456789abcdef")
        );
    }

    #[test]
    fn the_retentions_default_to_7_and_14_days_and_the_inbox_keeps_at_least_as_long() {
        let defaults = shared(&[]);
        assert_eq!(
            defaults.saga_retention,
            Retention(Some(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            defaults.inbox_retention,
            Retention(Some(Duration::from_secs(14 * 86_400)))
        );
        assert!(defaults.validate().is_ok());
        let shorter = shared(&["--saga-retention", "7d", "--inbox-retention", "3d"]);
        let err = shorter.validate().expect_err("refused").to_string();
        assert!(
            err.contains("INBOX_RETENTION (3d) must be at least SAGA_RETENTION (7d)"),
            "{err}"
        );
        let forever = shared(&["--saga-retention", "off"]);
        assert!(
            forever.validate().is_err(),
            "the inbox cannot be kept shorter than forever"
        );
        assert!(
            shared(&["--saga-retention", "off", "--inbox-retention", "off"])
                .validate()
                .is_ok()
        );
        assert!(
            shared(&["--saga-retention", "1m", "--inbox-retention", "1m"])
                .validate()
                .is_ok()
        );
    }
}
