//! The checker: the participants' journal of effects against what the store
//! recorded as dispatched, not against the machine's own step labels.

use super::model::{self, Mark, lock};
use super::world::World;
use crate::definition::SagaDefinition;
use crate::state::{LogEntry, LogEvent, SagaStatus};
use crate::store::SagaStore;

/// Checks every saga of the run; adds what it finds to the world's report.
pub(super) async fn check(world: &mut World, definitions: [&SagaDefinition; 2]) {
    let journal = lock(&world.shared.journal).clone();
    let dead = lock(&world.shared.queues).dead.clone();
    let mut found = Vec::new();
    for why in dead {
        found.push(why);
    }
    for (id, version) in world.sagas.clone() {
        let def = definitions[usize::from(version == 2)];
        let mut fail = |what: String| found.push(format!("saga {id} (v{version}): {what}"));
        let entries: Vec<(usize, &model::Entry)> = journal
            .iter()
            .enumerate()
            .filter(|(_, e)| e.saga == id)
            .collect();
        let positions = |slot: usize, mark: Mark| -> Vec<usize> {
            entries
                .iter()
                .filter(|(_, e)| e.slot == slot && e.mark == mark)
                .map(|(i, _)| *i)
                .collect()
        };
        for slot in 0..model::SLOTS {
            let applied = positions(slot, Mark::Applied);
            if applied.len() > 1 {
                fail(format!("slot {slot} applied {} times", applied.len()));
            }
            if let Some(tombstoned) = positions(slot, Mark::CompensationRan).first()
                && applied.iter().any(|at| at > tombstoned)
            {
                fail(format!(
                    "slot {slot} applied after its compensation ran: a late copy was not refused"
                ));
            }
        }
        let Some(saga) = world.store.all().into_iter().find(|s| s.id == id) else {
            // Its start crashed before the saga was stored.
            if !entries.is_empty() {
                fail("effects for a saga that was never stored".to_owned());
            }
            continue;
        };
        let logs = world.store.logs(id);
        let logs = logs.await.unwrap_or_default();
        let applied = |slot| !positions(slot, Mark::Applied).is_empty();
        let undone = |slot| !positions(slot, Mark::Undone).is_empty();
        match saga.status {
            SagaStatus::Completed => {
                world.report.completed += 1;
                for &slot in model::slots(version) {
                    if slot != model::CHECK && (!applied(slot) || undone(slot)) {
                        fail(format!(
                            "completed, but slot {slot} applied: {}, undone: {}",
                            applied(slot),
                            undone(slot)
                        ));
                    }
                }
            }
            SagaStatus::Compensated => {
                world.report.compensated += 1;
                let reason = saga.error.clone().unwrap_or_default();
                let reason = reason.split(':').next().unwrap_or_default().to_owned();
                *world.report.reasons.entry(reason).or_default() += 1;
                for &slot in model::slots(version) {
                    if applied(slot) && !undone(slot) {
                        fail(format!(
                            "compensated, but slot {slot} was applied and never undone"
                        ));
                    }
                    if model::forward_only(slot) && applied(slot) {
                        fail(format!(
                            "compensated after slot {slot}, past the pivot, took effect"
                        ));
                    }
                }
            }
            other => fail(format!("ended {other}: {}", saga.error.unwrap_or_default())),
        }
        for why in crate::testing::dispatched_twice(&logs) {
            fail(why);
        }
        for why in failed_without_cause(def, &logs) {
            fail(why);
        }
        if found.iter().any(|v| v.contains(&id.to_string())) {
            world.report.details.push(history(id, &logs, &entries));
        }
    }
    world.report.violations.extend(found);
}

/// A saga may stop `Failed` only for a cause an operator must see: a
/// compensation that failed (or timed out) past its budget or was refused,
/// or a step past the pivot that was refused.
fn failed_without_cause(def: &SagaDefinition, logs: &[LogEntry]) -> Vec<String> {
    let mut cause = false;
    let mut found = Vec::new();
    for log in logs {
        let past_pivot = log
            .step
            .as_deref()
            .and_then(|name| def.step_named(name))
            .is_some_and(|(index, _)| def.pivot().is_some_and(|p| index > p));
        match log.event {
            LogEvent::OperatorRetry => cause = false,
            LogEvent::CompensationFailed => cause = true,
            LogEvent::StepTimedOut if log.payload["direction"] == "compensate" => cause = true,
            LogEvent::StepFailed if past_pivot => cause = true,
            LogEvent::SagaFailed if !cause => {
                found.push(format!(
                    "failed at log entry {} with no compensation failed and nothing past the pivot refused",
                    log.seq
                ));
            }
            _ => {}
        }
    }
    found
}

/// A failing saga's story: its log and its journal, one line each.
fn history(id: crate::id::SagaId, logs: &[LogEntry], entries: &[(usize, &model::Entry)]) -> String {
    let mut out = format!("saga {id}\n  log:\n");
    for log in logs {
        out.push_str(&format!(
            "    {:>3} {} {:<24} {:<8} a{} {}\n",
            log.seq,
            log.at.format("%H:%M:%S%.3f"),
            log.event.as_str(),
            log.step.as_deref().unwrap_or("-"),
            log.attempt.unwrap_or(0),
            log.payload
        ));
    }
    out.push_str("  journal:\n");
    for (at, entry) in entries {
        out.push_str(&format!(
            "    #{at} slot {} {:?} {}\n",
            entry.slot, entry.mark, entry.key
        ));
    }
    out
}
