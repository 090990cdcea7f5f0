//! The Sluice physical plan: the contract between the SQL front end, the Rust API and
//! the runtime. It is plain data (node kinds, connector options, expressions), so the
//! runtime only ever sees this, whatever built it.
//!
//! ```text
//!  SQL ─┐                       ┌─> runtime: operators, chaining, tasks
//!       ├─> JobPlan (nodes+edges)┤
//!  API ─┘                       └─> EXPLAIN
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion_expr::Expr;
use sluice_types::{Result, SluiceError};

mod cluster;
mod reads;
pub use cluster::{ClusterConfig, PartitionTask};
pub use reads::FieldUse;

/// Index of a node in [`JobPlan::nodes`].
pub type NodeId = usize;

/// Connector options, as in a SQL `WITH ('key' = 'value', …)` clause.
pub type Options = BTreeMap<String, String>;

/// A connector instance: which connector and its options.
#[derive(Clone, Debug)]
pub struct ConnectorSpec {
    /// Registered connector name, e.g. `nexmark`, `filesystem`, `blackhole`.
    pub connector: String,
    /// The connector's options (Flink option names wherever Flink has them).
    pub options: Options,
    /// The declared schema, for connectors that need one (CSV, JSON, datagen).
    pub schema: Option<SchemaRef>,
    /// Declared columns that carry a record's metadata rather than its value
    /// (`offset BIGINT METADATA FROM 'offset'`): column name to metadata key.
    pub metadata: BTreeMap<String, String>,
    /// For a source: which columns (and nested fields) the job reads, set by
    /// [`JobPlan::mark_reads`]; a decoder may leave the rest null. All by default.
    pub reads: FieldUse,
    /// For a source: conditions every row the job keeps meets, on the source's own
    /// columns (comparisons with a literal, from the filters right after it), set by
    /// [`JobPlan::mark_reads`]. A source may skip rows that fail one (Parquet skips row
    /// groups whose statistics rule one out). None by default.
    pub filters: Vec<Expr>,
}

impl ConnectorSpec {
    /// A connector with no options yet.
    pub fn new(connector: impl Into<String>) -> Self {
        Self {
            connector: connector.into(),
            options: Options::new(),
            schema: None,
            metadata: BTreeMap::new(),
            reads: FieldUse::All,
            filters: Vec::new(),
        }
    }

    /// Sets one option.
    pub fn with_option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.options.insert(key.into(), value.to_string());
        self
    }

    /// Declares that column `column` holds the metadata `key` (Kafka: `offset`, …).
    pub fn with_metadata(mut self, column: impl Into<String>, key: impl Into<String>) -> Self {
        self.metadata.insert(column.into(), key.into());
        self
    }

    /// Declares the schema.
    pub fn with_schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }
}

/// Where a source's event time comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum EventTime {
    /// The connector's natural event-time column (for Nexmark, `date_time`);
    /// ingestion time if it has none.
    ConnectorDefault,
    /// A column of the source: a timestamp, or an integer holding epoch milliseconds.
    Column(String),
    /// An expression over the source's columns (a computed column), giving a timestamp
    /// or epoch milliseconds.
    Expr(Expr),
    /// The wall-clock time at which rows are read.
    Ingestion,
    /// Processing time: rows are stamped with the wall clock when read, and the
    /// watermark follows the wall clock even when no rows come, so windows close on
    /// time (processing-time windows).
    ProcessingTime,
}

/// How a source derives watermarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatermarkSpec {
    /// Bounded out-of-orderness: watermark = max event time seen − this.
    pub max_out_of_orderness: Duration,
    /// A source subtask that reads no rows for this long declares itself idle, so it does
    /// not hold back event time downstream; its next row makes it active again.
    pub idle_timeout: Option<Duration>,
}

/// A source node: a connector plus where its event time comes from.
#[derive(Clone, Debug)]
pub struct SourceNode {
    /// The connector.
    pub spec: ConnectorSpec,
    /// Event-time column.
    pub event_time: EventTime,
    /// Watermark strategy.
    pub watermark: WatermarkSpec,
}

