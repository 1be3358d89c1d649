//! [`SqliteSagaStore`]: the [`SagaStore`] on SQLite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_core::adapter::{Created, DefinitionKey, SagaCount, SagaQuery};
use saga_core::{LogEntry, SagaId, SagaInstance, SagaStatus, SagaStore};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use tokio::sync::broadcast;

use crate::config::SqliteConfig;
use crate::convert::{log_values, parse_time, state_values, time, to_instance, to_log};
use crate::error::Error;
use crate::ops::{Answer, Op, Saved};
use crate::writer::Writer;

/// How many finished-saga ids a slow waiter may lag behind.
const FINISHED_CAPACITY: usize = 1024;

/// The embedded [`SagaStore`]: sagas in `saga_state`, their logs in
/// `saga_logs`, in one SQLite file. Cheap to clone; clones share the pool
/// and the writer.
///
/// See the [crate documentation](crate) for the layout and guarantees.
#[derive(Clone)]
pub struct SqliteSagaStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    writer: Writer,
    finished: broadcast::Sender<SagaId>,
    location: String,
}

impl std::fmt::Debug for SqliteSagaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSagaStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

impl SqliteSagaStore {
    /// Opens (creating if missing) the database `config` names, runs the
    /// migrations, and starts the store's writer.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the file cannot be opened or created; a
    /// database error when a migration fails.
    pub async fn open(config: &SqliteConfig) -> Result<Self, Error> {
        let db = config.connect().await?;
        crate::migrate(&db).await?;
        Ok(Self::start(db, config.describe()))
    }

    /// A store on an open connection whose schema is migrated.
    ///
    /// # Errors
    /// [`Error::Schema`] when the migrations have not run;
    /// [`Error::Config`] when `db` is not a SQLite connection.
    pub async fn new(db: DatabaseConnection) -> Result<Self, Error> {
        if db.get_database_backend() != DbBackend::Sqlite || db.is_mock_connection() {
            return Err(Error::Config(
                "SqliteSagaStore needs a SQLite connection pool".to_owned(),
            ));
        }
        crate::migration::check_schema(&db).await?;
        Ok(Self::start(db, "a given connection".to_owned()))
    }

    fn start(db: DatabaseConnection, location: String) -> Self {
        let (finished, _) = broadcast::channel(FINISHED_CAPACITY);
        let announce = finished.clone();
        let writer = Writer::start(db.clone(), move |answer| {
            if let Answer::Saved(Saved::Written(id, status)) = answer
                && status.is_terminal()
            {
                let _ = announce.send(*id);
            }
        });
        Self {
            inner: Arc::new(Inner {
                db,
                writer,
                finished,
                location,
            }),
        }
    }

    /// The connection pool, for the application's own queries.
    #[must_use]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    async fn query(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<sea_orm::QueryResult>, Error> {
        Ok(self
            .inner
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                sql,
                values,
            ))
            .await?)
    }
}

