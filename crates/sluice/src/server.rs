//! `sluice server`: a long-running job manager. Many jobs in one process, a REST API,
//! and Prometheus metrics.
//!
//! ```text
//!  POST /api/jobs {sql} ──plan──> JobEntry (status, metrics, stop handle) ──tokio task──> job
//!  GET  /api/jobs, /api/jobs/{id}      read the entries (live metrics: atomics)
//!  POST /api/jobs/{id}/cancel          stop: sources end, in-flight data drains
//!  GET  /metrics                       Prometheus text, one series per job/operator/subtask
//!  GET  /api/openapi.json              the API's OpenAPI document
//! ```
//!
//! A job that fails only changes its own status: its error is kept and shown. Bound to a
//! non-loopback address, every call that changes something needs the API token
//! (`Authorization: Bearer <token>`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sluice_runtime::StopHandle;
use sluice_runtime::metrics::JobMetrics;
use sluice_types::SluiceError;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Running.
    Running,
    /// Its input ended and everything was written.
    Finished,
    /// It stopped with an error (see `error`).
    Failed,
    /// Cancelled through the API.
    Cancelled,
    /// Stopped with a savepoint (start a new job from it to continue).
    Stopped,
}

struct JobEntry {
    id: u64,
    name: String,
    sql: String,
    parallelism: Option<usize>,
    restart: Option<RestartSpec>,
    submitted_ms: i64,
    status: Mutex<(JobStatus, Option<String>)>,
    /// The running attempt's metrics and stop handle (a restart replaces them).
    attempt: RwLock<(Arc<JobMetrics>, StopHandle)>,
    /// Failures with their causes, oldest first.
    failures: Mutex<Vec<Failure>>,
    explain: String,
    graph: Graph,
    lineage: Lineage,
}

/// One failure of a job.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// When, epoch ms.
    pub time_ms: i64,
    /// The error with its causes.
    pub error: String,
    /// Whether the job restarted after it.
    pub restarted: bool,
    /// Where it was raised (or where the task panicked), when captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl JobEntry {
    /// Adds a failure, with its cause and stack, to the job's history.
    fn record_failure(&self, e: &SluiceError, restarted: bool) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Failure {
                time_ms: now_ms(),
                error: e.to_string(),
                restarted,
                trace: e.backtrace_text(),
            });
    }

    fn restarts(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|f| f.restarted)
            .count()
    }

    fn metrics(&self) -> Arc<JobMetrics> {
        Arc::clone(&self.attempt.read().unwrap_or_else(|p| p.into_inner()).0)
    }

    fn stop_handle(&self) -> StopHandle {
        self.attempt
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

/// A restart strategy as the API takes it (durations in milliseconds).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RestartSpec {
    /// `none`, `fixed-delay`, `exponential-delay`, `failure-rate`.
    pub strategy: String,
    /// Restarts allowed (fixed-delay; exponential-delay when given).
    #[serde(default)]
    pub attempts: Option<usize>,
    /// Delay before a restart (the first, for exponential-delay); 1 000 by default.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// The largest exponential delay; 60 000 by default.
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
    /// Growth per failure; 2 by default.
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Random spread (fraction); 0.1 by default.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// A stable run this long resets the exponential delay; an hour by default.
    #[serde(default)]
    pub reset_after_ms: Option<u64>,
    /// Failures allowed per interval (failure-rate); 1 by default.
    #[serde(default)]
    pub max_failures: Option<usize>,
    /// The failure-rate interval; a minute by default.
    #[serde(default)]
    pub interval_ms: Option<u64>,
}

impl RestartSpec {
    fn strategy(&self) -> Result<crate::restart::RestartStrategy, ApiError> {
        use crate::restart::RestartStrategy as R;
        use std::time::Duration as D;
        let delay = D::from_millis(self.delay_ms.unwrap_or(1000));
        let r = match self.strategy.as_str() {
            "none" => R::None,
            "fixed-delay" => R::FixedDelay {
                attempts: self.attempts.unwrap_or(1),
                delay,
            },
            "exponential-delay" => R::ExponentialDelay {
                initial: delay,
                max: D::from_millis(self.max_delay_ms.unwrap_or(60_000)),
                multiplier: self.multiplier.unwrap_or(2.0),
                jitter: self.jitter.unwrap_or(0.1),
                reset_after: D::from_millis(self.reset_after_ms.unwrap_or(3_600_000)),
                attempts: self.attempts,
            },
            "failure-rate" => R::FailureRate {
                max_failures: self.max_failures.unwrap_or(1),
                interval: D::from_millis(self.interval_ms.unwrap_or(60_000)),
                delay,
            },
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "unknown restart strategy `{other}`; use none, fixed-delay, exponential-delay or failure-rate"
                    ),
                ));
            }
        };
        r.validate()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
        Ok(r)
    }
}

