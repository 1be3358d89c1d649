//! Property tests of the pure state machine over arbitrary event sequences,
//! including nonsense ones (replies for steps never dispatched, operator
//! actions at any time).

use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use saga_core::machine::{Effect, Event, start, transition};
use saga_core::{Command, Direction, RetryPolicy, Saga, SagaId, SagaStatus, StepError, StepStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize, Default)]
struct D {
    n: u32,
}
#[derive(Serialize, Deserialize)]
struct C;
impl Command for C {
    const NAME: &'static str = "c";
    type Reply = Value;
}

fn saga() -> Saga<D> {
    Saga::<D>::builder("p")
        .deadline(Duration::from_secs(20))
        .step("a")
        .invoke("e", |_| C)
        .compensate("e", |_| C)
        .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
        .compensation_retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
        .step("b")
        .invoke("e", |_| C)
        .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(2))
        .step("c")
        .invoke("e", |_| C)
        .compensate("e", |_| C)
        .on_unknown(saga_core::OnUnknown::Compensate)
        .step("pivot")
        .invoke("e", |_| C)
        .pivot()
        .step("d")
        .invoke("e", |_| C)
        .retriable()
        .build()
        .expect("valid")
}

fn outcome() -> impl Strategy<Value = Result<Value, StepError>> {
    prop_oneof![
        4 => Just(Ok(json!({"ok": true}))),
        1 => Just(Err(StepError::business("no"))),
        2 => Just(Err(StepError::retryable("busy"))),
        1 => Just(Err(StepError::unknown("?"))),
    ]
}

fn event() -> impl Strategy<Value = (Event, u64)> {
    let reply = (0usize..5, any::<bool>(), 1u32..5, outcome()).prop_map(
        |(step, comp, attempt, outcome)| Event::Reply {
            step,
            direction: if comp {
                Direction::Compensate
            } else {
                Direction::Invoke
            },
            attempt,
            outcome,
        },
    );
    let event = prop_oneof![
        8 => reply,
        4 => Just(Event::WakeUp),
        1 => Just(Event::Resume),
        1 => Just(Event::Retry),
        1 => Just(Event::Cancel { reason: "op".into() }),
    ];
    (event, 0u64..3_000)
}

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000)
}

/// Feeds replies that answer exactly what was dispatched, so the saga can end.
fn answer(effects: &[Effect]) -> Vec<Event> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendCommand(c) => Some(Event::Reply {
                step: c.step as usize,
                direction: c.direction,
                attempt: c.attempt,
                outcome: Ok(json!({"ok": true})),
            }),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_event_sequence(events in prop::collection::vec(event(), 0..80)) {
        let saga = saga();
        let def = saga.definition();
        let mut now = t0();
        let t = start(def, SagaId::new(), json!(D::default()), None, now);
        let mut inst = t.instance;
        let mut pending = answer(&t.effects);
        let mut seq = t.logs.len() as u32;
        let mut compensated_order: Vec<usize> = Vec::new();
        let mut compensation_began = false;
        let mut passed_pivot = false;
        // Arbitrary events, then the sent commands answered until quiet.
        let mut queue: Vec<Event> = events.iter().map(|(e, _)| e.clone()).collect();
        queue.reverse();
        let mut advances: Vec<u64> = events.iter().map(|(_, ms)| *ms).collect();
        for _ in 0..2_000 {
            let event = match queue.pop() {
                Some(e) => e,
                None => match pending.pop() {
                    Some(e) => e,
                    None if !inst.is_terminal() && inst.next_wake_at.is_some() => Event::WakeUp,
                    None => break,
                },
            };
            now += chrono::Duration::milliseconds(advances.pop().unwrap_or(1_000) as i64);
            let before = inst.clone();
            let t = transition(def, &inst, event.clone(), now);
            // Versions move by exactly one per real transition; log sequence is contiguous.
            if t.is_noop() {
                prop_assert_eq!(&t.instance, &before);
            } else {
                prop_assert_eq!(t.instance.version, before.version + 1);
            }
            for log in &t.logs {
                prop_assert_eq!(log.seq, seq);
                seq += 1;
            }
            prop_assert_eq!(t.instance.steps.len(), 5);
            // Completed and Compensated are final.
            if matches!(before.status, SagaStatus::Completed | SagaStatus::Compensated) {
                prop_assert_eq!(t.instance.status, before.status);
                prop_assert_eq!(&t.instance.steps, &before.steps);
                prop_assert!(t.effects.is_empty());
            }
            if t.instance.steps[3] == StepStatus::Succeeded {
                passed_pivot = true;
            }
            for effect in &t.effects {
                if let Effect::SendCommand(c) = effect {
                    match c.direction {
                        Direction::Invoke => {
                            // No action after compensation began (an operator retry
                            // of a failed post-pivot step is forward-only).
                            prop_assert!(!compensation_began, "invoke after compensation began: {:?}", event);
                        }
                        Direction::Compensate => {
                            prop_assert!(!passed_pivot, "compensation after the pivot");
                            compensation_began = true;
                            let step = c.step as usize;
                            if compensated_order.last() != Some(&step) {
                                prop_assert!(compensated_order.iter().all(|s| *s > step), "compensations out of order: {:?} then {}", compensated_order, step);
                                compensated_order.push(step);
                            }
                        }
                    }
                }
            }
            if t.instance.status == SagaStatus::Compensating {
                compensation_began = true;
            }
            // Only steps that may have an effect are compensated.
            for (i, s) in t.instance.steps.iter().enumerate() {
                if *s == StepStatus::Compensated {
                    prop_assert!(def.steps()[i].compensation().is_some());
                }
            }
            pending.extend(answer(&t.effects));
            inst = t.instance;
        }
        // Once participants answer, every saga ends (Failed only needs an operator).
        prop_assert!(inst.is_terminal(), "not terminal: {:?}", inst.status);
        if inst.status == SagaStatus::Completed {
            prop_assert!(inst.steps.iter().all(|s| *s == StepStatus::Succeeded));
        }
        if inst.status == SagaStatus::Compensated {
            for (i, s) in inst.steps.iter().enumerate() {
                let needs = matches!(s, StepStatus::Succeeded | StepStatus::Uncertain) && def.steps()[i].compensation().is_some();
                prop_assert!(!needs, "step {} left {:?}", i, s);
            }
        }
    }
}
