//! The whole stack in one process: all five services as tasks, every
//! listener bound first so a stack on port 0 (tests, the bench) knows each
//! address before a service needs another's URL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use saga_core::Engine;
use sea_orm::DatabaseConnection;
use tokio::task::JoinSet;

use super::Shutdown;
use super::data_lock::{DataDirLock, lock_data_dir};
use super::infra::{Databases, RabbitTuning, Storage, saga_store, service_db, transport};
use super::tasks::{bind, orchestrator_engine, participate, run_engine, serve, url};
use crate::error::{Error, Result};
use crate::gateway::{GatewayConfig, RateLimitConfig, RetryPolicy};
use crate::orchestrator::{Catalogue, Orchestrator, OrchestratorConfig};
use crate::order::OrderConfig;
use crate::payment::PaymentConfig;
use crate::saga::Timing;
use crate::{inventory, order, payment};

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

/// Everything needed to run the stack.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The address services bind (127.0.0.1 unless configured).
    pub bind: IpAddr,
    /// Service ports.
    pub ports: Ports,
    /// A PostgreSQL server URL whose database part is replaced by each
    /// service's database; `None` runs embedded: on SQLite files in
    /// `data_dir`, or in memory.
    pub postgres: Option<String>,
    /// Without `postgres`: the folder of the embedded SQLite files (kept
    /// across restarts); `None`, the default here: in memory.
    pub data_dir: Option<PathBuf>,
    /// Database names on that server.
    pub databases: Databases,
    /// RabbitMQ URL; `None` uses the in-process transport.
    pub rabbitmq: Option<String>,
    /// RabbitMQ tuning.
    pub rabbitmq_tuning: RabbitTuning,
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
    /// How long the orchestrator keeps completed and compensated sagas
    /// (`SAGA_RETENTION`; `None`, the default here: forever).
    pub saga_retention: Option<Duration>,
    /// How long the participants keep their tombstones (`INBOX_RETENTION`;
    /// `None`, the default here: forever).
    pub inbox_retention: Option<Duration>,
    /// The gateway's retries on another orchestrator (`ORCHESTRATOR_ATTEMPTS`, ...).
    pub gateway_retry: RetryPolicy,
    /// The gateway's rate limits (`RATE_LIMIT_*`; off by default).
    pub rate_limit: RateLimitConfig,
}

impl StackConfig {
    /// Where this stack keeps its data: `postgres`, else `data_dir`, else memory.
    #[must_use]
    pub fn storage(&self) -> Storage {
        match (&self.postgres, &self.data_dir) {
            (Some(url), _) => Storage::Postgres(url.clone()),
            (None, Some(folder)) => Storage::Files(folder.clone()),
            (None, None) => Storage::Memory,
        }
    }
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: Ports::default(),
            postgres: None,
            data_dir: None,
            databases: Databases::default(),
            rabbitmq: None,
            rabbitmq_tuning: RabbitTuning::default(),
            payment: PaymentConfig::default(),
            order: OrderConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            timing: Timing::default(),
            max_body_bytes: GatewayConfig::default().max_body_bytes,
            seed: true,
            saga_retention: None,
            inbox_retention: None,
            gateway_retry: RetryPolicy::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
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
    /// Held while the stack runs on a data folder.
    _data_lock: Option<DataDirLock>,
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

/// Starts all five services in this process. On a data folder, holds its
/// lock (see [`lock_data_dir`]) until the stack is dropped.
///
/// # Errors
/// When another process runs on the data folder, a port is taken or a
/// database or broker is unreachable.
pub async fn start_all(config: StackConfig, shutdown: Shutdown) -> Result<RunningStack> {
    let storage = config.storage();
    storage.prepare()?;
    let data_lock = match &storage {
        Storage::Files(folder) => Some(lock_data_dir(folder)?),
        Storage::Postgres(_) | Storage::Memory => None,
    };
    let ip = config.bind;
    let (gateway_listener, gateway) = bind(ip, config.ports.gateway, "api-gateway").await?;
    let (order_listener, order_addr) = bind(ip, config.ports.order, "order-service").await?;
    let (inventory_listener, inventory_addr) =
        bind(ip, config.ports.inventory, "inventory-service").await?;
    let (payment_listener, payment_addr) =
        bind(ip, config.ports.payment, "payment-service").await?;
    let (orchestrator_listener, orchestrator_addr) =
        bind(ip, config.ports.orchestrator, "orchestrator").await?;

    let pg = &storage;
    let transport = transport(config.rabbitmq.as_deref(), config.rabbitmq_tuning).await?;
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
        order::participant_with(order_db.clone(), config.order, config.inbox_retention)?,
        &transport,
        &shutdown,
    );
    participate(
        &mut tasks,
        inventory::participant_with(inventory_db.clone(), config.inbox_retention)?,
        &transport,
        &shutdown,
    );
    participate(
        &mut tasks,
        payment::participant_with(payment_db.clone(), config.payment, config.inbox_retention)?,
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

    let engine = orchestrator_engine(
        store,
        Arc::clone(&transport),
        config.timing,
        config.saga_retention,
    )?;
    let orchestrator = Orchestrator::new(
        engine.clone(),
        crate::saga::definition(config.timing)?,
        Catalogue::new(url(inventory_addr))?.with_breaker(config.orchestrator.breaker),
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
        retry: config.gateway_retry,
        rate_limit: config.rate_limit,
        ..GatewayConfig::in_front_of(
            &config.orchestrator,
            config.max_body_bytes,
            url(orchestrator_addr),
            url(order_addr),
            url(inventory_addr),
        )
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
        _data_lock: data_lock,
    })
}
