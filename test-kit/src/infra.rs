//! Real PostgreSQL and RabbitMQ for one test: fresh databases (a name
//! prefix of its own) and a fresh vhost, removed again by [`Infra::cleanup`].
//!
//! Environment: `SAGA_TEST_DATABASE_URL` (an admin URL; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `SAGA_TEST_AMQP_URL` and
//! `SAGA_TEST_RABBITMQ_API` (see [`crate::rabbitmq`]). A missing server fails
//! the test with a message that says how to start it.

use std::time::Duration;

use checkout_app::runtime::{Databases, Ports, StackConfig};
use sea_orm::ConnectionTrait;
use serde_json::Value;

use crate::rabbitmq::{self, Management};

/// The variable naming the PostgreSQL admin URL in tests.
pub const DATABASE_ENV: &str = "SAGA_TEST_DATABASE_URL";
/// The PostgreSQL server when [`DATABASE_ENV`] is unset.
pub const DEFAULT_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL admin URL from [`DATABASE_ENV`], else [`DEFAULT_DATABASE`].
#[must_use]
pub fn database_from_env() -> String {
    std::env::var(DATABASE_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned())
}

/// Runs `test` against a fresh PostgreSQL database (`checkout_test_<uuid>`, a
/// pool of `connections` connections, nothing migrated), then drops it (also
/// when the test panics). [`DATABASE_ENV`] names the admin URL; the test
/// fails, never skips, when the server is unreachable.
///
/// # Panics
/// When PostgreSQL is unreachable, or with the test's own panic.
pub async fn with_fresh_postgres<F, Fut>(connections: u32, test: F)
where
    F: FnOnce(sea_orm::DatabaseConnection) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let admin_url = database_from_env();
    let admin = checkout_app::db::connect(&admin_url, 1)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {}: {e}\nThese tests need a real server: start one \
                 or point SAGA_TEST_DATABASE_URL at an admin URL.",
                checkout_app::db::redact(&admin_url)
            )
        });
    let name = format!("checkout_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    let db = checkout_app::db::connect(
        &checkout_app::runtime::with_database(&admin_url, &name),
        connections,
    )
    .await
    .expect("connect to the test database");

    let outcome = tokio::spawn(test(db.clone())).await;

    let _ = db.close().await;
    let _ = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A stack on ephemeral ports with short timings, no declined payments:
/// the end-to-end tests' stack.
#[must_use]
pub fn stack_config() -> StackConfig {
    let mut config = StackConfig {
        ports: Ports::ephemeral(),
        ..StackConfig::default()
    };
    config.payment.failure_rate = 0.0;
    config.orchestrator.wait = Duration::from_secs(20);
    config.timing.step_timeout = Duration::from_secs(3);
    config
}

/// Real Postgres and RabbitMQ for one test.
#[derive(Debug)]
pub struct Infra {
    /// The PostgreSQL server (admin URL).
    pub postgres: String,
    /// The AMQP URL of this test's vhost (several comma-separated on a
    /// RabbitMQ cluster: one per node).
    pub amqp: String,
    /// The brokers' base AMQP URLs (one, or one per node of a cluster).
    pub brokers: Vec<String>,
    /// This test's vhost.
    pub vhost: String,
    /// The prefix of this test's database names.
    pub prefix: String,
    /// The RabbitMQ management API.
    pub api: Management,
}

impl Infra {
    /// Creates a vhost; the stack creates its databases on first connect.
    ///
    /// # Panics
    /// With a clear message when RabbitMQ's management API is unreachable.
    pub async fn new(name: &str) -> Self {
        Self::on_brokers(
            name,
            Management::from_env(),
            vec![rabbitmq::amqp_from_env()],
        )
        .await
    }

    /// Like [`Infra::new`], on the brokers `brokers` (base AMQP URLs, one per
    /// node of a RabbitMQ cluster) managed through `api` (any node's).
    pub async fn on_brokers(name: &str, api: Management, brokers: Vec<String>) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let vhost = format!("checkout_{name}_{suffix}");
        api.create_vhost(&vhost).await;
        let amqp = brokers
            .iter()
            .map(|broker| rabbitmq::vhost_url(broker, &vhost))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            postgres: database_from_env(),
            amqp,
            brokers,
            vhost,
            prefix: format!("t{suffix}_"),
            api,
        }
    }

    /// The databases of a stack on this infrastructure.
    #[must_use]
    pub fn databases(&self) -> Databases {
        Databases::with_prefix(&self.prefix)
    }

    /// A stack config on this infrastructure ([`stack_config`] otherwise).
    #[must_use]
    pub fn config(&self) -> StackConfig {
        let mut config = stack_config();
        config.postgres = Some(self.postgres.clone());
        config.rabbitmq = Some(self.amqp.clone());
        config.databases = self.databases();
        config
    }

    /// The vhost's queues as the management API reports them.
    pub async fn queues(&self) -> Vec<Value> {
        self.api.queues(&self.vhost).await
    }

    /// The AMQP URL of this vhost for another user (comma-separated, one
    /// per broker, on a cluster).
    #[must_use]
    pub fn amqp_for(&self, user: &str, password: &str) -> String {
        self.brokers
            .iter()
            .map(|broker| rabbitmq::vhost_url_as(broker, &self.vhost, user, password))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Drops the databases and the vhost (best effort).
    pub async fn cleanup(self) {
        self.api.delete_vhost(&self.vhost).await;
        if let Ok(admin) = checkout_app::db::connect(&self.postgres, 1).await {
            for name in ["orders", "inventory", "payments", "orchestrator"] {
                let _ = admin
                    .execute_unprepared(&format!(
                        "DROP DATABASE IF EXISTS \"{}{name}\" WITH (FORCE)",
                        self.prefix
                    ))
                    .await;
            }
        }
    }
}
