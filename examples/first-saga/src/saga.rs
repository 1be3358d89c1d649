use saga_core::{Command, RetryPolicy, Saga, StepError};
use serde::{Deserialize, Serialize};

/// Can the warehouse serve this quantity? Changes nothing; "no" is a refusal.
#[derive(Serialize, Deserialize)]
pub struct CheckStock(pub u32);
impl Command for CheckStock {
    const NAME: &'static str = "check_stock";
    const ENDPOINT: &'static str = "warehouse";
    type Reply = ();
}
/// Holds this quantity; replies with the reservation's id.
#[derive(Serialize, Deserialize)]
pub struct Reserve(pub u32);
impl Command for Reserve {
    const NAME: &'static str = "reserve";
    const ENDPOINT: &'static str = "warehouse";
    type Reply = String;
}
/// Gives a reservation back (`None`: the reservation never answered).
#[derive(Serialize, Deserialize)]
pub struct Release(pub Option<String>);
impl Command for Release {
    const NAME: &'static str = "release";
    const ENDPOINT: &'static str = "warehouse";
    type Reply = ();
}

/// The saga's data, saved with every step.
#[derive(Serialize, Deserialize)]
pub struct Order {
    /// How many items.
    pub quantity: u32,
    /// The warehouse's reservation, once made.
    pub reservation: Option<String>,
}
/// The saga: check the stock, reserve it, approve; a refusal releases the reservation.
pub fn order_saga() -> Result<Saga<Order>, saga_core::Error> {
    Saga::<Order>::builder("order")
        .step("check_stock", |step| {
            step.invoke(|o: &Order| CheckStock(o.quantity))
                .read_only()
                .retry(RetryPolicy::fixed(std::time::Duration::from_millis(100)).max_attempts(3))
        })
        .step("reserve", |step| {
            step.invoke(|o: &Order| Reserve(o.quantity))
                .on_reply(|o, reservation| o.reservation = Some(reservation))
                .compensate(|o: &Order| Release(o.reservation.clone()))
        })
        .step("approve", |step| {
            step.local(|o: Order, _| async move {
                match o.quantity {
                    0..=10 => Ok(()),
                    _ => Err(StepError::business("more than 10 needs a manager")),
                }
            })
        })
        .build()
}
