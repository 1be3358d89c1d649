//! The gateway's rate limit: per client (the peer's IP address) and overall,
//! in requests per second, each a token bucket (the `governor` crate's GCRA).
//! A request over either limit is answered `429 rate_limited` with
//! `Retry-After` (whole seconds) before anything else happens.
//!
//! It applies to the API (`/api/...`, not the docs), not to `/health`. The
//! client is the TCP peer: behind a proxy or load balancer every request
//! comes from its address, so set the per-client limit there (or not at all)
//! and keep only the overall one here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::http::ApiError;

/// Rate limits in requests per second; 0 turns a limit off (the default: both off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests per second one client (IP address) may send on average.
    pub per_client: u32,
    /// Requests one client may send at once above that rate (0: `per_client`,
    /// one second's worth).
    pub burst: u32,
    /// Requests per second of all clients together (bursts of one second's worth).
    pub total: u32,
}

impl RateLimitConfig {
    /// Whether any limit is on.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.per_client > 0 || self.total > 0
    }
}

/// How many checks between two sweeps of clients not seen lately.
const SWEEP_EVERY: u64 = 4_096;

/// Requests answered 429.
pub const RATE_LIMITED_TOTAL: &str = "gateway_rate_limited_total";

/// The limiters of [`RateLimitConfig`].
#[derive(Debug)]
pub(super) struct RateLimiter {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    total: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl RateLimiter {
    /// The limiters `config` turns on.
    pub(super) fn new(config: RateLimitConfig) -> Self {
        let per_client = NonZeroU32::new(config.per_client).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let total = NonZeroU32::new(config.total)
            .map(|rate| DefaultDirectRateLimiter::direct(Quota::per_second(rate)));
        Self {
            per_client,
            total,
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token for `client` and one from the overall bucket.
    ///
    /// # Errors
    /// A `429` with how long until the request would be let through.
    fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        if let Some(limiter) = &self.per_client {
            if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                // Forget clients whose bucket is full again, so the map stays small.
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            limiter.check_key(&client).map_err(|not_until| {
                ApiError::rate_limited(
                    "too many requests from this client; slow down",
                    not_until.wait_time_from(self.clock.now()),
                )
            })?;
        }
        if let Some(limiter) = &self.total {
            limiter.check().map_err(|not_until| {
                ApiError::rate_limited(
                    "the gateway is at its request rate limit; try again shortly",
                    not_until.wait_time_from(self.clock.now()),
                )
            })?;
        }
        Ok(())
    }
}

/// The middleware: refuses `/api/...` requests over a limit with `429`.
pub(super) async fn enforce(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/api/") || path.starts_with("/api/docs") {
        return next.run(request).await;
    }
    // Without the peer's address (a router driven in-process), every
    // request counts as one client.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    match limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            metrics::counter!(RATE_LIMITED_TOTAL).increment(1);
            refused.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn a_client_past_its_burst_is_refused_and_others_are_not() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_client: 1,
            burst: 3,
            total: 0,
        });
        for _ in 0..3 {
            assert!(limiter.check(ip(1)).is_ok());
        }
        let refused = limiter.check(ip(1)).expect_err("past the burst");
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(
            limiter.check(ip(2)).is_ok(),
            "another client has its own bucket"
        );
    }

    #[test]
    fn the_overall_limit_counts_every_client() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_client: 0,
            burst: 0,
            total: 2,
        });
        assert!(limiter.check(ip(1)).is_ok());
        assert!(limiter.check(ip(2)).is_ok());
        assert!(limiter.check(ip(3)).is_err());
    }

    #[test]
    fn off_by_default() {
        let limiter = RateLimiter::new(RateLimitConfig::default());
        assert!(!RateLimitConfig::default().is_on());
        for _ in 0..10_000 {
            assert!(limiter.check(ip(1)).is_ok());
        }
    }
}
