//! The job manager: every job of the server, its files, its supervision and restarts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use crate::api::ApiError;
use crate::api::jobs::source_lag;
use crate::lineage::{Graph, GraphEdge, GraphNode, Lineage, lineage};
use crate::sandbox::Sandbox;
use crate::serve::ServerOptions;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sluice::restart::RestartSpec;
use sluice_runtime::StopHandle;
use sluice_runtime::metrics::JobMetrics;
use sluice_types::SluiceError;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

pub(crate) struct JobEntry {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) parallelism: Option<usize>,
    pub(crate) restart: Option<RestartSpec>,
    pub(crate) submitted_ms: i64,
    pub(crate) status: Mutex<(JobStatus, Option<String>)>,
    /// The running attempt's metrics and stop handle (a restart replaces them).
    pub(crate) attempt: RwLock<(Arc<JobMetrics>, StopHandle)>,
    /// Failures with their causes, oldest first.
    pub(crate) failures: Mutex<Vec<Failure>>,
    pub(crate) explain: String,
    pub(crate) graph: Graph,
    /// Its operators that keep state per key with no TTL.
    pub(crate) unbounded_state: Vec<usize>,
    pub(crate) lineage: Lineage,
    /// The cluster the job is an instance of (`SET 'sluice.cluster.name'`).
    pub(crate) cluster: Option<ClusterRef>,
    /// An instance of a cluster job with keyed state: its metrics and stop handle are
    /// its first front's, its partition tasks come and go with the groups (the
    /// cluster's view shows them); it takes no savepoint.
    pub(crate) keyed: bool,
    /// Its recent history, a sample a second (see [`crate::history`]).
    pub(crate) history: Mutex<crate::history::History>,
}

/// Where a cluster instance's group is: what `sluice ps --cluster` is given.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
#[derive(Clone, Debug)]
pub(crate) struct ClusterRef {
    pub(crate) name: String,
    pub(crate) bootstrap: String,
    pub(crate) group: String,
}

impl ClusterRef {
    /// The cluster of `plan`, if it is an instance of one with a Kafka source.
    fn of(plan: &sluice_plan::JobPlan) -> Option<Self> {
        let cluster = plan.config.cluster.as_ref()?;
        plan.nodes.iter().find_map(|n| match &n.kind {
            sluice_plan::NodeKind::Source(s) if s.spec.connector == "kafka" => {
                let o = &s.spec.options;
                Some(ClusterRef {
                    name: cluster.name.clone(),
                    bootstrap: o.get("properties.bootstrap.servers")?.clone(),
                    group: o
                        .get("properties.group.id")
                        .cloned()
                        .unwrap_or_else(|| cluster.group()),
                })
            }
            _ => None,
        })
    }
}

/// One failure of a job.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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

/// What the server shows of a job besides its metrics.
struct Shown {
    explain: String,
    graph: Graph,
    /// Operators keeping state per key with no TTL (for the diagnosis).
    unbounded_state: Vec<usize>,
    lineage: Lineage,
    cluster: Option<ClusterRef>,
}

impl JobEntry {
    /// A job running its first attempt, as submitted.
    fn running(
        id: u64,
        name: String,
        s: Submit,
        attempt: (Arc<JobMetrics>, StopHandle),
        shown: Shown,
        keyed: bool,
    ) -> Self {
        JobEntry {
            id,
            name,
            sql: s.sql,
            parallelism: s.parallelism,
            restart: s.restart,
            submitted_ms: now_ms(),
            status: Mutex::new((JobStatus::Running, None)),
            attempt: RwLock::new(attempt),
            failures: Mutex::new(Vec::new()),
            explain: shown.explain,
            graph: shown.graph,
            unbounded_state: shown.unbounded_state,
            lineage: shown.lineage,
            cluster: shown.cluster,
            keyed,
            history: Mutex::new(crate::history::History::default()),
        }
    }

