//! What every service's HTTP side shares: one error type with one status
//! mapping and JSON body, a JSON extractor whose rejections use the same body,
//! the `/health` route, JSON answers for unknown routes and methods, and
//! serving with graceful shutdown. [`ErrorBody`] and [`Health`] are the wire
//! shapes, also described in the services' OpenAPI documents.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The body of every error answer: `{"success":false,"error":"<code>","message":"..."}`.
// Fields in alphabetical order, as the `json!` map this type replaced printed them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"success": false, "error": "bad_request", "message": "userId is required"}))]
pub struct ErrorBody {
    /// A stable, machine-readable code: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `unprocessable`,
    /// `internal`, `unavailable`, `overloaded` (a 503: the service is at its
    /// bound of requests in flight), `rate_limited` (a 429) or
    /// `idempotency_key_reused` (a 422: the key is another cart's checkout).
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Always `false`.
    pub success: bool,
}

/// An HTTP error: a status and a message for the client. Internal causes are
/// logged, never echoed.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: well-formed but not acceptable (unknown product, price mismatch).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401: a missing or wrong operator token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 409: the action does not apply to the resource's current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 502/503/500 for a failure of ours: logs `cause`, tells the client little.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the service log",
        )
    }

    /// A dependency (database, broker, another service) is unavailable.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(%cause, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a dependency is unavailable; try again",
        )
    }

    /// 503 `overloaded`: the service is at its bound of requests in flight
    /// and refuses this one at once (nothing was started); try again after
    /// `retry_after`.
    pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).retry_after(retry_after)
    }

    /// 429 `rate_limited`: too many requests; try again after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(retry_after)
    }

    /// Any status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1).
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
            success: false,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::breaker::retry_after_secs(after)),
            );
        }
        response
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        match &e {
            crate::error::Error::CircuitOpen { retry_after, .. } => {
                let after = *retry_after;
                Self::unavailable(e).retry_after(after)
            }
            crate::error::Error::Upstream { .. } => Self::unavailable(e),
            crate::error::Error::Saga(inner)
                if inner.kind() == saga_core::ErrorKind::Unavailable =>
            {
                Self::unavailable(e)
            }
            _ => Self::internal(e),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::unavailable(e)
    }
}

/// A JSON body extractor whose rejections are [`ApiError`]s (400/413/415 with a JSON body).
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
}

/// A query string extractor whose rejections are [`ApiError`]s (400 with a JSON body).
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// The `GET /health` answer: `{"status":"ok","service":"<name>"}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "service": "api-gateway"}))]
pub struct Health {
    /// The service's name (`api-gateway`, `orchestrator`, `order-service`...).
    pub service: &'static str,
    /// Always `ok`: the process is up and serving HTTP.
    pub status: &'static str,
}

/// The service name `GET /health` reports.
#[derive(Clone, Copy, Debug)]
struct ServiceName(&'static str);

/// Liveness.
///
/// The process is up and serving HTTP (no dependency is checked).
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    operation_id = "health",
    responses((status = 200, description = "The service is up", body = Health))
)]
async fn health_check(Extension(ServiceName(service)): Extension<ServiceName>) -> Json<Health> {
    Json(Health {
        service,
        status: "ok",
    })
}

/// `GET /health` answering `{"status":"ok","service":name}`, documented, for
/// a service whose router is an [`OpenApiRouter`] with state `S`.
pub fn health_routes<S>(service: &'static str) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    OpenApiRouter::new()
        .routes(routes!(health_check))
        .layer(Extension(ServiceName(service)))
}

/// `GET /health` answering `{"status":"ok","service":name}`.
pub fn health(service: &'static str) -> Router {
    health_routes(service).split_for_parts().0
}

/// Adds the JSON answers for requests no route takes: `404 not_found` for an
/// unknown path, `405 method_not_allowed` for a known path with another
/// method, in the same `{"success":false,"error":..,"message":..}` shape as
/// every other error (axum's defaults have an empty body). Call it last, on
/// the finished router: the 405 answer applies to the routes added before.
pub fn with_json_fallbacks(router: Router) -> Router {
    router
        .fallback(
            |uri: Uri| async move { ApiError::not_found(format!("no route for {}", uri.path())) },
        )
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
}

/// Serves `router` on `addr` until `shutdown` resolves.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    name: &'static str,
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::error::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::error::Error::Config(format!("{name}: cannot listen on {addr}: {e}"))
    })?;
    tracing::info!(service = name, %addr, "listening");
    axum::serve(
        listener,
        with_json_fallbacks(router).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}
