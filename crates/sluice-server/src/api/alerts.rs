//! `/api/alerts`: rules, active alerts, deliveries.

use std::sync::Arc;

use super::ApiError;
use super::jobs::alerts_of;
use crate::jobs::JobManager;
use crate::jobs::{Delivery, now_ms};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::ErrorBody;
use crate::alerts::{ActiveAlert, AlertRule};

/// The alert rules, the alerts pending or firing, and the latest webhook deliveries.
#[derive(Serialize, ToSchema)]
pub(crate) struct AlertsView {
    rules: Vec<AlertRule>,
    active: Vec<ActiveAlert>,
    /// The latest deliveries, oldest first.
    deliveries: Vec<Delivery>,
    /// Alerts fired and resolved, oldest first (the latest 500, kept across restarts).
    history: Vec<crate::alert_history::AlertEvent>,
}

/// A rule was added.
#[derive(Serialize, ToSchema)]
pub(crate) struct RuleAdded {
    name: String,
}

/// A rule was deleted.
#[derive(Serialize, ToSchema)]
pub(crate) struct RuleDeleted {
    deleted: String,
}

/// The alert rules, the alerts pending or firing, the latest deliveries, and the alerts
/// fired and resolved.
#[utoipa::path(get, path = "/api/alerts", tag = "alerts",
    responses((status = 200, description = "Rules, active alerts, deliveries and history", body = AlertsView)))]
pub(crate) async fn alerts(State(m): State<Arc<JobManager>>) -> Json<AlertsView> {
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
    Json(AlertsView {
        rules,
        active: alerts_of(&m, None),
        deliveries,
        history: m
            .alert_history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events(),
    })
}

/// Adds an alert rule.
#[utoipa::path(post, path = "/api/alerts/rules", tag = "alerts",
    request_body = AlertRule,
    responses(
        (status = 201, description = "Added", body = RuleAdded),
        (status = 400, description = "A malformed rule", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 403, description = "The ca_file is outside the allowed directories", body = ErrorBody),
        (status = 409, description = "A rule of that name exists", body = ErrorBody)))]
pub(crate) async fn add_alert_rule(
    State(m): State<Arc<JobManager>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RuleAdded>), ApiError> {
    let rule: AlertRule = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected an alert rule {{\"name\", \"condition\": {{\"type\", …}}, \"for_ms\"?, \"job\"?, \"webhook\": {{\"url\", \"format\"?}}}}: {e}"),
        )
    })?;
    // The certificates file is read now: the sandbox decides which files a caller may
    // have the server read.
    if let Some(ca) = &rule.webhook.ca_file {
        m.sandbox
            .check("the webhook's ca_file", &ca.display().to_string(), None)?;
    }
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
    m.persist_rules()?;
    Ok((StatusCode::CREATED, Json(RuleAdded { name })))
}

/// Deletes an alert rule; its firing alerts resolve.
#[utoipa::path(delete, path = "/api/alerts/rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "The rule's name")),
    responses(
        (status = 200, description = "Deleted", body = RuleDeleted),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody)))]
pub(crate) async fn delete_alert_rule(
    State(m): State<Arc<JobManager>>,
    Path(name): Path<String>,
) -> Result<Json<RuleDeleted>, ApiError> {
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
    m.persist_rules()?;
    m.send(sends);
    Ok(Json(RuleDeleted { deleted: name }))
}
