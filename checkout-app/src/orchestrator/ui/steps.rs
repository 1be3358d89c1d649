//! Per-step figures read from a saga's log: attempts, first dispatch, last
//! result and duration, forward and for the compensation.

use chrono::{DateTime, Utc};
use saga_core::{LogEntry, LogEvent};

/// One direction (the action or its compensation) of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The highest attempt number dispatched.
    pub(crate) attempts: u32,
    /// When the first attempt was dispatched.
    pub(crate) first_dispatch: Option<DateTime<Utc>>,
    /// When the last result (success, failure or timeout) was logged.
    pub(crate) last_result: Option<DateTime<Utc>>,
}

impl Timing {
    /// From the first dispatch to the last result, when both happened.
    pub(crate) fn duration(&self) -> Option<chrono::Duration> {
        Some(self.last_result? - self.first_dispatch?)
    }

    fn dispatched(&mut self, entry: &LogEntry) {
        self.attempts = self.attempts.max(entry.attempt.unwrap_or(1));
        if self.first_dispatch.is_none() {
            self.first_dispatch = Some(entry.at);
        }
    }

    fn result(&mut self, entry: &LogEntry) {
        self.last_result = Some(entry.at);
    }
}

/// The forward and compensation figures of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StepTimings {
    /// The step's action.
    pub(crate) forward: Timing,
    /// The step's compensation.
    pub(crate) compensation: Timing,
}

/// The figures of each step named in `names`, in that order, from `logs`.
pub(crate) fn timings(names: &[&str], logs: &[LogEntry]) -> Vec<StepTimings> {
    let mut out = vec![StepTimings::default(); names.len()];
    for entry in logs {
        let Some(index) = entry
            .step
            .as_deref()
            .and_then(|step| names.iter().position(|n| *n == step))
        else {
            continue;
        };
        let step = &mut out[index];
        match entry.event {
            LogEvent::StepDispatched => step.forward.dispatched(entry),
            LogEvent::StepSucceeded | LogEvent::StepFailed | LogEvent::StepTimedOut => {
                step.forward.result(entry);
            }
            LogEvent::CompensationDispatched => step.compensation.dispatched(entry),
            LogEvent::CompensationSucceeded | LogEvent::CompensationFailed => {
                step.compensation.result(entry);
            }
            _ => {}
        }
    }
    out
}

/// A duration for people: `850 ms`, `2.4 s`, `3 min 5 s`, `2 h 10 min`.
pub(crate) fn human(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1_000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::SagaId;
    use serde_json::json;

    fn entry(seq: u32, event: LogEvent, step: &str, attempt: u32, ms: i64) -> LogEntry {
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        LogEntry {
            saga_id: SagaId::new(),
            seq,
            event,
            step: Some(step.to_owned()),
            attempt: Some(attempt),
            payload: json!({}),
            at: start + chrono::Duration::milliseconds(ms),
        }
    }

    #[test]
    fn attempts_and_durations_come_from_the_log() {
        let logs = [
            entry(1, LogEvent::StepDispatched, "a", 1, 0),
            entry(2, LogEvent::StepSucceeded, "a", 1, 40),
            entry(3, LogEvent::StepDispatched, "b", 1, 50),
            entry(4, LogEvent::StepTimedOut, "b", 1, 1_550),
            entry(5, LogEvent::StepDispatched, "b", 2, 1_700),
            entry(6, LogEvent::StepFailed, "b", 2, 1_800),
            entry(7, LogEvent::CompensationDispatched, "a", 1, 1_900),
            entry(8, LogEvent::CompensationSucceeded, "a", 1, 1_910),
        ];
        let t = timings(&["a", "b", "c"], &logs);
        assert_eq!(t[0].forward.attempts, 1);
        assert_eq!(
            t[0].forward.duration(),
            Some(chrono::Duration::milliseconds(40))
        );
        assert_eq!(t[1].forward.attempts, 2);
        assert_eq!(
            t[1].forward.duration(),
            Some(chrono::Duration::milliseconds(1_750))
        );
        assert_eq!(t[0].compensation.attempts, 1);
        assert_eq!(
            t[0].compensation.duration(),
            Some(chrono::Duration::milliseconds(10))
        );
        assert_eq!(t[2], StepTimings::default());
        assert_eq!(t[1].compensation.duration(), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(chrono::Duration::milliseconds(850)), "850 ms");
        assert_eq!(human(chrono::Duration::milliseconds(2_460)), "2.5 s");
        assert_eq!(human(chrono::Duration::seconds(185)), "3 min 5 s");
        assert_eq!(human(chrono::Duration::minutes(130)), "2 h 10 min");
    }
}
