//! The orchestrator's HTTP routes, each documented by its `#[utoipa::path]`:
//! [`routes`] builds the router and the OpenAPI document from the same list.

use std::time::Duration;

use axum::BoxError;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use saga_core::adapter::SagaQuery;
use saga_core::{SagaId, SagaInstance, SagaStatus, StartOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceBuilder;
use utoipa::{IntoParams, IntoResponses, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Orchestrator;
use super::views::{CheckoutOutcome, CheckoutRefused, SagaDetail, SagaList, SagaView};
use crate::api_docs::OperatorTokenScheme;
use crate::http::{ApiError, AppJson, AppQuery, ErrorBody};
use crate::messages::LineItem;
use crate::request::{self, CheckoutRequest};
use crate::saga::CheckoutData;

/// The document's title, description and tags; the paths come from [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "checkout orchestrator",
        description = "The orchestrator of the reference checkout (port 3004): starts checkout \
            sagas and serves their state and the operator actions (retry, cancel, resume), \
            which need `Authorization: Bearer <OPERATOR_TOKEN>`. Every error answers \
            `{\"success\":false,\"error\":\"<code>\",\"message\":\"...\"}` (`ErrorBody`), \
            unknown routes (404) and methods (405) included.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    modifiers(&OperatorTokenScheme),
    tags(
        (name = "checkout", description = "Start a checkout saga"),
        (name = "sagas", description = "Saga state and audit logs"),
        (name = "operator", description = "Operator actions (bearer token)"),
        (name = "health", description = "Liveness")
    )
)]
struct OrchestratorApi;

/// The orchestrator's routes, documented: `POST /checkouts`, `GET /sagas`,
/// `GET /sagas/{id}`, `POST /sagas/{id}/{retry|cancel|resume}`,
/// `POST /sagas/prune`, `GET /health`. To add a route, write its handler with `#[utoipa::path]` and add one
/// `.routes(routes!(handler))` line here.
pub(super) fn routes(max_in_flight: usize) -> OpenApiRouter<Orchestrator> {
    OpenApiRouter::with_openapi(OrchestratorApi::openapi())
        .merge(shed_checkouts(
            OpenApiRouter::new().routes(routes!(checkout)),
            max_in_flight,
        ))
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(retry))
        .routes(routes!(cancel))
        .routes(routes!(resume))
        .routes(routes!(prune))
        .merge(crate::http::health_routes("orchestrator"))
}

/// The orchestrator's OpenAPI document (served at `GET /docs/openapi.json`).
/// With the default request limits; the served document states the
/// orchestrator's configured ones.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = routes(0).into_openapi();
    request::describe_limits(&mut openapi, &request::Limits::default());
    openapi
}

/// The orchestrator's routes: those of [`openapi`], the docs page at
/// `GET /docs` and the document at `GET /docs/openapi.json`, and the
/// operator's web pages under `/ui` (module `ui`).
pub fn router(state: Orchestrator) -> Router {
    let limits = state.config.limits;
    let (router, mut openapi) = routes(state.config.max_in_flight)
        .with_state(state.clone())
        .split_for_parts();
    request::describe_limits(&mut openapi, &limits);
    router
        .merge(crate::api_docs::router(
            "/docs",
            "checkout orchestrator API",
            openapi,
        ))
        .merge(super::ui::router(state))
}

/// How long a client refused for overload is asked to wait.
const OVERLOAD_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Load shedding: `routes` handle at most `max_in_flight` requests at once
/// (tower's `ConcurrencyLimit`); one more is refused at once by `LoadShed`
/// with `503 overloaded` and `Retry-After`, before its handler runs. 0: no bound.
fn shed_checkouts(
    routes: OpenApiRouter<Orchestrator>,
    max_in_flight: usize,
) -> OpenApiRouter<Orchestrator> {
    if max_in_flight == 0 {
        return routes;
    }
    routes.route_layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |_: BoxError| async move {
                metrics::counter!(CHECKOUTS_SHED_TOTAL).increment(1);
                ApiError::overloaded(
                    format!(
                        "the orchestrator is handling its maximum of {max_in_flight} checkouts; \
                         try again shortly (with the same Idempotency-Key)"
                    ),
                    OVERLOAD_RETRY_AFTER,
                )
            }))
            .load_shed()
            .concurrency_limit(max_in_flight),
    )
}

