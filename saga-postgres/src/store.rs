//! [`PgSagaStore`]: the [`SagaStore`] on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_core::adapter::{Created, DefinitionKey, SagaCount, SagaQuery};
use saga_core::{LogEntry, SagaId, SagaInstance, SagaStatus, SagaStore};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Order, QueryFilter,
    QueryOrder, QuerySelect, Select, Statement, Value,
};
use tokio::sync::broadcast;

use crate::batch::SaveBatcher;
use crate::config::PgConfig;
use crate::convert::{logs_json, save_row, state_values, to_instance, to_log};
use crate::entity::{saga_logs, saga_state};
use crate::error::Error;
use crate::notify::{self, ListenerTask};

/// Inserts the saga unless its idempotency key is taken, and its first log
/// entries only if it was inserted: one statement, one round trip.
/// (`jsonb_to_recordset` turns a JSON `null` payload into SQL NULL; the
/// COALESCE stores it back as the JSON `null` it was.)
const CREATE_SQL: &str = "\
WITH created AS (
    INSERT INTO saga_state (id, saga_type, definition_version, status, current_step, phase, attempt,
        waiting, uncertain, round_from, key_from, refused, steps, data, error, idempotency_key,
        version, next_wake_at, deadline_at, log_seq, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21, $22)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), logged AS (
    INSERT INTO saga_logs (saga_id, seq, event, step, attempt, payload, created_at)
    SELECT created.id, l.seq, l.event, l.step, l.attempt, COALESCE(l.payload, 'null'), l.created_at
    FROM created CROSS JOIN jsonb_to_recordset($23)
        AS l(seq bigint, event text, step text, attempt integer, payload jsonb, created_at timestamptz)
)
SELECT id FROM created";

/// Leases due sagas whose lease is free or expired and whose definition the
/// claiming engine has (`$5`: a JSON array of `{name, version}`); `SKIP
/// LOCKED` makes concurrent claimers take disjoint sets without waiting on
/// each other.
const CLAIM_SQL: &str = "\
UPDATE saga_state SET lease_owner = $1, lease_until = $2
WHERE id IN (
    SELECT id FROM saga_state
    WHERE next_wake_at <= $3 AND (lease_until IS NULL OR lease_until <= $3)
        AND (saga_type, definition_version) IN (
            SELECT d.name, d.version FROM jsonb_to_recordset($5::jsonb) AS d(name text, version integer))
    ORDER BY next_wake_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
RETURNING *";

/// Deletes up to `$2` completed or compensated sagas last updated before `$1`,
/// oldest first; their `saga_logs` rows go with them (`ON DELETE CASCADE`),
/// in the same statement. The partial index `saga_state_finished_idx` serves
/// the filter and the order, so a batch reads only the rows it deletes. `SKIP
/// LOCKED`: concurrent pruners take disjoint sets, and a row an engine is
/// writing is skipped instead of waited for.
const PRUNE_SQL: &str = "\
DELETE FROM saga_state
WHERE id IN (
    SELECT id FROM saga_state
    WHERE status IN ('completed', 'compensated') AND updated_at < $1
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)";

/// Options for [`PgSagaStore::with_config`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Check at start-up that the migrations ran (default `true`).
    pub check_schema: bool,
    /// LISTEN for sagas finished by any process, for
    /// [`SagaStore::finished_events`] (default `true`). Uses one pool connection.
    pub notifications: bool,
    /// How many finished-saga ids a slow waiter may lag behind (default 1024).
    pub notification_capacity: usize,
    /// Most saves written by one statement (default 64; 1 turns group commit
    /// off). Saves that arrive while earlier ones run are written together:
    /// one round trip and one commit for all of them, each still checked
    /// against its own expected version.
    pub save_batch: usize,
    /// Most save statements running at once (default 4). Fewer means larger
    /// batches under load; a lone save never waits for company.
    pub save_batches_in_flight: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            check_schema: true,
            notifications: true,
            notification_capacity: 1024,
            save_batch: 64,
            save_batches_in_flight: 4,
        }
    }
}

