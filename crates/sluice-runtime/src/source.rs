//! Sources and the connector registry.
//!
//! A source is split-based: a connector lists its splits (a file, a generator shard,
//! later a Kafka partition), the runtime assigns splits to subtasks, and each subtask's
//! [`SourceReader`] reads its splits. The runtime does the rest: adaptive batching,
//! event time, watermarks, barriers, end of input.
//!
//! Connectors implement a typed trait ([`SourceConnector`], [`SinkConnector`]) whose
//! `Config` is parsed from options once, at start-up, so that a bad option fails before
//! any data moves; a blanket impl turns each into an object-safe entry of the registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_plan::ConnectorSpec;
use sluice_types::{Result, SluiceError, TaskInfo};

use crate::checkpoint::SplitPosition;
use crate::operator::{Operator, OperatorContext};

/// One independently readable part of a source's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Stable identifier (file path, `shard-3`, `topic/0`).
    pub id: String,
    /// Position in the connector's split list.
    pub index: usize,
    /// Where to resume reading (from a checkpoint); `None`: from the beginning.
    pub position: Option<serde_json::Value>,
}

impl Split {
    /// A split read from its beginning.
    pub fn new(id: impl Into<String>, index: usize) -> Self {
        Self {
            id: id.into(),
            index,
            position: None,
        }
    }
}

/// What one read returned.
#[derive(Debug)]
pub enum ReadResult {
    /// Some rows (at most the number asked for) of one split, in the connector's schema.
    /// Each split has its own event-time clock: the subtask's watermark is the minimum
    /// over the splits it is reading (Kafka partitions, files read side by side). A
    /// split counts from its first batch until [`ReadResult::SplitEnd`]; a reader that
    /// reads splits side by side announces each with an empty batch when it starts, so
    /// a split that has not delivered yet holds event time back. A reader whose splits
    /// advance together (generator shards interleaved row by row) may report them all
    /// as its first split.
    Batch {
        /// [`Split::index`] of the split the rows come from.
        split: usize,
        /// The rows.
        rows: RecordBatch,
    },
    /// A split is exhausted: it no longer holds back the subtask's watermark.
    SplitEnd(usize),
    /// Nothing is available now; the reader has waited a while. The runtime flushes any
    /// partial batch and marks the subtask idle for watermarks until data comes.
    Idle,
    /// Every split is exhausted: the input is bounded and has ended.
    End,
    /// For a reader whose input carries watermarks ([`SourceReader::reports_watermarks`]):
    /// split `split` will have no more rows with an event time at or before `watermark`
    /// (epoch milliseconds).
    Watermark {
        /// [`Split::index`] of the split.
        split: usize,
        /// The split's watermark.
        watermark: i64,
    },
}

/// Reads the splits assigned to one subtask.
#[async_trait]
pub trait SourceReader: Send {
    /// Called once before the first read.
    async fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Reads up to `max_rows` rows. Waits while nothing is available (returning
    /// [`ReadResult::Idle`] after a while). Must be cancel-safe: the runtime drops the
    /// future when a control message or the linger deadline comes first.
    async fn read(&mut self, max_rows: usize, ctx: &mut OperatorContext) -> Result<ReadResult>;

    /// Whether the input itself says how far event time has come
    /// ([`ReadResult::Watermark`], as a Kafka topic written with watermark messages
    /// does): a split's watermark is then what the reader reports, and its rows do not
    /// move it (nor does the declared out-of-orderness).
    fn reports_watermarks(&self) -> bool {
        false
    }

    /// Splits' watermarks as the runtime computes them from the rows (split index, epoch
    /// ms): at a checkpoint barrier, just before [`SourceReader::positions`], those of the
    /// splits that had rows; when a split ends ([`ReadResult::SplitEnd`]), its last. A
    /// Kafka source in a cluster hands them to its sink, which writes them into a
    /// repartition topic per source partition.
    fn split_watermarks(&mut self, _watermarks: &[(usize, i64)]) {}

    /// A split's name as its system calls it (Kafka: `topic-partition`; a file: its path
    /// or range), for the per-split view of a source; `None`: shown by its index.
    fn split_name(&self, _split: usize) -> Option<String> {
        None
    }

    /// Where each assigned split stands after the rows returned so far (called at
    /// checkpoint barriers): exactly what [`Split::position`] must say to resume after
    /// them. A source that cannot be replayed returns an error.
    fn positions(&self) -> Result<Vec<SplitPosition>> {
        Err(SluiceError::user(
            "this source cannot resume from a position, so the job cannot take checkpoints",
        ))
    }

    /// The checkpoint that recorded `positions` (what [`SourceReader::positions`] returned
    /// at its barrier) completed everywhere. Kafka commits them to the consumer group
    /// here, so that Kafka's own tools show the job's progress.
    fn checkpoint_complete(&mut self, _positions: &[SplitPosition]) -> Result<()> {
        Ok(())
    }

    /// Called once after the last read.
    async fn close(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }
}

/// A source connector with a typed configuration.
pub trait SourceConnector: Send + Sync + 'static {
    /// Parsed, validated options.
    type Config: Send + Sync + 'static;

