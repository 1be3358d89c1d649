//! sea-orm entities of the inventory service: `products` and `reservations`.
//!
//! Write through the service's command handlers and [`seed`](super::seed) /
//! [`set_stock`](super::set_stock), which keep the invariants (version bumps,
//! one reservation per order, tombstones); read freely.

pub mod products {
    //! `products`: the catalogue, with stock and an optimistic-locking version.

    use sea_orm::entity::prelude::*;

    /// One product.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "products")]
    pub struct Model {
        /// The product's id (fixed for the seed data).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Display name.
        pub name: String,
        /// Price per unit.
        #[sea_orm(column_type = "Decimal(Some((12, 2)))")]
        pub price: Decimal,
        /// Units available (never negative).
        pub stock: i32,
        /// Bumped by every stock change: writers check it (optimistic locking).
        pub version: i32,
    }

    /// `products` has no relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reservations {
    //! `reservations`: the stock held for an order, at most one per order.

    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Whether the stock is held.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
    )]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum ReservationStatus {
        /// The stock is taken from the products and held for the order.
        #[sea_orm(string_value = "RESERVED")]
        Reserved,
        /// The stock was given back (or a tombstone written before any reservation).
        #[sea_orm(string_value = "RELEASED")]
        Released,
    }

    impl ReservationStatus {
        /// The status as stored and shown (`RESERVED`, `RELEASED`).
        #[must_use]
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Reserved => "RESERVED",
                Self::Released => "RELEASED",
            }
        }
    }

    /// One reserved line: a product and a quantity.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ReservedItem {
        /// The product.
        pub product_id: Uuid,
        /// Units held.
        pub quantity: i32,
    }

    /// The lines of a reservation, stored as a JSON array
    /// (`[{"product_id": ..., "quantity": ...}]`), one entry per product.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
    pub struct ReservedItems(pub Vec<ReservedItem>);

    /// One reservation.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        /// The reservation's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The order (unique: one reservation per order).
        #[sea_orm(unique)]
        pub order_id: Uuid,
        /// The status.
        pub status: ReservationStatus,
        /// What is (or was) held; empty for a tombstone.
        #[sea_orm(column_type = "JsonBinary")]
        pub items: ReservedItems,
        /// Creation time.
        pub created_at: DateTimeUtc,
        /// Time of the last status change.
        pub updated_at: DateTimeUtc,
    }

    /// `reservations` has no relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
