//! `saga_logs`: the audit trail, ordered per saga by `seq`.

use sea_orm::entity::prelude::*;

/// One log entry.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_logs")]
pub struct Model {
    /// The saga.
    #[sea_orm(primary_key, auto_increment = false)]
    pub saga_id: Uuid,
    /// Position in the saga's log, from 0, without gaps.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// What happened (`saga_started`, `step_succeeded`...).
    pub event: String,
    /// The step it concerns.
    pub step: Option<String>,
    /// The attempt it concerns.
    pub attempt: Option<i32>,
    /// Details: the command, the reply, the error.
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// When it happened.
    pub created_at: DateTimeUtc,
}

/// Relations of `saga_logs`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The saga the entry belongs to.
    #[sea_orm(
        belongs_to = "super::saga_state::Entity",
        from = "Column::SagaId",
        to = "super::saga_state::Column::Id",
        on_delete = "Cascade"
    )]
    Saga,
}

impl Related<super::saga_state::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Saga.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
