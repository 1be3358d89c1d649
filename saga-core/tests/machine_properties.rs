//! Property tests of the pure state machine over arbitrary event sequences,
//! including nonsense ones (replies for steps never dispatched, operator
//! actions at any time, failed sends).
//!
//! The checker reads the trace (what was dispatched, what was logged), not the
//! machine's own step labels alone, and a negative control feeds it broken
//! traces to prove it can fail.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use saga_core::machine::{Effect, Event, Transition, start, transition};
use saga_core::{
    Command, Direction, LogEvent, RetryPolicy, Saga, SagaId, SagaInstance, SagaStatus, StepError,
    StepStatus,
};
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
    const ENDPOINT: &'static str = "e";
    type Reply = Value;
}

fn saga() -> Saga<D> {
    Saga::<D>::builder("p")
        .deadline(Duration::from_secs(20))
        .step("a", |step| {
            step.invoke(|_| C)
                .compensate(|_| C)
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
                .compensation_retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
        })
        .step("b", |step| {
            step.invoke(|_| C)
                .read_only()
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(2))
        })
        .step("c", |step| {
            step.invoke(|_| C)
                .compensate(|_| C)
                .on_unknown(saga_core::OnUnknown::Compensate)
        })
        .step("pivot", |step| step.invoke(|_| C).pivot())
        .step("d", |step| step.invoke(|_| C).retriable())
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
    let send_failed =
        (0usize..5, any::<bool>(), 1u32..5).prop_map(|(step, comp, attempt)| Event::SendFailed {
            step,
            direction: if comp {
                Direction::Compensate
            } else {
                Direction::Invoke
            },
            attempt,
            error: "broker down".into(),
        });
    let event = prop_oneof![
        8 => reply,
        4 => Just(Event::WakeUp),
        1 => Just(Event::Resume),
        1 => Just(Event::Retry),
        1 => Just(Event::Cancel { reason: "op".into() }),
        2 => send_failed,
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

/// What the trace of one saga must show. Fed one transition at a time;
/// `finish` checks the end state against everything that was dispatched.
#[derive(Default)]
struct Checker {
    seq: u32,
    compensated_order: Vec<usize>,
    compensation_began: bool,
    passed_pivot: bool,
    /// Steps whose action was dispatched, and which of them later had their
    /// compensation acknowledged.
    invoked: Vec<bool>,
    undone: Vec<bool>,
    /// Whether something that may stop a saga for an operator happened: a
    /// compensation failed, or a step after the pivot was refused.
    operator_cause: bool,
    errors: Vec<String>,
}

const PIVOT: usize = 3;

impl Checker {
    fn new(steps: usize) -> Self {
        Self {
            invoked: vec![false; steps],
            undone: vec![false; steps],
            ..Self::default()
        }
    }

    fn fail(&mut self, what: String) {
        self.errors.push(what);
    }

    fn step(
        &mut self,
        def: &saga_core::definition::SagaDefinition,
        before: &SagaInstance,
        t: &Transition,
    ) {
        // Versions move by exactly one per real transition; log sequence is contiguous.
        if t.is_noop() {
            if t.instance != *before {
                self.fail("a no-op changed the instance".into());
            }
        } else if t.instance.version != before.version + 1 {
            self.fail(format!(
                "version {} -> {}",
                before.version, t.instance.version
            ));
        }
        for log in &t.logs {
            if log.seq != self.seq {
                self.fail(format!("log seq {} where {} was next", log.seq, self.seq));
            }
            self.seq = log.seq + 1;
            let step = log
                .step
                .as_deref()
                .and_then(|n| def.step_named(n))
                .map(|(i, _)| i);
            match (log.event, step) {
                (LogEvent::CompensationFailed, _) => self.operator_cause = true,
                (LogEvent::StepTimedOut, _) if log.payload["direction"] == "compensate" => {
                    self.operator_cause = true;
                }
                (LogEvent::StepFailed, Some(i)) if i > PIVOT => self.operator_cause = true,
                (LogEvent::CompensationSucceeded, Some(i)) => self.undone[i] = true,
                _ => {}
            }
        }
        // Completed and Compensated are final.
        if matches!(
            before.status,
            SagaStatus::Completed | SagaStatus::Compensated
        ) && (t.instance.status != before.status
            || t.instance.steps != before.steps
            || !t.effects.is_empty())
        {
            self.fail(format!("a finished saga changed: {:?}", t.instance.status));
        }
        if t.instance.steps[PIVOT] == StepStatus::Succeeded {
            self.passed_pivot = true;
        }
        for effect in &t.effects {
            let Effect::SendCommand(c) = effect else {
                continue;
            };
            let step = c.step as usize;
            match c.direction {
                Direction::Invoke => {
                    // No action after compensation began (an operator retry
                    // of a failed post-pivot step is forward-only).
                    if self.compensation_began {
                        self.fail(format!("invoke of step {step} after compensation began"));
                    }
                    self.invoked[step] = true;
                }
                Direction::Compensate => {
                    if self.passed_pivot {
                        self.fail(format!("compensation of step {step} after the pivot"));
                    }
                    self.compensation_began = true;
                    if self.compensated_order.last() != Some(&step) {
                        if self.compensated_order.iter().any(|s| *s <= step) {
                            self.fail(format!(
                                "compensations out of order: {:?} then {step}",
                                self.compensated_order
                            ));
                        }
                        self.compensated_order.push(step);
                    }
                }
            }
        }
        if t.instance.status == SagaStatus::Compensating {
            self.compensation_began = true;
        }
    }

    fn finish(
        mut self,
        def: &saga_core::definition::SagaDefinition,
        end: &SagaInstance,
    ) -> Vec<String> {
        match end.status {
            SagaStatus::Completed => {
                if !end.steps.iter().all(|s| *s == StepStatus::Succeeded) {
                    self.fail(format!("completed with steps {:?}", end.steps));
                }
                if !self.invoked.iter().all(|i| *i) {
                    self.fail(format!(
                        "completed without dispatching every step: {:?}",
                        self.invoked
                    ));
                }
            }
            SagaStatus::Compensated => {
                for (i, invoked) in self.invoked.clone().into_iter().enumerate() {
                    let compensable = def.steps()[i].compensation().is_some();
                    if invoked && compensable && !self.undone[i] {
                        self.fail(format!("step {i} was dispatched but never undone"));
                    }
                    if invoked && i > PIVOT {
                        self.fail(format!(
                            "compensated after dispatching step {i}, past the pivot"
                        ));
                    }
                }
            }
            SagaStatus::Failed => {
                // Failed needs a cause an operator must look at.
                if !self.operator_cause {
                    self.fail(
                        "failed, yet no compensation failed and nothing past the pivot was refused"
                            .into(),
                    );
                }
            }
            other => self.fail(format!("not terminal: {other:?}")),
        }
        self.errors
    }
}

/// Runs `events`, then answers what was dispatched until the saga is quiet;
/// returns the checker's findings.
fn run(events: &[(Event, u64)], tamper: impl Fn(&mut Transition)) -> Vec<String> {
    let saga = saga();
    let def = saga.definition();
    let mut now = t0();
    let mut t = start(def, SagaId::new(), json!(D::default()), None, now);
    tamper(&mut t);
    let mut checker = Checker::new(def.steps().len());
    let empty = SagaInstance {
        version: 0,
        log_seq: 0,
        ..t.instance.clone()
    };
    checker.step(
        def,
        &empty,
        &Transition {
            instance: t.instance.clone(),
            logs: t.logs.clone(),
            effects: t.effects.clone(),
        },
    );
    let mut inst = t.instance;
    let mut pending = answer(&t.effects);
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
        let mut t = transition(def, &inst, event, now);
        tamper(&mut t);
        checker.step(def, &inst, &t);
        pending.extend(answer(&t.effects));
        inst = t.instance;
    }
    checker.finish(def, &inst)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_event_sequence(events in prop::collection::vec(event(), 0..80)) {
        let errors = run(&events, |_| {});
        prop_assert!(errors.is_empty(), "{:#?}", errors);
    }
}

