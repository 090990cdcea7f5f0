//! The Rust dataflow API: a builder over [`JobPlan`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion_expr::Expr;
use sluice_connectors::{
    BlackholeSink, DatagenSource, FileSink, FileSource, NexmarkSource, PrintSink,
};
/// When a global window fires: `Trigger::count(n)`, `Trigger::event_time_every(d)`,
/// `Trigger::processing_time_every(d)`, combined with `.or(…)`; `.purging()` empties the
/// window on each firing.
pub use sluice_plan::TriggerSpec as Trigger;
use sluice_plan::{
    ConnectorSpec, DeliveryGuarantee, EventTime, JobPlan, NodeId, NodeKind, Partitioning,
    RestoreFrom, SourceNode, WatermarkSpec, WindowSpec,
};
use sluice_runtime::{ConnectorRegistry, JobHandle, PreparedJob};
use sluice_types::{Result, SluiceError};

/// Something that can be a pipeline's source.
pub trait IntoSource {
    /// The connector spec.
    fn into_source_spec(self) -> ConnectorSpec;
}

/// Something that can be a pipeline's sink.
pub trait IntoSink {
    /// The connector spec.
    fn into_sink_spec(self) -> ConnectorSpec;
}

macro_rules! into_spec {
    ($trait:ident, $method:ident, $($t:ty),*) => {$(
        impl $trait for $t {
            fn $method(self) -> ConnectorSpec {
                self.into_spec()
            }
        }
    )*};
}
into_spec!(
    IntoSource,
    into_source_spec,
    NexmarkSource,
    FileSource,
    DatagenSource
);
into_spec!(IntoSink, into_sink_spec, FileSink, PrintSink, BlackholeSink);

impl IntoSource for ConnectorSpec {
    fn into_source_spec(self) -> ConnectorSpec {
        self
    }
}

impl IntoSink for ConnectorSpec {
    fn into_sink_spec(self) -> ConnectorSpec {
        self
    }
}

struct Builder {
    plan: JobPlan,
    parallelism: usize,
    errors: Vec<String>,
    registry: ConnectorRegistry,
}

/// A streaming job under construction.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Mutex<Builder>>,
}

/// A stream of rows: the output of one operator.
#[derive(Clone)]
pub struct Stream {
    inner: Arc<Mutex<Builder>>,
    node: NodeId,
    next_edge: Option<Partitioning>,
    /// The node's side output this stream reads, if not its main output.
    side: Option<String>,
}

/// A stream partitioned by key: the next operator sees all rows of a key in one subtask.
#[derive(Clone)]
pub struct KeyedStream {
    stream: Stream,
    keys: Vec<String>,
}

