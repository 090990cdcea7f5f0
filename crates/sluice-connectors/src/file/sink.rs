use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use sluice_plan::{ConnectorSpec, DeliveryGuarantee};
use sluice_runtime::{
    Collector, Operator, OperatorContext, OperatorState, RestoredState, SinkConnector,
};
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, TaskInfo, user_column_count};

use super::partition::{self, Partitioning};
use crate::format::{FILE_OPTIONS, Format};
use crate::options::OptionReader;

/// Parsed options of a file sink.
pub struct FileSinkConfig {
    dir: PathBuf,
    format: Format,
    input: SchemaRef,
    json: crate::format::JsonOptions,
    /// `PARTITIONED BY`: rows go to a directory per partition.
    partitions: Option<Partitioning>,
}

/// The filesystem sink's options: the format's and the partitioning's.
static SINK_OPTIONS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    FILE_OPTIONS
        .iter()
        .chain(partition::PARTITION_OPTIONS)
        .copied()
        .collect()
});

/// The file sink connector.
pub struct FileSinkConnector;

impl SinkConnector for FileSinkConnector {
    type Config = FileSinkConfig;

    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn options(&self) -> &'static [&'static str] {
        SINK_OPTIONS.as_slice()
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<FileSinkConfig> {
        let o = OptionReader::new("filesystem", spec);
        let dir = o.path("path")?;
        let format = Format::from_options(&o)?;
        let partitions = Partitioning::from_options(&o, input)?;
        if partitions.is_some() && format == Format::DebeziumJson {
            return Err(SluiceError::user(
                "a 'debezium-json' table cannot be PARTITIONED BY: its changes are one log",
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            SluiceError::user(format!("cannot create sink directory {}", dir.display()))
                .with_source(e)
        })?;
        Ok(FileSinkConfig {
            dir,
            format,
            input: Arc::clone(input),
            json: crate::format::JsonOptions::from_options(&o)?,
            partitions,
        })
    }

    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<sluice_runtime::NamedFile>> {
        Ok(vec![sluice_runtime::NamedFile {
            option: "path".to_string(),
            path: OptionReader::new("filesystem", spec).path("path")?,
        }])
    }

    fn accepts_updates(&self, spec: &ConnectorSpec) -> bool {
        spec.options.get("format").map(String::as_str) == Some("debezium-json")
    }

    fn create(&self, config: &Arc<FileSinkConfig>, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let mut fields: Vec<_> = config.input.fields()[..user_column_count(&config.input)].to_vec();
        if let Some(p) = &config.partitions {
            fields = p
                .data_columns
                .iter()
                .map(|&i| Arc::clone(&fields[i]))
                .collect();
        }
        Ok(Box::new(FileSinkOperator {
            config: Arc::clone(config),
            schema: Arc::new(Schema::new(fields)),
            subtask: task.subtask,
            parallelism: task.parallelism,
            writers: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            closed: false,
            last_watermark: i64::MIN,
            seq: 0,
            pending: Vec::new(),
            per_checkpoint: false,
            exactly_once: false,
            attempt: 0,
        }))
    }
}

enum Writer {
    Csv(arrow::csv::Writer<BufWriter<File>>),
    Json(arrow::json::LineDelimitedWriter<BufWriter<File>>),
    /// Changes as Debezium envelopes.
    Debezium(arrow::json::LineDelimitedWriter<BufWriter<File>>),
    Parquet(ArrowWriter<BufWriter<File>>),
}

/// A file being written: its writer, where it is written, and its published name.
struct OpenFile {
    writer: Writer,
    temp: PathBuf,
    target: PathBuf,
}

/// A finished file waiting for its checkpoint to complete.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PendingFile {
    /// The checkpoint that covers its rows.
    epoch: u64,
    temp: PathBuf,
    target: PathBuf,
}

/// The sink's checkpointed state: files to publish once the checkpoint completes.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SinkState {
    pending: Vec<PendingFile>,
}