fn unexpected(answer: &Answer) -> saga_core::Error {
    saga_core::Error::backend(
        saga_core::ErrorKind::Other,
        format!("the store's writer answered with {answer:?}"),
    )
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl SagaStore for SqliteSagaStore {
    #[tracing::instrument(name = "saga_sqlite.create", level = "debug", skip_all, fields(saga_id = %instance.id))]
    async fn create(
        &self,
        instance: &SagaInstance,
        logs: &[LogEntry],
    ) -> saga_core::Result<Created> {
        let op = Op::Create {
            id: instance.id,
            state: state_values(instance)?,
            key: instance.idempotency_key.clone(),
            logs: log_values(instance.id, logs)?,
        };
        match self.inner.writer.write(op).await? {
            Answer::Created(created) => Ok(created),
            other => Err(unexpected(&other)),
        }
    }

    #[tracing::instrument(name = "saga_sqlite.load", level = "debug", skip(self))]
    async fn load(&self, id: SagaId) -> saga_core::Result<Option<SagaInstance>> {
        let rows = self
            .query(
                "SELECT * FROM saga_state WHERE id = ?",
                vec![id.to_string().into()],
            )
            .await?;
        Ok(rows.first().map(to_instance).transpose()?)
    }

    #[tracing::instrument(name = "saga_sqlite.save", level = "debug", skip_all, fields(saga_id = %instance.id, expected_version))]
    async fn save(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> saga_core::Result<()> {
        let op = Op::Save {
            id: instance.id,
            status: instance.status,
            state: state_values(instance)?,
            expected: i64::try_from(expected_version)
                .map_err(|_| Error::OutOfRange(format!("expected version {expected_version}")))?,
            logs: log_values(instance.id, logs)?,
        };
        match self.inner.writer.write(op).await? {
            Answer::Saved(Saved::Written(..)) => Ok(()),
            Answer::Saved(Saved::Conflict) => Err(saga_core::Error::Conflict {
                id: instance.id,
                expected: expected_version,
            }),
            Answer::Saved(Saved::NotFound) => Err(saga_core::Error::NotFound(instance.id)),
            other => Err(unexpected(&other)),
        }
    }

    #[tracing::instrument(
        name = "saga_sqlite.claim_due",
        level = "debug",
        skip(self, lease, definitions)
    )]
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        owner: &str,
        lease: Duration,
        definitions: &[DefinitionKey],
    ) -> saga_core::Result<Vec<SagaInstance>> {
        if definitions.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let op = Op::Claim {
            now,
            until: saga_core::clock::add(now, lease),
            limit: self::limit(limit),
            owner: owner.to_owned(),
            definitions: definitions.to_vec(),
        };
        match self.inner.writer.write(op).await? {
            Answer::Claimed(claimed) => Ok(claimed),
            other => Err(unexpected(&other)),
        }
    }

    #[tracing::instrument(name = "saga_sqlite.logs", level = "debug", skip(self))]
    async fn logs(&self, id: SagaId) -> saga_core::Result<Vec<LogEntry>> {
        let rows = self
            .query(
                "SELECT * FROM saga_logs WHERE saga_id = ? ORDER BY seq",
                vec![id.to_string().into()],
            )
            .await?;
        Ok(rows.iter().map(to_log).collect::<Result<_, _>>()?)
    }

    #[tracing::instrument(name = "saga_sqlite.list", level = "debug", skip(self))]
    async fn list(&self, query: &SagaQuery) -> saga_core::Result<Vec<SagaInstance>> {
        let (filter, mut values) = filtered(query);
        let order = if query.oldest_first { "ASC" } else { "DESC" };
        values.push(limit(query.limit).into());
        let sql = format!(
            "SELECT * FROM saga_state {filter} ORDER BY updated_at {order}, id {order} LIMIT ?"
        );
        let rows = self.query(&sql, values).await?;
        Ok(rows.iter().map(to_instance).collect::<Result<_, _>>()?)
    }

    #[tracing::instrument(name = "saga_sqlite.counts", level = "debug", skip(self))]
    async fn counts(&self, query: &SagaQuery) -> saga_core::Result<Vec<SagaCount>> {
        let (filter, values) = filtered(query);
        let sql = format!(
            "SELECT saga_type, status, COUNT(*) AS count, MIN(created_at) AS oldest \
             FROM saga_state {filter} GROUP BY saga_type, status ORDER BY saga_type, status"
        );
        let rows = self.query(&sql, values).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in &rows {
            let saga_type: String = row.try_get("", "saga_type").map_err(Error::from)?;
            let status: String = row.try_get("", "status").map_err(Error::from)?;
            let count: i64 = row.try_get("", "count").map_err(Error::from)?;
            let oldest: String = row.try_get("", "oldest").map_err(Error::from)?;
            let key = format!("status counts of `{saga_type}`");
            let status = status
                .parse::<SagaStatus>()
                .map_err(|reason| Error::corrupt(&key, reason))?;
            counts.push(SagaCount::new(
                saga_type,
                status,
                u64::try_from(count).unwrap_or_default(),
                parse_time(&key, "oldest", &oldest)?,
            ));
        }
        Ok(counts)
    }

    #[tracing::instrument(name = "saga_sqlite.prune", level = "debug", skip(self))]
    async fn prune(
        &self,
        finished_before: DateTime<Utc>,
        batch: usize,
    ) -> saga_core::Result<usize> {
        if batch == 0 {
            return Ok(0);
        }
        let op = Op::Prune {
            before: finished_before,
            limit: limit(batch),
        };
        match self.inner.writer.write(op).await? {
            Answer::Pruned(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sagas finished through this store or its clones. Another store on
    /// the same file (another process) is not heard: the engine's polling
    /// covers it.
    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        Some(self.inner.finished.subscribe())
    }
}

/// The `WHERE` clause and its values for `query`'s filters.
fn filtered(query: &SagaQuery) -> (String, Vec<Value>) {
    let mut conditions = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(status) = query.status {
        conditions.push("status = ?");
        values.push(status.as_str().into());
    }
    if query.unfinished {
        conditions.push("status IN ('running', 'compensating')");
    }
    if let Some(saga_type) = &query.saga_type {
        conditions.push("saga_type = ?");
        values.push(saga_type.clone().into());
    }
    if let Some(before) = query.updated_before {
        conditions.push("updated_at < ?");
        values.push(time(before).into());
    }
    if let Some(key) = &query.idempotency_key {
        conditions.push("idempotency_key = ?");
        values.push(key.clone().into());
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    (filter, values)
}