/// Checkouts refused because `MAX_IN_FLIGHT` were being handled.
pub const CHECKOUTS_SHED_TOTAL: &str = "checkouts_shed_total";

/// The idempotency key header, validated.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > 200 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1-200 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Starts a checkout saga.
///
/// The gateway's `POST /api/checkout` forwards here. Prices the request from
/// the catalogue, starts the saga and waits for its outcome (`202` when it is
/// still running after the configured wait). A request with the
/// Idempotency-Key of a checkout already started is answered with that
/// checkout's saga, even when pricing it again would fail now.
#[utoipa::path(
    post,
    path = "/checkouts",
    tag = "checkout",
    operation_id = "startCheckout",
    request_body = CheckoutRequest,
    params(IdempotencyKey),
    responses(
        (status = 200, description = "The order is placed", body = CheckoutOutcome),
        (status = 202, description = "The saga is still running after the wait; follow `GET /sagas/{sagaId}`", body = CheckoutOutcome),
        (status = 400, description = "The body or the Idempotency-Key header is invalid", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Refused (unknown product, wrong price; `idempotency_key_reused` when the Idempotency-Key is another cart's checkout) or compensated (the order is cancelled)", body = CheckoutRefused),
        (status = 500, description = "The saga failed and needs an operator, or an internal error", body = CheckoutRefused),
        (status = 503, description = "The store, the broker or the inventory service is unavailable (`unavailable`; with `Retry-After` while the inventory's circuit breaker is open), or `MAX_IN_FLIGHT` checkouts are in flight (`overloaded`, with `Retry-After`): nothing was started, try again", body = ErrorBody)
    )
)]
async fn checkout(
    State(state): State<Orchestrator>,
    headers: HeaderMap,
    AppJson(body): AppJson<Value>,
) -> Result<Response, ApiError> {
    let request = request::parse(&body, &state.config.limits).map_err(ApiError::bad_request)?;
    let key = idempotency_key(&headers)?.map(|key| scoped_key(&request.user_id, &key));
    let cart = Cart::of(&request);
    // A retry waits for the earlier request with its key to answer (at most
    // `KEY_TURN_TIMEOUT`), so that it finds that request's saga instead of
    // pricing beside it (see `key_locks`); a client that hangs up leaves the
    // line.
    let _turn = match &key {
        Some(key) => state.keys.lock(key).await,
        None => None,
    };
    let data = match price(&state, request).await {
        Ok(data) => data,
        // A retry of a checkout that was started is answered with its saga,
        // whatever the catalogue says now (the inventory service is down, a
        // price changed): the client must not be told "refused" or "try
        // again" about an order that is being placed. Looked up only here,
        // so the common path pays nothing for it.
        Err(refusal) => match started(&state, key.as_deref()).await? {
            Some(id) => {
                let waited = state.engine.wait(id, state.config.wait).await;
                return answer(&settled(&state, waited).await?, &cart);
            }
            None => return Err(refusal),
        },
    };
    let options = match key {
        Some(key) => StartOptions::new().idempotency_key(key),
        None => StartOptions::new(),
    };
    let waited = state
        .engine
        .start_and_wait(&state.saga, data, options, state.config.wait)
        .await;
    answer(&settled(&state, waited).await?, &cart)
}

/// What a checkout asks for, as the Idempotency-Key check compares it: the
/// products and their quantities, in any order (a product appears once in
/// a request; prices are the catalogue's, and may change between two tries
/// of one checkout).
#[derive(Debug, PartialEq, Eq)]
struct Cart(Vec<(Uuid, u32)>);

