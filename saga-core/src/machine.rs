//! The pure state machine: `transition(definition, instance, event, now)`.
//!
//! No I/O and no clock reads: time comes in as a value, and the result says
//! what to persist (the new instance and its log entries) and what to do once
//! it is persisted (effects). The [`Engine`](crate::Engine) is the imperative
//! shell around it.
//!
//! The rules, in short:
//! - Steps run in order. A success folds the reply into the data and moves on.
//! - A business failure compensates at once (or, after the pivot, stops the
//!   saga `Failed` for an operator). A retryable failure or a timeout is
//!   retried per the step's policy, then compensates. An unknown outcome
//!   follows the step's [`OnUnknown`]. A step whose effect may exist (it timed
//!   out, or reported an unknown outcome) is compensated too.
//! - The pivot, and the retriable steps after it, retry until they succeed or
//!   fail for a business reason: they cannot be compensated, so they never
//!   give up.
//! - Compensation runs for every started step that has a compensation
//!   (succeeded, uncertain or failed: a late redelivered copy of a failed
//!   step's command must be refused), in reverse order. A compensation that
//!   fails transiently or times out is retried per its own policy and past
//!   that the saga ends [`SagaStatus::Failed`]; one the participant refuses
//!   (a business failure, recorded under its key) ends `Failed` at once.
//! - Compensation never starts while a local step's attempt may still be
//!   running: it waits until that attempt's timeout has passed.
//! - Replies for another step, direction or an attempt before the current key
//!   are logged and ignored; replies to a finished saga change nothing. A
//!   success for the current step is accepted from any attempt of its current
//!   key, because participants answer every attempt of a command from the same
//!   idempotent record.
//! - A command the transport could not take ([`Event::SendFailed`]) is sent
//!   again after [`SEND_RETRY_DELAY`] without consuming an attempt; its
//!   timeout starts when it is sent.
//! - An operator's retry of a `Failed` saga sends a new attempt (a new message
//!   id) with a fresh attempt budget, under a new idempotency key only when
//!   the participant refused the old one (so a recorded refusal is not simply
//!   answered again, while a command whose outcome is unknown stays
//!   deduplicated).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::clock;
use crate::definition::{Action, OnUnknown, SagaDefinition, StepKind};
use crate::error::{StepError, StepErrorKind};
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::message::CommandMessage;
use crate::state::{Cursor, LogEntry, LogEvent, SagaInstance, SagaStatus, StepStatus, Waiting};

/// How long after a local step's timeout its saga is woken. The engine drops a
/// local attempt's future when the timeout passes; the grace keeps the next
/// attempt (or the compensation) from starting before that, even on another
/// engine whose clock is up to this much ahead.
pub const LOCAL_STEP_GRACE: Duration = Duration::from_secs(1);

/// How long after a failed send the command is sent again.
pub const SEND_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Something that happened to a saga.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A participant's reply (or a local step's result) for a step's action or
    /// compensation. Covers step succeeded/failed and compensation
    /// succeeded/failed.
    Reply {
        /// The step's index.
        step: usize,
        /// Action or compensation.
        direction: Direction,
        /// The attempt answered.
        attempt: u32,
        /// Success with the reply body, or the classified error.
        outcome: Result<Value, StepError>,
    },
    /// The saga's `next_wake_at` may have been reached: fires timeouts,
    /// scheduled retries, pending sends and the deadline. A no-op when not yet due.
    WakeUp,
    /// An operator asks for the in-flight command to be sent again now, or for
    /// a scheduled retry to happen now. Participants deduplicate; no attempt is
    /// added beyond what the retry policy allows, a local step that may still
    /// be running is not run again, and a pending send (or a compensation
    /// waiting for a local attempt to end) is left to its time.
    Resume,
    /// An operator retries a `Failed` saga from the step where it stopped.
    Retry,
    /// An operator cancels a running saga that has not passed its pivot.
    Cancel {
        /// Why, kept as the saga's error.
        reason: String,
    },
    /// The transport did not take the command of this attempt. It is sent
    /// again after [`SEND_RETRY_DELAY`], and the attempt is not counted.
    SendFailed {
        /// The step's index.
        step: usize,
        /// Action or compensation.
        direction: Direction,
        /// The attempt whose command was not sent.
        attempt: u32,
        /// The transport's error.
        error: String,
    },
}