    /// Registered name (`'connector' = '…'`).
    fn name(&self) -> &'static str;

    /// The option keys it understands (for error messages and docs).
    fn options(&self) -> &'static [&'static str];

    /// Parses options; fails on anything wrong, at start-up.
    fn parse(&self, spec: &ConnectorSpec) -> Result<Self::Config>;

    /// The schema of the rows it produces.
    fn schema(&self, config: &Self::Config) -> Result<SchemaRef>;

    /// Its natural event-time column, if any.
    fn default_event_time(&self, _config: &Self::Config) -> Option<String> {
        None
    }

    /// Its splits, for a source of the given parallelism.
    fn splits(&self, config: &Self::Config, parallelism: usize) -> Result<Vec<Split>>;

    /// Whether its subtasks share the splits: every subtask's reader gets every split (with
    /// the checkpoint's position) and reads those an outside party assigns it (Kafka's
    /// consumer group), announcing each as it starts and ending it when it stops. A
    /// position reported with `"released": true` is a split given up and not yet taken:
    /// on restore, a position from its new owner wins over it.
    fn shares_splits(&self, _config: &Self::Config) -> bool {
        false
    }

    /// The local files and directories its options name, exactly as it will open them:
    /// checked against the registry's [`FileGuard`] before [`SourceConnector::parse`]
    /// runs. The default takes every option that looks like one ([`files_by_name`]).
    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<NamedFile>> {
        Ok(files_by_name(spec))
    }

    /// A reader for the splits assigned to one subtask.
    fn reader(
        &self,
        config: &Arc<Self::Config>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>>;
}

/// A source connector whose options have been parsed: object-safe.
pub trait PreparedSource: Send + Sync {
    /// Schema of produced rows.
    fn schema(&self) -> Result<SchemaRef>;
    /// Natural event-time column.
    fn default_event_time(&self) -> Option<String>;
    /// Splits for a parallelism.
    fn splits(&self, parallelism: usize) -> Result<Vec<Split>>;
    /// Whether every subtask reads from every split ([`SourceConnector::shares_splits`]).
    fn shares_splits(&self) -> bool;
    /// Reader for one subtask.
    fn reader(&self, splits: Vec<Split>, task: &TaskInfo) -> Result<Box<dyn SourceReader>>;
}

/// Object-safe face of a [`SourceConnector`].
pub trait DynSourceConnector: Send + Sync {
    /// Registered name.
    fn name(&self) -> &'static str;
    /// Known options.
    fn options(&self) -> &'static [&'static str];
    /// Parses options.
    fn prepare(&self, spec: &ConnectorSpec) -> Result<Arc<dyn PreparedSource>>;
    /// The local files its options name.
    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<NamedFile>>;
}

struct Prepared<C: SourceConnector> {
    connector: Arc<C>,
    config: Arc<C::Config>,
}

impl<C: SourceConnector> PreparedSource for Prepared<C> {
    fn schema(&self) -> Result<SchemaRef> {
        self.connector.schema(&self.config)
    }
    fn default_event_time(&self) -> Option<String> {
        self.connector.default_event_time(&self.config)
    }
    fn splits(&self, parallelism: usize) -> Result<Vec<Split>> {
        self.connector.splits(&self.config, parallelism)
    }
    fn shares_splits(&self) -> bool {
        self.connector.shares_splits(&self.config)
    }
    fn reader(&self, splits: Vec<Split>, task: &TaskInfo) -> Result<Box<dyn SourceReader>> {
        self.connector.reader(&self.config, splits, task)
    }
}

struct SourceEntry<C>(Arc<C>);

