//! The load generator: random carts from the catalogue, sent through the
//! gateway or straight into the engine, by closed-loop clients (each sends a
//! checkout, waits for its answer, sends the next).
//!
//! Two loops share the carts and the HTTP checkout:
//!
//! - [`run_level`]: `N` clients for a warm-up and a measured period, with
//!   latency histograms, a per-second timeline, RSS samples and a progress
//!   bar (the benchmark);
//! - [`load`]: `N` clients share a fixed number of checkouts, each with its
//!   own `Idempotency-Key`, retried while a service is down (the fault suite).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;
use saga_core::{Engine, Saga, SagaStatus};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use checkout_app::error::{Error, Result};
use checkout_app::messages::LineItem;
use checkout_app::saga::CheckoutData;

use crate::Rng;
use crate::procfs::{ComponentCpu, CpuMeter, ProcessRss, RssSampler, loadavg};

/// The seed catalogue's "Limited Stock Item" (5 units): [`load`] asks for
/// it in about one checkout line in ten, so that some checkouts run out of
/// stock and compensate.
pub const LIMITED: Uuid = Uuid::from_u128(0xdda6_0f33_8dfd_4da2_96c8_1a02_9d72_725a);

/// A catalogue product: what a cart is drawn from.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    /// The product's id.
    pub id: Uuid,
    /// Its catalogue price (what the engine-level driver charges).
    pub price: Decimal,
}

/// A random cart: 1–3 distinct products of `catalogue`, 1–3 units each.
/// With `scarce`, each line is that product one time in ten.
pub fn cart(rng: &mut Rng, catalogue: &[Product], scarce: Option<&Product>) -> Vec<(Product, u32)> {
    let lines = (1 + rng.below(3)).min(catalogue.len());
    let mut picked: Vec<Product> = Vec::with_capacity(lines);
    while picked.len() < lines {
        let product = match scarce {
            Some(scarce) if rng.below(10) == 0 => *scarce,
            _ => catalogue[rng.below(catalogue.len())],
        };
        if !picked.iter().any(|p| p.id == product.id) {
            picked.push(product);
        }
    }
    picked
        .into_iter()
        .map(|p| (p, 1 + rng.below(3) as u32))
        .collect()
}

/// The body of `POST /api/checkout` for `cart` (the gateway prices it from
/// the catalogue).
fn checkout_body(user: &str, cart: &[(Product, u32)]) -> Value {
    let items: Vec<Value> = cart
        .iter()
        .map(|(p, q)| json!({ "productId": p.id, "quantity": q }))
        .collect();
    json!({ "userId": user, "items": items })
}

/// How one checkout ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The saga completed: order confirmed.
    Succeeded,
    /// The saga compensated (a declined payment, missing stock): order cancelled.
    Compensated,
    /// Anything else: a failed saga, a saga still running at the timeout, an
    /// HTTP or engine error; with a short description.
    Error(String),
}

/// Sends checkouts: through the gateway, or straight into the engine.
#[derive(Clone, Debug)]
pub struct Driver(Target);

#[derive(Clone)]
enum Target {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Engine {
        engine: Engine,
        saga: Saga<CheckoutData>,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { url, .. } => write!(f, "Http({url})"),
            Self::Engine { timeout, .. } => write!(f, "Engine(timeout {timeout:?})"),
        }
    }
}

impl Driver {
    /// Checkouts through the gateway at `gateway`, each answered within `timeout`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn http(gateway: &str, timeout: Duration) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Self(Target::Http {
            client,
            url: format!("{}/api/checkout", gateway.trim_end_matches('/')),
        }))
    }

    /// Sagas started in `engine` and awaited for `timeout` each, no HTTP.
    #[must_use]
    pub fn engine(engine: Engine, saga: Saga<CheckoutData>, timeout: Duration) -> Self {
        Self(Target::Engine {
            engine,
            saga,
            timeout,
        })
    }

    async fn checkout(&self, user: &str, cart: &[(Product, u32)]) -> Outcome {
        match &self.0 {
            Target::Http { client, url } => {
                let body = checkout_body(user, cart);
                let response = match client.post(url).json(&body).send().await {
                    Ok(r) => r,
                    Err(e) if e.is_timeout() => return Outcome::Error("http timeout".into()),
                    Err(e) if e.is_connect() => return Outcome::Error("http connect".into()),
                    Err(_) => return Outcome::Error("http error".into()),
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                match (status, body["status"].as_str()) {
                    (200, _) => Outcome::Succeeded,
                    (422, Some("compensated")) => Outcome::Compensated,
                    (_, Some(saga)) => Outcome::Error(format!("{status} {saga}")),
                    (_, None) => Outcome::Error(format!("{status}")),
                }
            }
            Target::Engine {
                engine,
                saga,
                timeout,
            } => {
                let items = cart
                    .iter()
                    .map(|(p, q)| LineItem {
                        product_id: p.id,
                        quantity: *q,
                        unit_price: p.price,
                    })
                    .collect();
                let data = CheckoutData::new(Uuid::now_v7(), user.to_owned(), items);
                let id = match engine.start(saga, data).await {
                    Ok(id) => id,
                    Err(e) => return Outcome::Error(format!("start: {}", e.kind_name())),
                };
                match engine.wait(id, *timeout).await {
                    Ok(i) if i.status == SagaStatus::Completed => Outcome::Succeeded,
                    Ok(i) if i.status == SagaStatus::Compensated => Outcome::Compensated,
                    Ok(i) => Outcome::Error(format!("saga {}", i.status)),
                    Err(e) => Outcome::Error(format!("wait: {}", e.kind_name())),
                }
            }
        }
    }
}

