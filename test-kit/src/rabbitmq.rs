//! RabbitMQ's management HTTP API, on reqwest: vhosts, users, connections,
//! queues, publishing, for tests that need a vhost of their own or a fault
//! (connections closed, poison messages).
//!
//! The API's URL carries its credentials, e.g.
//! `http://guest:guest@127.0.0.1:15672/api` ([`API_ENV`]).

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// The variable naming the management API's URL in tests.
pub const API_ENV: &str = "SAGA_TEST_RABBITMQ_API";
/// The management API when [`API_ENV`] is unset.
pub const DEFAULT_API: &str = "http://guest:guest@127.0.0.1:15672/api";
/// The variable naming the broker's AMQP URL in tests.
pub const AMQP_ENV: &str = "SAGA_TEST_AMQP_URL";
/// The broker when [`AMQP_ENV`] is unset.
pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker's AMQP URL from [`AMQP_ENV`], else [`DEFAULT_AMQP`].
#[must_use]
pub fn amqp_from_env() -> String {
    std::env::var(AMQP_ENV).unwrap_or_else(|_| DEFAULT_AMQP.to_owned())
}

/// A request that got no answer, or an answer that could not be read.
#[derive(Debug)]
pub struct ApiError(String);

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ApiError {}

/// An answer of the API: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as text.
    pub text: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is empty or not JSON).
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A client of the management API.
#[derive(Clone, Debug)]
pub struct Management {
    url: String,
    base: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

impl Management {
    /// The API at [`API_ENV`] (else [`DEFAULT_API`]).
    ///
    /// # Panics
    /// When the variable is not an `http://user:pass@host:port/api` URL.
    #[must_use]
    pub fn from_env() -> Self {
        let url = std::env::var(API_ENV).unwrap_or_else(|_| DEFAULT_API.to_owned());
        Self::new(&url).unwrap_or_else(|e| panic!("{API_ENV}=`{url}`: {e}"))
    }

    /// The API at `url` (`http://user:pass@host:port/api`; no credentials:
    /// guest/guest).
    ///
    /// # Errors
    /// When `url` is not an HTTP URL.
    pub fn new(url: &str) -> Result<Self, ApiError> {
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "http" || u.scheme() == "https")
            .ok_or_else(|| ApiError("not an http://user:pass@host:port/api URL".to_owned()))?;
        let decode = |s: &str| percent_decode(s);
        let (user, password) = if parsed.username().is_empty() {
            ("guest".to_owned(), "guest".to_owned())
        } else {
            (
                decode(parsed.username()),
                decode(parsed.password().unwrap_or_default()),
            )
        };
        let mut base = parsed.clone();
        // Both setters only fail for URLs that cannot carry credentials.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ApiError(format!("HTTP client: {e}")))?;
        Ok(Self {
            url: url.to_owned(),
            base: base.as_str().trim_end_matches('/').to_owned(),
            user,
            password,
            http,
        })
    }

    /// The same API with a client of its own (no connection shared with
    /// this one, e.g. for a request from another runtime).
    ///
    /// # Errors
    /// As [`Management::new`].
    pub fn detached(&self) -> Result<Self, ApiError> {
        Self::new(&self.url)
    }