/// What a job reads and writes: `topic → job → topic`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lineage {
    /// Sources: connector and what it reads (topic, pattern, path, table).
    pub reads: Vec<Endpoint>,
    /// Sinks: connector and what it writes.
    pub writes: Vec<Endpoint>,
}

/// One end of a job's lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The connector (`kafka`, `filesystem`, …).
    pub connector: String,
    /// The topic, pattern, path or table it names (the connector when none).
    pub name: String,
}

fn endpoint(spec: &sluice_plan::ConnectorSpec) -> Endpoint {
    let name = ["topic", "topic-pattern", "path", "table"]
        .iter()
        .find_map(|k| spec.options.get(*k))
        .cloned()
        .unwrap_or_else(|| spec.connector.clone());
    Endpoint {
        connector: spec.connector.clone(),
        name,
    }
}

fn lineage(plan: &sluice_plan::JobPlan) -> Lineage {
    let mut l = Lineage::default();
    for n in &plan.nodes {
        match &n.kind {
            sluice_plan::NodeKind::Source(s) => l.reads.push(endpoint(&s.spec)),
            sluice_plan::NodeKind::Sink(s) => l.writes.push(endpoint(s)),
            _ => {}
        }
    }
    l.reads.dedup();
    l.writes.dedup();
    l
}

/// The job's dataflow graph.
#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    /// Operators: id, name, parallelism.
    pub nodes: Vec<GraphNode>,
    /// Edges: from, to, how rows are distributed.
    pub edges: Vec<GraphEdge>,
}

/// One operator of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct GraphNode {
    /// Node id.
    pub id: usize,
    /// Display name.
    pub name: String,
    /// Subtasks.
    pub parallelism: usize,
}

/// One edge of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct GraphEdge {
    /// Upstream node.
    pub from: usize,
    /// Downstream node.
    pub to: usize,
    /// Forward, hash(keys), rebalance, broadcast.
    pub partitioning: String,
}

/// Where SQL jobs may read and write files: inside these directories only (resolved,
/// symlinks and `..` included). Checkpoints and savepoints may also use the data
/// directory; remote URLs (`s3://…`) are not files and pass.
#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    allowed: Vec<std::path::PathBuf>,
}

impl Sandbox {
    /// Files only under `dirs` (each must exist: a bad configuration fails at start-up).
    pub fn new(dirs: &[std::path::PathBuf]) -> sluice_types::Result<Self> {
        let allowed = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|e| {
                    SluiceError::user(format!(
                        "--allow-dir {}: not a directory this server can use",
                        d.display()
                    ))
                    .with_source(e)
                })
            })
            .collect::<sluice_types::Result<_>>()?;
        Ok(Self { allowed })
    }

    /// `path` made absolute with `..` and symlinks resolved as far as it exists.
    fn resolve(path: &std::path::Path) -> std::path::PathBuf {
        use std::path::Component;
        let abs = std::env::current_dir().unwrap_or_default().join(path);
        let mut lexical = std::path::PathBuf::new();
        for c in abs.components() {
            match c {
                Component::ParentDir => {
                    lexical.pop();
                }
                Component::CurDir => {}
                c => lexical.push(c),
            }
        }
        // The deepest part that exists, with its symlinks resolved, then the rest.
        let mut existing = lexical.clone();
        let mut rest = Vec::new();
        while !existing.exists() {
            match existing.file_name() {
                Some(n) => rest.push(n.to_os_string()),
                None => break,
            }
            existing.pop();
        }
        let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
        out.extend(rest.iter().rev());
        out
    }

    /// Fails unless `path` (named by `what`) is inside an allowed directory or `extra`.
    fn check(
        &self,
        what: &str,
        path: &str,
        extra: Option<&std::path::Path>,
    ) -> Result<(), ApiError> {
        if path.contains("://") && !path.starts_with("file://") {
            return Ok(());
        }
        let p = Self::resolve(std::path::Path::new(
            path.strip_prefix("file://").unwrap_or(path),
        ));
        let extra = extra.map(Self::resolve);
        if self
            .allowed
            .iter()
            .chain(extra.as_ref())
            .any(|d| p.starts_with(d))
        {
            return Ok(());
        }
        let dirs: Vec<String> = self
            .allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!(
                "{what} `{path}` is outside the directories this server lets jobs use ({}); start the server with --allow-dir to add one",
                dirs.join(", ")
            ),
        ))
    }
}

/// The jobs of one server.
#[derive(Default)]
pub struct JobManager {
    jobs: RwLock<BTreeMap<u64, Arc<JobEntry>>>,
    next_id: AtomicU64,
    /// Required on changing calls when set.
    token: Option<String>,
    /// Where job definitions (`jobs/<id>.json`) and checkpoints (`checkpoints/<id>/`)
    /// are kept, so that running jobs come back after a restart.
    data_dir: Option<std::path::PathBuf>,
    /// Where jobs may read and write files.
    sandbox: Sandbox,
    /// Alert rules and their state.
    alerts: Mutex<crate::alerts::Alerts>,
    /// The latest webhook deliveries, oldest first.
    deliveries: Mutex<std::collections::VecDeque<Delivery>>,
}