/// What a plan node does.
#[derive(Clone, Debug)]
pub enum NodeKind {
    /// Reads from a connector.
    Source(SourceNode),
    /// Keeps the rows for which the predicate is true.
    Filter {
        /// Boolean expression over the input columns.
        predicate: Expr,
        /// The input columns (and nested fields) passed on: all of them unless
        /// [`JobPlan::mark_reads`] finds fewer read downstream, so that the rows kept
        /// do not carry copies of what no one reads.
        passes: FieldUse,
    },
    /// Turns upserts by `keys` (an `upsert-kafka` source: each record the key's new row,
    /// or a tombstone) into a changelog that takes back what it replaces (Flink's
    /// ChangelogNormalize): keeps each key's last row. Its input is hash-partitioned by
    /// the keys.
    ChangelogNormalize {
        /// The key columns (the table's primary key).
        keys: Vec<String>,
    },
    /// Before an upsert sink whose input is not keyed like it (Flink's
    /// SinkUpsertMaterializer): keeps, per sink key, the rows of the input that hold it,
    /// in arrival order, and emits the one added last as the key's value (`+I`/`+U`) and
    /// the last row taken back (`-U` or `-D`, as it came) once no row holds the key. A row taken back that is not the latest changes
    /// nothing, so changes that cross parallel paths in another order, and keys that
    /// several rows share, leave the key's right value. Its input is hash-partitioned by
    /// the keys.
    UpsertMaterialize {
        /// The sink's primary key columns.
        keys: Vec<String>,
    },
    /// Makes the wall clock the rows' time from here on (Flink's `PROCTIME()` in a
    /// query): each row is stamped with the moment it passes, and watermarks follow the
    /// clock.
    ProcessingTime,
    /// Computes new columns; the event-time column is carried along.
    Project {
        /// Output expressions, each named (use `.alias`).
        exprs: Vec<Expr>,
    },
    /// A keyed running aggregate: for each input batch, emits the changes to the
    /// aggregates of the keys the batch touched (`+I`, `-U`/`+U`, `-D` for a group whose
    /// rows were all taken back). Its input may be updating (retractions are taken back
    /// out of their groups).
    Aggregate {
        /// Grouping columns.
        keys: Vec<String>,
        /// Aggregate expressions (`count`, `sum`, `min`, `max`, `avg`, any UDAF), aliased.
        aggregates: Vec<Expr>,
        /// A key no row reached for this long (event time, past the watermark) is
        /// forgotten (`table.exec.state.ttl`); `None`: kept forever.
        ttl_ms: Option<i64>,
        /// Upsert mode: an update is its new row alone (`+U`, no `-U` before it), for an
        /// only consumer that keeps each key's last row (an upsert sink keyed by these
        /// keys), as Flink's changelog-mode inference chooses.
        upsert: bool,
    },
    /// A window aggregate over an updating input (Flink 1.19+ aggregates windows of CDC
    /// input): grouped by `keys`, which include the window's columns (assigned before it),
    /// each group takes its rows' changes as they come and emits its result once, as an
    /// insert, when the watermark passes its `window_end` column; a change for a window
    /// already fired is late and dropped.
    ChangelogWindowAggregate {
        /// Grouping columns, the window's among them.
        keys: Vec<String>,
        /// Aggregate expressions, aliased.
        aggregates: Vec<Expr>,
        /// The key column holding each group's window end.
        window_end: String,
    },
    /// Puts each row in its time windows as columns: a copy per window, with
    /// `window_start` and `window_end` after its columns, its kind and time kept (what a
    /// window aggregate of an updating input groups by).
    AssignWindows {
        /// A tumbling, hopping or cumulating window.
        window: WindowSpec,
    },
    /// OVER aggregates: each row comes out once, in event-time order per partition,
    /// with the aggregates over its frame of preceding rows (`agg(x) OVER (PARTITION BY
    /// k ORDER BY ts ROWS|RANGE … PRECEDING)`), when the watermark passes it.
    OverAggregate {
        /// Partition columns (none: one partition, parallelism 1).
        partition_by: Vec<String>,
        /// Aggregate expressions, aliased (their output column names).
        aggregates: Vec<Expr>,
        /// Which preceding rows each row's aggregates cover.
        frame: OverFrame,
        /// A partition no row reached for this long (event time, past the watermark) is
        /// forgotten (`table.exec.state.ttl`). RANGE frames free emptied partitions anyway.
        ttl_ms: Option<i64>,
    },
    /// OVER aggregates over an updating input: each row of the current table comes out
    /// with the aggregates over its frame in the partition ordered by `order_by`; when a
    /// change moves, adds or takes back rows, the rows whose frames changed are taken back
    /// and emitted again (`-U`/`+U`), new rows are inserted, removed rows deleted. The
    /// materialized output is the batch OVER of the materialized input.
    ChangelogOverAggregate {
        /// Partition columns (none: one partition, parallelism 1).
        partition_by: Vec<String>,
        /// The sort order within a partition (ties broken by the rows' values).
        order_by: Vec<OverOrder>,
        /// Aggregate expressions, aliased (their output column names).
        aggregates: Vec<Expr>,
        /// Which preceding rows each row's aggregates cover (a RANGE interval over the
        /// one ascending timestamp column of `order_by`).
        frame: OverFrame,
    },
    /// An event-time window aggregate: per key (or over all rows if no keys) and window,
    /// one row when the watermark passes the window's end.
    WindowAggregate {
        /// Grouping columns; empty for a non-keyed window (parallelism 1).
        keys: Vec<String>,
        /// The window.
        window: WindowSpec,
        /// Aggregate expressions, aliased.
        aggregates: Vec<Expr>,
        /// How long after a window fires late rows still update it (and re-fire it).
        allowed_lateness: Duration,
        /// Emit each open window's partial result this often (processing time) before
        /// its final result; `None`: only when it closes.
        early_firing: Option<Duration>,
    },
    /// Of the rows of each window (`window_start`, `window_end`) and partition, those
    /// ranked `<= limit` by `order_by` (then `then_by`), ties included, emitted when the
    /// window closes.
    TopNPerWindow {
        /// Columns that split a window's rows into separately ranked groups.
        partition_by: Vec<String>,
        /// The ranking column.
        order_by: String,
        /// Largest first.
        descending: bool,
        /// Columns that order rows tied on `order_by`, each with whether largest first.
        then_by: Vec<(String, bool)>,
        /// The largest rank kept.
        limit: usize,
        /// `ROW_NUMBER` semantics: exactly `limit` rows per group, ties broken
        /// arbitrarily (`false`: `RANK`, ties kept).
        row_number: bool,
        /// Emit each row's rank in a column of this name (before `_timestamp`).
        rank_column: Option<String>,
    },
    /// Top-N without windows (`ROW_NUMBER() … <= limit`, and deduplication with
    /// `limit = 1`): per partition the best `limit` rows; emits the ranks whose row
    /// changed, as upserts by (partition columns, rank column).
    TopN {
        /// Partition columns (none: one global ranking, parallelism 1).
        partition_by: Vec<String>,
        /// The ranking column.
        order_by: String,
        /// Largest first.
        descending: bool,
        /// Further ordering columns for rows equal in `order_by` (column, descending).
        then_by: Vec<(String, bool)>,
        /// The largest rank kept.
        limit: usize,
        /// Name of the rank column added before `_timestamp`.
        rank_column: String,
        /// A partition no row reached for this long in event time (past the watermark)
        /// is forgotten (`table.exec.state.ttl`); `None`: kept forever.
        ttl_ms: Option<i64>,
        /// Upsert mode: a rank's new row alone (`+U`, no `-U` before it), for an only
        /// consumer that keeps each (partition, rank)'s last row (an upsert sink keyed by
        /// them), as Flink's changelog-mode inference chooses.
        upsert: bool,
    },
    /// Lookup join: each row joins the rows of a bounded table with equal keys; the
    /// table is read once when the operator starts. Output: the stream's columns, then
    /// the table's (named `right_names`).
    LookupJoin {
        /// The table's connector.
        table: ConnectorSpec,
        /// Key columns of the stream.
        left_keys: Vec<String>,
        /// Key columns of the table.
        right_keys: Vec<String>,
        /// Output names of the table's columns, in its order.
        right_names: Vec<String>,
    },
    /// An equi-join: the node's first input edge is the left side, its second the right.
    /// A regular join (no interval) of updating inputs, and a regular outer join, take
    /// rows back: their output is a changelog. A pair joins when its key columns are equal and,
    /// with an interval, when `right time - left time` lies in `[lower, upper]` ms. Output:
    /// the left columns, then the right ones; its event time is the later of the two.
    Join {
        /// Key columns of the left input.
        left_keys: Vec<String>,
        /// Key columns of the right input (pairwise equal to the left ones).
        right_keys: Vec<String>,
        /// `(lower, upper)`: bounds of `right time - left time`, in ms (interval join).
        interval: Option<(i64, i64)>,
        /// A left row is kept until the watermark passes its time plus this (ms); `None`:
        /// forever.
        left_retain_ms: Option<i64>,
        /// The same for right rows.
        right_retain_ms: Option<i64>,
        /// Outer join: which sides keep their unmatched rows (left, right). In an interval
        /// join, a kept row that can no longer match (the watermark passed its time plus
        /// its side's retention) is emitted once with NULLs for the other side; a regular
        /// outer join emits it at once and takes it back when a match comes.
        outer: (bool, bool),
        /// Per side (left, right), a timestamp column bounding the other side's event
        /// time from above (`r.time <= l.expires`): a row is freed once the watermark
        /// passes it, whatever its retention.
        until: (Option<String>, Option<String>),
    },
    /// The first `fetch` rows in arrival order, then none (`SELECT … LIMIT n` on a
    /// stream); one subtask, append-only input.
    Limit {
        /// How many rows pass.
        fetch: usize,
    },
    /// Writes to a connector.
    Sink(ConnectorSpec),
}

