//! The checkout stack as separate OS processes, for the fault suite.
//!
//! [`Cluster`] runs a built `checkout-app` binary ([`Binary`]) once per service
//! (`order-service`, `inventory-service`, `payment-service`, `orchestrator`,
//! `gateway`), each on its own free port and its own database, against a
//! fresh RabbitMQ vhost with its own user. Services can be killed with
//! SIGKILL and restarted with the same environment. [`Cluster::figures`]
//! reads the invariants back from the databases (the checks of
//! [`crate::invariants`]) and the management API.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use checkout_app::runtime::{Databases, ensure_database, with_database};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, Statement};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::infra::Infra;
use crate::invariants::{Findings, Snapshot, StackDbs};
use crate::load::{LoadReport, Product};
use crate::rabbitmq::encode;

/// The `checkout-app` binary a cluster runs and where its logs go. An
/// integration test of `checkout-app` names its own build:
/// `Binary::new(env!("CARGO_BIN_EXE_checkout-app"), env!("CARGO_TARGET_TMPDIR"))`.
#[derive(Clone, Debug)]
pub struct Binary {
    exe: PathBuf,
    logs: PathBuf,
}

impl Binary {
    /// The executable `exe`; logs in `faults/` below `tmp`.
    #[must_use]
    pub fn new(exe: impl AsRef<Path>, tmp: impl AsRef<Path>) -> Self {
        Self {
            exe: exe.as_ref().to_owned(),
            logs: tmp.as_ref().join("faults"),
        }
    }

    /// The executable.
    #[must_use]
    pub fn exe(&self) -> &Path {
        &self.exe
    }
}

/// A service of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `checkout-app order-service`.
    Order,
    /// `checkout-app inventory-service`.
    Inventory,
    /// `checkout-app payment-service`.
    Payment,
    /// `checkout-app orchestrator`.
    Orchestrator,
    /// `checkout-app gateway`.
    Gateway,
}

impl Role {
    /// The five services, in start order.
    pub const ALL: [Role; 5] = [
        Role::Order,
        Role::Inventory,
        Role::Payment,
        Role::Orchestrator,
        Role::Gateway,
    ];

    fn subcommand(self) -> &'static str {
        match self {
            Role::Order => "order-service",
            Role::Inventory => "inventory-service",
            Role::Payment => "payment-service",
            Role::Orchestrator => "orchestrator",
            Role::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subcommand())
    }
}

/// One service process: a role and an instance number (two orchestrators, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// The service.
    pub role: Role,
    /// Which process of that service (0 for the first).
    pub instance: usize,
}

impl Node {
    /// The first process of `role`.
    #[must_use]
    pub const fn new(role: Role) -> Self {
        Self { role, instance: 0 }
    }

    /// The `instance`-th process of `role` (from 0).
    #[must_use]
    pub const fn nth(role: Role, instance: usize) -> Self {
        Self { role, instance }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.role, self.instance)
    }
}

/// A port nobody listens on right now.
///
/// # Panics
/// When the OS has no free port.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[derive(Debug)]
struct Running {
    child: Child,
    env: Vec<(String, String)>,
    log: PathBuf,
    starts: usize,
}

/// Timing and fault settings every process gets (overridable per node).
#[must_use]
pub fn default_env() -> Vec<(&'static str, String)> {
    vec![
        ("STEP_TIMEOUT_MS", "1500".into()),
        ("RETRY_MAX_DELAY_MS", "1000".into()),
        ("STEP_MAX_ATTEMPTS", "5".into()),
        ("COMPENSATION_MAX_ATTEMPTS", "20".into()),
        ("PAYMENT_FAILURE_RATE", "0.05".into()),
        ("CHECKOUT_WAIT_MS", "5000".into()),
        ("OPERATOR_TOKEN", OPERATOR_TOKEN.into()),
        // Two clusters run side by side on one Postgres (max_connections 100).
        ("DB_MAX_CONNECTIONS", "5".into()),
        (
            "RUST_LOG",
            "info,sqlx=warn,lapin=warn,sea_orm_migration=warn".into(),
        ),
    ]
}

