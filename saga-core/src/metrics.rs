//! Metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The engine, participants and transports record these whatever the
//! application does; they cost next to nothing until the application installs
//! a recorder (for example `metrics-exporter-prometheus`, as the checkout app
//! does for its `GET /metrics`). Call [`describe`] once after installing it so
//! the exporter prints help text and units.
//!
//! | name | type | labels | recorded by | meaning |
//! |---|---|---|---|---|
//! | `saga_started_total` | counter | `saga` | engine | sagas created (a repeated idempotency key counts once) |
//! | `saga_finished_total` | counter | `saga`, `status` | engine | sagas that reached `completed`, `compensated` or `failed` |
//! | `saga_step_duration_seconds` | histogram | `saga`, `step`, `outcome` | engine | from dispatching an attempt to its result; `outcome` is `succeeded`, `failed`, `timed_out`, `compensated` or `compensation_failed` |
//! | `saga_step_retries_total` | counter | `saga`, `step` | engine | attempts scheduled again after a failure or timeout |
//! | `saga_running` | gauge | `saga`, `status` | engine census | unfinished sagas (`running`, `compensating`) in the store |
//! | `saga_oldest_running_seconds` | gauge | `saga` | engine census | age of the oldest unfinished saga |
//! | `saga_stuck` | gauge | `saga` | engine census | unfinished sagas that count as stuck ([`Engine::stuck`](crate::Engine::stuck)) |
//! | `saga_commands_handled_total` | counter | `command`, `outcome` | participant | commands answered; `outcome` is `succeeded`, `refused` (a business failure), `failed` (a technical failure: the saga retries) or `duplicate` (answered from the inbox) |
//! | `saga_command_duration_seconds` | histogram | `command` | participant | time in the handler (inbox included) |
//! | `saga_messages_dead_lettered_total` | counter | `queue` | transport | messages moved to a dead-letter queue |
//!
//! The census gauges come from the store, every
//! [`census_interval`](crate::EngineBuilder::census_interval): each engine of
//! an application reports the same figures, so aggregate them with `max`, not
//! `sum`. The counters and histograms are per process: `sum` them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::state::{LogEntry, LogEvent, SagaStatus};

/// Counter: sagas created, by `saga`.
pub const SAGA_STARTED_TOTAL: &str = "saga_started_total";
/// Counter: sagas finished, by `saga` and `status`.
pub const SAGA_FINISHED_TOTAL: &str = "saga_finished_total";
/// Histogram: seconds from dispatching a step attempt to its result, by `saga`, `step`, `outcome`.
pub const SAGA_STEP_DURATION_SECONDS: &str = "saga_step_duration_seconds";
/// Counter: step attempts scheduled again, by `saga` and `step`.
pub const SAGA_STEP_RETRIES_TOTAL: &str = "saga_step_retries_total";
/// Gauge: unfinished sagas in the store, by `saga` and `status`.
pub const SAGA_RUNNING: &str = "saga_running";
/// Gauge: age in seconds of the oldest unfinished saga, by `saga`.
pub const SAGA_OLDEST_RUNNING_SECONDS: &str = "saga_oldest_running_seconds";
/// Gauge: unfinished sagas that count as stuck, by `saga`.
pub const SAGA_STUCK: &str = "saga_stuck";
/// Counter: commands a participant answered, by `command` and `outcome`.
pub const SAGA_COMMANDS_HANDLED_TOTAL: &str = "saga_commands_handled_total";
/// Histogram: seconds a participant spent on a command, by `command`.
pub const SAGA_COMMAND_DURATION_SECONDS: &str = "saga_command_duration_seconds";
/// Counter: messages moved to a dead-letter queue, by `queue`.
pub const SAGA_MESSAGES_DEAD_LETTERED_TOTAL: &str = "saga_messages_dead_lettered_total";

