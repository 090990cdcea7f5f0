//! `sluice bench nexmark`: a Nexmark query from the generator into a blackhole, with
//! events per second and per CPU-second, end-to-end latency and peak memory.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde::Serialize;

use crate::examples::{ExampleArgs, nexmark_query};
use sluice::runtime::checkpoint::CheckpointStatus;
use sluice::{Result, SluiceError};

/// Queries with a hand-built Rust API pipeline (`--api rust`).
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q5", "q7", "q11"];

/// The Nexmark tables over the generator (`examples/nexmark/tables.sql`).
pub const NEXMARK_TABLES: &str = include_str!("../../../examples/nexmark/tables.sql");

/// Every query shipped in `examples/nexmark/`, by name.
pub const SQL_QUERIES: &[(&str, &str)] = &[
    ("q0", include_str!("../../../examples/nexmark/q0.sql")),
    ("q1", include_str!("../../../examples/nexmark/q1.sql")),
    ("q2", include_str!("../../../examples/nexmark/q2.sql")),
    ("q3", include_str!("../../../examples/nexmark/q3.sql")),
    ("q4", include_str!("../../../examples/nexmark/q4.sql")),
    ("q5", include_str!("../../../examples/nexmark/q5.sql")),
    ("q6", include_str!("../../../examples/nexmark/q6.sql")),
    ("q7", include_str!("../../../examples/nexmark/q7.sql")),
    ("q8", include_str!("../../../examples/nexmark/q8.sql")),
    ("q9", include_str!("../../../examples/nexmark/q9.sql")),
    ("q10", include_str!("../../../examples/nexmark/q10.sql")),
    ("q11", include_str!("../../../examples/nexmark/q11.sql")),
    ("q12", include_str!("../../../examples/nexmark/q12.sql")),
    ("q13", include_str!("../../../examples/nexmark/q13.sql")),
    ("q14", include_str!("../../../examples/nexmark/q14.sql")),
    ("q15", include_str!("../../../examples/nexmark/q15.sql")),
    ("q16", include_str!("../../../examples/nexmark/q16.sql")),
    ("q17", include_str!("../../../examples/nexmark/q17.sql")),
    ("q18", include_str!("../../../examples/nexmark/q18.sql")),
    ("q19", include_str!("../../../examples/nexmark/q19.sql")),
    ("q20", include_str!("../../../examples/nexmark/q20.sql")),
    ("q21", include_str!("../../../examples/nexmark/q21.sql")),
    ("q22", include_str!("../../../examples/nexmark/q22.sql")),
];

/// How fast the generator goes: events per second of event time, and a wall-clock pace.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pace {
    /// Events per second of event time (`first-event.rate`); with `wall` unset, 10 M.
    pub event_rate: Option<u64>,
    /// Events per wall-clock second, all subtasks together (`rate-limit`); event time
    /// then advances as fast unless `event_rate` says otherwise.
    pub wall: Option<f64>,
}

impl Pace {
    /// The event rate in effect: the given one, or the wall-clock pace's.
    fn event_rate(&self) -> Option<u64> {
        self.event_rate
            .or(self.wall.map(|w| w.round().max(1.0) as u64))
    }
}

/// A shipped Nexmark query as one script (tables first) for `events` events at the
/// given pace, into the blackhole sink.
pub fn nexmark_sql(query: &str, events: u64, pace: Pace) -> Result<String> {
    let Some((_, q)) = SQL_QUERIES.iter().find(|(n, _)| *n == query) else {
        return Err(SluiceError::user(format!(
            "unknown query `{query}`; available: {}",
            SQL_QUERIES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let mut options = format!("'events.num' = '{events}'");
    if let Some(r) = pace.event_rate() {
        options.push_str(&format!(", 'first-event.rate' = '{r}'"));
    }
    if let Some(w) = pace.wall {
        options.push_str(&format!(", 'rate-limit' = '{w}'"));
    }
    let script = format!("{NEXMARK_TABLES}\n{q}");
    Ok(script.replace("'events.num' = '10000000'", &options))
}

/// Which front end builds the benchmarked job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Api {
    /// The SQL text in `examples/nexmark/`.
    #[default]
    Sql,
    /// The hand-built Rust API pipeline.
    Rust,
}

impl std::str::FromStr for Api {
    type Err = SluiceError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sql" => Ok(Self::Sql),
            "rust" => Ok(Self::Rust),
            other => Err(SluiceError::user(format!(
                "unknown api `{other}`; use sql or rust"
            ))),
        }
    }
}

/// One benchmark result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Query name.
    pub query: String,
    /// `sql` or `rust`: which front end built the job.
    pub api: String,
    /// Nexmark events generated (all kinds: persons, auctions, bids).
    pub events: u64,
    /// Rows out of the source (bids).
    pub source_rows: u64,
    /// Rows into the sink.
    pub sink_rows: u64,
    /// Rows that arrived after their windows closed.
    pub late_rows: u64,
    /// Parallelism of every operator.
    pub parallelism: usize,
    /// The wall-clock pace (events per second), if paced.
    pub rate: Option<f64>,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds (user + system) of the process during the run.
    pub cpu_s: f64,
    /// Events per wall-clock second.
    pub events_per_sec: f64,
    /// Events per CPU-second.
    pub events_per_cpu_sec: f64,
    /// Median end-to-end latency (ms): sink time minus ingest time.
    pub latency_p50_ms: f64,
    /// 99th percentile end-to-end latency (ms).
    pub latency_p99_ms: f64,
    /// Peak resident memory of the process (MiB).
    pub peak_rss_mb: f64,
    /// Checkpoint interval (ms), if the run took checkpoints.
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoints completed during the run.
    pub checkpoints: u64,
}

