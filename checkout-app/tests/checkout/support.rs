//! Shared helpers of the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use checkout_app::runtime::{RunningStack, Shutdown, StackConfig, start_all};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_kit::cluster::Binary;
pub use test_kit::infra::{Infra, stack_config as config};

/// The seed guide's product with ample stock.
pub const PRODUCT: &str = "660facf7-b9cf-417a-8ee1-27afe2fb2c72";
/// The seed guide's "Limited Stock Item" (5 units, 19.99).
pub const LIMITED: &str = "dda60f33-8dfd-4da2-96c8-1a029d72725a";

/// This build's `checkout-app` binary, for the fault suite's processes.
pub fn binary() -> Binary {
    Binary::new(
        env!("CARGO_BIN_EXE_checkout-app"),
        env!("CARGO_TARGET_TMPDIR"),
    )
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

/// GET `path` from one service's own HTTP API.
pub async fn service_get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("service answers");
    let status = response.status();
    (status, response.json().await.expect("JSON"))
}

/// The seed guide's request body.
pub fn order(product: &str, quantity: i64, price: &str) -> Value {
    json!({ "userId": "user-123", "items": [{ "productId": product, "quantity": quantity, "price": price }] })
}

pub use test_kit::infra::with_fresh_postgres;

/// The first delivery of `command` for step `step` of saga `saga_id`, to
/// `endpoint`, as the orchestrator sends it.
pub fn command_message<C: saga_core::Command>(
    endpoint: &str,
    command: &C,
    saga_id: saga_core::SagaId,
    step: &str,
    direction: saga_core::Direction,
) -> saga_core::adapter::CommandMessage {
    saga_core::adapter::CommandMessage {
        message_id: format!("{saga_id}:{step}:{direction}:1"),
        idempotency_key: saga_core::IdempotencyKey::new(saga_id, step, direction),
        saga_id,
        saga_type: "checkout".into(),
        step: 1,
        step_name: step.into(),
        direction,
        attempt: 1,
        endpoint: endpoint.into(),
        command: C::NAME.into(),
        payload: serde_json::to_value(command).expect("commands serialize"),
        reply_to: Some("checkout_replies".into()),
        headers: Default::default(),
    }
}

/// Hands every message to `participant` at once, each from its own task;
/// returns the outcomes in the order of `messages`.
pub async fn handle_concurrently(
    participant: &saga_core::Participant,
    messages: Vec<saga_core::adapter::CommandMessage>,
) -> Vec<saga_core::adapter::ReplyOutcome> {
    let tasks: Vec<_> = messages
        .into_iter()
        .map(|message| {
            let participant = participant.clone();
            tokio::spawn(async move { participant.handle(&message, 1).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        let reply = task.await.expect("task").expect("handled");
        assert_eq!(reply.reply_to.as_deref(), Some("checkout_replies"));
        outcomes.push(reply.outcome);
    }
    outcomes
}
