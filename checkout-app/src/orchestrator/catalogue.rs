//! The inventory catalogue, read over HTTP: the only source of prices.
//!
//! Prices are cached for a short time (`ttl`, 2 s by default) so a checkout
//! does not cost an extra HTTP call and query; an id missing from the cache
//! forces a refresh, so new products are seen at once.
//!
//! Lookups go through a circuit breaker ([`crate::breaker`]): once the
//! inventory service has failed `BREAKER_FAILURES` lookups in a row, checkouts
//! are refused at once (`503` with `Retry-After`) for `BREAKER_COOL_DOWN_MS`
//! instead of each waiting for a dead service; then one lookup probes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::breaker::{Breaker, BreakerConfig};
use crate::error::{Error, Result};

/// A catalogue product as the inventory service reports it (and the
/// gateway's `GET /api/products` lists it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "660facf7-b9cf-417a-8ee1-27afe2fb2c72",
    "name": "Wireless Mouse",
    "price": "29.99",
    "stock": 100
}))]
pub struct Product {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Unit price, a decimal string.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "29.99")]
    pub price: Decimal,
    /// Units in stock.
    pub stock: i64,
}

/// The cached catalogue and when it was fetched.
type Cached = Option<(Instant, HashMap<Uuid, Product>)>;

/// A client of the inventory service's catalogue, with a short-lived cache.
#[derive(Clone, Debug)]
pub struct Catalogue {
    http: reqwest::Client,
    base: String,
    ttl: Duration,
    cache: Arc<Mutex<Cached>>,
    /// Held while the catalogue is fetched for the cache: requests that miss
    /// it together wait for one fetch instead of each making their own.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    breaker: Breaker,
}

impl Catalogue {
    /// A client of the inventory service at `base` (e.g. `http://127.0.0.1:3002`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: impl Into<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Self {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            ttl: Duration::from_secs(2),
            cache: Arc::default(),
            refreshing: Arc::default(),
            breaker: Breaker::new("inventory", BreakerConfig::default()),
        })
    }

    /// Sets when the circuit breaker in front of the inventory service opens
    /// and for how long (a fresh, closed breaker).
    #[must_use]
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Breaker::new("inventory", config);
        self
    }

    /// Sets how long fetched prices are reused (zero: always ask the inventory service).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The products among `ids` that exist, from the cache when it is fresh
    /// and knows every id, else from the inventory service.
    ///
    /// # Errors
    /// [`Error::Upstream`] when the inventory service does not answer
    /// properly; [`Error::CircuitOpen`], without calling it, while its breaker is open.
    pub async fn products(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Product>> {
        if let Some(found) = self.cached(ids) {
            return Ok(found);
        }
        // One fetch at a time for the cache; whoever waited for it looks
        // again first. (Without a cache every request asks on its own.)
        let _refreshing = if self.ttl.is_zero() {
            None
        } else {
            let turn = self.refreshing.lock().await;
            if let Some(found) = self.cached(ids) {
                return Ok(found);
            }
            Some(turn)
        };
        let ticket = self
            .breaker
            .admit()
            .map_err(|retry_after| Error::CircuitOpen {
                service: "inventory",
                retry_after,
            })?;
        let all = match self.fetch_all().await {
            Ok(all) => {
                self.breaker.succeeded(ticket);
                all
            }
            Err(e) => {
                self.breaker.failed(ticket);
                return Err(e);
            }
        };
        let found = ids
            .iter()
            .filter_map(|id| all.get(id).map(|p| (*id, p.clone())))
            .collect();
        if !self.ttl.is_zero() {
            *self.lock() = Some((Instant::now(), all));
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, ids: &[Uuid]) -> Option<HashMap<Uuid, Product>> {
        let cache = self.lock();
        let (fetched, products) = cache.as_ref()?;
        if fetched.elapsed() > self.ttl {
            return None;
        }
        ids.iter()
            .map(|id| products.get(id).map(|p| (*id, p.clone())))
            .collect()
    }

    async fn fetch_all(&self) -> Result<HashMap<Uuid, Product>> {
        let upstream = |message: String| Error::Upstream {
            service: "inventory",
            message,
        };
        let response = self
            .http
            .get(format!("{}/products", self.base))
            .send()
            .await
            .map_err(|e| upstream(e.to_string()))?;
        if !response.status().is_success() {
            return Err(upstream(format!("status {}", response.status())));
        }
        let products: Vec<Product> = response.json().await.map_err(|e| upstream(e.to_string()))?;
        Ok(products.into_iter().map(|p| (p.id, p)).collect())
    }
}
