//! `/api/jobs`: list, submit, detail, cancel, savepoint, checkpoints, lineage.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{ApiError, parse_id};
use crate::jobs::{JobEntry, JobManager, JobStatus, Submit};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sluice_runtime::checkpoint::CheckpointRecord;
use sluice_runtime::metrics::JobMetrics;
use utoipa::ToSchema;

use super::ErrorBody;
use crate::alerts::ActiveAlert;
use crate::jobs::Failure;
use crate::lineage::{Endpoint, Graph};

/// One job in the list.
#[derive(Serialize, ToSchema)]
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
#[derive(Serialize, ToSchema)]
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

/// A job: its definition, status, graph, per-operator metrics and alerts.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobDetail {
    id: u64,
    name: String,
    status: JobStatus,
    /// Why it failed, when it did.
    error: Option<String>,
    submitted_ms: i64,
    /// The SQL submitted, with the values of secret options (passwords, tokens, keys)
    /// shown as `******`.
    sql: String,
    graph: Graph,
    reads: Vec<Endpoint>,
    writes: Vec<Endpoint>,
    /// The plan, as `EXPLAIN` shows it.
    explain: String,
    source_records: u64,
    sink_records: u64,
    /// Bytes the job's tasks hold on the heap now (0 when the process does not measure).
    memory_bytes: u64,
    /// The job's memory limit in bytes ('sluice.job.memory-limit', `--job-memory-limit`).
    memory_limit_bytes: Option<u64>,
    operators: Vec<OperatorView>,
    restarts: usize,
    /// Failures with their causes, oldest first.
    failures: Vec<Failure>,
    checkpoints: CheckpointCounts,
    /// Its alerts pending or firing.
    alerts: Vec<ActiveAlert>,
    /// The cluster it is an instance of (`SET 'sluice.cluster.name'`), if any: see
    /// `/api/jobs/{id}/cluster`.
    cluster: Option<String>,
}

/// Checkpoints and savepoints so far.
#[derive(Serialize, ToSchema)]
pub(crate) struct CheckpointCounts {
    completed: u64,
    failed: u64,
}

/// A job was submitted.
#[derive(Serialize, ToSchema)]
pub(crate) struct Submitted {
    id: u64,
}

/// A job is being cancelled.
#[derive(Serialize, ToSchema)]
pub(crate) struct Cancelling {
    id: u64,
    status: JobStatus,
}

/// One job with what it reads and writes.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobLineage {
    id: u64,
    name: String,
    status: JobStatus,
    reads: Vec<Endpoint>,
    writes: Vec<Endpoint>,
}

/// A savepoint request; no body takes one and keeps the job running.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavepointRequest {
    /// Stop the job at the savepoint.
    stop: bool,
}

/// A savepoint taken.
#[derive(Serialize, ToSchema)]
pub(crate) struct SavepointTaken {
    /// Its directory: start a new job from it with `from_savepoint`.
    location: String,
    /// Whether the job stopped there.
    stopped: bool,
}

/// List jobs
#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    responses((status = 200, description = "Every job, with status and record counts", body = Vec<JobSummary>)))]
pub(crate) async fn list(State(m): State<Arc<JobManager>>) -> Json<Vec<JobSummary>> {
    Json(m.all().iter().map(|j| summary(j)).collect())
}

/// Submit a SQL job
#[utoipa::path(post, path = "/api/jobs", tag = "jobs",
    request_body = Submit,
    responses(
        (status = 201, description = "Submitted", body = Submitted),
        (status = 400, description = "A malformed request or SQL that does not plan", body = ErrorBody),
        (status = 403, description = "A file outside the allowed directories", body = ErrorBody),
        (status = 409, description = "A job of that name exists", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody)))]
pub(crate) async fn submit(
    State(m): State<Arc<JobManager>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let s: Submit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"sql\": \"…\", \"name\"?: \"…\", \"parallelism\"?: n}}: {e}"),
        )
    })?;
    let id = m.submit(s).await?;
    Ok((StatusCode::CREATED, Json(Submitted { id })))
}

pub(crate) fn alerts_of(m: &JobManager, job: Option<u64>) -> Vec<crate::alerts::ActiveAlert> {
    m.alerts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .active(job)
}

/// A job: status, graph, per-operator metrics, checkpoints
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(crate) async fn detail(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let manager = Arc::clone(&m);
    let j = m.get(parse_id(&id)?)?;
    let (status, error) = j.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let m = j.metrics();
    let cp = &m.checkpoints;
    Ok(Json(JobDetail {
        id: j.id,
        name: j.name.clone(),
        status,
        error,
        submitted_ms: j.submitted_ms,
        sql: sluice::sql::script::redact_secrets(&j.sql),
        graph: j.graph.clone(),
        reads: j.lineage.reads.clone(),
        writes: j.lineage.writes.clone(),
        explain: j.explain.clone(),
        source_records: m.source_records(),
        sink_records: m.sink_records(),
        memory_bytes: m.memory.used(),
        memory_limit_bytes: m.memory.limit(),
        operators: operators(&m),
        restarts: j.restarts(),
        failures: j.failures.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        checkpoints: CheckpointCounts {
            completed: cp.completed.load(Relaxed),
            failed: cp.failed.load(Relaxed),
        },
        alerts: alerts_of(&manager, Some(j.id)),
        cluster: j.cluster.as_ref().map(|c| c.name.clone()),
    }))
}