impl StoreConfig {
    /// Turns the schema check on or off.
    #[must_use]
    pub fn check_schema(mut self, check: bool) -> Self {
        self.check_schema = check;
        self
    }

    /// Turns outcome notifications on or off.
    #[must_use]
    pub fn notifications(mut self, listen: bool) -> Self {
        self.notifications = listen;
        self
    }

    /// Sets the most saves per statement and the most statements in flight
    /// (see [`save_batch`](Self::save_batch)).
    #[must_use]
    pub fn save_batching(mut self, batch: usize, in_flight: usize) -> Self {
        self.save_batch = batch;
        self.save_batches_in_flight = in_flight;
        self
    }
}

/// The production [`SagaStore`]: sagas in `saga_state`, their logs in
/// `saga_logs`, on a sea-orm [`DatabaseConnection`]. Cheap to clone; clones
/// share the pool and the notification listener.
///
/// See the [crate documentation](crate) for the table layout and guarantees.
#[derive(Clone)]
pub struct PgSagaStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    saves: SaveBatcher,
    finished: broadcast::Sender<SagaId>,
    _listener: Option<ListenerTask>,
}

impl std::fmt::Debug for PgSagaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSagaStore")
            .field("notifications", &self.inner._listener.is_some())
            .finish_non_exhaustive()
    }
}

impl PgSagaStore {
    /// A store on `db` with the default [`StoreConfig`]: checks the schema and
    /// starts listening for finished sagas.
    ///
    /// # Errors
    /// [`Error::Schema`] when the migrations have not run (run
    /// [`migrate`](crate::migrate)); [`Error::Unavailable`] when the database
    /// cannot be reached; [`Error::Config`] when `db` is not a PostgreSQL pool.
    pub async fn new(db: DatabaseConnection) -> Result<Self, Error> {
        Self::with_config(db, StoreConfig::default()).await
    }

    /// A store on `db` with `config`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub async fn with_config(db: DatabaseConnection, config: StoreConfig) -> Result<Self, Error> {
        if db.get_database_backend() != DbBackend::Postgres || db.is_mock_connection() {
            return Err(Error::Config(
                "PgSagaStore needs a PostgreSQL connection pool".to_owned(),
            ));
        }
        if config.check_schema {
            crate::migration::check_schema(&db).await?;
        }
        let (finished, _) = broadcast::channel(config.notification_capacity.max(1));
        let listener = if config.notifications {
            Some(notify::start(db.get_postgres_connection_pool(), finished.clone()).await?)
        } else {
            None
        };
        let saves =
            SaveBatcher::start(db.clone(), config.save_batch, config.save_batches_in_flight);
        Ok(Self {
            inner: Arc::new(Inner {
                saves,
                db,
                finished,
                _listener: listener,
            }),
        })
    }

    /// Connects with `config` and builds a store.
    ///
    /// # Errors
    /// As [`PgConfig::connect`] and [`new`](Self::new).
    pub async fn connect(config: &PgConfig) -> Result<Self, Error> {
        Self::new(config.connect().await?).await
    }

    /// The connection pool, for the application's own queries and for
    /// [`migrate`](crate::migrate).
    #[must_use]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    async fn insert(&self, instance: &SagaInstance, logs: &[LogEntry]) -> Result<bool, Error> {
        let mut values = state_values(instance)?;
        values.push(logs_json(instance.id, logs)?);
        let rows = self
            .inner
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                CREATE_SQL,
                values,
            ))
            .await?;
        Ok(!rows.is_empty())
    }

    async fn by_key(&self, key: &str) -> Result<Option<SagaInstance>, Error> {
        saga_state::Entity::find()
            .filter(saga_state::Column::IdempotencyKey.eq(key))
            .one(&self.inner.db)
            .await?
            .map(to_instance)
            .transpose()
    }

    async fn update(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> Result<bool, Error> {
        let row = save_row(instance, expected_version, logs)?;
        self.inner.saves.save(*instance.id.as_uuid(), row).await
    }

    async fn exists(&self, id: SagaId) -> Result<bool, Error> {
        Ok(saga_state::Entity::find_by_id(*id.as_uuid())
            .select_only()
            .column(saga_state::Column::Id)
            .into_tuple::<uuid::Uuid>()
            .one(&self.inner.db)
            .await?
            .is_some())
    }
}

