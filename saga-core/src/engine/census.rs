//! The census: gauges of unfinished and stuck sagas, and a warning for each
//! saga that becomes stuck.

use std::collections::{BTreeSet, HashSet};

use tokio::sync::watch;

use super::Engine;
use crate::error::Result;
use crate::id::SagaId;
use crate::state::SagaStatus;
use crate::store::SagaQuery;

/// Counts every `census_interval` until `stop`.
pub(super) async fn run(engine: Engine, mut stop: watch::Receiver<bool>) {
    let interval = engine.config().census_interval;
    if interval.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = HashSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = count(&engine, &mut warned).await {
            tracing::debug!(error = %e, "census failed; trying again at the next interval");
        }
    }
}

/// One census. `warned` holds the sagas already reported stuck, so each is
/// reported once while it stays stuck.
async fn count(engine: &Engine, warned: &mut HashSet<SagaId>) -> Result<()> {
    let counts = engine.counts(&SagaQuery::new().unfinished()).await?;
    let stuck = engine
        .stuck(&SagaQuery::new().limit(Engine::STUCK_SCAN))
        .await?;
    let now = engine.inner.clock.now();
    // Every registered type is reported, zero included, so a gauge falls back
    // to zero when its last saga finishes.
    let types: BTreeSet<&str> = engine
        .inner
        .definitions
        .keys()
        .map(|(name, _)| name.as_str())
        .collect();
    for saga in types {
        for status in [SagaStatus::Running, SagaStatus::Compensating] {
            let n: u64 = counts
                .iter()
                .filter(|c| c.saga_type == saga && c.status == status)
                .map(|c| c.count)
                .sum();
            crate::metrics::running(saga, status.as_str(), n);
        }
        let oldest = counts
            .iter()
            .filter(|c| c.saga_type == saga)
            .map(|c| c.oldest_created_at)
            .min()
            .map_or(0.0, |at| {
                (now - at).to_std().unwrap_or_default().as_secs_f64()
            });
        crate::metrics::oldest_running(saga, oldest);
        let n = stuck
            .iter()
            .filter(|s| s.instance.saga_type == saga)
            .count();
        crate::metrics::stuck(saga, n);
    }
    let mut now_stuck = HashSet::with_capacity(stuck.len());
    for saga in &stuck {
        let instance = &saga.instance;
        now_stuck.insert(instance.id);
        if warned.contains(&instance.id) {
            continue;
        }
        let step = instance
            .cursor
            .and_then(|c| {
                engine
                    .definition(&instance.saga_type, instance.definition_version)
                    .ok()
                    .and_then(|def| def.steps().get(c.step).map(|s| s.name().to_owned()))
            })
            .unwrap_or_default();
        tracing::warn!(
            saga_id = %instance.id, saga_type = %instance.saga_type, %step,
            status = %instance.status, reason = %saga.reason,
            "saga is stuck; it needs an operator"
        );
    }
    *warned = now_stuck;
    Ok(())
}
