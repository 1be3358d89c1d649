//! Outcome notifications across processes: LISTEN on `saga_finished`.
//!
//! A trigger on `saga_state` calls `pg_notify('saga_finished', id)` when a
//! row reaches a terminal status, inside the writing transaction, so the
//! notification is delivered on commit only, whichever process wrote it.

use std::time::Duration;

use saga_core::SagaId;
use sea_orm::sqlx::PgPool;
use sea_orm::sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::error::Error;

/// The channel the `saga_state` trigger notifies.
pub const FINISHED_CHANNEL: &str = "saga_finished";

/// Aborts the listener task when the last store clone is dropped.
#[derive(Debug)]
pub(crate) struct ListenerTask(JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts listening (returns once `LISTEN` is in effect, so no notification
/// committed after this returns is missed) and forwards ids to `tx`.
pub(crate) async fn start(
    pool: &PgPool,
    tx: broadcast::Sender<SagaId>,
) -> Result<ListenerTask, Error> {
    let mut listener = PgListener::connect_with(pool).await.map_err(conn_err)?;
    listener.listen(FINISHED_CHANNEL).await.map_err(conn_err)?;
    Ok(ListenerTask(tokio::spawn(forward(listener, tx))))
}

fn conn_err(e: sea_orm::sqlx::Error) -> Error {
    Error::from(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(
        e.into(),
    )))
}

/// 100 ms doubling to 5 s, with jitter, without end.
fn reconnect_backoff() -> backon::ExponentialBackoff {
    backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times(),
    )
}

async fn forward(mut listener: PgListener, tx: broadcast::Sender<SagaId>) {
    let mut delays = reconnect_backoff();
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                delays = reconnect_backoff();
                match notification.payload().parse::<SagaId>() {
                    // No receiver is not an error: nobody is waiting.
                    Ok(id) => drop(tx.send(id)),
                    Err(e) => {
                        tracing::warn!(payload = notification.payload(), error = %e, "ignoring a malformed saga_finished notification")
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(
                    "LISTEN connection lost and re-established; waiters poll for anything missed meanwhile"
                );
            }
            Err(sea_orm::sqlx::Error::PoolClosed) => {
                tracing::debug!("pool closed; outcome notifications stop");
                return;
            }
            Err(e) => {
                let backoff = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?backoff, "LISTEN connection failed; waiters fall back to polling");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