    /// The API's user.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Sends one request to `path` (below the API's base, e.g. `vhosts/x`).
    ///
    /// # Errors
    /// When the API does not answer (unreachable, or no answer within 10 s).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ApiError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let mut request = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.password))
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ApiError(format!("{method} {url}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApiError(format!("{method} {url}: {e}")))?;
        Ok(Answer { status, text })
    }

    /// Like [`Management::request`], for a 2xx answer.
    ///
    /// # Panics
    /// When the API is unreachable or answers otherwise.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let answer = self
            .request(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the RabbitMQ management API is unreachable ({e}); run ./scripts/services \
                     or set {API_ENV}"
                )
            });
        assert!(
            answer.status.is_success(),
            "RabbitMQ management API {method} {path}: {} {}",
            answer.status,
            answer.text
        );
        answer
    }

    /// GET `path`: its JSON.
    ///
    /// # Panics
    /// As [`Management::ok`].
    pub async fn get(&self, path: &str) -> Value {
        self.ok(Method::GET, path, None).await.json()
    }

    /// PUT `body` to `path`: the answer's JSON.
    ///
    /// # Panics
    /// As [`Management::ok`].
    pub async fn put(&self, path: &str, body: &Value) -> Value {
        self.ok(Method::PUT, path, Some(body)).await.json()
    }

    /// POST `body` to `path`: the answer's JSON.
    ///
    /// # Panics
    /// As [`Management::ok`].
    pub async fn post(&self, path: &str, body: &Value) -> Value {
        self.ok(Method::POST, path, Some(body)).await.json()
    }

    /// DELETE `path`; an object already gone is fine.
    ///
    /// # Panics
    /// When the API is unreachable or answers an error other than 404.
    pub async fn delete(&self, path: &str) {
        let answer = self
            .request(Method::DELETE, path, None)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ management API DELETE {path}: {e}"));
        assert!(
            answer.status.is_success() || answer.status == StatusCode::NOT_FOUND,
            "RabbitMQ management API DELETE {path}: {} {}",
            answer.status,
            answer.text
        );
    }

    /// Creates the vhost `name`.
    ///
    /// # Panics
    /// As [`Management::ok`].
    pub async fn create_vhost(&self, name: &str) {
        self.put(
            &format!("vhosts/{}", encode(name)),
            &Value::Object(Default::default()),
        )
        .await;
    }

    /// Deletes the vhost `name` (best effort: errors are ignored).
    pub async fn delete_vhost(&self, name: &str) {
        let _ = self
            .request(Method::DELETE, &format!("vhosts/{}", encode(name)), None)
            .await;
    }

    /// Every queue of `vhost` as the API reports it.
    ///
    /// # Panics
    /// As [`Management::ok`].
    pub async fn queues(&self, vhost: &str) -> Vec<Value> {
        self.get(&format!("queues/{}", encode(vhost)))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The names of `vhost`'s client connections.
    ///
    /// # Panics
    /// As [`Management::ok`].
    pub async fn connections(&self, vhost: &str) -> Vec<String> {
        self.get(&format!("vhosts/{}/connections", encode(vhost)))
            .await
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes every client connection of `vhost` (the per-vhost form of
    /// `rabbitmqctl close_all_connections`); returns how many.
    ///
    /// The API lists a new connection only after the broker's next
    /// statistics emission (every 5 s by default), so this asks again for up
    /// to `within` before concluding there is none.
    ///
    /// # Panics
    /// As [`Management::delete`].
    pub async fn close_connections(&self, vhost: &str, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        let mut names = self.connections(vhost).await;
        while names.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            names = self.connections(vhost).await;
        }
        for name in &names {
            self.delete(&format!("connections/{}", encode(name))).await;
        }
        names.len()
    }
}

/// `amqp` (a broker's AMQP URL) pointed at `vhost`: same scheme,
/// credentials, host and port.
#[must_use]
pub fn vhost_url(amqp: &str, vhost: &str) -> String {
    let (scheme, rest) = amqp
        .split_once("://")
        .unwrap_or(("amqp", "guest:guest@127.0.0.1:5672"));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{}", encode(vhost))
}

/// `amqp` (a broker's AMQP URL) pointed at `vhost`, as `user`.
#[must_use]
pub fn vhost_url_as(amqp: &str, vhost: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = amqp.split_once("://").unwrap_or(("amqp", "127.0.0.1:5672"));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!(
        "{scheme}://{}:{}@{host}/{}",
        encode(user),
        encode(password),
        encode(vhost)
    )
}

/// Percent-encodes a path segment (vhost `/` is `%2F`; connection names
/// hold spaces and `>`).
#[must_use]
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        assert_eq!(encode("127.0.0.1:1 -> 2"), "127.0.0.1%3A1%20-%3E%202");
        assert_eq!(
            vhost_url("amqp://guest:guest@127.0.0.1:5672/%2f", "t_1"),
            "amqp://guest:guest@127.0.0.1:5672/t_1"
        );
        assert_eq!(
            vhost_url_as("amqp://guest:guest@127.0.0.1:5672/%2f", "v", "u", "p"),
            "amqp://u:p@127.0.0.1:5672/v"
        );
        let api = Management::new("http://guest:gu%40st@127.0.0.1:15672/api/").expect("parses");
        assert_eq!(api.base, "http://127.0.0.1:15672/api");
        assert_eq!(api.user(), "guest");
        assert_eq!(api.password, "gu@st");
        assert!(Management::new("amqp://x").is_err());
    }
}
