//! `GET /metrics`: the process's metrics in the Prometheus text format.
//!
//! One Prometheus recorder per process, installed the first time a service
//! starts serving HTTP. saga-core's engine, participants and transports record
//! into it (see [`saga_core::metrics`]); every service of the process answers
//! `GET /metrics` from it, so in the embedded one-process mode the five
//! services show the same figures.
//!
//! Besides saga-core's metrics, every service counts its HTTP requests:
//! `http_requests_total{service,route,method,status}` and
//! `http_request_duration_seconds{service,route,method}`, with `route` the
//! matched route template (`/api/orders/{id}`), never the raw path.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

/// Buckets of the `_seconds` histograms: a step round trip takes milliseconds;
/// a slow participant or a timeout, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram data is compacted.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use (within a Tokio runtime).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; GET /metrics shows nothing");
        } else {
            saga_core::metrics::describe();
            metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered.");
            metrics::describe_histogram!(
                HTTP_REQUEST_DURATION_SECONDS,
                metrics::Unit::Seconds,
                "Time to answer an HTTP request."
            );
        }
        let upkeep = handle.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(UPKEEP);
                loop {
                    ticks.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// `GET /metrics`.
pub fn route() -> Router {
    let handle = handle();
    Router::new().route(
        "/metrics",
        get(move || async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
                .into_response()
        }),
    )
}

/// Counter: HTTP requests answered, by `service`, `route`, `method`, `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram: seconds to answer an HTTP request, by `service`, `route`, `method`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

/// Counts and times every request `router` answers, as `service`, each in an
/// `http.request` span (parented on the request's `traceparent` when traces
/// are on).
pub fn count_requests(router: Router, service: &'static str) -> Router {
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        record(service, request, next)
    }))
}

async fn record(service: &'static str, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!("http.request", service, %route, %method);
    crate::telemetry::extract_http(request.headers(), &span);
    let response = next.run(request).instrument(span).await;
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "service" => service,
        "route" => route.clone(),
        "method" => method.clone(),
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    metrics::histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        "service" => service,
        "route" => route,
        "method" => method,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn metrics_are_served_next_to_the_service_routes_and_count_them() {
        let app = count_requests(
            crate::http::with_json_fallbacks(crate::http::health("test").merge(route())),
            "test",
        );
        let health = app
            .clone()
            .oneshot(
                Request::get("/health")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("health");
        assert_eq!(health.status(), StatusCode::OK);
        let response = app
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(
                r#"http_requests_total{service="test",route="/health",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
    }
}
