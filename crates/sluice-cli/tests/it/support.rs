//! Test connectors: a sink that records everything it sees, optionally slowly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice::plan::ConnectorSpec;
use sluice::runtime::{Collector, ConnectorRegistry, Operator, OperatorContext, SinkConnector};
use sluice_types::{Batch, Result, TaskInfo, Watermark};

/// What a collect sink saw, in order, per subtask.
#[derive(Clone, Debug)]
pub enum Seen {
    Rows(RecordBatch),
    Watermark(Watermark),
    Close,
}

#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<Vec<(usize, Seen)>>>);

impl Collected {
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, s)| match s {
                Seen::Rows(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.batches().iter().map(|b| b.num_rows()).sum()
    }

    pub fn events_of(&self, subtask: usize) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == subtask)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// The rows of a batch as a SQL client shows them: an updating stream's rows with their
/// kind first, in a column `op` (`+I`, `-U`, `+U`, `-D`), as Flink's changelog mode.
pub fn with_op_column(batch: &Batch) -> RecordBatch {
    let rows = batch.user_columns();
    if batch.row_kinds().is_none() {
        return rows;
    }
    let op: arrow::array::ArrayRef = Arc::new(arrow::array::StringArray::from_iter_values(
        (0..batch.num_rows()).map(|i| batch.row_kind(i).short()),
    ));
    let mut fields = vec![Arc::new(arrow::datatypes::Field::new(
        "op",
        arrow::datatypes::DataType::Utf8,
        false,
    ))];
    fields.extend(rows.schema().fields().iter().cloned());
    let mut columns = vec![op];
    columns.extend(rows.columns().iter().cloned());
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
        .expect("invariant: one more column of the same length")
}

/// A collected batch without its `op` column (the values of every change).
pub fn without_op(b: RecordBatch) -> RecordBatch {
    match b.schema().field(0).name() == "op" {
        true => b
            .project(&(1..b.num_columns()).collect::<Vec<_>>())
            .unwrap(),
        false => b,
    }
}

pub struct CollectConnector {
    pub collected: Collected,
}

impl SinkConnector for CollectConnector {
    type Config = (SchemaRef, u64);

    fn name(&self) -> &'static str {
        "collect"
    }

    fn options(&self) -> &'static [&'static str] {
        &["delay-ms"]
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<(SchemaRef, u64)> {
        let delay = spec
            .options
            .get("delay-ms")
            .map_or(0, |d| d.parse().unwrap());
        Ok((Arc::clone(input), delay))
    }

    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        true
    }

    fn create(&self, config: &Arc<(SchemaRef, u64)>, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(CollectOperator {
            schema: Arc::clone(&config.0),
            delay: Duration::from_millis(config.1),
            subtask: task.subtask,
            collected: self.collected.clone(),
        }))
    }
}

struct CollectOperator {
    schema: SchemaRef,
    delay: Duration,
    subtask: usize,
    collected: Collected,
}

impl CollectOperator {
    fn push(&self, s: Seen) {
        self.collected.0.lock().unwrap().push((self.subtask, s));
    }
}

#[async_trait]
impl Operator for CollectOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _: &mut OperatorContext,
        _: &mut dyn Collector,
    ) -> Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.push(Seen::Rows(with_op_column(&batch)));
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        wm: Watermark,
        _: &mut OperatorContext,
        _: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        self.push(Seen::Watermark(wm));
        Ok(Some(wm))
    }

    async fn on_close(&mut self, _: &mut OperatorContext, _: &mut dyn Collector) -> Result<()> {
        self.push(Seen::Close);
        Ok(())
    }
}

/// The built-in connectors plus a collect sink; returns the registry and what it collects.
pub fn registry_with_collect() -> (ConnectorRegistry, Collected) {
    let collected = Collected::default();
    let mut r = sluice::connectors::registry();
    r.register_sink(CollectConnector {
        collected: collected.clone(),
    });
    (r, collected)
}

pub fn collect() -> ConnectorSpec {
    ConnectorSpec::new("collect")
}

pub fn slow_collect(delay_ms: u64) -> ConnectorSpec {
    ConnectorSpec::new("collect").with_option("delay-ms", delay_ms)
}