/// Writes one subtask's rows to files.
///
/// ```text
///  no checkpoints:  .part-0.json.inprogress ──end of input──> part-0.json
///  exactly-once:    .part-0-<run>-<n>.json.inprogress ──barrier n: flush, pre-commit──>
///                   (pending, in the checkpoint) ──checkpoint n complete──> part-0-<run>-<n>.json
///  at-least-once:   as exactly-once, but published at the barrier (replays may repeat rows)
/// ```
///
/// On restore the files of the restored checkpoint are published (if the crash came
/// between the checkpoint and the rename) and every other in-progress file of earlier
/// runs is deleted: output never holds rows of an uncommitted checkpoint.
pub struct FileSinkOperator {
    config: Arc<FileSinkConfig>,
    /// What the files hold: the user columns but the partition columns.
    schema: SchemaRef,
    subtask: usize,
    parallelism: usize,
    /// The open file of each partition (`""` when not partitioned).
    writers: BTreeMap<String, OpenFile>,
    /// The watermark each pending checkpoint's files cover (partition commits).
    watermarks: BTreeMap<u64, i64>,
    /// The input ended: the files cover every row.
    closed: bool,
    /// The highest event-time watermark seen at a checkpoint.
    last_watermark: i64,
    /// Number of files started by this subtask in this run.
    seq: u64,
    pending: Vec<PendingFile>,
    /// Files roll at every checkpoint (the job takes checkpoints).
    per_checkpoint: bool,
    /// Files are published when their checkpoint completes.
    exactly_once: bool,
    attempt: u64,
}

/// Timestamps in CSV files, as Flink writes them (a space, not ISO-8601's `T`).
const CSV_TIMESTAMP: &str = "%Y-%m-%d %H:%M:%S%.f";