impl Pipeline {
    /// A new, empty job.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Builder {
                plan: JobPlan::new(name),
                parallelism: 1,
                errors: Vec::new(),
                registry: sluice_connectors::registry(),
            })),
        }
    }

    /// A job from a finished plan (as the SQL front end builds them), run with the
    /// built-in connectors.
    pub fn from_plan(plan: JobPlan) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Builder {
                plan,
                parallelism: 1,
                errors: Vec::new(),
                registry: sluice_connectors::registry(),
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Builder) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Default parallelism of the operators added after this call.
    pub fn parallelism(&self, p: usize) -> &Self {
        self.with(|b| b.parallelism = p);
        self
    }

    /// Adaptive batching: a source batch closes at `max_rows` or after `linger`.
    pub fn batching(&self, max_rows: usize, linger: Duration) -> &Self {
        self.with(|b| {
            b.plan.config.batch.max_rows = max_rows;
            b.plan.config.batch.linger = linger;
        });
        self
    }

    /// Capacity (in batches) of each channel between subtasks.
    pub fn channel_capacity(&self, n: usize) -> &Self {
        self.with(|b| b.plan.config.channel_capacity = n);
        self
    }

    /// Write records that cannot be decoded to this JSON-lines file (default: the log).
    pub fn dead_letters(&self, path: impl Into<PathBuf>) -> &Self {
        let p = path.into();
        self.with(|b| b.plan.config.dead_letter_path = Some(p));
        self
    }

    /// Takes a checkpoint every `interval` (Flink's `execution.checkpointing.interval`)
    /// into [`Pipeline::checkpoint_dir`] (default `sluice-checkpoints/<job>`).
    pub fn checkpointing(&self, interval: Duration) -> &Self {
        self.with(|b| b.plan.config.checkpoint.interval = Some(interval));
        self
    }

    /// Where checkpoints go: a directory, or an `s3://` URL (with the `s3` feature).
    /// Setting it enables savepoints even without periodic checkpoints.
    pub fn checkpoint_dir(&self, dir: impl Into<String>) -> &Self {
        let dir = dir.into();
        self.with(|b| b.plan.config.checkpoint.dir = Some(dir));
        self
    }

    /// Where savepoints go (default: `<checkpoint dir>/savepoints`).
    pub fn savepoint_dir(&self, dir: impl Into<String>) -> &Self {
        let dir = dir.into();
        self.with(|b| b.plan.config.checkpoint.savepoint_dir = Some(dir));
        self
    }

    /// The delivery guarantee (exactly-once by default when checkpointing).
    pub fn delivery(&self, guarantee: DeliveryGuarantee) -> &Self {
        self.with(|b| b.plan.config.checkpoint.delivery = guarantee);
        self
    }

    /// Checkpoint timeout, minimum pause between checkpoints, and how many to keep.
    pub fn checkpoint_tuning(
        &self,
        timeout: Duration,
        min_pause: Duration,
        retained: usize,
    ) -> &Self {
        self.with(|b| {
            let c = &mut b.plan.config.checkpoint;
            c.timeout = timeout;
            c.min_pause = min_pause;
            c.retained = retained;
        });
        self
    }

    /// Number of key groups (the most any operator's parallelism can grow to); keep it
    /// unchanged across restores.
    pub fn max_parallelism(&self, n: usize) -> &Self {
        self.with(|b| b.plan.config.max_parallelism = n);
        self
    }

    /// Runs this process as one instance of a job that several processes share: they
    /// divide its Kafka source's partitions through one consumer group named after the
    /// cluster, and each commits its output and offsets in Kafka transactions.
    pub fn cluster(&self, cluster: sluice_plan::ClusterConfig) -> &Self {
        self.with(|b| b.plan.config.cluster = Some(cluster));
        self
    }

    /// Starts from a checkpoint or savepoint: [`RestoreFrom::Latest`] (of the checkpoint
    /// directory; a fresh start if there is none) or a path.
    pub fn restore_from(&self, from: RestoreFrom) -> &Self {
        self.with(|b| b.plan.config.restore = Some(from));
        self
    }

    /// Replaces the connector registry (to add custom connectors).
    pub fn registry(&self, registry: ConnectorRegistry) -> &Self {
        self.with(|b| b.registry = registry);
        self
    }

    /// Adds a source; its event time is the connector's natural column (or ingestion time).
    pub fn source(&self, source: impl IntoSource) -> Stream {
        let spec = source.into_source_spec();
        let node = self.with(|b| {
            let name = spec.connector.clone();
            let p = b.parallelism;
            b.plan.add_node(
                name,
                p,
                NodeKind::Source(SourceNode {
                    spec,
                    event_time: EventTime::ConnectorDefault,
                    watermark: WatermarkSpec::default(),
                }),
            )
        });
        Stream {
            inner: Arc::clone(&self.inner),
            node,
            next_edge: None,
            side: None,
        }
    }

    /// The connectors the job is prepared with.
    pub fn connector_registry(&self) -> ConnectorRegistry {
        self.with(|b| b.registry.clone())
    }

    /// The plan built so far (errors recorded while building are reported here).
    pub fn plan(&self) -> Result<JobPlan> {
        self.with(|b| match b.errors.first() {
            Some(e) => Err(SluiceError::user(e.clone())),
            None => Ok(b.plan.clone()),
        })
    }

    /// Checks the whole job (schemas, expressions, connector options) without running it.
    pub fn prepare(&self) -> Result<PreparedJob> {
        let plan = self.plan()?;
        let registry = self.with(|b| b.registry.clone());
        PreparedJob::prepare(plan, &registry)
    }

    /// The dataflow graph as text: tasks, chained operators, parallelism, edges.
    pub fn explain(&self) -> Result<String> {
        Ok(self.prepare()?.explain())
    }

    /// Starts the job on the current tokio runtime (restoring first, if asked to).
    pub async fn start(&self) -> Result<JobHandle> {
        self.prepare()?.start().await
    }

    /// Runs the job to completion (a bounded input ends it).
    pub async fn run(&self) -> Result<()> {
        self.start().await?.wait().await
    }

    /// Runs the job; when it fails, restarts it as `strategy` says (see
    /// [`crate::restart`]), each time from the latest checkpoint it completed (or from
    /// where it first started, if it completed none). `on_start` sees each attempt's
    /// handle (for metrics and stopping). Returns the last failure when the strategy
    /// gives up.
    pub async fn run_with_restarts(
        &self,
        strategy: crate::restart::RestartStrategy,
        on_start: impl FnMut(&JobHandle),
    ) -> Result<()> {
        strategy.validate()?;
        // A job that cannot start at all is misconfigured: fail at once.
        let mut hooks = OnStart(on_start);
        let first = self.start().await?;
        hooks.started(&first);
        self.supervise(first, strategy, &mut hooks).await
    }

    /// Waits for a started job and restarts it after failures as `strategy` says, each
    /// time from the latest checkpoint it completed; `hooks` see each attempt and each
    /// failure and may stop the restarts. A restart that cannot start (a broker still
    /// down) is one more failure. Returns the last failure when the strategy gives up or
    /// `hooks` stop it.
    pub async fn supervise(
        &self,
        mut handle: JobHandle,
        strategy: crate::restart::RestartStrategy,
        hooks: &mut impl RestartHooks,
    ) -> Result<()> {
        let first_start = std::time::Instant::now();
        let mut attempt_start = first_start;
        let mut tracker = crate::restart::RestartTracker::new(strategy, sluice_types::now_micros());
        loop {
            let checkpoints = Arc::clone(&handle.metrics().checkpoints);
            let mut failure = match handle.wait().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // The latest checkpoint of the attempt that ran; a restart that could not
            // start keeps the restore point it had.
            // (A cluster instance starts again from its group's committed offsets.)
            let cluster = self.with(|b| b.plan.config.cluster.is_some());
            let latest = checkpoints
                .latest_completed()
                .filter(|c| c.kind != "final" && !cluster)
                .map(|c| RestoreFrom::Path(c.location));
            if latest.is_some() {
                self.restore_from(latest.clone().expect("invariant: checked"));
            }
            handle = loop {
                let delay = tracker.on_failure(first_start.elapsed(), attempt_start.elapsed());
                let go_on = hooks.failed(&failure, delay.is_some());
                let Some(delay) = delay.filter(|_| go_on) else {
                    return Err(failure);
                };
                tracing::warn!(
                    error = %failure, restart = tracker.restarts(), delay = ?delay,
                    from = ?latest, "job failed; restarting"
                );
                hooks.waiting(delay);
                tokio::time::sleep(delay).await;
                if !hooks.restart() {
                    return Err(failure);
                }
                attempt_start = std::time::Instant::now();
                match self.start().await {
                    Ok(h) => break h,
                    Err(e) => failure = e,
                }
            };
            hooks.started(&handle);
        }
    }
}

