//! The REST API, by resource: jobs, logs, alerts; errors and the router here.

mod alerts;
pub(crate) mod jobs;
mod logs;
mod openapi;

pub use openapi::{ROUTES, openapi_document};

use std::sync::Arc;

use crate::jobs::JobManager;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

/// A JSON error: `{"error": {"code": …, "message": …}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
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
        (
            self.status,
            Json(serde_json::json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
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

/// The API's router.
pub fn router(manager: Arc<JobManager>) -> Router {
    Router::new()
        .route("/api/jobs", get(jobs::list).post(jobs::submit))
        .route("/api/jobs/{id}", get(jobs::detail))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/logs", get(logs::logs))
        .route("/api/jobs/{id}/savepoint", post(jobs::savepoint))
        .route("/api/jobs/{id}/checkpoints", get(jobs::checkpoints))
        .route("/api/lineage", get(jobs::lineage_all))
        .route("/api/alerts", get(alerts::alerts))
        .route("/api/alerts/rules", post(alerts::add_alert_rule))
        .route(
            "/api/alerts/rules/{name}",
            axum::routing::delete(alerts::delete_alert_rule),
        )
        .route("/metrics", get(crate::prometheus::prometheus))
        .route("/api/openapi.json", get(openapi::openapi))
        .merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /api/openapi.json",
            )
        })
        .with_state(manager)
}