fn write_err(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> SluiceError {
    SluiceError::external(format!("writing {} failed", path.display())).with_source(e)
}

impl FileSinkOperator {
    /// Starts the file of partition `part` (`""`: the sink's directory).
    fn open(&mut self, part: &str) -> Result<()> {
        let ext = self.config.format.extension();
        let stem = match self.per_checkpoint {
            false => format!("part-{}", self.subtask),
            true => format!("part-{}-{}-{}", self.subtask, self.attempt, self.seq),
        };
        self.seq += 1;
        let dir = match part {
            "" => self.config.dir.clone(),
            p => {
                let d = self.config.dir.join(p);
                std::fs::create_dir_all(&d).map_err(|e| {
                    SluiceError::external(format!("cannot create {}", d.display())).with_source(e)
                })?;
                d
            }
        };
        let target = dir.join(format!("{stem}.{ext}"));
        let temp = dir.join(format!(".{stem}.{ext}.inprogress"));
        let file = File::create(&temp).map_err(|e| {
            SluiceError::external(format!("cannot create {}", temp.display())).with_source(e)
        })?;
        let out = BufWriter::with_capacity(1 << 20, file);
        let writer = match &self.config.format {
            Format::Csv { delimiter, header } => Writer::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .with_delimiter(*delimiter)
                    // As Flink's CSV format writes them: `2015-07-15 00:00:00.338`.
                    .with_timestamp_format(CSV_TIMESTAMP.to_string())
                    .build(out),
            ),
            Format::Json => Writer::Json(arrow::json::LineDelimitedWriter::new(out)),
            Format::DebeziumJson => Writer::Debezium(crate::format::debezium_writer(out)),
            Format::Parquet => Writer::Parquet(
                ArrowWriter::try_new(out, Arc::clone(&self.schema), None).map_err(|e| {
                    SluiceError::internal("cannot start a Parquet file").with_source(e)
                })?,
            ),
        };
        self.writers.insert(
            part.to_string(),
            OpenFile {
                writer,
                temp,
                target,
            },
        );
        Ok(())
    }

    /// Finishes every open file; returns their temporary and published paths,
    /// unpublished.
    fn finish(&mut self) -> Result<Vec<(PathBuf, PathBuf)>> {
        std::mem::take(&mut self.writers)
            .into_values()
            .map(Self::finish_one)
            .collect()
    }

    /// Finishes a file (flushed and synced).
    fn finish_one(f: OpenFile) -> Result<(PathBuf, PathBuf)> {
        let path = f.temp;
        let file = match f.writer {
            Writer::Csv(w) => w.into_inner(),
            Writer::Json(mut w) | Writer::Debezium(mut w) => {
                w.finish().map_err(|e| write_err(&path, e))?;
                w.into_inner()
            }
            Writer::Parquet(w) => w.into_inner().map_err(|e| write_err(&path, e))?,
        };
        let file = file
            .into_inner()
            .map_err(|e| write_err(&path, e.into_error()))?;
        file.sync_all().map_err(|e| write_err(&path, e))?;
        Ok((path, f.target))
    }

    /// Finishes the open file and queues it for checkpoint `epoch` (or publishes it now
    /// when rows may repeat anyway).
    fn roll(&mut self, epoch: u64) -> Result<()> {
        for (temp, target) in self.finish()? {
            if self.exactly_once {
                self.pending.push(PendingFile {
                    epoch,
                    temp,
                    target,
                });
            } else {
                publish(&temp, &target)?;
            }
        }
        Ok(())
    }

    /// Deletes the in-progress files earlier runs of the job left behind (in partition
    /// directories too): those named by another run (`.part-<subtask>-<run>-<n>.…`). The
    /// files of this run, of any subtask, stay: the others may already be writing theirs
    /// while this one restores (without checkpoints a file is `.part-<subtask>.…`, with no
    /// run in its name, and is never an earlier run's).
    fn delete_leftovers(&self) -> Result<()> {
        for path in partition::files_under(&self.config.dir) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(rest) = name
                .strip_prefix(".part-")
                .filter(|_| name.ends_with(".inprogress"))
            else {
                continue;
            };
            // `<subtask>-<run>-<n>.<ext>.inprogress`
            let mut fields = rest.split(['-', '.']);
            let (_subtask, run) = (fields.next(), fields.next());
            let earlier_run = run
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|r| r != self.attempt)
                && fields.next().is_some_and(|n| n.parse::<u64>().is_ok());
            if earlier_run {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Every file with rows up to `watermark` is published: commit the partitions that
    /// are complete (when the table asks for commits).
    fn published(&self, watermark: i64) -> Result<()> {
        let Some(p) = &self.config.partitions else {
            return Ok(());
        };
        let Some(commit) = &p.commit else {
            return Ok(());
        };
        let done = commit.published(
            &self.config.dir,
            p,
            self.subtask,
            self.parallelism,
            self.attempt,
            watermark,
        )?;
        for d in done {
            tracing::info!(partition = %d.display(), "partition committed");
        }
        Ok(())
    }
}

/// Publishes a finished file by rename; publishing twice is harmless.
fn publish(temp: &Path, target: &Path) -> Result<()> {
    match std::fs::rename(temp, target) {
        Ok(()) => {
            sluice_runtime::crash::point("file-published");
            Ok(())
        }
        Err(_) if target.exists() && !temp.exists() => Ok(()),
        Err(e) => Err(write_err(temp, e)),
    }
}

#[async_trait]
impl Operator for FileSinkOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.config.input)
    }

    async fn on_start(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.per_checkpoint = ctx.checkpointing;
        self.exactly_once = ctx.checkpointing && ctx.delivery == DeliveryGuarantee::ExactlyOnce;
        self.attempt = ctx.attempt;
        partition::forget_record(&self.config.dir, self.subtask);
        if !self.per_checkpoint && self.config.partitions.is_none() {
            // One file per subtask, published at the end of input.
            self.open("")?;
        }
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        let parts = match &self.config.partitions {
            None => vec![(String::new(), batch.user_columns())],
            Some(p) => p.split(&batch.user_columns())?,
        };
        for (part, rows) in parts {
            if !self.writers.contains_key(&part) {
                self.open(&part)?;
            }
            let f = self
                .writers
                .get_mut(&part)
                .expect("invariant: opened above");
            let path = &f.temp;
            match &mut f.writer {
                Writer::Debezium(w) => {
                    let changes = crate::format::debezium_envelope(&rows, &batch)?;
                    w.write(&changes).map_err(|e| write_err(path, e))?
                }
                Writer::Csv(w) => w.write(&rows).map_err(|e| write_err(path, e))?,
                Writer::Json(w) => {
                    let rows = self.config.json.for_writing(rows)?;
                    w.write(&rows).map_err(|e| write_err(path, e))?
                }
                Writer::Parquet(w) => w.write(&rows).map_err(|e| write_err(path, e))?,
            }
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        self.roll(barrier.epoch)?;
        // What the files published with this checkpoint cover: every row up to the
        // watermark. An idle input stays where its watermark last was: rows may still
        // come for partitions after it.
        if let Some(t) = ctx.watermark.and_then(|w| w.event_time()) {
            self.last_watermark = self.last_watermark.max(t);
        }
        let watermark = match self.closed {
            true => i64::MAX,
            false => self.last_watermark,
        };
        self.watermarks.insert(barrier.epoch, watermark);
        if self.pending.is_empty() {
            return Ok(OperatorState::default());
        }
        let state = SinkState {
            pending: self.pending.clone(),
        };
        Ok(OperatorState {
            keyed: Default::default(),
            meta: serde_json::to_value(&state)
                .map_err(|e| SluiceError::internal("encoding sink state failed").with_source(e))?,
        })
    }

    async fn commit(&mut self, epoch: u64, _ctx: &mut OperatorContext) -> Result<()> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.epoch <= epoch);
        self.pending = later;
        for p in due {
            publish(&p.temp, &p.target)?;
        }
        let covered = self.watermarks.range(..=epoch).next_back().map(|(_, w)| *w);
        self.watermarks = self.watermarks.split_off(&(epoch.saturating_add(1)));
        match covered {
            Some(w) => self.published(w),
            None => Ok(()),
        }
    }

    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        self.attempt = ctx.attempt;
        // Every subtask gets every old subtask's files; the first publishes them all.
        if ctx.task.subtask != 0 {
            return Ok(());
        }
        for s in state.metas::<SinkState>()? {
            for p in s.pending {
                // Its in-progress file gone: it was published before the crash, and
                // what a consumer did with it since (moved, deleted) is its own affair.
                if p.temp.exists() {
                    publish(&p.temp, &p.target)?;
                }
            }
        }
        self.delete_leftovers()
    }

    async fn on_close(
        &mut self,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        self.closed = true;
        if self.per_checkpoint {
            // The rest is pre-committed with the final checkpoint (exactly-once).
            self.roll(u64::MAX)?;
            // Nothing left to publish: this subtask holds no partition back any more
            // (the others may still be writing).
            if self.pending.is_empty() {
                self.published(i64::MAX)?;
            }
            return Ok(());
        }
        for (temp, target) in self.finish()? {
            publish(&temp, &target)?;
        }
        self.published(i64::MAX)
    }
}

