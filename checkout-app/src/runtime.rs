//! Wiring: infrastructure choice, service start-up, and the whole stack in one process.
//!
//! Every service binds its listener first, so a stack started on port 0
//! (tests) knows all addresses before any service needs another's URL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use saga_core::memory::{InMemoryStore, InMemoryTransport};
use saga_core::{Engine, EngineConfig, SagaStore, Transport};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::gateway::GatewayConfig;
use crate::orchestrator::{Catalogue, Orchestrator, OrchestratorConfig};
use crate::order::OrderConfig;
use crate::payment::PaymentConfig;
use crate::saga::Timing;
use crate::{db, inventory, order, payment};

/// A shutdown signal shared by every task of a process.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    #[must_use]
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Triggers shutdown.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once shutdown is triggered.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Triggers shutdown on Ctrl-C or SIGTERM.
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => {}
                () = term => {}
            }
            tracing::info!("shutting down");
            this.trigger();
        });
    }
}

/// The ports of the five services (the seed's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// API gateway.
    pub gateway: u16,
    /// Order service.
    pub order: u16,
    /// Inventory service.
    pub inventory: u16,
    /// Payment service.
    pub payment: u16,
    /// Orchestrator.
    pub orchestrator: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            gateway: 3000,
            order: 3001,
            inventory: 3002,
            payment: 3003,
            orchestrator: 3004,
        }
    }
}

impl Ports {
    /// Every port 0: the OS picks free ones (tests).
    #[must_use]
    pub fn ephemeral() -> Self {
        Self {
            gateway: 0,
            order: 0,
            inventory: 0,
            payment: 0,
            orchestrator: 0,
        }
    }
}

/// Database names of the four services (the seed's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Databases {
    /// The order service's database.
    pub orders: String,
    /// The inventory service's database.
    pub inventory: String,
    /// The payment service's database.
    pub payments: String,
    /// The orchestrator's database.
    pub orchestrator: String,
}

impl Default for Databases {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Databases {
    /// The seed's names with `prefix` in front (test isolation).
    #[must_use]
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            orders: format!("{prefix}orders"),
            inventory: format!("{prefix}inventory"),
            payments: format!("{prefix}payments"),
            orchestrator: format!("{prefix}orchestrator"),
        }
    }
}

/// Everything needed to run the stack.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The address services bind (127.0.0.1 unless configured).
    pub bind: IpAddr,
    /// Service ports.
    pub ports: Ports,
    /// A PostgreSQL server URL whose database part is replaced by each
    /// service's database; `None` runs on embedded in-memory SQLite and an
    /// in-memory saga store.
    pub postgres: Option<String>,
    /// Database names on that server.
    pub databases: Databases,
    /// RabbitMQ URL; `None` uses the in-process transport.
    pub rabbitmq: Option<String>,
    /// Payment simulation.
    pub payment: PaymentConfig,
    /// Order fault injection.
    pub order: OrderConfig,
    /// Orchestrator settings.
    pub orchestrator: OrchestratorConfig,
    /// Saga timing.
    pub timing: Timing,
    /// Gateway limits.
    pub max_body_bytes: usize,
    /// Load the 10 catalogue products at start.
    pub seed: bool,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: Ports::default(),
            postgres: None,
            databases: Databases::default(),
            rabbitmq: None,
            payment: PaymentConfig::default(),
            order: OrderConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            timing: Timing::default(),
            max_body_bytes: GatewayConfig::default().max_body_bytes,
            seed: true,
        }
    }
}

/// `url` with its database replaced by `database`.
#[must_use]
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| i + authority_start);
    let host = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{host}/{database}?{query}"),
        None => format!("{host}/{database}"),
    }
}