#[async_trait]
impl SagaStore for PgSagaStore {
    #[tracing::instrument(name = "saga_postgres.create", level = "debug", skip_all, fields(saga_id = %instance.id))]
    async fn create(
        &self,
        instance: &SagaInstance,
        logs: &[LogEntry],
    ) -> saga_core::Result<Created> {
        // A concurrent creator with the same key may commit between our
        // insert and our select; the loop covers a row that vanished in that
        // window (deleted by an operator).
        for _ in 0..3 {
            if self.insert(instance, logs).await? {
                return Ok(Created::New);
            }
            let Some(key) = &instance.idempotency_key else {
                break;
            };
            if let Some(existing) = self.by_key(key).await? {
                return Ok(Created::Existing(Box::new(existing)));
            }
        }
        Err(saga_core::Error::backend(
            saga_core::ErrorKind::Other,
            format!(
                "saga {} was neither inserted nor found by its idempotency key",
                instance.id
            ),
        ))
    }

    #[tracing::instrument(name = "saga_postgres.load", level = "debug", skip(self))]
    async fn load(&self, id: SagaId) -> saga_core::Result<Option<SagaInstance>> {
        let row = saga_state::Entity::find_by_id(*id.as_uuid())
            .one(&self.inner.db)
            .await
            .map_err(Error::from)?;
        Ok(row.map(to_instance).transpose()?)
    }

    #[tracing::instrument(name = "saga_postgres.save", level = "debug", skip_all, fields(saga_id = %instance.id, expected_version))]
    async fn save(
        &self,
        instance: &SagaInstance,
        expected_version: u64,
        logs: &[LogEntry],
    ) -> saga_core::Result<()> {
        if self.update(instance, expected_version, logs).await? {
            return Ok(());
        }
        if self.exists(instance.id).await? {
            Err(saga_core::Error::Conflict {
                id: instance.id,
                expected: expected_version,
            })
        } else {
            Err(saga_core::Error::NotFound(instance.id))
        }
    }

