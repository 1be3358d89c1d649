//! Connection-pool configuration.

use std::fmt;
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::error::Error;

/// How to connect to PostgreSQL: the URL and the pool's limits.
///
/// Build it with [`PgConfig::new`] or from the environment with
/// [`PgConfig::from_env`] (`DB_URL`...), adjust it with the setters, then
/// [`connect`](PgConfig::connect). The defaults suit a service: a pool of 10
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
    /// The environment variable holding the database URL.
    pub const URL_VAR: &'static str = "DB_URL";

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

    /// Reads the configuration from the environment:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `DB_URL` | the database URL | required |
    /// | `DB_MAX_CONNECTIONS` | pool size | 10 |
    /// | `DB_MIN_CONNECTIONS` | idle connections kept | 0 |
    /// | `DB_ACQUIRE_TIMEOUT_MS` | wait for a connection | 5000 |
    /// | `DB_STATEMENT_TIMEOUT_MS` | server statement timeout | none |
    ///
    /// # Errors
    /// [`Error::Config`] when `DB_URL` is unset or a number does not parse.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `lookup`
    /// (a config file, a test map).
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let url = lookup(Self::URL_VAR)
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(format!(
                    "{} is not set; set it to the database URL, e.g. postgres://postgres@localhost:5432/orchestrator",
                    Self::URL_VAR
                ))
            })?;
        let number = |name: &str| -> Result<Option<u64>, Error> {
            lookup(name)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|e| {
                        Error::Config(format!("{name}=`{v}` is not a whole number: {e}"))
                    })
                })
                .transpose()
        };
        let small = |name: &str, value: u64| {
            u32::try_from(value).map_err(|_| Error::Config(format!("{name}={value} is too large")))
        };
        let mut config = Self::new(url.trim());
        if let Some(n) = number("DB_MAX_CONNECTIONS")? {
            config.max_connections = small("DB_MAX_CONNECTIONS", n)?;
        }
        if let Some(n) = number("DB_MIN_CONNECTIONS")? {
            config.min_connections = small("DB_MIN_CONNECTIONS", n)?;
        }
        if let Some(ms) = number("DB_ACQUIRE_TIMEOUT_MS")? {
            config.acquire_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = number("DB_STATEMENT_TIMEOUT_MS")? {
            config.statement_timeout = Some(Duration::from_millis(ms));
        }
        config.validate()?;
        Ok(config)
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
    fn from_vars_reads_db_url_and_pool_settings() {
        let vars = |name: &str| match name {
            "DB_URL" => Some("postgresql://app@db/orders".to_owned()),
            "DB_MAX_CONNECTIONS" => Some("32".to_owned()),
            "DB_ACQUIRE_TIMEOUT_MS" => Some("250".to_owned()),
            _ => None,
        };
        let config = PgConfig::from_vars(vars).expect("valid");
        assert_eq!(config.max_connections, 32);
        assert_eq!(config.acquire_timeout, Duration::from_millis(250));
        assert_eq!(
            config.connect_options().get_url(),
            "postgres://app@db/orders"
        );
    }

    #[test]
    fn from_vars_explains_what_is_missing_or_wrong() {
        let missing = PgConfig::from_vars(|_| None).expect_err("DB_URL is required");
        assert!(
            missing.to_string().contains("DB_URL is not set"),
            "{missing}"
        );
        let bad = PgConfig::from_vars(|name| match name {
            "DB_URL" => Some("postgres://db/x".to_owned()),
            "DB_MAX_CONNECTIONS" => Some("many".to_owned()),
            _ => None,
        })
        .expect_err("not a number");
        assert!(bad.to_string().contains("DB_MAX_CONNECTIONS"), "{bad}");
        let scheme =
            PgConfig::from_vars(|name| (name == "DB_URL").then(|| "mysql://db/x".to_owned()))
                .expect_err("wrong scheme");
        assert_eq!(scheme.kind(), saga_core::ErrorKind::Invalid);
    }
}