impl Cart {
    fn of(request: &CheckoutRequest) -> Self {
        Self::sorted(request.items.iter().map(|i| (i.product_id, i.quantity)))
    }

    /// The cart of a checkout saga, if its data reads as one.
    fn of_saga(instance: &SagaInstance) -> Option<Self> {
        let data: CheckoutData = serde_json::from_value(instance.data.clone()).ok()?;
        Some(Self::sorted(
            data.items.iter().map(|i| (i.product_id, i.quantity)),
        ))
    }

    fn sorted(lines: impl Iterator<Item = (Uuid, u32)>) -> Self {
        let mut lines: Vec<_> = lines.collect();
        lines.sort_unstable();
        Self(lines)
    }
}

/// The saga's outcome for a request asking for `cart`; `422` when the saga
/// is another checkout's (its Idempotency-Key was used for a different
/// cart: answering with that order's outcome would tell this client
/// something false about its own).
fn answer(instance: &SagaInstance, cart: &Cart) -> Result<Response, ApiError> {
    if Cart::of_saga(instance).is_some_and(|started| &started != cart) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a checkout of a different cart; use a new key for a new checkout",
        ));
    }
    Ok(outcome_response(instance))
}

/// The saga's idempotency key for a client's `key`: scoped to the user, so
/// two users' equal keys are two checkouts. `:` and `%` in the user id are
/// percent-encoded, so that the user id ends at the first `:` (user `a:b`
/// with key `c` and user `a` with key `b:c` were one key); ids without them,
/// nearly all, keep the key they had.
fn scoped_key(user_id: &str, key: &str) -> String {
    let user = user_id.replace('%', "%25").replace(':', "%3A");
    format!("{user}:{key}")
}

/// How long the look-up of a refused checkout's key may take.
const KEY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The saga started with `key`, if there is one.
///
/// # Errors
/// `503` when the store cannot say in [`KEY_LOOKUP_TIMEOUT`]: the refusal
/// may be wrong for a checkout already under way, so the client is told to
/// try again rather than that its order was refused.
async fn started(state: &Orchestrator, key: Option<&str>) -> Result<Option<SagaId>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let query = SagaQuery::new().idempotency_key(key).limit(1);
    let found = tokio::time::timeout(KEY_LOOKUP_TIMEOUT, state.engine.list(&query))
        .await
        .map_err(|_| {
            ApiError::unavailable("the Idempotency-Key look-up of an unpriced checkout timed out")
        })?
        .map_err(|e| {
            ApiError::unavailable(format!(
                "the Idempotency-Key look-up of an unpriced checkout failed: {e}"
            ))
        })?;
    // Only a saga that holds the key (a store that ignored the filter must
    // not hand another checkout's saga to this client).
    Ok(found
        .iter()
        .find(|saga| saga.idempotency_key.as_deref() == Some(key))
        .map(|saga| saga.id))
}

/// The saga a wait ended with: its final state, or its state now when the
/// wait timed out (the client is answered `202`).
async fn settled(
    state: &Orchestrator,
    waited: saga_core::Result<SagaInstance>,
) -> Result<SagaInstance, ApiError> {
    match waited {
        Ok(instance) => Ok(instance),
        Err(saga_core::Error::WaitTimeout(id)) => state
            .engine
            .get(id)
            .await
            .map_err(|e| ApiError::from(crate::error::Error::from(e)))?
            .ok_or_else(|| ApiError::internal(format!("saga {id} vanished"))),
        Err(e) => Err(ApiError::from(crate::error::Error::from(e))),
    }
}

