//! The pure state machine: `transition(definition, instance, event, now)`.
//!
//! No I/O and no clock reads: time comes in as a value, and the result says
//! what to persist (the new instance and its log entries) and what to do once
//! it is persisted (effects). The [`Engine`](crate::Engine) is the imperative
//! shell around it.
//!
//! The rules, in short:
//! - Steps run in order. A success folds the reply into the data and moves on.
//! - A business failure compensates at once; a retryable failure or a timeout
//!   is retried per the step's policy, then compensates. An unknown outcome
//!   follows the step's [`OnUnknown`]. A step whose effect may exist (it timed
//!   out, or reported an unknown outcome) is compensated too.
//! - Compensation runs for every started step that has a compensation
//!   (succeeded, uncertain or failed: a late redelivered copy of a failed
//!   step's command must be refused), in reverse order; each compensation is
//!   retried per its own policy and past that the saga ends
//!   [`SagaStatus::Failed`]. A step whose retries ran out is uncertain; a pivot
//!   whose retries ran out stops the saga `Failed` for an operator.
//! - After the pivot succeeded nothing is compensated: a failure there ends
//!   the saga `Failed` for an operator.
//! - Replies for another step, direction or a superseded attempt are logged
//!   and ignored. A success for the current step is accepted from any
//!   attempt, because participants answer every attempt of a command from
//!   the same idempotent record.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::clock;
use crate::definition::{Action, OnUnknown, SagaDefinition, StepKind};
use crate::error::{StepError, StepErrorKind};
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::message::CommandMessage;
use crate::state::{Cursor, LogEntry, LogEvent, SagaInstance, SagaStatus, StepStatus, Waiting};

/// Something that happened to a saga.
#[derive(Clone, Debug, PartialEq)]
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
    /// scheduled retries and the deadline. A no-op when not yet due.
    WakeUp,
    /// Send the in-flight command again now (after a lost message, or on an
    /// operator's request). Participants deduplicate.
    Resume,
    /// An operator retries a `Failed` saga from the step where it stopped.
    Retry,
    /// An operator cancels a running saga that has not passed its pivot.
    Cancel {
        /// Why, kept as the saga's error.
        reason: String,
    },
}

/// Work to do once the transition is persisted.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send this command to its participant.
    SendCommand(Box<CommandMessage>),
    /// Run a local step function on this data and feed its result back as a reply.
    RunLocal {
        /// The step's index.
        step: usize,
        /// Action or compensation.
        direction: Direction,
        /// The attempt.
        attempt: u32,
        /// A copy of the saga data to run on.
        data: Value,
    },
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
        Event::WakeUp => m.on_wake(),
        Event::Resume => m.on_resume(),
        Event::Retry => m.on_operator_retry(),
        Event::Cancel { reason } => m.on_cancel(reason),
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

struct Machine<'a> {
    def: &'a SagaDefinition,
    s: SagaInstance,
    logs: Vec<LogEntry>,
    effects: Vec<Effect>,
    now: DateTime<Utc>,
}

impl<'a> Machine<'a> {
    fn new(def: &'a SagaDefinition, s: SagaInstance, now: DateTime<Utc>) -> Self {
        Self {
            def,
            s,
            logs: Vec::new(),
            effects: Vec::new(),
            now,
        }
    }

    fn finish(mut self) -> Transition {
        if !self.logs.is_empty() || !self.effects.is_empty() {
            self.s.version += 1;
            self.s.updated_at = self.now;
        }
        Transition {
            instance: self.s,
            logs: self.logs,
            effects: self.effects,
        }
    }

    fn log(&mut self, event: LogEvent, step: Option<usize>, attempt: Option<u32>, payload: Value) {
        self.logs.push(LogEntry {
            saga_id: self.s.id,
            seq: self.s.log_seq,
            event,
            step: step.map(|i| self.def.steps[i].name.clone()),
            attempt,
            payload,
            at: self.now,
        });
        self.s.log_seq += 1;
    }

