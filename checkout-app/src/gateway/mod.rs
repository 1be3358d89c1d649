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
//! | `GET /api/docs` | the API docs page; the OpenAPI document at `GET /api/docs/openapi.json` |
//!
//! Every route is declared with `#[utoipa::path]` and added by [`routes`]'s
//! `routes!` list, which builds the router and the OpenAPI document together.
//!
//! What keeps it answering when things go wrong:
//! - `ORCHESTRATOR_URL` may list several orchestrators: checkouts and saga
//!   reads are spread over them, each behind a circuit breaker, and a request
//!   one of them fails is sent to the next with the same `Idempotency-Key`
//!   (module `upstream`, [`RetryPolicy`]); every checkout carries a key, the
//!   client's or one the gateway makes.
//! - A rate limit per client and overall answers `429` with `Retry-After`
//!   (module `rate_limit`, [`RateLimitConfig`]; off by default).

mod rate_limit;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub use rate_limit::{RATE_LIMITED_TOTAL, RateLimitConfig};
pub use upstream::RetryPolicy;

use crate::breaker::BreakerConfig;
use crate::error::{Error, Result};
use crate::http::{ApiError, AppJson, ErrorBody};
use crate::orchestrator::{CheckoutOutcome, CheckoutRefused, IdempotencyKey, Product, SagaDetail};
use crate::order::OrderView;
use crate::request::{self, CheckoutRequest, Limits};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The orchestrator's base URL, or several, comma-separated.
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
    /// Trying a request again on another orchestrator.
    pub retry: RetryPolicy,
    /// Each orchestrator's circuit breaker.
    pub breaker: BreakerConfig,
    /// The rate limits.
    pub rate_limit: RateLimitConfig,
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
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The gateway in front of an orchestrator configured as `orchestrator`:
    /// the same request limits, and an upstream timeout of the orchestrator's
    /// wait plus 10 s, so the orchestrator's own answer (202 when the saga
    /// is still running) arrives first, and the same circuit breaker
    /// settings; the default retry policy and no rate limit.
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
            retry: RetryPolicy::default(),
            breaker: orchestrator.breaker,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

#[derive(Clone)]
struct Gateway {
    http: reqwest::Client,
    orchestrators: upstream::Orchestrators,
    config: GatewayConfig,
}

/// The document's title, description and tags; the paths come from [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "checkout API",
        description = "The public API of the reference checkout, served by its gateway \
            (port 3000): place an order, follow it and its saga, read the catalogue. \
            Every error answers `{\"success\":false,\"error\":\"<code>\",\"message\":\"...\"}` \
            (`ErrorBody`), unknown routes (404) and methods (405) included.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "checkout", description = "Place an order"),
        (name = "catalogue", description = "Products, prices and stock"),
        (name = "orders", description = "Orders"),
        (name = "sagas", description = "The saga behind a checkout"),
        (name = "health", description = "Liveness")
    )
)]
struct GatewayApi;

/// The gateway's routes, documented. To add a route, write its handler with
/// `#[utoipa::path]` and add one `.routes(routes!(handler))` line here.
fn routes() -> OpenApiRouter<Gateway> {
    OpenApiRouter::with_openapi(GatewayApi::openapi())
        .routes(routes!(checkout))
        .routes(routes!(products))
        .routes(routes!(order))
        .routes(routes!(saga))
        .merge(crate::http::health_routes("api-gateway"))
}

/// The gateway's OpenAPI document (served at `GET /api/docs/openapi.json`),
/// with the default request limits; the served document states the
/// gateway's configured ones.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = routes().into_openapi();
    request::describe_limits(&mut openapi, &Limits::default());
    openapi
}

/// How long the gateway waits for a connection to an upstream service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The gateway's routes: those of [`openapi`], plus the docs page at
/// `GET /api/docs` and the document at `GET /api/docs/openapi.json`.
///
/// # Errors
/// When the HTTP client cannot be built or `orchestrator_url` names no URL.
pub fn router(config: GatewayConfig) -> Result<Router> {
    let http = reqwest::Client::builder()
        .timeout(config.upstream_timeout)
        // A host that is gone (no RST) must not hold a checkout for the
        // whole timeout: a connection not made in time is tried elsewhere.
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))?;
    let limit = config.max_body_bytes;
    let limits = config.limits;
    let orchestrators = upstream::Orchestrators::new(
        &config.orchestrator_url,
        http.clone(),
        config.retry,
        config.breaker,
    )?;
    let limiter = Arc::new(rate_limit::RateLimiter::new(config.rate_limit));
    let state = Gateway {
        http,
        orchestrators,
        config,
    };
    let (router, mut openapi) = routes()
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            rate_limit::enforce,
        ))
        .with_state(state)
        .split_for_parts();
    request::describe_limits(&mut openapi, &limits);
    Ok(router.merge(crate::api_docs::router(
        "/api/docs",
        "checkout API",
        openapi,
    )))
}

/// An order or saga id path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // describes the parameter; the handlers parse it themselves (400 on a bad id)
struct IdParam {
    /// The id (a UUID).
    id: Uuid,
}

/// The catalogue, as `GET /api/products` answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    /// Every product, with its price and the units in stock.
    pub products: Vec<Product>,
}