/// A local step's attempt for the engine to run.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRun {
    /// The step's index.
    pub step: usize,
    /// Action or compensation.
    pub direction: Direction,
    /// The attempt.
    pub attempt: u32,
    /// The key the function may deduplicate its effects on (stable across attempts).
    pub idempotency_key: IdempotencyKey,
    /// A copy of the saga data to run on.
    pub data: Value,
    /// When the attempt times out: the engine drops it then.
    pub until: DateTime<Utc>,
}

/// Work to do once the transition is persisted.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Effect {
    /// Send this command to its participant.
    SendCommand(Box<CommandMessage>),
    /// Run a local step function and feed its result back as a reply.
    RunLocal(Box<LocalRun>),
    /// The saga reached a terminal status: wake whoever awaits it.
    Finished(SagaStatus),
}

/// The result of applying an event: what to persist, then what to do.
#[must_use = "a transition must be persisted and its effects performed"]
#[derive(Clone, Debug)]
pub struct Transition {
    /// The new state (its `version` is one above the old one unless nothing changed).
    pub instance: SagaInstance,
    /// Log entries to append in the same store transaction.
    pub logs: Vec<LogEntry>,
    /// Effects to perform after the save committed.
    pub effects: Vec<Effect>,
}

impl Transition {
    /// Whether the event changed nothing (nothing to persist or do).
    #[must_use]
    pub fn is_noop(&self) -> bool {
        self.logs.is_empty() && self.effects.is_empty()
    }
}

/// Creates a new instance of `definition` and dispatches its first step.
pub fn start(
    definition: &SagaDefinition,
    id: SagaId,
    data: Value,
    idempotency_key: Option<String>,
    now: DateTime<Utc>,
) -> Transition {
    let instance = SagaInstance {
        id,
        saga_type: definition.name.clone(),
        definition_version: definition.version,
        status: SagaStatus::Running,
        steps: vec![StepStatus::Pending; definition.steps.len()],
        cursor: None,
        data,
        error: None,
        idempotency_key,
        version: 0,
        next_wake_at: None,
        deadline_at: definition.deadline.map(|d| clock::add(now, d)),
        log_seq: 0,
        created_at: now,
        updated_at: now,
    };
    let mut m = Machine::new(definition, instance, now);
    m.log(LogEvent::SagaStarted, None, None, m.s.data.clone());
    if definition.steps.is_empty() {
        m.complete();
    } else {
        m.start_step(0);
    }
    m.finish()
}

/// Applies `event` to `instance` at time `now`.
pub fn transition(
    definition: &SagaDefinition,
    instance: &SagaInstance,
    event: Event,
    now: DateTime<Utc>,
) -> Transition {
    let mut m = Machine::new(definition, instance.clone(), now);
    match event {
        Event::Reply {
            step,
            direction,
            attempt,
            outcome,
        } => m.on_reply(step, direction, attempt, outcome),
        Event::WakeUp => m.on_wake(false),
        Event::Resume => m.on_resume(),
        Event::Retry => m.on_operator_retry(),
        Event::Cancel { reason } => m.on_cancel(reason),
        Event::SendFailed {
            step,
            direction,
            attempt,
            error,
        } => m.on_send_failed(step, direction, attempt, &error),
    }
    m.finish()
}

/// Whether an operator may cancel the saga now: it is running and has not
/// reached its pivot.
#[must_use]
pub fn can_cancel(definition: &SagaDefinition, instance: &SagaInstance) -> bool {
    instance.status == SagaStatus::Running
        && instance
            .cursor
            .is_some_and(|c| definition.pivot.is_none_or(|p| c.step < p))
}

/// The command message of the cursor's attempt, or `None` when the cursor's
/// action is local (or absent). Also the engine's way to send an in-flight
/// command again from what the store holds.
///
/// # Errors
/// When the command's payload cannot be built from the saga data.
pub fn command_for(
    definition: &SagaDefinition,
    instance: &SagaInstance,
    cursor: Cursor,
) -> Result<Option<CommandMessage>, serde_json::Error> {
    let step = &definition.steps[cursor.step];
    let action = match cursor.direction {
        Direction::Invoke => Some(&step.action),
        Direction::Compensate => step.compensation.as_ref(),
    };
    let Some(Action::Remote {
        endpoint,
        command,
        payload,
    }) = action
    else {
        return Ok(None);
    };
    Ok(Some(CommandMessage {
        message_id: format!(
            "{}:{}:{}:{}",
            instance.id, step.name, cursor.direction, cursor.attempt
        ),
        idempotency_key: key_of(instance.id, &step.name, cursor),
        saga_id: instance.id,
        saga_type: instance.saga_type.clone(),
        step: u32::try_from(cursor.step).unwrap_or(u32::MAX),
        step_name: step.name.clone(),
        direction: cursor.direction,
        attempt: cursor.attempt,
        endpoint: endpoint.clone(),
        command: command.clone(),
        payload: payload(&instance.data)?,
        reply_to: None,
        headers: Default::default(),
    }))
}

