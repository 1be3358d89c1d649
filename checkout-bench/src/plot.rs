//! `latency.svg`, written by hand (no plotting dependency): throughput per
//! concurrency level on the left, p50 / p95 / p99 / max latency per level on a
//! logarithmic axis on the right.

use std::fmt::Write as _;

use super::report::LevelReport;

/// A latency series: name, colour, value of a level.
type Series = (&'static str, &'static str, fn(&LevelReport) -> f64);

const W: f64 = 960.0;
const H: f64 = 420.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 360.0;

fn text(svg: &mut String, x: f64, y: f64, anchor: &str, size: u32, s: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{s}</text>"#
    );
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// The SVG document.
pub(crate) fn svg(levels: &[LevelReport]) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    svg.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    svg.push('\n');
    let n = levels.len().max(1) as f64;

    // Left: throughput bars.
    let (x0, x1) = (70.0, 440.0);
    text(
        &mut svg,
        (x0 + x1) / 2.0,
        25.0,
        "middle",
        15,
        "Completed sagas per second",
    );
    let top = nice_max(levels.iter().map(|l| l.sagas_per_s).fold(0.0, f64::max));
    axis(&mut svg, x0, x1);
    for k in 0..=5 {
        let v = top * f64::from(k) / 5.0;
        let y = BOTTOM - (BOTTOM - TOP) * f64::from(k) / 5.0;
        grid(&mut svg, x0, x1, y);
        text(&mut svg, x0 - 6.0, y + 4.0, "end", 11, &format!("{v:.0}"));
    }
    let slot = (x1 - x0) / n;
    for (i, l) in levels.iter().enumerate() {
        let cx = x0 + slot * (i as f64 + 0.5);
        let h = (BOTTOM - TOP) * l.sagas_per_s / top;
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4c78a8"/>"##,
            cx - slot * 0.3,
            BOTTOM - h,
            slot * 0.6
        );
        text(
            &mut svg,
            cx,
            BOTTOM - h - 5.0,
            "middle",
            11,
            &format!("{:.0}", l.sagas_per_s),
        );
        text(
            &mut svg,
            cx,
            BOTTOM + 16.0,
            "middle",
            12,
            &format!("c={}", l.concurrency),
        );
    }
    text(
        &mut svg,
        (x0 + x1) / 2.0,
        BOTTOM + 40.0,
        "middle",
        12,
        "closed-loop clients",
    );

    // Right: latency percentiles, log scale.
    let (x0, x1) = (560.0, 930.0);
    text(
        &mut svg,
        (x0 + x1) / 2.0,
        25.0,
        "middle",
        15,
        "Latency (ms, log scale)",
    );
    axis(&mut svg, x0, x1);
    let values = levels
        .iter()
        .flat_map(|l| [l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms])
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi <= 0.0 {
        (0.0, 1.0)
    } else {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    };
    let y_of = |ms: f64| BOTTOM - (BOTTOM - TOP) * (ms.max(1e-3).log10() - lo) / (hi - lo);
    let mut decade = lo;
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(decade);
            let y = y_of(v);
            if y < TOP - 0.5 {
                continue;
            }
            grid(&mut svg, x0, x1, y);
            text(&mut svg, x0 - 6.0, y + 4.0, "end", 11, &trim(v));
        }
        decade += 1.0;
    }
    let slot = (x1 - x0) / n;
    let x_of = |i: usize| x0 + slot * (i as f64 + 0.5);
    for (i, l) in levels.iter().enumerate() {
        text(
            &mut svg,
            x_of(i),
            BOTTOM + 16.0,
            "middle",
            12,
            &format!("c={}", l.concurrency),
        );
    }
    text(
        &mut svg,
        (x0 + x1) / 2.0,
        BOTTOM + 40.0,
        "middle",
        12,
        "closed-loop clients",
    );
    let series: [Series; 4] = [
        ("p50", "#54a24b", |l| l.p50_ms),
        ("p95", "#f58518", |l| l.p95_ms),
        ("p99", "#e45756", |l| l.p99_ms),
        ("max", "#9d755d", |l| l.max_ms),
    ];
    for (k, (name, color, value)) in series.iter().enumerate() {
        let points: Vec<String> = levels
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{:.1},{:.1}", x_of(i), y_of(value(l))))
            .collect();
        let dash = if *name == "max" {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            points.join(" ")
        );
        for (i, l) in levels.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{name} c={}: {:.2} ms</title></circle>"#,
                x_of(i),
                y_of(value(l)),
                l.concurrency,
                value(l)
            );
        }
        let lx = x0 + 10.0 + k as f64 * 80.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/>"#,
            H - 12.0,
            lx + 20.0,
            H - 12.0
        );
        text(&mut svg, lx + 25.0, H - 8.0, "start", 12, name);
    }
    svg.push_str("</svg>\n");
    svg
}

fn axis(svg: &mut String, x0: f64, x1: f64) {
    let _ = writeln!(
        svg,
        r#"<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{BOTTOM}" stroke="black"/><line x1="{x0}" y1="{BOTTOM}" x2="{x1}" y2="{BOTTOM}" stroke="black"/>"#
    );
}

fn grid(svg: &mut String, x0: f64, x1: f64, y: f64) {
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/>"##
    );
}

fn trim(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_an_svg_with_one_bar_per_level() {
        let level = |c, rate, p50| LevelReport {
            concurrency: c,
            duration_s: 1.0,
            sagas_per_s: rate,
            succeeded: 1,
            compensated: 0,
            errors: 0,
            error_kinds: Vec::new(),
            p50_ms: p50,
            p95_ms: p50 * 2.0,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 4.0,
            mean_ms: p50,
            per_second: Vec::new(),
            rss: Vec::new(),
            cpu: Vec::new(),
            cpu_ms_per_checkout: None,
            loadavg: String::new(),
        };
        let svg = svg(&[level(1, 100.0, 4.0), level(8, 400.0, 12.0)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#4c78a8\"").count(), 2);
        assert!(!svg.contains("NaN"));
    }
}
