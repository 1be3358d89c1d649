//! The step diagram, drawn on the server as inline SVG: a box per step in
//! order, coloured by its status, forward arrows from start to done, and
//! below each compensatable step its compensation, reached by a dashed
//! "on failure" arrow and coloured once it runs. No script is needed; the
//! colours come from the UI's stylesheet (classes `step-<status>` and
//! `comp-<state>`).

use saga_core::{StepKind, StepStatus};

use super::html::Html;

/// What the diagram needs of one step.
#[derive(Clone, Debug)]
pub(crate) struct DiagramStep<'a> {
    /// The step's name.
    pub(crate) name: &'a str,
    /// Compensatable, pivot or retriable.
    pub(crate) kind: StepKind,
    /// Whether the step has a compensation.
    pub(crate) compensable: bool,
    /// The step's status in this saga.
    pub(crate) status: StepStatus,
}

const BOX_W: u32 = 160;
const BOX_H: u32 = 48;
const GAP: u32 = 44;
const TOP: u32 = 16;
const LEFT: u32 = 56;
const COMP_TOP: u32 = TOP + BOX_H + 56;
const RADIUS: u32 = 16;

/// The status as the CSS class suffix and label: `succeeded`, `running`...
pub(crate) fn step_status_str(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Uncertain => "uncertain",
        StepStatus::Compensating => "compensating",
        StepStatus::Compensated => "compensated",
        // StepStatus is non-exhaustive: a status added later reads as unknown.
        _ => "unknown",
    }
}

/// `pivot`, `retriable` or nothing.
pub(crate) const fn kind_str(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Pivot => "pivot",
        StepKind::Retriable => "retriable",
        // StepKind is non-exhaustive: anything new reads as a plain step.
        _ => "",
    }
}

/// Shortens a name to fit a box.
fn fit(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_owned()
    } else {
        let mut short: String = name.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// Draws the diagram of `steps` into `html`.
pub(crate) fn draw(html: &mut Html, steps: &[DiagramStep<'_>]) {
    let n = u32::try_from(steps.len()).unwrap_or(u32::MAX / (BOX_W + GAP));
    let step_x = |i: u32| LEFT + i * (BOX_W + GAP);
    let done_x = step_x(n) + RADIUS;
    let width = done_x + RADIUS + 8;
    let height = COMP_TOP + BOX_H + 12;
    let mid = TOP + BOX_H / 2;
    let view_box = format!("0 0 {width} {height}");
    html.el(
        "svg",
        &[
            ("xmlns", &"http://www.w3.org/2000/svg"),
            ("class", &"diagram"),
            ("id", &"diagram"),
            ("viewBox", &view_box),
            ("width", &width),
            ("height", &height),
            ("role", &"img"),
            ("aria-label", &"step diagram"),
        ],
        |h| {
            h.el("defs", &[], |h| {
                for (id, class) in [("arrow", "arrow-head"), ("arrow-comp", "arrow-head comp")] {
                    h.el(
                        "marker",
                        &[
                            ("id", &id),
                            ("viewBox", &"0 0 10 10"),
                            ("refX", &9),
                            ("refY", &5),
                            ("markerWidth", &7),
                            ("markerHeight", &7),
                            ("orient", &"auto-start-reverse"),
                        ],
                        |h| {
                            h.empty("path", &[("d", &"M0,0 L10,5 L0,10 z"), ("class", &class)]);
                        },
                    );
                }
            });
            // start -> steps -> done
            terminal(h, RADIUS + 8, mid, "start");
            let mut from = 2 * RADIUS + 8;
            for i in 0..n {
                arrow(h, from, mid, step_x(i), mid, "arrow", "url(#arrow)");
                from = step_x(i) + BOX_W;
            }
            arrow(h, from, mid, done_x - RADIUS, mid, "arrow", "url(#arrow)");
            terminal(h, done_x, mid, "done");
            for (i, step) in (0..n).zip(steps) {
                step_box(h, step_x(i), step);
            }
        },
    );
}

fn terminal(h: &mut Html, cx: u32, cy: u32, label: &str) {
    h.el("g", &[("class", &"terminal")], |h| {
        h.empty("circle", &[("cx", &cx), ("cy", &cy), ("r", &RADIUS)]);
        h.text_el(
            "text",
            &[("x", &cx), ("y", &(cy + 4)), ("text-anchor", &"middle")],
            label,
        );
    });
}

fn arrow(h: &mut Html, x1: u32, y1: u32, x2: u32, y2: u32, class: &str, marker: &str) {
    h.empty(
        "line",
        &[
            ("class", &class),
            ("x1", &x1),
            ("y1", &y1),
            ("x2", &x2),
            ("y2", &y2),
            ("marker-end", &marker),
        ],
    );
}

fn step_box(h: &mut Html, x: u32, step: &DiagramStep<'_>) {
    let status = step_status_str(step.status);
    let class = format!("step step-{status}");
    let kind = kind_str(step.kind);
    let subtitle = if kind.is_empty() {
        status.to_owned()
    } else {
        format!("{status} · {kind}")
    };
    h.el("g", &[("class", &class), ("data-step", &step.name)], |h| {
        h.text_el("title", &[], format!("{}: {subtitle}", step.name));
        h.empty(
            "rect",
            &[
                ("x", &x),
                ("y", &TOP),
                ("width", &BOX_W),
                ("height", &BOX_H),
                ("rx", &6),
            ],
        );
        let cx = x + BOX_W / 2;
        h.text_el(
            "text",
            &[
                ("x", &cx),
                ("y", &(TOP + 20)),
                ("text-anchor", &"middle"),
                ("class", &"name"),
            ],
            fit(step.name, 20),
        );
        h.text_el(
            "text",
            &[
                ("x", &cx),
                ("y", &(TOP + 38)),
                ("text-anchor", &"middle"),
                ("class", &"sub"),
            ],
            subtitle,
        );
    });
    if !step.compensable {
        return;
    }
    let state = match step.status {
        StepStatus::Compensated => "done",
        StepStatus::Compensating => "active",
        _ => "idle",
    };
    let cx = x + BOX_W / 2;
    let class = format!("comp comp-{state}");
    h.el("g", &[("class", &class)], |h| {
        arrow(
            h,
            cx,
            TOP + BOX_H,
            cx,
            COMP_TOP,
            "arrow comp",
            "url(#arrow-comp)",
        );
        h.text_el(
            "text",
            &[
                ("x", &(cx + 6)),
                ("y", &(TOP + BOX_H + 32)),
                ("class", &"hint"),
            ],
            "on failure",
        );
        let skew = 10;
        let points = format!(
            "{},{} {},{} {},{} {},{}",
            x + skew,
            COMP_TOP,
            x + BOX_W,
            COMP_TOP,
            x + BOX_W - skew,
            COMP_TOP + BOX_H,
            x,
            COMP_TOP + BOX_H
        );
        h.empty("polygon", &[("points", &points)]);
        h.text_el(
            "text",
            &[
                ("x", &cx),
                ("y", &(COMP_TOP + 20)),
                ("text-anchor", &"middle"),
                ("class", &"name"),
            ],
            fit(&format!("undo {}", step.name), 22),
        );
        let label = match state {
            "done" => "compensated",
            "active" => "compensating",
            _ => "not run",
        };
        h.text_el(
            "text",
            &[
                ("x", &cx),
                ("y", &(COMP_TOP + 38)),
                ("text-anchor", &"middle"),
                ("class", &"sub"),
            ],
            label,
        );
    });
}