/// The frame of an OVER aggregate: the row and which preceding rows of its partition,
/// in event-time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverFrame {
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW`.
    Rows {
        /// Rows before the current one.
        preceding: u64,
    },
    /// `RANGE BETWEEN INTERVAL … PRECEDING AND CURRENT ROW`: rows at most this many ms
    /// older (rows of the same time are peers: all in, with the same values).
    Range {
        /// The interval, ms.
        preceding_ms: i64,
    },
    /// `ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW`.
    UnboundedRows,
    /// `RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW` (the default with ORDER BY).
    UnboundedRange,
}

impl OverFrame {
    /// Whether rows leave the frame (then they are kept as state).
    pub fn bounded(&self) -> bool {
        matches!(self, OverFrame::Rows { .. } | OverFrame::Range { .. })
    }

    /// Whether rows of equal time share their values (RANGE).
    pub fn peers(&self) -> bool {
        matches!(self, OverFrame::Range { .. } | OverFrame::UnboundedRange)
    }
}

/// A sort column of an OVER aggregate over an updating input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverOrder {
    /// The column.
    pub column: String,
    /// `DESC`.
    pub descending: bool,
    /// Where NULLs sort.
    pub nulls_first: bool,
}

/// An event-time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size`, aligned to the epoch.
    Tumbling {
        /// Window length.
        size: Duration,
    },
    /// Windows of `size` starting every `slide` (a row is in `size / slide` windows).
    Hopping {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// Windows that grow by `step` from a start aligned to `size` until they reach `size`
    /// (`[s, s + step)`, `[s, s + 2 step)`, … `[s, s + size)`), as Flink's CUMULATE: a
    /// running total per period, emitted every step.
    Cumulate {
        /// The largest window, and the period of the starts.
        size: Duration,
        /// How much each window is longer than the previous one.
        step: Duration,
    },
    /// Per key, rows closer than `gap` in event time form one session; a session ends
    /// `gap` after its last row.
    Session {
        /// Inactivity gap.
        gap: Duration,
    },
    /// Per key, in arrival order: every `slide` rows, one result over the last `size`
    /// rows (`slide == size`: tumbling). At the end of input, a partial window fires.
    Count {
        /// Rows per window.
        size: u64,
        /// Rows between firings.
        slide: u64,
    },
    /// Per key, one window over all rows that never closes on its own; the trigger
    /// decides when it fires and whether firing empties it.
    Global {
        /// When the window fires.
        trigger: TriggerSpec,
    },
}