impl<C: SourceConnector> DynSourceConnector for SourceEntry<C> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn options(&self) -> &'static [&'static str] {
        self.0.options()
    }
    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<NamedFile>> {
        self.0.files(spec)
    }
    fn prepare(&self, spec: &ConnectorSpec) -> Result<Arc<dyn PreparedSource>> {
        check_options(self.0.name(), self.0.options(), spec)?;
        let config = self.0.parse(spec)?;
        Ok(Arc::new(Prepared {
            connector: Arc::clone(&self.0),
            config: Arc::new(config),
        }))
    }
}

/// A sink connector with a typed configuration. Sinks are operators.
pub trait SinkConnector: Send + Sync + 'static {
    /// Parsed, validated options.
    type Config: Send + Sync + 'static;
    /// Registered name.
    fn name(&self) -> &'static str;
    /// Known options.
    fn options(&self) -> &'static [&'static str];
    /// Parses options against the schema of the rows it will receive (`_timestamp` last).
    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<Self::Config>;
    /// The sink operator for one subtask.
    fn create(&self, config: &Arc<Self::Config>, task: &TaskInfo) -> Result<Box<dyn Operator>>;
    /// Whether it can write an updating stream (rows with a `_rowkind`: updates and
    /// deletes) as configured by `spec`. An append-only sink (the default) refuses one.
    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        false
    }
    /// The local files and directories its options name, as for
    /// [`SourceConnector::files`].
    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<NamedFile>> {
        Ok(files_by_name(spec))
    }
}

/// A sink whose options have been parsed.
pub type SinkFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync>;

/// Object-safe face of a [`SinkConnector`].
pub trait DynSinkConnector: Send + Sync {
    /// Registered name.
    fn name(&self) -> &'static str;
    /// Known options.
    fn options(&self) -> &'static [&'static str];
    /// Parses options.
    fn prepare(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<SinkFactory>;
    /// Whether it writes updates and deletes as configured by `spec`.
    fn accepts_updates(&self, spec: &ConnectorSpec) -> bool;
    /// The local files its options name.
    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<NamedFile>>;
}

/// The error of an append-only sink given an updating input, naming what would take it.
pub fn append_only_sink_error(sink: &str, spec: &ConnectorSpec) -> SluiceError {
    let format = spec
        .options
        .get("format")
        .map(|f| format!(" with 'format' = '{f}'"))
        .unwrap_or_default();
    SluiceError::user(format!(
        "{sink} (connector '{}'{format}) only appends rows, but the query updates and deletes rows it wrote before (a GROUP BY without windows, a Top-N, or a join or filter over one); write it as a changelog ('format' = 'debezium-json' to files or Kafka, or 'connector' = 'print'), or make the query append-only (a window aggregate)",
        spec.connector
    ))
}

struct SinkEntry<C>(Arc<C>);

impl<C: SinkConnector> DynSinkConnector for SinkEntry<C> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn options(&self) -> &'static [&'static str] {
        self.0.options()
    }
    fn accepts_updates(&self, spec: &ConnectorSpec) -> bool {
        self.0.accepts_updates(spec)
    }
    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<NamedFile>> {
        self.0.files(spec)
    }
    fn prepare(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<SinkFactory> {
        check_options(self.0.name(), self.0.options(), spec)?;
        if sluice_types::is_updating(input) && !self.0.accepts_updates(spec) {
            return Err(append_only_sink_error("the sink", spec));
        }
        let config = Arc::new(self.0.parse(spec, input)?);
        let connector = Arc::clone(&self.0);
        Ok(Arc::new(move |task: &TaskInfo| {
            connector.create(&config, task)
        }))
    }
}