/// Sorted, pretty-printed rows: a canonical form for comparing unordered outputs.
pub fn canonical(batches: &[RecordBatch]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for b in batches {
        let mut buf = Vec::new();
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(b).unwrap();
        w.finish().unwrap();
        lines.extend(String::from_utf8(buf).unwrap().lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// A source whose split 0 yields one batch of rows and then waits forever, and whose
/// other splits never yield anything: a partition that gets no data.
pub struct StallingConnector {
    pub rows: RecordBatch,
}

impl sluice::runtime::SourceConnector for StallingConnector {
    type Config = RecordBatch;

    fn name(&self) -> &'static str {
        "stalling"
    }

    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    fn parse(&self, _spec: &ConnectorSpec) -> Result<RecordBatch> {
        Ok(self.rows.clone())
    }

    fn schema(&self, rows: &RecordBatch) -> Result<SchemaRef> {
        Ok(rows.schema())
    }

    fn splits(&self, _: &RecordBatch, parallelism: usize) -> Result<Vec<sluice::runtime::Split>> {
        Ok((0..parallelism)
            .map(|i| sluice::runtime::Split {
                position: None,
                id: format!("stall-{i}"),
                index: i,
            })
            .collect())
    }

    fn reader(
        &self,
        rows: &Arc<RecordBatch>,
        splits: Vec<sluice::runtime::Split>,
        _task: &TaskInfo,
    ) -> Result<Box<dyn sluice::runtime::SourceReader>> {
        let first = splits.iter().any(|s| s.index == 0);
        Ok(Box::new(StallingReader {
            rows: first.then(|| rows.as_ref().clone()),
        }))
    }
}

struct StallingReader {
    rows: Option<RecordBatch>,
}

#[async_trait]
impl sluice::runtime::SourceReader for StallingReader {
    async fn read(
        &mut self,
        _max: usize,
        _ctx: &mut OperatorContext,
    ) -> Result<sluice::runtime::ReadResult> {
        match self.rows.take() {
            Some(rows) => Ok(sluice::runtime::ReadResult::Batch { split: 0, rows }),
            None => std::future::pending().await,
        }
    }
}

/// A one-subtask source reading several splits side by side, as a Kafka consumer reads
/// partitions: it yields one row of each split in turn, then ends each split.
pub struct InterleavedConnector {
    /// Rows per split.
    pub splits: Vec<RecordBatch>,
    /// Fail with an error after this many rows (a source task failing mid-stream).
    pub fail_after: Option<usize>,
}

impl sluice::runtime::SourceConnector for InterleavedConnector {
    type Config = Vec<RecordBatch>;

    fn name(&self) -> &'static str {
        "interleaved"
    }

    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    fn parse(&self, _spec: &ConnectorSpec) -> Result<Vec<RecordBatch>> {
        Ok(self.splits.clone())
    }

    fn schema(&self, splits: &Vec<RecordBatch>) -> Result<SchemaRef> {
        Ok(splits[0].schema())
    }

    fn splits(&self, splits: &Vec<RecordBatch>, _: usize) -> Result<Vec<sluice::runtime::Split>> {
        Ok((0..splits.len())
            .map(|i| sluice::runtime::Split {
                position: None,
                id: format!("split-{i}"),
                index: i,
            })
            .collect())
    }

    fn reader(
        &self,
        splits: &Arc<Vec<RecordBatch>>,
        _assigned: Vec<sluice::runtime::Split>,
        _task: &TaskInfo,
    ) -> Result<Box<dyn sluice::runtime::SourceReader>> {
        Ok(Box::new(InterleavedReader {
            splits: splits.as_ref().clone(),
            announced: 0,
            row: 0,
            next: 0,
            ended: 0,
            emitted: 0,
            fail_after: self.fail_after,
        }))
    }
}

struct InterleavedReader {
    splits: Vec<RecordBatch>,
    announced: usize,
    row: usize,
    next: usize,
    ended: usize,
    emitted: usize,
    fail_after: Option<usize>,
}

#[async_trait]
impl sluice::runtime::SourceReader for InterleavedReader {
    async fn read(
        &mut self,
        _max: usize,
        _ctx: &mut OperatorContext,
    ) -> Result<sluice::runtime::ReadResult> {
        use sluice::runtime::ReadResult;
        // Announce every split before the first row, as a Kafka reader does on assignment.
        if self.announced < self.splits.len() {
            self.announced += 1;
            let rows = self.splits[self.announced - 1].slice(0, 0);
            return Ok(ReadResult::Batch {
                split: self.announced - 1,
                rows,
            });
        }
        let longest = self.splits.iter().map(|b| b.num_rows()).max().unwrap_or(0);
        while self.row < longest {
            let split = self.next;
            let row = self.row;
            self.next += 1;
            if self.next == self.splits.len() {
                self.next = 0;
                self.row += 1;
            }
            if row < self.splits[split].num_rows() {
                if self.fail_after == Some(self.emitted) {
                    return Err(sluice::SluiceError::external("injected source failure"));
                }
                self.emitted += 1;
                let rows = self.splits[split].slice(row, 1);
                return Ok(ReadResult::Batch { split, rows });
            }
        }
        if self.ended < self.splits.len() {
            self.ended += 1;
            return Ok(ReadResult::SplitEnd(self.ended - 1));
        }
        Ok(ReadResult::End)
    }
}

/// A sink that fails its job once, on its `fail-at`-th batch or its `fail-at-record`-th
/// record, with an error or (`'mode' = 'panic'`) a panic, and then never again (the flag
/// survives restarts within the process).
pub struct FailOnceConnector {
    pub failed: Arc<std::sync::atomic::AtomicBool>,
}

/// When and how [`FailOnceConnector`] fails.
pub struct FailAt {
    schema: SchemaRef,
    batch: u64,
    record: u64,
    panic: bool,
}

impl SinkConnector for FailOnceConnector {
    type Config = FailAt;

    fn name(&self) -> &'static str {
        "fail-once"
    }

    fn options(&self) -> &'static [&'static str] {
        &["fail-at", "fail-at-record", "mode"]
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<FailAt> {
        let get = |k: &str| spec.options.get(k).map(|d| d.parse::<u64>().unwrap());
        Ok(FailAt {
            schema: Arc::clone(input),
            batch: get("fail-at").unwrap_or(u64::MAX),
            record: get("fail-at-record").unwrap_or(u64::MAX),
            panic: spec.options.get("mode").is_some_and(|m| m == "panic"),
        })
    }

    fn create(&self, config: &Arc<FailAt>, _: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(FailOnceOperator {
            at: Arc::clone(config),
            batches: 0,
            records: 0,
            failed: Arc::clone(&self.failed),
        }))
    }
}

