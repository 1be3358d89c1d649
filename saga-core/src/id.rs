//! Identifiers: saga ids and the idempotency keys that commands carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one saga instance.
///
/// Saga ids are UUIDv7, so they sort by creation time, which keeps the store's
/// primary-key index compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(Uuid);

impl SagaId {
    /// A fresh, time-ordered id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The underlying UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SagaId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for SagaId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<SagaId> for Uuid {
    fn from(id: SagaId) -> Self {
        id.0
    }
}

/// Whether a command runs a step's action or undoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The step's forward action.
    Invoke,
    /// The step's compensation.
    Compensate,
}

impl Direction {
    /// `"invoke"` or `"compensate"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invoke => "invoke",
            Self::Compensate => "compensate",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The stable key a participant deduplicates a command on.
///
/// It is `"{saga id}:{step}:{invoke|compensate}"`: every attempt and every
/// redelivery of the same command carries the same key, so a participant that
/// records the keys it processed performs each effect once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `direction` of `step` in saga `saga_id`.
    #[must_use]
    pub fn new(saga_id: SagaId, step: &str, direction: Direction) -> Self {
        Self(format!("{saga_id}:{step}:{direction}"))
    }

    /// The key of `direction` of `step` whose current key began at attempt
    /// `from`: [`new`](Self::new)'s key when `from` is 1, else that key with
    /// `#from` appended. An operator retry after a recorded refusal starts a
    /// new key this way, so the participant runs the command again instead of
    /// answering the refusal it recorded.
    #[must_use]
    pub fn starting_at(saga_id: SagaId, step: &str, direction: Direction, from: u32) -> Self {
        if from <= 1 {
            Self::new(saga_id, step, direction)
        } else {
            Self(format!("{saga_id}:{step}:{direction}#{from}"))
        }
    }

    /// Wraps a key received from elsewhere (a message header, a database row).
    #[must_use]
    pub fn from_string(key: String) -> Self {
        Self(key)
    }

    /// The key as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_id_round_trips_through_text() {
        let id = SagaId::new();
        let parsed: SagaId = id.to_string().parse().expect("parses");
        assert_eq!(id, parsed);
    }

    #[test]
    fn idempotency_key_is_stable_per_step_and_direction() {
        let id = SagaId::new();
        let a = IdempotencyKey::new(id, "reserve", Direction::Invoke);
        let b = IdempotencyKey::new(id, "reserve", Direction::Invoke);
        let c = IdempotencyKey::new(id, "reserve", Direction::Compensate);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.as_str().ends_with(":reserve:invoke"));
    }
}