/// The operator token the cluster's orchestrators accept.
pub const OPERATOR_TOKEN: &str = "fault-suite-operator-token-0123456789";

/// The five services as processes on one test's databases and vhost.
#[derive(Debug)]
pub struct Cluster {
    /// The test's databases and vhost.
    pub infra: Infra,
    /// The scenario's name.
    pub name: String,
    /// The services' database names.
    pub databases: Databases,
    /// The RabbitMQ URL with this cluster's own user and password.
    pub amqp: String,
    /// A password that must never show up in a log.
    pub amqp_password: String,
    /// Where every process's log is written.
    pub log_dir: PathBuf,
    exe: PathBuf,
    nodes: BTreeMap<Node, Running>,
    ports: HashMap<Node, u16>,
    /// Environment changes per node (applied on its next start).
    pub overrides: HashMap<Node, Vec<(String, String)>>,
    /// The seeded catalogue: stock per product before any process ran.
    pub initial_stock: BTreeMap<Uuid, i64>,
    /// The inventory service's database.
    pub inventory_db: DatabaseConnection,
    /// The order service's database.
    pub order_db: DatabaseConnection,
    /// The payment service's database.
    pub payment_db: DatabaseConnection,
    catalogue: Vec<Product>,
    http: reqwest::Client,
}

impl Cluster {
    /// Fresh databases (inventory seeded) and a fresh vhost with its own
    /// user for the processes of `binary`; no process started yet.
    ///
    /// # Panics
    /// With a clear message when PostgreSQL or RabbitMQ is unreachable.
    pub async fn new(name: &str, binary: &Binary) -> Self {
        Self::on(Infra::new(name).await, name, binary).await
    }