/// What [`Pipeline::supervise`] tells about a job's attempts, and how it asks whether
/// to go on.
pub trait RestartHooks {
    /// An attempt started.
    fn started(&mut self, _handle: &JobHandle) {}

    /// An attempt failed (or could not start); `restarting` whether the strategy
    /// restarts it. `false` stops the restarts.
    fn failed(&mut self, _error: &SluiceError, _restarting: bool) -> bool {
        true
    }

    /// The strategy's delay before the next attempt, about to be waited.
    fn waiting(&mut self, _delay: std::time::Duration) {}

    /// Asked after the restart delay, before the next attempt starts; `false` stops.
    fn restart(&mut self) -> bool {
        true
    }
}

/// Hooks that only watch each attempt start.
struct OnStart<F>(F);

impl<F: FnMut(&JobHandle)> RestartHooks for OnStart<F> {
    fn started(&mut self, handle: &JobHandle) {
        (self.0)(handle)
    }
}

impl Stream {
    fn add(&self, kind: NodeKind) -> Stream {
        let p = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parallelism;
        self.add_with_parallelism(kind, p)
    }

    fn add_with_parallelism(&self, kind: NodeKind, p: usize) -> Stream {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let up_p = b.plan.nodes[self.node].parallelism;
        let name = kind.label();
        let id = b.plan.add_node(name, p, kind);
        let edge = match &self.next_edge {
            Some(e) => e.clone(),
            None if p == up_p => Partitioning::Forward,
            None => Partitioning::Rebalance,
        };
        match &self.side {
            None => b.plan.add_edge(self.node, id, edge),
            Some(tag) => b.plan.add_side_edge(self.node, tag, id, edge),
        }
        Stream {
            inner: Arc::clone(&self.inner),
            node: id,
            next_edge: None,
            side: None,
        }
    }