/// One notification sent (or given up on).
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// The notification.
    pub notification: crate::alerts::Notification,
    /// The webhook.
    pub url: String,
    /// Whether the webhook took it.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed, when it was not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was done, epoch ms.
    pub time_ms: i64,
}

/// Deliveries kept for the API.
const DELIVERIES_KEPT: usize = 200;

/// A job definition as kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    id: u64,
    name: String,
    sql: String,
    parallelism: Option<usize>,
    status: JobStatus,
    error: Option<String>,
    #[serde(default)]
    restart: Option<RestartSpec>,
}

/// A submitted job, as the API takes it.
#[derive(Debug, Deserialize)]
pub struct Submit {
    /// The SQL script (its `INSERT INTO` statements form the job).
    pub sql: String,
    /// Job name (default `job-<id>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Default parallelism.
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// Start from this savepoint (or checkpoint) directory.
    #[serde(default)]
    pub from_savepoint: Option<String>,
    /// How the job restarts after a failure (default: it does not).
    #[serde(default)]
    pub restart: Option<RestartSpec>,
}

/// A JSON error: `{"error": {"code": …, "message": …}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found(id: u64) -> Self {
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl JobManager {
    /// A manager that keeps its jobs in `data_dir`: the jobs that were running when the
    /// server last stopped start again, from their latest checkpoint if they took one.
    pub async fn open(opts: ServerOptions) -> sluice_types::Result<Arc<Self>> {
        let ServerOptions {
            token,
            data_dir,
            allow_dirs,
            log_file_bytes,
            log_files_kept,
            alert_rules,
            alert_interval,
        } = opts;
        let allow_dirs = match allow_dirs.is_empty() {
            true => vec![std::env::current_dir()?],
            false => allow_dirs,
        };
        let sandbox = Sandbox::new(&allow_dirs)?;
        crate::logs::store().write_to_disk(crate::logs::DiskLogs::new(
            data_dir.join("logs"),
            log_file_bytes,
            log_files_kept,
        )?);
        std::fs::create_dir_all(data_dir.join("jobs"))?;
        let mut stored: Vec<Stored> = Vec::new();
        for e in std::fs::read_dir(data_dir.join("jobs"))? {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let job: Stored = serde_json::from_str(&text).map_err(|e| {
                SluiceError::user(format!("job file {} is damaged", path.display())).with_source(e)
            })?;
            stored.push(job);
        }
        stored.sort_by_key(|j| j.id);
        let manager = Arc::new(Self {
            token,
            next_id: AtomicU64::new(stored.last().map_or(1, |j| j.id + 1)),
            data_dir: Some(data_dir),
            sandbox,
            alerts: Mutex::new(crate::alerts::Alerts::new(alert_rules)),
            ..Default::default()
        });
        let evaluator = Arc::downgrade(&manager);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(alert_interval.max(std::time::Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = evaluator.upgrade() else { return };
                m.evaluate_alerts();
            }
        });
        for j in stored
            .into_iter()
            .filter(|j| j.status == JobStatus::Running)
        {
            let (id, name) = (j.id, j.name.clone());
            let s = Submit {
                sql: j.sql,
                name: Some(j.name),
                parallelism: j.parallelism,
                from_savepoint: None,
                restart: j.restart,
            };
            if let Err(e) = manager.start(id, s, true).await {
                // It cannot come back: say so, keep the server up.
                tracing::error!(job = %name, error = %e.message, "a job of the last run cannot start again");
                manager.persist_stored(&Stored {
                    id,
                    name,
                    sql: String::new(),
                    parallelism: None,
                    status: JobStatus::Failed,
                    error: Some(e.message),
                    restart: None,
                });
            }
        }
        Ok(manager)
    }

    fn checkpoint_dir(&self, id: u64) -> Option<std::path::PathBuf> {
        self.data_dir
            .as_ref()
            .map(|d| d.join("checkpoints").join(id.to_string()))
    }

    fn persist_stored(&self, s: &Stored) {
        let Some(dir) = &self.data_dir else { return };
        let path = dir.join("jobs").join(format!("{}.json", s.id));
        let tmp = path.with_extension("json.tmp");
        let r = serde_json::to_vec_pretty(s)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::error!(error = %e, path = %path.display(), "cannot save the job definition");
        }
    }

    fn persist(&self, j: &JobEntry) {
        let (status, error) = j.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.persist_stored(&Stored {
            id: j.id,
            name: j.name.clone(),
            sql: j.sql.clone(),
            parallelism: j.parallelism,
            status,
            error,
            restart: j.restart.clone(),
        });
    }

    /// Plans and starts a job; returns its id. Bad SQL or a bad configuration fails
    /// here, before anything runs.
    pub async fn submit(self: &Arc<Self>, s: Submit) -> Result<u64, ApiError> {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.start(id, s, false).await?;
        Ok(id)
    }

    async fn start(self: &Arc<Self>, id: u64, s: Submit, restore: bool) -> Result<(), ApiError> {
        let name = s.name.clone().unwrap_or_else(|| format!("job-{id}"));
        let p = s.parallelism.unwrap_or(1).to_string();
        let cp_dir = self.checkpoint_dir(id).map(|d| d.display().to_string());
        let mut settings = vec![
            ("parallelism.default", p.as_str()),
            ("pipeline.name", name.as_str()),
        ];
        let sp_dir = self.data_dir.as_ref().map(|d| {
            d.join("savepoints")
                .join(id.to_string())
                .display()
                .to_string()
        });
        if let (Some(c), Some(sp)) = (&cp_dir, &sp_dir) {
            settings.push(("execution.checkpointing.dir", c.as_str()));
            settings.push(("execution.checkpointing.savepoint-dir", sp.as_str()));
        }
        let job = crate::plan_sql(&s.sql, &settings)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_sql", e.to_string()))?;
        let plan = job.plan.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_job",
                "the script has no INSERT INTO or SELECT: nothing to run",
            )
        })?;
        self.check_files(&plan, s.from_savepoint.as_deref())?;
        let lineage = lineage(&plan);
        let graph = Graph {
            nodes: plan
                .nodes
                .iter()
                .map(|n| GraphNode {
                    id: n.id,
                    name: n.name.clone(),
                    parallelism: n.parallelism,
                })
                .collect(),
            edges: plan
                .edges
                .iter()
                .map(|e| GraphEdge {
                    from: e.from,
                    to: e.to,
                    partitioning: format!("{:?}", e.partitioning),
                })
                .collect(),
        };
        let pipeline = crate::Pipeline::from_plan(plan);
        let has_checkpoint = self.checkpoint_dir(id).is_some_and(|d| {
            std::fs::read_dir(d).is_ok_and(|mut r| {
                r.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("chk-")))
            })
        });
        if restore && has_checkpoint {
            pipeline.restore_from(sluice_plan::RestoreFrom::Latest);
        } else if let Some(from) = &s.from_savepoint {
            pipeline.restore_from(sluice_plan::RestoreFrom::Path(from.clone()));
        }
        let strategy = match &s.restart {
            Some(r) => r.strategy()?,
            None => crate::restart::RestartStrategy::None,
        };
        let prepared = pipeline
            .prepare()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_job", e.to_string()))?;
        let explain = prepared.explain();
        let handle = prepared.start().await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "start_failed",
                e.to_string(),
            )
        })?;
        let entry = Arc::new(JobEntry {
            id,
            name,
            sql: s.sql,
            parallelism: s.parallelism,
            restart: s.restart,
            submitted_ms: now_ms(),
            status: Mutex::new((JobStatus::Running, None)),
            attempt: RwLock::new((handle.metrics(), handle.stop_handle())),
            failures: Mutex::new(Vec::new()),
            explain,
            graph,
            lineage,
        });
        self.jobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&entry));
        self.persist(&entry);
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let end = supervise(&entry, pipeline, handle, strategy).await;
            *entry.status.lock().unwrap_or_else(|p| p.into_inner()) = end;
            manager.persist(&entry);
        });
        Ok(())
    }

    /// What the alert rules see of every job now.
    fn samples(&self) -> Vec<crate::alerts::JobSample> {
        self.all()
            .iter()
            .map(|j| {
                let m = j.metrics();
                let status = j.status.lock().unwrap_or_else(|p| p.into_inner()).0;
                let failures = j.failures.lock().unwrap_or_else(|p| p.into_inner());
                let lags: Vec<i64> = m
                    .operators
                    .iter()
                    .filter(|o| o.is_source)
                    .filter_map(source_lag)
                    .collect();
                crate::alerts::JobSample {
                    id: j.id,
                    name: j.name.clone(),
                    running: status == JobStatus::Running,
                    failed: status == JobStatus::Failed,
                    restarts_ms: failures
                        .iter()
                        .filter(|f| f.restarted)
                        .map(|f| f.time_ms)
                        .collect(),
                    failed_checkpoints_ms: m
                        .checkpoints
                        .history()
                        .iter()
                        .filter(|c| {
                            matches!(
                                c.status,
                                sluice_runtime::checkpoint::CheckpointStatus::Failed(_)
                            )
                        })
                        .map(|c| c.triggered_at_ms)
                        .collect(),
                    latency: m.sink_latency(),
                    dead_letters: m.dead_letters(),
                    source_lag: (!lags.is_empty()).then(|| lags.iter().sum()),
                }
            })
            .collect()
    }

    /// One evaluation of the alert rules; what changed is sent in the background.
    fn evaluate_alerts(self: &Arc<Self>) {
        // No rules: nothing to look at (a deleted rule resolves its alerts itself).
        if self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rules()
            .is_empty()
        {
            return;
        }
        let samples = self.samples();
        let sends = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evaluate(now_ms(), &samples);
        self.send(sends);
    }

    fn send(self: &Arc<Self>, sends: Vec<(crate::alerts::Webhook, crate::alerts::Notification)>) {
        for (hook, n) in sends {
            tracing::warn!(rule = %n.rule, job = %n.job, status = n.status, value = %n.value, "alert");
            let m = Arc::clone(self);
            tokio::spawn(async move {
                let (attempts, error) = crate::alerts::deliver(&hook, &n).await;
                let mut d = m.deliveries.lock().unwrap_or_else(|p| p.into_inner());
                if d.len() == DELIVERIES_KEPT {
                    d.pop_front();
                }
                d.push_back(Delivery {
                    notification: n,
                    url: hook.url,
                    delivered: error.is_none(),
                    attempts,
                    error,
                    time_ms: now_ms(),
                });
            });
        }
    }

    /// Every file a job would read or write must be inside the sandbox.
    fn check_files(
        &self,
        plan: &sluice_plan::JobPlan,
        from_savepoint: Option<&str>,
    ) -> Result<(), ApiError> {
        let data = self.data_dir.as_deref();
        for n in &plan.nodes {
            let spec = match &n.kind {
                sluice_plan::NodeKind::Source(s) => &s.spec,
                sluice_plan::NodeKind::Sink(s) => s,
                _ => continue,
            };
            for (k, v) in &spec.options {
                if k == "path" || k.ends_with(".path") {
                    self.sandbox
                        .check(&format!("{} option '{k}'", spec.connector), v, None)?;
                }
            }
        }
        let c = &plan.config;
        if let Some(p) = &c.dead_letter_path {
            self.sandbox
                .check("the dead-letter file", &p.display().to_string(), None)?;
        }
        for (what, dir) in [
            ("the checkpoint directory", &c.checkpoint.dir),
            ("the savepoint directory", &c.checkpoint.savepoint_dir),
        ] {
            if let Some(d) = dir {
                self.sandbox.check(what, d, data)?;
            }
        }
        if let Some(p) = from_savepoint {
            self.sandbox.check("the savepoint to start from", p, data)?;
        }
        Ok(())
    }

    fn get(&self, id: u64) -> Result<Arc<JobEntry>, ApiError> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(id))
    }

    fn all(&self) -> Vec<Arc<JobEntry>> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if g == token => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this call changes something: send `Authorization: Bearer <token>`",
            )),
        }
    }
}