/// `saga_core::Error`'s kind as a short word for error tallies.
trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for saga_core::Error {
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind()).to_lowercase()
    }
}

/// Counts of outcomes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Checkouts whose saga completed.
    pub succeeded: u64,
    /// Checkouts whose saga compensated.
    pub compensated: u64,
    /// Checkouts that ended otherwise (see [`Outcome::Error`]).
    pub errors: u64,
}

impl Totals {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Totals) {
        self.succeeded += other.succeeded;
        self.compensated += other.compensated;
        self.errors += other.errors;
    }
}

/// One level's settings.
#[derive(Clone, Debug)]
pub struct LevelConfig {
    /// Closed-loop clients.
    pub clients: usize,
    /// Warm-up, not measured.
    pub warmup: Duration,
    /// The measured period.
    pub duration: Duration,
    /// Seed of the carts.
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The service processes whose RSS is sampled and whose CPU time is counted.
    pub pids: Vec<u32>,
}

/// One level's measurements.
#[derive(Debug)]
pub struct LevelResult {
    /// Closed-loop clients.
    pub clients: usize,
    /// The measured period.
    pub duration: Duration,
    /// Completed in the measured window.
    pub measured: Totals,
    /// Everything sent at this level, warm-up and stragglers included (for the
    /// comparison with the databases).
    pub all: Totals,
    /// Latency of succeeded and compensated checkouts, in microseconds.
    pub latency: Histogram<u64>,
    /// Error descriptions and how often each happened.
    pub error_kinds: Vec<(String, u64)>,
    /// Throughput per second of the measured window (succeeded + compensated).
    pub timeline: Vec<u64>,
    /// Highest RSS per sampled process during the measured window.
    pub rss: Vec<ProcessRss>,
    /// CPU time of the services, PostgreSQL and RabbitMQ during the measured window.
    pub cpu: Vec<ComponentCpu>,
    /// `/proc/loadavg` when the level ended.
    pub loadavg: String,
}

struct ClientResult {
    measured: Totals,
    all: Totals,
    latency: Histogram<u64>,
    errors: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits; the bounds are valid constants.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `config.clients` closed-loop clients for warm-up plus duration,
/// each drawing its carts from `catalogue` with its own seed.
pub async fn run_level(
    driver: &Arc<Driver>,
    catalogue: &Arc<Vec<Product>>,
    config: LevelConfig,
) -> LevelResult {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let seconds = config.duration.as_secs().max(1) as usize + 1;
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicU64::new(0));