/// Rejects unknown option keys, so a typo fails at start-up rather than being ignored.
/// Keys ending in `.*` in the known list accept any suffix (`fields.*`).
fn check_options(connector: &str, known: &[&str], spec: &ConnectorSpec) -> Result<()> {
    for key in spec.options.keys() {
        let ok = known.iter().any(|k| match k.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => k == key,
        });
        if !ok {
            return Err(SluiceError::user(format!(
                "connector `{connector}` has no option `{key}`; it understands: {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// A local file or directory that a connector option names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFile {
    /// The option (`path`, `properties.ssl.ca.location`).
    pub option: String,
    /// The path as the connector will open it (relative to the working directory).
    pub path: std::path::PathBuf,
}

/// The options of `spec` that name local files by the usual conventions: `path`, keys
/// ending in `.path`, `.location`, `.keytab`, `.file` or `.dir`, each value taken as the
/// path it literally is (a connector that reads URLs declares its files itself).
pub fn files_by_name(spec: &ConnectorSpec) -> Vec<NamedFile> {
    const SUFFIXES: &[&str] = &[".path", ".location", ".keytab", ".file", ".dir"];
    spec.options
        .iter()
        .filter(|(k, _)| *k == "path" || SUFFIXES.iter().any(|s| k.ends_with(s)))
        .map(|(k, v)| NamedFile {
            option: k.clone(),
            path: std::path::PathBuf::from(v),
        })
        .collect()
}

/// Where a location string points: a local path (plain, or a `file://` URL) or a
/// remote URL (`s3://bucket/prefix`). Only a real URL scheme before `://` makes it
/// remote: `dir/x://../y` is the local path it looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A path on this machine.
    Local(std::path::PathBuf),
    /// A URL with a scheme other than `file`.
    Remote(String),
}

impl Location {
    /// Classifies `s`.
    pub fn parse(s: &str) -> Self {
        match s.split_once("://") {
            Some(("file", p)) => Location::Local(std::path::PathBuf::from(p)),
            Some((scheme, _)) if is_url_scheme(scheme) => Location::Remote(s.to_string()),
            _ => Location::Local(std::path::PathBuf::from(s)),
        }
    }
}

/// Whether `s` is a URL scheme (RFC 3986: a letter, then letters, digits, `+ - .`).
fn is_url_scheme(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'))
}

/// Decides whether a job may use a local file: the server's sandbox. Consulted before a
/// connector parses its options, so nothing outside is ever opened or even looked at.
pub trait FileGuard: Send + Sync {
    /// Fails (with [`SluiceError::denied`]) unless `connector` may use `file`.
    fn check(&self, connector: &str, file: &NamedFile) -> Result<()>;
}

/// The connectors a job can use, by name.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    sources: BTreeMap<&'static str, Arc<dyn DynSourceConnector>>,
    sinks: BTreeMap<&'static str, Arc<dyn DynSinkConnector>>,
    guard: Option<Arc<dyn FileGuard>>,
}

impl ConnectorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source connector.
    pub fn register_source<C: SourceConnector>(&mut self, connector: C) {
        let name = connector.name();
        self.sources
            .insert(name, Arc::new(SourceEntry(Arc::new(connector))));
    }

    /// Adds a sink connector.
    pub fn register_sink<C: SinkConnector>(&mut self, connector: C) {
        let name = connector.name();
        self.sinks
            .insert(name, Arc::new(SinkEntry(Arc::new(connector))));
    }

    /// A source connector by name.
    pub fn source(&self, name: &str) -> Result<&Arc<dyn DynSourceConnector>> {
        self.sources.get(name).ok_or_else(|| {
            SluiceError::user(format!(
                "unknown source connector `{name}`; available: {}",
                self.sources.keys().copied().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// A sink connector by name.
    pub fn sink(&self, name: &str) -> Result<&Arc<dyn DynSinkConnector>> {
        self.sinks.get(name).ok_or_else(|| {
            SluiceError::user(format!(
                "unknown sink connector `{name}`; available: {}",
                self.sinks.keys().copied().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Checks every file a connector would use with `guard` before it is opened.
    pub fn with_guard(mut self, guard: Arc<dyn FileGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// A source for `spec`: its files checked against the guard, then its options parsed.
    pub fn prepare_source(&self, spec: &ConnectorSpec) -> Result<Arc<dyn PreparedSource>> {
        let c = self.source(&spec.connector)?;
        if let Some(g) = &self.guard {
            for f in c.files(spec)? {
                g.check(&spec.connector, &f)?;
            }
        }
        c.prepare(spec)
    }

    /// A sink for `spec` over `input`: its files checked, then its options parsed.
    pub fn prepare_sink(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<SinkFactory> {
        let c = self.sink(&spec.connector)?;
        if let Some(g) = &self.guard {
            for f in c.files(spec)? {
                g.check(&spec.connector, &f)?;
            }
        }
        c.prepare(spec, input)
    }

    /// Names of registered source connectors.
    pub fn source_names(&self) -> Vec<&'static str> {
        self.sources.keys().copied().collect()
    }

    /// Names of registered sink connectors.
    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.keys().copied().collect()
    }
}

/// Assigns splits to subtasks round-robin (split i to subtask i mod parallelism).
pub fn assign_splits(splits: &[Split], subtask: usize, parallelism: usize) -> Vec<Split> {
    splits
        .iter()
        .filter(|s| s.index % parallelism == subtask)
        .cloned()
        .collect()
}
