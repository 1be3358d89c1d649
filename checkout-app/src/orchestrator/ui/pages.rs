//! The pages, rendered from data to markup (no I/O here): the saga list,
//! one saga, and the error page. Everything goes through [`Html`], so every
//! value from the store is escaped.

use chrono::{DateTime, Utc};
use saga_core::definition::SagaDefinition;
use saga_core::stuck::StuckReason;
use saga_core::{Direction, LogEntry, LogEvent, SagaInstance, SagaStatus, StepStatus};

use super::diagram::{self, DiagramStep, kind_str, step_status_str};
use super::html::Html;
use super::query::{Age, Counts, Filters, SHOWN, STUCK_RULE, Stuck};
use super::steps::{self, Timing, human};

/// What the list page shows.
#[derive(Debug)]
pub(crate) struct ListPage<'a> {
    /// The filters in force.
    pub(crate) filters: &'a Filters,
    /// Sagas per status.
    pub(crate) counts: &'a Counts,
    /// The sagas matching the filters, newest first.
    pub(crate) sagas: &'a [SagaInstance],
    /// The stuck sagas, with the reason.
    pub(crate) stuck: &'a Stuck,
    /// The orchestrator's own definition (step names of its sagas).
    pub(crate) definition: &'a SagaDefinition,
    /// The time the page is rendered at.
    pub(crate) now: DateTime<Utc>,
}

/// What the saga page shows.
#[derive(Debug)]
pub(crate) struct SagaPage<'a> {
    /// The saga.
    pub(crate) instance: &'a SagaInstance,
    /// Its log, in order.
    pub(crate) logs: &'a [LogEntry],
    /// Why it counts as stuck, if it does.
    pub(crate) stuck: Option<&'a StuckReason>,
    /// Its definition, when this orchestrator runs it.
    pub(crate) definition: Option<&'a SagaDefinition>,
    /// Whether the orchestrator accepts operator actions (a token is set).
    pub(crate) operator_enabled: bool,
    /// The time the page is rendered at.
    pub(crate) now: DateTime<Utc>,
}

/// `definition` if `instance` was started from it.
pub(crate) fn definition_for<'a>(
    definition: &'a SagaDefinition,
    instance: &SagaInstance,
) -> Option<&'a SagaDefinition> {
    (definition.name() == instance.saga_type && definition.version() == instance.definition_version)
        .then_some(definition)
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ago", human(now - at))
}

fn step_name(definition: Option<&SagaDefinition>, index: usize) -> String {
    definition
        .and_then(|d| d.steps().get(index))
        .map_or_else(|| format!("step {}", index + 1), |s| s.name().to_owned())
}

/// The page around `body`: head, stylesheet, script, header and footer.
fn layout(title: &str, now: DateTime<Utc>, body: impl FnOnce(&mut Html)) -> String {
    let mut html = Html::new();
    html.doctype();
    html.el("html", &[("lang", &"en")], |h| {
        h.el("head", &[], |h| {
            h.void("meta", &[("charset", &"utf-8")]);
            h.void(
                "meta",
                &[
                    ("name", &"viewport"),
                    ("content", &"width=device-width, initial-scale=1"),
                ],
            );
            h.text_el("title", &[], format!("{title} · saga orchestrator"));
            h.void(
                "link",
                &[("rel", &"stylesheet"), ("href", &"/ui/assets/ui.css")],
            );
            h.empty("script", &[("src", &"/ui/assets/ui.js"), ("defer", &"")]);
        });
        h.el("body", &[], |h| {
            h.el("header", &[("class", &"top")], |h| {
                h.text_el("a", &[("href", &"/ui"), ("class", &"brand")], "saga-rs");
                h.text_el("span", &[("class", &"muted")], "orchestrator");
                h.el("nav", &[], |h| {
                    h.text_el("a", &[("href", &"/ui")], "Sagas");
                    h.text_el("a", &[("href", &"/ui?stuck=on")], "Stuck");
                    h.text_el("a", &[("href", &"/ui?status=failed")], "Failed");
                });
            });
            h.el("main", &[], body);
            h.el("footer", &[], |h| {
                h.text(format!("Rendered at {} UTC.", time(now)));
            });
        });
    });
    html.finish()
}

