//! Mermaid diagrams of definitions and of one instance's progress.

use std::fmt::Write;

use crate::definition::{SagaDefinition, StepKind};
use crate::state::{SagaInstance, SagaStatus, StepStatus};

fn node_id(index: usize) -> String {
    format!("s{index}")
}

fn label(def: &SagaDefinition, index: usize) -> String {
    let step = &def.steps[index];
    let kind = match step.kind {
        StepKind::Compensatable => "",
        StepKind::Pivot => " (pivot)",
        StepKind::Retriable => " (retriable)",
    };
    format!(
        "{}{kind}<br/><small>{}</small>",
        step.name,
        step.action.label()
    )
}

fn skeleton(def: &SagaDefinition) -> String {
    let mut out = String::from("flowchart LR\n");
    let _ = writeln!(out, "    start((start))");
    for i in 0..def.steps.len() {
        let _ = writeln!(out, "    {}[\"{}\"]", node_id(i), label(def, i));
        if let Some(comp) = &def.steps[i].compensation {
            let _ = writeln!(
                out,
                "    c{i}[/\"undo {}<br/><small>{}</small>\"/]",
                def.steps[i].name,
                comp.label()
            );
        }
    }
    let _ = writeln!(out, "    done((done))");
    let mut previous = "start".to_owned();
    for i in 0..def.steps.len() {
        let _ = writeln!(out, "    {previous} --> {}", node_id(i));
        previous = node_id(i);
    }
    let _ = writeln!(out, "    {previous} --> done");
    for i in 0..def.steps.len() {
        if def.steps[i].compensation.is_some() {
            let _ = writeln!(out, "    {} -. on failure .-> c{i}", node_id(i));
        }
    }
    out
}

/// A flowchart of the definition: steps in order, compensations dotted.
#[must_use]
pub(crate) fn definition(def: &SagaDefinition) -> String {
    skeleton(def)
}

/// The definition's flowchart coloured by the instance's step states.
#[must_use]
pub(crate) fn instance(def: &SagaDefinition, instance: &SagaInstance) -> String {
    let mut out = skeleton(def);
    out.push_str("    classDef succeeded fill:#c8e6c9,stroke:#2e7d32\n");
    out.push_str("    classDef running fill:#bbdefb,stroke:#1565c0\n");
    out.push_str("    classDef failed fill:#ffcdd2,stroke:#c62828\n");
    out.push_str("    classDef uncertain fill:#ffe0b2,stroke:#ef6c00\n");
    out.push_str("    classDef compensated fill:#e0e0e0,stroke:#616161\n");
    for (i, status) in instance.steps.iter().enumerate().take(def.steps.len()) {
        let class = match status {
            StepStatus::Pending => continue,
            StepStatus::Running | StepStatus::Compensating => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Uncertain => "uncertain",
            StepStatus::Compensated => "compensated",
        };
        let _ = writeln!(out, "    class {} {class}", node_id(i));
        if matches!(status, StepStatus::Compensated | StepStatus::Compensating) {
            let class = if *status == StepStatus::Compensated {
                "succeeded"
            } else {
                "running"
            };
            let _ = writeln!(out, "    class c{i} {class}");
        }
    }
    let end_class = match instance.status {
        SagaStatus::Completed => Some("succeeded"),
        SagaStatus::Failed => Some("failed"),
        SagaStatus::Compensated => Some("compensated"),
        SagaStatus::Running | SagaStatus::Compensating => None,
    };
    if let Some(class) = end_class {
        let _ = writeln!(out, "    class done {class}");
    }
    out
}
