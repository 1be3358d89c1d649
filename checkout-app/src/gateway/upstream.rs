//! The orchestrators behind the gateway: `ORCHESTRATOR_URL` may list several
//! (comma-separated). Requests are spread over them in turn; each has its own
//! circuit breaker, and one whose breaker is open is skipped. A request that
//! fails on one (connection refused or reset, the orchestrator died before
//! answering, a `502` or `504`, or a `503 overloaded`) is sent again, the
//! same body with the same `Idempotency-Key`, to the next, within
//! [`RetryPolicy`]'s budget. Another `503` is the orchestrator's own answer
//! (its store, broker or inventory service is down) and is relayed.
//!
//! Only safe requests come here: `GET`s, and checkouts that always carry an
//! `Idempotency-Key` (the gateway makes one when the client sent none), which
//! the orchestrator answers with the first saga's outcome however often it is
//! sent. A request that timed out is not sent again: the budget is spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::breaker::{Breaker, BreakerConfig, Ticket};
use crate::error::{Error, Result};
use crate::http::ApiError;

/// How the gateway tries a request again on another orchestrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one request in all, the first included (1: never again).
    pub attempts: u32,
    /// No new try starts once this long has passed since the first.
    pub budget: Duration,
    /// The wait before the second try; doubled before each next one (at most 1 s).
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 tries within 5 s, 50 ms then 100 ms apart.
    fn default() -> Self {
        Self {
            attempts: 3,
            budget: Duration::from_secs(5),
            backoff: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// The wait before try number `attempt` (from 1 for the second).
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(10);
        (self.backoff * factor).min(Duration::from_secs(1))
    }
}

/// A request to an orchestrator.
#[derive(Debug)]
pub(super) enum Call<'a> {
    /// `GET {orchestrator}{path}`.
    Get {
        /// The path (`/sagas/{id}`).
        path: &'a str,
    },
    /// `POST {orchestrator}{path}` with a JSON body and its idempotency key.
    Post {
        /// The path (`/checkouts`).
        path: &'a str,
        /// The JSON body.
        body: &'a Value,
        /// The `Idempotency-Key` sent with every try.
        key: &'a str,
    },
}

impl Call<'_> {
    fn path(&self) -> &str {
        match self {
            Self::Get { path } | Self::Post { path, .. } => path,
        }
    }
}

/// One orchestrator and its breaker.
#[derive(Debug)]
struct Upstream {
    url: String,
    breaker: Breaker,
}

/// An answer with its status, JSON body and `Retry-After`.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<axum::http::HeaderValue>,
}

impl Answer {
    /// A `502` or `504`: a proxy before the orchestrator could not reach it,
    /// or gave up on it. (A `503` comes from a live orchestrator whose own
    /// dependency failed, or that is at its bound: not its failure.)
    fn is_unavailable(&self) -> bool {
        matches!(self.status.as_u16(), 502 | 504)
    }

    /// A `503 overloaded`: the orchestrator is healthy but at its bound of
    /// checkouts in flight; nothing was started.
    fn is_overloaded(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE && self.body["error"] == "overloaded"
    }

    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(retry_after) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after);
        }
        response
    }
}

/// Why a try failed.
enum Failure {
    /// No answer (refused, reset, cut off mid-answer, not JSON).
    NoAnswer(String),
    /// A `502`-`504` answer, relayed if no other try does better.
    Unavailable(Answer),
}

/// The orchestrators, in turn, each behind its breaker. Clones share them.
#[derive(Clone, Debug)]
pub(super) struct Orchestrators {
    upstreams: Arc<[Upstream]>,
    next: Arc<AtomicUsize>,
    retry: RetryPolicy,
    http: reqwest::Client,
}