fn key_of(id: SagaId, step: &str, cursor: Cursor) -> IdempotencyKey {
    IdempotencyKey::starting_at(id, step, cursor.direction, cursor.key_from)
}

struct Machine<'a> {
    def: &'a SagaDefinition,
    s: SagaInstance,
    logs: Vec<LogEntry>,
    effects: Vec<Effect>,
    now: DateTime<Utc>,
    /// The time of the last log entry written, by this transition or before.
    last_at: DateTime<Utc>,
}

impl<'a> Machine<'a> {
    fn new(def: &'a SagaDefinition, s: SagaInstance, now: DateTime<Utc>) -> Self {
        let last_at = s.updated_at;
        Self {
            def,
            s,
            logs: Vec::new(),
            effects: Vec::new(),
            now,
            last_at,
        }
    }

    fn finish(mut self) -> Transition {
        if !self.logs.is_empty() || !self.effects.is_empty() {
            self.s.version += 1;
            self.s.updated_at = self.now.max(self.last_at);
        }
        Transition {
            instance: self.s,
            logs: self.logs,
            effects: self.effects,
        }
    }

    fn log(&mut self, event: LogEvent, step: Option<usize>, attempt: Option<u32>, payload: Value) {
        let at = self.next_log_time();
        self.logs.push(LogEntry {
            saga_id: self.s.id,
            seq: self.s.log_seq,
            event,
            step: step.map(|i| self.def.steps[i].name.clone()),
            attempt,
            payload,
            at,
        });
        self.s.log_seq += 1;
    }

    /// Every entry gets a time of its own, later than the saga's previous
    /// entry even when this engine's clock is behind the one that wrote it,
    /// so reading the log by time reads it in order (`ORDER BY created_at`),
    /// to the microsecond stores keep.
    fn next_log_time(&mut self) -> DateTime<Utc> {
        let floor = self.last_at + chrono::Duration::microseconds(1);
        self.last_at = self.now.max(floor);
        self.last_at
    }

