//! Per-job logs. Every task runs in a `task` span with its job and task names, so each
//! `tracing` event knows where it came from; [`LogLayer`] keeps the events of each job in
//! a bounded in-memory buffer that the server searches by task, level and text.
//!
//! ```text
//!  tracing event ──> LogLayer: job, task (from the event or its spans) ──> LogStore
//!                                                  GET /api/jobs/{id}/logs?level=error
//!                                                  <data-dir>/logs/<job>.log (rotated)
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Events kept per job (the oldest go first).
const PER_JOB: usize = 10_000;

/// One log event of a job.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// When, epoch ms.
    pub time_ms: i64,
    /// ERROR, WARN, INFO, DEBUG, TRACE.
    pub level: String,
    /// The task (`operator[subtask]`), or empty for job-wide events.
    pub task: String,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields (`key=value`).
    pub message: String,
    /// The stack trace of an error, when it carries one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace: String,
}

/// Every job's recent log events, and optionally their files on disk.
#[derive(Default)]
pub struct LogStore {
    jobs: Mutex<HashMap<String, VecDeque<LogEntry>>>,
    disk: Mutex<Option<DiskLogs>>,
}

/// Per-job log files: `<dir>/<job>.log` as JSON lines, rotated at `max_bytes` into
/// `<job>.log.1` … `<job>.log.<keep>` (the oldest dropped).
pub struct DiskLogs {
    dir: std::path::PathBuf,
    max_bytes: u64,
    keep: usize,
    open: HashMap<String, (std::fs::File, u64)>,
}

impl DiskLogs {
    /// Log files under `dir` (created), each rotated at `max_bytes`, `keep` old ones kept.
    pub fn new(dir: std::path::PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        crate::durable::create_private_dir(&dir)?;
        Ok(Self {
            dir,
            max_bytes,
            keep,
            open: HashMap::new(),
        })
    }

    fn file_name(job: &str) -> String {
        let safe: String = job
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    true => c,
                    false => '_',
                },
            )
            .collect();
        format!("{safe}.log")
    }

    fn write(&mut self, job: &str, e: &LogEntry) -> std::io::Result<()> {
        use std::io::Write as _;
        let path = self.dir.join(Self::file_name(job));
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Some((_, size)) = self.open.get(job)
            && size + line.len() as u64 > self.max_bytes
        {
            self.open.remove(job);
            for i in (1..self.keep).rev() {
                let from = path.with_extension(format!("log.{i}"));
                if from.exists() {
                    std::fs::rename(&from, path.with_extension(format!("log.{}", i + 1)))?;
                }
            }
            if self.keep > 0 {
                std::fs::rename(&path, path.with_extension("log.1"))?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        let (file, size) = match self.open.entry(job.to_string()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)?;
                let len = f.metadata()?.len();
                v.insert((f, len))
            }
        };
        file.write_all(&line)?;
        *size += line.len() as u64;
        Ok(())
    }
}

/// The process's log store.
pub fn store() -> &'static LogStore {
    static STORE: OnceLock<LogStore> = OnceLock::new();
    STORE.get_or_init(LogStore::default)
}

fn rank(level: &str) -> u8 {
    match level {
        "ERROR" => 5,
        "WARN" => 4,
        "INFO" => 3,
        "DEBUG" => 2,
        _ => 1,
    }
}

impl LogStore {
    /// Also writes every job's events to files (the server does, under its data dir).
    pub fn write_to_disk(&self, logs: DiskLogs) {
        *self.disk.lock().unwrap_or_else(|p| p.into_inner()) = Some(logs);
    }

    fn push(&self, job: &str, e: LogEntry) {
        if let Some(d) = self.disk.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && let Err(err) = d.write(job, &e)
        {
            // Not through `tracing`: this is the log writer itself.
            eprintln!("sluice: cannot write the log file of job {job}: {err}");
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let q = jobs.entry(job.to_string()).or_default();
        if q.len() == PER_JOB {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// A job's events at `min_level` or above, of `task` (substring), containing `text`
    /// (case-insensitive), the newest `limit`, oldest first.
    pub fn query(
        &self,
        job: &str,
        min_level: Option<&str>,
        task: Option<&str>,
        text: Option<&str>,
        limit: usize,
    ) -> Vec<LogEntry> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = jobs.get(job) else {
            return Vec::new();
        };
        let min = min_level.map_or(0, |l| rank(&l.to_ascii_uppercase()));
        let text = text.map(str::to_lowercase);
        let mut out: Vec<LogEntry> = q
            .iter()
            .rev()
            .filter(|e| rank(&e.level) >= min)
            .filter(|e| task.is_none_or(|t| e.task.contains(t)))
            .filter(|e| {
                text.as_ref().is_none_or(|t| {
                    e.message.to_lowercase().contains(t) || e.task.to_lowercase().contains(t)
                })
            })
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Collects the `job` and `task` fields and everything else of an event or span.
#[derive(Default)]
struct Fields {
    job: Option<String>,
    task: Option<String>,
    message: String,
    rest: String,
    trace: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "job" => self.job = Some(value.to_string()),
            "task" => self.task = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            "backtrace" => self.trace = value.to_string(),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "job" => self.job = Some(format!("{value:?}")),
            "task" => self.task = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            "backtrace" => self.trace = format!("{value:?}"),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

/// Where a span's events belong.
#[derive(Clone)]
struct JobTask {
    job: String,
    task: String,
}

/// The `tracing` layer that fills [`store`].
pub struct LogLayer;

impl<S> tracing_subscriber::Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let (Some(job), Some(span)) = (f.job, ctx.span(id)) {
            span.extensions_mut().insert(JobTask {
                job,
                task: f.task.unwrap_or_default(),
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let from_span = || {
            ctx.event_scope(event)?
                .find_map(|s| s.extensions().get::<JobTask>().cloned())
        };
        let (job, task) = match (f.job.take(), f.task.take()) {
            (Some(j), t) => (j, t.unwrap_or_default()),
            (None, t) => match from_span() {
                Some(jt) => (jt.job, t.unwrap_or(jt.task)),
                None => return,
            },
        };
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        store().push(
            &job,
            LogEntry {
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                level: level.to_string(),
                task,
                target: event.metadata().target().to_string(),
                message: format!("{}{}", f.message, f.rest),
                trace: f.trace,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> LogEntry {
        LogEntry {
            time_ms: i as i64,
            level: "INFO".into(),
            task: "t[0]".into(),
            target: "x".into(),
            message: format!("event number {i:04}"),
            trace: String::new(),
        }
    }

    #[test]
    fn log_files_rotate_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DiskLogs::new(dir.path().to_path_buf(), 1000, 2).unwrap();
        for i in 0..100 {
            d.write("my job", &entry(i)).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let (now, one, two) = (
            read("my_job.log"),
            read("my_job.log.1"),
            read("my_job.log.2"),
        );
        assert!(!dir.path().join("my_job.log.3").exists());
        for f in [&now, &one, &two] {
            assert!(f.len() <= 1000, "{}", f.len());
            for line in f.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        // The newest event is in the live file; the files follow each other.
        assert!(now.contains("event number 0099"));
        let first = |f: &str| f.lines().next().unwrap().to_string();
        let last = |f: &str| f.lines().last().unwrap().to_string();
        let n = |l: String| {
            l.split("number ").nth(1).unwrap()[..4]
                .parse::<usize>()
                .unwrap()
        };
        assert_eq!(n(last(&two)) + 1, n(first(&one)));
        assert_eq!(n(last(&one)) + 1, n(first(&now)));
    }
}