/// When a global window fires: as soon as any of the set conditions holds.
///
/// ```
/// use std::time::Duration;
/// use sluice_plan::TriggerSpec;
/// let t = TriggerSpec::count(100).or(TriggerSpec::processing_time_every(Duration::from_secs(5))).purging();
/// assert_eq!(t.to_string(), "count 100 or every 5s of processing time, purging");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TriggerSpec {
    /// Fire a key's window when it has received this many rows since its last firing.
    pub count: Option<u64>,
    /// Fire every key that received rows each time the watermark passes a multiple of
    /// this interval (Flink's continuous event-time trigger).
    pub event_time_every: Option<Duration>,
    /// Fire every key that received rows at each multiple of this interval of the wall
    /// clock (Flink's continuous processing-time trigger).
    pub processing_time_every: Option<Duration>,
    /// Empty the window when it fires (FIRE_AND_PURGE): each result covers the rows since
    /// the previous firing. Without it results are cumulative.
    pub purge: bool,
}

impl TriggerSpec {
    /// Fires a key after `n` rows since its last firing.
    pub fn count(n: u64) -> Self {
        Self {
            count: Some(n),
            ..Self::default()
        }
    }

    /// Fires keys with new rows whenever event time passes a multiple of `interval`.
    pub fn event_time_every(interval: Duration) -> Self {
        Self {
            event_time_every: Some(interval),
            ..Self::default()
        }
    }

    /// Fires keys with new rows at every multiple of `interval` of the wall clock.
    pub fn processing_time_every(interval: Duration) -> Self {
        Self {
            processing_time_every: Some(interval),
            ..Self::default()
        }
    }

    /// Fires when either trigger would (the other's settings win where both set one).
    pub fn or(self, other: Self) -> Self {
        Self {
            count: other.count.or(self.count),
            event_time_every: other.event_time_every.or(self.event_time_every),
            processing_time_every: other.processing_time_every.or(self.processing_time_every),
            purge: self.purge || other.purge,
        }
    }

    /// Empties the window on every firing.
    pub fn purging(self) -> Self {
        Self {
            purge: true,
            ..self
        }
    }
}

impl fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.count {
            parts.push(format!("count {n}"));
        }
        if let Some(d) = self.event_time_every {
            parts.push(format!("every {d:?} of event time"));
        }
        if let Some(d) = self.processing_time_every {
            parts.push(format!("every {d:?} of processing time"));
        }
        if parts.is_empty() {
            parts.push("never".into());
        }
        f.write_str(&parts.join(" or "))?;
        if self.purge {
            f.write_str(", purging")?;
        }
        Ok(())
    }
}

/// The most windows one row may belong to (a `HOP` of size / slide, a `CUMULATE` of
/// size / step, a count window of size / slide): each is state and a firing, so a shape
/// like a one-day window sliding every millisecond (86 400 000 windows per row) is
/// refused rather than run out of memory.
pub const MAX_WINDOWS_PER_ROW: u64 = 10_000;