/// Prices the request from the catalogue; unknown products and wrong client prices are refused.
async fn price(state: &Orchestrator, request: CheckoutRequest) -> Result<CheckoutData, ApiError> {
    let ids: Vec<Uuid> = request.items.iter().map(|i| i.product_id).collect();
    let catalogue = state
        .catalogue
        .products(&ids)
        .await
        .map_err(ApiError::from)?;
    let mut items = Vec::with_capacity(request.items.len());
    for (i, item) in request.items.iter().enumerate() {
        let product = catalogue.get(&item.product_id).ok_or_else(|| {
            ApiError::unprocessable(format!(
                "items[{i}].productId {} is not in the catalogue",
                item.product_id
            ))
        })?;
        if let Some(price) = item.price
            && price != product.price
        {
            return Err(ApiError::unprocessable(format!(
                "items[{i}].price {price} does not match the catalogue price {} of {}",
                product.price, product.name
            )));
        }
        items.push(LineItem {
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price: product.price,
        });
    }
    Ok(CheckoutData::new(Uuid::now_v7(), request.user_id, items))
}

/// The reason a compensated saga gives the client: a participant's refusal
/// (`step ... failed: <reason>`) as it was given; for a step that kept
/// failing (`step ... failed after N attempt(s): <cause>`) only that much,
/// since the cause is internal (a database error, say) and is logged.
fn client_reason(error: &str) -> String {
    const ROLLED_BACK: &str = "the checkout was rolled back";
    if error == "the saga's deadline passed" {
        return error.to_owned();
    }
    if error.starts_with("cancelled: ") {
        return "cancelled by an operator".to_owned();
    }
    let Some((_step, outcome)) = error
        .strip_prefix("step `")
        .and_then(|rest| rest.split_once('`'))
    else {
        // Anything else (a compensation's failure an operator retried,
        // say) may carry an internal cause.
        return ROLLED_BACK.to_owned();
    };
    if let Some(reason) = outcome.strip_prefix(" failed: ") {
        return reason.to_owned();
    }
    match error.split_once(" attempt(s): ") {
        Some((gave_up, _)) if outcome.starts_with(" failed after ") => {
            format!("{gave_up} attempt(s)")
        }
        _ => ROLLED_BACK.to_owned(),
    }
}

fn outcome_response(instance: &SagaInstance) -> Response {
    let (status, success, message) = match instance.status {
        SagaStatus::Completed => (
            StatusCode::OK,
            Some(true),
            "Order placed successfully".to_owned(),
        ),
        SagaStatus::Compensated => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(false),
            format!(
                "Order cancelled: {}",
                client_reason(instance.error.as_deref().unwrap_or_default())
            ),
        ),
        SagaStatus::Failed => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(false),
            "The checkout could not be completed or rolled back; an operator has been alerted"
                .to_owned(),
        ),
        SagaStatus::Running | SagaStatus::Compensating => (
            StatusCode::ACCEPTED,
            None,
            format!(
                "Checkout is still processing; follow GET /api/sagas/{}",
                instance.id
            ),
        ),
    };
    let body = CheckoutOutcome {
        message,
        order_id: instance.data.get("orderId").cloned().unwrap_or(Value::Null),
        saga_id: instance.id,
        status: instance.status,
        success,
    };
    (status, Json(body)).into_response()
}

fn parse_id(id: &str) -> Result<SagaId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a saga id (a UUID)")))
}

fn instance_view(state: &Orchestrator, instance: &SagaInstance) -> SagaView {
    let def = state.saga.definition();
    let names: Vec<&str> = def.steps().iter().map(|s| s.name()).collect();
    SagaView::new(instance, &names)
}

/// A saga id path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // describes the parameter; the handlers parse it themselves (400 on a bad id)
struct SagaIdParam {
    /// The saga's id (a UUID).
    id: Uuid,
}

/// The optional `Idempotency-Key` header of a checkout.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes the header; `idempotency_key` reads it
pub(crate) struct IdempotencyKey {
    /// 1-200 visible ASCII characters. A repeated request with the same key
    /// (for the same user) returns the first request's saga and creates nothing.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 200,
        example = "order-42"
    )]
    idempotency_key: Option<String>,
}

