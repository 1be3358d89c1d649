//! The operator's web pages, served by the orchestrator under `/ui`:
//!
//! - `GET /ui`: counts per status and the recent sagas, filtered by status,
//!   type, age and stuck (a GET form);
//! - `GET /ui/sagas/{id}`: one saga: summary, operator actions, step
//!   diagram (inline SVG drawn here), steps with attempts and timings, data
//!   and the full log timeline;
//! - `GET /ui/assets/ui.css` and `ui.js`: the stylesheet and the script of
//!   the Retry / Resume / Cancel buttons, compiled into the binary.
//!
//! Pages are rendered on the server with [`html::Html`], which escapes every
//! value. Every response carries `Content-Security-Policy: default-src 'self'`
//! (no inline script or style anywhere). The buttons call the JSON operator
//! API (`POST /sagas/{id}/{action}`) with the token a person types; without
//! it nothing is sent and the page is read-only.

mod diagram;
mod html;
mod pages;
mod query;
mod steps;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use chrono::Utc;
use saga_core::SagaId;

use super::Orchestrator;

/// The Content-Security-Policy of every UI response: scripts, styles and
/// everything else only from this origin, no inline code.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The UI's routes (merge them into the orchestrator's router).
pub(crate) fn router(state: Orchestrator) -> Router {
    Router::new()
        .route("/ui", get(list))
        .route("/ui/", get(list))
        .route("/ui/sagas/{id}", get(saga))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/{*rest}", get(unknown))
        .with_state(state)
        .layer(middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A rendered page and its status.
struct Page(StatusCode, String);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

fn error_page(status: StatusCode, message: &str) -> Page {
    let title = status.canonical_reason().unwrap_or("Error");
    Page(status, pages::error(title, message, Utc::now()))
}

/// A failure of the store: logged, shown as a 503 page without details.
fn unavailable(e: &saga_core::Error) -> Page {
    tracing::warn!(error = %e, "saga UI: the store failed");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The saga store is unavailable; try again.",
    )
}

async fn list(State(state): State<Orchestrator>, Query(raw): Query<query::RawFilters>) -> Page {
    let filters = match query::Filters::parse(raw) {
        Ok(filters) => filters,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, &message),
    };
    let now = Utc::now();
    let stuck = match query::stuck(&state.engine).await {
        Ok(stuck) => stuck,
        Err(e) => return unavailable(&e),
    };
    let counts = match query::counts(&state.engine, &stuck).await {
        Ok(counts) => counts,
        Err(e) => return unavailable(&e),
    };
    let sagas = match query::recent(&state.engine, &filters, now, &stuck).await {
        Ok(sagas) => sagas,
        Err(e) => return unavailable(&e),
    };
    let page = pages::ListPage {
        filters: &filters,
        counts: &counts,
        sagas: &sagas,
        stuck: &stuck,
        definition: state.saga.definition(),
        now,
    };
    Page(StatusCode::OK, pages::list(&page))
}

async fn saga(State(state): State<Orchestrator>, Path(id): Path<String>) -> Page {
    let Ok(id) = id.parse::<SagaId>() else {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!("`{id}` is not a saga id (a UUID)."),
        );
    };
    let instance = match state.engine.get(id).await {
        Ok(Some(instance)) => instance,
        Ok(None) => {
            return error_page(StatusCode::NOT_FOUND, &format!("There is no saga {id}."));
        }
        Err(e) => return unavailable(&e),
    };
    let logs = match state.engine.logs(id).await {
        Ok(logs) => logs,
        Err(e) => return unavailable(&e),
    };
    let stuck = state.engine.stuck_reason(&instance);
    let page = pages::SagaPage {
        instance: &instance,
        logs: &logs,
        stuck: stuck.as_ref(),
        definition: pages::definition_for(state.saga.definition(), &instance),
        operator_enabled: state.config.operator_token.is_some(),
        now: Utc::now(),
    };
    Page(StatusCode::OK, pages::saga(&page))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "ui.css" => ("text/css; charset=utf-8", CSS),
        "ui.js" => ("text/javascript; charset=utf-8", JS),
        _ => return error_page(StatusCode::NOT_FOUND, "No such asset.").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn unknown() -> Page {
    error_page(StatusCode::NOT_FOUND, "There is no such page.")
}