/// The instances of the cluster a job is one instance of: each with its host,
/// partitions and lag, as the cluster's consumer group shows them (`sluice ps
/// --cluster`).
#[utoipa::path(get, path = "/api/jobs/{id}/cluster", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The cluster's group: its instances (host, partitions, lag), other members, each partition's committed offset, end and lag", body = Object),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not an instance of a cluster", body = ErrorBody),
        (status = 502, description = "Kafka did not answer", body = ErrorBody)))]
pub(crate) async fn cluster(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    let Some(c) = j.cluster.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_cluster_instance",
            format!(
                "job {} is not an instance of a cluster (SET 'sluice.cluster.name')",
                j.id
            ),
        ));
    };
    cluster_report(c).await.map(Json)
}

#[cfg(feature = "kafka")]
async fn cluster_report(c: crate::jobs::ClusterRef) -> Result<serde_json::Value, ApiError> {
    let report = tokio::task::spawn_blocking(move || {
        sluice_connectors::kafka::admin::cluster_status(
            &c.bootstrap,
            &c.name,
            &c.group,
            std::time::Duration::from_secs(5),
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "kafka_unavailable", e.to_string()))?;
    serde_json::to_value(report)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

#[cfg(not(feature = "kafka"))]
async fn cluster_report(_: crate::jobs::ClusterRef) -> Result<serde_json::Value, ApiError> {
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "kafka_unavailable",
        "this server was built without Kafka",
    ))
}

/// Cancel a running job
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 202, description = "Cancelling", body = Cancelling),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not running", body = ErrorBody)))]
pub(crate) async fn cancel(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Cancelling>), ApiError> {
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
    j.stop_handle().cancel();
    Ok((
        StatusCode::ACCEPTED,
        Json(Cancelling {
            id: j.id,
            status: JobStatus::Cancelled,
        }),
    ))
}

/// Every job with what it reads and writes (`sluice ps`).
#[utoipa::path(get, path = "/api/lineage", tag = "jobs",
    responses((status = 200, description = "Every job with what it reads and writes (topic → job → topic)", body = Vec<JobLineage>)))]
pub(crate) async fn lineage_all(State(m): State<Arc<JobManager>>) -> Json<Vec<JobLineage>> {
    Json(
        m.all()
            .iter()
            .map(|j| JobLineage {
                id: j.id,
                name: j.name.clone(),
                status: j.status.lock().unwrap_or_else(|p| p.into_inner()).0,
                reads: j.lineage.reads.clone(),
                writes: j.lineage.writes.clone(),
            })
            .collect(),
    )
}

/// Takes a savepoint (`{"stop": true}`: and stops the job there); returns its location.
#[utoipa::path(post, path = "/api/jobs/{id}/savepoint", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    request_body(content = Option<SavepointRequest>, description = "Optional: `{\"stop\": true}` stops the job at the savepoint"),
    responses(
        (status = 200, description = "The savepoint was taken", body = SavepointTaken),
        (status = 400, description = "A malformed request", body = ErrorBody),
        (status = 401, description = "The token is missing or wrong", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not running, the savepoint failed, or the job is an instance of a cluster job with keyed state (which takes none)", body = ErrorBody)))]
pub(crate) async fn savepoint(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SavepointTaken>, ApiError> {
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
        false => {
            serde_json::from_slice::<SavepointRequest>(&body)
                .map_err(|_| bad())?
                .stop
        }
    };
    if j.keyed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "keyed_cluster_instance",
            format!(
                "job {} is an instance of a cluster job with keyed state: each partition's state is in the checkpoint its committed offset names, and the instances go on from there; it takes no savepoint (cancel it, and start it again)",
                j.id
            ),
        ));
    }
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
        Ok(location) => Ok(Json(SavepointTaken {
            location,
            stopped: stop,
        })),
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
#[utoipa::path(get, path = "/api/jobs/{id}/checkpoints", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Recent checkpoints and savepoints, oldest first", body = Vec<CheckpointRecord>),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(crate) async fn checkpoints(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CheckpointRecord>>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    Ok(Json(j.metrics().checkpoints.history()))
}

/// Which samples of a job's history.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// Only samples taken at or after this time (epoch ms); all kept by default.
    since_ms: Option<i64>,
}

/// An operator as the history names it.
#[derive(Serialize, ToSchema)]
pub(crate) struct OperatorName {
    id: usize,
    name: String,
}

