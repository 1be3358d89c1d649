//! The API docs: each documented service serves its OpenAPI document as JSON
//! and a page that renders it with Swagger UI, whose assets are compiled
//! into the binary (`assets/swagger-ui/`, see its README), so the page works
//! offline and loads nothing from another host.
//!
//! | route (under a base such as `/api/docs`) | serves |
//! |---|---|
//! | `{base}` | the HTML page |
//! | `{base}/openapi.json` | the OpenAPI 3.1 document |
//! | `{base}/swagger-ui-bundle.js`, `{base}/swagger-ui.css` | Swagger UI (vendored) |
//! | `{base}/api-docs.js` | the page's start-up script |
//!
//! The documents themselves come from the services' routers
//! ([`crate::gateway::openapi`], [`crate::orchestrator::openapi`]): a route is
//! added with `utoipa_axum::routes!` from its handler's `#[utoipa::path]`, so a
//! route cannot be served without being documented.

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The name of the bearer security scheme operator actions require.
pub const OPERATOR_TOKEN: &str = "operator_token";

/// Adds the [`OPERATOR_TOKEN`] bearer scheme (`Authorization: Bearer <OPERATOR_TOKEN>`).
#[derive(Debug)]
pub struct OperatorTokenScheme;

impl Modify for OperatorTokenScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            OPERATOR_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The orchestrator's OPERATOR_TOKEN, as `Authorization: Bearer <token>`. \
                         Without OPERATOR_TOKEN set, operator actions answer 403.",
                    ))
                    .build(),
            ),
        );
    }
}

const PAGE: &str = include_str!("../assets/api-docs.html");
const START_SCRIPT: &[u8] = include_bytes!("../assets/api-docs.js");
const SWAGGER_UI_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

/// Assets change only with the binary: a day of caching.
const ASSET_CACHE: &str = "public, max-age=86400";
/// The page and the document are revalidated on every load.
const NO_CACHE: &str = "no-cache";
/// Only this origin: the page could not load from another host even if it tried.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The docs routes under `base` (e.g. `/api/docs`, no trailing slash) for
/// `openapi`, the page titled `title`.
pub fn router(base: &'static str, title: &str, openapi: OpenApi) -> Router {
    let page = PAGE.replace("{{base}}", base).replace("{{title}}", title);
    let openapi = Arc::new(openapi);
    Router::new()
        .route(
            base,
            get(move || {
                let page = page.clone();
                async move {
                    (
                        [
                            (CONTENT_TYPE, "text/html; charset=utf-8"),
                            (CACHE_CONTROL, NO_CACHE),
                            (CONTENT_SECURITY_POLICY, PAGE_POLICY),
                            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        ],
                        page,
                    )
                }
            }),
        )
        .route(
            &format!("{base}/openapi.json"),
            get(move || async move {
                let mut response = Json(openapi.as_ref()).into_response();
                response
                    .headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
                response
            }),
        )
        .route(
            &format!("{base}/swagger-ui-bundle.js"),
            get(|| async { asset("text/javascript; charset=utf-8", SWAGGER_UI_JS) }),
        )
        .route(
            &format!("{base}/swagger-ui.css"),
            get(|| async { asset("text/css; charset=utf-8", SWAGGER_UI_CSS) }),
        )
        .route(
            &format!("{base}/api-docs.js"),
            get(|| async { asset("text/javascript; charset=utf-8", START_SCRIPT) }),
        )
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let headers: [(HeaderName, &str); 3] = [
        (CONTENT_TYPE, content_type),
        (CACHE_CONTROL, ASSET_CACHE),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
}
