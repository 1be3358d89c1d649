//! One test per transition rule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::*;
use crate::definition::Saga;
use crate::retry::RetryPolicy;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Trip {
    flight: Option<String>,
    hotel: Option<String>,
}

/// The endpoints of the tests' participants.
const ENDPOINTS: [&str; 5] = ["airline", "hotels", "bank", "mail", "svc"];

/// Books something at participant `E` of [`ENDPOINTS`].
#[derive(Serialize, Deserialize)]
struct Book<const E: usize>(String);
impl<const E: usize> crate::Command for Book<E> {
    const NAME: &'static str = "book";
    const ENDPOINT: &'static str = ENDPOINTS[E];
    type Reply = String;
}
/// Cancels a booking at participant `E`.
#[derive(Serialize, Deserialize)]
struct Cancel<const E: usize>(String);
impl<const E: usize> crate::Command for Cancel<E> {
    const NAME: &'static str = "cancel";
    const ENDPOINT: &'static str = ENDPOINTS[E];
    type Reply = ();
}

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000)
}

fn at(ms: u64) -> DateTime<Utc> {
    clock::add(t0(), Duration::from_millis(ms))
}

/// flight (compensatable) -> hotel (compensatable) -> pay (pivot) -> notify (retriable)
fn trip() -> Saga<Trip> {
    Saga::<Trip>::builder("trip")
        .step("flight", |step| {
            step.invoke(|_| Book::<0>("flight".into()))
                .on_reply(|d, r| d.flight = Some(r))
                .compensate(|_| Cancel::<0>("flight".into()))
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
                .timeout(Duration::from_secs(1))
        })
        .step("hotel", |step| {
            step.invoke(|_| Book::<1>("hotel".into()))
                .on_reply(|d, r| d.hotel = Some(r))
                .compensate(|_| Cancel::<1>("hotel".into()))
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(2))
                .compensation_retry(RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(2))
                .timeout(Duration::from_secs(1))
        })
        .step("pay", |step| {
            step.invoke(|_| Book::<2>("pay".into()))
                .pivot()
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).unlimited())
        })
        .step("notify", |step| {
            step.invoke(|_| Book::<3>("mail".into()))
                .retriable()
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).unlimited())
        })
        .build()
        .expect("valid definition")
}

struct Run {
    saga: Saga<Trip>,
    inst: SagaInstance,
    effects: Vec<Effect>,
    logs: Vec<LogEntry>,
}

impl Run {
    fn new() -> Self {
        let saga = trip();
        let t = start(
            saga.definition(),
            SagaId::new(),
            json!(Trip::default()),
            None,
            t0(),
        );
        Self {
            saga,
            inst: t.instance,
            effects: t.effects,
            logs: t.logs,
        }
    }

    fn apply(&mut self, event: Event, now: DateTime<Utc>) -> &mut Self {
        let t = transition(self.saga.definition(), &self.inst, event, now);
        self.inst = t.instance;
        self.effects = t.effects;
        self.logs = t.logs;
        self
    }

    fn reply(
        &mut self,
        step: usize,
        dir: Direction,
        attempt: u32,
        outcome: Result<Value, StepError>,
    ) -> &mut Self {
        self.apply(
            Event::Reply {
                step,
                direction: dir,
                attempt,
                outcome,
            },
            t0(),
        )
    }

    fn ok(&mut self, step: usize) -> &mut Self {
        let attempt = self.inst.cursor.map_or(1, |c| c.attempt);
        self.reply(
            step,
            Direction::Invoke,
            attempt,
            Ok(json!(format!("ref-{step}"))),
        )
    }

    fn comp_ok(&mut self, step: usize) -> &mut Self {
        let attempt = self.inst.cursor.map_or(1, |c| c.attempt);
        self.reply(step, Direction::Compensate, attempt, Ok(Value::Null))
    }

