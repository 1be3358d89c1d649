//! The crate's error type.

use saga_core::{ErrorKind, StepError};
use sea_orm::{DbErr, RuntimeErr};

/// Errors of the Postgres store, the inbox and the connection set-up.
///
/// Branch on [`Error::kind`]; it converts into [`saga_core::Error`] (as
/// [`saga_core::Error::Backend`] with the same kind) wherever the engine's
/// traits need one, and into a retryable [`StepError`] inside participant
/// handlers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database cannot be reached, refused the connection, or the pool
    /// timed out. Retry with backoff.
    #[error(
        "PostgreSQL is unavailable{context}: {source} \
         (check that the server is running and that the URL points at it)"
    )]
    Unavailable {
        /// Where it happened, e.g. ` at postgres://app@db:5432/orders` (password redacted).
        context: String,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
    /// The saga tables are missing or older than this crate expects.
    #[error(
        "the saga-postgres schema is missing or outdated ({detail}); run the migrations first: \
         `saga_postgres::migrate(&db).await` (or the service's `migrate` command)"
    )]
    Schema {
        /// What is missing.
        detail: String,
        /// The driver's error, if the problem surfaced as one.
        #[source]
        source: Option<DbErr>,
    },
    /// A configuration value is missing or invalid.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// Any other database error, classified by `kind`.
    #[error("database error ({kind}): {source}")]
    Database {
        /// The class of failure.
        kind: ErrorKind,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
    /// A stored row cannot be turned back into a saga or an outcome.
    #[error("stored data of `{key}` cannot be decoded: {reason}")]
    Corrupt {
        /// The saga id or inbox key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A value does not fit its column (a definition version above `i32::MAX`...).
    #[error("value out of range for the database: {0}")]
    OutOfRange(String),
    /// JSON (de)serialization failed.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// The class of failure, shared with every saga-core adapter.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Schema { .. } => ErrorKind::Schema,
            Self::Config(_) | Self::OutOfRange(_) | Self::Serialization(_) => ErrorKind::Invalid,
            Self::Database { kind, .. } => *kind,
            Self::Corrupt { .. } => ErrorKind::Other,
        }
    }

    pub(crate) fn corrupt(key: impl ToString, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<DbErr> for Error {
    fn from(source: DbErr) -> Self {
        match classify(&source) {
            ErrorKind::Unavailable => Self::Unavailable {
                context: String::new(),
                source,
            },
            ErrorKind::Schema => Self::Schema {
                detail: source.to_string(),
                source: Some(source),
            },
            kind => Self::Database { kind, source },
        }
    }
}

impl From<Error> for saga_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Serialization(e) => Self::Serialization(e),
            other => Self::backend(other.kind(), other),
        }
    }
}

/// Inside a participant handler, a database failure had no effect (the
/// transaction did not commit, or if it did, the inbox answers the
/// redelivery), so it is retryable.
impl From<Error> for StepError {
    fn from(error: Error) -> Self {
        StepError::retryable(error.to_string())
    }
}

/// Classifies a sea-orm error by the PostgreSQL SQLSTATE or the driver failure.
pub(crate) fn classify(error: &DbErr) -> ErrorKind {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match error {
        DbErr::ConnectionAcquire(_) => return ErrorKind::Unavailable,
        DbErr::RecordNotFound(_) => return ErrorKind::NotFound,
        DbErr::Conn(runtime) => {
            // Connection set-up failures are all "unavailable" (refused,
            // unknown host, bad password, unknown database), except a
            // malformed URL.
            return match runtime {
                RuntimeErr::SqlxError(e) if matches!(e.as_ref(), Sqlx::Configuration(_)) => {
                    ErrorKind::Invalid
                }
                _ => ErrorKind::Unavailable,
            };
        }
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return ErrorKind::Other,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return ErrorKind::Other;
    };
    match sqlx.as_ref() {
        Sqlx::Database(db) => db
            .code()
            .map_or(ErrorKind::Other, |code| sqlstate_kind(&code)),
        Sqlx::Io(_)
        | Sqlx::Tls(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed
        | Sqlx::Protocol(_) => ErrorKind::Unavailable,
        Sqlx::Configuration(_) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        // undefined_table, undefined_column, undefined_function, invalid_schema_name
        "42P01" | "42703" | "42883" | "3F000" => ErrorKind::Schema,
        "23505" => ErrorKind::Duplicate,
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => ErrorKind::Conflict,
        // query_canceled (statement_timeout)
        "57014" => ErrorKind::Timeout,
        // admin/crash shutdown, cannot_connect_now, database does not exist
        "57P01" | "57P02" | "57P03" | "3D000" => ErrorKind::Unavailable,
        // connection exceptions, insufficient resources, invalid authorization, read-only standby
        _ if code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("28")
            || code == "25006" =>
        {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        assert_eq!(sqlstate_kind("42P01"), ErrorKind::Schema);
        assert_eq!(sqlstate_kind("23505"), ErrorKind::Duplicate);
        assert_eq!(sqlstate_kind("40001"), ErrorKind::Conflict);
        assert_eq!(sqlstate_kind("08006"), ErrorKind::Unavailable);
        assert_eq!(sqlstate_kind("53300"), ErrorKind::Unavailable);
        assert_eq!(sqlstate_kind("57014"), ErrorKind::Timeout);
        assert_eq!(sqlstate_kind("22P02"), ErrorKind::Other);
    }

    #[test]
    fn errors_convert_to_core_errors_with_their_kind() {
        let schema = Error::Schema {
            detail: "table `saga_migrations` does not exist".into(),
            source: None,
        };
        assert!(schema.to_string().contains("run the migrations"));
        let core: saga_core::Error = schema.into();
        assert_eq!(core.kind(), ErrorKind::Schema);
        let unavailable: saga_core::Error =
            Error::from(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)).into();
        assert_eq!(unavailable.kind(), ErrorKind::Unavailable);
        assert!(unavailable.is_transient());
    }
}
