//! The inventory catalogue, read over HTTP: the only source of prices.

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// A catalogue product as the inventory service reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Unit price.
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    /// Units in stock.
    pub stock: i64,
}

/// A client of the inventory service's catalogue.
#[derive(Clone, Debug)]
pub struct Catalogue {
    http: reqwest::Client,
    base: String,
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
        })
    }

    /// The products among `ids` that exist.
    ///
    /// # Errors
    /// [`Error::Upstream`] when the inventory service does not answer properly.
    pub async fn products(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Product>> {
        let list = ids
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let upstream = |message: String| Error::Upstream {
            service: "inventory",
            message,
        };
        let response = self
            .http
            .get(format!("{}/products", self.base))
            .query(&[("ids", list)])
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