    fn sent(&self) -> Vec<(String, Direction, u32)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::SendCommand(c) => Some((c.step_name.clone(), c.direction, c.attempt)),
                _ => None,
            })
            .collect()
    }

    fn events(&self) -> Vec<LogEvent> {
        self.logs.iter().map(|l| l.event).collect()
    }
}

#[test]
fn start_dispatches_the_first_step_and_arms_its_timeout() {
    let r = Run::new();
    assert_eq!(r.inst.status, SagaStatus::Running);
    assert_eq!(r.inst.version, 1);
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Invoke, 1)]);
    assert_eq!(r.inst.next_wake_at, Some(at(1000)));
    assert_eq!(
        r.events(),
        vec![LogEvent::SagaStarted, LogEvent::StepDispatched]
    );
    assert_eq!(r.inst.steps[0], StepStatus::Running);
    let Effect::SendCommand(cmd) = &r.effects[0] else {
        panic!()
    };
    assert_eq!(
        cmd.idempotency_key.as_str(),
        format!("{}:flight:invoke", r.inst.id)
    );
    assert_eq!(cmd.endpoint, "airline");
    assert_eq!(cmd.command, "book");
    assert_eq!(cmd.payload, json!("flight"));
}

#[test]
fn success_folds_the_reply_and_dispatches_the_next_step() {
    let mut r = Run::new();
    r.ok(0);
    assert_eq!(r.inst.steps[0], StepStatus::Succeeded);
    assert_eq!(r.inst.data["flight"], json!("ref-0"));
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Invoke, 1)]);
    assert_eq!(r.inst.version, 2);
}

#[test]
fn last_success_completes_the_saga() {
    let mut r = Run::new();
    r.ok(0).ok(1).ok(2).ok(3);
    assert_eq!(r.inst.status, SagaStatus::Completed);
    assert_eq!(r.inst.cursor, None);
    assert_eq!(r.inst.next_wake_at, None);
    assert!(r.effects.contains(&Effect::Finished(SagaStatus::Completed)));
}

#[test]
fn business_failure_compensates_succeeded_steps_in_reverse_order() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    r.reply(
        2,
        Direction::Invoke,
        1,
        Err(StepError::business("declined")),
    );
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    assert_eq!(r.inst.steps[2], StepStatus::Failed);
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 1)]);
    assert!(
        r.inst
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("declined")
    );
    r.comp_ok(1);
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Compensate, 1)]);
    r.comp_ok(0);
    assert_eq!(r.inst.status, SagaStatus::Compensated);
    assert_eq!(
        r.inst.steps[..3],
        [
            StepStatus::Compensated,
            StepStatus::Compensated,
            StepStatus::Failed
        ]
    );
    assert!(
        r.effects
            .contains(&Effect::Finished(SagaStatus::Compensated))
    );
}

#[test]
fn a_failed_step_is_compensated_too_so_a_late_copy_of_its_command_is_refused() {
    let mut r = Run::new();
    r.reply(
        0,
        Direction::Invoke,
        1,
        Err(StepError::business("no seats")),
    );
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Compensate, 1)]);
    r.comp_ok(0);
    assert_eq!(r.inst.status, SagaStatus::Compensated);
    assert_eq!(r.inst.steps[0], StepStatus::Compensated);
}

#[test]
fn retryable_failure_schedules_a_retry_with_backoff() {
    let mut r = Run::new();
    r.reply(0, Direction::Invoke, 1, Err(StepError::retryable("busy")));
    assert_eq!(r.inst.status, SagaStatus::Running);
    let c = r.inst.cursor.expect("cursor");
    assert_eq!(c.waiting, Waiting::Retry);
    assert_eq!(r.inst.next_wake_at, Some(at(100)));
    assert!(r.sent().is_empty());
    assert_eq!(
        r.events(),
        vec![LogEvent::StepFailed, LogEvent::RetryScheduled]
    );
    r.apply(Event::WakeUp, at(100));
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Invoke, 2)]);
    assert_eq!(r.inst.next_wake_at, Some(at(1100)));
}