/// A saga.
///
/// The saga with its ordered audit log and a Mermaid diagram of its steps.
#[utoipa::path(
    get,
    path = "/sagas/{id}",
    tag = "sagas",
    operation_id = "getSaga",
    params(SagaIdParam),
    responses(
        (status = 200, description = "The saga, its ordered log and a diagram", body = SagaDetail),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such saga", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody)
    )
)]
async fn show(
    State(state): State<Orchestrator>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let engine = &state.engine;
    let instance = engine
        .get(id)
        .await
        .map_err(|e| ApiError::from(crate::error::Error::from(e)))?
        .ok_or_else(|| ApiError::not_found(format!("saga {id} not found")))?;
    let logs = engine
        .logs(id)
        .await
        .map_err(|e| ApiError::from(crate::error::Error::from(e)))?;
    let detail = SagaDetail {
        saga: instance_view(&state, &instance),
        diagram: engine.mermaid(&instance),
        logs: logs.into_iter().map(Into::into).collect(),
    };
    // Through a JSON map, whose keys print in alphabetical order, as before the
    // flattened view was a type.
    let body = serde_json::to_value(detail).map_err(ApiError::internal)?;
    Ok(Json(body))
}

/// The filters of `GET /sagas`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only sagas with this status (any case).
    #[param(schema_with = super::views::saga_status_schema, nullable = false)]
    status: Option<String>,
    /// Only sagas of this type (`checkout`).
    #[serde(rename = "type")]
    #[param(rename = "type", nullable = false)]
    saga_type: Option<String>,
    /// Only unfinished sagas that count as stuck, each with the reason.
    #[serde(default)]
    #[param(nullable = false)]
    stuck: Option<bool>,
    /// At most this many sagas (default 50; a value above 1000 counts as 1000).
    #[param(minimum = 0, example = 50, nullable = false)]
    limit: Option<usize>,
}

