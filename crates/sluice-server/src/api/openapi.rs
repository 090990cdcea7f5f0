//! The OpenAPI document: its header here, its operations from the handlers.

use std::sync::OnceLock;

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice server", description = "Submit, watch and stop streaming SQL jobs."),
    tags(
        (name = "jobs", description = "Jobs: submit, list, inspect, cancel, savepoints, checkpoints, logs"),
        (name = "alerts", description = "Alert rules, firing alerts and webhook deliveries"),
        (name = "sql", description = "A SQL client's session: plan a statement, run a SELECT and stream its rows"),
        (name = "metrics", description = "Prometheus metrics and this document")
    )
)]
struct Header;

/// The document before the handlers' operations are added.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    Header::openapi()
}

static DOC: OnceLock<serde_json::Value> = OnceLock::new();

/// The OpenAPI document of the REST API (built once from the handlers).
pub fn openapi_document() -> &'static serde_json::Value {
    DOC.get_or_init(|| json(super::api_routes().into_openapi()))
}

/// Keeps the document of a router just built (every router's is the same), so that
/// serving it does not build the routes a second time.
pub(super) fn keep(doc: utoipa::openapi::OpenApi) {
    DOC.get_or_init(|| json(doc));
}

fn json(doc: utoipa::openapi::OpenApi) -> serde_json::Value {
    serde_json::to_value(doc).expect("invariant: an OpenAPI document serializes")
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "metrics",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object)))]
pub(crate) async fn openapi() -> Json<&'static serde_json::Value> {
    Json(openapi_document())
}