fn status_badge(h: &mut Html, status: SagaStatus) {
    let class = format!("status status-{status}");
    h.text_el("span", &[("class", &class)], status);
}

fn step_badge(h: &mut Html, status: StepStatus) {
    let s = step_status_str(status);
    let class = format!("status step-status-{s}");
    h.text_el("span", &[("class", &class)], s);
}

/// The list page.
pub(crate) fn list(page: &ListPage<'_>) -> String {
    layout("Sagas", page.now, |h| {
        h.text_el("h1", &[], "Sagas");
        counts(h, page.counts);
        filter_form(h, page.filters, page.definition);
        let shown = page.sagas.len();
        h.text_el(
            "p",
            &[("class", &"muted"), ("id", &"shown")],
            format!(
                "{shown} saga{} shown, most recently updated first (at most {SHOWN}).",
                if shown == 1 { "" } else { "s" }
            ),
        );
        if page.sagas.is_empty() {
            h.text_el("p", &[("class", &"empty")], "No sagas match these filters.");
            return;
        }
        h.el("table", &[("class", &"sagas"), ("id", &"sagas")], |h| {
            h.el("thead", &[], |h| {
                h.el("tr", &[], |h| {
                    for title in [
                        "Saga",
                        "Type",
                        "Status",
                        "Current step",
                        "Attempt",
                        "Created",
                        "Updated",
                    ] {
                        h.text_el("th", &[], title);
                    }
                });
            });
            h.el("tbody", &[], |h| {
                for saga in page.sagas {
                    saga_row(h, saga, page.definition, page.stuck.get(&saga.id), page.now);
                }
            });
        });
    })
}

fn counts(h: &mut Html, counts: &Counts) {
    h.el("ul", &[("class", &"counts"), ("id", &"counts")], |h| {
        let total: u64 = counts.per_status.iter().map(|(_, n)| n).sum();
        h.el("li", &[("data-status", &"all")], |h| {
            h.el("a", &[("href", &"/ui")], |h| {
                h.text_el("span", &[("class", &"label")], "all");
                h.text_el("span", &[("class", &"count")], total);
            });
        });
        for (status, n) in &counts.per_status {
            let href = format!("/ui?status={status}");
            let class = format!("status-{status}");
            h.el("li", &[("data-status", status), ("class", &class)], |h| {
                h.el("a", &[("href", &href)], |h| {
                    h.text_el("span", &[("class", &"label")], status);
                    h.text_el("span", &[("class", &"count")], n);
                });
            });
        }
        h.el(
            "li",
            &[("data-status", &"stuck"), ("class", &"stuck")],
            |h| {
                h.el("a", &[("href", &"/ui?stuck=on")], |h| {
                    h.text_el("span", &[("class", &"label")], "stuck");
                    h.text_el("span", &[("class", &"count")], counts.stuck);
                });
            },
        );
    });
}

