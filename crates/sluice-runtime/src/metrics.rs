//! Metrics core: per operator and subtask counters, gauges and an end-to-end latency
//! histogram. Everything is lock-free atomics so recording costs a few nanoseconds per
//! batch; readers take snapshots.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A log-linear histogram of microsecond values, about 3% relative precision,
/// recording in O(1) with atomics.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum of the observations (saturating at `u64::MAX` µs, half a million years).
    sum: AtomicU64,
    max: AtomicU64,
}

const SUB_BITS: u32 = 5; // 32 sub-buckets per power of two
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB; // values below this get a bucket each
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift) & (SUB - 1);
    (LINEAR + (shift as u64 - 1) * SUB + mantissa) as usize
}

fn bucket_upper(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let shift = (b - LINEAR) / SUB + 1;
    let mantissa = (b - LINEAR) % SUB;
    let upper = (u128::from(SUB + mantissa + 1) << shift) - 1;
    upper.min(u128::from(u64::MAX)) as u64
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records `n` observations of value `v`.
    pub fn record_n(&self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.buckets[bucket_of(v)].fetch_add(n, Relaxed);
        self.count.fetch_add(n, Relaxed);
        self.sum.fetch_add(v.saturating_mul(n), Relaxed);
        self.max.fetch_max(v, Relaxed);
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum: self.sum.load(Relaxed),
            max: self.max.load(Relaxed),
        }
    }
}

/// A copy of a histogram that can be merged and queried.
#[derive(Clone, Debug)]
pub struct HistogramSnapshot {
    buckets: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations.
    pub sum: u64,
    /// Largest observation.
    pub max: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl HistogramSnapshot {
    /// Adds another snapshot's observations.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// The observations made since `earlier` (a snapshot of the same histogram): the
    /// distribution of a recent interval rather than of the whole run.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let top = buckets.iter().rposition(|&c| c > 0);
        HistogramSnapshot {
            count: buckets.iter().sum(),
            sum: self.sum.saturating_sub(earlier.sum),
            // The interval's largest is at most its top bucket's upper edge.
            max: top.map_or(0, |i| bucket_upper(i).min(self.max)),
            buckets,
        }
    }

    /// Observations at or below `v` (those of buckets whose upper edge is at most `v`):
    /// a cumulative bucket of a Prometheus histogram, within the buckets' 3 %.
    pub fn count_at_most(&self, v: u64) -> u64 {
        self.buckets
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_upper(*i) <= v)
            .map(|(_, c)| c)
            .sum()
    }

    /// The value at quantile `q` in `[0, 1]` (upper edge of its bucket, capped at the max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i).min(self.max);
            }
        }
        self.max
    }
}

/// Metrics of one operator subtask.
#[derive(Default)]
pub struct SubtaskMetrics {
    /// Rows received.
    pub records_in: AtomicU64,
    /// Rows emitted.
    pub records_out: AtomicU64,
    /// Batches received.
    pub batches_in: AtomicU64,
    /// Arrow bytes received (the rows' in-memory size, slices counted as sliced).
    pub bytes_in: AtomicU64,
    /// Arrow bytes emitted.
    pub bytes_out: AtomicU64,
    /// Messages waiting in this subtask's input channels (sampled on receive).
    pub input_queue: AtomicU64,
    /// Nanoseconds spent waiting for a full downstream channel (backpressure).
    pub backpressured_ns: AtomicU64,
    /// When the wait on a full channel going on now began (µs since the epoch; 0: none):
    /// readers count a long wait before it ends (see [`SubtaskMetrics::backpressured_now`]).
    pub backpressured_since_us: AtomicI64,
    /// When the busy stretch going on now began (µs since the epoch; 0: none).
    pub busy_since_us: AtomicI64,
    /// Nanoseconds spent handling input (rows and watermarks), the task's chained
    /// operators and any wait on full output channels included: busy minus
    /// backpressured is the time the task itself worked (sources: from a chunk read to
    /// its rows handed on). Set on a task's first operator.
    pub busy_ns: AtomicU64,
    /// Current watermark (ms), `i64::MIN` before the first.
    pub watermark: AtomicI64,
    /// Records sent to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Sources that know it (Kafka): records behind the end of their splits; -1 unknown.
    pub source_lag: AtomicI64,
    /// Rows that arrived after their windows closed (beyond allowed lateness).
    pub late_records: AtomicU64,
    /// End-to-end latency in µs (sinks only): sink time minus ingest time.
    pub latency_us: Histogram,
    /// The operator will emit nothing more, whatever comes (a full `LIMIT`).
    pub exhausted: std::sync::atomic::AtomicBool,
    /// Sources whose partitions a consumer group assigns (Kafka): partitions the group
    /// took from this subtask.
    pub partitions_revoked: AtomicU64,
    /// … and how long (ms) the last one waited, read up to where it stopped, until its
    /// offsets were committed and it was let go (a cluster instance's hand-over pause).
    pub last_handover_ms: AtomicU64,
    /// A source subtask: its splits' own watermarks, as of at most half a second ago.
    pub splits: std::sync::Mutex<Vec<SplitState>>,
}

