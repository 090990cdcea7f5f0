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
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Events kept per job (the oldest go first).
const PER_JOB: usize = 10_000;
/// Bytes of events kept per job, and for all jobs together (the oldest events of the
/// job that holds the most go first).
const PER_JOB_BYTES: usize = 4 << 20;
const ALL_JOBS_BYTES: usize = 64 << 20;
/// The most of one event's message, and of its stack trace, that is kept.
const MESSAGE_BYTES: usize = 16 << 10;
const TRACE_BYTES: usize = 64 << 10;
/// Log files kept open at once (the least recently written is closed first).
const OPEN_FILES: usize = 16;

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
    jobs: Mutex<Kept>,
    disk: Mutex<Option<DiskLogs>>,
}

/// The events kept in memory, bounded in count and bytes.
#[derive(Default)]
struct Kept {
    jobs: HashMap<String, JobLog>,
    bytes: usize,
}

#[derive(Default)]
struct JobLog {
    entries: VecDeque<LogEntry>,
    bytes: usize,
}

impl LogEntry {
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.level.len()
            + self.task.len()
            + self.target.len()
            + self.message.len()
            + self.trace.len()
    }
}

impl Kept {
    fn push(&mut self, job: &str, e: LogEntry) {
        let size = e.size();
        let log = self.jobs.entry(job.to_string()).or_default();
        log.bytes += size;
        log.entries.push_back(e);
        self.bytes += size;
        while log.entries.len() > PER_JOB || (log.bytes > PER_JOB_BYTES && log.entries.len() > 1) {
            let Some(old) = log.entries.pop_front() else {
                break;
            };
            log.bytes -= old.size();
            self.bytes -= old.size();
        }
        while self.bytes > ALL_JOBS_BYTES {
            let Some(largest) = self.jobs.values_mut().max_by_key(|l| l.bytes) else {
                break;
            };
            let Some(old) = largest.entries.pop_front() else {
                break;
            };
            largest.bytes -= old.size();
            self.bytes -= old.size();
        }
    }
}

/// Per-job log files: `<dir>/<job>.log` as JSON lines, rotated at `max_bytes` into
/// `<job>.log.1` … `<job>.log.<keep>` (the oldest dropped).
pub struct DiskLogs {
    dir: std::path::PathBuf,
    max_bytes: u64,
    keep: usize,
    /// Open files: the file, its size, when it was last written (a counter).
    open: HashMap<String, (std::fs::File, u64, u64)>,
    writes: u64,
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
            writes: 0,
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
        self.writes += 1;
        if let Some((_, size, _)) = self.open.get(job)
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
        if !self.open.contains_key(job) && self.open.len() >= OPEN_FILES {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.open.remove(&k);
            }
        }
        let (file, size, used) = match self.open.entry(job.to_string()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                use std::os::unix::fs::OpenOptionsExt as _;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)?;
                let len = f.metadata()?.len();
                v.insert((f, len, 0))
            }
        };
        *used = self.writes;
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
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job, e);
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
        let kept = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = kept.jobs.get(job).map(|l| &l.entries) else {
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

/// Appends to a string up to a budget of bytes, then refuses (which stops the
/// formatting): a field is never formatted whole only to be cut.
struct Capped<'a> {
    out: &'a mut String,
    left: usize,
}

impl std::fmt::Write for Capped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if s.len() <= self.left {
            self.out.push_str(s);
            self.left -= s.len();
            return Ok(());
        }
        let mut end = self.left;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.push_str(&s[..end]);
        self.out.push_str("… (cut)");
        self.left = 0;
        Err(std::fmt::Error)
    }
}

/// `value` formatted into `out`, at most `max` bytes of it.
fn capped(out: &mut String, max: usize, value: std::fmt::Arguments<'_>) {
    let left = max.saturating_sub(out.len());
    let _ = std::fmt::Write::write_fmt(&mut Capped { out, left }, value);
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "job" => self.job = Some(format!("{value:?}")),
            "task" => self.task = Some(format!("{value:?}")),
            "message" => capped(&mut self.message, MESSAGE_BYTES, format_args!("{value:?}")),
            "backtrace" => capped(&mut self.trace, TRACE_BYTES, format_args!("{value:?}")),
            name => capped(
                &mut self.rest,
                MESSAGE_BYTES,
                format_args!(" {name}={value:?}"),
            ),
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

    #[test]
    fn kept_events_are_bounded_in_bytes_and_files_in_handles() {
        let mut k = Kept::default();
        let big = |i: usize| LogEntry {
            message: "x".repeat(1 << 20),
            ..entry(i)
        };
        for i in 0..20 {
            k.push("a", big(i));
        }
        assert!(k.jobs["a"].bytes <= PER_JOB_BYTES, "{}", k.jobs["a"].bytes);
        // The newest are kept.
        assert_eq!(k.jobs["a"].entries.back().unwrap().time_ms, 19);
        for j in 0..40 {
            k.push(&format!("job-{j}"), big(j));
            k.push(&format!("job-{j}"), big(j));
        }
        assert!(k.bytes <= ALL_JOBS_BYTES, "{}", k.bytes);
        assert_eq!(
            k.bytes,
            k.jobs.values().map(|l| l.bytes).sum::<usize>(),
            "the byte counts agree"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut d = DiskLogs::new(dir.path().to_path_buf(), 1 << 20, 1).unwrap();
        for j in 0..100 {
            d.write(&format!("job-{j}"), &entry(j)).unwrap();
        }
        assert!(d.open.len() <= OPEN_FILES);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 100);
    }

    #[test]
    fn a_huge_field_is_cut_while_it_is_formatted() {
        let mut out = String::new();
        let huge = "y".repeat(10 << 20);
        capped(&mut out, 100, format_args!("{huge}"));
        assert!(out.len() < 120 && out.ends_with("(cut)"), "{}", out.len());
        let mut out = String::from("é");
        capped(&mut out, 2, format_args!("éé"));
        assert_eq!(out, "é… (cut)");
    }
}