/// Registers the help text and unit of every metric above with the installed
/// recorder. Call it once, after installing the recorder.
pub fn describe() {
    describe_counter!(SAGA_STARTED_TOTAL, "Sagas created.");
    describe_counter!(SAGA_FINISHED_TOTAL, "Sagas that reached a terminal status.");
    describe_histogram!(
        SAGA_STEP_DURATION_SECONDS,
        Unit::Seconds,
        "Time from dispatching a step attempt to its result."
    );
    describe_counter!(
        SAGA_STEP_RETRIES_TOTAL,
        "Step attempts scheduled again after a failure or timeout."
    );
    describe_gauge!(SAGA_RUNNING, "Unfinished sagas in the store.");
    describe_gauge!(
        SAGA_OLDEST_RUNNING_SECONDS,
        Unit::Seconds,
        "Age of the oldest unfinished saga."
    );
    describe_gauge!(SAGA_STUCK, "Unfinished sagas that count as stuck.");
    describe_counter!(
        SAGA_COMMANDS_HANDLED_TOTAL,
        "Commands a participant answered."
    );
    describe_histogram!(
        SAGA_COMMAND_DURATION_SECONDS,
        Unit::Seconds,
        "Time a participant spent on a command."
    );
    describe_counter!(
        SAGA_MESSAGES_DEAD_LETTERED_TOTAL,
        "Messages moved to a dead-letter queue."
    );
}

/// Records that a message of `queue` went to its dead-letter queue. For
/// [`Transport`](crate::Transport) implementations.
pub fn record_dead_letter(queue: &str) {
    counter!(SAGA_MESSAGES_DEAD_LETTERED_TOTAL, "queue" => queue.to_owned()).increment(1);
}

/// Records what the log entries of one saved transition say: a start, a
/// step's result (timed from `since`, when the saga last changed: the
/// attempt's dispatch), a retry, an end.
pub(crate) fn transition(saga: &str, since: DateTime<Utc>, logs: &[LogEntry], now: DateTime<Utc>) {
    for entry in logs {
        let step = entry.step.as_deref().unwrap_or_default();
        let outcome = match entry.event {
            LogEvent::SagaStarted => {
                started(saga);
                continue;
            }
            LogEvent::SagaCompleted => {
                finished(saga, SagaStatus::Completed.as_str());
                continue;
            }
            LogEvent::SagaCompensated => {
                finished(saga, SagaStatus::Compensated.as_str());
                continue;
            }
            LogEvent::SagaFailed => {
                finished(saga, SagaStatus::Failed.as_str());
                continue;
            }
            LogEvent::RetryScheduled => {
                retried(saga, step);
                continue;
            }
            LogEvent::StepSucceeded => "succeeded",
            LogEvent::StepFailed => "failed",
            LogEvent::StepTimedOut => "timed_out",
            LogEvent::CompensationSucceeded => "compensated",
            LogEvent::CompensationFailed => "compensation_failed",
            _ => continue,
        };
        step_finished(
            saga,
            step,
            outcome,
            (now - since).to_std().unwrap_or_default(),
        );
    }
}

fn started(saga: &str) {
    counter!(SAGA_STARTED_TOTAL, "saga" => saga.to_owned()).increment(1);
}

fn finished(saga: &str, status: &'static str) {
    counter!(SAGA_FINISHED_TOTAL, "saga" => saga.to_owned(), "status" => status).increment(1);
}

fn step_finished(saga: &str, step: &str, outcome: &'static str, took: Duration) {
    histogram!(
        SAGA_STEP_DURATION_SECONDS,
        "saga" => saga.to_owned(),
        "step" => step.to_owned(),
        "outcome" => outcome,
    )
    .record(took.as_secs_f64());
}

fn retried(saga: &str, step: &str) {
    counter!(SAGA_STEP_RETRIES_TOTAL, "saga" => saga.to_owned(), "step" => step.to_owned())
        .increment(1);
}

pub(crate) fn command_handled(command: &str, outcome: &'static str, took: Duration) {
    counter!(SAGA_COMMANDS_HANDLED_TOTAL, "command" => command.to_owned(), "outcome" => outcome)
        .increment(1);
    histogram!(SAGA_COMMAND_DURATION_SECONDS, "command" => command.to_owned())
        .record(took.as_secs_f64());
}

pub(crate) fn running(saga: &str, status: &'static str, count: u64) {
    #[allow(clippy::cast_precision_loss)]
    gauge!(SAGA_RUNNING, "saga" => saga.to_owned(), "status" => status).set(count as f64);
}

pub(crate) fn oldest_running(saga: &str, seconds: f64) {
    gauge!(SAGA_OLDEST_RUNNING_SECONDS, "saga" => saga.to_owned()).set(seconds);
}

pub(crate) fn stuck(saga: &str, count: usize) {
    #[allow(clippy::cast_precision_loss)]
    gauge!(SAGA_STUCK, "saga" => saga.to_owned()).set(count as f64);
}