/// Waits for a job; on failure restarts it as `strategy` says, from its latest
/// completed checkpoint, recording every failure. Returns its final status.
async fn supervise(
    entry: &JobEntry,
    pipeline: crate::Pipeline,
    handle: sluice_runtime::JobHandle,
    strategy: crate::restart::RestartStrategy,
) -> (JobStatus, Option<String>) {
    /// The server's view of the attempts: each attempt's metrics and stop handle go to
    /// the entry; failures are recorded; a cancelled or stopped job stays down.
    struct Hooks<'a>(&'a JobEntry);

    impl Hooks<'_> {
        fn running(&self) -> bool {
            self.0.status.lock().unwrap_or_else(|p| p.into_inner()).0 == JobStatus::Running
        }
    }

    impl crate::RestartHooks for Hooks<'_> {
        fn started(&mut self, h: &sluice_runtime::JobHandle) {
            *self.0.attempt.write().unwrap_or_else(|p| p.into_inner()) =
                (h.metrics(), h.stop_handle());
        }

        fn failed(&mut self, e: &SluiceError, restarting: bool) -> bool {
            // A cancelled job's tasks end as they may: that is no failure.
            if !self.running() {
                return false;
            }
            tracing::error!(job = %self.0.name, error = %e, restart = restarting, "job failed");
            self.0.record_failure(e, restarting);
            true
        }

        fn restart(&mut self) -> bool {
            // Cancelled (or stopped) while waiting to restart: stay down.
            self.running()
        }
    }

    let result = pipeline
        .supervise(handle, strategy, &mut Hooks(entry))
        .await;
    match (
        result,
        entry.status.lock().unwrap_or_else(|p| p.into_inner()).0,
    ) {
        (_, s @ (JobStatus::Cancelled | JobStatus::Stopped)) => (s, None),
        (Ok(()), _) => (JobStatus::Finished, None),
        (Err(e), _) => (JobStatus::Failed, Some(e.to_string())),
    }
}