/// Bounds on a job's numbers, so that no setting can make the process abort on an
/// allocation or a time overflow.
pub mod limits {
    use std::time::Duration;
    /// Most subtasks of one operator, and the highest max parallelism (Flink's).
    pub const MAX_PARALLELISM: usize = 32_768;
    /// Most rows in one batch.
    pub const MAX_BATCH_ROWS: usize = 1 << 20;
    /// Most batches waiting in one channel.
    pub const MAX_CHANNEL_CAPACITY: usize = 1 << 16;
    /// Most checkpoints kept.
    pub const MAX_RETAINED_CHECKPOINTS: usize = 1_000;
    /// Longest interval, timeout, pause or linger: a year.
    pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
}

impl WindowSpec {
    /// How many windows one row belongs to (1 for tumbling, session and global).
    pub fn windows_per_row(&self) -> u64 {
        let ratio = |a: u128, b: u128| u64::try_from(a / b.max(1)).unwrap_or(u64::MAX);
        match self {
            WindowSpec::Hopping { size, slide } => ratio(size.as_millis(), slide.as_millis()),
            WindowSpec::Cumulate { size, step } => ratio(size.as_millis(), step.as_millis()),
            WindowSpec::Count { size, slide } => ratio(u128::from(*size), u128::from(*slide)),
            _ => 1,
        }
    }

    /// (size, slide) in milliseconds of a fixed-size window; `None` for sessions.
    pub fn size_and_slide_ms(&self) -> Option<(i64, i64)> {
        match self {
            WindowSpec::Tumbling { size } => {
                Some((size.as_millis() as i64, size.as_millis() as i64))
            }
            WindowSpec::Hopping { size, slide } => {
                Some((size.as_millis() as i64, slide.as_millis() as i64))
            }
            WindowSpec::Cumulate { size, step } => {
                Some((size.as_millis() as i64, step.as_millis() as i64))
            }
            WindowSpec::Session { .. } | WindowSpec::Count { .. } | WindowSpec::Global { .. } => {
                None
            }
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumbling { size } => write!(f, "TUMBLE({size:?})"),
            WindowSpec::Hopping { size, slide } => write!(f, "HOP({size:?}, slide {slide:?})"),
            WindowSpec::Cumulate { size, step } => {
                write!(f, "CUMULATE({size:?}, step {step:?})")
            }
            WindowSpec::Session { gap } => write!(f, "SESSION(gap {gap:?})"),
            WindowSpec::Count { size, slide } => write!(f, "COUNT({size} rows, slide {slide})"),
            WindowSpec::Global { trigger } => write!(f, "GLOBAL(trigger {trigger})"),
        }
    }
}

impl NodeKind {
    /// A filter by `predicate` passing on every column.
    pub fn filter(predicate: Expr) -> Self {
        NodeKind::Filter {
            predicate,
            passes: FieldUse::All,
        }
    }

    /// A short label for graphs and metrics.
    pub fn label(&self) -> String {
        match self {
            NodeKind::Source(s) => format!("source:{}", s.spec.connector),
            NodeKind::Filter { .. } => "filter".into(),
            NodeKind::Project { .. } => "project".into(),
            NodeKind::ProcessingTime => "processing-time".into(),
            NodeKind::UpsertMaterialize { keys } => {
                format!("upsert-materialize by ({})", keys.join(", "))
            }
            NodeKind::ChangelogNormalize { keys } => {
                format!("changelog-normalize by ({})", keys.join(", "))
            }
            NodeKind::Aggregate { .. } => "aggregate".into(),
            NodeKind::ChangelogWindowAggregate { .. } => "window-aggregate of changes".into(),
            NodeKind::AssignWindows { window } => format!("assign-windows {window}"),
            NodeKind::OverAggregate { frame, .. } => format!("over {frame:?}"),
            NodeKind::ChangelogOverAggregate {
                order_by, frame, ..
            } => {
                let by: Vec<String> = order_by
                    .iter()
                    .map(|o| format!("{} {}", o.column, if o.descending { "desc" } else { "asc" }))
                    .collect();
                format!("over {frame:?} of changes by {}", by.join(", "))
            }
            NodeKind::WindowAggregate { window, .. } => format!("window-aggregate {window}"),
            NodeKind::TopNPerWindow {
                order_by,
                descending,
                then_by,
                limit,
                ..
            } => {
                let dir = |d: bool| if d { "desc" } else { "asc" };
                let mut by = format!("{order_by} {}", dir(*descending));
                for (c, d) in then_by {
                    by.push_str(&format!(", {c} {}", dir(*d)));
                }
                format!("top-{limit}-per-window by {by}")
            }
            NodeKind::LookupJoin {
                table,
                left_keys,
                right_keys,
                ..
            } => format!(
                "lookup-join {} on ({}) = ({})",
                table.connector,
                left_keys.join(", "),
                right_keys.join(", ")
            ),
            NodeKind::TopN {
                order_by,
                descending,
                then_by,
                limit,
                ..
            } => {
                let dir = |d: bool| if d { "desc" } else { "asc" };
                let mut by = format!("{order_by} {}", dir(*descending));
                for (c, d) in then_by {
                    by.push_str(&format!(", {c} {}", dir(*d)));
                }
                format!("top-{limit} by {by}")
            }
            NodeKind::Join {
                left_keys,
                right_keys,
                interval,
                outer,
                until,
                ..
            } => {
                let mut frees = String::new();
                if let Some(c) = &until.0 {
                    frees.push_str(&format!(", left rows until {c}"));
                }
                if let Some(c) = &until.1 {
                    frees.push_str(&format!(", right rows until {c}"));
                }
                let on = left_keys
                    .iter()
                    .zip(right_keys)
                    .map(|(l, r)| format!("{l} = {r}"))
                    .collect::<Vec<_>>()
                    .join(" and ");
                let kind = match outer {
                    (true, true) => "full-outer-",
                    (true, false) => "left-outer-",
                    (false, true) => "right-outer-",
                    (false, false) => "",
                };
                match interval {
                    Some((lo, hi)) => format!(
                        "{kind}interval-join on {on}, right - left in [{lo}, {hi}] ms{frees}"
                    ),
                    None => format!("{kind}join on {on}{frees}"),
                }
            }
            NodeKind::Limit { fetch } => format!("limit {fetch}"),
            NodeKind::Sink(s) => format!("sink:{}", s.connector),
        }
    }

