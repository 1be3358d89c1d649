//! sea-orm entity of the payment service: `payments`.
//!
//! Write through the service's command handlers, which keep the invariants
//! (one payment per order, tombstones, status transitions); read freely.

pub mod payments {
    //! `payments`: at most one payment per order.

    use sea_orm::Iterable;
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// The outcome of a payment.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
    )]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum PaymentStatus {
        /// Charged.
        #[sea_orm(string_value = "SUCCESS")]
        Success,
        /// Declined (nothing charged).
        #[sea_orm(string_value = "FAILED")]
        Failed,
        /// Refunded by compensation (or a tombstone written before any payment).
        #[sea_orm(string_value = "REFUNDED")]
        Refunded,
    }

    impl PaymentStatus {
        /// The status as stored and shown (`SUCCESS`, `FAILED`, `REFUNDED`).
        #[must_use]
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Success => "SUCCESS",
                Self::Failed => "FAILED",
                Self::Refunded => "REFUNDED",
            }
        }

        /// Parses a status name, ignoring case.
        #[must_use]
        pub fn parse(name: &str) -> Option<Self> {
            Self::iter().find(|s| s.as_str().eq_ignore_ascii_case(name))
        }
    }

    /// One payment.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        /// The payment's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The order paid for (unique: one payment per order).
        #[sea_orm(unique)]
        pub order_id: Uuid,
        /// The buyer (empty for a refund tombstone).
        pub user_id: String,
        /// The amount charged (zero for a tombstone).
        #[sea_orm(column_type = "Decimal(Some((12, 2)))")]
        pub amount: Decimal,
        /// The status.
        pub status: PaymentStatus,
        /// Creation time.
        pub created_at: DateTimeUtc,
        /// Time of the last status change.
        pub updated_at: DateTimeUtc,
    }

    /// `payments` has no relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