    fn source_node(&self, f: impl FnOnce(&mut SourceNode)) -> Stream {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &mut b.plan.nodes[self.node].kind {
            NodeKind::Source(s) => f(s),
            _ => b.errors.push(
                "event time and watermarks are set on a source stream, right after `source(…)`"
                    .into(),
            ),
        }
        self.clone()
    }

    /// Take event time from this column of the source (timestamp, or BIGINT epoch ms).
    pub fn event_time(self, column: &str) -> Stream {
        self.source_node(|s| s.event_time = EventTime::Column(column.to_string()))
    }

    /// Use the wall-clock time of ingestion as event time.
    pub fn ingestion_time(self) -> Stream {
        self.source_node(|s| s.event_time = EventTime::Ingestion)
    }

    /// Processing time: rows are stamped with the wall clock when read and the
    /// watermark follows the wall clock (every 100 ms, with or without rows), so windows
    /// downstream are processing-time windows that close on time.
    pub fn processing_time(self) -> Stream {
        self.source_node(|s| s.event_time = EventTime::ProcessingTime)
    }

    /// Watermarks trail the largest event time seen by this bound.
    pub fn max_out_of_orderness(self, bound: Duration) -> Stream {
        self.source_node(|s| s.watermark.max_out_of_orderness = bound)
    }

    /// A source subtask without rows for this long is idle: it stops holding back event
    /// time downstream until its next row (for example, a partition that gets no data).
    pub fn idle_timeout(self, timeout: Duration) -> Stream {
        self.source_node(|s| s.watermark.idle_timeout = Some(timeout))
    }

    /// Sets this operator's parallelism.
    pub fn parallelism(self, p: usize) -> Stream {
        {
            let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            b.plan.nodes[self.node].parallelism = p;
            // A forward edge into this node stays valid only at equal parallelism.
            let node = self.node;
            let plan = &mut b.plan;
            let ups: Vec<(usize, NodeId)> = plan
                .edges
                .iter()
                .enumerate()
                .filter(|(_, e)| e.to == node && e.partitioning == Partitioning::Forward)
                .map(|(i, e)| (i, e.from))
                .collect();
            for (i, from) in ups {
                if plan.nodes[from].parallelism != p {
                    plan.edges[i].partitioning = Partitioning::Rebalance;
                }
            }
        }
        self
    }

