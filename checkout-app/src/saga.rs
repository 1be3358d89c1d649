//! The checkout saga: create order, reserve inventory, process payment,
//! confirm order; compensation cancels, releases and refunds.
//!
//! `confirm_order` is the pivot: it cannot be undone, so it retries until the
//! order service answers, however long it is down, and the saga never
//! compensates behind a confirmation that may still arrive. Were it an
//! ordinary last step, an order service down for longer than the step's
//! retries would see the payment refunded and the stock released while
//! `confirm_order` commands still sat in its queue, and then confirm the order
//! when it came back. A business refusal of the confirmation (the order was
//! cancelled meanwhile) still compensates the steps before it.

use std::time::Duration;

use rust_decimal::Decimal;
use saga_core::{RetryPolicy, Saga};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::messages::{
    CancelOrder, ConfirmOrder, CreateOrder, LineItem, ProcessPayment, RefundPayment,
    ReleaseInventory, ReserveInventory,
};

/// The saga's name in the store.
pub const NAME: &str = "checkout";

/// Everything the checkout saga carries. The order id is generated before the
/// saga starts, so every command, first delivery or redelivery, names the same order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutData {
    /// The order's id.
    pub order_id: Uuid,
    /// The buyer.
    pub user_id: String,
    /// Lines with catalogue prices.
    pub items: Vec<LineItem>,
    /// Sum of the lines.
    pub total: Decimal,
    /// Set when inventory is reserved.
    pub reservation_id: Option<Uuid>,
    /// Set when the payment succeeded.
    pub payment_id: Option<Uuid>,
}

impl CheckoutData {
    /// A new checkout for `user_id` buying `items`; computes the total.
    #[must_use]
    pub fn new(order_id: Uuid, user_id: String, items: Vec<LineItem>) -> Self {
        let total = items
            .iter()
            .map(|i| i.unit_price * Decimal::from(i.quantity))
            .sum();
        Self {
            order_id,
            user_id,
            items,
            total,
            reservation_id: None,
            payment_id: None,
        }
    }
}

/// Timing knobs of the saga (tests shorten them).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a step waits for its reply before the attempt times out.
    pub step_timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// Attempts of a forward step (first try included) before it compensates.
    pub step_attempts: u32,
    /// Attempts of a compensation before the saga ends `Failed` for an operator.
    pub compensation_attempts: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(5),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            step_attempts: 5,
            compensation_attempts: 20,
        }
    }
}

/// The checkout saga definition.
///
/// # Errors
/// Never in practice: the definition is valid; an error would name the rule it breaks.
pub fn definition(timing: Timing) -> saga_core::Result<Saga<CheckoutData>> {
    let retry = RetryPolicy::exponential(timing.retry_initial, timing.retry_max)
        .max_attempts(timing.step_attempts.max(1));
    let compensation_retry = RetryPolicy::exponential(timing.retry_initial, timing.retry_max * 6)
        .max_attempts(timing.compensation_attempts.max(1));
    Saga::<CheckoutData>::builder(NAME)
        .default_timeout(timing.step_timeout)
        .default_retry(retry)
        .default_compensation_retry(compensation_retry)
        .step("create_order", |step| {
            step.invoke(|d: &CheckoutData| CreateOrder {
                order_id: d.order_id,
                user_id: d.user_id.clone(),
                items: d.items.clone(),
                total: d.total,
            })
            .compensate(|d: &CheckoutData| CancelOrder {
                order_id: d.order_id,
                reason: "checkout compensated".to_owned(),
            })
        })
        .step("reserve_inventory", |step| {
            step.invoke(|d: &CheckoutData| ReserveInventory {
                order_id: d.order_id,
                items: d.items.clone(),
            })
            .on_reply(|d, r| d.reservation_id = Some(r.reservation_id))
            .compensate(|d: &CheckoutData| ReleaseInventory {
                order_id: d.order_id,
            })
        })
        .step("process_payment", |step| {
            step.invoke(|d: &CheckoutData| ProcessPayment {
                order_id: d.order_id,
                user_id: d.user_id.clone(),
                amount: d.total,
            })
            .on_reply(|d, r| d.payment_id = Some(r.payment_id))
            .compensate(|d: &CheckoutData| RefundPayment {
                order_id: d.order_id,
            })
        })
        .step("confirm_order", |step| {
            step.invoke(|d: &CheckoutData| ConfirmOrder {
                order_id: d.order_id,
            })
            .pivot()
        })
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_the_sum_of_the_lines() {
        let item = |q, p: &str| LineItem {
            product_id: Uuid::new_v4(),
            quantity: q,
            unit_price: p.parse().expect("decimal"),
        };
        let data = CheckoutData::new(
            Uuid::new_v4(),
            "u".into(),
            vec![item(2, "29.99"), item(3, "0.10")],
        );
        assert_eq!(data.total, "60.28".parse::<Decimal>().expect("decimal"));
    }

    #[test]
    fn the_definition_is_valid_and_has_four_steps() {
        let saga = definition(Timing::default()).expect("valid");
        let names: Vec<&str> = saga.definition().steps().iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "create_order",
                "reserve_inventory",
                "process_payment",
                "confirm_order"
            ]
        );
    }
}