    /// The named side outputs the operator can emit.
    pub fn side_outputs(&self) -> &'static [&'static str] {
        match self {
            NodeKind::WindowAggregate { window, .. }
                if !matches!(window, WindowSpec::Count { .. } | WindowSpec::Global { .. }) =>
            {
                &["late"]
            }
            NodeKind::TopNPerWindow { .. } => &["late"],
            _ => &[],
        }
    }

    /// Whether the operator keeps no state between batches (and so may be chained freely).
    pub fn is_stateless(&self) -> bool {
        matches!(
            self,
            NodeKind::Filter { .. }
                | NodeKind::Project { .. }
                | NodeKind::AssignWindows { .. }
                | NodeKind::ProcessingTime
                | NodeKind::Source(_)
        )
    }
}

/// One operator of the job.
#[derive(Clone, Debug)]
pub struct PlanNode {
    /// Position in [`JobPlan::nodes`].
    pub id: NodeId,
    /// Display name.
    pub name: String,
    /// Number of parallel subtasks.
    pub parallelism: usize,
    /// What it does.
    pub kind: NodeKind,
}

/// How rows travel along an edge from upstream to downstream subtasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// Subtask i feeds subtask i (equal parallelism).
    Forward,
    /// By hash of the key columns into key groups, key groups onto subtasks.
    Hash(Vec<String>),
    /// Round-robin over downstream subtasks, batch by batch.
    Rebalance,
    /// Every downstream subtask gets every batch.
    Broadcast,
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioning::Forward => f.write_str("FORWARD"),
            Partitioning::Hash(k) => write!(f, "HASH({})", k.join(", ")),
            Partitioning::Rebalance => f.write_str("REBALANCE"),
            Partitioning::Broadcast => f.write_str("BROADCAST"),
        }
    }
}

/// A directed edge of the job graph.
#[derive(Clone, Debug)]
pub struct PlanEdge {
    /// Upstream node.
    pub from: NodeId,
    /// Downstream node.
    pub to: NodeId,
    /// How rows are distributed.
    pub partitioning: Partitioning,
    /// The upstream's named side output this edge carries (`late` for window
    /// aggregates); `None` for its main output.
    pub side: Option<String>,
}

/// Adaptive batching at sources: a batch closes at `max_rows` or after `linger`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchConfig {
    /// The most rows in one batch.
    pub max_rows: usize,
    /// The longest a row waits at the source for its batch to fill.
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 4096,
            linger: Duration::from_millis(5),
        }
    }
}

/// Job-wide settings.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Source batching.
    pub batch: BatchConfig,
    /// Capacity of each channel between two subtasks, in messages (batches).
    pub channel_capacity: usize,
    /// Number of key groups: the upper bound of any operator's parallelism, and the
    /// unit in which keyed state moves when parallelism changes.
    pub max_parallelism: usize,
    /// Where undecodable records go (a JSON-lines file); `None` logs them in full.
    pub dead_letter_path: Option<std::path::PathBuf>,
    /// Checkpoints and the delivery guarantee.
    pub checkpoint: CheckpointConfig,
    /// Start from a checkpoint or savepoint instead of from the beginning.
    pub restore: Option<RestoreFrom>,
    /// Most bytes the job's tasks may hold on the heap; over it the job fails (measured
    /// when the binary's accounting allocator is installed). `None`: no limit.
    pub memory_limit: Option<u64>,
    /// This process is one instance of a job that several share (see [`ClusterConfig`]).
    pub cluster: Option<ClusterConfig>,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            batch: BatchConfig::default(),
            channel_capacity: 8,
            max_parallelism: 128,
            dead_letter_path: None,
            checkpoint: CheckpointConfig::default(),
            restore: None,
            memory_limit: None,
            cluster: None,
        }
    }
}