#[test]
fn wake_before_due_is_a_noop() {
    let mut r = Run::new();
    let before = r.inst.clone();
    r.apply(Event::WakeUp, at(999));
    assert!(r.logs.is_empty() && r.effects.is_empty());
    assert_eq!(r.inst, before);
}

#[test]
fn timeout_retries_and_marks_the_step_uncertain() {
    let mut r = Run::new();
    r.apply(Event::WakeUp, at(1000));
    assert_eq!(
        r.events(),
        vec![LogEvent::StepTimedOut, LogEvent::RetryScheduled]
    );
    assert!(r.inst.cursor.expect("cursor").uncertain);
}

#[test]
fn exhausted_retries_after_timeouts_compensate_the_uncertain_step_too() {
    let mut r = Run::new();
    r.ok(0);
    // hotel: 2 attempts, both time out.
    r.apply(Event::WakeUp, at(1000));
    r.apply(Event::WakeUp, at(1100));
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Invoke, 2)]);
    r.apply(Event::WakeUp, at(2100));
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    assert_eq!(r.inst.steps[1], StepStatus::Compensating);
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 1)]);
}

#[test]
fn exhausted_retryable_failures_leave_the_step_uncertain_and_compensate_it() {
    // Every attempt said "retryable", but a redelivered copy may still succeed later.
    let mut r = Run::new();
    r.ok(0);
    r.reply(1, Direction::Invoke, 1, Err(StepError::retryable("busy")));
    r.apply(Event::WakeUp, at(100));
    r.reply(1, Direction::Invoke, 2, Err(StepError::retryable("busy")));
    assert_eq!(r.inst.steps[1], StepStatus::Compensating);
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 1)]);
    r.comp_ok(1);
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Compensate, 1)]);
}

#[test]
fn the_pivot_retries_until_it_succeeds() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    for attempt in 1..=12 {
        r.reply(
            2,
            Direction::Invoke,
            attempt,
            Err(StepError::retryable("bank busy")),
        );
        assert_eq!(r.inst.status, SagaStatus::Running);
        let due = r.inst.next_wake_at.expect("wake");
        r.apply(Event::WakeUp, due);
        assert_eq!(
            r.sent(),
            vec![("pay".into(), Direction::Invoke, attempt + 1)],
            "nothing is compensated while the pivot may still happen"
        );
    }
    r.ok(2);
    assert_eq!(r.inst.steps[2], StepStatus::Succeeded);
}

#[test]
fn unknown_outcome_with_compensate_policy_compensates_the_step() {
    let saga = Saga::<Trip>::builder("u")
        .step("a", |step| {
            step.invoke(|_| Book::<4>("a".into()))
                .compensate(|_| Cancel::<4>("a".into()))
                .on_unknown(OnUnknown::Compensate)
        })
        .build()
        .expect("valid");
    let t = start(
        saga.definition(),
        SagaId::new(),
        json!(Trip::default()),
        None,
        t0(),
    );
    let t = transition(
        saga.definition(),
        &t.instance,
        Event::Reply {
            step: 0,
            direction: Direction::Invoke,
            attempt: 1,
            outcome: Err(StepError::unknown("lost connection mid-commit")),
        },
        t0(),
    );
    assert_eq!(t.instance.status, SagaStatus::Compensating);
    assert_eq!(t.instance.steps[0], StepStatus::Compensating);
}

#[test]
fn unknown_outcome_with_retry_policy_retries() {
    let mut r = Run::new();
    r.reply(0, Direction::Invoke, 1, Err(StepError::unknown("?")));
    let c = r.inst.cursor.expect("cursor");
    assert_eq!(c.waiting, Waiting::Retry);
    assert!(c.uncertain);
}

