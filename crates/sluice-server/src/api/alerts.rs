//! `/api/alerts`: rules, active alerts, deliveries.

use std::sync::Arc;

use super::ApiError;
use super::jobs::alerts_of;
use crate::jobs::JobManager;
use crate::jobs::{Delivery, now_ms};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

/// The alert rules, the alerts pending or firing, and the latest deliveries.
pub(crate) async fn alerts(State(m): State<Arc<JobManager>>) -> Json<serde_json::Value> {
    let rules = m
        .alerts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .rules()
        .to_vec();
    let deliveries: Vec<Delivery> = m
        .deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    Json(serde_json::json!({
        "rules": rules,
        "active": alerts_of(&m, None),
        "deliveries": deliveries,
    }))
}

/// Adds an alert rule.
pub(crate) async fn add_alert_rule(
    State(m): State<Arc<JobManager>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    m.check_token(&headers)?;
    let rule: crate::alerts::AlertRule = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected an alert rule {{\"name\", \"condition\": {{\"type\", …}}, \"for_ms\"?, \"job\"?, \"webhook\": {{\"url\", \"format\"?}}}}: {e}"),
        )
    })?;
    let name = rule.name.clone();
    m.alerts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(rule)
        .map_err(|e| {
            let status = match e.message.contains("exists") {
                true => StatusCode::CONFLICT,
                false => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, "bad_rule", e.message)
        })?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "name": name })),
    ))
}

/// Deletes an alert rule; its firing alerts resolve.
pub(crate) async fn delete_alert_rule(
    State(m): State<Arc<JobManager>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    m.check_token(&headers)?;
    let sends = m
        .alerts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name, now_ms())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no alert rule `{name}`"),
            )
        })?;
    m.send(sends);
    Ok(Json(serde_json::json!({ "deleted": name })))
}