/// What a job promises about its output after failures and restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// No checkpoints: nothing is ever replayed, so after a failure rows may be lost but
    /// are never duplicated. Sinks write directly.
    AtMostOnce,
    /// Checkpoints without barrier alignment; sinks write directly. After a restore, rows
    /// since the checkpoint are replayed: none lost, some possibly twice.
    AtLeastOnce,
    /// Aligned barriers and two-phase-commit sinks: output becomes visible when the
    /// checkpoint that covers it completes. None lost, none twice.
    #[default]
    ExactlyOnce,
}

impl std::str::FromStr for DeliveryGuarantee {
    type Err = sluice_types::SluiceError;

    fn from_str(s: &str) -> sluice_types::Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "at-most-once" | "none" => Ok(Self::AtMostOnce),
            "at-least-once" => Ok(Self::AtLeastOnce),
            "exactly-once" => Ok(Self::ExactlyOnce),
            other => Err(sluice_types::SluiceError::user(format!(
                "unknown delivery guarantee `{other}`; use at-most-once, at-least-once or exactly-once"
            ))),
        }
    }
}

impl std::fmt::Display for DeliveryGuarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AtMostOnce => "at-most-once",
            Self::AtLeastOnce => "at-least-once",
            Self::ExactlyOnce => "exactly-once",
        })
    }
}

/// Periodic checkpoints (Flink's `execution.checkpointing.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointConfig {
    /// Time between checkpoint triggers; `None` disables periodic checkpoints.
    pub interval: Option<Duration>,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// The least time between the end of one checkpoint and the start of the next.
    pub min_pause: Duration,
    /// Completed checkpoints kept; older ones are deleted.
    pub retained: usize,
    /// Where checkpoints go: a local directory or an object-store URL (`s3://bucket/path`).
    pub dir: Option<String>,
    /// Where savepoints go; `<dir>/savepoints` when unset.
    pub savepoint_dir: Option<String>,
    /// The delivery guarantee.
    pub delivery: DeliveryGuarantee,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            retained: 3,
            dir: None,
            savepoint_dir: None,
            delivery: DeliveryGuarantee::default(),
        }
    }
}

/// Which snapshot a job starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The latest completed checkpoint under the job's checkpoint directory; a fresh
    /// start if there is none.
    Latest,
    /// A checkpoint or savepoint directory (or URL).
    Path(String),
}

/// A whole job: a DAG of operators.
#[derive(Clone, Debug)]
pub struct JobPlan {
    /// Job name.
    pub name: String,
    /// Operators, indexed by [`NodeId`].
    pub nodes: Vec<PlanNode>,
    /// Edges between them.
    pub edges: Vec<PlanEdge>,
    /// Settings.
    pub config: JobConfig,
}