/// One job in the list.
#[derive(Serialize)]
struct JobSummary {
    id: u64,
    name: String,
    status: JobStatus,
    submitted_ms: i64,
    source_records: u64,
    sink_records: u64,
    restarts: usize,
}

fn summary(j: &JobEntry) -> JobSummary {
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
struct OperatorView {
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

fn operators(m: &JobMetrics) -> Vec<OperatorView> {
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

async fn list(State(m): State<Arc<JobManager>>) -> Json<Vec<JobSummary>> {
    Json(m.all().iter().map(|j| summary(j)).collect())
}

async fn submit(
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

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("job ids are numbers, not `{id}`"),
        )
    })
}

fn alerts_of(m: &JobManager, job: Option<u64>) -> Vec<crate::alerts::ActiveAlert> {
    m.alerts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .active(job)
}

async fn detail(
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

async fn cancel(
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
async fn lineage_all(State(m): State<Arc<JobManager>>) -> Json<serde_json::Value> {
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
async fn savepoint(
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
async fn checkpoints(
    State(m): State<Arc<JobManager>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<sluice_runtime::checkpoint::CheckpointRecord>>, ApiError> {
    let j = m.get(parse_id(&id)?)?;
    Ok(Json(j.metrics().checkpoints.history()))
}

/// A job's log events: `?level=error&task=…&q=text&limit=n` (newest `limit`, 1 000 by
/// default), oldest first.
async fn logs(
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

/// The alert rules, the alerts pending or firing, and the latest deliveries.
async fn alerts(State(m): State<Arc<JobManager>>) -> Json<serde_json::Value> {
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
async fn add_alert_rule(
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
async fn delete_alert_rule(
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

/// Prometheus text: one series per job, operator and subtask.
async fn prometheus(State(m): State<Arc<JobManager>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        render_prometheus(&m.all()),
    )
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-subtask counter series: name, help text, how to read it.
type Counter = (
    &'static str,
    &'static str,
    fn(&sluice_runtime::metrics::SubtaskMetrics) -> f64,
);

fn render_prometheus(jobs: &[Arc<JobEntry>]) -> String {
    let mut out = String::new();
    let counters: [Counter; 9] = [
        (
            "sluice_records_in_total",
            "Records an operator subtask took in.",
            |s| s.records_in.load(Relaxed) as f64,
        ),
        (
            "sluice_records_out_total",
            "Records an operator subtask emitted.",
            |s| s.records_out.load(Relaxed) as f64,
        ),
        (
            "sluice_bytes_in_total",
            "Arrow bytes an operator subtask took in (the rows' in-memory size).",
            |s| s.bytes_in.load(Relaxed) as f64,
        ),
        (
            "sluice_bytes_out_total",
            "Arrow bytes an operator subtask emitted.",
            |s| s.bytes_out.load(Relaxed) as f64,
        ),
        (
            "sluice_busy_seconds_total",
            "Time a task spent handling input (its chained operators and output waits included), on its first operator.",
            |s| s.busy_ns.load(Relaxed) as f64 / 1e9,
        ),
        (
            "sluice_input_queue",
            "Batches waiting in an operator subtask's input channels (channel fill).",
            |s| s.input_queue.load(Relaxed) as f64,
        ),
        (
            "sluice_dead_letters_total",
            "Records sent to the dead-letter output.",
            |s| s.dead_letters.load(Relaxed) as f64,
        ),
        (
            "sluice_late_records_total",
            "Rows that arrived after their windows closed.",
            |s| s.late_records.load(Relaxed) as f64,
        ),
        (
            "sluice_backpressured_seconds_total",
            "Time spent blocked on full output channels.",
            |s| s.backpressured_ns.load(Relaxed) as f64 / 1e9,
        ),
    ];
    for (name, help, f) in counters {
        let kind = match name.ends_with("_total") {
            true => "counter",
            false => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for j in jobs {
            for o in &j.metrics().operators {
                for (i, s) in o.subtasks.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {}",
                        esc(&j.name),
                        esc(&o.name),
                        f(s)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_watermark_milliseconds An operator subtask's event-time watermark.\n# TYPE sluice_watermark_milliseconds gauge"
    );
    for j in jobs {
        for o in &j.metrics().operators {
            for (i, s) in o.subtasks.iter().enumerate() {
                let w = s.watermark.load(Relaxed);
                if w != i64::MIN {
                    let _ = writeln!(
                        out,
                        "sluice_watermark_milliseconds{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {w}",
                        esc(&j.name),
                        esc(&o.name)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_event_time_lag_seconds Wall-clock time minus an operator subtask's watermark.\n# TYPE sluice_event_time_lag_seconds gauge"
    );
    let now = now_ms();
    for j in jobs {
        if j.status.lock().unwrap_or_else(|p| p.into_inner()).0 != JobStatus::Running {
            continue;
        }
        for o in &j.metrics().operators {
            for (i, s) in o.subtasks.iter().enumerate() {
                let w = s.watermark.load(Relaxed);
                if w != i64::MIN {
                    let _ = writeln!(
                        out,
                        "sluice_event_time_lag_seconds{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {}",
                        esc(&j.name),
                        esc(&o.name),
                        (now - w) as f64 / 1000.0
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_source_lag_records Records between a source subtask's position and the end of its partitions (Kafka consumer lag).\n# TYPE sluice_source_lag_records gauge"
    );
    for j in jobs {
        for o in j.metrics().operators.iter().filter(|o| o.is_source) {
            for (i, s) in o.subtasks.iter().enumerate() {
                let lag = s.source_lag.load(Relaxed);
                if lag >= 0 {
                    let _ = writeln!(
                        out,
                        "sluice_source_lag_records{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {lag}",
                        esc(&j.name),
                        esc(&o.name)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_end_to_end_latency_seconds True end-to-end latency at a sink (sink time minus ingest time).\n# TYPE sluice_end_to_end_latency_seconds summary"
    );
    for j in jobs {
        let m = j.metrics();
        for o in m.operators.iter().filter(|o| o.is_sink) {
            let lat = o.latency();
            let labels = format!("job=\"{}\",operator=\"{}\"", esc(&j.name), esc(&o.name));
            for q in [0.5, 0.95, 0.99] {
                let _ = writeln!(
                    out,
                    "sluice_end_to_end_latency_seconds{{{labels},quantile=\"{q}\"}} {}",
                    lat.quantile(q) as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "sluice_end_to_end_latency_seconds_count{{{labels}}} {}",
                lat.count
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_checkpoints_total Checkpoints by outcome.\n# TYPE sluice_checkpoints_total counter"
    );
    for j in jobs {
        let m = j.metrics();
        let cp = &m.checkpoints;
        for (outcome, n) in [
            ("completed", cp.completed.load(Relaxed)),
            ("failed", cp.failed.load(Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "sluice_checkpoints_total{{job=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(&j.name)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_last_checkpoint_duration_seconds The latest completed checkpoint's duration.\n# TYPE sluice_last_checkpoint_duration_seconds gauge\n# HELP sluice_last_checkpoint_size_bytes The latest completed checkpoint's state size.\n# TYPE sluice_last_checkpoint_size_bytes gauge"
    );
    for j in jobs {
        if let Some(c) = j.metrics().checkpoints.latest_completed() {
            let name = esc(&j.name);
            let _ = writeln!(
                out,
                "sluice_last_checkpoint_duration_seconds{{job=\"{name}\"}} {}\nsluice_last_checkpoint_size_bytes{{job=\"{name}\"}} {}",
                c.duration_ms as f64 / 1000.0,
                c.state_bytes
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_restarts_total Restarts of a job after failures.\n# TYPE sluice_restarts_total counter"
    );
    for j in jobs {
        let _ = writeln!(
            out,
            "sluice_restarts_total{{job=\"{}\"}} {}",
            esc(&j.name),
            j.restarts()
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_job_running Whether a job is running.\n# TYPE sluice_job_running gauge"
    );
    for j in jobs {
        let running = j.status.lock().unwrap_or_else(|p| p.into_inner()).0 == JobStatus::Running;
        let _ = writeln!(
            out,
            "sluice_job_running{{job=\"{}\"}} {}",
            esc(&j.name),
            u8::from(running)
        );
    }
    out
}

/// The routes the API serves, as the OpenAPI document lists them: (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/jobs"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("post", "/api/jobs/{id}/cancel"),
    ("get", "/api/jobs/{id}/logs"),
    ("post", "/api/jobs/{id}/savepoint"),
    ("get", "/api/jobs/{id}/checkpoints"),
    ("get", "/api/lineage"),
    ("get", "/api/alerts"),
    ("post", "/api/alerts/rules"),
    ("delete", "/api/alerts/rules/{name}"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
];

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The OpenAPI 3 document of the REST API.
pub fn openapi_document() -> serde_json::Value {
    let error = serde_json::json!({
        "description": "an error: {\"error\": {\"code\", \"message\"}}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    let id_param = serde_json::json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Sluice server", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/api/jobs": {
                "get": {"summary": "List jobs", "responses": {"200": {"description": "jobs with status and record counts"}}},
                "post": {
                    "summary": "Submit a SQL job",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submit"}}}},
                    "responses": {"201": {"description": "{\"id\": n}"}, "400": error, "401": error}
                }
            },
            "/api/jobs/{id}": {
                "get": {"summary": "A job: status, graph, per-operator metrics, checkpoints", "parameters": id_param, "responses": {"200": {"description": "the job"}, "400": error, "404": error}}
            },
            "/api/jobs/{id}/cancel": {
                "post": {"summary": "Cancel a running job", "parameters": id_param, "responses": {"202": {"description": "cancelling"}, "400": error, "401": error, "404": error, "409": error}}
            },
            "/api/jobs/{id}/logs": {
                "get": {"summary": "A job's log events, searchable", "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                    {"name": "level", "in": "query", "schema": {"type": "string", "enum": ["error", "warn", "info", "debug", "trace"]}, "description": "this level and above"},
                    {"name": "task", "in": "query", "schema": {"type": "string"}, "description": "tasks whose name contains this"},
                    {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "text to find (case-insensitive)"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}, "description": "the newest n (1 000)"}
                ], "responses": {"200": {"description": "[{time_ms, level, task, target, message}]"}, "400": error, "404": error}}
            },
            "/api/jobs/{id}/savepoint": {
                "post": {"summary": "Take a savepoint; with {\"stop\": true} stop the job there", "parameters": id_param,
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"stop": {"type": "boolean"}}}}}},
                    "responses": {"200": {"description": "{\"location\", \"stopped\"}"}, "400": error, "401": error, "404": error, "409": error}}
            },
            "/api/jobs/{id}/checkpoints": {
                "get": {"summary": "Recent checkpoints and savepoints: id, kind, status, trigger time, duration, size, alignment, location", "parameters": id_param, "responses": {"200": {"description": "history, oldest first"}, "400": error, "404": error}}
            },
            "/api/lineage": {
                "get": {"summary": "Every job with what it reads and writes (topic -> job -> topic)", "responses": {"200": {"description": "[{id, name, status, reads: [{connector, name}], writes}]"}}}
            },
            "/api/alerts": {
                "get": {"summary": "Alert rules, the alerts pending or firing, the latest webhook deliveries", "responses": {"200": {"description": "{rules, active: [{rule, job, job_id, state, since_ms, fired_ms, value}], deliveries}"}}}
            },
            "/api/alerts/rules": {
                "post": {"summary": "Add an alert rule", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AlertRule"}}}},
                    "responses": {"201": {"description": "{\"name\"}"}, "400": error, "401": error, "409": error}}
            },
            "/api/alerts/rules/{name}": {
                "delete": {"summary": "Delete an alert rule (its firing alerts resolve)", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "{\"deleted\"}"}, "401": error, "404": error}}
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain; version=0.0.4"}}}
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}
            }
        },
        "components": {"schemas": {
            "Submit": {"type": "object", "required": ["sql"], "properties": {
                "sql": {"type": "string"}, "name": {"type": "string"}, "parallelism": {"type": "integer", "minimum": 1},
                "from_savepoint": {"type": "string", "description": "a savepoint or checkpoint directory to start from"}
            }},
            "AlertRule": {"type": "object", "required": ["name", "condition", "webhook"], "properties": {
                "name": {"type": "string"},
                "condition": {"type": "object", "required": ["type"], "properties": {
                    "type": {"type": "string", "enum": ["job_failed", "restarts", "checkpoint_failures", "latency_p99", "consumer_lag", "dead_letter_rate"]},
                    "more_than": {"type": "integer"}, "within_ms": {"type": "integer"}, "at_least": {"type": "integer"},
                    "above_ms": {"type": "number"}, "above": {"type": "integer"}, "above_per_s": {"type": "number"}
                }},
                "job": {"type": "string", "description": "the job's name; every job when absent"},
                "for_ms": {"type": "integer", "description": "how long the condition must hold"},
                "webhook": {"type": "object", "required": ["url"], "properties": {
                    "url": {"type": "string"}, "format": {"type": "string", "enum": ["json", "slack"]}, "max_attempts": {"type": "integer", "minimum": 1}
                }}
            }},
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}
            }}}}
        }}
    })
}

/// The API's router.
pub fn router(manager: Arc<JobManager>) -> Router {
    Router::new()
        .route("/api/jobs", get(list).post(submit))
        .route("/api/jobs/{id}", get(detail))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/savepoint", post(savepoint))
        .route("/api/jobs/{id}/checkpoints", get(checkpoints))
        .route("/api/lineage", get(lineage_all))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/rules", post(add_alert_rule))
        .route(
            "/api/alerts/rules/{name}",
            axum::routing::delete(delete_alert_rule),
        )
        .route("/metrics", get(prometheus))
        .route("/api/openapi.json", get(openapi))
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

/// How a server runs.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Required on changing calls when set (and required beyond loopback).
    pub token: Option<String>,
    /// Where job definitions, checkpoints and savepoints are kept.
    pub data_dir: std::path::PathBuf,
    /// Where jobs may read and write files (the working directory when empty).
    pub allow_dirs: Vec<std::path::PathBuf>,
    /// A job's log file rotates at this size (`<data-dir>/logs/<job>.log`).
    pub log_file_bytes: u64,
    /// Rotated log files kept per job.
    pub log_files_kept: usize,
    /// Alert rules from the configuration (more can be added through the API).
    pub alert_rules: Vec<crate::alerts::AlertRule>,
    /// How often the alert rules are evaluated.
    pub alert_interval: std::time::Duration,
}

/// Serves the API and the dashboard on `listener` until the process ends. A
/// non-loopback address needs a token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: ServerOptions,
) -> sluice_types::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    if !addr.ip().is_loopback() && opts.token.is_none() {
        return Err(SluiceError::user(format!(
            "the server would listen on {addr}, beyond this machine: give it an API token (--token or SLUICE_TOKEN)"
        )));
    }
    let manager = JobManager::open(opts).await?;
    tracing::info!(%addr, "sluice server listening");
    axum::serve(listener, router(manager))
        .await
        .map_err(|e| SluiceError::external("the server stopped").with_source(e))
}
