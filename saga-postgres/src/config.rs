//! Connection-pool configuration.

use std::fmt;
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::error::Error;

/// How to connect to PostgreSQL: the URL and the pool's limits.
///
/// Build it with [`PgConfig::new`], adjust it with the setters, then
/// [`connect`](PgConfig::connect). The crate reads no environment variable:
/// the application decides where the URL comes from (the checkout app's
/// `--db-url`/`DB_URL`, say). The defaults suit a service: a pool of 10
/// connections, 5 s to get a connection, no per-acquire ping (a connection idle
/// for 60 s is checked before use), no statement logging.
///
/// [`PgSagaStore`](crate::PgSagaStore) keeps one connection of the pool for
/// LISTEN/NOTIFY, so give the pool at least two.
#[derive(Clone)]
#[non_exhaustive]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database` (`postgresql://` works too).
    pub url: String,
    /// Most connections the pool opens (default 10).
    pub max_connections: u32,
    /// Connections kept open even when idle (default 0).
    pub min_connections: u32,
    /// How long to wait for a connection, new or pooled, before failing with
    /// [`Error::Unavailable`] (default 5 s).
    pub acquire_timeout: Duration,
    /// Close connections idle this long (default 10 min).
    pub idle_timeout: Option<Duration>,
    /// Replace connections older than this (default 30 min).
    pub max_lifetime: Option<Duration>,
    /// Server-side `statement_timeout` (default none).
    pub statement_timeout: Option<Duration>,
    /// The `application_name` shown in `pg_stat_activity` (default `saga-postgres`).
    pub application_name: String,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("statement_timeout", &self.statement_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl PgConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            statement_timeout: None,
            application_name: "saga-postgres".to_owned(),
        }
    }

    /// Sets the pool size.
    #[must_use]
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the number of idle connections kept open.
    #[must_use]
    pub fn min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// Sets how long to wait for a connection.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets the server-side statement timeout.
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// Sets the `application_name`.
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// The URL with its password replaced by `***`, for logs and errors.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    fn validate(&self) -> Result<(), Error> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(Error::Config(format!(
                "database URL `{}` must start with postgres:// or postgresql://",
                self.redacted_url()
            )));
        }
        if self.max_connections == 0 || self.min_connections > self.max_connections {
            return Err(Error::Config(format!(
                "pool size: max_connections ({}) must be at least 1 and at least min_connections ({})",
                self.max_connections, self.min_connections
            )));
        }
        Ok(())
    }

    /// The sea-orm options this configuration stands for.
    #[must_use]
    pub fn connect_options(&self) -> ConnectOptions {
        // sea-orm's driver only recognises the `postgres://` scheme.
        let url = match self.url.strip_prefix("postgresql://") {
            Some(rest) => format!("postgres://{rest}"),
            None => self.url.clone(),
        };
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            // A ping per acquire would double the round trips of every store call.
            .test_before_acquire(false)
            .test_before_acquire_if_idle_for(Duration::from_secs(60))
            .sqlx_logging(false)
            .set_application_name(self.application_name.clone());
        if let Some(timeout) = self.statement_timeout {
            options.statement_timeout(timeout);
        }
        options
    }

    /// Opens the pool (and one connection, to fail fast when the database is
    /// unreachable).
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed configuration; [`Error::Unavailable`]
    /// when the server cannot be reached or refuses the connection.
    #[tracing::instrument(name = "saga_postgres.connect", skip_all, fields(url = %self.redacted_url()))]
    pub async fn connect(&self) -> Result<DatabaseConnection, Error> {
        self.validate()?;
        Database::connect(self.connect_options())
            .await
            .map_err(|e| match Error::from(e) {
                Error::Unavailable { source, .. } => Error::Unavailable {
                    context: format!(" at {}", self.redacted_url()),
                    source,
                },
                Error::Database {
                    kind: saga_core::ErrorKind::Invalid,
                    source,
                } => Error::Config(format!("database URL `{}`: {source}", self.redacted_url())),
                other => other,
            })
    }
}

/// Replaces the password of a URL with `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact("postgres://app@db/orders"),
            "postgres://app@db/orders"
        );
        let config = PgConfig::new("postgres://app:s3cret@db/orders");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn the_url_scheme_and_pool_size_are_checked_before_connecting() {
        let config = PgConfig::new("postgresql://app@db/orders").max_connections(32);
        assert_eq!(
            config.connect_options().get_url(),
            "postgres://app@db/orders"
        );
        assert!(config.validate().is_ok());
        let scheme = PgConfig::new("mysql://db/x")
            .validate()
            .expect_err("wrong scheme");
        assert!(scheme.to_string().contains("postgres://"), "{scheme}");
        assert_eq!(scheme.kind(), saga_core::ErrorKind::Invalid);
        let empty = PgConfig::new("postgres://db/x")
            .max_connections(0)
            .validate()
            .expect_err("no connections");
        assert!(empty.to_string().contains("max_connections"), "{empty}");
    }
}