impl JobPlan {
    /// How many rows the job writes at most, when its only sink is fed by a `LIMIT n`
    /// (through projections and filters alone): a runner may stop the job once its sink
    /// has written that many.
    pub fn row_limit(&self) -> Option<usize> {
        let sinks: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Sink(_)))
            .map(|n| n.id)
            .collect();
        let [sink] = sinks.as_slice() else {
            return None;
        };
        let mut node = *sink;
        loop {
            let mut ups = self.edges.iter().filter(|e| e.to == node);
            let (Some(up), None) = (ups.next(), ups.next()) else {
                return None;
            };
            match &self.nodes[up.from].kind {
                NodeKind::Limit { fetch } => return Some(*fetch),
                NodeKind::Project { .. } | NodeKind::Filter { .. } => node = up.from,
                _ => return None,
            }
        }
    }

    /// An empty plan.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodes: Vec::new(),
            edges: Vec::new(),
            config: JobConfig::default(),
        }
    }

    /// Adds a node and returns its id.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        parallelism: usize,
        kind: NodeKind,
    ) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(PlanNode {
            id,
            name: name.into(),
            parallelism,
            kind,
        });
        id
    }

    /// Connects two nodes.
    pub fn add_edge(&mut self, from: NodeId, to: NodeId, partitioning: Partitioning) {
        self.edges.push(PlanEdge {
            from,
            to,
            partitioning,
            side: None,
        });
    }

    /// Connects a node's named side output to another node.
    pub fn add_side_edge(
        &mut self,
        from: NodeId,
        side: &str,
        to: NodeId,
        partitioning: Partitioning,
    ) {
        self.edges.push(PlanEdge {
            from,
            to,
            partitioning,
            side: Some(side.to_string()),
        });
    }

    /// Edges leaving a node.
    pub fn outputs(&self, node: NodeId) -> impl Iterator<Item = &PlanEdge> {
        self.edges.iter().filter(move |e| e.from == node)
    }

    /// Edges entering a node.
    pub fn inputs(&self, node: NodeId) -> impl Iterator<Item = &PlanEdge> {
        self.edges.iter().filter(move |e| e.to == node)
    }

    /// Node ids in an order where every edge goes forward; fails on a cycle.
    pub fn topological_order(&self) -> Result<Vec<NodeId>> {
        let mut indegree = vec![0usize; self.nodes.len()];
        for e in &self.edges {
            indegree[e.to] += 1;
        }
        let mut ready: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&n| indegree[n] == 0)
            .collect();
        ready.reverse();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(n) = ready.pop() {
            order.push(n);
            for e in self.outputs(n) {
                indegree[e.to] -= 1;
                if indegree[e.to] == 0 {
                    ready.push(e.to);
                }
            }
        }
        if order.len() != self.nodes.len() {
            return Err(SluiceError::user("the job graph has a cycle"));
        }
        Ok(order)
    }

    /// Checks the structural rules: sources have no inputs, sinks no outputs, every
    /// other node both, parallelism within bounds, forward edges between equal parallelism.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(SluiceError::user(format!(
                "job `{}` has no operators",
                self.name
            )));
        }
        let max_p = self.config.max_parallelism;
        let c = &self.config;
        let too_big = |what: &str, v: String, max: String| {
            Err(SluiceError::user(format!(
                "{what} is {v}; it may be at most {max}"
            )))
        };
        if max_p > limits::MAX_PARALLELISM {
            return too_big(
                "the max parallelism",
                max_p.to_string(),
                limits::MAX_PARALLELISM.to_string(),
            );
        }
        if c.batch.max_rows > limits::MAX_BATCH_ROWS {
            return too_big(
                "the batch size (rows)",
                c.batch.max_rows.to_string(),
                limits::MAX_BATCH_ROWS.to_string(),
            );
        }
        if c.channel_capacity > limits::MAX_CHANNEL_CAPACITY {
            return too_big(
                "the channel capacity",
                c.channel_capacity.to_string(),
                limits::MAX_CHANNEL_CAPACITY.to_string(),
            );
        }
        if c.checkpoint.retained > limits::MAX_RETAINED_CHECKPOINTS {
            return too_big(
                "the checkpoints retained",
                c.checkpoint.retained.to_string(),
                limits::MAX_RETAINED_CHECKPOINTS.to_string(),
            );
        }
        for (what, d) in [
            (
                "the checkpoint interval",
                c.checkpoint.interval.unwrap_or_default(),
            ),
            ("the checkpoint timeout", c.checkpoint.timeout),
            ("the pause between checkpoints", c.checkpoint.min_pause),
            ("the batch linger", c.batch.linger),
        ] {
            if d > limits::MAX_DURATION {
                return too_big(what, format!("{d:?}"), "a year".into());
            }
        }
        for n in &self.nodes {
            if let NodeKind::WindowAggregate { window, .. } = &n.kind
                && window.windows_per_row() > MAX_WINDOWS_PER_ROW
            {
                return Err(SluiceError::user(format!(
                    "operator `{}`: {window} puts every row in {} windows; at most {MAX_WINDOWS_PER_ROW} (make the slide or step larger)",
                    n.name,
                    window.windows_per_row()
                )));
            }
            if n.parallelism == 0 || n.parallelism > max_p {
                return Err(SluiceError::user(format!(
                    "operator `{}` has parallelism {}; it must be between 1 and the max parallelism {max_p}",
                    n.name, n.parallelism
                )));
            }
            let ins = self.inputs(n.id).count();
            let outs = self.outputs(n.id).count();
            match &n.kind {
                NodeKind::Source(_) if ins > 0 => {
                    return Err(SluiceError::user(format!(
                        "source `{}` cannot have inputs",
                        n.name
                    )));
                }
                NodeKind::Sink(_) if outs > 0 => {
                    return Err(SluiceError::user(format!(
                        "sink `{}` cannot have outputs",
                        n.name
                    )));
                }
                NodeKind::Source(_) | NodeKind::Sink(_) => {}
                _ if ins == 0 => {
                    return Err(SluiceError::user(format!(
                        "operator `{}` has no input",
                        n.name
                    )));
                }
                _ => {}
            }
            if outs == 0 && !matches!(n.kind, NodeKind::Sink(_)) {
                return Err(SluiceError::user(format!(
                    "operator `{}` has no output: end every stream in a sink",
                    n.name
                )));
            }
        }
        if self.config.batch.max_rows == 0 {
            return Err(SluiceError::user("batch max_rows must be at least 1"));
        }
        if self.config.channel_capacity == 0 {
            return Err(SluiceError::user("channel capacity must be at least 1"));
        }
        self.topological_order().map(|_| ())
    }
}