/// One split of a source subtask, as the per-split view shows it.
#[derive(Clone, Debug)]
pub struct SplitState {
    /// Its index among the source's splits.
    pub split: usize,
    /// Its name, when the connector gives one (Kafka: `topic-partition`).
    pub name: Option<String>,
    /// Its own watermark (epoch ms): its largest event time minus the out-of-orderness.
    pub watermark_ms: Option<i64>,
    /// Idle: no rows for longer than the idle timeout (it no longer holds event time).
    pub idle: bool,
    /// Milliseconds since its last rows.
    pub last_rows_ms_ago: u64,
}

/// A stretch of busy or blocked time being counted: shown to readers as it goes (its
/// start in `since`), added to `total` when it ends (dropped).
pub struct Stretch<'a> {
    total: &'a AtomicU64,
    since: &'a AtomicI64,
    start: std::time::Instant,
}

impl<'a> Stretch<'a> {
    /// Starts counting into `total`.
    pub fn start(total: &'a AtomicU64, since: &'a AtomicI64) -> Self {
        since.store((sluice_types::now_micros() as i64).max(1), Relaxed);
        Stretch {
            total,
            since,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for Stretch<'_> {
    fn drop(&mut self) {
        // Cleared first: a reader in between misses the stretch for a moment rather
        // than counting it twice.
        self.since.store(0, Relaxed);
        self.total
            .fetch_add(self.start.elapsed().as_nanos() as u64, Relaxed);
    }
}

/// `total` with the stretch in progress since `since` (µs, 0: none) counted up to `now_us`.
fn with_ongoing(total: &AtomicU64, since: &AtomicI64, now_us: i64) -> u64 {
    let t = total.load(Relaxed);
    match since.load(Relaxed) {
        0 => t,
        s => t + (now_us.saturating_sub(s).max(0) as u64) * 1000,
    }
}

impl SubtaskMetrics {
    /// A busy stretch: counted while it lasts, added when dropped.
    pub fn busy(&self) -> Stretch<'_> {
        Stretch::start(&self.busy_ns, &self.busy_since_us)
    }

    /// A wait on a full output channel.
    pub fn backpressured(&self) -> Stretch<'_> {
        Stretch::start(&self.backpressured_ns, &self.backpressured_since_us)
    }

    /// Busy nanoseconds so far, the stretch going on counted up to `now_us`.
    pub fn busy_now(&self, now_us: i64) -> u64 {
        with_ongoing(&self.busy_ns, &self.busy_since_us, now_us)
    }

    /// Backpressured nanoseconds so far, the wait going on counted up to `now_us`.
    pub fn backpressured_now(&self, now_us: i64) -> u64 {
        with_ongoing(&self.backpressured_ns, &self.backpressured_since_us, now_us)
    }

    /// Fresh metrics.
    pub fn new() -> Arc<Self> {
        let m = Self::default();
        m.watermark.store(i64::MIN, Relaxed);
        m.source_lag.store(-1, Relaxed);
        Arc::new(m)
    }
}

/// Metrics of one operator: one entry per subtask.
pub struct OperatorMetrics {
    /// Plan node id.
    pub node_id: usize,
    /// Operator name.
    pub name: String,
    /// Whether it is a source.
    pub is_source: bool,
    /// Whether it is a sink (and so records end-to-end latency).
    pub is_sink: bool,
    /// Per subtask.
    pub subtasks: Vec<Arc<SubtaskMetrics>>,
}

impl OperatorMetrics {
    /// Sum of a counter over subtasks.
    pub fn sum(&self, f: impl Fn(&SubtaskMetrics) -> &AtomicU64) -> u64 {
        self.subtasks.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Merged latency histogram over subtasks.
    pub fn latency(&self) -> HistogramSnapshot {
        let mut h = HistogramSnapshot::default();
        for s in &self.subtasks {
            h.merge(&s.latency_us.snapshot());
        }
        h
    }
}

/// All metrics of a job.
pub struct JobMetrics {
    /// Per operator, indexed by plan node id.
    pub operators: Vec<OperatorMetrics>,
    /// Checkpoint counters and history.
    pub checkpoints: Arc<CheckpointStats>,
    /// What the job's tasks hold on the heap, and its limit.
    pub memory: Arc<crate::memory::JobMemory>,
}

impl JobMetrics {
    /// Rows read by all sources.
    pub fn source_records(&self) -> u64 {
        self.operators
            .iter()
            .filter(|o| o.is_source)
            .map(|o| o.sum(|s| &s.records_out))
            .sum()
    }

    /// Whether some operator will emit nothing more in any subtask (a full `LIMIT`,
    /// counting the rows it passed before a restore).
    pub fn exhausted(&self) -> bool {
        self.operators
            .iter()
            .any(|o| !o.subtasks.is_empty() && o.subtasks.iter().all(|s| s.exhausted.load(Relaxed)))
    }

