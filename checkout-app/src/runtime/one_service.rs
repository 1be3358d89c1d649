//! One service per process (`checkout-app order-service`, ...), configured
//! by the seed guide's environment variables.

use std::net::IpAddr;
use std::time::Duration;

use tokio::task::JoinSet;

use super::Shutdown;
use super::infra::{RabbitTuning, Storage, database_of, saga_store_with_pool, transport};
use super::tasks::{bind, orchestrator_engine, participate, run_engine, serve};
use crate::error::{Error, Result};
use crate::gateway::{GatewayConfig, RateLimitConfig, RetryPolicy};
use crate::orchestrator::{Catalogue, Orchestrator, OrchestratorConfig};
use crate::order::OrderConfig;
use crate::payment::PaymentConfig;
use crate::saga::Timing;
use crate::{db, inventory, order, payment};

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
    /// `RABBITMQ_PREFETCH`, `RABBITMQ_MAX_DELIVERIES`, `RABBITMQ_QUEUE_TYPE`.
    pub rabbitmq_tuning: RabbitTuning,
    /// The gateway's `ORCHESTRATOR_URL`.
    pub orchestrator_url: String,
    /// The gateway's `ORDER_SERVICE_URL`.
    pub order_url: String,
    /// `INVENTORY_URL`: the catalogue (the orchestrator's prices, the gateway's `/api/products`).
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
    /// `SAGA_RETENTION` (the orchestrator): how long finished sagas are kept.
    pub saga_retention: Option<Duration>,
    /// `INBOX_RETENTION` (the participants): how long tombstones are kept.
    pub inbox_retention: Option<Duration>,
    /// The gateway's retries on another orchestrator (`ORCHESTRATOR_ATTEMPTS`, ...).
    pub gateway_retry: RetryPolicy,
    /// The gateway's rate limits (`RATE_LIMIT_*`).
    pub rate_limit: RateLimitConfig,
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
                retry: config.gateway_retry,
                rate_limit: config.rate_limit,
                ..GatewayConfig::in_front_of(
                    &config.orchestrator,
                    config.max_body_bytes,
                    config.orchestrator_url.clone(),
                    config.order_url.clone(),
                    config.inventory_url.clone(),
                )
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
            let transport = transport(
                Some(&needs("RABBITMQ_URL", &config.rabbitmq_url)?),
                config.rabbitmq_tuning,
            )
            .await?;
            let database = database_of(&db_url)?;
            let store = saga_store_with_pool(
                &Storage::Postgres(db_url.clone()),
                &database,
                config.db_max_connections,
            )
            .await?;
            let engine =
                orchestrator_engine(store, transport, config.timing, config.saga_retention)?;
            let orchestrator = Orchestrator::new(
                engine.clone(),
                crate::saga::definition(config.timing)?,
                Catalogue::new(config.inventory_url.clone())?
                    .with_breaker(config.orchestrator.breaker),
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
            let transport = transport(
                Some(&needs("RABBITMQ_URL", &config.rabbitmq_url)?),
                config.rabbitmq_tuning,
            )
            .await?;
            let db = db::connect(&db_url, config.db_max_connections).await?;
            let (participant, router) = match service {
                Service::Order => {
                    order::migrate(&db).await?;
                    (
                        order::participant_with(db.clone(), config.order, config.inbox_retention)?,
                        order::router(db),
                    )
                }
                Service::Inventory => {
                    inventory::migrate(&db).await?;
                    (
                        inventory::participant_with(db.clone(), config.inbox_retention)?,
                        inventory::router(db),
                    )
                }
                _ => {
                    payment::migrate(&db).await?;
                    (
                        payment::participant_with(
                            db.clone(),
                            config.payment,
                            config.inbox_retention,
                        )?,
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