    /// Like [`Cluster::new`], on `infra` (e.g. [`Infra::on_brokers`]: a
    /// vhost on a RabbitMQ cluster, whose processes get every node's URL).
    ///
    /// # Panics
    /// With a clear message when PostgreSQL or RabbitMQ is unreachable.
    pub async fn on(infra: Infra, name: &str, binary: &Binary) -> Self {
        let databases = Databases::with_prefix(&infra.prefix);
        for db in [
            &databases.orders,
            &databases.inventory,
            &databases.payments,
            &databases.orchestrator,
        ] {
            ensure_database(&infra.postgres, db)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {} is unreachable ({e}); run ./scripts/services",
                        infra.postgres
                    )
                });
        }
        let inventory_db = connect(&infra.postgres, &databases.inventory).await;
        checkout_app::inventory::migrate(&inventory_db)
            .await
            .expect("inventory migrations");
        checkout_app::inventory::seed(&inventory_db)
            .await
            .expect("catalogue seed");
        let order_db = connect(&infra.postgres, &databases.orders).await;
        checkout_app::order::migrate(&order_db)
            .await
            .expect("order migrations");
        let payment_db = connect(&infra.postgres, &databases.payments).await;
        checkout_app::payment::migrate(&payment_db)
            .await
            .expect("payment migrations");
        let initial_stock = crate::invariants::stock(&inventory_db)
            .await
            .expect("catalogue stock");
        let catalogue = checkout_app::inventory::entity::products::Entity::find()
            .all(&inventory_db)
            .await
            .expect("catalogue")
            .into_iter()
            .map(|p| {
                (
                    p.id,
                    Product {
                        id: p.id,
                        price: p.price,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();

        let user = format!("u_{}", infra.prefix.trim_end_matches('_'));
        let amqp_password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        infra
            .api
            .put(
                &format!("users/{user}"),
                &json!({ "password": amqp_password, "tags": "" }),
            )
            .await;
        infra
            .api
            .put(
                &format!("permissions/{}/{user}", infra.vhost),
                &json!({ "configure": ".*", "write": ".*", "read": ".*" }),
            )
            .await;
        let amqp = infra.amqp_for(&user, &amqp_password);

        let log_dir = binary
            .logs
            .join(format!("{name}-{}", infra.prefix.trim_end_matches('_')));
        std::fs::create_dir_all(&log_dir).expect("log directory");
        Self {
            infra,
            name: name.to_owned(),
            databases,
            amqp,
            amqp_password,
            log_dir,
            exe: binary.exe.clone(),
            nodes: BTreeMap::new(),
            ports: HashMap::new(),
            overrides: HashMap::new(),
            initial_stock,
            catalogue,
            inventory_db,
            order_db,
            payment_db,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        }
    }

    /// The port of `node` (chosen on first use, kept across restarts).
    pub fn port(&mut self, node: Node) -> u16 {
        if let Some(port) = self.ports.get(&node) {
            return *port;
        }
        // A port `free_port` found is released at once, and the OS may hand
        // it out again: two nodes on one port would leave one of them
        // unbound, and its callers talking to the other.
        let port = loop {
            let port = free_port();
            if !self.ports.values().any(|&taken| taken == port) {
                break port;
            }
        };
        self.ports.insert(node, port);
        port
    }

    /// The base URL of `node`.
    pub fn url(&mut self, node: Node) -> String {
        format!("http://127.0.0.1:{}", self.port(node))
    }

    fn db_url(&self, database: &str) -> String {
        with_database(&self.infra.postgres, database)
    }

    fn env_for(&mut self, node: Node, orchestrator: Node) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = default_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.push(("PORT".into(), self.port(node).to_string()));
        env.push(("RABBITMQ_URL".into(), self.amqp.clone()));
        let database = match node.role {
            Role::Order => Some(self.databases.orders.clone()),
            Role::Inventory => Some(self.databases.inventory.clone()),
            Role::Payment => Some(self.databases.payments.clone()),
            Role::Orchestrator => Some(self.databases.orchestrator.clone()),
            Role::Gateway => None,
        };
        if let Some(database) = database {
            env.push(("DB_URL".into(), self.db_url(&database)));
        }
        let inventory = self.url(Node::new(Role::Inventory));
        let order = self.url(Node::new(Role::Order));
        let orchestrator = self.url(orchestrator);
        env.push(("INVENTORY_URL".into(), inventory));
        env.push(("ORDER_SERVICE_URL".into(), order));
        env.push(("ORCHESTRATOR_URL".into(), orchestrator));
        if let Some(extra) = self.overrides.get(&node) {
            for (k, v) in extra {
                env.retain(|(key, _)| key != k);
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    /// Starts the five services (one of each) and waits until all answer.
    pub async fn start_all(&mut self) {
        for role in Role::ALL {
            self.spawn(Node::new(role)).await;
        }
        for role in Role::ALL {
            self.ready(Node::new(role)).await;
        }
    }

    /// Starts `node` (a gateway `nth(Gateway, i)` talks to orchestrator `i`).
    pub async fn spawn(&mut self, node: Node) {
        let orchestrator = Node::nth(Role::Orchestrator, node.instance);
        let env = self.env_for(node, orchestrator);
        self.spawn_with(node, env).await;
    }

    async fn spawn_with(&mut self, node: Node, env: Vec<(String, String)>) {
        let starts = self.nodes.get(&node).map_or(0, |r| r.starts) + 1;
        let log = self.log_dir.join(format!("{node}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = file.try_clone().expect("log file");
        let mut command = Command::new(&self.exe);
        command
            .arg(node.role.subcommand())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = command.spawn().expect("checkout-app starts");
        self.nodes.insert(
            node,
            Running {
                child,
                env,
                log,
                starts,
            },
        );
    }

    /// Waits until `node` answers `/health` (at most 30 s).
    pub async fn ready(&mut self, node: Node) {
        let url = format!("{}/health", self.url(node));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(running) = self.nodes.get_mut(&node)
                && let Ok(Some(status)) = running.child.try_wait()
            {
                self.dump_logs();
                panic!("{node} exited at start-up with {status}");
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("{node} did not become healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self, node: Node) {
        let running = self.nodes.get_mut(&node).expect("node was started");
        running.child.kill().await.expect("SIGKILL");
        let _ = running.child.wait().await;
    }

    /// Starts a killed node again with the same environment and waits for it.
    pub async fn restart(&mut self, node: Node) {
        let env = self.nodes.get(&node).expect("node was started").env.clone();
        self.spawn_with(node, env).await;
        self.ready(node).await;
    }

    /// Restarts `node` with `key=value` changed (a fault switched on or off).
    pub async fn restart_with(&mut self, node: Node, key: &str, value: &str) {
        let mut env = self.nodes.get(&node).expect("node was started").env.clone();
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
        self.spawn_with(node, env).await;
        self.ready(node).await;
    }

    /// Every process's log, concatenated with headers.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (node, running) in &self.nodes {
            all.push_str(&format!("----- {node} ({}) -----\n", running.log.display()));
            all.push_str(&std::fs::read_to_string(&running.log).unwrap_or_default());
        }
        all
    }

    /// Prints the tail of every process's log (on failure).
    pub fn dump_logs(&self) {
        for (node, running) in &self.nodes {
            let text = std::fs::read_to_string(&running.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {node}: last {} lines of {} -----",
                tail.len(),
                running.log.display()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }

    /// Kills every process, then drops the databases, the vhost and the user.
    pub async fn shutdown(mut self) {
        for running in self.nodes.values_mut() {
            let _ = running.child.kill().await;
        }
        let user = format!("u_{}", self.infra.prefix.trim_end_matches('_'));
        self.infra.api.delete(&format!("users/{user}")).await;
        let _ = self.inventory_db.clone().close().await;
        let _ = self.order_db.clone().close().await;
        let _ = self.payment_db.clone().close().await;
        self.infra.cleanup().await;
    }

    // ---- faults -------------------------------------------------------------

    /// Closes every AMQP connection of this cluster's vhost (the per-vhost
    /// form of `rabbitmqctl close_all_connections`). Returns how many.
    pub async fn close_amqp_connections(&self) -> usize {
        self.infra
            .api
            .close_connections(&self.infra.vhost, Duration::from_secs(10))
            .await
    }

    /// Terminates every Postgres backend connected to this cluster's databases.
    pub async fn terminate_pg_backends(&self) -> usize {
        let admin = connect(&self.infra.postgres, "postgres").await;
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity \
             WHERE datname LIKE '{}%' AND pid <> pg_backend_pid()",
            self.infra.prefix
        );
        let n = scalar(&admin, &sql).await;
        let _ = admin.close().await;
        usize::try_from(n).unwrap_or(0)
    }

    /// Publishes `body` straight to `queue` (the default exchange), as a poison message would arrive.
    pub async fn publish_raw(&self, queue: &str, body: &str) {
        // The queue may not be declared yet right after the services start.
        let mut response = Value::Null;
        for _ in 0..50 {
            response = self
                .infra
                .api
                .post(
                    &format!("exchanges/{}/amq.default/publish", encode(&self.infra.vhost)),
                    &json!({
                        "properties": { "delivery_mode": 2, "message_id": format!("poison-{}", uuid::Uuid::new_v4()) },
                        "routing_key": queue,
                        "payload": body,
                        "payload_encoding": "string"
                    }),
                )
                .await;
            if response["routed"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            response["routed"], true,
            "poison message to {queue} not routed: {response}"
        );
    }

    /// Messages of `queue` taken off without requeue (for inspecting a DLQ).
    pub async fn peek(&self, queue: &str, count: usize) -> Vec<Value> {
        let response = self
            .infra
            .api
            .post(
                &format!("queues/{}/{}/get", encode(&self.infra.vhost), encode(queue)),
                &json!({ "count": count, "ackmode": "ack_requeue_true", "encoding": "auto" }),
            )
            .await;
        response.as_array().cloned().unwrap_or_default()
    }

    // ---- the load -----------------------------------------------------------

    /// The catalogue, ordered by product id.
    pub async fn products(&self) -> Vec<Product> {
        self.catalogue.clone()
    }

    // ---- invariants ---------------------------------------------------------

    /// Waits (at most `limit`) until every saga is terminal; returns how long it took.
    pub async fn await_terminal(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        let orchestrator = connect(&self.infra.postgres, &self.databases.orchestrator).await;
        loop {
            let open = scalar(
                &orchestrator,
                "SELECT count(*)::bigint FROM saga_state WHERE status IN ('running', 'compensating')",
            )
            .await;
            if open == 0 {
                let _ = orchestrator.close().await;
                return started.elapsed();
            }
            if started.elapsed() > limit {
                let _ = orchestrator.close().await;
                self.dump_logs();
                panic!("{open} saga(s) still running after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits (at most `limit`) until the command and reply queues are empty
    /// and the dead-letter queues hold `dead` messages (the management API
    /// refreshes its counts only every few seconds).
    pub async fn await_drained(&self, limit: Duration, dead: u64) -> BTreeMap<String, u64> {
        let started = Instant::now();
        loop {
            let depths = self.queue_depths().await;
            let busy: u64 = depths
                .iter()
                .filter(|(name, _)| !name.ends_with(".dlq"))
                .map(|(_, n)| *n)
                .sum();
            let dead_letters: u64 = depths
                .iter()
                .filter(|(name, _)| name.ends_with(".dlq"))
                .map(|(_, n)| *n)
                .sum();
            if (busy == 0 && dead_letters == dead) || started.elapsed() > limit {
                return depths;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every queue of the vhost and its message count (ready + unacknowledged).
    pub async fn queue_depths(&self) -> BTreeMap<String, u64> {
        self.infra
            .queues()
            .await
            .iter()
            .filter_map(|q| {
                let name = q["name"].as_str()?.to_owned();
                let ready = q["messages_ready"].as_u64().unwrap_or(0);
                let unacked = q["messages_unacknowledged"].as_u64().unwrap_or(0);
                let messages = q["messages"].as_u64().unwrap_or(0);
                Some((name, messages.max(ready + unacked)))
            })
            .collect()
    }

    /// Reads every figure the fault suite asserts on; `dead` is how many
    /// dead letters the scenario expects (the queue counts are awaited).
    pub async fn figures(&self, dead: u64) -> Figures {
        let orchestrator = connect(&self.infra.postgres, &self.databases.orchestrator).await;
        let mut sagas = BTreeMap::new();
        for row in rows(
            &orchestrator,
            "SELECT status, count(*)::bigint AS n FROM saga_state GROUP BY status",
        )
        .await
        {
            sagas.insert(text(&row, "status"), int(&row, "n"));
        }
        let timed_out = scalar(
            &orchestrator,
            "SELECT count(*)::bigint FROM saga_logs WHERE event = 'step_timed_out'",
        )
        .await;
        let _ = orchestrator.close().await;

        let dbs = StackDbs {
            orders: self.order_db.clone(),
            inventory: self.inventory_db.clone(),
            payments: self.payment_db.clone(),
        };
        let rows = Snapshot::read(&dbs, None)
            .await
            .unwrap_or_else(|e| panic!("reading the services' databases: {e}"));
        let found = Findings::new(&self.initial_stock, &rows);
        let queues = self.await_drained(Duration::from_secs(15), dead).await;
        Figures {
            sagas,
            timed_out,
            orders: found.orders,
            units_sold: found.units_taken,
            confirmed_units: found.units_confirmed,
            stock_mismatches: found.stock,
            confirmed_without_one_success: found.confirmed_without_one_success.len(),
            confirmed_without_reservation: found.confirmed_without_reservation.len(),
            cancelled_with_reservation: found.cancelled_with_reservation.len(),
            cancelled_with_unrefunded_payment: found.cancelled_with_unrefunded_payment.len(),
            orphan_reservations: found.orphan_reservations.len(),
            orphan_payments: found.orphan_payments.len(),
            orders_with_two_payments: found.orders_with_two_payments.len(),
            queues,
        }
    }
}

/// What the fault suite checks after a scenario.
#[derive(Debug, Default)]
pub struct Figures {
    /// Sagas per status (`running`, `completed`, ...).
    pub sagas: BTreeMap<String, i64>,
    /// Step timeouts in the saga logs.
    pub timed_out: i64,
    /// Orders per status (`CONFIRMED`, `CANCELLED`, `PENDING`).
    pub orders: BTreeMap<String, i64>,
    /// Initial stock minus current stock, over every product.
    pub units_sold: i64,
    /// Units of confirmed orders.
    pub confirmed_units: i64,
    /// Products whose stock is not conserved (see [`crate::invariants`]).
    pub stock_mismatches: Vec<String>,
    /// Confirmed orders without exactly one `SUCCESS` payment.
    pub confirmed_without_one_success: usize,
    /// Confirmed orders without a `RESERVED` reservation of their lines.
    pub confirmed_without_reservation: usize,
    /// Cancelled orders whose reservation still holds stock.
    pub cancelled_with_reservation: usize,
    /// Cancelled orders with a `SUCCESS` payment.
    pub cancelled_with_unrefunded_payment: usize,
    /// `RESERVED` reservations of orders neither confirmed nor cancelled.
    pub orphan_reservations: usize,
    /// `SUCCESS` payments of orders neither confirmed nor cancelled.
    pub orphan_payments: usize,
    /// Orders with more than one payment.
    pub orders_with_two_payments: usize,
    /// Messages per queue (ready + unacknowledged).
    pub queues: BTreeMap<String, u64>,
}

impl Figures {
    /// Sagas of `status`.
    #[must_use]
    pub fn saga_count(&self, status: &str) -> i64 {
        self.sagas.get(status).copied().unwrap_or(0)
    }

    /// Sagas of any status.
    #[must_use]
    pub fn total_sagas(&self) -> i64 {
        self.sagas.values().sum()
    }

    /// Messages left in the command and reply queues.
    #[must_use]
    pub fn left_in_queues(&self) -> u64 {
        self.queues
            .iter()
            .filter(|(n, _)| !n.ends_with(".dlq"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Messages in the dead-letter queues.
    #[must_use]
    pub fn dead_letters(&self) -> u64 {
        self.queues
            .iter()
            .filter(|(n, _)| n.ends_with(".dlq"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Asserts every invariant: no saga open, `failed` sagas Failed exactly,
    /// stock conserved, payments consistent, queues drained, `dead` dead letters.
    pub fn assert_invariants(&self, scenario: &str, failed: i64, dead: u64) {
        let open = self.saga_count("running") + self.saga_count("compensating");
        let problems: Vec<String> = [
            (open != 0).then(|| format!("{open} saga(s) not terminal")),
            (self.saga_count("failed") != failed).then(|| {
                format!(
                    "{} saga(s) Failed, expected {failed}",
                    self.saga_count("failed")
                )
            }),
            (self.orders.get("PENDING").copied().unwrap_or(0) != 0)
                .then(|| "orders left PENDING".to_owned()),
            (!self.stock_mismatches.is_empty())
                .then(|| format!("stock not conserved: {:?}", self.stock_mismatches)),
            (self.confirmed_without_one_success != 0).then(|| {
                format!(
                    "{} confirmed order(s) without exactly one SUCCESS payment",
                    self.confirmed_without_one_success
                )
            }),
            (self.confirmed_without_reservation != 0).then(|| {
                format!(
                    "{} confirmed order(s) without a reservation",
                    self.confirmed_without_reservation
                )
            }),
            (self.cancelled_with_reservation != 0).then(|| {
                format!(
                    "{} cancelled order(s) with an active reservation",
                    self.cancelled_with_reservation
                )
            }),
            (self.cancelled_with_unrefunded_payment != 0).then(|| {
                format!(
                    "{} cancelled order(s) with an unrefunded payment",
                    self.cancelled_with_unrefunded_payment
                )
            }),
            (self.orphan_reservations + self.orphan_payments != 0).then(|| {
                format!(
                    "{} orphan reservation(s), {} orphan payment(s)",
                    self.orphan_reservations, self.orphan_payments
                )
            }),
            (self.orders_with_two_payments != 0).then(|| {
                format!(
                    "{} order(s) with two payments",
                    self.orders_with_two_payments
                )
            }),
            (self.left_in_queues() != 0)
                .then(|| format!("messages left in queues: {:?}", self.queues)),
            (self.dead_letters() != dead).then(|| {
                format!(
                    "{} dead letter(s), expected {dead}: {:?}",
                    self.dead_letters(),
                    self.queues
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert!(
            problems.is_empty(),
            "scenario `{scenario}` broke invariants:\n  {}",
            problems.join("\n  ")
        );
    }

    /// A compact table of the figures.
    #[must_use]
    pub fn table(&self, scenario: &str, load: &LoadReport, settle: Duration) -> String {
        let c = |s: &str| self.saga_count(s);
        let o = |s: &str| self.orders.get(s).copied().unwrap_or(0);
        let mut t = String::new();
        t.push_str(&format!("\n=== fault scenario: {scenario} ===\n"));
        t.push_str(&format!(
            "  load        {} checkouts by {} clients in {:.1}s: {} ok, {} refused (422), {} pending (202), {} saga failed (500), {} other; retried (same Idempotency-Key) after {} 502-504 and {} transport errors\n",
            load.sent, load.clients, load.elapsed.as_secs_f64(), load.ok, load.refused, load.accepted, load.failed, load.other, load.unavailable, load.errors
        ));
        t.push_str(&format!(
            "  clients     slowest checkout {:.2}s (first try to answer, retries included); {}\n",
            load.slowest.as_secs_f64(),
            match load.error_window {
                Some((first, last)) => format!(
                    "tries failed between {:.1}s and {:.1}s into the load ({:.1}s)",
                    first.as_secs_f64(),
                    last.as_secs_f64(),
                    (last - first).as_secs_f64()
                ),
                None => "no try failed".to_owned(),
            }
        ));
        t.push_str(&format!(
            "  sagas       {} total: {} completed, {} compensated, {} failed, {} open; terminal {:.1}s after the load; {} step timeouts\n",
            self.total_sagas(), c("completed"), c("compensated"), c("failed"),
            c("running") + c("compensating"), settle.as_secs_f64(), self.timed_out
        ));
        t.push_str(&format!(
            "  orders      {} confirmed, {} cancelled, {} pending\n",
            o("CONFIRMED"),
            o("CANCELLED"),
            o("PENDING")
        ));
        t.push_str(&format!(
            "  stock       initial - current = {} units; confirmed order units = {}; mismatches {}\n",
            self.units_sold, self.confirmed_units, self.stock_mismatches.len()
        ));
        t.push_str(&format!(
            "  payments    confirmed without exactly one SUCCESS: {}; orders with two payments: {}; cancelled with unrefunded payment: {}; orphan payments: {}\n",
            self.confirmed_without_one_success, self.orders_with_two_payments,
            self.cancelled_with_unrefunded_payment, self.orphan_payments
        ));
        t.push_str(&format!(
            "  inventory   cancelled with active reservation: {}; confirmed without reservation: {}; orphan reservations: {}\n",
            self.cancelled_with_reservation, self.confirmed_without_reservation, self.orphan_reservations
        ));
        let queues: Vec<String> = self
            .queues
            .iter()
            .map(|(n, d)| format!("{n}={d}"))
            .collect();
        t.push_str(&format!(
            "  queues      left in command/reply queues: {}; dead letters: {} ({})\n",
            self.left_in_queues(),
            self.dead_letters(),
            queues.join(", ")
        ));
        t
    }
}

// ---- small database helpers -------------------------------------------------

/// Connects to `database` on `server`.
///
/// # Panics
/// When PostgreSQL is unreachable.
pub async fn connect(server: &str, database: &str) -> DatabaseConnection {
    checkout_app::db::connect(&with_database(server, database), 2)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is unreachable ({e}); run ./scripts/services"))
}

/// The rows of `sql`.
///
/// # Panics
/// When the query fails.
pub async fn rows(db: &DatabaseConnection, sql: &str) -> Vec<sea_orm::QueryResult> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("query `{sql}`: {e}"))
}

/// The integer in the first column of the one row of `sql`.
///
/// # Panics
/// When the query fails or answers no integer.
pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("query `{sql}`: {e}"))
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("an integer")
}

fn text(row: &sea_orm::QueryResult, column: &str) -> String {
    row.try_get::<String>("", column).expect("a text column")
}

fn int(row: &sea_orm::QueryResult, column: &str) -> i64 {
    row.try_get::<i64>("", column).expect("an integer column")
}