struct FailOnceOperator {
    at: Arc<FailAt>,
    batches: u64,
    records: u64,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Operator for FailOnceOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.at.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _: &mut OperatorContext,
        _: &mut dyn Collector,
    ) -> Result<()> {
        self.batches += 1;
        self.records += batch.num_rows() as u64;
        let due = self.batches >= self.at.batch || self.records >= self.at.record;
        if due && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            if self.at.panic {
                panic!("injected panic at record {}", self.records);
            }
            return Err(sluice::SluiceError::external("injected failure"));
        }
        Ok(())
    }
}

/// Runs a command to the end; fails the test with its stderr if it fails.
pub fn run_to_end(mut c: std::process::Command) {
    let (status, err) = run_within(&mut c, Duration::from_secs(240));
    assert!(status.success(), "job failed: {err}");
}

/// Runs `c` to its end (its standard output discarded) and returns its exit status and
/// standard error; one that has not
/// ended after `limit` is a hang: it is killed and the test fails with its log.
pub fn run_within(
    c: &mut std::process::Command,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = pipe.as_mut() {
            let _ = std::io::Read::read_to_string(e, &mut text);
        }
        text
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap();
    match status {
        Some(s) => (s, err),
        None => panic!("the job did not end within {limit:?}: {err}"),
    }
}