    let bar = progress_bar(&config);
    let sampler = RssSampler::start(config.pids.clone(), measure_from, end);
    let cpu_meter = CpuMeter::start(config.pids.clone(), measure_from, end);
    let ticker = {
        let bar = bar.clone();
        let done = Arc::clone(&done);
        let clients = config.clients;
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0_u64);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = Instant::now();
                let count = done.load(Ordering::Relaxed);
                let rate = (count - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, count);
                let phase = if now < measure_from {
                    "warm-up"
                } else {
                    "measure"
                };
                bar.set_position((now - start).as_millis() as u64);
                bar.set_message(format!(
                    "c={clients:<3} {phase} {rate:>7.0} sagas/s  total {count}"
                ));
                if now >= end {
                    break;
                }
            }
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..config.clients {
        let driver = Arc::clone(driver);
        let catalogue = Arc::clone(catalogue);
        let per_second = Arc::clone(&per_second);
        let done = Arc::clone(&done);
        let seed = config.seed
            ^ (config.clients as u64).wrapping_mul(0x1000_0000_01B3)
            ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let user = format!("bench-{}-{client}", config.clients);
        tasks.spawn(async move {
            let mut rng = Rng::new(seed);
            let mut result = ClientResult {
                measured: Totals::default(),
                all: Totals::default(),
                latency: histogram(),
                errors: Vec::new(),
            };
            while Instant::now() < end {
                let cart = cart(&mut rng, &catalogue, None);
                let sent = Instant::now();
                let outcome = driver.checkout(&user, &cart).await;
                let finished = Instant::now();
                done.fetch_add(1, Ordering::Relaxed);
                let counted = finished >= measure_from && finished < end;
                let tally = |t: &mut Totals| match &outcome {
                    Outcome::Succeeded => t.succeeded += 1,
                    Outcome::Compensated => t.compensated += 1,
                    Outcome::Error(_) => t.errors += 1,
                };
                tally(&mut result.all);
                if !counted {
                    continue;
                }
                tally(&mut result.measured);
                match outcome {
                    Outcome::Error(e) => result.errors.push(e),
                    Outcome::Succeeded | Outcome::Compensated => {
                        let micros = (finished - sent).as_micros().max(1) as u64;
                        result.latency.saturating_record(micros);
                        let second = (finished - measure_from).as_secs() as usize;
                        if let Some(slot) = per_second.get(second) {
                            slot.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            result
        });
    }

    let mut measured = Totals::default();
    let mut all = Totals::default();
    let mut latency = histogram();
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    while let Some(joined) = tasks.join_next().await {
        let Ok(client) = joined else {
            *errors.entry("client task panicked".into()).or_default() += 1;
            continue;
        };
        measured.add(&client.measured);
        all.add(&client.all);
        // Same bounds on both sides: adding cannot fail.
        let _ = latency.add(&client.latency);
        for e in client.errors {
            *errors.entry(e).or_default() += 1;
        }
    }
    let _ = ticker.await;
    bar.finish_and_clear();
    let rss = sampler.finish().await;
    let cpu = cpu_meter.finish().await;
    let timeline = per_second
        .iter()
        .take(config.duration.as_secs().max(1) as usize)
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    LevelResult {
        clients: config.clients,
        duration: config.duration,
        measured,
        all,
        latency,
        error_kinds: errors.into_iter().collect(),
        timeline,
        rss,
        cpu,
        loadavg: loadavg(),
    }
}

fn progress_bar(config: &LevelConfig) -> ProgressBar {
    let total = (config.warmup + config.duration).as_millis() as u64;
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:30.cyan/blue} {elapsed:>4} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// What a [`load`] saw (client side; invariants come from the databases).
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Checkouts sent (retries of one checkout count once).
    pub sent: usize,
    /// Answered 200: the saga completed.
    pub ok: usize,
    /// Answered 422: refused or compensated.
    pub refused: usize,
    /// Answered 202: the saga was still running at the gateway's wait.
    pub accepted: usize,
    /// Any other answer.
    pub other: usize,
    /// The first of the other answers, status and body, to tell what they were.
    pub first_other: Option<String>,
    /// Answered 500: the saga ended Failed (an operator's case).
    pub failed: usize,
    /// 502-504 answers, each retried with the same key.
    pub unavailable: usize,
    /// Transport errors, each retried with the same key.
    pub errors: usize,
    /// How long the whole load took.
    pub elapsed: Duration,
    /// The longest a checkout took from its first try to its answer,
    /// retries included: what a client waited at worst.
    pub slowest: Duration,
    /// When, from the start of the load, the first and the last try that
    /// failed (a transport error or a 502-504 answer) were sent: the window
    /// in which clients saw errors (each retried).
    pub error_window: Option<(Duration, Duration)>,
}

impl LoadReport {
    fn saw_error(&mut self, at: Duration) {
        self.error_window = Some(match self.error_window {
            Some((first, last)) => (first.min(at), last.max(at)),
            None => (at, at),
        });
    }
}

/// Progress of a running [`load`], for triggering a fault mid-load.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<AtomicUsize>);

impl Progress {
    /// Checkouts answered (or given up) so far.
    #[must_use]
    pub fn done(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Resolves once `n` checkouts have been answered (or failed).
    pub async fn reached(&self, n: usize) {
        while self.done() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running [`load`]: its progress and its report once done.
pub type LoadHandle = (Progress, tokio::task::JoinHandle<LoadReport>);

/// A closed-loop load: `clients` concurrent buyers send `total` checkouts of
/// random carts of `products` (with the [`LIMITED`] item about one line in
/// ten, when it is one of them) to `gateways` in turn. Every checkout has its
/// own `Idempotency-Key`, kept while it is retried after a 502-504 or a
/// transport error (a service is down: the fault), so a retry never starts a
/// second saga.
///
/// # Panics
/// The returned task panics when the HTTP client cannot be built or a client
/// task panics.
#[must_use]
pub fn load(
    gateways: Vec<String>,
    products: Vec<Product>,
    clients: usize,
    total: usize,
    seed: u64,
) -> LoadHandle {
    let progress = Progress::default();
    let counter = progress.clone();
    let handle = tokio::spawn(async move {
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        let gateways = Arc::new(gateways);
        let scarce = products.iter().find(|p| p.id == LIMITED).copied();
        let products = Arc::new(products);
        let mut tasks = Vec::new();
        for client in 0..clients {
            let next = Arc::clone(&next);
            let http = http.clone();
            let gateways = Arc::clone(&gateways);
            let products = Arc::clone(&products);
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                let mut report = LoadReport::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return report;
                    }
                    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let cart = cart(&mut rng, &products, scarce.as_ref());
                    let body = checkout_body(&format!("load-{client}"), &cart);
                    // The same key on every try: a retried request never starts a second saga.
                    let key = format!("load-{seed}-{i}");
                    report.sent += 1;
                    let first_try = Instant::now();
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let tried_at = started.elapsed();
                        let gateway = &gateways[(i + tries) % gateways.len()];
                        let answer = http
                            .post(format!("{gateway}/api/checkout"))
                            .header("Idempotency-Key", &key)
                            .json(&body)
                            .send()
                            .await;
                        let (status, response) = match answer {
                            Ok(r) => (r.status().as_u16(), Some(r)),
                            Err(_) => (0, None),
                        };
                        match status {
                            200 => report.ok += 1,
                            422 => report.refused += 1,
                            202 => report.accepted += 1,
                            // A saga that ended Failed (an operator's case).
                            500 => report.failed += 1,
                            // A service is down (the fault): try again a little later.
                            0 | 502..=504 if tries < 100 => {
                                report.saw_error(tried_at);
                                if status == 0 {
                                    report.errors += 1;
                                } else {
                                    report.unavailable += 1;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                            _ => {
                                report.other += 1;
                                if report.first_other.is_none() {
                                    let body = match response {
                                        Some(r) => r.text().await.unwrap_or_default(),
                                        None => String::new(),
                                    };
                                    report.first_other = Some(format!("{status} {body}"));
                                }
                            }
                        }
                        break;
                    }
                    report.slowest = report.slowest.max(first_try.elapsed());
                    counter.0.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let mut total_report = LoadReport {
            clients,
            ..LoadReport::default()
        };
        for task in tasks {
            let r = task.await.expect("load client");
            total_report.sent += r.sent;
            total_report.ok += r.ok;
            total_report.refused += r.refused;
            total_report.accepted += r.accepted;
            total_report.other += r.other;
            if total_report.first_other.is_none() {
                total_report.first_other = r.first_other;
            }
            total_report.errors += r.errors;
            total_report.unavailable += r.unavailable;
            total_report.failed += r.failed;
            total_report.slowest = total_report.slowest.max(r.slowest);
            if let Some((first, last)) = r.error_window {
                total_report.saw_error(first);
                total_report.saw_error(last);
            }
        }
        total_report.elapsed = started.elapsed();
        total_report
    });
    (progress, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Vec<Product> {
        (0..10)
            .map(|i| Product {
                id: Uuid::from_u128(i),
                price: Decimal::new(100, 2),
            })
            .collect()
    }

    #[test]
    fn carts_have_one_to_three_distinct_lines_of_one_to_three_units() {
        let catalogue = catalogue();
        let mut rng = Rng::new(7);
        let mut sizes = [0; 4];
        for _ in 0..3_000 {
            let cart = cart(&mut rng, &catalogue, None);
            sizes[cart.len()] += 1;
            let mut ids: Vec<Uuid> = cart.iter().map(|(p, _)| p.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), cart.len());
            assert!(cart.iter().all(|(_, q)| (1..=3).contains(q)));
        }
        assert_eq!(sizes[0], 0);
        assert!(sizes[1..].iter().all(|&n| n > 800), "{sizes:?}");
    }

    #[test]
    fn the_same_seed_draws_the_same_carts() {
        let catalogue = catalogue();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| {
                    cart(&mut rng, &catalogue, None)
                        .into_iter()
                        .map(|(p, q)| (p.id, q))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }
}
