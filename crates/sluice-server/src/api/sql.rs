//! `/api/sql`: what a SQL client (`sluice sql --server URL`) needs of a server. The client
//! keeps its session (the tables, views and settings declared so far) and sends it with
//! each statement: `plan` checks a statement and describes the session's tables; `select`
//! runs a `SELECT` as a job of its own and streams its rows back, one JSON object a line,
//! until its input ends, its `LIMIT` is reached or the client goes away. An `INSERT INTO`
//! is a job like any other: `POST /api/jobs` with the session and the statement.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sluice_connectors::ChannelSink;
use sluice_plan::{ConnectorSpec, NodeKind};
use sluice_runtime::StopHandle;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody};
use crate::jobs::JobManager;

/// The sink a client's `SELECT` writes to.
const CLIENT_SINK: &str = "sql-client";

/// Queries running at once on a server, at most (each is a job of its own).
const MAX_QUERIES: usize = 16;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Queries running now (`sluice_sql_queries` in the metrics).
pub(crate) fn running() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

/// A query with nothing to send for this long sends an empty line: a client that went
/// away is found at the write, and its query stops.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// A statement of a client's session.
#[derive(Deserialize, ToSchema)]
pub(crate) struct SqlRequest {
    /// The session's statements so far (CREATE TABLE, CREATE VIEW, SET), run first.
    #[serde(default)]
    session: String,
    /// The statement to plan or run.
    statement: String,
}

/// A planned statement and the session's tables after it.
#[derive(Serialize, ToSchema)]
pub(crate) struct Planned {
    /// `ddl` (it declares or sets something), `select`, `insert` or `explain`.
    kind: &'static str,
    /// Every table and view declared, as `DESCRIBE` shows them.
    tables: Vec<TableInfo>,
    /// The plans of its `EXPLAIN` statements.
    explains: Vec<String>,
}

/// A table or view.
#[derive(Serialize, ToSchema)]
pub(crate) struct TableInfo {
    name: String,
    view: bool,
    columns: Vec<ColumnInfo>,
    primary_key: Vec<String>,
    watermark: Option<String>,
}

/// A column.
#[derive(Serialize, ToSchema)]
pub(crate) struct ColumnInfo {
    name: String,
    #[serde(rename = "type")]
    sql_type: String,
    nullable: bool,
}

fn request(body: &[u8]) -> Result<SqlRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"session\"?: \"…\", \"statement\": \"…\"}}: {e}"),
        )
    })
}

fn bad_sql(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_sql", message)
}

/// Plans the session, then the statement; the context, the statement's job and the
/// channel a `SELECT` would write to.
fn plan(
    m: &JobManager,
    req: &SqlRequest,
) -> Result<
    (
        sluice::sql::SqlContext,
        sluice::sql::SqlJob,
        ChannelSink,
        sluice_runtime::ConnectorRegistry,
    ),
    ApiError,
> {
    let guard = crate::sandbox::SandboxGuard::new(m.sandbox.clone());
    let sink = ChannelSink::new(CLIENT_SINK);
    let mut registry = sluice_connectors::registry()
        .with_guard(Arc::<crate::sandbox::SandboxGuard>::clone(&guard));
    registry.register_sink(sink.clone());
    let mut ctx =
        sluice::sql_context(registry.clone()).with_select_sink(ConnectorSpec::new(CLIENT_SINK));
    let session = ctx.plan_script(&req.session).map_err(|e| {
        guard.refused().unwrap_or_else(|| {
            bad_sql(format!(
                "in the session's statements: {}",
                e.in_text(&req.session)
            ))
        })
    })?;
    if session.plan.is_some() {
        return Err(bad_sql(
            "the session holds declarations and settings only; send INSERT INTO and SELECT as the statement".into(),
        ));
    }
    let job = ctx.plan_script(&req.statement).map_err(|e| {
        guard
            .refused()
            .unwrap_or_else(|| bad_sql(e.in_text(&req.statement)))
    })?;
    Ok((ctx, job, sink, registry))
}

fn kind(job: &sluice::sql::SqlJob) -> &'static str {
    match &job.plan {
        Some(p)
            if p.nodes
                .iter()
                .any(|n| matches!(&n.kind, NodeKind::Sink(s) if s.connector == CLIENT_SINK)) =>
        {
            "select"
        }
        Some(_) => "insert",
        None if !job.explains.is_empty() => "explain",
        None => "ddl",
    }
}

/// Plan a statement of a SQL client's session
#[utoipa::path(post, path = "/api/sql/plan", tag = "sql",
    request_body = SqlRequest,
    responses(
        (status = 200, description = "What the statement is, and the session's tables after it", body = Planned),
        (status = 400, description = "SQL that does not plan (at its line and column)", body = ErrorBody),
        (status = 403, description = "A file outside the allowed directories", body = ErrorBody)))]
pub(crate) async fn plan_statement(
    State(m): State<Arc<JobManager>>,
    body: Bytes,
) -> Result<Json<Planned>, ApiError> {
    let req = request(&body)?;
    let (ctx, job, _, _) = plan(&m, &req)?;
    let mut tables = Vec::new();
    for (name, view) in ctx.table_names() {
        let d = ctx.describe(&name).map_err(|e| bad_sql(e.message))?;
        tables.push(TableInfo {
            name,
            view,
            columns: d
                .columns
                .into_iter()
                .map(|(name, sql_type, nullable)| ColumnInfo {
                    name,
                    sql_type,
                    nullable,
                })
                .collect(),
            primary_key: d.primary_key,
            watermark: d.watermark,
        });
    }
    let mut explains = Vec::new();
    for (stmt, p) in &job.explains {
        let text = sluice::Pipeline::from_plan(p.clone())
            .explain()
            .map_err(|e| bad_sql(e.to_string()))?;
        explains.push(format!("== EXPLAIN {stmt} ==\n{text}"));
    }
    Ok(Json(Planned {
        kind: kind(&job),
        tables,
        explains,
    }))
}

