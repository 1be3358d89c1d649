//! The engine's long-running loop: reply consumer plus due-saga poller.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    // The poller ends only when told to, or by a panic (in a payload or
    // retry closure, say): then the engine stops too, resuming the panic,
    // rather than go on without timeouts, retries and re-sends.
    let mut poller = tokio::spawn(poll(engine.clone(), stop_rx.clone()));
    let mut poller_ended = None;
    let census = tokio::spawn(super::census::run(engine.clone(), stop_rx.clone()));
    let retention = config
        .retention
        .map(|retention| tokio::spawn(retain(engine.clone(), retention, stop_rx.clone())));
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    tracing::info!(instance = %config.instance_name, queue = %config.reply_queue, "engine running");
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            ended = &mut poller => {
                poller_ended = Some(ended);
                break;
            }
            permit = Arc::clone(&permits).acquire_owned() => permit.map_err(|_| Error::Shutdown)?,
        };
        let delivery = tokio::select! {
            biased;
            () = &mut shutdown => break,
            ended = &mut poller => {
                poller_ended = Some(ended);
                break;
            }
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
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            process_reply(&engine, delivery, stop).await;
            drop(permit);
        });
    }
    drop(replies);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let poller = match poller_ended {
        Some(ended) => {
            tracing::error!("the due-saga poller stopped on its own; stopping the engine");
            ended
        }
        None => poller.await,
    };
    let _ = census.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    engine.drain_local().await;
    tracing::info!(instance = %config.instance_name, "engine stopped");
    match poller {
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        _ => Ok(()),
    }
}

/// Resolves once the engine is told to stop.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn process_reply(
    engine: &Engine,
    delivery: Delivery<ReplyMessage>,
    mut stop: watch::Receiver<bool>,
) {
    let saga_id = delivery.message.saga_id;
    // While the store fails the reply stays in hand (no redelivery counts
    // against the queue's delivery limit) until the store answers or the
    // engine stops.
    let mut delays = crate::transport::reconnect_backoff();
    let mut failures = 0_u32;
    loop {
        let error = match engine.handle_reply(delivery.message.clone()).await {
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(%saga_id, error = %e, "reply ack failed; it will be redelivered and ignored");
                }
                return;
            }
            Err(e) => e,
        };
        match error {
            Error::UnknownDefinition { name, version } => {
                return hand_back(engine, delivery, &name, version, &mut stop).await;
            }
            e if matches!(e.kind(), ErrorKind::Invalid | ErrorKind::NotFound) => {
                tracing::warn!(%saga_id, error = %e, "reply dead-lettered");
                let _ = delivery.reject(&e.to_string()).await;
                return;
            }
            e => {
                // The store is unavailable (or keeps conflicting): keep the
                // reply in hand and try again, rather than requeue it against
                // the queue's delivery limit.
                failures += 1;
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(%saga_id, error = %e, failures, ?delay, "reply not applied yet; trying again");
                }
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => {
                        let _ = delivery.nack().await;
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A reply for a definition this engine does not have (a newer version during
/// a rolling deploy) goes back to the reply queue, as a new message so that no
/// delivery limit counts it, for an engine that has the definition.
async fn hand_back(
    engine: &Engine,
    delivery: Delivery<ReplyMessage>,
    name: &str,
    version: u32,
    stop: &mut watch::Receiver<bool>,
) {
    let saga_id = delivery.message.saga_id;
    tracing::warn!(
        %saga_id, saga_type = name, definition_version = version,
        "this engine does not have the saga's definition; handing the reply back to the queue"
    );
    tokio::select! {
        biased;
        () = stopped(stop) => {}
        () = tokio::time::sleep(engine.config().hand_back_delay) => {}
    }
    match engine.inner.transport.send_reply(&delivery.message).await {
        Ok(()) => {
            let _ = delivery.ack().await;
        }
        Err(e) => {
            tracing::warn!(%saga_id, error = %e, "could not hand the reply back; it will be redelivered");
            let _ = delivery.nack().await;
        }
    }
}

async fn poll(engine: Engine, mut stop: watch::Receiver<bool>) {
    if engine.config().startup_resend_limit > 0
        && let Err(e) = engine.resend_in_flight().await
    {
        tracing::warn!(error = %e, "could not send the in-flight commands again at start-up");
    }
    let config = engine.config();
    let mut interval = tokio::time::interval(config.poll_interval.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let full = config.claim_batch.max(1);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            _ = interval.tick() => {}
        }
        loop {
            match engine.tick().await {
                // A full batch means more may be due: go again at once.
                Ok(n) if n >= full => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "due-saga poll failed");
                    break;
                }
            }
        }
    }
}

/// The background pruning of [`EngineConfig::retention`](super::EngineConfig::retention):
/// every `prune_interval`, deletes the sagas that finished more than
/// `retention` ago, in batches with a pause between them, until the engine stops.
async fn retain(engine: Engine, retention: Duration, mut stop: watch::Receiver<bool>) {
    let config = engine.config().clone();
    tracing::info!(?retention, interval = ?config.prune_interval, "retention: finished sagas are pruned in the background");
    let mut interval = tokio::time::interval(config.prune_interval.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            _ = interval.tick() => {}
        }
        let cutoff = crate::clock::sub(engine.inner.clock.now(), retention);
        match engine
            .prune_until(cutoff, Some((config.prune_pause, &mut stop)))
            .await
        {
            Ok(0) => tracing::debug!(%cutoff, "retention: no finished saga to delete"),
            Ok(pruned) => {
                tracing::info!(pruned, %cutoff, "retention: finished sagas deleted");
            }
            Err(e) => tracing::warn!(error = %e, "retention: pruning finished sagas failed"),
        }
    }
}
