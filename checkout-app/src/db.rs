//! Database connections: PostgreSQL from `DB_URL`, or an embedded SQLite database.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::error::{Error, Result};

/// The URL of a private in-memory SQLite database (the embedded mode).
pub const EMBEDDED: &str = "sqlite::memory:";

/// Connects to `url` (`postgres://...` or `sqlite:...`) with a bounded pool.
///
/// # Errors
/// [`Error::Config`] naming the URL (password hidden) when the database is unreachable.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    let sqlite = url.starts_with("sqlite:");
    options
        // One connection keeps an in-memory SQLite database alive and consistent.
        .max_connections(if sqlite { 1 } else { max_connections })
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(|e| Error::Config(format!("cannot connect to {}: {e}", redact(url))))
}

/// `url` with any password replaced by `***`, for messages and logs.
#[must_use]
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgresql://postgres:1111@localhost:5432/orders"),
            "postgresql://postgres:***@localhost:5432/orders"
        );
        assert_eq!(
            redact("postgres://postgres@localhost/orders"),
            "postgres://postgres@localhost/orders"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}