#[test]
fn compensation_failure_is_retried_then_the_saga_fails() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    r.reply(
        2,
        Direction::Invoke,
        1,
        Err(StepError::business("declined")),
    );
    r.reply(
        1,
        Direction::Compensate,
        1,
        Err(StepError::retryable("down")),
    );
    assert_eq!(r.inst.cursor.expect("cursor").waiting, Waiting::Retry);
    r.apply(Event::WakeUp, at(50));
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 2)]);
    r.reply(
        1,
        Direction::Compensate,
        2,
        Err(StepError::retryable("still down")),
    );
    assert_eq!(r.inst.status, SagaStatus::Failed);
    assert!(
        r.inst
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("compensation of step `hotel` failed after 2 attempt(s)")
    );
    assert_eq!(r.inst.next_wake_at, None);
    assert!(r.effects.contains(&Effect::Finished(SagaStatus::Failed)));
}

#[test]
fn compensation_timeout_counts_as_a_failed_attempt() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    r.reply(
        2,
        Direction::Invoke,
        1,
        Err(StepError::business("declined")),
    );
    r.apply(Event::WakeUp, at(1000));
    assert_eq!(
        r.events(),
        vec![LogEvent::StepTimedOut, LogEvent::RetryScheduled]
    );
}

#[test]
fn operator_retry_resumes_a_failed_compensation() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    r.reply(
        2,
        Direction::Invoke,
        1,
        Err(StepError::business("declined")),
    );
    r.reply(
        1,
        Direction::Compensate,
        1,
        Err(StepError::retryable("down")),
    );
    r.apply(Event::WakeUp, at(50));
    r.reply(
        1,
        Direction::Compensate,
        2,
        Err(StepError::retryable("down")),
    );
    assert_eq!(r.inst.status, SagaStatus::Failed);
    r.apply(Event::Retry, at(60_000));
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    // A new attempt (a new message id), under the same key: the earlier ones'
    // outcome is unknown, so the participant must still deduplicate them.
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 3)]);
    let Effect::SendCommand(cmd) = &r.effects[0] else {
        panic!("a command")
    };
    assert_eq!(cmd.message_id, format!("{}:hotel:compensate:3", r.inst.id));
    assert_eq!(
        cmd.idempotency_key.as_str(),
        format!("{}:hotel:compensate", r.inst.id)
    );
    // The retry has the compensation's whole budget again (2 attempts).
    r.reply(
        1,
        Direction::Compensate,
        3,
        Err(StepError::retryable("down")),
    );
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    let due = r.inst.next_wake_at.expect("retry");
    r.apply(Event::WakeUp, due);
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 4)]);
    // A late failure of the attempt before the operator's retry changes nothing.
    r.reply(
        1,
        Direction::Compensate,
        2,
        Err(StepError::retryable("down")),
    );
    assert_eq!(r.events(), vec![LogEvent::ReplyIgnored]);
    r.comp_ok(1).comp_ok(0);
    assert_eq!(r.inst.status, SagaStatus::Compensated);
}

#[test]
fn a_refused_compensation_fails_at_once_and_a_retry_uses_a_new_key() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    r.reply(
        2,
        Direction::Invoke,
        1,
        Err(StepError::business("declined")),
    );
    r.reply(
        1,
        Direction::Compensate,
        1,
        Err(StepError::business("booking is locked")),
    );
    assert_eq!(
        r.inst.status,
        SagaStatus::Failed,
        "asking again under the same key would only get the recorded refusal"
    );
    assert!(r.inst.cursor.expect("cursor").refused);
    r.apply(Event::Retry, at(60_000));
    let Effect::SendCommand(cmd) = &r.effects[0] else {
        panic!("a command")
    };
    assert_eq!(cmd.attempt, 2);
    assert_eq!(
        cmd.idempotency_key.as_str(),
        format!("{}:hotel:compensate#2", r.inst.id),
        "a new key, so the participant runs the compensation again"
    );
    // The refusal of the old key, delivered again, is ignored.
    r.reply(
        1,
        Direction::Compensate,
        1,
        Err(StepError::business("booking is locked")),
    );
    assert_eq!(r.events(), vec![LogEvent::ReplyIgnored]);
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    r.comp_ok(1);
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Compensate, 1)]);
}

