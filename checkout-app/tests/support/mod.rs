//! Shared helpers of the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

pub mod processes;

use std::time::Duration;

use checkout_app::runtime::{Ports, RunningStack, Shutdown, StackConfig, start_all};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The seed guide's product with ample stock.
pub const PRODUCT: &str = "660facf7-b9cf-417a-8ee1-27afe2fb2c72";
/// The seed guide's "Limited Stock Item" (5 units, 19.99).
pub const LIMITED: &str = "dda60f33-8dfd-4da2-96c8-1a029d72725a";

/// A stack on ephemeral ports with short timings.
pub fn config() -> StackConfig {
    let mut config = StackConfig {
        ports: Ports::ephemeral(),
        ..StackConfig::default()
    };
    config.payment.failure_rate = 0.0;
    config.orchestrator.wait = Duration::from_secs(20);
    config.timing.step_timeout = Duration::from_secs(3);
    config
}

/// Starts a stack. `RUST_LOG` shows the services' logs (test output is captured).
pub async fn start(config: StackConfig) -> RunningStack {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    start_all(config, Shutdown::new())
        .await
        .expect("the stack starts")
}

/// A client for the gateway.
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(stack: &RunningStack) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: stack.gateway_url(),
        }
    }

    pub async fn checkout(&self, body: Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/checkout", self.base))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("gateway answers");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/api/checkout", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("gateway answers");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("gateway answers");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }
}

/// The seed guide's request body.
pub fn order(product: &str, quantity: i64, price: &str) -> Value {
    json!({ "userId": "user-123", "items": [{ "productId": product, "quantity": quantity, "price": price }] })
}

/// Real Postgres and RabbitMQ for one test: fresh databases and a fresh vhost,
/// removed again by [`Infra::cleanup`].
pub struct Infra {
    pub postgres: String,
    pub amqp: String,
    pub vhost: String,
    pub prefix: String,
    api: String,
    http: reqwest::Client,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Infra {
    /// Creates a vhost; the stack creates its databases on first connect.
    /// Panics with a clear message when RabbitMQ's management API is unreachable.
    pub async fn new(name: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let postgres = env_or(
            "SAGA_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let amqp_base = env_or(
            "SAGA_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let api = env_or(
            "SAGA_TEST_RABBITMQ_API",
            "http://guest:guest@127.0.0.1:15672/api",
        );
        let vhost = format!("checkout_{name}_{suffix}");
        let http = reqwest::Client::new();
        let response = http
            .put(format!("{}/vhosts/{vhost}", api_base(&api)))
            .basic_auth(api_user(&api).0, Some(api_user(&api).1))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ management API at {api} is unreachable ({e}); run ./scripts/services"
                )
            });
        assert!(
            response.status().is_success(),
            "creating vhost {vhost}: {}",
            response.status()
        );
        let amqp = match amqp_base.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{vhost}"),
            None => format!("{amqp_base}/{vhost}"),
        };
        Self {
            postgres,
            amqp,
            vhost,
            prefix: format!("t{suffix}_"),
            api,
            http,
        }
    }

    /// A stack config on this infrastructure.
    pub fn config(&self) -> StackConfig {
        let mut config = config();
        config.postgres = Some(self.postgres.clone());
        config.rabbitmq = Some(self.amqp.clone());
        config.databases = checkout_app::runtime::Databases::with_prefix(&self.prefix);
        config
    }

    /// The vhost's queues as the management API reports them.
    pub async fn queues(&self) -> Vec<Value> {
        let (user, pass) = api_user(&self.api);
        self.http
            .get(format!("{}/queues/{}", api_base(&self.api), self.vhost))
            .basic_auth(user, Some(pass))
            .send()
            .await
            .expect("management API")
            .json()
            .await
            .expect("JSON")
    }

    /// The AMQP URL of this vhost for another user.
    pub fn amqp_for(&self, user: &str, password: &str) -> String {
        let base = env_or(
            "SAGA_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let host = match (base.find("://"), base.rfind('@')) {
            (Some(_), Some(at)) => base[at + 1..].to_owned(),
            (Some(scheme), None) => base[scheme + 3..].to_owned(),
            _ => base.clone(),
        };
        let host = host
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:5672")
            .to_owned();
        format!("amqp://{user}:{password}@{host}/{}", self.vhost)
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (user, pass) = api_user(&self.api);
        let mut request = self
            .http
            .request(method.clone(), format!("{}/{path}", api_base(&self.api)))
            .basic_auth(user, Some(pass));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ management API {method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success()
                || (method == reqwest::Method::DELETE && status == StatusCode::NOT_FOUND),
            "RabbitMQ management API {method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// GET on the management API.
    pub async fn api_get(&self, path: &str) -> Value {
        self.api(reqwest::Method::GET, path, None).await
    }

    /// PUT on the management API.
    pub async fn api_put(&self, path: &str, body: Value) -> Value {
        self.api(reqwest::Method::PUT, path, Some(body)).await
    }

    /// POST on the management API.
    pub async fn api_post(&self, path: &str, body: Value) -> Value {
        self.api(reqwest::Method::POST, path, Some(body)).await
    }

    /// DELETE on the management API (a missing object is fine).
    pub async fn api_delete(&self, path: &str) -> Value {
        self.api(reqwest::Method::DELETE, path, None).await
    }

    /// Drops the databases and the vhost (best effort).
    pub async fn cleanup(self) {
        let (user, pass) = api_user(&self.api);
        let _ = self
            .http
            .delete(format!("{}/vhosts/{}", api_base(&self.api), self.vhost))
            .basic_auth(user, Some(pass))
            .send()
            .await;
        if let Ok(admin) = checkout_app::db::connect(&self.postgres, 1).await {
            use sea_orm::ConnectionTrait;
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

fn api_base(api: &str) -> String {
    // http://user:pass@host:port/api -> http://host:port/api
    match (api.find("://"), api.rfind('@')) {
        (Some(scheme), Some(at)) => format!("{}{}", &api[..scheme + 3], &api[at + 1..]),
        _ => api.to_owned(),
    }
    .trim_end_matches('/')
    .to_owned()
}

fn api_user(api: &str) -> (String, String) {
    let credentials = match (api.find("://"), api.rfind('@')) {
        (Some(scheme), Some(at)) => &api[scheme + 3..at],
        _ => "guest:guest",
    };
    let (user, pass) = credentials.split_once(':').unwrap_or((credentials, ""));
    (user.to_owned(), pass.to_owned())
}