/// Lists sagas.
///
/// At most `limit` sagas, most recently updated first, optionally only those
/// with `status` or `type`; with `stuck=true`, only the unfinished ones that
/// count as stuck (no progress past their step's timeout and retry delay,
/// running past their deadline, or retrying a step without limit), each with
/// the reason.
#[utoipa::path(
    get,
    path = "/sagas",
    tag = "sagas",
    operation_id = "listSagas",
    params(ListQuery),
    responses(
        (status = 200, description = "The sagas", body = SagaList),
        (status = 400, description = "An unknown status or a malformed limit", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody)
    )
)]
async fn list(
    State(state): State<Orchestrator>,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<SagaList>, ApiError> {
    let status = match query.status.as_deref() {
        Some(s) => Some(s.parse::<SagaStatus>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let mut filter = SagaQuery::new().limit(query.limit.unwrap_or(50).min(1_000));
    if let Some(status) = status {
        filter = filter.status(status);
    }
    if let Some(saga_type) = query.saga_type {
        filter = filter.saga_type(saga_type);
    }
    let to_api = |e: saga_core::Error| ApiError::from(crate::error::Error::from(e));
    let sagas = if query.stuck.unwrap_or(false) {
        let stuck = state.engine.stuck(&filter).await.map_err(to_api)?;
        stuck
            .iter()
            .map(|s| SagaView {
                stuck: Some((&s.reason).into()),
                ..instance_view(&state, &s.instance)
            })
            .collect()
    } else {
        let sagas = state.engine.list(&filter).await.map_err(to_api)?;
        sagas.iter().map(|s| instance_view(&state, s)).collect()
    };
    Ok(Json(SagaList { sagas }))
}

fn authorize(state: &Orchestrator, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.config.operator_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "operator actions are disabled: set OPERATOR_TOKEN on the orchestrator",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "a valid operator token is required (Authorization: Bearer ...)",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The query of `POST /sagas/prune`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PruneQuery {
    /// How long ago a saga must have finished to go: `0s`, `90m`, `12h`, `7d`.
    #[serde(rename = "olderThan")]
    #[param(rename = "olderThan", nullable = false, example = "7d")]
    older_than: Option<String>,
}

/// How many sagas a prune deleted.
#[derive(Debug, Serialize, ToSchema)]
struct Pruned {
    /// Sagas deleted, with their logs.
    pruned: usize,
}

/// Deletes finished sagas.
///
/// Deletes the sagas that ended `completed` or `compensated` longer ago than
/// `olderThan`, with their logs, in batches; `failed` sagas are kept. The
/// orchestrator also does this in the background after `SAGA_RETENTION`.
#[utoipa::path(
    post,
    path = "/sagas/prune",
    tag = "operator",
    operation_id = "pruneSagas",
    params(PruneQuery),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The finished sagas older than `olderThan` are deleted", body = Pruned),
        (status = 400, description = "`olderThan` is missing or not a duration", body = ErrorBody),
        (status = 401, description = "A valid operator token is required", body = ErrorBody),
        (status = 403, description = "Operator actions are disabled (no OPERATOR_TOKEN)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody)
    )
)]
async fn prune(
    State(state): State<Orchestrator>,
    AppQuery(query): AppQuery<PruneQuery>,
    headers: HeaderMap,
) -> Result<Json<Pruned>, ApiError> {
    authorize(&state, &headers)?;
    let older_than = query
        .older_than
        .ok_or_else(|| ApiError::bad_request("olderThan is required (e.g. 0s, 90m, 7d)"))?;
    let age = crate::cli::parse_duration(&older_than).map_err(ApiError::bad_request)?;
    let cutoff = saga_core::clock::sub(chrono::Utc::now(), age);
    let pruned = state
        .engine
        .prune(cutoff)
        .await
        .map_err(|e| ApiError::from(crate::error::Error::from(e)))?;
    tracing::info!(pruned, %older_than, %cutoff, "operator prune of finished sagas");
    Ok(Json(Pruned { pruned }))
}

/// An operator action on a saga.
#[derive(Clone, Copy, Debug)]
enum Action {
    Retry,
    Cancel,
    Resume,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::Resume => "resume",
        }
    }
}

