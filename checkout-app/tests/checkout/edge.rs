//! The edge of the stack under failure and overload, through HTTP: the
//! gateway fails over between orchestrators with the same Idempotency-Key,
//! rate-limits with `429` + `Retry-After`, fails fast while an orchestrator's
//! circuit breaker is open and closes it after a probe; the orchestrator sheds
//! checkouts past `MAX_IN_FLIGHT` and fails fast while the catalogue's breaker
//! is open.
//!
//! The gateway tests put fake orchestrators (small axum servers, or a socket
//! that drops every request unanswered) behind the real gateway router; the
//! orchestrator tests run the real orchestrator router on an in-memory engine
//! with no participants, in front of a fake inventory service. The last test
//! runs the real stack as processes on PostgreSQL and RabbitMQ: two
//! orchestrators, one killed mid-load, and not one client error.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use checkout_app::breaker::BreakerConfig;
use checkout_app::gateway::{GatewayConfig, RateLimitConfig, RetryPolicy};
use checkout_app::orchestrator::{Catalogue, Orchestrator, OrchestratorConfig};
use checkout_app::runtime::{self, RabbitTuning, Storage};
use serde_json::{Value, json};
use test_kit::cluster::{Cluster, Node, Role};
use test_kit::load::load;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::{PRODUCT, binary, order};

/// Serves `router` on a free port (with the peer's address, as the services do).
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serves");
    });
    addr
}

/// A fake orchestrator: records every checkout's Idempotency-Key and answers
/// 200, or `502` while `failing` (what a proxy before a dead orchestrator answers).
#[derive(Clone, Default)]
struct FakeOrchestrator {
    keys: Arc<Mutex<Vec<String>>>,
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl FakeOrchestrator {
    async fn start(&self) -> SocketAddr {
        async fn checkout(
            State(fake): State<FakeOrchestrator>,
            headers: HeaderMap,
            Json(_body): Json<Value>,
        ) -> (StatusCode, Json<Value>) {
            fake.calls.fetch_add(1, Ordering::SeqCst);
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            fake.keys.lock().expect("lock").push(key);
            fake.answer()
        }
        async fn saga(State(fake): State<FakeOrchestrator>) -> (StatusCode, Json<Value>) {
            fake.calls.fetch_add(1, Ordering::SeqCst);
            fake.answer()
        }
        let router = Router::new()
            .route("/checkouts", post(checkout))
            .route("/sagas/{id}", get(saga))
            .with_state(self.clone());
        serve(router).await
    }

    fn answer(&self) -> (StatusCode, Json<Value>) {
        if self.failing.load(Ordering::SeqCst) {
            (
                StatusCode::BAD_GATEWAY,
                Json(json!({"success": false, "error": "bad_gateway", "message": "no upstream"})),
            )
        } else {
            (
                StatusCode::OK,
                Json(json!({"success": true, "message": "Order placed successfully"})),
            )
        }
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().expect("lock").clone()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// An orchestrator that dies mid-request: it accepts the connection, reads
/// the request, records its Idempotency-Key and closes without answering.
async fn dropping_orchestrator() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&keys);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                let mut read = 0;
                while let Ok(n) = socket.read(&mut buffer[read..]).await {
                    read += n;
                    let text = String::from_utf8_lossy(&buffer[..read]);
                    if n == 0 || text.contains("\r\n\r\n") {
                        if let Some(line) = text
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("idempotency-key:"))
                        {
                            let key = line["idempotency-key:".len()..].trim().to_owned();
                            seen.lock().expect("lock").push(key);
                        }
                        break;
                    }
                }
                drop(socket); // no answer: the orchestrator "died"
            });
        }
    });
    (addr, keys)
}

/// A port nobody listens on: connections are refused.
fn refused_url() -> String {
    format!("http://127.0.0.1:{}", test_kit::cluster::free_port())
}

/// The real gateway router in front of `orchestrators` (comma-separated).
async fn gateway(orchestrators: String, edit: impl FnOnce(&mut GatewayConfig)) -> String {
    let mut config = GatewayConfig {
        orchestrator_url: orchestrators,
        ..GatewayConfig::default()
    };
    edit(&mut config);
    let router = checkout_app::gateway::router(config).expect("router");
    format!(
        "http://{}",
        serve(checkout_app::http::with_json_fallbacks(router)).await
    )
}