    /// Rows received by all sinks.
    pub fn sink_records(&self) -> u64 {
        self.operators
            .iter()
            .filter(|o| o.is_sink)
            .map(|o| o.sum(|s| &s.records_in))
            .sum()
    }

    /// End-to-end latency over all sinks.
    pub fn sink_latency(&self) -> HistogramSnapshot {
        let mut h = HistogramSnapshot::default();
        for o in self.operators.iter().filter(|o| o.is_sink) {
            h.merge(&o.latency());
        }
        h
    }

    /// Rows that arrived after their windows closed.
    pub fn late_records(&self) -> u64 {
        self.operators
            .iter()
            .map(|o| o.sum(|s| &s.late_records))
            .sum()
    }

    /// Records sent to dead-letter output.
    pub fn dead_letters(&self) -> u64 {
        self.operators
            .iter()
            .map(|o| o.sum(|s| &s.dead_letters))
            .sum()
    }
}

/// The in-memory size of a batch's rows: what its columns' slices cover.
pub fn batch_bytes(batch: &sluice_types::Batch) -> u64 {
    use arrow::array::Array as _;
    batch
        .data
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}

/// How a checkpoint ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// In flight.
    InProgress,
    /// Complete.
    Completed,
    /// Aborted or failed, with the reason.
    Failed(String),
}

/// One checkpoint in the history.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointRecord {
    /// Checkpoint id.
    pub epoch: u64,
    /// `checkpoint`, `savepoint` or `final`.
    pub kind: String,
    /// Status.
    pub status: CheckpointStatus,
    /// When it was triggered (epoch ms).
    pub triggered_at_ms: i64,
    /// Trigger to completion (or failure).
    pub duration_ms: u64,
    /// Bytes of state written.
    pub state_bytes: u64,
    /// The longest barrier alignment of any task.
    pub alignment_ms: f64,
    /// Where it was written.
    pub location: String,
    /// The bytes of each subtask's state files (subtasks without keyed state left out).
    pub subtasks: Vec<SubtaskStateBytes>,
}

/// One subtask's share of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubtaskStateBytes {
    /// The operator (plan node id).
    pub node: usize,
    /// The subtask.
    pub subtask: usize,
    /// Bytes of its state files.
    pub bytes: u64,
}

/// Checkpoint statistics of a job: counters and the recent history.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Completed checkpoints and savepoints.
    pub completed: AtomicU64,
    /// Aborted or failed ones.
    pub failed: AtomicU64,
    /// Restore at start-up: reading and decoding the checkpoint (ms).
    pub restore_read_ms: AtomicU64,
    /// Restore at start-up: the slowest task handing state to its operators (ms).
    pub restore_tasks_ms: AtomicU64,
    /// What this attempt of the job restored, if anything.
    pub restored: std::sync::OnceLock<RestoredFrom>,
    history: Mutex<VecDeque<CheckpointRecord>>,
}

/// The checkpoint or savepoint a job started from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredFrom {
    /// Its checkpoint id.
    pub epoch: u64,
    /// `checkpoint`, `savepoint` or `final`.
    pub kind: String,
    /// Where it is.
    pub location: String,
    /// Where each source split resumes: (source, split, position as the connector
    /// records it, e.g. `{"offset":1234,"line":56}` or `"done"`).
    pub positions: Vec<(String, String, String)>,
}

/// Checkpoints kept in the history.
const HISTORY: usize = 64;

impl CheckpointStats {
    /// The most recent checkpoints, oldest first.
    pub fn history(&self) -> Vec<CheckpointRecord> {
        self.lock().iter().cloned().collect()
    }

    /// The latest completed checkpoint.
    pub fn latest_completed(&self) -> Option<CheckpointRecord> {
        self.lock()
            .iter()
            .rev()
            .find(|r| r.status == CheckpointStatus::Completed)
            .cloned()
    }

    /// Checkpoint `epoch`, if it completed and is still in the history.
    pub fn completed(&self, epoch: u64) -> Option<CheckpointRecord> {
        self.lock()
            .iter()
            .find(|r| r.epoch == epoch && r.status == CheckpointStatus::Completed)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<CheckpointRecord>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, r: CheckpointRecord) {
        let mut h = self.lock();
        if let Some(old) = h
            .iter_mut()
            .find(|o| o.epoch == r.epoch && o.kind == r.kind)
        {
            *old = r;
            return;
        }
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..200_000u64).chain([1 << 30, 1 << 40, u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket of {v} went backwards");
            last = b;
            let up = bucket_upper(b);
            assert!(up >= v, "upper {up} < {v}");
            assert!(up - v <= v / 16 + 1, "bucket too wide at {v}: {up}");
            assert!(b < BUCKETS);
        }
    }

    #[test]
    fn quantiles_of_uniform_values() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record_n(v, 1);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10_000);
        let p50 = s.quantile(0.5);
        let p99 = s.quantile(0.99);
        assert!((4_800..=5_200).contains(&p50), "p50 {p50}");
        assert!((9_700..=10_000).contains(&p99), "p99 {p99}");
        assert_eq!(s.quantile(1.0), 10_000);
    }
}