/// What each operator action (retry, cancel, resume) answers, for the document.
#[derive(IntoResponses)]
#[allow(dead_code)] // describes the answers; `operate` builds them
enum OperatorAnswer {
    /// The saga after the action
    #[response(status = 200)]
    Done(SagaView),
    /// The id is not a UUID
    #[response(status = 400)]
    BadId(ErrorBody),
    /// A missing or wrong operator token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Operator actions are disabled (no OPERATOR_TOKEN)
    #[response(status = 403)]
    Disabled(ErrorBody),
    /// No such saga
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The saga's state does not allow the action
    #[response(status = 409)]
    NotAllowed(ErrorBody),
    /// The store or the broker is unavailable
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Retries a failed saga from the step that failed.
#[utoipa::path(
    post,
    path = "/sagas/{id}/retry",
    tag = "operator",
    operation_id = "retrySaga",
    params(SagaIdParam),
    security(("operator_token" = [])),
    responses(OperatorAnswer)
)]
async fn retry(
    State(state): State<Orchestrator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SagaView>, ApiError> {
    operate(&state, &id, &headers, Action::Retry).await
}

/// Cancels a running saga: it compensates the steps done so far.
#[utoipa::path(
    post,
    path = "/sagas/{id}/cancel",
    tag = "operator",
    operation_id = "cancelSaga",
    params(SagaIdParam),
    security(("operator_token" = [])),
    responses(OperatorAnswer)
)]
async fn cancel(
    State(state): State<Orchestrator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SagaView>, ApiError> {
    operate(&state, &id, &headers, Action::Cancel).await
}

/// Sends a running saga's in-flight command again (after a lost message).
#[utoipa::path(
    post,
    path = "/sagas/{id}/resume",
    tag = "operator",
    operation_id = "resumeSaga",
    params(SagaIdParam),
    security(("operator_token" = [])),
    responses(OperatorAnswer)
)]
async fn resume(
    State(state): State<Orchestrator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SagaView>, ApiError> {
    operate(&state, &id, &headers, Action::Resume).await
}

async fn operate(
    state: &Orchestrator,
    id: &str,
    headers: &HeaderMap,
    action: Action,
) -> Result<Json<SagaView>, ApiError> {
    authorize(state, headers)?;
    let id = parse_id(id)?;
    let engine = &state.engine;
    let result = match action {
        Action::Retry => engine.retry(id).await,
        Action::Cancel => engine.cancel(id, "cancelled by an operator").await,
        Action::Resume => engine.resume(id).await,
    };
    match result {
        Ok(instance) => {
            tracing::info!(saga_id = %id, action = action.as_str(), "operator action");
            Ok(Json(instance_view(state, &instance)))
        }
        Err(saga_core::Error::NotFound(_)) => {
            Err(ApiError::not_found(format!("saga {id} not found")))
        }
        Err(e @ saga_core::Error::InvalidOperation { .. }) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::from(crate::error::Error::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::{Cart, scoped_key};
    use uuid::Uuid;

    #[test]
    fn a_cart_is_the_same_in_any_order() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let request = |items: serde_json::Value| {
            let body = serde_json::json!({ "userId": "u", "items": items });
            crate::request::parse(&body, &crate::request::Limits::default()).expect("valid")
        };
        assert_eq!(
            Cart::of(&request(serde_json::json!([
                { "productId": a, "quantity": 1 }, { "productId": b, "quantity": 2 }
            ]))),
            Cart::of(&request(serde_json::json!([
                { "productId": b, "quantity": 2 }, { "productId": a, "quantity": 1 }
            ])))
        );
        assert_eq!(
            Cart::sorted([(a, 1), (b, 2)].into_iter()),
            Cart::sorted([(b, 2), (a, 1)].into_iter())
        );
        assert_ne!(
            Cart::sorted([(a, 1), (b, 2)].into_iter()),
            Cart::sorted([(a, 2), (b, 1)].into_iter())
        );
    }

    #[test]
    fn a_refusal_is_told_as_given_and_an_internal_cause_is_not() {
        assert_eq!(
            super::client_reason("step `reserve_inventory` failed: insufficient stock for X"),
            "insufficient stock for X"
        );
        assert_eq!(
            super::client_reason(
                "step `reserve_inventory` failed after 5 attempt(s): inventory database error: connection refused"
            ),
            "step `reserve_inventory` failed after 5 attempt(s)"
        );
        assert_eq!(
            super::client_reason(
                "step `pay` failed after 3 attempt(s): card processor request failed: 10.0.0.7 refused"
            ),
            "step `pay` failed after 3 attempt(s)",
            "a cause that says `failed: ` itself"
        );
        assert_eq!(
            super::client_reason("the saga's deadline passed"),
            "the saga's deadline passed"
        );
        assert_eq!(
            super::client_reason("cancelled: fraud check, ticket 4711"),
            "cancelled by an operator"
        );
        assert_eq!(
            super::client_reason(
                "compensation of step `release_inventory` failed after 5 attempt(s): inventory database error: timeout"
            ),
            "the checkout was rolled back",
            "an operator retried a failed compensation"
        );
    }
    #[test]
    fn a_scoped_key_tells_the_user_apart_from_the_key() {
        assert_eq!(scoped_key("user-123", "retry-7"), "user-123:retry-7");
        // Before, both were `a:b:c`: one user's retry got the other's order.
        assert_ne!(scoped_key("a:b", "c"), scoped_key("a", "b:c"));
        assert_eq!(scoped_key("a:b", "c"), "a%3Ab:c");
        // `%` is encoded too, or `a%3Ab` as a user id would collide instead.
        assert_ne!(scoped_key("a%3Ab", "c"), scoped_key("a:b", "c"));
    }
}
