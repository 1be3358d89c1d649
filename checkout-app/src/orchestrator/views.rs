//! What the orchestrator's routes answer, as types: serialized on the wire
//! and described in the OpenAPI document by the same declarations.
//!
//! Fields are declared in alphabetical order of their JSON names: the
//! `serde_json::json!` maps these types replace printed keys in that order,
//! so the bytes on the wire are unchanged.

use chrono::{DateTime, Utc};
use saga_core::{LogEntry, LogEvent, SagaId, SagaInstance, SagaStatus, StepStatus};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::SchemaType};

use crate::http::ErrorBody;
use crate::saga::CheckoutData;

/// A string schema with the values `values`.
fn string_enum(description: &str, values: impl IntoIterator<Item = &'static str>) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(description))
            .enum_values(Some(values))
            .build(),
    )
}

/// The schema of a saga status: every [`SagaStatus`] by its wire name.
pub(crate) fn saga_status_schema() -> RefOr<Schema> {
    RefOr::T(string_enum(
        "Where the saga is in its life: `running` and `compensating` are still going; \
         `completed` (every step succeeded), `compensated` (a step failed and the earlier \
         ones were undone) and `failed` (an operator is needed) are final.",
        SagaStatus::ALL.map(SagaStatus::as_str),
    ))
}

fn log_event_schema() -> RefOr<Schema> {
    RefOr::T(string_enum(
        "What happened.",
        LogEvent::ALL.map(LogEvent::as_str),
    ))
}

fn step_status_schema() -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(
                "The step's state: `pending`, `running`, `succeeded`, `failed`, `uncertain` \
                 (it may have taken effect), `compensating` or `compensated`.",
            ))
            .examples(["succeeded"])
            .build(),
    ))
}

/// The answer to a checkout: `200` completed, `202` still running, `422`
/// compensated (the order is cancelled), `500` failed (an operator is needed).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "success": true,
    "orderId": "0193a5b0-7c1e-7cc1-9a4c-2f4d5e6f7a8b",
    "sagaId": "0193a5b0-7c1d-7aa0-8b3c-1e2f3a4b5c6d",
    "status": "completed",
    "message": "Order placed successfully"
}))]
pub struct CheckoutOutcome {
    /// For a person: the outcome, or why the order was cancelled.
    pub message: String,
    /// The order the checkout created.
    #[schema(value_type = Option<uuid::Uuid>, required = true)]
    pub order_id: Value,
    /// The saga running the checkout (`GET /api/sagas/{sagaId}`).
    #[schema(value_type = uuid::Uuid)]
    pub saga_id: SagaId,
    /// The saga's status.
    #[schema(schema_with = saga_status_schema)]
    pub status: SagaStatus,
    /// `true` when the order is placed, `false` when it is not, `null` while
    /// the saga is still running (`202`).
    #[schema(required = true)]
    pub success: Option<bool>,
}

/// A `422` or `500` answer to a checkout: the saga's outcome when one ran
/// (compensated or failed), else the error shape (a refused request, such as
/// an unknown product or a wrong price).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the two shapes in the document; the handlers build its variants' types
pub enum CheckoutRefused {
    /// The saga ran and was compensated (`422`) or failed (`500`).
    Outcome(CheckoutOutcome),
    /// The request was refused before a saga started.
    Error(ErrorBody),
}

/// One step of a saga and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// The step's name (`create_order`, `reserve_inventory`, `process_payment`, `confirm_order`).
    pub name: String,
    /// The step's state.
    #[schema(schema_with = step_status_schema)]
    pub status: StepStatus,
}