/// Places an order.
///
/// Validates the request, then runs the checkout saga (create order, reserve
/// inventory, process payment, confirm order) and answers with its outcome.
/// Prices come from the catalogue: a `price` that differs is refused, never
/// charged. Every answer to a valid request carries the `Idempotency-Key`
/// in force in a response header (the client's, or one the gateway made for
/// a request without one): retrying with it after a 503 gets this checkout
/// instead of placing a second order (a client that may get no answer at
/// all sends its own key). Reusing a key for a
/// different cart is refused (`422`, `idempotency_key_reused`).
#[utoipa::path(
    post,
    path = "/api/checkout",
    tag = "checkout",
    operation_id = "checkout",
    request_body = CheckoutRequest,
    params(IdempotencyKey),
    responses(
        (status = 200, description = "The order is placed (`success: true`)", body = CheckoutOutcome),
        (status = 202, description = "The saga is still running after the orchestrator's wait (`success: null`); follow `GET /api/sagas/{sagaId}`", body = CheckoutOutcome),
        (status = 400, description = "The body is not valid JSON or not a valid request, or the Idempotency-Key header is invalid; nothing is created", body = ErrorBody),
        (status = 413, description = "The body is too large (64 KiB by default)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Refused before the saga (an unknown product, a price that differs from the catalogue, an Idempotency-Key already used for a different cart (`idempotency_key_reused`): `ErrorBody`), or the saga compensated (insufficient stock, a declined payment: `CheckoutOutcome` with `success: false`, the order cancelled)", body = CheckoutRefused),
        (status = 500, description = "The saga could neither complete nor compensate and needs an operator (`CheckoutOutcome`), or an internal error (`ErrorBody`)", body = CheckoutRefused),
        (status = 429, description = "Over the rate limit, per client or overall (`rate_limited`); try again after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "A service or the store or the broker is unavailable, every orchestrator's circuit breaker is open (with `Retry-After`), or the orchestrators are at their bound of checkouts in flight (`overloaded`, with `Retry-After`); try again (with the same Idempotency-Key)", body = ErrorBody)
    )
)]
async fn checkout(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    AppJson(body): AppJson<Value>,
) -> Result<Response, ApiError> {
    // Refuse bad input here, before anything reaches the orchestrator.
    let request = request::parse(&body, &gateway.config.limits).map_err(ApiError::bad_request)?;
    // Every checkout carries a key, so that a try the gateway repeats on
    // another orchestrator returns the first try's saga instead of a second.
    let key = crate::orchestrator::idempotency_key(&headers)?
        .unwrap_or_else(|| format!("gw-{}", Uuid::new_v4()));
    let body = serde_json::to_value(&request).map_err(ApiError::internal)?;
    let call = upstream::Call::Post {
        path: "/checkouts",
        body: &body,
        key: &key,
    };
    let mut response = match gateway.orchestrators.call(&call, &trace_headers()).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // The key in force, also one the gateway made up: a client that retries
    // an unanswered or failed checkout with it gets that checkout, not a
    // second order (a 503 after the saga was started, say).
    if let Ok(value) = HeaderValue::from_str(&key) {
        response.headers_mut().insert(IDEMPOTENCY_KEY, value);
    }
    Ok(response)
}

/// The header a checkout's key comes in, and goes back in.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The current span's trace context as HTTP headers.
fn trace_headers() -> HeaderMap {
    let mut trace = HeaderMap::new();
    crate::telemetry::inject_http(&tracing::Span::current(), &mut trace);
    trace
}

/// The catalogue.
///
/// Each product's id, name, price (a decimal string) and units in stock.
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "catalogue",
    operation_id = "listProducts",
    responses(
        (status = 200, description = "The catalogue", body = ProductList),
        (status = 429, description = "Over the rate limit (`rate_limited`); try again after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "The inventory service is unavailable", body = ErrorBody)
    )
)]
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
    let products: Vec<Product> = response.json().await.map_err(|e| {
        ApiError::unavailable(format!(
            "inventory service answered without a product list: {e}"
        ))
    })?;
    Ok(Json(ProductList { products }).into_response())
}

/// An order.
///
/// The order and its lines, from the order service.
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    operation_id = "getOrder",
    params(IdParam),
    responses(
        (status = 200, description = "The order: `PENDING`, `CONFIRMED` or `CANCELLED`", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 429, description = "Over the rate limit (`rate_limited`); try again after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "The order service is unavailable", body = ErrorBody)
    )
)]
async fn order(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not an order id (a UUID)")))?;
    let url = format!("{}/orders/{id}", gateway.config.order_url);
    relay("order service", gateway.http.get(url).send().await).await
}

/// The saga behind a checkout.
///
/// Its status, steps, ordered audit log and a Mermaid diagram, from the orchestrator.
#[utoipa::path(
    get,
    path = "/api/sagas/{id}",
    tag = "sagas",
    operation_id = "getSaga",
    params(IdParam),
    responses(
        (status = 200, description = "The saga, its ordered log and a diagram", body = SagaDetail),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such saga", body = ErrorBody),
        (status = 429, description = "Over the rate limit (`rate_limited`); try again after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "No orchestrator is available", body = ErrorBody)
    )
)]
async fn saga(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a saga id (a UUID)")))?;
    let path = format!("/sagas/{id}");
    let call = upstream::Call::Get { path: &path };
    gateway.orchestrators.call(&call, &trace_headers()).await
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

#[cfg(test)]
mod tests;