    /// Keeps the rows for which `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Stream {
        self.add(NodeKind::filter(predicate))
    }

    /// Computes new columns (name them with `.alias`); event time is carried along.
    pub fn select(&self, exprs: impl IntoIterator<Item = Expr>) -> Stream {
        self.add(NodeKind::Project {
            exprs: exprs.into_iter().collect(),
        })
    }

    /// Partitions by key columns (hash into key groups).
    pub fn key_by<S: Into<String>>(&self, keys: impl IntoIterator<Item = S>) -> KeyedStream {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        KeyedStream {
            stream: Stream {
                next_edge: Some(Partitioning::Hash(keys.clone())),
                ..self.clone()
            },
            keys,
        }
    }

    /// The rows that arrived too late for this window aggregate's windows (beyond the
    /// allowed lateness), with the aggregate's input columns. Without a consumer they
    /// go to the dead-letter output.
    pub fn late_rows(&self) -> Stream {
        Stream {
            side: Some("late".into()),
            next_edge: None,
            ..self.clone()
        }
    }

    /// Of each window's rows (a window aggregate's output), those ranked `<= n` by
    /// `order_by` (largest first when `descending`), ties included as in SQL
    /// `RANK() <= n`; emitted when the window closes. Runs in parallel, partitioned by
    /// window.
    pub fn top_n_per_window(&self, n: usize, order_by: &str, descending: bool) -> Stream {
        self.top_n_by(Vec::new(), n, order_by, descending)
    }

    fn top_n_by(
        &self,
        partition_by: Vec<String>,
        n: usize,
        order_by: &str,
        descending: bool,
    ) -> Stream {
        let mut keys = vec!["window_end".to_string()];
        keys.extend(partition_by.iter().cloned());
        Stream {
            next_edge: Some(Partitioning::Hash(keys)),
            ..self.clone()
        }
        .add(NodeKind::TopNPerWindow {
            partition_by,
            order_by: order_by.to_string(),
            descending,
            then_by: Vec::new(),
            limit: n,
            row_number: false,
            rank_column: None,
        })
    }

    /// Spreads batches round-robin over the next operator's subtasks.
    pub fn rebalance(&self) -> Stream {
        Stream {
            next_edge: Some(Partitioning::Rebalance),
            ..self.clone()
        }
    }

    /// Sends every batch to every subtask of the next operator.
    pub fn broadcast(&self) -> Stream {
        Stream {
            next_edge: Some(Partitioning::Broadcast),
            ..self.clone()
        }
    }

    /// Ends the stream in a sink.
    pub fn sink(&self, sink: impl IntoSink) {
        self.add(NodeKind::Sink(sink.into_sink_spec()));
    }
}

impl KeyedStream {
    /// Top-N per window and key: of each window's rows with the same key columns, those
    /// ranked `<= n` by `order_by`, ties included.
    pub fn top_n_per_window(&self, n: usize, order_by: &str, descending: bool) -> Stream {
        self.stream
            .top_n_by(self.keys.clone(), n, order_by, descending)
    }

    /// A running aggregate per key: each batch emits the updated aggregates of the keys
    /// it touched (the last row of a key is its current value).
    pub fn aggregate(&self, aggregates: impl IntoIterator<Item = Expr>) -> Stream {
        self.stream.add(NodeKind::Aggregate {
            keys: self.keys.clone(),
            aggregates: aggregates.into_iter().collect(),
            ttl_ms: None,
            upsert: false,
        })
    }
}

/// An event-time window.
///
/// ```
/// use sluice::Window;
/// use std::time::Duration;
/// let w = Window::hopping(Duration::from_secs(10), Duration::from_secs(2));
/// assert_eq!(w.to_string(), "HOP(10s, slide 2s)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(WindowSpec);