async fn post_checkout(
    http: &reqwest::Client,
    gateway: &str,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = http
        .post(format!("{gateway}/api/checkout"))
        .json(&order(PRODUCT, 1, "29.99"));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("JSON body"))
}

fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in whole seconds")
}

#[tokio::test]
async fn a_checkout_an_orchestrator_drops_unanswered_is_answered_by_the_other_with_the_same_key() {
    let (dropper, dropped_keys) = dropping_orchestrator().await;
    let healthy = FakeOrchestrator::default();
    let healthy_addr = healthy.start().await;
    // Breakers off: every second checkout starts at the dropping orchestrator.
    let gateway = gateway(format!("http://{dropper},http://{healthy_addr}"), |c| {
        c.breaker.failures = 0;
    })
    .await;
    let http = reqwest::Client::new();
    for i in 0..6 {
        let key = (i == 0).then_some("client-key-1");
        let (status, _, body) = post_checkout(&http, &gateway, key).await;
        assert_eq!(status, StatusCode::OK, "checkout {i}: {body}");
    }
    let answered = healthy.keys();
    let dropped = dropped_keys.lock().expect("lock").clone();
    assert_eq!(
        answered.len(),
        6,
        "each checkout reached the healthy one once"
    );
    assert_eq!(
        answered.iter().collect::<HashSet<_>>().len(),
        6,
        "one key per checkout: {answered:?}"
    );
    assert!(
        answered.iter().all(|k| !k.is_empty()),
        "every try carries a key"
    );
    assert!(
        answered.contains(&"client-key-1".to_owned()),
        "the client's key is kept"
    );
    assert!(
        dropped.len() >= 3,
        "round robin sent half to the dropper: {dropped:?}"
    );
    for key in &dropped {
        assert!(!key.is_empty(), "the dropped try carried a key");
        assert!(
            answered.contains(key),
            "the retry of {key} used the same key"
        );
    }
}

fn key_in(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .expect("an Idempotency-Key response header")
        .to_owned()
}

/// Every answer to a valid checkout carries the key in force, also one the
/// gateway made up: a client that got a 503 (after its saga may have been
/// started) or nothing retries with it instead of placing a second order.
#[tokio::test]
async fn every_checkout_answer_carries_the_idempotency_key_in_force() {
    let healthy = FakeOrchestrator::default();
    let healthy_addr = healthy.start().await;
    let answering = gateway(format!("http://{healthy_addr}"), |_| {}).await;
    let http = reqwest::Client::new();
    let (status, headers, body) = post_checkout(&http, &answering, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let made_up = key_in(&headers);
    assert!(made_up.starts_with("gw-"), "{made_up}");
    assert_eq!(
        healthy.keys(),
        vec![made_up],
        "the key the orchestrator got"
    );
    let (_, headers, _) = post_checkout(&http, &answering, Some("client-9")).await;
    assert_eq!(key_in(&headers), "client-9");

    let (dropper, dropped) = dropping_orchestrator().await;
    let dropping = gateway(format!("http://{dropper}"), |c| {
        c.breaker.failures = 0;
    })
    .await;
    let (status, headers, body) = post_checkout(&http, &dropping, None).await;
    assert!(status.is_server_error(), "{status}: {body}");
    let made_up = key_in(&headers);
    assert!(
        dropped.lock().expect("lock").contains(&made_up),
        "the key of the unanswered try: {made_up}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_the_next_orchestrator_and_then_skipped() {
    let healthy = FakeOrchestrator::default();
    let healthy_addr = healthy.start().await;
    let gateway = gateway(format!("{},http://{healthy_addr}", refused_url()), |_| {}).await;
    let http = reqwest::Client::new();
    for i in 0..20 {
        let (status, _, body) = post_checkout(&http, &gateway, None).await;
        assert_eq!(status, StatusCode::OK, "checkout {i}: {body}");
        // GETs fail over too.
        let response = http
            .get(format!("{gateway}/api/sagas/{}", uuid::Uuid::now_v7()))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }
    let keys = healthy.keys();
    assert_eq!(keys.len(), 20);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 20);
}

#[tokio::test]
async fn an_open_breaker_answers_503_at_once_and_a_probe_after_the_cool_down_closes_it() {
    let fake = FakeOrchestrator::default();
    fake.failing.store(true, Ordering::SeqCst);
    let addr = fake.start().await;
    let cool_down = Duration::from_millis(1_000);
    let gateway = gateway(format!("http://{addr}"), |c| {
        c.breaker = BreakerConfig {
            failures: 2,
            cool_down,
        };
        c.retry = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
    })
    .await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let (status, _, _) = post_checkout(&http, &gateway, None).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "relayed");
    }
    assert_eq!(fake.calls(), 2);

    // Open: refused at once, the orchestrator not called, even once it is healthy.
    fake.failing.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let (status, headers, body) = post_checkout(&http, &gateway, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "unavailable");
    assert_eq!(retry_after(&headers), 1);
    assert_eq!(fake.calls(), 2, "no call while open");

    // After the cool-down one probe goes through; its success closes the breaker.
    tokio::time::sleep(cool_down + Duration::from_millis(100)).await;
    let (status, _, body) = post_checkout(&http, &gateway, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.calls(), 3);
    let (status, _, _) = post_checkout(&http, &gateway, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.calls(), 4);
}