    fn seed(&self, step: usize) -> u64 {
        let bytes = self.s.id.as_uuid().as_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..16]);
        u64::from_le_bytes(low) ^ (step as u64)
    }

    fn action(&self, c: Cursor) -> Option<&'a Action> {
        let def = self.def;
        let step = &def.steps[c.step];
        match c.direction {
            Direction::Invoke => Some(&step.action),
            Direction::Compensate => step.compensation.as_ref(),
        }
    }

    fn is_local(&self, c: Cursor) -> bool {
        matches!(self.action(c), Some(Action::Local { .. }))
    }

    fn timeout(&self, step: usize) -> Duration {
        self.def.steps[step]
            .timeout
            .unwrap_or(self.def.default_timeout)
    }

    /// Whether the saga passed its pivot: from then on it only goes forward.
    fn committed(&self) -> bool {
        self.def
            .pivot
            .is_some_and(|p| self.s.steps[p] == StepStatus::Succeeded)
    }

    /// Whether the deadline can still stop the saga: running, before the pivot.
    fn deadline_applies(&self, step: usize) -> bool {
        self.s.status == SagaStatus::Running && self.def.pivot.is_none_or(|p| step < p)
    }

    fn wake_at(&mut self, at: DateTime<Utc>, step: usize) {
        let at = match self.s.deadline_at {
            Some(deadline) if self.deadline_applies(step) => at.min(deadline),
            _ => at,
        };
        self.s.next_wake_at = Some(at);
    }

    // ---- forward ---------------------------------------------------------

    fn start_step(&mut self, step: usize) {
        self.s.steps[step] = StepStatus::Running;
        self.s.cursor = Some(Cursor::first(step, Direction::Invoke));
        self.dispatch();
    }

    /// Sends the cursor's command (or runs its local function) and arms the timeout.
    fn dispatch(&mut self) {
        let Some(mut c) = self.s.cursor else { return };
        c.waiting = Waiting::Reply;
        self.s.cursor = Some(c);
        let timeout = self.timeout(c.step);
        let event = match c.direction {
            Direction::Invoke => LogEvent::StepDispatched,
            Direction::Compensate => LogEvent::CompensationDispatched,
        };
        match self.action(c) {
            Some(Action::Remote { .. }) => match command_for(self.def, &self.s, c) {
                Ok(Some(command)) => {
                    self.wake_at(clock::add(self.now, timeout), c.step);
                    self.log(
                        event,
                        Some(c.step),
                        Some(c.attempt),
                        json!({ "endpoint": command.endpoint, "command": command.command, "payload": command.payload }),
                    );
                    self.effects.push(Effect::SendCommand(Box::new(command)));
                }
                // `command_for` builds a command for every remote action.
                Ok(None) => {}
                Err(e) => {
                    let command = self.action(c).map(Action::label).unwrap_or_default();
                    let error =
                        StepError::business(format!("could not build command `{command}`: {e}"));
                    self.on_failure(c, error);
                }
            },
            Some(Action::Local { .. }) => {
                let until = clock::add(self.now, timeout);
                // Not capped by the deadline: nothing may start before this
                // attempt's timeout has passed (see `begin_compensation`).
                self.s.next_wake_at = Some(clock::add(until, LOCAL_STEP_GRACE));
                self.log(
                    event,
                    Some(c.step),
                    Some(c.attempt),
                    json!({ "local": true }),
                );
                self.effects.push(Effect::RunLocal(Box::new(LocalRun {
                    step: c.step,
                    direction: c.direction,
                    attempt: c.attempt,
                    idempotency_key: key_of(self.s.id, &self.def.steps[c.step].name, c),
                    data: self.s.data.clone(),
                    until,
                })));
            }
            // Only reachable through corrupted state: nothing to run, treat as done.
            None => self.on_compensated(c.step),
        }
    }

    fn on_succeeded(&mut self, c: Cursor, output: Value) {
        let step = &self.def.steps[c.step];
        if let Some(fold) = &step.on_output {
            let fold = fold.clone();
            if let Err(e) = fold(&mut self.s.data, output.clone()) {
                let error =
                    StepError::unknown(format!("reply does not match the expected type: {e}"));
                self.on_failure(c, error);
                return;
            }
        }
        self.s.steps[c.step] = StepStatus::Succeeded;
        self.log(
            LogEvent::StepSucceeded,
            Some(c.step),
            Some(c.attempt),
            output,
        );
        if c.step + 1 < self.def.steps.len() {
            self.start_step(c.step + 1);
        } else {
            self.complete();
        }
    }

    fn complete(&mut self) {
        self.s.status = SagaStatus::Completed;
        self.s.cursor = None;
        self.s.next_wake_at = None;
        self.s.error = None;
        self.log(LogEvent::SagaCompleted, None, None, Value::Null);
        self.effects.push(Effect::Finished(SagaStatus::Completed));
    }

    /// A failed attempt (reply or local error) of the cursor's action or compensation.
    fn on_failure(&mut self, mut c: Cursor, error: StepError) {
        let def = self.def;
        let name = &def.steps[c.step].name;
        if c.direction == Direction::Compensate {
            self.log(
                LogEvent::CompensationFailed,
                Some(c.step),
                Some(c.attempt),
                json!(error),
            );
            if error.kind == StepErrorKind::Business {
                // The refusal is recorded under the key: asking again with the
                // same key would only get it again.
                c.refused = true;
                self.s.cursor = Some(c);
                self.saga_failed(format!(
                    "compensation of step `{name}` was refused: {}; fix the cause, then retry the saga",
                    error.message
                ));
            } else {
                self.retry_compensation_or_fail(c, &error.message);
            }
            return;
        }
        self.log(
            LogEvent::StepFailed,
            Some(c.step),
            Some(c.attempt),
            json!(error),
        );
        match error.kind {
            StepErrorKind::Business => {
                c.refused = true;
                self.s.cursor = Some(c);
                self.s.steps[c.step] = StepStatus::Failed;
                self.fail_forward(format!("step `{name}` failed: {}", error.message));
            }
            StepErrorKind::Retryable => self.retry_or_give_up(c, &error.message),
            StepErrorKind::Unknown => {
                c.uncertain = true;
                self.s.cursor = Some(c);
                match self.def.steps[c.step].on_unknown {
                    OnUnknown::Retry => self.retry_or_give_up(c, &error.message),
                    OnUnknown::Compensate => self.give_up(c, &error.message),
                }
            }
        }
    }

    fn retry_or_give_up(&mut self, mut c: Cursor, reason: &str) {
        let step = &self.def.steps[c.step];
        // The pivot and the steps after it cannot be compensated: they retry
        // until they succeed or fail for a business reason.
        let unlimited = step.kind != StepKind::Compensatable || self.committed();
        if unlimited || step.retry.allows(c.nth() + 1) {
            let delay = step.retry.delay_after(c.nth(), self.seed(c.step));
            c.waiting = Waiting::Retry;
            self.s.cursor = Some(c);
            let at = clock::add(self.now, delay);
            self.wake_at(at, c.step);
            self.log(
                LogEvent::RetryScheduled,
                Some(c.step),
                Some(c.attempt + 1),
                json!({ "at": at, "reason": reason }),
            );
        } else {
            self.give_up(c, reason);
        }
    }

    /// Stops retrying the cursor's forward step.
    ///
    /// Its outcome is uncertain even when every attempt reported a retryable
    /// failure: a redelivered copy of one of its commands may still run and
    /// succeed. So it is compensated like a succeeded step (the compensation
    /// makes the participant refuse such a late copy). A pivot never gets
    /// here through retries (it retries without limit); should it, it stops
    /// the saga for an operator, because it cannot be compensated.
    fn give_up(&mut self, c: Cursor, reason: &str) {
        let step = &self.def.steps[c.step];
        let reason = format!(
            "step `{}` failed after {} attempt(s): {reason}",
            step.name,
            c.nth()
        );
        self.s.steps[c.step] = StepStatus::Uncertain;
        if step.kind == StepKind::Pivot {
            self.saga_failed(format!(
                "{reason}; the pivot may still take effect and cannot be compensated"
            ));
            return;
        }
        self.fail_forward(reason);
    }

    fn fail_forward(&mut self, reason: String) {
        if self.committed() {
            self.saga_failed(format!(
                "{reason} (after the pivot, nothing is compensated)"
            ));
        } else {
            self.begin_compensation(reason);
        }
    }

    fn saga_failed(&mut self, reason: String) {
        self.s.status = SagaStatus::Failed;
        self.s.next_wake_at = None;
        self.log(
            LogEvent::SagaFailed,
            None,
            None,
            json!({ "reason": reason }),
        );
        self.s.error = Some(reason);
        self.effects.push(Effect::Finished(SagaStatus::Failed));
    }

    // ---- compensation ----------------------------------------------------

    fn begin_compensation(&mut self, reason: String) {
        self.begin_compensation_after(reason, None);
    }

    /// When the cursor's local attempt may still be running (the saga is
    /// abandoning it: a cancel, a deadline), the time it is surely over: its
    /// wake time, past its timeout, on this engine or another.
    fn local_attempt_end(&self) -> Option<DateTime<Utc>> {
        self.s
            .cursor
            .filter(|c| {
                c.direction == Direction::Invoke && c.waiting == Waiting::Reply && self.is_local(*c)
            })
            .and(self.s.next_wake_at)
            .filter(|at| *at > self.now)
    }

    fn begin_compensation_after(&mut self, reason: String, not_before: Option<DateTime<Utc>>) {
        self.s.status = SagaStatus::Compensating;
        self.log(
            LogEvent::CompensationStarted,
            None,
            None,
            json!({ "reason": reason, "not_before": not_before }),
        );
        self.s.error = Some(reason);
        let from = self.s.cursor.map_or(self.def.steps.len(), |c| c.step + 1);
        self.compensate_below(from, not_before);
    }

    /// Starts compensating the highest step below `end` that needs it (not
    /// before `not_before`), or finishes.
    fn compensate_below(&mut self, end: usize, not_before: Option<DateTime<Utc>>) {
        let next = (0..end).rev().find(|&i| {
            self.s.steps[i].needs_compensation() && self.def.steps[i].compensation.is_some()
        });
        match next {
            Some(step) => {
                self.s.steps[step] = StepStatus::Compensating;
                let mut c = Cursor::first(step, Direction::Compensate);
                if let Some(at) = not_before {
                    c.waiting = Waiting::Send;
                    self.s.cursor = Some(c);
                    self.s.next_wake_at = Some(at);
                } else {
                    self.s.cursor = Some(c);
                    self.dispatch();
                }
            }
            None => {
                self.s.status = SagaStatus::Compensated;
                self.s.cursor = None;
                self.s.next_wake_at = None;
                self.log(LogEvent::SagaCompensated, None, None, Value::Null);
                self.effects.push(Effect::Finished(SagaStatus::Compensated));
            }
        }
    }

    fn on_compensated(&mut self, step: usize) {
        self.s.steps[step] = StepStatus::Compensated;
        self.compensate_below(step, None);
    }

    fn retry_compensation_or_fail(&mut self, mut c: Cursor, reason: &str) {
        let step = &self.def.steps[c.step];
        if step.compensation_retry.allows(c.nth() + 1) {
            let delay = step
                .compensation_retry
                .delay_after(c.nth(), self.seed(c.step));
            c.waiting = Waiting::Retry;
            self.s.cursor = Some(c);
            let at = clock::add(self.now, delay);
            self.s.next_wake_at = Some(at);
            self.log(
                LogEvent::RetryScheduled,
                Some(c.step),
                Some(c.attempt + 1),
                json!({ "at": at, "reason": reason, "compensation": true }),
            );
        } else {
            self.saga_failed(format!(
                "compensation of step `{}` failed after {} attempt(s): {reason}",
                step.name,
                c.nth()
            ));
        }
    }

    // ---- events ----------------------------------------------------------

    /// Records an ignored reply while the saga runs; a finished saga changes
    /// nothing (a duplicate reply must not append a row every time).
    fn ignore(&mut self, step: usize, attempt: u32, why: &str, success: bool) {
        if self.s.status.is_terminal() {
            return;
        }
        self.log(
            LogEvent::ReplyIgnored,
            (step < self.def.steps.len()).then_some(step),
            Some(attempt),
            json!({ "reason": why, "success": success }),
        );
    }

    fn on_reply(
        &mut self,
        step: usize,
        direction: Direction,
        attempt: u32,
        outcome: Result<Value, StepError>,
    ) {
        let Some(c) = self.s.cursor else { return };
        let success = outcome.is_ok();
        if step != c.step || direction != c.direction {
            return self.ignore(step, attempt, "not the step in progress", success);
        }
        if attempt == 0 || attempt > c.attempt {
            return self.ignore(step, attempt, "unknown attempt", success);
        }
        if attempt < c.key_from {
            return self.ignore(step, attempt, "an attempt before the current key", success);
        }
        match outcome {
            Ok(output) => {
                if self.s.status == SagaStatus::Failed {
                    // A late success of what an operator would retry: take it.
                    self.s.status = match direction {
                        Direction::Invoke => SagaStatus::Running,
                        Direction::Compensate => SagaStatus::Compensating,
                    };
                }
                match direction {
                    Direction::Invoke => self.on_succeeded(c, output),
                    Direction::Compensate => {
                        self.log(
                            LogEvent::CompensationSucceeded,
                            Some(step),
                            Some(attempt),
                            output,
                        );
                        self.on_compensated(step);
                    }
                }
            }
            Err(error) => {
                let current = attempt == c.attempt
                    && c.waiting == Waiting::Reply
                    && !self.s.status.is_terminal();
                if current {
                    self.on_failure(c, error);
                } else {
                    self.ignore(step, attempt, "failure of a superseded attempt", false);
                }
            }
        }
    }

    /// Acts on `next_wake_at` when it is due (or at once when `now_anyway`).
    fn on_wake(&mut self, now_anyway: bool) {
        let due = now_anyway || self.s.next_wake_at.is_some_and(|at| at <= self.now);
        let Some(mut c) = self.s.cursor else { return };
        if !due || self.s.status.is_terminal() {
            return;
        }
        if self.s.deadline_at.is_some_and(|d| d <= self.now) && self.deadline_applies(c.step) {
            self.log(
                LogEvent::DeadlineExceeded,
                Some(c.step),
                Some(c.attempt),
                Value::Null,
            );
            let not_before = self.local_attempt_end();
            self.abandon_current(c);
            self.begin_compensation_after("the saga's deadline passed".to_owned(), not_before);
            return;
        }
        match c.waiting {
            Waiting::Retry => {
                c.attempt += 1;
                self.s.cursor = Some(c);
                if c.direction == Direction::Invoke {
                    self.s.steps[c.step] = StepStatus::Running;
                }
                self.dispatch();
            }
            Waiting::Send => self.dispatch(),
            Waiting::Reply => {
                let timeout = self.timeout(c.step);
                self.log(
                    LogEvent::StepTimedOut,
                    Some(c.step),
                    Some(c.attempt),
                    json!({ "timeout_ms": timeout.as_millis() as u64, "direction": c.direction }),
                );
                let reason = format!("no reply within {} ms", timeout.as_millis());
                match c.direction {
                    Direction::Invoke => {
                        c.uncertain = true;
                        self.s.cursor = Some(c);
                        self.retry_or_give_up(c, &reason);
                    }
                    Direction::Compensate => self.retry_compensation_or_fail(c, &reason),
                }
            }
        }
    }

    /// Marks the in-flight forward step as failed or uncertain before compensating.
    fn abandon_current(&mut self, c: Cursor) {
        if c.direction == Direction::Invoke {
            // A command whose send failed may still have reached the broker.
            let in_flight = c.waiting != Waiting::Retry || c.uncertain;
            self.s.steps[c.step] = if in_flight {
                StepStatus::Uncertain
            } else {
                StepStatus::Failed
            };
        }
    }

    fn on_resume(&mut self) {
        let Some(c) = self.s.cursor else { return };
        if self.s.status.is_terminal() {
            return;
        }
        match c.waiting {
            // The attempt may still be running: running it again would overlap.
            Waiting::Reply if self.is_local(c) => {}
            Waiting::Reply => {
                // The same attempt again; its timeout is not extended.
                if let Ok(Some(command)) = command_for(self.def, &self.s, c) {
                    self.log(
                        LogEvent::Resumed,
                        Some(c.step),
                        Some(c.attempt),
                        Value::Null,
                    );
                    self.effects.push(Effect::SendCommand(Box::new(command)));
                }
            }
            Waiting::Retry => {
                self.log(
                    LogEvent::Resumed,
                    Some(c.step),
                    Some(c.attempt),
                    Value::Null,
                );
                self.on_wake(true);
            }
            // A pending send is the poller's within a second; and a
            // compensation waiting for a local attempt to be surely over must
            // not start early.
            Waiting::Send => {}
        }
    }

    fn on_send_failed(&mut self, step: usize, direction: Direction, attempt: u32, error: &str) {
        let Some(mut c) = self.s.cursor else { return };
        let same = (c.step, c.direction, c.attempt) == (step, direction, attempt);
        if !same || c.waiting != Waiting::Reply || self.s.status.is_terminal() {
            return;
        }
        c.waiting = Waiting::Send;
        self.s.cursor = Some(c);
        let at = clock::add(self.now, SEND_RETRY_DELAY);
        self.wake_at(at, c.step);
        self.log(
            LogEvent::SendFailed,
            Some(c.step),
            Some(c.attempt),
            json!({ "error": error, "retry_at": at }),
        );
    }

    fn on_operator_retry(&mut self) {
        let Some(mut c) = self.s.cursor else { return };
        if self.s.status != SagaStatus::Failed {
            return;
        }
        c.attempt += 1;
        c.round_from = c.attempt;
        let fresh_key = c.refused;
        if fresh_key {
            // Only forward steps at or after the pivot, never compensated, get
            // here with direction Invoke: a compensation's tombstone always
            // names the first invoke key.
            c.key_from = c.attempt;
            c.refused = false;
        }
        self.log(
            LogEvent::OperatorRetry,
            Some(c.step),
            Some(c.attempt),
            json!({ "new_key": fresh_key }),
        );
        self.s.status = match c.direction {
            Direction::Invoke => SagaStatus::Running,
            Direction::Compensate => SagaStatus::Compensating,
        };
        self.s.steps[c.step] = match c.direction {
            Direction::Invoke => StepStatus::Running,
            Direction::Compensate => StepStatus::Compensating,
        };
        self.s.cursor = Some(c);
        self.dispatch();
    }

    fn on_cancel(&mut self, reason: String) {
        if !can_cancel(self.def, &self.s) {
            return;
        }
        let Some(c) = self.s.cursor else { return };
        self.log(
            LogEvent::OperatorCancel,
            Some(c.step),
            Some(c.attempt),
            json!({ "reason": reason }),
        );
        let not_before = self.local_attempt_end();
        self.abandon_current(c);
        self.begin_compensation_after(format!("cancelled: {reason}"), not_before);
    }
}

#[cfg(test)]
mod tests;