/// A tiny xorshift generator: random test inputs reproducible from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `var` if set, else from the clock; the seed is printed for reruns.
    pub fn seeded(var: &str, what: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{what} seed {seed} (set {var} to repeat)");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

/// Kill times in ms, `min_ms..max_ms`, seeded from the clock and printed for reruns
/// (`SLUICE_CRASH_SEED`).
pub fn kill_delays(n: usize, min_ms: u64, max_ms: u64) -> Vec<u64> {
    let mut rng = Rng::seeded("SLUICE_CRASH_SEED", "kill schedule");
    (0..n)
        .map(|_| min_ms + rng.next() % (max_ms - min_ms))
        .collect()
}

/// Runs the job `job()` builds, killing it with SIGKILL after each delay (each run
/// restarts from where the last left off, as the job's arguments say), then lets a last
/// run finish. Returns how many kills hit a running job.
///
/// A restore must really restore: every run after a kill that came once the job had
/// completed a checkpoint (in `checkpoints`) must say it resumed from one (`resumed from
/// checkpoint N`), and from one at least as new as the newest there was at the kill.
/// Without this, a resumed run that started from scratch would produce the same final
/// output and pass.
pub fn crash_and_restart(
    job: impl Fn() -> std::process::Command,
    delays: &[u64],
    checkpoints: &std::path::Path,
) -> usize {
    crash_and_restart_counted(job, delays, checkpoints).0
}

/// [`crash_and_restart`], also saying how many runs resumed from a checkpoint.
pub fn crash_and_restart_counted(
    job: impl Fn() -> std::process::Command,
    delays: &[u64],
    checkpoints: &std::path::Path,
) -> (usize, usize) {
    let kills: Vec<Kill> = delays.iter().map(|&d| Kill::After(d)).collect();
    let c = crash_and_restart_with(job, &kills, checkpoints);
    (c.kills, c.resumed)
}

/// When [`crash_and_restart_with`] kills a run.
#[derive(Clone, Copy, Debug)]
pub enum Kill {
    /// This many ms after it started.
    After(u64),
    /// The moment a checkpoint newer than any before it is complete (its manifest is
    /// written: the checkpoint's commit to external systems is just starting), or after
    /// `max_ms` if none completes.
    AtCheckpoint { max_ms: u64 },
}

/// What [`crash_and_restart_with`] saw.
pub struct Crashes {
    /// Kills that hit a running job.
    pub kills: usize,
    /// Runs that resumed from a checkpoint.
    pub resumed: usize,
    /// Every run's standard error, in order.
    pub stderr: Vec<String>,
}

/// [`crash_and_restart`] with kills at given moments.
pub fn crash_and_restart_with(
    job: impl Fn() -> std::process::Command,
    schedule: &[Kill],
    checkpoints: &std::path::Path,
) -> Crashes {
    let mut resumed = 0;
    // The newest complete checkpoint's epoch in the directory (manifests mark them).
    let newest = |dir: &std::path::Path| -> Option<u64> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("_manifest.json").exists())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("chk-")
                    .and_then(|n| n.parse().ok())
            })
            .max()
    };
    let mut kills = 0;
    // The newest checkpoint at the last kill: the next run must resume from it or later.
    let mut must_resume_from: Option<u64> = None;
    let check_resumed = |stderr: &str, must: Option<u64>, killed: bool| {
        // Every run that got as far as starting its job says where it started: a
        // checkpoint, or the beginning. (A run killed while still planning or connecting
        // says nothing, and did nothing.)
        let said =
            stderr.contains("resumed from ") || stderr.contains("no completed checkpoint in ");
        if killed && !said {
            return;
        }
        assert!(said, "a run did not say where it started: {stderr}");
        let Some(must) = must else { return };
        // `resumed from <checkpoint | final | savepoint> <epoch> at <location>`
        let epoch = stderr
            .lines()
            .find_map(|l| l.strip_prefix("resumed from "))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok());
        match epoch {
            Some(e) => assert!(
                e >= must,
                "resumed from checkpoint {e}, older than {must}: {stderr}"
            ),
            None => panic!("a run after a kill did not restore checkpoint {must}: {stderr}"),
        }
    };
    let mut stderrs = Vec::new();
    for &kill in schedule {
        let before = newest(checkpoints);
        let mut child = job().spawn().unwrap();
        let start = std::time::Instant::now();
        let (max_ms, at_checkpoint) = match kill {
            Kill::After(ms) => (ms, false),
            Kill::AtCheckpoint { max_ms } => (max_ms, true),
        };
        while start.elapsed() < Duration::from_millis(max_ms) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if at_checkpoint && newest(checkpoints) > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(if at_checkpoint { 1 } else { 10 }));
        }
        let ended = child.try_wait().unwrap();
        if ended.is_none() {
            // std's kill sends SIGKILL on Unix: no clean-up, no flush, no commit.
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
        let mut err = String::new();
        if let Some(e) = child.stderr.as_mut() {
            std::io::Read::read_to_string(e, &mut err).unwrap();
        }
        if let Some(status) = ended {
            assert!(status.success(), "job failed before the kill: {err}");
        }
        check_resumed(&err, must_resume_from, ended.is_none());
        resumed += usize::from(err.contains("resumed from checkpoint"));
        must_resume_from = newest(checkpoints);
        stderrs.push(err);
    }
    // The last run ends by itself; one that does not within minutes is a hang.
    let (status, err) = run_within(&mut job(), Duration::from_secs(240));
    assert!(status.success(), "job failed: {err}");
    check_resumed(&err, must_resume_from, false);
    resumed += usize::from(err.contains("resumed from checkpoint"));
    stderrs.push(err);
    Crashes {
        kills,
        resumed,
        stderr: stderrs,
    }
}

/// Every line of the committed (visible, not in-progress) output files, sorted.
pub fn committed_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}
