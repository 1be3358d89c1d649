//! Logs and traces: the `tracing` subscriber of every process, and OpenTelemetry
//! export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! One checkout is one trace: the gateway's request span, the orchestrator's
//! request and saga spans, and the participants' command spans share a trace
//! id. The W3C `traceparent` header carries it over HTTP (gateway to
//! orchestrator) and in every command's and reply's headers (saga-core's
//! [`Propagator`] hook, AMQP headers on RabbitMQ). Without the endpoint no
//! exporter, no OpenTelemetry layer and no propagator is installed: nothing
//! is exported and nothing is slowed.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use saga_core::propagation::{Headers, Propagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;
use crate::error::{Error, Result};

/// Whether spans carry their context across processes.
static PROPAGATING: AtomicBool = AtomicBool::new(false);

/// The W3C trace-context propagator for saga messages (see
/// [`saga_core::propagation`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct W3cPropagator;

impl Propagator for W3cPropagator {
    fn inject(&self, span: &tracing::Span, headers: &mut Headers) {
        TraceContextPropagator::new().inject_context(&span.context(), &mut MapCarrier(headers));
    }

    fn extract(&self, headers: &Headers, span: &tracing::Span) {
        let context = TraceContextPropagator::new().extract(&MapReader(headers));
        let _ = span.set_parent(context);
    }
}

struct MapCarrier<'a>(&'a mut Headers);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapReader<'a>(&'a Headers);

impl Extractor for MapReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HttpCarrier<'a>(&'a mut HeaderMap);

impl Injector for HttpCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpReader<'a>(&'a HeaderMap);

impl Extractor for HttpReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The propagator the engine and participants get, `None` when traces are off.
#[must_use]
pub fn propagator() -> Option<W3cPropagator> {
    PROPAGATING.load(Ordering::Relaxed).then_some(W3cPropagator)
}

/// `builder` with the propagator when traces are on.
pub fn traced_engine(builder: saga_core::EngineBuilder) -> saga_core::EngineBuilder {
    match propagator() {
        Some(propagator) => builder.propagator(propagator),
        None => builder,
    }
}

/// `builder` with the propagator when traces are on.
pub fn traced_participant<S>(
    builder: saga_core::participant::ParticipantBuilder<S>,
) -> saga_core::participant::ParticipantBuilder<S> {
    match propagator() {
        Some(propagator) => builder.propagator(propagator),
        None => builder,
    }
}

/// Turns propagation on. [`init`] does it when it installs an exporter; a
/// test that installs its own OpenTelemetry layer calls it before starting
/// the services.
pub fn enable_propagation() {
    PROPAGATING.store(true, Ordering::Relaxed);
}

/// Writes `span`'s context into an outgoing HTTP request's headers.
pub fn inject_http(span: &tracing::Span, headers: &mut HeaderMap) {
    if PROPAGATING.load(Ordering::Relaxed) {
        TraceContextPropagator::new().inject_context(&span.context(), &mut HttpCarrier(headers));
    }
}

/// Parents `span` (an incoming HTTP request's) on the request's `traceparent`.
pub fn extract_http(headers: &HeaderMap, span: &tracing::Span) {
    if PROPAGATING.load(Ordering::Relaxed) && headers.contains_key("traceparent") {
        let context = TraceContextPropagator::new().extract(&HttpReader(headers));
        let _ = span.set_parent(context);
    }
}

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops the trace exporter"]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process's subscriber: logs in `format` filtered by `RUST_LOG`
/// and, when `otlp_endpoint` (a collector's base URL) is given, spans
/// exported over OTLP/HTTP to its `/v1/traces` as service `service`. The
/// exporter reads the other standard `OTEL_EXPORTER_OTLP_*` settings
/// (headers, timeout...) itself.
///
/// # Errors
/// When the exporter cannot be built.
pub fn init(format: LogFormat, service: &str, otlp_endpoint: Option<&str>) -> Result<Guard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,sea_orm_migration=warn"));
    let (provider, traces) = match otlp_endpoint {
        Some(endpoint) => {
            // As the standard variable means it: the base URL, traces at `/v1/traces`.
            let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url)
                .build()
                .map_err(|e| Error::Config(format!("OTLP trace exporter: {e}")))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service.to_owned())
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("checkout-app"));
            enable_propagation();
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_span_list(true))
            .init(),
    }
    Ok(Guard(provider))
}
