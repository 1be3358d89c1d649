//! The crate's error type.

use saga_core::{ErrorKind, StepError};
use sea_orm::{DbErr, RuntimeErr};

/// Errors of the SQLite store, the inbox and opening the database.
///
/// Branch on [`Error::kind`]; it converts into [`saga_core::Error`] (as
/// [`saga_core::Error::Backend`] with the same kind) wherever the engine's
/// traits need one, and into a retryable [`StepError`] inside participant
/// handlers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file cannot be opened or created, is locked by another
    /// writer for longer than the busy timeout, or the pool timed out. Retry
    /// with backoff.
    #[error("SQLite is unavailable{context}: {source}")]
    Unavailable {
        /// Where it happened, e.g. ` at ./data/saga.db`.
        context: String,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
    /// The saga tables are missing or older than this crate expects.
    #[error(
        "the saga-sqlite schema is missing or outdated ({detail}); run the migrations first: \
         `saga_sqlite::migrate(&db).await` (SqliteSagaStore::open runs them)"
    )]
    Schema {
        /// What is missing.
        detail: String,
        /// The driver's error, if the problem surfaced as one.
        #[source]
        source: Option<DbErr>,
    },
    /// A configuration value is invalid.
    #[error("invalid SQLite configuration: {0}")]
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
    /// A value does not fit its column (a version above `i64::MAX`...).
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
/// transaction did not commit), so it is retryable.
impl From<Error> for StepError {
    fn from(error: Error) -> Self {
        StepError::retryable(error.to_string())
    }
}

/// Classifies a sea-orm error by SQLite's extended result code or the driver failure.
pub(crate) fn classify(error: &DbErr) -> ErrorKind {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match error {
        DbErr::ConnectionAcquire(_) => return ErrorKind::Unavailable,
        DbErr::RecordNotFound(_) => return ErrorKind::NotFound,
        DbErr::Conn(runtime) => {
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
        Sqlx::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok());
            code.map_or(ErrorKind::Other, |code| {
                result_code_kind(code, db.message())
            })
        }
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => {
            ErrorKind::Unavailable
        }
        Sqlx::Configuration(_) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

/// SQLite's (extended) result code and message to a kind.
fn result_code_kind(code: i32, message: &str) -> ErrorKind {
    // The primary result code is the low byte of an extended one.
    match code & 0xff {
        // SQLITE_BUSY, SQLITE_LOCKED: another writer held the file past the busy timeout.
        5 | 6 => ErrorKind::Unavailable,
        // SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_FULL, SQLITE_READONLY
        14 | 10 | 13 | 8 => ErrorKind::Unavailable,
        // SQLITE_CONSTRAINT_PRIMARYKEY (1555), SQLITE_CONSTRAINT_UNIQUE (2067)
        19 if code == 1555 || code == 2067 => ErrorKind::Duplicate,
        // SQLITE_ERROR: "no such table" / "no such column" mean a missing migration.
        1 if message.starts_with("no such table") || message.starts_with("no such column") => {
            ErrorKind::Schema
        }
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_map_to_kinds() {
        assert_eq!(
            result_code_kind(5, "database is locked"),
            ErrorKind::Unavailable
        );
        assert_eq!(
            result_code_kind(517, "busy snapshot"),
            ErrorKind::Unavailable
        );
        assert_eq!(
            result_code_kind(2067, "UNIQUE constraint failed"),
            ErrorKind::Duplicate
        );
        assert_eq!(
            result_code_kind(1555, "UNIQUE constraint failed"),
            ErrorKind::Duplicate
        );
        assert_eq!(
            result_code_kind(787, "FOREIGN KEY constraint failed"),
            ErrorKind::Other
        );
        assert_eq!(
            result_code_kind(1, "no such table: saga_state"),
            ErrorKind::Schema
        );
        assert_eq!(
            result_code_kind(1, "near \"x\": syntax error"),
            ErrorKind::Other
        );
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
