//! Which unfinished sagas count as stuck.
//!
//! A saga normally changes in the store at least once per step timeout or
//! retry delay: a reply, a timeout, a retry. One that has not changed for
//! longer than that, one still running before its pivot after its deadline
//! (the engine should have cancelled it), or one retrying a step without limit
//! far past what a passing outage explains, needs a person. The rules are pure
//! functions of the saga, its definition and the time; the engine applies them
//! in [`Engine::stuck`](crate::Engine::stuck) and in its census.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock;
use crate::definition::SagaDefinition;
use crate::id::Direction;
use crate::state::{SagaInstance, SagaStatus};

/// How patient the stuck rules are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StuckRule {
    /// Slack on top of a step's own budget (its timeout plus its longest retry
    /// delay): the engine's poll interval and lease, a claim that waits for an
    /// expired lease.
    pub grace: Duration,
    /// On a step that retries without limit, the attempt from which the saga
    /// counts as stuck even though it keeps changing.
    pub attempts: u32,
}

impl Default for StuckRule {
    /// 30 s of grace, 10 attempts.
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            attempts: 10,
        }
    }
}

/// Why a saga counts as stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StuckReason {
    /// Nothing happened to it since `since`, longer than its current step's
    /// timeout plus retry delay plus grace.
    Silent {
        /// When it last changed.
        since: DateTime<Utc>,
    },
    /// Still running before its pivot although its deadline passed.
    PastDeadline {
        /// The deadline.
        deadline: DateTime<Utc>,
    },
    /// Retrying a step without limit, at attempt `attempt`.
    Retrying {
        /// The step's name.
        step: String,
        /// The current attempt.
        attempt: u32,
    },
}

impl StuckReason {
    /// A short machine-readable name: `silent`, `past_deadline` or `retrying`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Silent { .. } => "silent",
            Self::PastDeadline { .. } => "past_deadline",
            Self::Retrying { .. } => "retrying",
        }
    }
}

impl fmt::Display for StuckReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Silent { since } => write!(f, "no progress since {}", since.to_rfc3339()),
            Self::PastDeadline { deadline } => {
                write!(
                    f,
                    "still running after its deadline {}",
                    deadline.to_rfc3339()
                )
            }
            Self::Retrying { step, attempt } => {
                write!(
                    f,
                    "step `{step}` is at attempt {attempt} and retries without limit"
                )
            }
        }
    }
}

/// An unfinished saga that counts as stuck, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSaga {
    /// The saga as stored.
    pub instance: SagaInstance,
    /// Why it counts as stuck.
    pub reason: StuckReason,
}

/// Whether `instance`, run by `definition`, counts as stuck at `now`.
#[must_use]
pub fn check(
    definition: &SagaDefinition,
    instance: &SagaInstance,
    now: DateTime<Utc>,
    rule: StuckRule,
) -> Option<StuckReason> {
    if instance.status.is_terminal() {
        return None;
    }
    let Some(cursor) = instance.cursor else {
        // Unfinished without a step: only time can tell.
        return (clock::add(instance.updated_at, rule.grace) < now).then_some(
            StuckReason::Silent {
                since: instance.updated_at,
            },
        );
    };
    let step = definition.steps().get(cursor.step)?;
    let policy = match cursor.direction {
        Direction::Invoke => step.retry(),
        Direction::Compensate => step.compensation_retry(),
    };
    let timeout = step.timeout().unwrap_or(definition.default_timeout());
    let budget = timeout + policy.max_delay() + rule.grace;
    if clock::add(instance.updated_at, budget) < now {
        return Some(StuckReason::Silent {
            since: instance.updated_at,
        });
    }
    let before_pivot = definition.pivot().is_none_or(|p| cursor.step < p);
    if let Some(deadline) = instance.deadline_at
        && instance.status == SagaStatus::Running
        && before_pivot
        && clock::add(deadline, rule.grace) < now
    {
        return Some(StuckReason::PastDeadline { deadline });
    }
    if policy.attempt_limit().is_none() && cursor.nth() >= rule.attempts {
        return Some(StuckReason::Retrying {
            step: step.name().to_owned(),
            attempt: cursor.attempt,
        });
    }
    None
}