    /// Adds a failure, with its cause and stack, to the job's history.
    pub(crate) fn record_failure(&self, e: &SluiceError, restarted: bool) {
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

    pub(crate) fn restarts(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|f| f.restarted)
            .count()
    }

    pub(crate) fn metrics(&self) -> Arc<JobMetrics> {
        Arc::clone(&self.attempt.read().unwrap_or_else(|p| p.into_inner()).0)
    }

    pub(crate) fn stop_handle(&self) -> StopHandle {
        self.attempt
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

/// The jobs of one server.
#[derive(Default)]
pub struct JobManager {
    pub(crate) jobs: RwLock<BTreeMap<u64, Arc<JobEntry>>>,
    pub(crate) next_id: AtomicU64,
    /// Required on changing calls when set.
    pub(crate) token: Option<String>,
    /// Where job definitions (`jobs/<id>.json`) and checkpoints (`checkpoints/<id>/`)
    /// are kept, so that running jobs come back after a restart.
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// Where jobs may read and write files.
    pub(crate) sandbox: Sandbox,
    /// Alert rules and their state.
    pub(crate) alerts: Mutex<crate::alerts::Alerts>,
    /// The latest webhook deliveries, oldest first.
    pub(crate) deliveries: Mutex<std::collections::VecDeque<Delivery>>,
    /// Alerts fired and resolved, kept across restarts.
    pub(crate) alert_history: Mutex<crate::alert_history::AlertHistory>,
    /// The names of the rules from the configuration (the others came through the API
    /// and are kept in `<data-dir>/alert-rules.json`).
    pub(crate) config_rules: std::collections::HashSet<String>,
    /// The memory limit of every job (a job may set a lower one).
    pub(crate) job_memory_limit: Option<u64>,
}

/// One notification sent (or given up on).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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
pub(crate) const DELIVERIES_KEPT: usize = 200;

/// A job definition as kept on disk.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) parallelism: Option<usize>,
    pub(crate) status: JobStatus,
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) restart: Option<RestartSpec>,
}

impl Stored {
    /// The job as submitted, to start it again.
    fn submit(&self) -> Submit {
        Submit {
            sql: self.sql.clone(),
            name: Some(self.name.clone()),
            parallelism: self.parallelism,
            from_savepoint: None,
            restart: self.restart.clone(),
        }
    }
}

static JOBS_RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Starts the runtime jobs run on, apart from the one serving the API: a job that keeps
/// its threads busy (or blocks them) slows other jobs, never the API.
fn start_jobs_runtime() -> std::io::Result<()> {
    if JOBS_RUNTIME.get().is_some() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("sluice-job")
        .thread_stack_size(16 * 1024 * 1024)
        .enable_all()
        .build()?;
    let _ = JOBS_RUNTIME.set(rt.handle().clone());
    // It lives as long as the process: a runtime cannot be dropped from within one.
    std::mem::forget(rt);
    Ok(())
}

/// The jobs' runtime (the current one where none was started: embedded uses).
pub(crate) fn jobs_runtime() -> tokio::runtime::Handle {
    JOBS_RUNTIME
        .get()
        .cloned()
        .unwrap_or_else(tokio::runtime::Handle::current)
}

/// The sink a bare SELECT in a submitted script is planned into (and refused for).
const SELECT_SINK: &str = "select";

/// Where the alert rules added through the API are kept, in the data directory.
const RULES_FILE: &str = "alert-rules.json";

/// The rules added through the API in an earlier run (a damaged file is reported and
/// left as it is).
fn load_api_rules(data_dir: &std::path::Path) -> Vec<crate::alerts::AlertRule> {
    let path = data_dir.join(RULES_FILE);
    if !path.exists() {
        return Vec::new();
    }
    match crate::alerts::load_rules(&path) {
        Ok(rules) => rules,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e.report(), "the alert rules added through the API cannot be read; they are left out");
            Vec::new()
        }
    }
}