/// A job's recent history: a sample a second, the last 15 minutes.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobHistory {
    /// Time between samples, ms.
    interval_ms: u64,
    /// The operators the samples' `operators` list, in the same order.
    operators: Vec<OperatorName>,
    /// Oldest first.
    samples: Vec<crate::history::Sample>,
}

/// The job's recent history: input and output rates, end-to-end latency, event-time lag,
/// Kafka lag, the latest checkpoint, and per operator busy and backpressure, a sample a
/// second for the last 15 minutes.
#[utoipa::path(get, path = "/api/jobs/{id}/history", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id"), HistoryQuery),
    responses(
        (status = 200, description = "The samples, oldest first", body = JobHistory),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(crate) async fn history(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Result<Json<JobHistory>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    let metrics = j.metrics();
    let samples = j
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .since(q.since_ms.unwrap_or(i64::MIN));
    Ok(Json(JobHistory {
        interval_ms: crate::history::INTERVAL.as_millis() as u64,
        operators: metrics
            .operators
            .iter()
            .map(|o| OperatorName {
                id: o.node_id,
                name: o.name.clone(),
            })
            .collect(),
        samples,
    }))
}

/// One operator and its subtasks.
#[derive(Serialize, ToSchema)]
pub(crate) struct OperatorDetail {
    id: usize,
    name: String,
    parallelism: usize,
    is_source: bool,
    is_sink: bool,
    /// Each subtask at the latest sample (rates and shares over its last second).
    subtasks: Vec<crate::history::SubtaskSample>,
}

/// One operator's subtasks: records, rates, busy, backpressure, watermark, queue, Kafka
/// lag, dead letters and late rows of each.
#[utoipa::path(get, path = "/api/jobs/{id}/operators/{operator}", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id"),
           ("operator" = usize, Path, description = "The operator's id (as in the job's `operators`)")),
    responses(
        (status = 200, description = "The operator's subtasks", body = OperatorDetail),
        (status = 400, description = "An id is not a number", body = ErrorBody),
        (status = 404, description = "No such job or operator", body = ErrorBody)))]
pub(crate) async fn operator(
    State(m): State<Arc<JobManager>>,
    Path((id, operator)): Path<(String, String)>,
) -> Result<Json<OperatorDetail>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    let no_such = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} has no operator `{operator}`"),
        )
    };
    let op: usize = operator.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("operator ids are numbers, not `{operator}`"),
        )
    })?;
    let metrics = j.metrics();
    let o = metrics
        .operators
        .iter()
        .find(|o| o.node_id == op)
        .ok_or_else(no_such)?;
    let subtasks = j
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .subtasks(&metrics, op)
        .filter(|s| s.len() == o.subtasks.len())
        // Not sampled yet (the first second): the counters as they are.
        .unwrap_or_else(|| crate::history::SubtaskSample::now(o, &metrics));
    Ok(Json(OperatorDetail {
        id: op,
        name: o.name.clone(),
        parallelism: o.subtasks.len(),
        is_source: o.is_source,
        is_sink: o.is_sink,
        subtasks,
    }))
}

/// "Why is it slow?": the likely causes, ranked, each with its evidence and what to do,
/// from the last 30 seconds of the job's history, its subtasks, graph and checkpoints.
#[utoipa::path(get, path = "/api/jobs/{id}/diagnosis", tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The causes, most likely first", body = crate::diagnosis::Diagnosis),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(crate) async fn diagnosis(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<crate::diagnosis::Diagnosis>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    Ok(Json(diagnose(&j)))
}

/// The diagnosis of one job now.
pub(crate) fn diagnose(j: &JobEntry) -> crate::diagnosis::Diagnosis {
    use crate::diagnosis::{OperatorInfo, Situation, WINDOW_MS, summary};
    let metrics = j.metrics();
    let (samples, subtasks) = {
        let h = j.history.lock().unwrap_or_else(|p| p.into_inner());
        let since = h.latest_ms().map_or(i64::MIN, |t| t - WINDOW_MS);
        let subtasks: Vec<Vec<crate::history::SubtaskSample>> = metrics
            .operators
            .iter()
            .map(|o| {
                h.subtasks(&metrics, o.node_id)
                    .unwrap_or_else(|| crate::history::SubtaskSample::now(o, &metrics))
            })
            .collect();
        (h.since(since), subtasks)
    };
    let operators: Vec<OperatorInfo> = metrics
        .operators
        .iter()
        .map(|o| OperatorInfo {
            id: o.node_id,
            name: o.name.clone(),
            is_source: o.is_source,
            is_sink: o.is_sink,
            parallelism: o.subtasks.len(),
        })
        .collect();
    let checkpoints = metrics.checkpoints.history();
    let causes = Situation {
        samples: &samples,
        operators: &operators,
        subtasks: &subtasks,
        edges: &j.graph.edges,
        checkpoints: &checkpoints,
        unbounded_state: &j.unbounded_state,
    }
    .diagnose();
    crate::diagnosis::Diagnosis {
        job: j.id,
        seconds: samples.len(),
        summary: summary(&causes, samples.len()),
        causes,
    }
}