impl Window {
    /// Fixed, non-overlapping windows of `size`.
    pub fn tumbling(size: Duration) -> Self {
        Self(WindowSpec::Tumbling { size })
    }

    /// Windows of `size` starting every `slide`.
    pub fn hopping(size: Duration, slide: Duration) -> Self {
        Self(WindowSpec::Hopping { size, slide })
    }

    /// Windows growing by `step` from each period of `size` (`[p, p + step)`,
    /// `[p, p + 2 step)`, … `[p, p + size)`): a running result per period, every step.
    pub fn cumulate(size: Duration, step: Duration) -> Self {
        Self(WindowSpec::Cumulate { size, step })
    }

    /// Per key, rows closer than `gap` form one session, which ends `gap` after its
    /// last row.
    pub fn session(gap: Duration) -> Self {
        Self(WindowSpec::Session { gap })
    }

    /// Per key, one result every `size` rows, over those rows (arrival order).
    pub fn count(size: u64) -> Self {
        Self(WindowSpec::Count { size, slide: size })
    }

    /// Per key, one result every `slide` rows, over the last `size` rows.
    pub fn count_sliding(size: u64, slide: u64) -> Self {
        Self(WindowSpec::Count { size, slide })
    }

    /// Per key, one window over all rows, fired by `trigger` (see [`Trigger`]).
    ///
    /// ```
    /// use sluice::{Trigger, Window};
    /// use std::time::Duration;
    /// let w = Window::global(Trigger::count(100).or(Trigger::processing_time_every(Duration::from_secs(5))).purging());
    /// assert_eq!(w.to_string(), "GLOBAL(trigger count 100 or every 5s of processing time, purging)");
    /// ```
    pub fn global(trigger: Trigger) -> Self {
        Self(WindowSpec::Global { trigger })
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A stream divided into windows, per key or over all rows.
#[derive(Clone)]
pub struct WindowedStream {
    stream: Stream,
    keys: Vec<String>,
    window: Window,
    allowed_lateness: Duration,
    early_firing: Option<Duration>,
}

impl WindowedStream {
    /// Late rows within this bound still update their windows, which fire again.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness;
        self
    }

    /// Also emit every open window's partial result this often (processing time), before
    /// its final result: tumbling, hopping and session windows emit each open window,
    /// count windows each key with new rows (its newest rows up to the window size).
    /// Global windows take a processing-time interval in their trigger instead.
    pub fn early_every(mut self, interval: Duration) -> Self {
        self.early_firing = Some(interval);
        self
    }

    /// One row per key and window when the watermark passes the window's end, with
    /// `window_start`, `window_end` and the aggregates.
    pub fn aggregate(&self, aggregates: impl IntoIterator<Item = Expr>) -> Stream {
        let kind = NodeKind::WindowAggregate {
            keys: self.keys.clone(),
            window: self.window.0,
            aggregates: aggregates.into_iter().collect(),
            allowed_lateness: self.allowed_lateness,
            early_firing: self.early_firing,
        };
        if self.keys.is_empty() {
            // All rows meet in one subtask.
            let s = self.stream.add_with_parallelism(kind, 1);
            return s;
        }
        self.stream.add(kind)
    }
}

impl KeyedStream {
    /// Windows per key.
    pub fn window(&self, window: Window) -> WindowedStream {
        WindowedStream {
            stream: self.stream.clone(),
            keys: self.keys.clone(),
            window,
            allowed_lateness: Duration::ZERO,
            early_firing: None,
        }
    }
}

impl Stream {
    /// Windows over all rows (not keyed): the aggregate runs with parallelism 1.
    pub fn window_all(&self, window: Window) -> WindowedStream {
        WindowedStream {
            stream: self.clone(),
            keys: Vec::new(),
            window,
            allowed_lateness: Duration::ZERO,
            early_firing: None,
        }
    }
}