    #[tracing::instrument(
        name = "saga_postgres.claim_due",
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
        if definitions.is_empty() {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let definitions: Vec<serde_json::Value> = definitions
            .iter()
            .map(|d| serde_json::json!({ "name": d.name, "version": d.version }))
            .collect();
        let values: [Value; 5] = [
            owner.into(),
            saga_core::clock::add(now, lease).into(),
            now.into(),
            limit.into(),
            serde_json::Value::Array(definitions).into(),
        ];
        let rows = saga_state::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                CLAIM_SQL,
                values,
            ))
            .all(&self.inner.db)
            .await
            .map_err(Error::from)?;
        // A row that cannot be read (edited by hand, or written by a newer
        // version) is skipped, leased, instead of failing the claim: the
        // others of its batch would otherwise wait for their leases to end.
        let mut claimed: Vec<SagaInstance> = rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id;
                to_instance(row)
                    .inspect_err(|e| {
                        tracing::error!(
                            saga_id = %id, error = %e,
                            "a due saga cannot be read and is skipped; it stays leased to this \
                             engine until its lease ends, then is claimed (and reported) again"
                        );
                    })
                    .ok()
            })
            .collect();
        claimed.sort_by_key(|s| s.next_wake_at);
        Ok(claimed)
    }

    #[tracing::instrument(name = "saga_postgres.logs", level = "debug", skip(self))]
    async fn logs(&self, id: SagaId) -> saga_core::Result<Vec<LogEntry>> {
        let rows = saga_logs::Entity::find()
            .filter(saga_logs::Column::SagaId.eq(*id.as_uuid()))
            .order_by_asc(saga_logs::Column::Seq)
            .all(&self.inner.db)
            .await
            .map_err(Error::from)?;
        Ok(rows.into_iter().map(to_log).collect::<Result<_, _>>()?)
    }

    #[tracing::instrument(name = "saga_postgres.list", level = "debug", skip(self))]
    async fn list(&self, query: &SagaQuery) -> saga_core::Result<Vec<SagaInstance>> {
        let order = if query.oldest_first {
            Order::Asc
        } else {
            Order::Desc
        };
        let rows = filtered(query)
            .order_by(saga_state::Column::UpdatedAt, order.clone())
            .order_by(saga_state::Column::Id, order)
            .limit(u64::try_from(query.limit).unwrap_or(u64::MAX))
            .all(&self.inner.db)
            .await
            .map_err(Error::from)?;
        Ok(rows
            .into_iter()
            .map(to_instance)
            .collect::<Result<_, _>>()?)
    }

    #[tracing::instrument(name = "saga_postgres.counts", level = "debug", skip(self))]
    async fn counts(&self, query: &SagaQuery) -> saga_core::Result<Vec<SagaCount>> {
        let rows: Vec<(String, String, i64, DateTime<Utc>)> = filtered(query)
            .select_only()
            .column(saga_state::Column::SagaType)
            .column(saga_state::Column::Status)
            .column_as(saga_state::Column::Id.count(), "count")
            .column_as(saga_state::Column::CreatedAt.min(), "oldest")
            .group_by(saga_state::Column::SagaType)
            .group_by(saga_state::Column::Status)
            .order_by_asc(saga_state::Column::SagaType)
            .order_by_asc(saga_state::Column::Status)
            .into_tuple()
            .all(&self.inner.db)
            .await
            .map_err(Error::from)?;
        rows.into_iter()
            .map(|(saga_type, status, count, oldest)| {
                let status = status
                    .parse::<SagaStatus>()
                    .map_err(|reason| Error::Corrupt {
                        key: format!("status counts of `{saga_type}`"),
                        reason,
                    })?;
                Ok(SagaCount::new(
                    saga_type,
                    status,
                    u64::try_from(count).unwrap_or_default(),
                    oldest,
                ))
            })
            .collect()
    }

    #[tracing::instrument(name = "saga_postgres.prune", level = "debug", skip(self))]
    async fn prune(
        &self,
        finished_before: DateTime<Utc>,
        batch: usize,
    ) -> saga_core::Result<usize> {
        if batch == 0 {
            return Ok(0);
        }
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let result = self
            .inner
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                PRUNE_SQL,
                [finished_before.into(), limit.into()],
            ))
            .await
            .map_err(Error::from)?;
        Ok(usize::try_from(result.rows_affected()).unwrap_or(usize::MAX))
    }

    fn finished_events(&self) -> Option<broadcast::Receiver<SagaId>> {
        self.inner
            ._listener
            .as_ref()
            .map(|_| self.inner.finished.subscribe())
    }
}

/// The sagas `query` selects, its order and limit aside.
fn filtered(query: &SagaQuery) -> Select<saga_state::Entity> {
    let mut select = saga_state::Entity::find();
    if let Some(status) = query.status {
        select = select.filter(saga_state::Column::Status.eq(status.as_str()));
    }
    if query.unfinished {
        select = select.filter(saga_state::Column::Status.is_in([
            SagaStatus::Running.as_str(),
            SagaStatus::Compensating.as_str(),
        ]));
    }
    if let Some(saga_type) = &query.saga_type {
        select = select.filter(saga_state::Column::SagaType.eq(saga_type.as_str()));
    }
    if let Some(before) = query.updated_before {
        select = select.filter(saga_state::Column::UpdatedAt.lt(before));
    }
    if let Some(key) = &query.idempotency_key {
        select = select.filter(saga_state::Column::IdempotencyKey.eq(key.as_str()));
    }
    select
}
