//! What the list page asks the engine: the filters it understands, the
//! recent sagas matching them, the count per status and what "stuck" means.
//!
//! [`status_counts`] and [`is_stuck`] compute from [`Engine::list`] for now;
//! they are the two functions to swap for a store-side count and a stuck
//! filter of [`SagaQuery`] when the engine gets them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_core::adapter::SagaQuery;
use saga_core::{Engine, SagaInstance, SagaStatus};
use serde::Deserialize;

/// How many sagas the list page shows at most.
pub(crate) const SHOWN: usize = 100;

/// How many sagas one listing reads before filtering by age in memory.
const SCAN: usize = 500;

/// Per status, the count stops at this many (shown as "1000+").
pub(crate) const COUNT_CAP: usize = 1_000;

/// A saga that has not finished and has not changed for this long is stuck.
pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(60);

/// The list page's query string, as sent by its filter form.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFilters {
    status: Option<String>,
    #[serde(rename = "type")]
    saga_type: Option<String>,
    age: Option<String>,
    stuck: Option<String>,
}

/// "Created in the last ...".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Age {
    /// Five minutes.
    FiveMinutes,
    /// An hour.
    Hour,
    /// A day.
    Day,
    /// No limit.
    #[default]
    All,
}

impl Age {
    /// Every choice, in the order the form lists them.
    pub(crate) const ALL: [Self; 4] = [Self::FiveMinutes, Self::Hour, Self::Day, Self::All];

    /// The value in the query string.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5m",
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::All => "all",
        }
    }

    /// What the form shows.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::FiveMinutes => "last 5 minutes",
            Self::Hour => "last hour",
            Self::Day => "last 24 hours",
            Self::All => "any time",
        }
    }

    fn window(self) -> Option<chrono::Duration> {
        match self {
            Self::FiveMinutes => Some(chrono::Duration::minutes(5)),
            Self::Hour => Some(chrono::Duration::hours(1)),
            Self::Day => Some(chrono::Duration::hours(24)),
            Self::All => None,
        }
    }

    /// Whether a saga created at `created` is recent enough at `now`.
    pub(crate) fn admits(self, created: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.window().is_none_or(|w| now - created <= w)
    }
}

/// The list page's filters, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filters {
    /// Only this status.
    pub(crate) status: Option<SagaStatus>,
    /// Only this saga type.
    pub(crate) saga_type: Option<String>,
    /// Only sagas created within this window.
    pub(crate) age: Age,
    /// Only stuck sagas ([`is_stuck`]).
    pub(crate) stuck: bool,
}

impl Filters {
    /// Validates the query string; the error says which value is wrong.
    pub(crate) fn parse(raw: RawFilters) -> Result<Self, String> {
        let status = match raw.status.as_deref().map(str::trim) {
            None | Some("" | "any") => None,
            Some(s) => Some(s.parse::<SagaStatus>()?),
        };
        let saga_type = raw
            .saga_type
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        if saga_type.as_ref().is_some_and(|t| t.chars().count() > 200) {
            return Err("type must be at most 200 characters".to_owned());
        }
        let age = match raw.age.as_deref().map(str::trim) {
            None | Some("") => Age::All,
            Some(a) => Age::ALL
                .into_iter()
                .find(|age| age.as_str() == a)
                .ok_or_else(|| format!("unknown age `{a}` (expected 5m, 1h, 24h or all)"))?,
        };
        let stuck = matches!(raw.stuck.as_deref(), Some("on" | "true" | "1"));
        Ok(Self {
            status,
            saga_type,
            age,
            stuck,
        })
    }
}

/// Whether `instance` is stuck at `now`: not finished and unchanged for
/// [`STUCK_AFTER`]. The one definition of "stuck" the UI uses.
pub(crate) fn is_stuck(instance: &SagaInstance, now: DateTime<Utc>) -> bool {
    !instance.is_terminal()
        && chrono::Duration::from_std(STUCK_AFTER).is_ok_and(|d| now - instance.updated_at >= d)
}

/// The most recently updated sagas matching `filters`, newest first, at most [`SHOWN`].
///
/// # Errors
/// Store errors.
pub(crate) async fn recent(
    engine: &Engine,
    filters: &Filters,
    now: DateTime<Utc>,
) -> saga_core::Result<Vec<SagaInstance>> {
    let mut base = SagaQuery::new().limit(SCAN);
    if let Some(saga_type) = &filters.saga_type {
        base = base.saga_type(saga_type.clone());
    }
    let statuses: Vec<Option<SagaStatus>> = match (filters.status, filters.stuck) {
        (Some(status), _) => vec![Some(status)],
        // Only unfinished sagas can be stuck: ask for each such status so
        // finished ones cannot crowd them out of the scan.
        (None, true) => SagaStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .map(Some)
            .collect(),
        (None, false) => vec![None],
    };
    let mut found = Vec::new();
    for status in statuses {
        let mut query = base.clone();
        if let Some(status) = status {
            query = query.status(status);
        }
        if filters.stuck
            && let Ok(after) = chrono::Duration::from_std(STUCK_AFTER)
        {
            query = query.updated_before(now - after);
        }
        found.extend(engine.list(&query).await?);
    }
    found.retain(|s| filters.age.admits(s.created_at, now) && (!filters.stuck || is_stuck(s, now)));
    found.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
    found.truncate(SHOWN);
    Ok(found)
}

/// The number of sagas per status (each capped at [`COUNT_CAP`]) and the
/// number of stuck ones among the unfinished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Per status, in [`SagaStatus::ALL`] order.
    pub(crate) per_status: Vec<(SagaStatus, usize)>,
    /// Stuck sagas ([`is_stuck`]).
    pub(crate) stuck: usize,
}

/// Counts sagas per status.
///
/// # Errors
/// Store errors.
pub(crate) async fn status_counts(
    engine: &Engine,
    now: DateTime<Utc>,
) -> saga_core::Result<Counts> {
    let mut counts = Counts::default();
    for status in SagaStatus::ALL {
        let sagas = engine
            .list(&SagaQuery::new().status(status).limit(COUNT_CAP))
            .await?;
        counts.stuck += sagas.iter().filter(|s| is_stuck(s, now)).count();
        counts.per_status.push((status, sagas.len()));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: &str, age: &str, stuck: Option<&str>) -> RawFilters {
        RawFilters {
            status: Some(status.to_owned()),
            saga_type: Some("  checkout ".to_owned()),
            age: Some(age.to_owned()),
            stuck: stuck.map(str::to_owned),
        }
    }

    #[test]
    fn filters_parse_and_reject() {
        let f = Filters::parse(raw("failed", "1h", Some("on"))).expect("valid");
        assert_eq!(f.status, Some(SagaStatus::Failed));
        assert_eq!(f.saga_type.as_deref(), Some("checkout"));
        assert_eq!(f.age, Age::Hour);
        assert!(f.stuck);
        let any = Filters::parse(raw("", "", None)).expect("valid");
        assert_eq!((any.status, any.age, any.stuck), (None, Age::All, false));
        assert!(Filters::parse(raw("lost", "all", None)).is_err());
        assert!(Filters::parse(raw("any", "2d", None)).is_err());
    }

    #[test]
    fn age_windows() {
        let now = Utc::now();
        assert!(Age::FiveMinutes.admits(now - chrono::Duration::minutes(4), now));
        assert!(!Age::FiveMinutes.admits(now - chrono::Duration::minutes(6), now));
        assert!(!Age::Day.admits(now - chrono::Duration::hours(25), now));
        assert!(Age::All.admits(now - chrono::Duration::days(400), now));
    }
}
