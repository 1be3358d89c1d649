//! `saga_state`: one row per saga instance.

use sea_orm::entity::prelude::*;

/// One saga instance, as stored.
///
/// The cursor of [`SagaInstance`](saga_core::SagaInstance) is spread over
/// `current_step`, `phase`, `attempt`, `waiting`, `uncertain`, `round_from`,
/// `key_from` and `refused` (null, `false` or 1 when the saga has no cursor); `lease_owner` and `lease_until` are
/// the due-saga claim, which is not part of the instance.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_state")]
pub struct Model {
    /// The saga id (UUIDv7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The definition's name.
    pub saga_type: String,
    /// The definition version the instance started with.
    pub definition_version: i32,
    /// `running`, `compensating`, `completed`, `compensated` or `failed`.
    pub status: String,
    /// Index of the step being worked on.
    pub current_step: Option<i32>,
    /// `invoke` or `compensate`.
    pub phase: Option<String>,
    /// Attempt number of the current step, from 1.
    pub attempt: Option<i32>,
    /// `reply`, `retry` or `send`: what the current step waits for.
    pub waiting: Option<String>,
    /// Whether an earlier attempt of the current step had an unknown outcome.
    pub uncertain: bool,
    /// The first attempt of the current round (an operator's retry starts one).
    pub round_from: i32,
    /// The first attempt under the current idempotency key.
    pub key_from: i32,
    /// Whether the participant refused the current key.
    pub refused: bool,
    /// Per-step status, a JSON array of strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub steps: Json,
    /// The saga data.
    #[sea_orm(column_type = "JsonBinary")]
    pub data: Json,
    /// Why the saga is compensating or failed.
    pub error: Option<String>,
    /// The key the saga was started with (unique).
    #[sea_orm(unique)]
    pub idempotency_key: Option<String>,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// When the saga is due (a timeout, a retry, the deadline); null when idle.
    pub next_wake_at: Option<DateTimeUtc>,
    /// When a saga before its pivot gives up.
    pub deadline_at: Option<DateTimeUtc>,
    /// Number of log entries (the next entry's sequence number).
    pub log_seq: i64,
    /// The engine instance holding the due-saga lease.
    pub lease_owner: Option<String>,
    /// When the lease expires.
    pub lease_until: Option<DateTimeUtc>,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Time of the last transition.
    pub updated_at: DateTimeUtc,
}

/// Relations of `saga_state`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The saga's log entries.
    #[sea_orm(has_many = "super::saga_logs::Entity")]
    Logs,
}

impl Related<super::saga_logs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Logs.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
