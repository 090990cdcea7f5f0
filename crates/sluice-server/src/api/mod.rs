//! The REST API, by resource: jobs, logs, alerts; errors and the router here.
//!
//! Each handler carries its route and its OpenAPI operation (`#[utoipa::path]`), and the
//! router is built from those, so the document served at `/api/openapi.json` lists
//! exactly the routes served, with the request and response types the handlers use.

mod alerts;
pub(crate) mod jobs;
mod logs;
mod openapi;

pub use openapi::openapi_document;

use std::sync::Arc;

use crate::jobs::JobManager;
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A JSON error: `{"error": {"code": …, "message": …}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable code: `bad_request`, `bad_sql`, `not_found`, `unauthorized`, `not_running`, …
    code: &'static str,
    /// For a person.
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(id: u64) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no job {id}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("job ids are numbers, not `{id}`"),
        )
    })
}

/// The documented routes: each handler with its `#[utoipa::path]`.
fn api_routes() -> OpenApiRouter<Arc<JobManager>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(jobs::list, jobs::submit))
        .routes(routes!(jobs::detail))
        .routes(routes!(jobs::cancel))
        .routes(routes!(logs::logs))
        .routes(routes!(jobs::savepoint))
        .routes(routes!(jobs::checkpoints))
        .routes(routes!(jobs::lineage_all))
        .routes(routes!(alerts::alerts))
        .routes(routes!(alerts::add_alert_rule))
        .routes(routes!(alerts::delete_alert_rule))
        .routes(routes!(crate::prometheus::prometheus))
        .routes(routes!(openapi::openapi))
}

/// The API's router.
pub fn router(manager: Arc<JobManager>) -> Router {
    let (api, doc) = api_routes().split_for_parts();
    openapi::keep(doc);
    api.merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /api/openapi.json",
            )
        })
        .with_state(manager)
}
