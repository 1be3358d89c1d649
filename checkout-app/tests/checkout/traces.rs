//! One checkout is one trace: the spans of the gateway, the orchestrator and
//! the three participants share a trace id, carried over HTTP and in the
//! messages' headers. Collected with OpenTelemetry's in-memory exporter, on
//! the embedded stack (the services are tasks, the context crosses them only
//! through the headers; nextest runs each test in its own process, so the
//! global subscriber below is this test's alone).

use std::collections::{BTreeMap, HashSet};

use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{Client, PRODUCT, config, order};

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_of_one_checkout_share_one_trace_id_across_the_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("the test's subscriber");
    checkout_app::telemetry::enable_propagation();

    let stack = checkout_app::runtime::start_all(config(), checkout_app::runtime::Shutdown::new())
        .await
        .expect("the stack starts");
    let client = Client::new(&stack);
    let (status, first) = client.checkout(order(PRODUCT, 1, "29.99"), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = client.checkout(order(PRODUCT, 1, "29.99"), None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    stack.stop().await.expect("stops");
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");

    let saga_of = |body: &serde_json::Value| body["sagaId"].as_str().expect("sagaId").to_owned();
    let mut traces = Vec::new();
    for saga in [saga_of(&first), saga_of(&second)] {
        let of_saga: Vec<&SpanData> = spans
            .iter()
            .filter(|s| attribute(s, "saga_id").as_deref() == Some(saga.as_str()))
            .collect();
        let ids: HashSet<TraceId> = of_saga.iter().map(|s| s.span_context.trace_id()).collect();
        assert_eq!(ids.len(), 1, "one trace for saga {saga}: {of_saga:#?}");
        let trace = *ids.iter().next().expect("a trace id");
        // What took part, by span name (and, for commands, the endpoint).
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for span in spans.iter().filter(|s| s.span_context.trace_id() == trace) {
            let name = match attribute(span, "endpoint") {
                Some(endpoint) => format!("{} {endpoint}", span.name),
                None => match attribute(span, "service") {
                    Some(service) => format!("{} {service}", span.name),
                    None => span.name.to_string(),
                },
            };
            *seen.entry(name).or_default() += 1;
        }
        for (name, at_least) in [
            ("http.request api-gateway", 1),
            ("http.request orchestrator", 1),
            ("saga.start", 1),
            ("saga.step", 4),
            ("saga.command order", 2),
            ("saga.command inventory", 1),
            ("saga.command payment", 1),
            ("saga.reply", 4),
        ] {
            assert!(
                seen.get(name).copied().unwrap_or(0) >= at_least,
                "`{name}` at least {at_least} times in the trace of saga {saga}: {seen:#?}"
            );
        }
        traces.push(trace);
    }
    assert_ne!(traces[0], traces[1], "two checkouts, two traces");
}

/// `--otlp-endpoint` (not only the environment variable) sends spans to the
/// collector's `/v1/traces`.
#[tokio::test]
async fn the_otlp_endpoint_option_sends_spans_to_the_collector() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a collector port");
    let endpoint = format!("http://{}", collector.local_addr().expect("address"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port();
    let _gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkout-app"))
        .args([
            "gateway",
            "--port",
            &port.to_string(),
            "--otlp-endpoint",
            &endpoint,
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let http = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/health");
    let mut up = false;
    for _ in 0..100 {
        if http.get(&health).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the gateway answers");
    // The batch exporter sends within its 5 s schedule.
    let request_line = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let (mut socket, _) = collector.accept().await.expect("the exporter connects");
        let mut buffer = vec![0_u8; 4096];
        let n = socket.read(&mut buffer).await.expect("a request");
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        String::from_utf8_lossy(&buffer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
    .await
    .expect("spans exported in time");
    assert_eq!(request_line, "POST /v1/traces HTTP/1.1");
}