/// Creates `database` on the server of `url` if it does not exist.
///
/// # Errors
/// When the server is unreachable or refuses.
pub async fn ensure_database(url: &str, database: &str) -> Result<()> {
    if !database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Config(format!(
            "database name `{database}` must be letters, digits and _"
        )));
    }
    let admin = db::connect(&with_database(url, "postgres"), 1).await?;
    let exists = admin
        .query_one_raw(Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT 1 FROM pg_database WHERE datname = '{database}'"),
        ))
        .await?
        .is_some();
    if !exists {
        // Two processes may race here; the loser's "already exists" is fine.
        let created = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
            .await;
        if let Err(e) = created
            && !e.to_string().contains("already exists")
        {
            return Err(e.into());
        }
        tracing::info!(%database, "database created");
    }
    admin.close().await?;
    Ok(())
}

/// Connects to a service's database: Postgres (created if missing) or embedded SQLite.
///
/// # Errors
/// When the database is unreachable.
pub async fn service_db(
    postgres: Option<&str>,
    database: &str,
    pool: u32,
) -> Result<DatabaseConnection> {
    match postgres {
        Some(url) => {
            ensure_database(url, database).await?;
            db::connect(&with_database(url, database), pool).await
        }
        None => db::connect(db::EMBEDDED, 1).await,
    }
}

/// The transport: RabbitMQ at `url`, or in-process.
///
/// # Errors
/// When RabbitMQ is unreachable.
pub async fn transport(url: Option<&str>) -> Result<Arc<dyn Transport>> {
    match url {
        Some(url) => {
            // The URL given here, the tuning (`RABBITMQ_PREFETCH`,
            // `RABBITMQ_QUEUE_TYPE`, ...) from the environment.
            let config = saga_rabbitmq::Config::from_lookup(|name| {
                if name == saga_rabbitmq::URL_ENV {
                    Some(url.to_owned())
                } else {
                    std::env::var(name).ok()
                }
            })
            .map_err(|e| Error::Saga(e.into()))?;
            let transport = saga_rabbitmq::RabbitTransport::connect(config)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            Ok(Arc::new(transport))
        }
        None => Ok(Arc::new(InMemoryTransport::new())),
    }
}

/// The saga store: Postgres (migrated) or in memory.
///
/// # Errors
/// When the database is unreachable.
pub async fn saga_store(postgres: Option<&str>, database: &str) -> Result<Arc<dyn SagaStore>> {
    saga_store_with_pool(postgres, database, 10).await
}

/// [`saga_store`] with at most `max_connections` database connections.
///
/// # Errors
/// When the database is unreachable.
pub async fn saga_store_with_pool(
    postgres: Option<&str>,
    database: &str,
    max_connections: u32,
) -> Result<Arc<dyn SagaStore>> {
    match postgres {
        Some(url) => {
            ensure_database(url, database).await?;
            let config = saga_postgres::PgConfig::new(with_database(url, database))
                .application_name("orchestrator")
                .max_connections(max_connections);
            let db = config.connect().await.map_err(|e| Error::Saga(e.into()))?;
            saga_postgres::migrate(&db)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            let store = saga_postgres::PgSagaStore::new(db)
                .await
                .map_err(|e| Error::Saga(e.into()))?;
            Ok(Arc::new(store))
        }
        None => Ok(Arc::new(InMemoryStore::new())),
    }
}

