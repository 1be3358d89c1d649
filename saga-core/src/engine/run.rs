//! The engine's long-running loop: reply consumer plus due-saga poller.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::message::ReplyMessage;
use crate::transport::Delivery;

pub(super) async fn run(engine: &Engine, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let config = engine.config().clone();
    tokio::pin!(shutdown);
    let transport = &engine.inner.transport;
    let subscribed = crate::transport::subscribe_with_retry(
        &config.reply_queue,
        || transport.consume_replies(&config.reply_queue),
        &mut shutdown,
    )
    .await?;
    let Some(mut replies) = subscribed else {
        return Ok(());
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(poll(engine.clone(), stop_rx));
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    tracing::info!(instance = %config.instance_name, queue = %config.reply_queue, "engine running");
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.map_err(|_| Error::Shutdown)?,
        };
        let delivery = tokio::select! {
            () = &mut shutdown => break,
            delivery = replies.next() => match delivery {
                Some(delivery) => delivery,
                None => {
                    tracing::warn!("reply subscription closed by the transport");
                    break;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let engine = engine.clone();
        tasks.spawn(async move {
            process_reply(&engine, delivery).await;
            drop(permit);
        });
    }
    drop(replies);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let _ = poller.await;
    tracing::info!(instance = %config.instance_name, "engine stopped");
    Ok(())
}

async fn process_reply(engine: &Engine, delivery: Delivery<ReplyMessage>) {
    let saga_id = delivery.message.saga_id;
    match engine.handle_reply(delivery.message.clone()).await {
        Ok(()) => {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(%saga_id, error = %e, "reply ack failed; it will be redelivered and ignored");
            }
        }
        Err(e) if e.is_transient() || e.kind() == ErrorKind::Other => {
            tracing::warn!(%saga_id, error = %e, "reply not applied; it will be redelivered");
            let _ = delivery.nack().await;
        }
        Err(e) => {
            tracing::warn!(%saga_id, error = %e, "reply dead-lettered");
            let _ = delivery.reject(&e.to_string()).await;
        }
    }
}

async fn poll(engine: Engine, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(engine.config().poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = interval.tick() => {}
        }
        loop {
            match engine.tick().await {
                // A full batch means more may be due: go again at once.
                Ok(n) if n >= engine.config().claim_batch => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "due-saga poll failed");
                    break;
                }
            }
        }
    }
}
