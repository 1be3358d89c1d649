//! What the list page asks the engine: the filters it understands, the
//! recent sagas matching them, the count per status and the stuck sagas
//! (the engine's rules, [`saga_core::stuck`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use saga_core::adapter::SagaQuery;
use saga_core::stuck::StuckReason;
use saga_core::{Engine, SagaId, SagaInstance, SagaStatus};
use serde::Deserialize;

/// How many sagas the list page shows at most.
pub(crate) const SHOWN: usize = 100;

/// How many sagas one listing reads before filtering by age in memory.
const SCAN: usize = 500;

/// What the stuck rules say, in one sentence for the page.
pub(crate) const STUCK_RULE: &str = "not finished, and no progress past its step's timeout and \
    retry delay, still running after its deadline, or retrying a step without limit";

/// The stuck sagas, by id, with the reason.
pub(crate) type Stuck = HashMap<SagaId, StuckReason>;

/// Every stuck saga the engine finds.
///
/// # Errors
/// Store errors.
pub(crate) async fn stuck(engine: &Engine) -> saga_core::Result<Stuck> {
    let found = engine
        .stuck(&SagaQuery::new().limit(Engine::STUCK_SCAN))
        .await?;
    Ok(found
        .into_iter()
        .map(|s| (s.instance.id, s.reason))
        .collect())
}

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
    /// Only stuck sagas.
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

/// The most recently updated sagas matching `filters`, newest first, at most
/// [`SHOWN`]; `stuck` holds the stuck ones.
///
/// # Errors
/// Store errors.
pub(crate) async fn recent(
    engine: &Engine,
    filters: &Filters,
    now: DateTime<Utc>,
    stuck: &Stuck,
) -> saga_core::Result<Vec<SagaInstance>> {
    let mut query = SagaQuery::new().limit(SCAN);
    if let Some(saga_type) = &filters.saga_type {
        query = query.saga_type(saga_type.clone());
    }
    if let Some(status) = filters.status {
        query = query.status(status);
    }
    if filters.stuck {
        // Only unfinished sagas can be stuck: finished ones must not crowd
        // them out of the scan.
        query = query.unfinished();
    }
    let mut found = engine.list(&query).await?;
    found.retain(|s| {
        filters.age.admits(s.created_at, now) && (!filters.stuck || stuck.contains_key(&s.id))
    });
    found.truncate(SHOWN);
    Ok(found)
}

/// The number of sagas per status, and of stuck ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Per status, in [`SagaStatus::ALL`] order.
    pub(crate) per_status: Vec<(SagaStatus, u64)>,
    /// Stuck sagas.
    pub(crate) stuck: usize,
}

/// Counts sagas per status, in the store.
///
/// # Errors
/// Store errors.
pub(crate) async fn counts(engine: &Engine, stuck: &Stuck) -> saga_core::Result<Counts> {
    let counted = engine.counts(&SagaQuery::new()).await?;
    let per_status = SagaStatus::ALL
        .into_iter()
        .map(|status| {
            let n = counted
                .iter()
                .filter(|c| c.status == status)
                .map(|c| c.count)
                .sum();
            (status, n)
        })
        .collect();
    Ok(Counts {
        per_status,
        stuck: stuck.len(),
    })
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