#[test]
fn an_operator_retry_after_a_refusal_past_the_pivot_runs_the_step_again() {
    let mut r = Run::new();
    r.ok(0).ok(1).ok(2);
    r.reply(
        3,
        Direction::Invoke,
        1,
        Err(StepError::business("bad address")),
    );
    assert_eq!(r.inst.status, SagaStatus::Failed);
    // The operator fixes the address, then retries.
    r.apply(Event::Retry, at(60_000));
    assert_eq!(r.inst.status, SagaStatus::Running);
    let Effect::SendCommand(cmd) = &r.effects[0] else {
        panic!("a command")
    };
    assert_eq!(cmd.message_id, format!("{}:notify:invoke:2", r.inst.id));
    assert_eq!(
        cmd.idempotency_key.as_str(),
        format!("{}:notify:invoke#2", r.inst.id)
    );
    // A redelivered reply of the first attempt is not read as this one's.
    r.reply(
        3,
        Direction::Invoke,
        1,
        Err(StepError::business("bad address")),
    );
    assert_eq!(r.inst.status, SagaStatus::Running);
    r.reply(3, Direction::Invoke, 2, Ok(json!("sent")));
    assert_eq!(r.inst.status, SagaStatus::Completed);
}

#[test]
fn operator_retry_of_a_running_saga_is_a_noop() {
    let mut r = Run::new();
    r.apply(Event::Retry, t0());
    assert!(r.logs.is_empty());
}

#[test]
fn failure_after_the_pivot_fails_without_compensating() {
    let mut r = Run::new();
    r.ok(0).ok(1).ok(2);
    r.reply(
        3,
        Direction::Invoke,
        1,
        Err(StepError::business("bad address")),
    );
    assert_eq!(r.inst.status, SagaStatus::Failed);
    assert!(r.sent().is_empty());
    assert_eq!(r.inst.steps[0], StepStatus::Succeeded);
}

#[test]
fn retriable_step_ignores_the_attempt_limit() {
    let mut r = Run::new();
    r.ok(0).ok(1).ok(2);
    for attempt in 1..=10 {
        r.reply(
            3,
            Direction::Invoke,
            attempt,
            Err(StepError::retryable("smtp down")),
        );
        assert_eq!(r.inst.status, SagaStatus::Running);
        let due = r.inst.next_wake_at.expect("wake");
        r.apply(Event::WakeUp, due);
        assert_eq!(
            r.sent(),
            vec![("notify".into(), Direction::Invoke, attempt + 1)]
        );
    }
}

#[test]
fn a_pivot_that_keeps_timing_out_keeps_retrying() {
    let mut r = Run::new();
    r.ok(0).ok(1);
    for attempt in 2..=8 {
        let due = r.inst.next_wake_at.expect("timeout");
        r.apply(Event::WakeUp, due);
        assert_eq!(r.inst.status, SagaStatus::Running);
        let due = r.inst.next_wake_at.expect("retry");
        r.apply(Event::WakeUp, due);
        assert_eq!(r.sent(), vec![("pay".into(), Direction::Invoke, attempt)]);
    }
}

#[test]
fn stale_and_duplicate_replies_are_logged_and_ignored() {
    let mut r = Run::new();
    r.ok(0);
    let before = r.inst.clone();
    // duplicate success for step 0
    r.reply(0, Direction::Invoke, 1, Ok(json!("again")));
    assert_eq!(r.events(), vec![LogEvent::ReplyIgnored]);
    assert!(r.effects.is_empty());
    assert_eq!(r.inst.steps, before.steps);
    assert_eq!(r.inst.data, before.data);
    // a reply for an attempt never sent
    r.reply(1, Direction::Invoke, 7, Ok(json!("x")));
    assert_eq!(r.events(), vec![LogEvent::ReplyIgnored]);
    // a compensation reply while running forward
    r.reply(0, Direction::Compensate, 1, Ok(Value::Null));
    assert_eq!(r.events(), vec![LogEvent::ReplyIgnored]);
    assert_eq!(r.inst.status, SagaStatus::Running);
}

