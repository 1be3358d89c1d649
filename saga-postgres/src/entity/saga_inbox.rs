//! `saga_inbox`: the commands a participant processed, and their outcomes.

use sea_orm::entity::prelude::*;

/// One processed (or in-progress) command.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_inbox")]
pub struct Model {
    /// The command's idempotency key (`{saga}:{step}:{invoke|compensate}`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub idempotency_key: String,
    /// The recorded [`ReplyOutcome`](saga_core::adapter::ReplyOutcome) as JSON; null
    /// while the claiming transaction has not recorded one yet.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub outcome: Option<Json>,
    /// When the key was first seen.
    pub created_at: DateTimeUtc,
}

/// `saga_inbox` has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
