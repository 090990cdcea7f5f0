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
    pub(crate) lineage: Lineage,
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

impl JobEntry {
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

/// A submitted job, as the API takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
            alerts: Mutex::new(
                crate::alerts::Alerts::new(alert_rules).public_only(webhooks_public_only),
            ),
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

    pub(crate) fn checkpoint_dir(&self, id: u64) -> Option<std::path::PathBuf> {
        self.data_dir
            .as_ref()
            .map(|d| d.join("checkpoints").join(id.to_string()))
    }

    pub(crate) fn persist_stored(&self, s: &Stored) {
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
        let registry = sluice_connectors::registry()
            .with_guard(Arc::<crate::sandbox::SandboxGuard>::clone(&guard));
        let job = sluice::plan_sql_with(registry.clone(), &s.sql, &settings).map_err(|e| {
            guard
                .refused()
                .unwrap_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_sql", e.to_string()))
        })?;
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
        let strategy = match &s.restart {
            Some(r) => r.strategy().map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            })?,
            None => sluice::restart::RestartStrategy::None,
        };
        let prepared = pipeline.prepare().map_err(|e| {
            guard
                .refused()
                .unwrap_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_job", e.to_string()))
        })?;
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
            // The supervisor runs as a task of its own so that a panic in it fails this
            // job, visibly, instead of leaving it shown as running.
            let supervisor = {
                let entry = Arc::clone(&entry);
                tokio::spawn(async move { supervise(&entry, pipeline, handle, strategy).await })
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

    pub(crate) fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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
