//! `/api/jobs`: list, submit, detail, cancel, savepoint, checkpoints, lineage.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{ApiError, parse_id};
use crate::jobs::{JobEntry, JobManager, JobStatus, Submit};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use sluice_runtime::metrics::JobMetrics;

/// One job in the list.
#[derive(Serialize)]
pub(crate) struct JobSummary {
    id: u64,
    name: String,
    status: JobStatus,
    submitted_ms: i64,
    source_records: u64,
    sink_records: u64,
    restarts: usize,
}

pub(crate) fn summary(j: &JobEntry) -> JobSummary {
    JobSummary {
        id: j.id,
        name: j.name.clone(),
        status: j.status.lock().unwrap_or_else(|p| p.into_inner()).0,
        submitted_ms: j.submitted_ms,
        source_records: j.metrics().source_records(),
        sink_records: j.metrics().sink_records(),
        restarts: j.restarts(),
    }
}

/// Live metrics of one operator.
#[derive(Serialize)]
pub(crate) struct OperatorView {
    id: usize,
    name: String,
    parallelism: usize,
    is_source: bool,
    is_sink: bool,
    records_in: u64,
    records_out: u64,
    /// True end-to-end latency (sink time minus ingest time), sinks only, ms.
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    /// Lowest watermark over the subtasks (epoch ms), if any.
    watermark_ms: Option<i64>,
    /// Time spent blocked on full output channels, ms (backpressure).
    backpressured_ms: u64,
    /// Time spent handling input (first operator of a task), ms.
    busy_ms: u64,
    /// Rows waiting at the operator's inputs (channel fill).
    input_queue: u64,
    /// Sources that know it (Kafka): records behind the end of their partitions.
    source_lag: Option<i64>,
    dead_letters: u64,
    late_records: u64,
}

/// An operator's consumer lag: the sum over its subtasks that know theirs.
pub(crate) fn source_lag(o: &sluice_runtime::metrics::OperatorMetrics) -> Option<i64> {
    let known: Vec<i64> = o
        .subtasks
        .iter()
        .map(|s| s.source_lag.load(Relaxed))
        .filter(|&l| l >= 0)
        .collect();
    (!known.is_empty()).then(|| known.iter().sum())
}

pub(crate) fn operators(m: &JobMetrics) -> Vec<OperatorView> {
    m.operators
        .iter()
        .map(|o| {
            let lat = o.latency();
            let wm = o
                .subtasks
                .iter()
                .map(|s| s.watermark.load(Relaxed))
                .filter(|&w| w != i64::MIN)
                .min();
            OperatorView {
                id: o.node_id,
                name: o.name.clone(),
                parallelism: o.subtasks.len(),
                is_source: o.is_source,
                is_sink: o.is_sink,
                records_in: o.sum(|s| &s.records_in),
                records_out: o.sum(|s| &s.records_out),
                latency_p50_ms: (o.is_sink && lat.count > 0)
                    .then(|| lat.quantile(0.5) as f64 / 1000.0),
                latency_p99_ms: (o.is_sink && lat.count > 0)
                    .then(|| lat.quantile(0.99) as f64 / 1000.0),
                watermark_ms: wm,
                backpressured_ms: o.sum(|s| &s.backpressured_ns) / 1_000_000,
                busy_ms: o.sum(|s| &s.busy_ns) / 1_000_000,
                input_queue: o.sum(|s| &s.input_queue),
                source_lag: source_lag(o),
                dead_letters: o.sum(|s| &s.dead_letters),
                late_records: o.sum(|s| &s.late_records),
            }
        })
        .collect()
}

pub(crate) async fn list(State(m): State<Arc<JobManager>>) -> Json<Vec<JobSummary>> {
    Json(m.all().iter().map(|j| summary(j)).collect())
}

pub(crate) async fn submit(
    State(m): State<Arc<JobManager>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    m.check_token(&headers)?;
    let s: Submit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"sql\": \"…\", \"name\"?: \"…\", \"parallelism\"?: n}}: {e}"),
        )
    })?;
    let id = m.submit(s).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

pub(crate) fn alerts_of(m: &JobManager, job: Option<u64>) -> Vec<crate::alerts::ActiveAlert> {
    m.alerts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .active(job)
}

pub(crate) async fn detail(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let manager = Arc::clone(&m);
    let j = m.get(parse_id(&id)?)?;
    let (status, error) = j.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let m = j.metrics();
    let cp = &m.checkpoints;
    Ok(Json(serde_json::json!({
        "id": j.id,
        "name": j.name,
        "status": status,
        "error": error,
        "submitted_ms": j.submitted_ms,
        "sql": j.sql,
        "graph": j.graph,
        "reads": j.lineage.reads,
        "writes": j.lineage.writes,
        "explain": j.explain,
        "source_records": j.metrics().source_records(),
        "sink_records": j.metrics().sink_records(),
        "operators": operators(&m),
        "restarts": j.restarts(),
        "failures": *j.failures.lock().unwrap_or_else(|p| p.into_inner()),
        "checkpoints": {
            "completed": cp.completed.load(Relaxed),
            "failed": cp.failed.load(Relaxed),
        },
        "alerts": alerts_of(&manager, Some(j.id)),
    })))
}

pub(crate) async fn cancel(
    State(m): State<Arc<JobManager>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    m.check_token(&headers)?;
    let j = m.get(parse_id(&id)?)?;
    {
        let mut st = j.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 != JobStatus::Running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_running",
                format!("job {} is {:?}, not running", j.id, st.0).to_lowercase(),
            ));
        }
        st.0 = JobStatus::Cancelled;
    }
    j.stop_handle().stop().await;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": j.id, "status": JobStatus::Cancelled })),
    ))
}

/// Every job with what it reads and writes (`sluice ps`).
pub(crate) async fn lineage_all(State(m): State<Arc<JobManager>>) -> Json<serde_json::Value> {
    Json(serde_json::Value::Array(
        m.all()
            .iter()
            .map(|j| {
                serde_json::json!({
                    "id": j.id,
                    "name": j.name,
                    "status": j.status.lock().unwrap_or_else(|p| p.into_inner()).0,
                    "reads": j.lineage.reads,
                    "writes": j.lineage.writes,
                })
            })
            .collect(),
    ))
}

/// Takes a savepoint (`{"stop": true}`: and stops the job there); returns its location.
pub(crate) async fn savepoint(
    State(m): State<Arc<JobManager>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    m.check_token(&headers)?;
    let j = m.get(parse_id(&id)?)?;
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected {\"stop\": true|false} or no body",
        )
    };
    let stop = match body.is_empty() {
        true => false,
        false => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("stop").and_then(|s| s.as_bool()))
            .ok_or_else(bad)?,
    };
    {
        let mut st = j.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 != JobStatus::Running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_running",
                format!("job {} is not running", j.id),
            ));
        }
        if stop {
            st.0 = JobStatus::Stopped;
        }
    }
    match j.stop_handle().savepoint(stop).await {
        Ok(location) => Ok(Json(
            serde_json::json!({ "location": location, "stopped": stop }),
        )),
        Err(e) => {
            if stop {
                j.status.lock().unwrap_or_else(|p| p.into_inner()).0 = JobStatus::Running;
            }
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "savepoint_failed",
                e.to_string(),
            ))
        }
    }
}

/// The job's recent checkpoints and savepoints, oldest first.
pub(crate) async fn checkpoints(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<sluice_runtime::checkpoint::CheckpointRecord>>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    Ok(Json(j.metrics().checkpoints.history()))
}