/// A submitted job, as the API takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Submit {
    /// The SQL script (its `INSERT INTO` statements form the job).
    #[schema(min_length = 1)]
    pub sql: String,
    /// Job name (default `job-<id>`).
    #[serde(default)]
    #[schema(min_length = 1)]
    pub name: Option<String>,
    /// Default parallelism.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 32768)]
    pub parallelism: Option<usize>,
    /// Start from this savepoint (or checkpoint) directory.
    #[serde(default)]
    pub from_savepoint: Option<String>,
    /// How the job restarts after a failure (default: it does not).
    #[serde(default)]
    pub restart: Option<RestartSpec>,
}

pub(crate) fn now_ms() -> i64 {
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
            webhooks_public_only,
            max_connections: _,
            header_timeout: _,
            job_memory_limit,
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
        start_jobs_runtime()?;
        crate::durable::create_private_dir(&data_dir.join("jobs"))?;
        let mut stored: Vec<Stored> = Vec::new();
        // The highest id of any job file, readable or not: a new job never takes the
        // file of a damaged one.
        let mut last_id = 0;
        for e in std::fs::read_dir(data_dir.join("jobs"))? {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                last_id = last_id.max(id);
            }
            let job = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Stored>(&t).map_err(|e| e.to_string()));
            match job {
                Ok(job) => {
                    last_id = last_id.max(job.id);
                    stored.push(job);
                }
                // One damaged file does not keep the others down: it is left as it is
                // for the operator to mend or remove.
                Err(e) => tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "a job file is damaged: the job is left out, the file left as it is"
                ),
            }
        }
        stored.sort_by_key(|j| j.id);
        let config_rules = alert_rules.iter().map(|r| r.name.clone()).collect();
        let mut alerts = crate::alerts::Alerts::new(alert_rules).public_only(webhooks_public_only);
        for r in load_api_rules(&data_dir) {
            if let Err(e) = alerts.add(r) {
                tracing::error!(error = %e.message, "an alert rule added through the API is left out");
            }
        }
        let alert_history = crate::alert_history::AlertHistory::open(&data_dir);
        let manager = Arc::new(Self {
            token,
            config_rules,
            job_memory_limit,
            next_id: AtomicU64::new(last_id + 1),
            data_dir: Some(data_dir),
            sandbox,
            alerts: Mutex::new(alerts),
            alert_history: Mutex::new(alert_history),
            ..Default::default()
        });
        let sampler = Arc::downgrade(&manager);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::history::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = sampler.upgrade() else { return };
                m.sample_history();
            }
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
            // Running again before the server answers; retries go on in the background.
            if let Err(e) = manager.start(j.id, j.submit(), true).await {
                let m = Arc::clone(&manager);
                tokio::spawn(async move { m.bring_back(j, e).await });
            }
        }
        Ok(manager)
    }

    /// A job of the last run that failed to start again (`e`: an input moved away, a
    /// broker down) is retried from its latest checkpoint as its restart strategy says;
    /// when that gives up it is recorded as failed, with the reason and its definition
    /// kept whole.
    async fn bring_back(self: Arc<Self>, j: Stored, mut e: ApiError) {
        let strategy = j
            .restart
            .as_ref()
            .and_then(|r| r.strategy().ok())
            .unwrap_or(sluice::restart::RestartStrategy::None);
        let mut tracker = sluice::restart::RestartTracker::new(strategy, j.id);
        let first = std::time::Instant::now();
        loop {
            match tracker.on_failure(first.elapsed(), std::time::Duration::ZERO) {
                Some(delay) => {
                    tracing::warn!(job = %j.name, error = %e.message, retry_in = ?delay, "a job of the last run cannot start again yet");
                    tokio::time::sleep(delay).await;
                    match self.start(j.id, j.submit(), true).await {
                        Ok(()) => return,
                        Err(again) => e = again,
                    }
                }
                None => {
                    tracing::error!(job = %j.name, error = %e.message, "a job of the last run cannot start again");
                    self.persist_stored(&Stored {
                        status: JobStatus::Failed,
                        error: Some(e.message),
                        ..j
                    });
                    return;
                }
            }
        }
    }

    pub(crate) fn checkpoint_dir(&self, id: u64) -> Option<std::path::PathBuf> {
        self.data_dir
            .as_ref()
            .map(|d| d.join("checkpoints").join(id.to_string()))
    }

    /// Keeps the rules added through the API (not those of the configuration) in
    /// `<data-dir>/alert-rules.json`, so that they survive a restart.
    pub(crate) fn persist_rules(&self) -> Result<(), ApiError> {
        let Some(dir) = &self.data_dir else {
            return Ok(());
        };
        let rules: Vec<crate::alerts::AlertRule> = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rules()
            .iter()
            .filter(|r| !self.config_rules.contains(&r.name))
            .cloned()
            .collect();
        serde_json::to_vec_pretty(&rules)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::durable::write_file(&dir.join(RULES_FILE), &b))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "not_saved",
                    format!("the alert rules could not be saved: {e}"),
                )
            })
    }

    pub(crate) fn persist_stored(&self, s: &Stored) {
        let Some(dir) = &self.data_dir else { return };
        let path = dir.join("jobs").join(format!("{}.json", s.id));
        let r = serde_json::to_vec_pretty(s)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::durable::write_file(&path, &b));
        if let Err(e) = r {
            tracing::error!(error = %e, path = %path.display(), "cannot save the job definition");
        }
    }

    pub(crate) fn persist(&self, j: &JobEntry) {
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

    pub(crate) async fn start(
        self: &Arc<Self>,
        id: u64,
        s: Submit,
        restore: bool,
    ) -> Result<(), ApiError> {
        let name = s.name.clone().unwrap_or_else(|| format!("job-{id}"));
        // A job's name keys its logs, its Kafka consumer group and transactional ids:
        // two jobs of one name would share them.
        if let Some(other) = self.all().iter().find(|j| j.name == name && j.id != id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "name_taken",
                format!(
                    "job {} is named `{name}` already; names are unique on a server (they name the job's logs, consumer group and transactional ids)",
                    other.id
                ),
            ));
        }
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
        // Every file a connector names is checked before it is opened, planning included.
        let guard = crate::sandbox::SandboxGuard::new(self.sandbox.clone());
        let mut registry = sluice_connectors::registry()
            .with_guard(Arc::<crate::sandbox::SandboxGuard>::clone(&guard));
        // A bare SELECT's rows would go to the server's standard output, where nobody
        // sees them: it is planned into a sink of its own, to be refused by name below.
        registry.register_sink(sluice_connectors::ChannelSink::new(SELECT_SINK));
        let mut ctx = sluice::sql_context(registry.clone())
            .with_select_sink(sluice_plan::ConnectorSpec::new(SELECT_SINK));
        let bad_sql = |e: String| {
            guard
                .refused()
                .unwrap_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_sql", e))
        };
        for (k, v) in &settings {
            ctx.set(k, v).map_err(|e| bad_sql(e.to_string()))?;
        }
        let job = ctx
            .plan_script(&s.sql)
            .map_err(|e| bad_sql(e.to_string()))?;
        if let Some(plan) = &job.plan
            && plan.nodes.iter().any(
                |n| matches!(&n.kind, sluice_plan::NodeKind::Sink(c) if c.connector == SELECT_SINK),
            )
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "select_not_a_job",
                "a SELECT's rows would go to the server's standard output, where nobody sees them: run it in `sluice sql --server URL` (its rows come back to you), or INSERT INTO a table",
            ));
        }
        let mut plan = job.plan.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_job",
                "the script has no INSERT INTO or SELECT: nothing to run",
            )
        })?;
        plan.config.memory_limit = match (plan.config.memory_limit, self.job_memory_limit) {
            (Some(own), Some(server)) => Some(own.min(server)),
            (own, server) => own.or(server),
        };
        self.check_files(&plan, s.from_savepoint.as_deref())?;
        let lineage = lineage(&plan);
        let cluster = ClusterRef::of(&plan);
        #[cfg(feature = "kafka")]
        if let Some(split) = keyed_split(&plan, &registry, cp_dir.as_deref(), &s)? {
            let keyed = Keyed {
                split,
                registry,
                lineage,
                cluster,
            };
            return self.start_keyed(id, name, s, keyed).await;
        }
        let graph = graph_of(&plan);
        let unbounded_state = crate::diagnosis::unbounded_state(&plan);
        let pipeline = sluice::Pipeline::from_plan(plan);
        pipeline.registry(registry);
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
        let strategy = restart_strategy(&s)?;
        let prepared = pipeline.prepare().map_err(|e| {
            guard
                .refused()
                .unwrap_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_job", e.to_string()))
        })?;
        let explain = prepared.explain();
        // Jobs run on threads of their own: whatever a job does, the API answers.
        let started = jobs_runtime()
            .spawn(async move { prepared.start().await })
            .await
            .map_err(|e| SluiceError::internal(format!("starting the job failed: {e}")));
        let handle = started.and_then(|r| r).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "start_failed",
                e.to_string(),
            )
        })?;
        let shown = Shown {
            explain,
            graph,
            unbounded_state,
            lineage,
            cluster,
        };
        let attempt = (handle.metrics(), handle.stop_handle());
        let entry = Arc::new(JobEntry::running(id, name, s, attempt, shown, false));
        self.jobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&entry));
        self.persist(&entry);
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            // The supervisor runs as a task of its own so that a panic in it fails this
            // job, visibly, instead of leaving it shown as running.
            let supervisor = {
                let entry = Arc::clone(&entry);
                jobs_runtime()
                    .spawn(async move { supervise(&entry, pipeline, handle, strategy).await })
            };
            let end = match supervisor.await {
                Ok(end) => end,
                Err(e) => {
                    let why = match e.try_into_panic() {
                        Ok(p) => sluice_types::panic_message(p.as_ref()),
                        Err(e) => e.to_string(),
                    };
                    let e = SluiceError::internal(format!("the job's supervisor failed: {why}"));
                    tracing::error!(job = %entry.name, error = %e, "job failed");
                    entry.record_failure(&e, false);
                    (JobStatus::Failed, Some(e.to_string()))
                }
            };
            *entry.status.lock().unwrap_or_else(|p| p.into_inner()) = end;
            manager.persist(&entry);
        });
        Ok(())
    }

    /// Starts an instance of a cluster job with keyed state: its fronts and the
    /// partition tasks the groups give it (see `sluice::cluster::run_keyed`).
    #[cfg(feature = "kafka")]
    async fn start_keyed(
        self: &Arc<Self>,
        id: u64,
        name: String,
        s: Submit,
        k: Keyed,
    ) -> Result<(), ApiError> {
        let strategy = restart_strategy(&s)?;
        let front = k.split.fronts[0].clone();
        let graph = graph_of(&front);
        let unbounded_state = crate::diagnosis::unbounded_state(&front);
        let stages: String = k
            .split
            .stages
            .iter()
            .map(|stage| {
                format!(
                    "keyed stage {}: a task per partition of {} (group {})\n",
                    stage.index,
                    stage.inputs.join(", "),
                    stage.assignment_group
                )
            })
            .collect();
        let registry = k.registry.clone();
        // The first front's attempts, the latest one kept: the first makes the entry,
        // later ones (its restarts) replace the entry's metrics and stop handle.
        type Attempt = (Arc<JobMetrics>, StopHandle);
        let (attempts_tx, mut attempts) = tokio::sync::watch::channel::<Option<Attempt>>(None);
        let hook: sluice::cluster::FrontHook = Arc::new(move |h: &sluice_runtime::JobHandle| {
            attempts_tx.send_replace(Some((h.metrics(), h.stop_handle())));
        });
        // Stopped through the front's stop handle (cancel): the instance ends with it.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut run = jobs_runtime().spawn(sluice::cluster::run_keyed(
            k.split,
            k.registry,
            strategy,
            stop_rx,
            sluice::cluster::RunningJobs::default(),
            Some(hook),
        ));
        let attempt = tokio::select! {
            a = attempts.wait_for(Option::is_some) => a.ok().and_then(|a| a.clone()),
            r = &mut run => {
                let why = match r {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "it ended before its front started".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "start_failed", why));
            }
        };
        let Some(attempt) = attempt else {
            let why = match run.await {
                Ok(Err(e)) => e.to_string(),
                _ => "its front did not start".to_string(),
            };
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "start_failed",
                why,
            ));
        };
        // Explained once its repartition topics exist (the front writes one).
        let p = sluice::Pipeline::from_plan(front);
        p.registry(registry);
        let explain = match p.prepare() {
            Ok(prepared) => prepared.explain() + &stages,
            Err(e) => format!("the front: {e}\n{stages}"),
        };
        let shown = Shown {
            explain,
            unbounded_state,
            graph,
            lineage: k.lineage,
            cluster: k.cluster,
        };
        let entry = Arc::new(JobEntry::running(id, name, s, attempt, shown, true));
        {
            // Every later attempt (and one that started while the entry was made).
            let entry = Arc::clone(&entry);
            attempts.mark_changed();
            tokio::spawn(async move {
                while attempts.changed().await.is_ok() {
                    let latest = attempts.borrow_and_update().clone();
                    if let Some(a) = latest {
                        *entry.attempt.write().unwrap_or_else(|p| p.into_inner()) = a;
                    }
                }
            });
        }
        self.jobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&entry));
        self.persist(&entry);
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let result = match run.await {
                Ok(r) => r,
                Err(e) => Err(SluiceError::internal(format!(
                    "the cluster instance failed: {e}"
                ))),
            };
            drop(stop_tx);
            let status = entry.status.lock().unwrap_or_else(|p| p.into_inner()).0;
            let end = match (result, status) {
                (_, s @ (JobStatus::Cancelled | JobStatus::Stopped)) => (s, None),
                (Ok(()), _) => (JobStatus::Finished, None),
                (Err(e), _) => {
                    tracing::error!(job = %entry.name, error = %e, "job failed");
                    entry.record_failure(&e, false);
                    (JobStatus::Failed, Some(e.to_string()))
                }
            };
            *entry.status.lock().unwrap_or_else(|p| p.into_inner()) = end;
            manager.persist(&entry);
        });
        Ok(())
    }

    /// What the alert rules see of every job now.
    pub(crate) fn samples(&self) -> Vec<crate::alerts::JobSample> {
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

    /// A history sample of every running job (a job that ended keeps what it had).
    pub(crate) fn sample_history(&self) {
        let now = std::time::Instant::now();
        let now_ms = now_ms();
        for j in self.all() {
            let status = j.status.lock().unwrap_or_else(|p| p.into_inner()).0;
            if status == JobStatus::Running {
                let m = j.metrics();
                j.history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sample(&m, now_ms, now);
            }
        }
    }

    /// One evaluation of the alert rules; what changed is sent in the background.
    pub(crate) fn evaluate_alerts(self: &Arc<Self>) {
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

    pub(crate) fn send(
        self: &Arc<Self>,
        sends: Vec<(crate::alerts::Webhook, crate::alerts::Notification)>,
    ) {
        let public_only = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_public_only();
        for (hook, n) in sends {
            tracing::warn!(rule = %n.rule, job = %n.job, status = n.status, value = %n.value, "alert");
            self.alert_history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record((&n).into());
            let m = Arc::clone(self);
            tokio::spawn(async move {
                let (attempts, error) = crate::alerts::deliver(&hook, &n, public_only).await;
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

    /// The job's own files (dead letters, checkpoints, savepoints) must be inside the
    /// sandbox; connectors' files are checked by the registry's guard.
    pub(crate) fn check_files(
        &self,
        plan: &sluice_plan::JobPlan,
        from_savepoint: Option<&str>,
    ) -> Result<(), ApiError> {
        let data = self.data_dir.as_deref();
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

    pub(crate) fn get(&self, id: u64) -> Result<Arc<JobEntry>, ApiError> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(id))
    }

    pub(crate) fn all(&self) -> Vec<Arc<JobEntry>> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether the call carries the server's token (every one does when no token is
    /// set). Compared in constant time: how long a refusal takes says nothing about
    /// how much of a guess was right.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }
}

/// `a == b`, taking the same time whatever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Waits for a job; on failure restarts it as `strategy` says, from its latest
/// completed checkpoint, recording every failure. Returns its final status.
/// What an instance of a cluster job with keyed state starts with.
#[cfg(feature = "kafka")]
struct Keyed {
    split: sluice_runtime::cluster::KeyedSplit,
    registry: sluice_runtime::source::ConnectorRegistry,
    lineage: Lineage,
    cluster: Option<ClusterRef>,
}

/// The split of `plan` if it is an instance of a cluster job with keyed state; refused
/// with the reason where such an instance cannot run from a server.
#[cfg(feature = "kafka")]
fn keyed_split(
    plan: &sluice_plan::JobPlan,
    registry: &sluice_runtime::source::ConnectorRegistry,
    server_dir: Option<&str>,
    s: &Submit,
) -> Result<Option<sluice_runtime::cluster::KeyedSplit>, ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_job", why);
    if plan.config.cluster.is_none() {
        return Ok(None);
    }
    let Some(split) = sluice::cluster::keyed(plan, registry).map_err(|e| bad(e.to_string()))?
    else {
        return Ok(None);
    };
    if s.from_savepoint.is_some() {
        return Err(bad(
            "an instance of a cluster job with keyed state starts each partition from the checkpoint its committed offset names; it starts from no savepoint".into(),
        ));
    }
    let dir = plan.config.checkpoint.dir.as_deref();
    if dir.is_none() || dir == server_dir {
        return Err(bad(
            "an instance of a cluster job with keyed state keeps its partitions' state where every instance reads it: SET 'execution.checkpointing.dir' to an s3:// URL or a directory every instance mounts".into(),
        ));
    }
    Ok(Some(split))
}

/// A job's dataflow as the dashboard draws it.
fn graph_of(plan: &sluice_plan::JobPlan) -> Graph {
    Graph {
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
    }
}

/// The restart strategy a submission asks for (none by default).
fn restart_strategy(s: &Submit) -> Result<sluice::restart::RestartStrategy, ApiError> {
    match &s.restart {
        Some(r) => r
            .strategy()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())),
        None => Ok(sluice::restart::RestartStrategy::None),
    }
}

pub(crate) async fn supervise(
    entry: &JobEntry,
    pipeline: sluice::Pipeline,
    handle: sluice_runtime::JobHandle,
    strategy: sluice::restart::RestartStrategy,
) -> (JobStatus, Option<String>) {
    /// The server's view of the attempts: each attempt's metrics and stop handle go to
    /// the entry; failures are recorded; a cancelled or stopped job stays down.
    struct Hooks<'a>(&'a JobEntry);

    impl Hooks<'_> {
        fn running(&self) -> bool {
            self.0.status.lock().unwrap_or_else(|p| p.into_inner()).0 == JobStatus::Running
        }
    }

    impl sluice::RestartHooks for Hooks<'_> {
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