fn filter_form(h: &mut Html, filters: &Filters, definition: &SagaDefinition) {
    h.el(
        "form",
        &[
            ("method", &"get"),
            ("action", &"/ui"),
            ("class", &"filters"),
        ],
        |h| {
            h.el("label", &[], |h| {
                h.text("Status ");
                h.el("select", &[("name", &"status")], |h| {
                    option(h, "any", "any", filters.status.is_none());
                    for status in SagaStatus::ALL {
                        let s = status.as_str();
                        option(h, s, s, filters.status == Some(status));
                    }
                });
            });
            h.el("label", &[], |h| {
                h.text("Type ");
                let value = filters.saga_type.as_deref().unwrap_or_default();
                h.void(
                    "input",
                    &[
                        ("type", &"text"),
                        ("name", &"type"),
                        ("value", &value),
                        ("placeholder", &"any"),
                        ("list", &"saga-types"),
                        ("size", &12),
                    ],
                );
                h.el("datalist", &[("id", &"saga-types")], |h| {
                    h.empty("option", &[("value", &definition.name())]);
                });
            });
            h.el("label", &[], |h| {
                h.text("Created ");
                h.el("select", &[("name", &"age")], |h| {
                    for age in Age::ALL {
                        option(h, age.as_str(), age.label(), filters.age == age);
                    }
                });
            });
            h.el("label", &[("title", &STUCK_RULE)], |h| {
                let mut attrs: Vec<(&'static str, &dyn std::fmt::Display)> =
                    vec![("type", &"checkbox"), ("name", &"stuck"), ("value", &"on")];
                if filters.stuck {
                    attrs.push(("checked", &""));
                }
                h.void("input", &attrs);
                h.text(" stuck only");
            });
            h.text_el("button", &[("type", &"submit")], "Filter");
            h.text_el("a", &[("href", &"/ui"), ("class", &"reset")], "reset");
        },
    );
}

fn option(h: &mut Html, value: &str, label: &str, selected: bool) {
    let mut attrs: Vec<(&'static str, &dyn std::fmt::Display)> = vec![("value", &value)];
    if selected {
        attrs.push(("selected", &""));
    }
    h.text_el("option", &attrs, label);
}

fn saga_row(
    h: &mut Html,
    saga: &SagaInstance,
    known: &SagaDefinition,
    stuck: Option<&StuckReason>,
    now: DateTime<Utc>,
) {
    let definition = definition_for(known, saga);
    let href = format!("/ui/sagas/{}", saga.id);
    h.el(
        "tr",
        &[("data-saga-id", &saga.id), ("data-status", &saga.status)],
        |h| {
            h.el("td", &[("class", &"mono")], |h| {
                h.text_el("a", &[("href", &href)], saga.id);
            });
            h.text_el("td", &[], &saga.saga_type);
            h.el("td", &[("class", &"status-cell")], |h| {
                status_badge(h, saga.status);
                if let Some(reason) = stuck {
                    h.text_el(
                        "span",
                        &[("class", &"status stuck"), ("title", reason)],
                        "stuck",
                    );
                }
            });
            match saga.cursor {
                Some(c) => {
                    let mut step = step_name(definition, c.step);
                    if c.direction == Direction::Compensate {
                        step = format!("undo {step}");
                    }
                    h.text_el("td", &[], step);
                    h.text_el("td", &[("class", &"num")], c.attempt);
                }
                None => {
                    h.text_el("td", &[("class", &"muted")], "—");
                    h.text_el("td", &[("class", &"num muted")], "—");
                }
            }
            h.text_el(
                "td",
                &[("class", &"time"), ("title", &time(saga.created_at))],
                time(saga.created_at),
            );
            h.text_el(
                "td",
                &[("class", &"time"), ("title", &time(saga.updated_at))],
                ago(saga.updated_at, now),
            );
        },
    );
}

/// The page of one saga.
pub(crate) fn saga(page: &SagaPage<'_>) -> String {
    let instance = page.instance;
    let title = format!("Saga {}", instance.id);
    layout(&title, page.now, |h| {
        h.el("p", &[("class", &"crumbs")], |h| {
            h.text_el("a", &[("href", &"/ui")], "← all sagas");
        });
        h.el("h1", &[], |h| {
            h.text("Saga ");
            h.text_el("code", &[("class", &"mono")], instance.id);
            h.text(" ");
            h.el("span", &[("id", &"saga-status")], |h| {
                status_badge(h, instance.status);
            });
            if let Some(reason) = page.stuck {
                h.text(" ");
                h.text_el(
                    "span",
                    &[("class", &"status stuck"), ("title", reason)],
                    "stuck",
                );
            }
        });
        if let Some(reason) = page.stuck {
            h.text_el(
                "p",
                &[("class", &"stuck-reason"), ("id", &"stuck-reason")],
                format!("Stuck: {reason}."),
            );
        }
        summary(h, page);
        operator(h, page);
        let names: Vec<String> = (0..instance.steps.len())
            .map(|i| step_name(page.definition, i))
            .collect();
        h.text_el("h2", &[], "Steps");
        let diagram_steps: Vec<DiagramStep<'_>> = names
            .iter()
            .zip(&instance.steps)
            .enumerate()
            .map(|(i, (name, status))| {
                let def = page.definition.and_then(|d| d.steps().get(i));
                DiagramStep {
                    name,
                    kind: def.map_or(saga_core::StepKind::Compensatable, |s| s.kind()),
                    compensable: def.is_some_and(|s| s.compensation().is_some()),
                    status: *status,
                }
            })
            .collect();
        h.el("div", &[("class", &"diagram-wrap")], |h| {
            diagram::draw(h, &diagram_steps);
        });
        step_table(h, &diagram_steps, page.logs);
        h.text_el("h2", &[], "Data");
        let data = serde_json::to_string_pretty(&instance.data)
            .unwrap_or_else(|e| format!("unprintable data: {e}"));
        h.text_el("pre", &[("class", &"json"), ("id", &"saga-data")], data);
        h.text_el("h2", &[], format!("Log ({} entries)", page.logs.len()));
        timeline(h, page.logs);
    })
}

fn summary(h: &mut Html, page: &SagaPage<'_>) {
    let instance = page.instance;
    let row = |h: &mut Html, term: &str, body: &dyn Fn(&mut Html)| {
        h.text_el("dt", &[], term);
        h.el("dd", &[], |h| body(h));
    };
    h.el("dl", &[("class", &"summary"), ("id", &"summary")], |h| {
        row(h, "Type", &|h| {
            h.text(&instance.saga_type);
        });
        row(h, "Definition version", &|h| {
            h.text(instance.definition_version);
        });
        row(h, "Status", &|h| status_badge(h, instance.status));
        row(h, "Current step", &|h| match instance.cursor {
            Some(c) => {
                let direction = match c.direction {
                    Direction::Invoke => "action",
                    Direction::Compensate => "compensation",
                };
                h.text(format!(
                    "{} ({direction}), attempt {}, waiting for {}",
                    step_name(page.definition, c.step),
                    c.attempt,
                    c.waiting.as_str()
                ));
            }
            None => {
                h.text("— (finished)");
            }
        });
        row(h, "Error", &|h| match &instance.error {
            Some(error) => {
                h.text_el("span", &[("class", &"error")], error);
            }
            None => {
                h.text("—");
            }
        });
        row(h, "Idempotency key", &|h| {
            match &instance.idempotency_key {
                Some(key) => h.text_el("code", &[], key),
                None => h.text("—"),
            };
        });
        row(h, "Created", &|h| {
            h.text(format!("{} UTC", time(instance.created_at)));
        });
        row(h, "Updated", &|h| {
            h.text(format!(
                "{} UTC ({})",
                time(instance.updated_at),
                ago(instance.updated_at, page.now)
            ));
        });
        if let Some(at) = instance.next_wake_at {
            row(h, "Next wake-up", &|h| {
                h.text(format!("{} UTC", time(at)));
            });
        }
        if let Some(at) = instance.deadline_at {
            row(h, "Deadline", &|h| {
                h.text(format!("{} UTC", time(at)));
            });
        }
    });
}

/// Which operator actions apply to the saga now, with why not.
fn actions(page: &SagaPage<'_>) -> [(&'static str, &'static str, Result<(), &'static str>); 3] {
    let instance = page.instance;
    let retry = if instance.status == SagaStatus::Failed {
        Ok(())
    } else {
        Err("only a failed saga can be retried")
    };
    let resume = if instance.is_terminal() {
        Err("the saga has finished")
    } else {
        Ok(())
    };
    let cancellable = page
        .definition
        .map_or(instance.status == SagaStatus::Running, |d| {
            saga_core::machine::can_cancel(d, instance)
        });
    let cancel = if cancellable {
        Ok(())
    } else {
        Err("only a running saga before its pivot can be cancelled")
    };
    [
        ("retry", "Retry", retry),
        ("resume", "Resume", resume),
        ("cancel", "Cancel", cancel),
    ]
}

fn operator(h: &mut Html, page: &SagaPage<'_>) {
    h.el(
        "section",
        &[
            ("class", &"operator"),
            ("id", &"operator"),
            ("data-saga-id", &page.instance.id),
        ],
        |h| {
            h.text_el("h2", &[], "Operator actions");
            if !page.operator_enabled {
                h.text_el(
                    "p",
                    &[("class", &"muted"), ("id", &"operator-disabled")],
                    "Operator actions are disabled on this orchestrator (OPERATOR_TOKEN is not set); \
                     this page is read-only.",
                );
                return;
            }
            h.el("div", &[("class", &"operator-form")], |h| {
                h.el("label", &[], |h| {
                    h.text("Operator token ");
                    h.void(
                        "input",
                        &[
                            ("type", &"password"),
                            ("id", &"operator-token"),
                            ("autocomplete", &"off"),
                            ("placeholder", &"required for actions"),
                        ],
                    );
                });
                for (action, label, allowed) in actions(page) {
                    let class = format!("action action-{action}");
                    let mut attrs: Vec<(&'static str, &dyn std::fmt::Display)> = vec![
                        ("type", &"button"),
                        ("class", &class),
                        ("data-action", &action),
                    ];
                    if let Err(why) = &allowed {
                        attrs.push(("disabled", &""));
                        attrs.push(("title", why));
                    }
                    h.text_el("button", &attrs, label);
                }
            });
            h.text_el(
                "p",
                &[("id", &"operator-message"), ("role", &"status")],
                "Without the token this page is read-only; the token stays in this tab only.",
            );
        },
    );
}

fn step_table(h: &mut Html, steps: &[DiagramStep<'_>], logs: &[LogEntry]) {
    let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
    let timings = steps::timings(&names, logs);
    h.el("table", &[("class", &"steps"), ("id", &"steps")], |h| {
        h.el("thead", &[], |h| {
            h.el("tr", &[], |h| {
                for title in [
                    "#",
                    "Step",
                    "Kind",
                    "Status",
                    "Attempts",
                    "First dispatch",
                    "Last result",
                    "Duration",
                    "Compensation",
                ] {
                    h.text_el("th", &[], title);
                }
            });
        });
        h.el("tbody", &[], |h| {
            for (i, (step, timing)) in steps.iter().zip(&timings).enumerate() {
                h.el("tr", &[("data-step", &step.name)], |h| {
                    h.text_el("td", &[("class", &"num")], i + 1);
                    h.text_el("td", &[("class", &"mono step-name")], step.name);
                    let kind = match kind_str(step.kind) {
                        "" => "compensatable",
                        kind => kind,
                    };
                    h.text_el("td", &[], kind);
                    h.el("td", &[("class", &"step-status")], |h| {
                        step_badge(h, step.status)
                    });
                    timing_cells(h, &timing.forward);
                    let compensation = if !step.compensable {
                        "none".to_owned()
                    } else if timing.compensation.attempts == 0 {
                        "not run".to_owned()
                    } else {
                        let plural = if timing.compensation.attempts == 1 {
                            ""
                        } else {
                            "s"
                        };
                        match timing.compensation.duration() {
                            Some(d) => format!(
                                "{} attempt{plural}, {}",
                                timing.compensation.attempts,
                                human(d)
                            ),
                            None => format!(
                                "{} attempt{plural}, no result yet",
                                timing.compensation.attempts
                            ),
                        }
                    };
                    h.text_el("td", &[], compensation);
                });
            }
        });
    });
}

fn timing_cells(h: &mut Html, timing: &Timing) {
    let dash = || "—".to_owned();
    h.text_el("td", &[("class", &"num")], timing.attempts);
    h.text_el(
        "td",
        &[("class", &"time")],
        timing.first_dispatch.map_or_else(dash, time),
    );
    h.text_el(
        "td",
        &[("class", &"time")],
        timing.last_result.map_or_else(dash, time),
    );
    h.text_el(
        "td",
        &[("class", &"num")],
        timing.duration().map_or_else(dash, human),
    );
}

/// A CSS class grouping log events: success, failure, compensation, operator.
fn event_class(event: LogEvent) -> &'static str {
    match event {
        LogEvent::StepSucceeded | LogEvent::SagaCompleted => "ev ev-ok",
        LogEvent::StepFailed
        | LogEvent::StepTimedOut
        | LogEvent::CompensationFailed
        | LogEvent::SagaFailed
        | LogEvent::DeadlineExceeded
        | LogEvent::SendFailed => "ev ev-fail",
        LogEvent::CompensationStarted
        | LogEvent::CompensationDispatched
        | LogEvent::CompensationSucceeded
        | LogEvent::SagaCompensated => "ev ev-comp",
        LogEvent::OperatorRetry | LogEvent::OperatorCancel | LogEvent::Resumed => "ev ev-op",
        _ => "ev",
    }
}

fn timeline(h: &mut Html, logs: &[LogEntry]) {
    let start = logs.first().map(|e| e.at);
    h.el(
        "table",
        &[("class", &"timeline"), ("id", &"timeline")],
        |h| {
            h.el("thead", &[], |h| {
                h.el("tr", &[], |h| {
                    for title in [
                        "Seq",
                        "Time (UTC)",
                        "+",
                        "Event",
                        "Step",
                        "Attempt",
                        "Payload",
                    ] {
                        h.text_el("th", &[], title);
                    }
                });
            });
            h.el("tbody", &[], |h| {
                for entry in logs {
                    h.el("tr", &[("data-event", &entry.event)], |h| {
                        h.text_el("td", &[("class", &"num")], entry.seq);
                        h.text_el("td", &[("class", &"time")], time(entry.at));
                        h.text_el(
                            "td",
                            &[("class", &"num muted")],
                            start.map_or_else(String::new, |s| human(entry.at - s)),
                        );
                        h.el("td", &[], |h| {
                            h.text_el("span", &[("class", &event_class(entry.event))], entry.event);
                        });
                        h.text_el(
                            "td",
                            &[("class", &"mono")],
                            entry.step.as_deref().unwrap_or("—"),
                        );
                        h.text_el(
                            "td",
                            &[("class", &"num")],
                            entry
                                .attempt
                                .map_or_else(|| "—".to_owned(), |a| a.to_string()),
                        );
                        let payload = if entry.payload.is_null() {
                            String::new()
                        } else {
                            entry.payload.to_string()
                        };
                        h.text_el("td", &[("class", &"payload")], payload);
                    });
                }
            });
        },
    );
}

/// An error page: `title` and `message` for a person.
pub(crate) fn error(title: &str, message: &str, now: DateTime<Utc>) -> String {
    layout(title, now, |h| {
        h.el("p", &[("class", &"crumbs")], |h| {
            h.text_el("a", &[("href", &"/ui")], "← all sagas");
        });
        h.text_el("h1", &[], title);
        h.text_el(
            "p",
            &[("class", &"error"), ("id", &"error-message")],
            message,
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::SagaId;
    use saga_core::adapter::Cursor;
    use serde_json::json;

    const HOSTILE: &str = r#"<script>alert("pwned")</script> & 'x' "y""#;

    fn definition() -> saga_core::Saga<crate::saga::CheckoutData> {
        crate::saga::definition(crate::saga::Timing::default()).expect("valid definition")
    }

    fn instance() -> SagaInstance {
        let now = Utc::now();
        SagaInstance {
            id: SagaId::new(),
            saga_type: crate::saga::NAME.to_owned(),
            definition_version: 1,
            status: SagaStatus::Running,
            steps: vec![
                StepStatus::Succeeded,
                StepStatus::Running,
                StepStatus::Pending,
                StepStatus::Pending,
            ],
            cursor: Some(Cursor::first(1, Direction::Invoke)),
            data: json!({ "userId": HOSTILE, "note": "<img src=x onerror=alert(1)>" }),
            error: Some(format!("boom {HOSTILE}")),
            idempotency_key: Some(format!("{HOSTILE}:key")),
            version: 3,
            next_wake_at: None,
            deadline_at: None,
            log_seq: 2,
            created_at: now,
            updated_at: now,
        }
    }

    fn log(instance: &SagaInstance, seq: u32, event: LogEvent, step: &str) -> LogEntry {
        LogEntry {
            saga_id: instance.id,
            seq,
            event,
            step: Some(step.to_owned()),
            attempt: Some(1),
            payload: json!({ "reason": HOSTILE }),
            at: instance.created_at,
        }
    }

    fn assert_escaped(page: &str) {
        // The only script element is the page's own, loaded from /ui/assets.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(page.contains(r#"<script src="/ui/assets/ui.js" defer="">"#));
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains(r#""pwned""#), "{page}");
        assert!(page.contains("&lt;script&gt;alert("), "{page}");
        assert!(!page.contains(" style="), "inline styles break the CSP");
    }

    #[test]
    fn saga_data_is_escaped_on_the_saga_page() {
        let def = definition();
        let instance = instance();
        let logs = [
            log(&instance, 0, LogEvent::SagaStarted, "create_order"),
            log(&instance, 1, LogEvent::StepDispatched, "create_order"),
            log(&instance, 2, LogEvent::StepSucceeded, "create_order"),
        ];
        let page = saga(&SagaPage {
            instance: &instance,
            logs: &logs,
            stuck: None,
            definition: definition_for(def.definition(), &instance),
            operator_enabled: true,
            now: Utc::now(),
        });
        assert_escaped(&page);
        // Data, error, key and log payloads all show, escaped.
        assert!(
            page.contains("&amp; &#39;x&#39; \\&quot;y\\&quot;"),
            "{page}"
        );
        assert!(page.contains("boom &lt;script&gt;"), "{page}");
        assert!(
            page.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{page}"
        );
        for (step, status) in [
            ("create_order", "succeeded"),
            ("reserve_inventory", "running"),
            ("process_payment", "pending"),
            ("confirm_order", "pending"),
        ] {
            assert!(
                page.contains(&format!(r#"<tr data-step="{step}">"#)),
                "{step}"
            );
            let diagram_box = format!(r#"<g class="step step-{status}" data-step="{step}">"#);
            assert!(page.contains(&diagram_box), "{diagram_box}");
        }
        assert!(page.contains(r#"<svg xmlns="http://www.w3.org/2000/svg" class="diagram""#));
        // A running saga before its pivot: cancel and resume apply, retry does not.
        assert!(page.contains(r#"data-action="cancel">Cancel"#), "{page}");
        assert!(page.contains(r#"data-action="resume">Resume"#), "{page}");
        assert!(
            page.contains(r#"data-action="retry" disabled="""#),
            "{page}"
        );
    }

    #[test]
    fn without_a_token_the_saga_page_has_no_buttons() {
        let def = definition();
        let instance = instance();
        let page = saga(&SagaPage {
            instance: &instance,
            logs: &[],
            stuck: None,
            definition: definition_for(def.definition(), &instance),
            operator_enabled: false,
            now: Utc::now(),
        });
        assert!(!page.contains("data-action"), "{page}");
        assert!(page.contains("operator-disabled"), "{page}");
    }

    #[test]
    fn saga_data_is_escaped_on_the_list_page() {
        let def = definition();
        let mut hostile = instance();
        hostile.saga_type = HOSTILE.to_owned();
        let mut stuck = instance();
        stuck.updated_at = Utc::now() - chrono::Duration::seconds(120);
        let filters = Filters {
            saga_type: Some(HOSTILE.to_owned()),
            ..Filters::default()
        };
        let counts = Counts {
            per_status: SagaStatus::ALL.iter().map(|s| (*s, 1)).collect(),
            stuck: 1,
        };
        let stuck_ids: Stuck = [(
            stuck.id,
            StuckReason::Silent {
                since: stuck.updated_at,
            },
        )]
        .into_iter()
        .collect();
        let page = list(&ListPage {
            filters: &filters,
            counts: &counts,
            stuck: &stuck_ids,
            sagas: &[hostile, stuck.clone()],
            definition: def.definition(),
            now: Utc::now(),
        });
        assert_escaped(&page);
        // The type filter's value is escaped inside its attribute.
        assert!(
            page.contains(r#"value="&lt;script&gt;alert(&quot;pwned&quot;)"#),
            "{page}"
        );
        // The stuck saga is marked, and its current step named from the definition.
        let row = page
            .split(&format!(r#"<tr data-saga-id="{}""#, stuck.id))
            .nth(1)
            .and_then(|rest| rest.split("</tr>").next())
            .expect("the stuck saga's row");
        assert!(
            row.contains(r#"<span class="status stuck" title="no progress since"#),
            "{row}"
        );
        assert!(row.contains("<td>reserve_inventory</td>"), "{row}");
        assert!(page.contains("2 sagas shown"), "{page}");
    }

    #[test]
    fn a_stuck_saga_page_says_why() {
        let def = definition();
        let instance = instance();
        let reason = StuckReason::Silent {
            since: instance.updated_at,
        };
        let page = saga(&SagaPage {
            instance: &instance,
            logs: &[],
            stuck: Some(&reason),
            definition: definition_for(def.definition(), &instance),
            operator_enabled: true,
            now: Utc::now(),
        });
        assert!(page.contains(r#"<span class="status stuck""#), "{page}");
        assert!(
            page.contains(&format!("Stuck: {reason}.")),
            "the reason is spelled out: {page}"
        );
    }
}
