//! The orchestrator's HTTP routes.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_core::adapter::SagaQuery;
use saga_core::{ErrorKind, SagaId, SagaInstance, SagaStatus, StartOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Orchestrator;
use crate::http::{ApiError, AppJson};
use crate::messages::LineItem;
use crate::request::{self, CheckoutRequest};
use crate::saga::CheckoutData;

/// The orchestrator's routes: `POST /checkouts`, `GET /sagas`, `GET /sagas/{id}`,
/// `POST /sagas/{id}/{retry|cancel|resume}`, `POST /sagas/prune?olderThan=DURATION`,
/// `GET /health`.
pub fn router(state: Orchestrator) -> Router {
    Router::new()
        .route("/checkouts", post(checkout))
        .route("/sagas", get(list))
        // A static segment wins over `{id}`: `/sagas/prune` is never a saga id
        // (its GET is a 405, not a lookup).
        .route("/sagas/prune", post(prune))
        .route("/sagas/{id}", get(show))
        .route("/sagas/{id}/{action}", post(operate))
        .with_state(state)
        .merge(crate::http::health("orchestrator"))
}

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

async fn checkout(
    State(state): State<Orchestrator>,
    headers: HeaderMap,
    AppJson(body): AppJson<Value>,
) -> Result<Response, ApiError> {
    let request = request::parse(&body, &state.config.limits).map_err(ApiError::bad_request)?;
    let key = idempotency_key(&headers)?;
    let data = price(&state, request).await?;
    let options = match &key {
        Some(key) => StartOptions::new().idempotency_key(format!("{}:{key}", data.user_id)),
        None => StartOptions::new(),
    };
    let id = state
        .engine
        .start_with(&state.saga, data, options)
        .await
        .map_err(|e| ApiError::from(crate::error::Error::from(e)))?;
    let outcome = match state.engine.wait(id, state.config.wait).await {
        Ok(instance) => instance,
        Err(e) if e.kind() == ErrorKind::Timeout => state
            .engine
            .get(id)
            .await
            .map_err(|e| ApiError::from(crate::error::Error::from(e)))?
            .ok_or_else(|| ApiError::internal(format!("saga {id} vanished")))?,
        Err(e) => return Err(ApiError::from(crate::error::Error::from(e))),
    };
    Ok(outcome_response(&outcome))
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

/// The reason a compensated saga gives the client, without the step prefix.
fn client_reason(instance: &SagaInstance) -> String {
    let error = instance.error.clone().unwrap_or_default();
    match error.split_once(" failed: ") {
        Some((_, reason)) => reason.to_owned(),
        None => error,
    }
}

fn outcome_response(instance: &SagaInstance) -> Response {
    let order_id = instance.data.get("orderId").cloned().unwrap_or(Value::Null);
    let (status, success, message) = match instance.status {
        SagaStatus::Completed => (
            StatusCode::OK,
            json!(true),
            "Order placed successfully".to_owned(),
        ),
        SagaStatus::Compensated => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!(false),
            format!("Order cancelled: {}", client_reason(instance)),
        ),
        SagaStatus::Failed => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!(false),
            "The checkout could not be completed or rolled back; an operator has been alerted"
                .to_owned(),
        ),
        SagaStatus::Running | SagaStatus::Compensating => (
            StatusCode::ACCEPTED,
            Value::Null,
            format!(
                "Checkout is still processing; follow GET /api/sagas/{}",
                instance.id
            ),
        ),
    };
    let body = json!({
        "success": success,
        "orderId": order_id,
        "sagaId": instance.id,
        "status": instance.status,
        "message": message,
    });
    (status, Json(body)).into_response()
}

fn parse_id(id: &str) -> Result<SagaId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a saga id (a UUID)")))
}

fn instance_view(state: &Orchestrator, instance: &SagaInstance) -> Value {
    let def = state.saga.definition();
    let steps: Vec<Value> = def
        .steps()
        .iter()
        .zip(&instance.steps)
        .map(|(s, status)| json!({ "name": s.name(), "status": status }))
        .collect();
    json!({
        "id": instance.id,
        "type": instance.saga_type,
        "version": instance.definition_version,
        "status": instance.status,
        "currentStep": instance.cursor.and_then(|c| def.steps().get(c.step)).map(|s| s.name()),
        "attempt": instance.cursor.map(|c| c.attempt),
        "error": instance.error,
        "data": instance.data,
        "steps": steps,
        "nextWakeAt": instance.next_wake_at,
        "createdAt": instance.created_at,
        "updatedAt": instance.updated_at,
    })
}

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
    let mut view = instance_view(&state, &instance);
    view["logs"] = json!(logs);
    view["diagram"] = json!(engine.mermaid(&instance));
    Ok(Json(view))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<Orchestrator>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match query.status.as_deref() {
        Some(s) => Some(s.parse::<SagaStatus>().map_err(ApiError::bad_request)?),
        None => None,
    };
    let mut filter = SagaQuery::new().limit(query.limit.unwrap_or(50).min(1_000));
    if let Some(status) = status {
        filter = filter.status(status);
    }
    let sagas = state
        .engine
        .list(&filter)
        .await
        .map_err(|e| ApiError::from(crate::error::Error::from(e)))?;
    let views: Vec<Value> = sagas.iter().map(|s| instance_view(&state, s)).collect();
    Ok(Json(json!({ "sagas": views })))
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

#[derive(Deserialize)]
struct PruneQuery {
    #[serde(rename = "olderThan")]
    older_than: Option<String>,
}

/// `POST /sagas/prune?olderThan=DURATION`: deletes the sagas that ended
/// completed or compensated longer ago than DURATION, with their logs;
/// answers `{"pruned": N}`. An operator action (the token is required).
async fn prune(
    State(state): State<Orchestrator>,
    Query(query): Query<PruneQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "pruned": pruned })))
}

async fn operate(
    State(state): State<Orchestrator>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let engine = &state.engine;
    let result = match action.as_str() {
        "retry" => engine.retry(id).await,
        "cancel" => engine.cancel(id, "cancelled by an operator").await,
        "resume" => engine.resume(id).await,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action `{other}` (expected retry, cancel or resume)"
            )));
        }
    };
    match result {
        Ok(instance) => {
            tracing::info!(saga_id = %id, %action, "operator action");
            Ok(Json(instance_view(&state, &instance)))
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
