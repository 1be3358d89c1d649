//! The application's error type.

/// Errors of the checkout services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database operation failed.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The saga engine, store or transport failed.
    #[error(transparent)]
    Saga(#[from] saga_core::Error),
    /// A call to another service failed.
    #[error("{service} request failed: {message}")]
    Upstream {
        /// The service called.
        service: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A call to another service was not made: its circuit breaker is open
    /// after repeated failures (see [`crate::breaker`]).
    #[error("{service} is unavailable (circuit open); try again in {retry_after:?}")]
    CircuitOpen {
        /// The service not called.
        service: &'static str,
        /// When the breaker lets a call through again.
        retry_after: std::time::Duration,
    },
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or serving HTTP failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The application's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