/// A saga instance: its status, steps and data.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    /// The attempt of the current step, while the saga is unfinished.
    #[schema(required = true)]
    pub attempt: Option<u32>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// The step being worked on, while the saga is unfinished.
    #[schema(required = true)]
    pub current_step: Option<String>,
    /// The checkout's data: the order id, the lines with catalogue prices,
    /// the total, the reservation and payment ids once known.
    #[schema(value_type = CheckoutData)]
    pub data: Value,
    /// Why the saga is compensating or failed.
    #[schema(required = true)]
    pub error: Option<String>,
    /// The saga's id.
    #[schema(value_type = uuid::Uuid)]
    pub id: SagaId,
    /// When the engine next looks at the saga (a timeout, a retry, the deadline).
    #[schema(required = true)]
    pub next_wake_at: Option<DateTime<Utc>>,
    /// Life-cycle status.
    #[schema(schema_with = saga_status_schema)]
    pub status: SagaStatus,
    /// Every step of the definition, in order.
    pub steps: Vec<StepView>,
    /// Why the saga counts as stuck; only in `GET /sagas?stuck=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck: Option<StuckView>,
    /// The saga definition's name (`checkout`).
    #[serde(rename = "type")]
    pub saga_type: String,
    /// Time of the last transition.
    pub updated_at: DateTime<Utc>,
    /// The definition version the saga started with.
    pub version: u32,
}

/// One entry of a saga's audit log (`saga_logs`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogView {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The attempt it concerns, if any.
    #[schema(required = true)]
    pub attempt: Option<u32>,
    /// What happened.
    #[schema(schema_with = log_event_schema)]
    pub event: LogEvent,
    /// Details: the command sent, the reply, the error.
    pub payload: Value,
    /// The saga.
    #[schema(value_type = uuid::Uuid)]
    pub saga_id: SagaId,
    /// Position in the saga's log, from 0, without gaps.
    pub seq: u32,
    /// The step it concerns, if any.
    #[schema(required = true)]
    pub step: Option<String>,
}

impl From<LogEntry> for LogView {
    fn from(entry: LogEntry) -> Self {
        Self {
            at: entry.at,
            attempt: entry.attempt,
            event: entry.event,
            payload: entry.payload,
            saga_id: entry.saga_id,
            seq: entry.seq,
            step: entry.step,
        }
    }
}

/// A saga with its ordered audit log and a Mermaid diagram of its steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaDetail {
    /// The saga.
    #[serde(flatten)]
    pub saga: SagaView,
    /// A Mermaid flowchart of the steps and their states (`null` when the
    /// saga's definition is not registered with this engine).
    #[schema(required = true)]
    pub diagram: Option<String>,
    /// The audit log, in order.
    pub logs: Vec<LogView>,
}

/// Why a saga counts as stuck.
#[derive(Debug, Serialize, ToSchema)]
pub struct StuckView {
    /// The rule it meets, in words.
    pub detail: String,
    /// The rule: `silent` (no change past its step's timeout and retry
    /// delay), `past_deadline` (running before its pivot after its deadline)
    /// or `retrying` (a step that retries without limit, many attempts on).
    pub reason: String,
}

impl From<&saga_core::stuck::StuckReason> for StuckView {
    fn from(reason: &saga_core::stuck::StuckReason) -> Self {
        Self {
            detail: reason.to_string(),
            reason: reason.as_str().to_owned(),
        }
    }
}

/// A page of sagas.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaList {
    /// The sagas.
    pub sagas: Vec<SagaView>,
}

impl SagaView {
    /// The view of `instance`, whose steps are named by `step_names`.
    pub(crate) fn new(instance: &SagaInstance, step_names: &[&str]) -> Self {
        let steps = step_names
            .iter()
            .zip(&instance.steps)
            .map(|(name, status)| StepView {
                name: (*name).to_owned(),
                status: *status,
            })
            .collect();
        Self {
            attempt: instance.cursor.map(|c| c.attempt),
            created_at: instance.created_at,
            current_step: instance
                .cursor
                .and_then(|c| step_names.get(c.step))
                .map(|name| (*name).to_owned()),
            data: instance.data.clone(),
            error: instance.error.clone(),
            id: instance.id,
            next_wake_at: instance.next_wake_at,
            status: instance.status,
            steps,
            stuck: None,
            saga_type: instance.saga_type.clone(),
            updated_at: instance.updated_at,
            version: instance.definition_version,
        }
    }
}