    fn seed(&self, step: usize) -> u64 {
        let bytes = self.s.id.as_uuid().as_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..16]);
        u64::from_le_bytes(low) ^ (step as u64)
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
        self.s.cursor = Some(Cursor {
            step,
            direction: Direction::Invoke,
            attempt: 1,
            waiting: Waiting::Reply,
            uncertain: false,
        });
        self.dispatch();
    }

    /// Sends the cursor's command (or runs its local function) and arms the timeout.
    fn dispatch(&mut self) {
        let Some(mut c) = self.s.cursor else { return };
        c.waiting = Waiting::Reply;
        self.s.cursor = Some(c);
        let step = &self.def.steps[c.step];
        let timeout = step.timeout.unwrap_or(self.def.default_timeout);
        self.wake_at(clock::add(self.now, timeout), c.step);
        let action = match c.direction {
            Direction::Invoke => Some(&step.action),
            Direction::Compensate => step.compensation.as_ref(),
        };
        let event = match c.direction {
            Direction::Invoke => LogEvent::StepDispatched,
            Direction::Compensate => LogEvent::CompensationDispatched,
        };
        match action {
            Some(Action::Remote {
                endpoint,
                command,
                payload,
            }) => match payload(&self.s.data) {
                Ok(body) => {
                    self.log(
                        event,
                        Some(c.step),
                        Some(c.attempt),
                        json!({ "endpoint": endpoint, "command": command, "payload": body }),
                    );
                    self.effects
                        .push(Effect::SendCommand(Box::new(CommandMessage {
                            message_id: format!(
                                "{}:{}:{}:{}",
                                self.s.id, step.name, c.direction, c.attempt
                            ),
                            idempotency_key: IdempotencyKey::new(
                                self.s.id,
                                &step.name,
                                c.direction,
                            ),
                            saga_id: self.s.id,
                            saga_type: self.s.saga_type.clone(),
                            step: u32::try_from(c.step).unwrap_or(u32::MAX),
                            step_name: step.name.clone(),
                            direction: c.direction,
                            attempt: c.attempt,
                            endpoint: endpoint.clone(),
                            command: command.clone(),
                            payload: body,
                            reply_to: None,
                            headers: Default::default(),
                        })));
                }
                Err(e) => {
                    let error =
                        StepError::business(format!("could not build command `{command}`: {e}"));
                    self.on_failure(c, error);
                }
            },
            Some(Action::Local { .. }) => {
                self.log(
                    event,
                    Some(c.step),
                    Some(c.attempt),
                    json!({ "local": true }),
                );
                self.effects.push(Effect::RunLocal {
                    step: c.step,
                    direction: c.direction,
                    attempt: c.attempt,
                    data: self.s.data.clone(),
                });
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
        if c.direction == Direction::Compensate {
            self.log(
                LogEvent::CompensationFailed,
                Some(c.step),
                Some(c.attempt),
                json!(error),
            );
            self.retry_compensation_or_fail(c, &error.message);
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
                self.s.steps[c.step] = StepStatus::Failed;
                self.fail_forward(format!(
                    "step `{}` failed: {}",
                    self.def.steps[c.step].name, error.message
                ));
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
        let unlimited = step.kind == StepKind::Retriable || self.committed();
        if unlimited || step.retry.allows(c.attempt + 1) {
            let delay = step.retry.delay_after(c.attempt, self.seed(c.step));
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
    /// makes the participant refuse such a late copy), and a pivot, which
    /// cannot be compensated, stops the saga for an operator.
    fn give_up(&mut self, c: Cursor, reason: &str) {
        let step = &self.def.steps[c.step];
        let reason = format!(
            "step `{}` failed after {} attempt(s): {reason}",
            step.name, c.attempt
        );
        self.s.steps[c.step] = StepStatus::Uncertain;
        if step.kind == StepKind::Pivot {
            self.saga_failed(format!(
                "{reason}; the pivot may still take effect and cannot be compensated (give it an unlimited retry policy)"
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
        self.s.status = SagaStatus::Compensating;
        self.log(
            LogEvent::CompensationStarted,
            None,
            None,
            json!({ "reason": reason }),
        );
        self.s.error = Some(reason);
        let from = self.s.cursor.map_or(self.def.steps.len(), |c| c.step + 1);
        self.compensate_below(from);
    }

    /// Starts compensating the highest step below `end` that needs it, or finishes.
    fn compensate_below(&mut self, end: usize) {
        let next = (0..end).rev().find(|&i| {
            self.s.steps[i].needs_compensation() && self.def.steps[i].compensation.is_some()
        });
        match next {
            Some(step) => {
                self.s.steps[step] = StepStatus::Compensating;
                self.s.cursor = Some(Cursor {
                    step,
                    direction: Direction::Compensate,
                    attempt: 1,
                    waiting: Waiting::Reply,
                    uncertain: false,
                });
                self.dispatch();
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
        self.compensate_below(step);
    }

    fn retry_compensation_or_fail(&mut self, mut c: Cursor, reason: &str) {
        let step = &self.def.steps[c.step];
        if step.compensation_retry.allows(c.attempt + 1) {
            let delay = step
                .compensation_retry
                .delay_after(c.attempt, self.seed(c.step));
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
                step.name, c.attempt
            ));
        }
    }

    // ---- events ----------------------------------------------------------

    fn ignore(
        &mut self,
        step: Option<usize>,
        attempt: u32,
        why: &str,
        outcome: &Result<Value, StepError>,
    ) {
        let ok = outcome.is_ok();
        self.log(
            LogEvent::ReplyIgnored,
            step.filter(|&i| i < self.def.steps.len()),
            Some(attempt),
            json!({ "reason": why, "success": ok }),
        );
    }

    fn on_reply(
        &mut self,
        step: usize,
        direction: Direction,
        attempt: u32,
        outcome: Result<Value, StepError>,
    ) {
        let Some(c) = self.s.cursor else {
            return self.ignore(Some(step), attempt, "the saga has finished", &outcome);
        };
        if step != c.step || direction != c.direction {
            return self.ignore(Some(step), attempt, "not the step in progress", &outcome);
        }
        if attempt == 0 || attempt > c.attempt {
            return self.ignore(Some(step), attempt, "unknown attempt", &outcome);
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
                    self.ignore(
                        Some(step),
                        attempt,
                        "failure of a superseded attempt",
                        &Err(error),
                    );
                }
            }
        }
    }

    fn on_wake(&mut self) {
        let due = self.s.next_wake_at.is_some_and(|at| at <= self.now);
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
            self.abandon_current(c);
            self.begin_compensation("the saga's deadline passed".to_owned());
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
            Waiting::Reply => {
                let step = &self.def.steps[c.step];
                let timeout = step.timeout.unwrap_or(self.def.default_timeout);
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
            let in_flight = c.waiting == Waiting::Reply || c.uncertain;
            self.s.steps[c.step] = if in_flight {
                StepStatus::Uncertain
            } else {
                StepStatus::Failed
            };
        }
    }

    fn on_resume(&mut self) {
        let Some(mut c) = self.s.cursor else { return };
        if self.s.status.is_terminal() {
            return;
        }
        self.log(
            LogEvent::Resumed,
            Some(c.step),
            Some(c.attempt),
            Value::Null,
        );
        if c.waiting == Waiting::Retry {
            c.attempt += 1;
            self.s.cursor = Some(c);
        }
        self.dispatch();
    }

    fn on_operator_retry(&mut self) {
        let Some(mut c) = self.s.cursor else { return };
        if self.s.status != SagaStatus::Failed {
            return;
        }
        self.log(
            LogEvent::OperatorRetry,
            Some(c.step),
            Some(c.attempt),
            Value::Null,
        );
        self.s.status = match c.direction {
            Direction::Invoke => SagaStatus::Running,
            Direction::Compensate => SagaStatus::Compensating,
        };
        self.s.steps[c.step] = match c.direction {
            Direction::Invoke => StepStatus::Running,
            Direction::Compensate => StepStatus::Compensating,
        };
        c.attempt = 1;
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
        self.abandon_current(c);
        self.begin_compensation(format!("cancelled: {reason}"));
    }
}

#[cfg(test)]
mod tests;
