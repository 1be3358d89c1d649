//! The closed-loop load: seeded carts, the clients, latency histograms and
//! the live progress bar.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rust_decimal::Decimal;
use saga_core::{Engine, Saga, SagaStatus};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::messages::LineItem;
use crate::saga::CheckoutData;

use super::rss::{RssMax, RssSampler};

/// A catalogue product: what a cart is drawn from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Product {
    pub(crate) id: Uuid,
    pub(crate) price: Decimal,
}

/// SplitMix64: small, fast, seedable, good enough to draw carts.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant for n <= 10.
        (self.next_u64() % n as u64) as usize
    }
}

/// A random cart: 1–3 distinct products, 1–3 units each.
pub(crate) fn cart(rng: &mut Rng, catalogue: &[Product]) -> Vec<(Product, u32)> {
    let lines = (1 + rng.below(3)).min(catalogue.len());
    let mut picked: Vec<usize> = Vec::with_capacity(lines);
    while picked.len() < lines {
        let i = rng.below(catalogue.len());
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked
        .into_iter()
        .map(|i| (catalogue[i], 1 + rng.below(3) as u32))
        .collect()
}

/// How one checkout ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The saga completed: order confirmed.
    Succeeded,
    /// The saga compensated (a declined payment, missing stock): order cancelled.
    Compensated,
    /// Anything else: a failed saga, a saga still running at the timeout, an
    /// HTTP or engine error; with a short description.
    Error(String),
}

/// Sends checkouts: through the gateway, or straight into the engine.
#[derive(Clone)]
pub(crate) enum Driver {
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

impl Driver {
    pub(crate) fn http(gateway: &str, timeout: Duration) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Self::Http {
            client,
            url: format!("{}/api/checkout", gateway.trim_end_matches('/')),
        })
    }

    pub(crate) fn engine(engine: Engine, saga: Saga<CheckoutData>, timeout: Duration) -> Self {
        Self::Engine {
            engine,
            saga,
            timeout,
        }
    }

    async fn checkout(&self, user: &str, cart: &[(Product, u32)]) -> Outcome {
        match self {
            Self::Http { client, url } => {
                let items: Vec<Value> = cart
                    .iter()
                    .map(|(p, q)| json!({ "productId": p.id, "quantity": q }))
                    .collect();
                let body = json!({ "userId": user, "items": items });
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
            Self::Engine {
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
pub(crate) struct Totals {
    pub(crate) succeeded: u64,
    pub(crate) compensated: u64,
    pub(crate) errors: u64,
}

impl Totals {
    pub(crate) fn add(&mut self, other: &Totals) {
        self.succeeded += other.succeeded;
        self.compensated += other.compensated;
        self.errors += other.errors;
    }
}

/// One level's settings.
pub(crate) struct LevelConfig {
    pub(crate) clients: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
    pub(crate) progress: bool,
    pub(crate) pids: Vec<u32>,
}

/// One level's measurements.
#[derive(Debug)]
pub(crate) struct LevelResult {
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
    /// Completed in the measured window.
    pub(crate) measured: Totals,
    /// Everything sent at this level, warm-up and stragglers included (for the
    /// comparison with the databases).
    pub(crate) all: Totals,
    /// Latency of succeeded and compensated checkouts, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Error descriptions and how often each happened.
    pub(crate) error_kinds: Vec<(String, u64)>,
    /// Throughput per second of the measured window (succeeded + compensated).
    pub(crate) timeline: Vec<u64>,
    /// Highest RSS per sampled process during the measured window.
    pub(crate) rss: Vec<RssMax>,
    /// `/proc/loadavg` when the level ended.
    pub(crate) loadavg: String,
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

/// Runs `clients` closed-loop clients for warm-up plus duration.
pub(crate) async fn run_level(
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
                let cart = cart(&mut rng, &catalogue);
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
        loadavg: super::report::loadavg(),
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
            let cart = cart(&mut rng, &catalogue);
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
                    cart(&mut rng, &catalogue)
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