/// CPU time of this process so far (user + system), seconds, from `/proc/self/stat`
/// (Linux reports it in USER_HZ = 100 ticks per second).
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) start at ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Peak resident set size of this process, MiB.
pub fn peak_rss_mb() -> f64 {
    // /proc/self/status VmHWM is the peak RSS in kB.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs one query.
pub async fn run_nexmark(
    query: &str,
    events: u64,
    parallelism: usize,
    pace: Pace,
    checkpoint_interval: Option<std::time::Duration>,
    api: Api,
) -> Result<BenchReport> {
    let pipeline = match api {
        Api::Sql => {
            let script = nexmark_sql(query, events, pace)?;
            let p = parallelism.to_string();
            let name = format!("nexmark-{query}");
            let job = sluice::plan_sql(
                &script,
                &[("parallelism.default", &p), ("pipeline.name", &name)],
            )?;
            let plan = job
                .plan
                .ok_or_else(|| SluiceError::internal("the query has no INSERT"))?;
            sluice::Pipeline::from_plan(plan)
        }
        Api::Rust => {
            if !QUERIES.contains(&query) {
                return Err(SluiceError::user(format!(
                    "no Rust API pipeline for `{query}`; those with one: {}",
                    QUERIES.join(", ")
                )));
            }
            let args = ExampleArgs {
                events: Some(events),
                parallelism,
                out_dir: std::env::temp_dir(),
                event_rate: pace.event_rate(),
                rows_per_second: pace.wall,
                input: None,
            };
            nexmark_query(query, &args)
        }
    };
    let checkpoint_dir = tempfile_dir("sluice-bench-checkpoints")?;
    if let Some(i) = checkpoint_interval {
        pipeline
            .checkpointing(i)
            .checkpoint_dir(checkpoint_dir.display().to_string());
    }
    let (metrics, wall_s, cpu_s) = run_measured(pipeline.prepare()?).await?;
    let lat = metrics.sink_latency();
    Ok(BenchReport {
        query: query.to_string(),
        api: format!("{api:?}").to_lowercase(),
        events,
        source_rows: metrics.source_records(),
        sink_rows: metrics.sink_records(),
        late_rows: metrics.late_records(),
        parallelism,
        rate: pace.wall,
        wall_s,
        cpu_s,
        events_per_sec: events as f64 / wall_s,
        events_per_cpu_sec: events as f64 / cpu_s.max(1e-9),
        latency_p50_ms: lat.quantile(0.50) as f64 / 1000.0,
        latency_p99_ms: lat.quantile(0.99) as f64 / 1000.0,
        peak_rss_mb: peak_rss_mb(),
        checkpoint_interval_ms: checkpoint_interval.map(|i| i.as_millis() as u64),
        checkpoints: metrics.checkpoints.completed.load(Relaxed),
    })
}

/// Runs a prepared job to its end: its metrics, the wall-clock and the CPU seconds the
/// process spent meanwhile.
async fn run_measured(
    job: sluice::runtime::PreparedJob,
) -> Result<(
    std::sync::Arc<sluice::runtime::metrics::JobMetrics>,
    f64,
    f64,
)> {
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let handle = job.start().await?;
    let metrics = handle.metrics();
    handle.wait().await?;
    Ok((metrics, t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
}

/// A fresh directory under the system temp dir (removed first if it exists).
fn tempfile_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// What `sluice bench state` measured.
#[derive(Clone, Debug, Serialize)]
pub struct StateBenchReport {
    /// Distinct keys in the open window.
    pub keys: u64,
    /// Keys held by the largest checkpoint (rows of its window state).
    pub checkpointed_rows: u64,
    /// Trigger to completion of the largest checkpoint (ms).
    pub checkpoint_ms: u64,
    /// Its size on disk (bytes).
    pub checkpoint_bytes: u64,
    /// Its longest barrier alignment (ms).
    pub alignment_ms: f64,
    /// Restore: reading and decoding the checkpoint (ms).
    pub restore_read_ms: u64,
    /// Restore: handing the state to the window operators (ms, slowest subtask).
    pub restore_tasks_ms: u64,
}

/// The windowed job of `bench state`: `keys` distinct keys in one year-long tumbling
/// window (ingestion time), count and sum per key, into a blackhole.
fn state_job(keys: u64, parallelism: usize, dir: &str) -> sluice::Pipeline {
    use arrow::datatypes::{DataType, Field, Schema};
    use sluice::prelude::*;
    let p = Pipeline::new("bench-state");
    p.parallelism(parallelism).checkpoint_dir(dir);
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    p.source(
        DatagenSource::new(schema)
            .rows(keys)
            .rows_per_second(keys as f64 / 2.0)
            .field("k", "kind", "sequence")
            .field("k", "start", 0)
            .field("k", "end", keys - 1)
            .field("v", "max", 1_000),
    )
    .key_by(["k"])
    .window(Window::tumbling(Duration::from_secs(365 * 86_400)))
    .aggregate([count_star().alias("n"), sum(col("v")).alias("total")])
    .sink(BlackholeSink::new());
    p
}

/// Checkpoint duration and size for `keys` keys of window state, and restore time.
/// The input is paced over about two seconds, checkpointed every 250 ms (into
/// `checkpoints`, a directory or object-store URL, else a temporary directory); the
/// largest completed checkpoint is reported and then restored.
pub async fn run_state_bench(
    keys: u64,
    parallelism: usize,
    checkpoints: Option<&str>,
) -> Result<StateBenchReport> {
    let local = tempfile_dir("sluice-bench-state")?;
    let dir = match checkpoints {
        Some(url) => format!(
            "{}/bench-state-{}",
            url.trim_end_matches('/'),
            std::process::id()
        ),
        None => local.display().to_string(),
    };
    let job = state_job(keys, parallelism, &dir);
    job.checkpointing(std::time::Duration::from_millis(250));
    let handle = job.start().await?;
    let metrics = handle.metrics();
    handle.wait().await?;
    let largest = metrics
        .checkpoints
        .history()
        .into_iter()
        .filter(|r| r.kind == "checkpoint" && r.status == CheckpointStatus::Completed)
        .max_by_key(|r| r.state_bytes)
        .ok_or_else(|| SluiceError::internal("no checkpoint completed"))?;
    let restored = state_job(keys, parallelism, &format!("{dir}/restored"));
    restored.restore_from(sluice::RestoreFrom::Path(largest.location.clone()));
    let handle = restored.start().await?;
    let rmetrics = handle.metrics();
    handle.wait().await?;
    let _ = std::fs::remove_dir_all(&local);
    Ok(StateBenchReport {
        keys,
        checkpointed_rows: keys.saturating_sub(rmetrics.source_records()),
        checkpoint_ms: largest.duration_ms,
        checkpoint_bytes: largest.state_bytes,
        alignment_ms: largest.alignment_ms,
        restore_read_ms: rmetrics.checkpoints.restore_read_ms.load(Relaxed),
        restore_tasks_ms: rmetrics.checkpoints.restore_tasks_ms.load(Relaxed),
    })
}

/// What `sluice bench file` measured.
#[derive(Clone, Debug, Serialize)]
pub struct FileBenchReport {
    /// The script run.
    pub script: String,
    /// What `$INPUT` stood for in it, if anything.
    pub input: Option<String>,
    /// Parallelism of every operator (unless the script sets its own).
    pub parallelism: usize,
    /// Each source's pace in rows per wall-clock second (`--rate`), if paced.
    pub rate: Option<f64>,
    /// Rows out of the sources.
    pub source_rows: u64,
    /// Rows into the sinks.
    pub sink_rows: u64,
    /// Rows gone to the dead-letter output (undecodable lines).
    pub dead_letters: u64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds (user + system) of the process during the run.
    pub cpu_s: f64,
    /// Source rows per wall-clock second.
    pub rows_per_sec: f64,
    /// Source rows per CPU-second.
    pub rows_per_cpu_sec: f64,
    /// Median end-to-end latency (ms): sink time minus ingest time.
    pub latency_p50_ms: f64,
    /// 99th percentile end-to-end latency (ms).
    pub latency_p99_ms: f64,
    /// Peak resident memory of the process (MiB).
    pub peak_rss_mb: f64,
}

/// The source option that paces a connector, all its subtasks together.
fn pace_option(connector: &str) -> Option<&'static str> {
    match connector {
        "filesystem" | "datagen" => Some("rows-per-second"),
        "nexmark" => Some("rate-limit"),
        _ => None,
    }
}

/// Runs a SQL script (its files named in it, `$INPUT` standing for `input`) to its end,
/// measuring rows per second and per CPU-second, end-to-end latency and peak memory;
/// `rate` paces each source at that many rows per wall-clock second.
pub async fn run_file_bench(
    script: &std::path::Path,
    input: Option<&std::path::Path>,
    parallelism: usize,
    rate: Option<f64>,
) -> Result<FileBenchReport> {
    let mut text = std::fs::read_to_string(script).map_err(|e| {
        SluiceError::user(format!("cannot read {}", script.display())).with_source(e)
    })?;
    match (input, text.contains("$INPUT")) {
        (Some(i), true) => text = text.replace("$INPUT", &i.display().to_string()),
        (Some(_), false) => {
            return Err(SluiceError::user(format!(
                "--input is given but {} has no `$INPUT` to put it in (write 'path' = '$INPUT')",
                script.display()
            )));
        }
        (None, true) => {
            return Err(SluiceError::user(format!(
                "{} reads `$INPUT`: give it with --input PATH",
                script.display()
            )));
        }
        (None, false) => {}
    }
    let p = parallelism.to_string();
    let job = sluice::plan_sql(
        &text,
        &[("parallelism.default", &p), ("pipeline.name", "bench-file")],
    )?;
    let mut plan = job
        .plan
        .ok_or_else(|| SluiceError::user("the script has no INSERT INTO or SELECT"))?;
    if let Some(r) = rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(SluiceError::user("--rate must be a positive number"));
        }
        for n in &mut plan.nodes {
            if let sluice::plan::NodeKind::Source(s) = &mut n.kind {
                let Some(option) = pace_option(&s.spec.connector) else {
                    return Err(SluiceError::user(format!(
                        "--rate paces filesystem, datagen and nexmark sources, not `{}`",
                        s.spec.connector
                    )));
                };
                s.spec.options.insert(option.into(), r.to_string());
            }
        }
    }
    let (metrics, wall_s, cpu_s) =
        run_measured(sluice::Pipeline::from_plan(plan).prepare()?).await?;
    let lat = metrics.sink_latency();
    let rows = metrics.source_records();
    Ok(FileBenchReport {
        script: script.display().to_string(),
        input: input.map(|i| i.display().to_string()),
        parallelism,
        rate,
        source_rows: rows,
        sink_rows: metrics.sink_records(),
        dead_letters: metrics.dead_letters(),
        wall_s,
        cpu_s,
        rows_per_sec: rows as f64 / wall_s,
        rows_per_cpu_sec: rows as f64 / cpu_s.max(1e-9),
        latency_p50_ms: lat.quantile(0.50) as f64 / 1000.0,
        latency_p99_ms: lat.quantile(0.99) as f64 / 1000.0,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_pace_sets_the_event_rate_unless_given() {
        let paced = nexmark_sql(
            "q0",
            1000,
            Pace {
                event_rate: None,
                wall: Some(5000.0),
            },
        )
        .unwrap();
        assert!(paced.contains("'rate-limit' = '5000'"), "{paced}");
        assert!(paced.contains("'first-event.rate' = '5000'"), "{paced}");
        let both = nexmark_sql(
            "q0",
            1000,
            Pace {
                event_rate: Some(100),
                wall: Some(5000.0),
            },
        )
        .unwrap();
        assert!(both.contains("'first-event.rate' = '100'"), "{both}");
        let unpaced = nexmark_sql("q0", 1000, Pace::default()).unwrap();
        assert!(!unpaced.contains("rate-limit"), "{unpaced}");
    }
}
