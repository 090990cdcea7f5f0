//! `/api/jobs/{id}/logs`: a job's log events.

use std::sync::Arc;

use super::{ApiError, parse_id};
use crate::jobs::JobManager;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

/// A job's log events: `?level=error&task=…&q=text&limit=n` (newest `limit`, 1 000 by
/// default), oldest first.
pub(crate) async fn logs(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Vec<crate::logs::LogEntry>>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    if let Some(l) = q.get("level")
        && !matches!(
            l.to_ascii_lowercase().as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        )
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("level `{l}`: use error, warn, info, debug or trace"),
        ));
    }
    let limit = match q.get("limit") {
        None => 1000,
        Some(l) => l.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("limit `{l}` is not a number"),
            )
        })?,
    };
    Ok(Json(crate::logs::store().query(
        &j.name,
        q.get("level").map(String::as_str),
        q.get("task").map(String::as_str),
        q.get("q").map(String::as_str),
        limit,
    )))
}