#[test]
fn failure_of_a_superseded_attempt_is_ignored() {
    let mut r = Run::new();
    r.reply(0, Direction::Invoke, 1, Err(StepError::retryable("busy")));
    r.apply(Event::WakeUp, at(100));
    r.reply(0, Direction::Invoke, 1, Err(StepError::retryable("busy")));
    assert_eq!(r.events(), vec![LogEvent::ReplyIgnored]);
    assert_eq!(r.inst.cursor.expect("cursor").attempt, 2);
}

#[test]
fn success_of_an_earlier_attempt_is_accepted() {
    let mut r = Run::new();
    r.apply(Event::WakeUp, at(1000));
    r.apply(Event::WakeUp, at(1100));
    r.reply(0, Direction::Invoke, 1, Ok(json!("late")));
    assert_eq!(r.inst.steps[0], StepStatus::Succeeded);
    assert_eq!(r.inst.data["flight"], json!("late"));
}

#[test]
fn replies_after_the_end_change_nothing() {
    let mut r = Run::new();
    r.reply(0, Direction::Invoke, 1, Err(StepError::business("no")));
    r.comp_ok(0);
    assert_eq!(r.inst.status, SagaStatus::Compensated);
    let before = r.inst.clone();
    for _ in 0..3 {
        r.reply(0, Direction::Invoke, 1, Ok(json!("late")));
        r.reply(0, Direction::Compensate, 1, Ok(Value::Null));
        assert!(r.logs.is_empty() && r.effects.is_empty());
        assert_eq!(r.inst, before, "no log row, no version bump");
    }
}

#[test]
fn resume_resends_the_in_flight_attempt_without_extending_its_timeout() {
    let mut r = Run::new();
    r.apply(Event::Resume, at(10));
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Invoke, 1)]);
    assert_eq!(r.events(), vec![LogEvent::Resumed]);
    assert_eq!(
        r.inst.next_wake_at,
        Some(at(1000)),
        "resuming again and again must not keep an attempt alive forever"
    );
}

#[test]
fn resume_never_passes_the_attempt_limit() {
    let mut r = Run::new();
    // flight: 3 attempts.
    for _ in 0..3 {
        let due = r.inst.next_wake_at.expect("wake");
        r.apply(Event::Resume, due - chrono::Duration::milliseconds(1));
        r.apply(Event::WakeUp, due);
        if r.inst.status != SagaStatus::Running {
            break;
        }
        let due = r.inst.next_wake_at.expect("retry");
        r.apply(Event::Resume, due - chrono::Duration::milliseconds(50));
    }
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    let dispatched = r
        .inst
        .cursor
        .map(|c| (c.direction, c.attempt))
        .expect("cursor");
    assert_eq!(dispatched, (Direction::Compensate, 1));
}

#[test]
fn a_failed_send_is_sent_again_without_consuming_an_attempt() {
    let mut r = Run::new();
    r.apply(
        Event::SendFailed {
            step: 0,
            direction: Direction::Invoke,
            attempt: 1,
            error: "broker down".into(),
        },
        at(5),
    );
    let c = r.inst.cursor.expect("cursor");
    assert_eq!((c.waiting, c.attempt), (Waiting::Send, 1));
    assert_eq!(r.events(), vec![LogEvent::SendFailed]);
    assert_eq!(
        r.inst.next_wake_at,
        Some(at(5) + chrono::Duration::seconds(1))
    );
    // Long after the original timeout: still the same attempt, sent again,
    // and its timeout starts now.
    r.apply(Event::WakeUp, at(1005));
    assert_eq!(r.sent(), vec![("flight".into(), Direction::Invoke, 1)]);
    assert_eq!(r.inst.next_wake_at, Some(at(2005)));
    // A late "failed" for an attempt that moved on changes nothing.
    r.ok(0);
    r.apply(
        Event::SendFailed {
            step: 0,
            direction: Direction::Invoke,
            attempt: 1,
            error: "late".into(),
        },
        at(2000),
    );
    assert!(r.logs.is_empty());
}