/// The negative control: a machine that forgets to compensate, or fails a
/// saga for no reason, is caught.
#[test]
fn the_checker_catches_a_broken_machine() {
    let business = |step| {
        (
            Event::Reply {
                step,
                direction: Direction::Invoke,
                attempt: 1,
                outcome: Err(StepError::business("no")),
            },
            10,
        )
    };
    let ok = |step| {
        (
            Event::Reply {
                step,
                direction: Direction::Invoke,
                attempt: 1,
                outcome: Ok(json!({"ok": true})),
            },
            10,
        )
    };
    // The trace is sound as the machine writes it.
    let trace = [ok(0), ok(1), business(2)];
    assert_eq!(run(&trace, |_| {}), Vec::<String>::new());
    // A machine that drops the compensation of step 0 and declares victory.
    let forget_undo = |t: &mut Transition| {
        t.effects.retain(|e| !matches!(e, Effect::SendCommand(c) if c.direction == Direction::Compensate && c.step == 0));
        if t.instance.status == SagaStatus::Compensating
            && t.instance.cursor.is_some_and(|c| c.step == 0)
        {
            t.instance.status = SagaStatus::Compensated;
            t.instance.cursor = None;
            t.instance.next_wake_at = None;
        }
    };
    let found = run(&trace, forget_undo);
    assert!(
        found
            .iter()
            .any(|e| e.contains("step 0 was dispatched but never undone")),
        "{found:?}"
    );
    // A machine that gives up for an operator with nothing to show for it.
    let fail_early = |t: &mut Transition| {
        if t.instance.status == SagaStatus::Compensating {
            t.instance.status = SagaStatus::Failed;
            t.instance.next_wake_at = None;
            t.effects.clear();
        }
    };
    let found = run(&trace, fail_early);
    assert!(found.iter().any(|e| e.contains("failed, yet")), "{found:?}");
}
