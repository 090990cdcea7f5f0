//! `/api/jobs/{id}/logs`: a job's log events.

use std::sync::Arc;

use super::{ApiError, parse_id};
use crate::jobs::JobManager;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::ErrorBody;
use crate::logs::LogEntry;

/// Which log events to return.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// This level and above: `error`, `warn`, `info`, `debug` or `trace`.
    level: Option<String>,
    /// Events of tasks whose name contains this.
    task: Option<String>,
    /// Text to find (case-insensitive).
    q: Option<String>,
    /// The newest n (1 000 by default).
    #[param(value_type = Option<u64>)]
    limit: Option<String>,
}

/// A job's log events: `?level=error&task=…&q=text&limit=n` (newest `limit`, 1 000 by
/// default), oldest first.
#[utoipa::path(get, path = "/api/jobs/{id}/logs", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id"), LogQuery),
    responses(
        (status = 200, description = "Log events, oldest first", body = Vec<LogEntry>),
        (status = 400, description = "A bad id, level or limit", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(crate) async fn logs(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogQuery>,
) -> Result<Json<Vec<LogEntry>>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    if let Some(l) = &q.level
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
    let limit = match &q.limit {
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
        q.level.as_deref(),
        q.task.as_deref(),
        q.q.as_deref(),
        limit,
    )))
}