#[test]
fn resume_of_a_finished_saga_is_a_noop() {
    let mut r = Run::new();
    r.reply(0, Direction::Invoke, 1, Err(StepError::business("no")));
    r.comp_ok(0);
    r.apply(Event::Resume, t0());
    assert!(r.logs.is_empty() && r.effects.is_empty());
}

#[test]
fn cancel_before_the_pivot_compensates_including_the_in_flight_step() {
    let mut r = Run::new();
    r.ok(0);
    r.apply(
        Event::Cancel {
            reason: "customer asked".into(),
        },
        t0(),
    );
    assert_eq!(r.inst.status, SagaStatus::Compensating);
    assert_eq!(r.sent(), vec![("hotel".into(), Direction::Compensate, 1)]);
    assert!(
        r.inst
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("customer asked")
    );
}

#[test]
fn cancel_after_the_pivot_is_refused() {
    let mut r = Run::new();
    r.ok(0).ok(1).ok(2);
    assert!(!can_cancel(r.saga.definition(), &r.inst));
    r.apply(
        Event::Cancel {
            reason: "late".into(),
        },
        t0(),
    );
    assert!(r.logs.is_empty());
    assert_eq!(r.inst.status, SagaStatus::Running);
}

#[test]
fn deadline_compensates_a_saga_that_has_not_reached_its_pivot() {
    let saga = Saga::<Trip>::builder("d")
        .deadline(Duration::from_millis(500))
        .step("a", |step| {
            step.invoke(|_| Book::<4>("a".into()))
                .compensate(|_| Cancel::<4>("a".into()))
        })
        .step("b", |step| {
            step.invoke(|_| Book::<4>("b".into()))
                .compensate(|_| Cancel::<4>("b".into()))
        })
        .build()
        .expect("valid");
    let t = start(
        saga.definition(),
        SagaId::new(),
        json!(Trip::default()),
        None,
        t0(),
    );
    assert_eq!(t.instance.next_wake_at, Some(at(500)));
    let t = transition(
        saga.definition(),
        &t.instance,
        Event::Reply {
            step: 0,
            direction: Direction::Invoke,
            attempt: 1,
            outcome: Ok(Value::Null),
        },
        at(100),
    );
    let t = transition(saga.definition(), &t.instance, Event::WakeUp, at(500));
    assert_eq!(t.instance.status, SagaStatus::Compensating);
    assert_eq!(t.logs[0].event, LogEvent::DeadlineExceeded);
    // b was in flight: it is compensated first, then a.
    assert_eq!(t.instance.steps[1], StepStatus::Compensating);
}

#[test]
fn a_reply_that_does_not_decode_counts_as_unknown() {
    let mut r = Run::new();
    r.reply(0, Direction::Invoke, 1, Ok(json!({ "not": "a string" })));
    assert_eq!(
        r.events(),
        vec![LogEvent::StepFailed, LogEvent::RetryScheduled]
    );
    assert!(r.inst.cursor.expect("cursor").uncertain);
}

#[test]
fn local_steps_emit_run_local() {
    let saga = Saga::<Trip>::builder("l")
        .step("calc", |step| step.local(|_d: Trip, _| async { Ok(5u32) }))
        .build()
        .expect("valid");
    let t = start(
        saga.definition(),
        SagaId::new(),
        json!(Trip::default()),
        None,
        t0(),
    );
    let Effect::RunLocal(run) = &t.effects[0] else {
        panic!("a local run")
    };
    assert_eq!((run.step, run.attempt), (0, 1));
    assert_eq!(
        run.idempotency_key.as_str(),
        format!("{}:calc:invoke", t.instance.id)
    );
    assert_eq!(run.until, at(30_000), "the default timeout");
    assert_eq!(
        t.instance.next_wake_at,
        Some(at(31_000)),
        "woken only after the attempt surely ended"
    );
}