/// The URLs of a comma-separated list, without blanks and trailing slashes.
pub(super) fn parse_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|url| url.trim().trim_end_matches('/'))
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Orchestrators {
    /// The orchestrators of the comma-separated `urls`.
    ///
    /// # Errors
    /// [`Error::Config`] when the list names none.
    pub(super) fn new(
        urls: &str,
        http: reqwest::Client,
        retry: RetryPolicy,
        breaker: BreakerConfig,
    ) -> Result<Self> {
        let upstreams: Vec<Upstream> = parse_urls(urls)
            .into_iter()
            .map(|url| Upstream {
                breaker: Breaker::new(format!("orchestrator {url}"), breaker),
                url,
            })
            .collect();
        if upstreams.is_empty() {
            return Err(Error::Config(format!(
                "ORCHESTRATOR_URL names no orchestrator: `{urls}`"
            )));
        }
        Ok(Self {
            upstreams: upstreams.into(),
            next: Arc::default(),
            retry: RetryPolicy {
                attempts: retry.attempts.max(1),
                ..retry
            },
            http,
        })
    }

    /// The first orchestrator from `start` on (in turn) whose breaker lets a
    /// call through; else how long until one may.
    fn pick(&self, start: usize) -> Result<(&Upstream, Ticket), Duration> {
        let n = self.upstreams.len();
        let mut soonest = Duration::MAX;
        for i in 0..n {
            let upstream = &self.upstreams[(start + i) % n];
            match upstream.breaker.admit() {
                Ok(ticket) => return Ok((upstream, ticket)),
                Err(after) => soonest = soonest.min(after),
            }
        }
        Err(soonest)
    }

    /// Sends `call` to the orchestrators (in turn, trying again on another
    /// as [`RetryPolicy`] allows) and answers with the first usable answer.
    ///
    /// # Errors
    /// `503` (with `Retry-After` when every breaker is open) when no
    /// orchestrator answered usably; a `502`-`504` of the last try is relayed.
    pub(super) async fn call(
        &self,
        call: &Call<'_>,
        trace: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let started = Instant::now();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<Failure> = None;
        for attempt in 0..self.retry.attempts {
            if attempt > 0 {
                let delay = self.retry.delay(attempt);
                if started.elapsed() + delay > self.retry.budget {
                    break;
                }
                tokio::time::sleep(delay).await;
            }
            let (upstream, ticket) = match self.pick(first.wrapping_add(attempt as usize)) {
                Ok(picked) => picked,
                Err(retry_after) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "no orchestrator is available (their circuit breakers are open); try again",
                    )
                    .retry_after(retry_after));
                }
            };
            match self.exchange(upstream, call, trace).await {
                Ok(answer) if answer.is_overloaded() => {
                    // Healthy but busy: another may have room. Alive is what
                    // the breaker asks (a probe answered so closes it).
                    upstream.breaker.succeeded(ticket);
                    last = Some(Failure::Unavailable(answer));
                }
                Ok(answer) if answer.is_unavailable() => {
                    upstream.breaker.failed(ticket);
                    tracing::warn!(orchestrator = %upstream.url, status = %answer.status, attempt, "orchestrator unavailable; trying another");
                    last = Some(Failure::Unavailable(answer));
                }
                Ok(answer) => {
                    upstream.breaker.succeeded(ticket);
                    return Ok(answer.into_response());
                }
                Err(e) => {
                    upstream.breaker.failed(ticket);
                    let message = format!("orchestrator {}: {e}", upstream.url);
                    // A request sent and not answered in time may have
                    // started a saga that is still running: not sent again.
                    // One that never connected is safe to send elsewhere.
                    if e.is_timeout() && !e.is_connect() {
                        return Err(ApiError::unavailable(message));
                    }
                    tracing::warn!(orchestrator = %upstream.url, error = %e, attempt, "orchestrator did not answer; trying another");
                    last = Some(Failure::NoAnswer(message));
                }
            }
        }
        match last {
            Some(Failure::Unavailable(answer)) => Ok(answer.into_response()),
            Some(Failure::NoAnswer(message)) => Err(ApiError::unavailable(message)),
            None => Err(ApiError::unavailable("no orchestrator was tried")),
        }
    }

    /// One try on one orchestrator: the answer read to its end.
    async fn exchange(
        &self,
        upstream: &Upstream,
        call: &Call<'_>,
        trace: &HeaderMap,
    ) -> std::result::Result<Answer, Exchange> {
        let url = format!("{}{}", upstream.url, call.path());
        let request = match call {
            Call::Get { .. } => self.http.get(url),
            Call::Post { body, key, .. } => self
                .http
                .post(url)
                .json(body)
                .header("idempotency-key", *key),
        };
        let response = request.headers(trace.clone()).send().await?;
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| axum::http::HeaderValue::from_bytes(v.as_bytes()).ok());
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).map_err(|e| Exchange::NotJson(e.to_string()))?;
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

/// Why one try got no usable answer.
#[derive(Debug)]
enum Exchange {
    /// The HTTP exchange failed (refused, reset, cut off, timed out).
    Http(reqwest::Error),
    /// The answer was not JSON.
    NotJson(String),
}

impl Exchange {
    fn is_timeout(&self) -> bool {
        matches!(self, Self::Http(e) if e.is_timeout())
    }

    /// The connection was never made (refused, unreachable, connect timeout):
    /// nothing was sent.
    fn is_connect(&self) -> bool {
        matches!(self, Self::Http(e) if e.is_connect())
    }
}

impl From<reqwest::Error> for Exchange {
    fn from(e: reqwest::Error) -> Self {
        Self::Http(e)
    }
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(e) => write!(f, "{e}"),
            Self::NotJson(e) => write!(f, "answered without JSON: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_list_is_comma_separated_and_tolerant_of_blanks() {
        assert_eq!(
            parse_urls(" http://a:1/, ,http://b:2 "),
            ["http://a:1", "http://b:2"]
        );
        assert!(parse_urls(" , ").is_empty());
    }

    #[test]
    fn the_backoff_doubles_up_to_one_second() {
        let retry = RetryPolicy::default();
        assert_eq!(retry.delay(1), Duration::from_millis(50));
        assert_eq!(retry.delay(2), Duration::from_millis(100));
        assert_eq!(retry.delay(30), Duration::from_secs(1));
    }
}