#[tokio::test]
async fn past_its_burst_a_client_gets_429_with_retry_after() {
    let fake = FakeOrchestrator::default();
    let addr = fake.start().await;
    let gateway = gateway(format!("http://{addr}"), |c| {
        c.rate_limit = RateLimitConfig {
            per_client: 1,
            burst: 3,
            total: 0,
        };
    })
    .await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let (status, _, _) = post_checkout(&http, &gateway, None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = post_checkout(&http, &gateway, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let after = retry_after(&headers);
    assert!((1..=2).contains(&after), "Retry-After {after}");
    assert_eq!(fake.calls(), 3, "the refused request went nowhere");
    // Liveness is not limited.
    let health = http
        .get(format!("{gateway}/health"))
        .send()
        .await
        .expect("answers");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    // The bucket refills at the rate.
    tokio::time::sleep(Duration::from_secs(after)).await;
    let (status, _, _) = post_checkout(&http, &gateway, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A fake inventory service: the one product, or `500` while `failing`.
#[derive(Clone, Default)]
struct FakeInventory {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    /// The product's price went up from 29.99 to 31.00.
    repriced: Arc<AtomicBool>,
    /// The next call waits for `release` before it answers (what it answers
    /// is decided when it arrives).
    hold_next: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
}

impl FakeInventory {
    async fn start(&self) -> SocketAddr {
        async fn products(State(fake): State<FakeInventory>) -> (StatusCode, Json<Value>) {
            fake.calls.fetch_add(1, Ordering::SeqCst);
            let answer = if fake.failing.load(Ordering::SeqCst) {
                (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})))
            } else {
                let price = if fake.repriced.load(Ordering::SeqCst) {
                    "31.00"
                } else {
                    "29.99"
                };
                let product =
                    json!({"id": PRODUCT, "name": "Wireless Mouse", "price": price, "stock": 100});
                (StatusCode::OK, Json(json!([product])))
            };
            if fake.hold_next.swap(false, Ordering::SeqCst) {
                fake.release.notified().await;
            }
            answer
        }
        serve(
            Router::new()
                .route("/products", get(products))
                .with_state(self.clone()),
        )
        .await
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Checkouts that miss the catalogue's cache together (it expired, or was
/// never filled) wait for one fetch of it instead of each making their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_that_miss_the_catalogue_cache_together_fetch_it_once() {
    let inventory = FakeInventory::default();
    let addr = inventory.start().await;
    let catalogue = Catalogue::new(format!("http://{addr}"))
        .expect("catalogue")
        .with_ttl(Duration::from_secs(60));
    let product: uuid::Uuid = PRODUCT.parse().expect("uuid");
    inventory.hold_next.store(true, Ordering::SeqCst);
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let catalogue = catalogue.clone();
            tokio::spawn(async move { catalogue.products(&[product]).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while inventory.calls() == 0 {
        assert!(Instant::now() < deadline, "nobody fetched the catalogue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every lookup has had time to miss the cache and ask.
    tokio::time::sleep(Duration::from_millis(300)).await;
    inventory.release.notify_one();
    for lookup in lookups {
        let found = lookup.await.expect("task").expect("products");
        assert!(found.contains_key(&product));
    }
    assert_eq!(inventory.calls(), 1, "one fetch for all of them");
}

/// The real orchestrator router on an in-memory engine with no participant
/// (every saga waits at its first step: each checkout is answered 202 after
/// `config.wait`), pricing from `inventory`.
async fn orchestrator(inventory: SocketAddr, config: OrchestratorConfig) -> String {
    let timing = checkout_app::saga::Timing::default();
    let store = runtime::saga_store(&Storage::Memory, "orchestrator")
        .await
        .expect("store");
    let transport = runtime::transport(None, RabbitTuning::default())
        .await
        .expect("transport");
    let engine = runtime::orchestrator_engine(store, transport, timing, None).expect("engine");
    let catalogue = Catalogue::new(format!("http://{inventory}"))
        .expect("catalogue")
        .with_ttl(Duration::ZERO)
        .with_breaker(config.breaker);
    let state = Orchestrator::new(
        engine,
        checkout_app::saga::definition(timing).expect("definition"),
        catalogue,
        config,
    );
    let router = checkout_app::orchestrator::router(state);
    format!(
        "http://{}",
        serve(checkout_app::http::with_json_fallbacks(router)).await
    )
}

async fn start_checkout(
    http: &reqwest::Client,
    orchestrator: &str,
) -> (StatusCode, HeaderMap, Value) {
    start_keyed_checkout(http, orchestrator, None).await
}

/// One unit of [`PRODUCT`] at 29.99, with `key` as its Idempotency-Key.
async fn start_keyed_checkout(
    http: &reqwest::Client,
    orchestrator: &str,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = http
        .post(format!("{orchestrator}/checkouts"))
        .json(&order(PRODUCT, 1, "29.99"));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("the orchestrator answers");
    let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn past_max_in_flight_the_orchestrator_refuses_at_once_with_503_and_retry_after() {
    let inventory = FakeInventory::default();
    let inventory_addr = inventory.start().await;
    let orchestrator = orchestrator(
        inventory_addr,
        OrchestratorConfig {
            wait: Duration::from_secs(2),
            max_in_flight: 1,
            ..OrchestratorConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let first = tokio::spawn({
        let http = http.clone();
        let orchestrator = orchestrator.clone();
        async move { start_checkout(&http, &orchestrator).await }
    });
    // The first is in its handler once it has asked for prices.
    let deadline = Instant::now() + Duration::from_secs(5);
    while inventory.calls() == 0 {
        assert!(
            Instant::now() < deadline,
            "the first checkout never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (status, headers, body) = start_checkout(&http, &orchestrator).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "overloaded");
    assert_eq!(retry_after(&headers), 1);
    assert_eq!(inventory.calls(), 1, "the refused checkout was not priced");

    let (status, _, body) = first.await.expect("first");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The slot is free again.
    let (status, _, body) = start_checkout(&http, &orchestrator).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn an_open_catalogue_breaker_fails_checkouts_fast_until_a_probe_succeeds() {
    let inventory = FakeInventory::default();
    inventory.failing.store(true, Ordering::SeqCst);
    let inventory_addr = inventory.start().await;
    let cool_down = Duration::from_millis(1_000);
    let orchestrator = orchestrator(
        inventory_addr,
        OrchestratorConfig {
            wait: Duration::from_millis(100),
            breaker: BreakerConfig {
                failures: 2,
                cool_down,
            },
            ..OrchestratorConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let (status, _, body) = start_checkout(&http, &orchestrator).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    assert_eq!(inventory.calls(), 2);
    inventory.failing.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let (status, headers, body) = start_checkout(&http, &orchestrator).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(retry_after(&headers), 1);
    assert_eq!(
        inventory.calls(),
        2,
        "the inventory is not called while open"
    );

    tokio::time::sleep(cool_down + Duration::from_millis(100)).await;
    let (status, _, body) = start_checkout(&http, &orchestrator).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the probe priced it: {body}");
    assert_eq!(inventory.calls(), 3);
    let (status, _, _) = start_checkout(&http, &orchestrator).await;
    assert_eq!(status, StatusCode::ACCEPTED, "closed again");
    assert_eq!(inventory.calls(), 4);
}

/// A fake inventory service and an orchestrator on it that answers `202`
/// after 100 ms (its sagas never finish: no participant).
async fn answering_after_100ms() -> (FakeInventory, String) {
    let inventory = FakeInventory::default();
    let inventory_addr = inventory.start().await;
    let orchestrator = orchestrator(
        inventory_addr,
        OrchestratorConfig {
            wait: Duration::from_millis(100),
            ..OrchestratorConfig::default()
        },
    )
    .await;
    (inventory, orchestrator)
}

/// A client that retries a checkout with its Idempotency-Key gets that
/// checkout's saga even when the checkout could not be priced again: the
/// price went up (the client's price no longer matches: was `422`), the
/// inventory service is down (was `503`). A new key is still priced.
#[tokio::test]
async fn a_retry_with_its_key_gets_its_saga_when_pricing_again_would_fail() {
    let (inventory, orchestrator) = answering_after_100ms().await;
    let http = reqwest::Client::new();
    let (status, _, first) = start_keyed_checkout(&http, &orchestrator, Some("retry-7")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let saga = first["sagaId"].as_str().expect("sagaId").to_owned();

    inventory.repriced.store(true, Ordering::SeqCst);
    let (status, _, body) = start_keyed_checkout(&http, &orchestrator, Some("retry-7")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "repriced: {body}");
    assert_eq!(body["sagaId"], saga.as_str());
    let (status, _, body) = start_keyed_checkout(&http, &orchestrator, Some("new-7")).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a new key is priced: {body}"
    );

    inventory.failing.store(true, Ordering::SeqCst);
    let (status, _, body) = start_keyed_checkout(&http, &orchestrator, Some("retry-7")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "inventory down: {body}");
    assert_eq!(body["sagaId"], saga.as_str());
    let (status, _, body) = start_keyed_checkout(&http, &orchestrator, Some("new-8")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a new key is priced: {body}"
    );
    let (status, _, body) = start_keyed_checkout(&http, &orchestrator, None).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "without a key: {body}"
    );
    // Keys are the client's: another user's "retry-7" is another checkout.
    let another_user = http
        .post(format!("{orchestrator}/checkouts"))
        .header("idempotency-key", "retry-7")
        .json(&json!({ "userId": "user-456", "items": [{ "productId": PRODUCT, "quantity": 1, "price": "29.99" }] }))
        .send()
        .await
        .expect("the orchestrator answers");
    let status = another_user.status();
    let body: Value = another_user.json().await.expect("JSON body");
    assert_eq!(status.as_u16(), 503, "another user's key: {body}");
    assert!(body.get("sagaId").is_none(), "{body}");
}

/// A key used again for a different cart is refused: answering with the
/// first checkout's outcome would tell this client its cart was ordered.
/// The same cart with the same key is still that checkout.
#[tokio::test]
async fn a_key_used_again_for_a_different_cart_is_refused() {
    let (_inventory, orchestrator) = answering_after_100ms().await;
    let http = reqwest::Client::new();
    let (status, _, first) = start_keyed_checkout(&http, &orchestrator, Some("cart-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, _, again) = start_keyed_checkout(&http, &orchestrator, Some("cart-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["sagaId"], first["sagaId"]);
    let other_cart = http
        .post(format!("{orchestrator}/checkouts"))
        .header("idempotency-key", "cart-1")
        .json(&order(PRODUCT, 2, "29.99"))
        .send()
        .await
        .expect("the orchestrator answers");
    let status = other_cart.status();
    let body: Value = other_cart.json().await.expect("JSON body");
    assert_eq!(status.as_u16(), 422, "{body}");
    assert_eq!(body["error"], "idempotency_key_reused", "{body}");
    assert!(body.get("sagaId").is_none(), "{body}");
}

/// A retry that arrives while its first try is still being priced waits for
/// that try's answer and gets its saga, even though pricing the retry fails
/// (without the turn per key it was answered `503` at once, the first try's
/// saga not yet created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_during_its_first_try_s_pricing_gets_that_try_s_saga() {
    let (inventory, orchestrator) = answering_after_100ms().await;
    let http = reqwest::Client::new();
    inventory.hold_next.store(true, Ordering::SeqCst);
    let first = {
        let (http, orchestrator) = (http.clone(), orchestrator.clone());
        tokio::spawn(
            async move { start_keyed_checkout(&http, &orchestrator, Some("slow-1")).await },
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while inventory.calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first try was never priced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The catalogue fails from now on; the first try's answer is decided.
    inventory.failing.store(true, Ordering::SeqCst);
    let retry = {
        let (http, orchestrator) = (http.clone(), orchestrator.clone());
        tokio::spawn(
            async move { start_keyed_checkout(&http, &orchestrator, Some("slow-1")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    inventory.release.notify_one();

    // Bounded: a turn that is never handed on would hang here otherwise.
    let answered = |task: tokio::task::JoinHandle<(StatusCode, HeaderMap, Value)>| async move {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("answered within 30 s")
            .expect("task")
    };
    let (status, _, first) = answered(first).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, _, retried) = answered(retry).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the retry: {retried}");
    assert_eq!(retried["sagaId"], first["sagaId"]);
}

/// Checkouts of the two-orchestrator scenario and its concurrent clients.
const LOAD: usize = 240;
const CLIENTS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_over_two_orchestrators_one_killed_mid_load_costs_clients_nothing() {
    let mut cluster = Cluster::new("e_gw_failover", &binary()).await;
    cluster.start_all().await;
    let first = Node::new(Role::Orchestrator);
    let second = Node::nth(Role::Orchestrator, 1);
    cluster.spawn(second).await;
    cluster.ready(second).await;
    let both = format!("{},{}", cluster.url(first), cluster.url(second));
    let gateway = Node::new(Role::Gateway);
    cluster.kill(gateway).await;
    cluster
        .restart_with(gateway, "ORCHESTRATOR_URL", &both)
        .await;

    let products = cluster.products().await;
    let (progress, handle) = load(vec![cluster.url(gateway)], products, CLIENTS, LOAD, 21);
    progress.reached(LOAD / 3).await;
    cluster.kill(first).await;
    let report = handle.await.expect("load");

    let settle = cluster.await_terminal(Duration::from_secs(90)).await;
    let figures = cluster.figures(0).await;
    let scenario = "one gateway, two orchestrators, one kill -9 (not restarted)";
    println!("{}", figures.table(scenario, &report, settle));
    assert_eq!(
        (report.errors, report.unavailable, report.other),
        (0, 0, 0),
        "every checkout was answered on the first try: {report:?}"
    );
    assert_eq!(
        report.ok + report.refused + report.accepted + report.failed,
        LOAD
    );
    assert_eq!(
        figures.total_sagas(),
        LOAD as i64,
        "one saga per checkout: no retry started a second"
    );
    figures.assert_invariants(scenario, 0, 0);
    cluster.shutdown().await;
}

/// A `503` comes from a live orchestrator whose own dependency failed (its
/// catalogue breaker is open, say): the gateway relays it with its
/// `Retry-After`, does not try the others, and does not count it against
/// the orchestrator's breaker.
#[tokio::test]
async fn a_503_from_a_live_orchestrator_is_relayed_with_its_retry_after_and_not_held_against_it() {
    use axum::response::IntoResponse;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/checkouts",
        axum::routing::post(move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"success": false, "error": "unavailable", "message": "the catalogue is unavailable"})),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("7"));
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gateway = gateway(format!("http://{addr},http://{addr}"), |c| {
        c.breaker = BreakerConfig {
            failures: 1,
            cool_down: Duration::from_secs(60),
        };
    })
    .await;
    let http = reqwest::Client::new();
    for i in 1..=3 {
        let (status, headers, body) = post_checkout(&http, &gateway, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(retry_after(&headers), 7, "the orchestrator's Retry-After");
        assert_eq!(body["message"], "the catalogue is unavailable");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            i,
            "one try each, breaker never opened"
        );
    }
}