fn local_then_remote() -> Saga<Trip> {
    Saga::<Trip>::builder("lr")
        .step("hold", |step| {
            step.local(|_d: Trip, _| async { Ok(()) })
                .compensate_local(|_d: Trip, _| async { Ok(()) })
                .timeout(Duration::from_secs(2))
        })
        .step("flight", |step| {
            step.invoke(|_| Book::<0>("flight".into()))
                .compensate(|_| Cancel::<0>("flight".into()))
        })
        .build()
        .expect("valid")
}

#[test]
fn compensation_waits_for_a_local_attempt_that_may_still_run() {
    let saga = local_then_remote();
    let t = start(
        saga.definition(),
        SagaId::new(),
        json!(Trip::default()),
        None,
        t0(),
    );
    let t = transition(
        saga.definition(),
        &t.instance,
        Event::Cancel {
            reason: "customer".into(),
        },
        at(100),
    );
    assert_eq!(t.instance.status, SagaStatus::Compensating);
    assert!(
        t.effects.is_empty(),
        "nothing runs while the local attempt may still be running"
    );
    let c = t.instance.cursor.expect("cursor");
    assert_eq!(
        (c.direction, c.waiting),
        (Direction::Compensate, Waiting::Send)
    );
    assert_eq!(t.instance.next_wake_at, Some(at(3000)));
    let early = transition(saga.definition(), &t.instance, Event::WakeUp, at(2999));
    assert!(early.effects.is_empty());
    let t = transition(saga.definition(), &t.instance, Event::WakeUp, at(3000));
    let Effect::RunLocal(run) = &t.effects[0] else {
        panic!("the compensation runs")
    };
    assert_eq!((run.direction, run.attempt), (Direction::Compensate, 1));
}

#[test]
fn resume_does_not_start_a_compensation_waiting_for_a_local_attempt() {
    // Found by the simulation (seed 5072): an operator's resume dispatched
    // the deferred compensation while the local attempt still ran.
    let saga = local_then_remote();
    let t = start(
        saga.definition(),
        SagaId::new(),
        json!(Trip::default()),
        None,
        t0(),
    );
    let t = transition(
        saga.definition(),
        &t.instance,
        Event::Cancel {
            reason: "customer".into(),
        },
        at(100),
    );
    let resumed = transition(saga.definition(), &t.instance, Event::Resume, at(200));
    assert!(resumed.is_noop(), "{:?}", resumed.effects);
}

#[test]
fn a_local_attempt_that_may_still_run_is_not_resumed() {
    let saga = local_then_remote();
    let t = start(
        saga.definition(),
        SagaId::new(),
        json!(Trip::default()),
        None,
        t0(),
    );
    let resumed = transition(saga.definition(), &t.instance, Event::Resume, at(10));
    assert!(resumed.is_noop());
}

#[test]
fn log_sequence_numbers_are_contiguous() {
    let mut r = Run::new();
    let mut all = r.logs.clone();
    r.ok(0);
    all.extend(r.logs.clone());
    r.reply(1, Direction::Invoke, 1, Err(StepError::business("x")));
    all.extend(r.logs.clone());
    r.comp_ok(0);
    all.extend(r.logs.clone());
    let seqs: Vec<u32> = all.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (0..all.len() as u32).collect::<Vec<_>>());
    assert_eq!(r.inst.log_seq as usize, all.len());
}

#[test]
fn log_times_increase_even_when_the_clock_goes_back() {
    let mut r = Run::new();
    let mut all = r.logs.clone();
    // Another engine, its clock a second behind, handles the next reply.
    r.apply(
        Event::Reply {
            step: 0,
            direction: Direction::Invoke,
            attempt: 1,
            outcome: Ok(json!("ref-0")),
        },
        t0() - chrono::Duration::seconds(1),
    );
    all.extend(r.logs.clone());
    r.ok(1);
    all.extend(r.logs.clone());
    assert!(all.len() >= 5);
    assert!(
        all.windows(2).all(|w| w[0].at < w[1].at),
        "{:?}",
        all.iter().map(|l| l.at).collect::<Vec<_>>()
    );
    assert!(r.inst.updated_at >= all.last().expect("entries").at);
}