/// Builds a file sink spec for the Rust API.
///
/// ```
/// use sluice_connectors::FileSink;
/// let spec = FileSink::parquet("out/").into_spec();
/// assert_eq!(spec.connector, "filesystem");
/// ```
#[derive(Clone, Debug)]
pub struct FileSink {
    spec: ConnectorSpec,
}

impl FileSink {
    fn new(dir: impl AsRef<Path>, format: &str) -> Self {
        Self {
            spec: ConnectorSpec::new("filesystem")
                .with_option("path", dir.as_ref().display())
                .with_option("format", format),
        }
    }

    /// JSON lines into directory `dir`.
    pub fn json(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "json")
    }

    /// A Debezium JSON changelog into directory `dir`: each change of an updating
    /// stream as `{"before", "after", "op"}` (`c` adds a row, `d` takes one back).
    pub fn debezium_json(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "debezium-json")
    }

    /// CSV into directory `dir` (no header unless [`FileSink::with_header`]).
    pub fn csv(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "csv")
    }

    /// Parquet into directory `dir`.
    pub fn parquet(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "parquet")
    }

    /// Write a header line in CSV files.
    pub fn with_header(mut self) -> Self {
        self.spec.options.insert("csv.header".into(), "true".into());
        self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        self.spec
    }
}