/// Cancels the query's job when the answer is dropped (the client went away).
struct CancelOnDrop(StopHandle);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Run a SELECT and stream its rows
#[utoipa::path(post, path = "/api/sql/select", tag = "sql",
    request_body = SqlRequest,
    responses(
        (status = 200, description = "One JSON object a line: `{\"columns\": [{\"name\", \"type\"}, …]}` before the first row, `{\"op\": \"+I\", \"row\": […]}` for each row (values as text), then `{\"end\": \"finished\"}`, `{\"end\": \"limit\"}` or `{\"error\": …}`; an empty line after a second without rows", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "SQL that does not plan, or not a SELECT", body = ErrorBody),
        (status = 403, description = "A file outside the allowed directories", body = ErrorBody),
        (status = 429, description = "Too many queries running", body = ErrorBody)))]
pub(crate) async fn select(
    State(m): State<Arc<JobManager>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = request(&body)?;
    let (_, job, sink, registry) = plan(&m, &req)?;
    if kind(&job) != "select" {
        return Err(bad_sql(
            "not a SELECT: INSERT INTO runs as a job (POST /api/jobs), declarations go into the session".into(),
        ));
    }
    let Some(mut plan) = job.plan else {
        return Err(bad_sql("not a SELECT".into()));
    };
    // A query keeps no state across runs: no checkpoints, no restore.
    plan.config.checkpoint = sluice_plan::CheckpointConfig {
        delivery: sluice_plan::DeliveryGuarantee::AtMostOnce,
        ..Default::default()
    };
    plan.config.restore = None;
    plan.config.memory_limit = match (plan.config.memory_limit, m.job_memory_limit) {
        (Some(own), Some(server)) => Some(own.min(server)),
        (own, server) => own.or(server),
    };
    m.check_files(&plan, None)?;
    let limit = plan.row_limit();
    if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_QUERIES {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_queries",
            format!("{MAX_QUERIES} queries are running on this server; stop one first"),
        ));
    }
    let rx = sink.open(16);
    let pipeline = sluice::Pipeline::from_plan(plan);
    pipeline.registry(registry);
    let started = crate::jobs::jobs_runtime()
        .spawn(async move { pipeline.start().await })
        .await;
    sink.close();
    let handle = match started {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            return Err(bad_sql(e.to_string()));
        }
        Err(e) => {
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "start_failed",
                e.to_string(),
            ));
        }
    };
    let cancel = CancelOnDrop(handle.stop_handle());
    let waiter = crate::jobs::jobs_runtime().spawn(handle.wait());
    let state = Rows {
        rx,
        waiter: Some(waiter),
        limit,
        rows: 0,
        header: false,
        done: false,
        _cancel: cancel,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        s.next()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), s))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The state of a query's answer.
struct Rows {
    rx: tokio::sync::mpsc::Receiver<sluice_types::Batch>,
    waiter: Option<tokio::task::JoinHandle<sluice_types::Result<()>>>,
    limit: Option<usize>,
    rows: usize,
    header: bool,
    done: bool,
    _cancel: CancelOnDrop,
}

impl Rows {
    /// The next lines of the answer; `None` at its end.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let line = |v: serde_json::Value| format!("{v}\n");
        let Ok(next) = tokio::time::timeout(HEARTBEAT, self.rx.recv()).await else {
            return Some(Bytes::from_static(b"\n"));
        };
        match next {
            Some(batch) => {
                let mut out = String::new();
                if !self.header {
                    self.header = true;
                    let schema = batch.data.schema();
                    let columns: Vec<serde_json::Value> = schema
                        .fields()
                        .iter()
                        .take(batch.num_user_columns())
                        .map(|f| {
                            serde_json::json!({
                                "name": f.name(),
                                "type": sluice::sql::types::sql_type(f.data_type()),
                            })
                        })
                        .collect();
                    out.push_str(&line(serde_json::json!({ "columns": columns })));
                }
                let take = self
                    .limit
                    .map_or(batch.num_rows(), |l| (l - self.rows).min(batch.num_rows()));
                for (op, row) in sluice_connectors::sinks::rows_as_text(&batch, take) {
                    out.push_str(&line(serde_json::json!({ "op": op, "row": row })));
                }
                self.rows += take;
                if self.limit.is_some_and(|l| self.rows >= l) {
                    self.done = true;
                    out.push_str(&line(serde_json::json!({ "end": "limit" })));
                }
                Some(Bytes::from(out))
            }
            None => {
                self.done = true;
                let end = match self.waiter.take() {
                    Some(w) => match w.await {
                        Ok(Ok(())) => serde_json::json!({ "end": "finished" }),
                        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                        Err(e) => serde_json::json!({ "error": e.to_string() }),
                    },
                    None => serde_json::json!({ "end": "finished" }),
                };
                Some(Bytes::from(line(end)))
            }
        }
    }
}