/// A bound listener and its address.
async fn bind(ip: IpAddr, port: u16, name: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((ip, port))
        .await
        .map_err(|e| Error::Config(format!("{name}: cannot listen on {ip}:{port}: {e}")))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn serve(
    tasks: &mut JoinSet<Result<()>>,
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    shutdown: &Shutdown,
) {
    let stop = shutdown.wait();
    tasks.spawn(async move {
        tracing::info!(service = name, addr = %listener.local_addr()?, "listening");
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await?;
        Ok(())
    });
}

fn participate(
    tasks: &mut JoinSet<Result<()>>,
    participant: saga_core::Participant,
    transport: &Arc<dyn Transport>,
    shutdown: &Shutdown,
) {
    let transport = Arc::clone(transport);
    let stop = shutdown.wait();
    tasks.spawn(async move {
        participant.run(transport, stop).await?;
        Ok(())
    });
}

/// The addresses of a running stack and the handle to stop it.
#[derive(Debug)]
pub struct RunningStack {
    /// API gateway address.
    pub gateway: SocketAddr,
    /// Order service address.
    pub order: SocketAddr,
    /// Inventory service address.
    pub inventory: SocketAddr,
    /// Payment service address.
    pub payment: SocketAddr,
    /// Orchestrator address.
    pub orchestrator: SocketAddr,
    /// The orchestrator's engine (for tests and operator tooling).
    pub engine: Engine,
    /// Databases of the participants (for invariant checks).
    pub order_db: DatabaseConnection,
    /// Inventory database.
    pub inventory_db: DatabaseConnection,
    /// Payment database.
    pub payment_db: DatabaseConnection,
    shutdown: Shutdown,
    tasks: JoinSet<Result<()>>,
}

impl RunningStack {
    /// The gateway's base URL.
    #[must_use]
    pub fn gateway_url(&self) -> String {
        url(self.gateway)
    }

    /// Stops every service and waits for them.
    ///
    /// # Errors
    /// The first error a service ended with.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.trigger();
        let mut first = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let result =
                joined.map_err(|e| Error::Config(format!("a service task panicked: {e}")))?;
            if first.is_ok() {
                first = result;
            }
        }
        first
    }

    /// Waits until a service stops on its own (an error) or shutdown is triggered.
    ///
    /// # Errors
    /// The error that stopped a service.
    pub async fn wait(mut self) -> Result<()> {
        while let Some(joined) = self.tasks.join_next().await {
            let result =
                joined.map_err(|e| Error::Config(format!("a service task panicked: {e}")))?;
            if let Err(e) = result {
                self.shutdown.trigger();
                while self.tasks.join_next().await.is_some() {}
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Starts all five services in this process.
///
/// # Errors
/// When a port is taken or a database or broker is unreachable.
pub async fn start_all(config: StackConfig, shutdown: Shutdown) -> Result<RunningStack> {
    let ip = config.bind;
    let (gateway_listener, gateway) = bind(ip, config.ports.gateway, "api-gateway").await?;
    let (order_listener, order_addr) = bind(ip, config.ports.order, "order-service").await?;
    let (inventory_listener, inventory_addr) =
        bind(ip, config.ports.inventory, "inventory-service").await?;
    let (payment_listener, payment_addr) =
        bind(ip, config.ports.payment, "payment-service").await?;
    let (orchestrator_listener, orchestrator_addr) =
        bind(ip, config.ports.orchestrator, "orchestrator").await?;

    let pg = config.postgres.as_deref();
    let transport = transport(config.rabbitmq.as_deref()).await?;
    let order_db = service_db(pg, &config.databases.orders, 16).await?;
    let inventory_db = service_db(pg, &config.databases.inventory, 16).await?;
    let payment_db = service_db(pg, &config.databases.payments, 16).await?;
    order::migrate(&order_db).await?;
    inventory::migrate(&inventory_db).await?;
    payment::migrate(&payment_db).await?;
    if config.seed {
        let seeded = inventory::seed(&inventory_db).await?;
        tracing::info!(products = seeded, "catalogue seeded");
    }
    let store = saga_store(pg, &config.databases.orchestrator).await?;

    let mut tasks = JoinSet::new();
    participate(
        &mut tasks,
        order::participant(order_db.clone(), config.order),
        &transport,
        &shutdown,
    );
    participate(
        &mut tasks,
        inventory::participant(inventory_db.clone()),
        &transport,
        &shutdown,
    );
    participate(
        &mut tasks,
        payment::participant(payment_db.clone(), config.payment),
        &transport,
        &shutdown,
    );
    serve(
        &mut tasks,
        "order-service",
        order_listener,
        order::router(order_db.clone()),
        &shutdown,
    );
    serve(
        &mut tasks,
        "inventory-service",
        inventory_listener,
        inventory::router(inventory_db.clone()),
        &shutdown,
    );
    serve(
        &mut tasks,
        "payment-service",
        payment_listener,
        payment::router(payment_db.clone()),
        &shutdown,
    );

    let engine = orchestrator_engine(store, Arc::clone(&transport), config.timing)?;
    let orchestrator = Orchestrator::new(
        engine.clone(),
        crate::saga::definition(config.timing)?,
        Catalogue::new(url(inventory_addr))?,
        config.orchestrator.clone(),
    );
    run_engine(&mut tasks, &engine, &shutdown);
    serve(
        &mut tasks,
        "orchestrator",
        orchestrator_listener,
        crate::orchestrator::router(orchestrator),
        &shutdown,
    );

    let gateway_config = GatewayConfig {
        orchestrator_url: url(orchestrator_addr),
        order_url: url(order_addr),
        limits: config.orchestrator.limits,
        max_body_bytes: config.max_body_bytes,
        upstream_timeout: config.orchestrator.wait + std::time::Duration::from_secs(10),
    };
    serve(
        &mut tasks,
        "api-gateway",
        gateway_listener,
        crate::gateway::router(gateway_config)?,
        &shutdown,
    );

    Ok(RunningStack {
        gateway,
        order: order_addr,
        inventory: inventory_addr,
        payment: payment_addr,
        orchestrator: orchestrator_addr,
        engine,
        order_db,
        inventory_db,
        payment_db,
        shutdown,
        tasks,
    })
}

/// The orchestrator's engine with the checkout saga registered.
///
/// # Errors
/// Never in practice (the definition is valid).
pub fn orchestrator_engine(
    store: Arc<dyn SagaStore>,
    transport: Arc<dyn Transport>,
    timing: Timing,
) -> Result<Engine> {
    let saga = crate::saga::definition(timing)?;
    let mut config = EngineConfig::default();
    config.reply_queue = "orchestrator_replies".to_owned();
    Ok(Engine::builder_arc(store, transport)
        .register(&saga)
        .config(config)
        .build())
}

fn run_engine(tasks: &mut JoinSet<Result<()>>, engine: &Engine, shutdown: &Shutdown) {
    let engine = engine.clone();
    let stop = shutdown.wait();
    tasks.spawn(async move {
        engine.run(stop).await?;
        Ok(())
    });
}

/// Which single service to run in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// API gateway.
    Gateway,
    /// Orchestrator.
    Orchestrator,
    /// Order service.
    Order,
    /// Inventory service.
    Inventory,
    /// Payment service.
    Payment,
}

/// Settings of one service process (the seed's environment variables).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Bind address.
    pub bind: IpAddr,
    /// `PORT`.
    pub port: u16,
    /// `DB_URL`: this service's own database.
    pub db_url: Option<String>,
    /// `RABBITMQ_URL`.
    pub rabbitmq_url: Option<String>,
    /// The gateway's `ORCHESTRATOR_URL`.
    pub orchestrator_url: String,
    /// The gateway's `ORDER_SERVICE_URL`.
    pub order_url: String,
    /// The orchestrator's `INVENTORY_URL` (catalogue prices).
    pub inventory_url: String,
    /// Payment simulation.
    pub payment: PaymentConfig,
    /// Order fault injection.
    pub order: OrderConfig,
    /// Orchestrator settings.
    pub orchestrator: OrchestratorConfig,
    /// Saga timing.
    pub timing: Timing,
    /// Gateway body limit.
    pub max_body_bytes: usize,
    /// `DB_MAX_CONNECTIONS`: the size of this service's database pool.
    pub db_max_connections: u32,
}

/// Runs one service until `shutdown`.
///
/// # Errors
/// Missing configuration, unreachable infrastructure, or a service failure.
pub async fn run_service(
    service: Service,
    config: ServiceConfig,
    shutdown: Shutdown,
) -> Result<()> {
    let (listener, addr) = bind(config.bind, config.port, service_name(service)).await?;
    let mut tasks = JoinSet::new();
    let needs = |what: &str, value: &Option<String>| -> Result<String> {
        value.clone().ok_or_else(|| {
            Error::Config(format!(
                "{} needs {what}; run `checkout-app all` for the single-process embedded mode",
                service_name(service)
            ))
        })
    };
    match service {
        Service::Gateway => {
            let gateway = GatewayConfig {
                orchestrator_url: config.orchestrator_url.clone(),
                order_url: config.order_url.clone(),
                limits: config.orchestrator.limits,
                max_body_bytes: config.max_body_bytes,
                upstream_timeout: config.orchestrator.wait + std::time::Duration::from_secs(10),
            };
            serve(
                &mut tasks,
                "api-gateway",
                listener,
                crate::gateway::router(gateway)?,
                &shutdown,
            );
        }
        Service::Orchestrator => {
            let db_url = needs("DB_URL", &config.db_url)?;
            let transport = transport(Some(&needs("RABBITMQ_URL", &config.rabbitmq_url)?)).await?;
            let database = db_url
                .rsplit('/')
                .next()
                .unwrap_or("orchestrator")
                .split('?')
                .next()
                .unwrap_or("orchestrator")
                .to_owned();
            let store =
                saga_store_with_pool(Some(&db_url), &database, config.db_max_connections).await?;
            let engine = orchestrator_engine(store, transport, config.timing)?;
            let orchestrator = Orchestrator::new(
                engine.clone(),
                crate::saga::definition(config.timing)?,
                Catalogue::new(config.inventory_url.clone())?,
                config.orchestrator.clone(),
            );
            run_engine(&mut tasks, &engine, &shutdown);
            serve(
                &mut tasks,
                "orchestrator",
                listener,
                crate::orchestrator::router(orchestrator),
                &shutdown,
            );
        }
        Service::Order | Service::Inventory | Service::Payment => {
            let db_url = needs("DB_URL", &config.db_url)?;
            let transport = transport(Some(&needs("RABBITMQ_URL", &config.rabbitmq_url)?)).await?;
            let db = db::connect(&db_url, config.db_max_connections).await?;
            let (participant, router) = match service {
                Service::Order => {
                    order::migrate(&db).await?;
                    (
                        order::participant(db.clone(), config.order),
                        order::router(db),
                    )
                }
                Service::Inventory => {
                    inventory::migrate(&db).await?;
                    (inventory::participant(db.clone()), inventory::router(db))
                }
                _ => {
                    payment::migrate(&db).await?;
                    (
                        payment::participant(db.clone(), config.payment),
                        payment::router(db),
                    )
                }
            };
            participate(&mut tasks, participant, &transport, &shutdown);
            serve(
                &mut tasks,
                service_name(service),
                listener,
                router,
                &shutdown,
            );
        }
    }
    tracing::info!(service = service_name(service), %addr, "started");
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::Config(format!("a task panicked: {e}")))??;
    }
    Ok(())
}

/// The service's name in logs.
#[must_use]
pub fn service_name(service: Service) -> &'static str {
    match service {
        Service::Gateway => "api-gateway",
        Service::Orchestrator => "orchestrator",
        Service::Order => "order-service",
        Service::Inventory => "inventory-service",
        Service::Payment => "payment-service",
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_part_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "orders"),
            "postgres://u:p@h:5432/orders"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "orders"),
            "postgres://u@h:5432/orders"
        );
        assert_eq!(
            with_database("postgres://h/x?sslmode=disable", "inventory"),
            "postgres://h/inventory?sslmode=disable"
        );
    }
}
