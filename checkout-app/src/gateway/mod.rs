//! The API gateway (port 3000): the public entry point.
//!
//! It validates requests (shape, sizes, the `Idempotency-Key` header) so that
//! bad input is refused before anything is written, then forwards to the
//! orchestrator (`ORCHESTRATOR_URL`), the order service (`ORDER_SERVICE_URL`)
//! and the inventory service (`INVENTORY_URL`).
//!
//! | route | does |
//! |---|---|
//! | `POST /api/checkout` | validate, forward to `POST {orchestrator}/checkouts` |
//! | `GET /api/products` | the catalogue (id, name, price, stock), from the inventory service |
//! | `GET /api/orders/{id}` | the order, from the order service |
//! | `GET /api/sagas/{id}` | the saga's state and log timeline, from the orchestrator |
//! | `GET /health` | liveness |

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::http::{ApiError, AppJson};
use crate::request::{self, Limits};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The orchestrator's base URL.
    pub orchestrator_url: String,
    /// The order service's base URL.
    pub order_url: String,
    /// The inventory service's base URL (the catalogue).
    pub inventory_url: String,
    /// Request limits.
    pub limits: Limits,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// How long to wait for the orchestrator (its own wait plus a margin).
    pub upstream_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            orchestrator_url: "http://127.0.0.1:3004".to_owned(),
            order_url: "http://127.0.0.1:3001".to_owned(),
            inventory_url: "http://127.0.0.1:3002".to_owned(),
            limits: Limits::default(),
            max_body_bytes: 64 * 1024,
            upstream_timeout: Duration::from_secs(30),
        }
    }
}

impl GatewayConfig {
    /// The gateway in front of an orchestrator configured as `orchestrator`:
    /// the same request limits, and an upstream timeout of the orchestrator's
    /// wait plus 10 s, so the orchestrator's own answer (202 when the saga
    /// is still running) arrives first.
    #[must_use]
    pub fn in_front_of(
        orchestrator: &crate::orchestrator::OrchestratorConfig,
        max_body_bytes: usize,
        orchestrator_url: String,
        order_url: String,
        inventory_url: String,
    ) -> Self {
        Self {
            orchestrator_url,
            order_url,
            inventory_url,
            limits: orchestrator.limits,
            max_body_bytes,
            upstream_timeout: orchestrator.wait + Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
struct Gateway {
    http: reqwest::Client,
    config: GatewayConfig,
}

/// The gateway's routes.
///
/// # Errors
/// When the HTTP client cannot be built.
pub fn router(config: GatewayConfig) -> Result<Router> {
    let http = reqwest::Client::builder()
        .timeout(config.upstream_timeout)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))?;
    let limit = config.max_body_bytes;
    let state = Gateway { http, config };
    Ok(Router::new()
        .route("/api/checkout", post(checkout))
        .route("/api/products", get(products))
        .route("/api/orders/{id}", get(order))
        .route("/api/sagas/{id}", get(saga))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
        .merge(crate::http::health("api-gateway")))
}

async fn checkout(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    AppJson(body): AppJson<Value>,
) -> Result<Response, ApiError> {
    // Refuse bad input here, before anything reaches the orchestrator.
    let request = request::parse(&body, &gateway.config.limits).map_err(ApiError::bad_request)?;
    let key = crate::orchestrator::idempotency_key(&headers)?;
    let mut forward = gateway
        .http
        .post(format!("{}/checkouts", gateway.config.orchestrator_url))
        .json(&request);
    if let Some(key) = key {
        forward = forward.header("idempotency-key", key);
    }
    relay("orchestrator", forward.send().await).await
}

/// The catalogue as clients see it: each product's id, name, price (a
/// decimal string) and units in stock, by name.
async fn products(State(gateway): State<Gateway>) -> Result<Response, ApiError> {
    let url = format!("{}/products", gateway.config.inventory_url);
    let response = gateway
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("inventory service: {e}")))?;
    if !response.status().is_success() {
        return relay("inventory service", Ok(response)).await;
    }
    let listed: Vec<Value> = response.json().await.map_err(|e| {
        ApiError::unavailable(format!(
            "inventory service answered without a product list: {e}"
        ))
    })?;
    let products: Vec<Value> = listed
        .iter()
        .map(|p| {
            serde_json::json!({
                "id": p["id"],
                "name": p["name"],
                "price": p["price"],
                "stock": p["stock"],
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "products": products })).into_response())
}

async fn order(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not an order id (a UUID)")))?;
    let url = format!("{}/orders/{id}", gateway.config.order_url);
    relay("order service", gateway.http.get(url).send().await).await
}

async fn saga(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a saga id (a UUID)")))?;
    let url = format!("{}/sagas/{id}", gateway.config.orchestrator_url);
    relay("orchestrator", gateway.http.get(url).send().await).await
}

/// Passes an upstream JSON response through with its status.
async fn relay(
    service: &'static str,
    response: reqwest::Result<reqwest::Response>,
) -> Result<Response, ApiError> {
    let response = response.map_err(|e| ApiError::unavailable(format!("{service}: {e}")))?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = response
        .json()
        .await
        .map_err(|e| ApiError::unavailable(format!("{service} answered without JSON: {e}")))?;
    Ok((status, Json(body)).into_response())
}
