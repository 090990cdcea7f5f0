//! A job's recent history: one sample a second, the last 15 minutes of them (a bounded
//! ring), taken from its metrics' counters by differences. The job page draws its charts
//! from it, `/api/jobs/{id}/history` serves it, the per-subtask view reads its latest
//! figures, and the diagnosis ranks causes from it.
//!
//! ```text
//!  counters (cumulative, per subtask) --every 1 s--> differences / elapsed
//!     -> Sample { rates, latency of the rows of the second, lags, checkpoint, per operator busy/backpressure }
//!     -> ring of 900
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde::Serialize;
use sluice_runtime::metrics::{HistogramSnapshot, JobMetrics, OperatorMetrics, SubtaskMetrics};
use utoipa::ToSchema;

/// Samples kept: 15 minutes at one a second.
pub(crate) const KEPT: usize = 900;

/// How often the server samples its running jobs.
pub(crate) const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One second of a job.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct Sample {
    /// When it was taken, epoch ms.
    pub(crate) time_ms: i64,
    /// Rows read by the sources per second.
    pub(crate) input_per_s: f64,
    /// Rows written by the sinks per second.
    pub(crate) output_per_s: f64,
    /// End-to-end latency of the rows the sinks wrote in this second, ms.
    pub(crate) latency_p50_ms: Option<f64>,
    pub(crate) latency_p99_ms: Option<f64>,
    /// How far the sinks' watermark is behind the wall clock, ms.
    pub(crate) event_time_lag_ms: Option<i64>,
    /// Kafka records behind the end of the sources' partitions.
    pub(crate) source_lag: Option<i64>,
    /// The latest completed checkpoint's duration (ms) and size (bytes).
    pub(crate) checkpoint_ms: Option<u64>,
    pub(crate) checkpoint_bytes: Option<u64>,
    /// Bytes the job's tasks hold on the heap (0 when the process does not measure).
    pub(crate) memory_bytes: u64,
    /// Late rows and dead letters so far, all operators.
    pub(crate) late_records: u64,
    pub(crate) dead_letters: u64,
    /// Rows read by the sources so far.
    pub(crate) input_records: u64,
    /// Per operator, in the job's order.
    pub(crate) operators: Vec<OperatorSample>,
}

/// One operator's second.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct OperatorSample {
    /// The operator's id (its node in the plan).
    pub(crate) id: usize,
    /// Share of the second its subtasks spent handling input, their mean (0 to 1; the
    /// first operator of a task carries its task's).
    pub(crate) busy: f64,
    /// Share of the second its subtasks were blocked on full output channels (0 to 1).
    pub(crate) backpressure: f64,
    /// Rows in per second, all subtasks.
    pub(crate) in_per_s: f64,
}

/// One subtask at the latest sample: the per-subtask drill-down.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub(crate) struct SubtaskSample {
    /// Its index.
    pub(crate) subtask: usize,
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    pub(crate) in_per_s: f64,
    pub(crate) out_per_s: f64,
    /// Share of the last second spent handling input (0 to 1).
    pub(crate) busy: f64,
    /// Share of the last second blocked on full output channels (0 to 1).
    pub(crate) backpressure: f64,
    /// Its watermark, epoch ms (none yet, or the end of input).
    pub(crate) watermark_ms: Option<i64>,
    /// Rows waiting at its inputs.
    pub(crate) input_queue: u64,
    /// A Kafka source subtask: records behind the end of its partitions.
    pub(crate) source_lag: Option<i64>,
    pub(crate) dead_letters: u64,
    pub(crate) late_records: u64,
    /// A sink subtask: its p99 end-to-end latency so far, ms.
    pub(crate) latency_p99_ms: Option<f64>,
    /// Bytes of its state in the latest completed checkpoint (none: no checkpoint yet,
    /// or no keyed state).
    pub(crate) state_bytes: Option<u64>,
    /// A source subtask: each split it has read from (partition, file range), with its
    /// own watermark; the subtask's watermark is the lowest of the active ones.
    pub(crate) splits: Vec<SplitSample>,
}

/// One split of a source subtask.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub(crate) struct SplitSample {
    /// Its index among the source's splits.
    pub(crate) split: usize,
    /// Its name (Kafka: `topic-partition`; a file: its path, or `path@offset` for a range).
    pub(crate) name: Option<String>,
    /// Its own watermark, epoch ms.
    pub(crate) watermark_ms: Option<i64>,
    /// No rows for longer than the idle timeout: it no longer holds event time back.
    pub(crate) idle: bool,
    /// Milliseconds since its last rows (as of the last half second).
    pub(crate) last_rows_ms_ago: u64,
}

impl SubtaskSample {
    /// Subtask `i` of `o` as its counters stand (no rates: they need two samples), its
    /// state's size from `checkpoint`.
    fn of(
        i: usize,
        s: &SubtaskMetrics,
        o: &OperatorMetrics,
        checkpoint: Option<&sluice_runtime::checkpoint::CheckpointRecord>,
    ) -> Self {
        let sink = o.is_sink;
        let lag = s.source_lag.load(Relaxed);
        let lat = s.latency_us.snapshot();
        SubtaskSample {
            subtask: i,
            records_in: s.records_in.load(Relaxed),
            records_out: s.records_out.load(Relaxed),
            watermark_ms: watermark(s.watermark.load(Relaxed)),
            input_queue: s.input_queue.load(Relaxed),
            source_lag: (lag >= 0).then_some(lag),
            dead_letters: s.dead_letters.load(Relaxed),
            late_records: s.late_records.load(Relaxed),
            latency_p99_ms: (sink && lat.count > 0).then(|| lat.quantile(0.99) as f64 / 1000.0),
            state_bytes: checkpoint.and_then(|c| {
                c.subtasks
                    .iter()
                    .find(|b| b.node == o.node_id && b.subtask == i)
                    .map(|b| b.bytes)
            }),
            splits: s
                .splits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|x| SplitSample {
                    split: x.split,
                    name: x.name.clone(),
                    watermark_ms: x.watermark_ms,
                    idle: x.idle,
                    last_rows_ms_ago: x.last_rows_ms_ago,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// An operator's subtasks as their counters stand, before any sample.
    pub(crate) fn now(o: &OperatorMetrics, m: &JobMetrics) -> Vec<Self> {
        let checkpoint = m.checkpoints.latest_completed();
        o.subtasks
            .iter()
            .enumerate()
            .map(|(i, s)| Self::of(i, s, o, checkpoint.as_ref()))
            .collect()
    }
}

/// Cumulative counters of one subtask at a sample.
#[derive(Clone, Copy, Default)]
struct Counts {
    records_in: u64,
    records_out: u64,
    busy_ns: u64,
    backpressured_ns: u64,
}

impl Counts {
    /// At `now_us`: a busy stretch or a wait going on is counted up to then (a batch
    /// that takes seconds shows as busy all along, not at its end).
    fn of(s: &SubtaskMetrics, now_us: i64) -> Self {
        Counts {
            records_in: s.records_in.load(Relaxed),
            records_out: s.records_out.load(Relaxed),
            busy_ns: s.busy_now(now_us),
            backpressured_ns: s.backpressured_now(now_us),
        }
    }
}

/// What the previous sample saw, to take differences from.
struct Previous {
    at: Instant,
    /// The attempt's metrics (a restart brings new ones, counting from zero).
    metrics: std::sync::Weak<JobMetrics>,
    counts: Vec<Vec<Counts>>,
    latency: HistogramSnapshot,
}

/// A job's samples.
#[derive(Default)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    previous: Option<Previous>,
    /// Per operator, its subtasks at the latest sample.
    subtasks: Vec<Vec<SubtaskSample>>,
}

/// A watermark as a time: none before the first and at the end of input.
fn watermark(w: i64) -> Option<i64> {
    (w != i64::MIN && w != i64::MAX).then_some(w)
}

impl History {
    /// Takes a sample of `m` (the running attempt's metrics) at `now_ms`.
    pub(crate) fn sample(&mut self, m: &Arc<JobMetrics>, now_ms: i64, now: Instant) {
        let counts: Vec<Vec<Counts>> = m
            .operators
            .iter()
            .map(|o| {
                o.subtasks
                    .iter()
                    .map(|s| Counts::of(s, now_ms * 1000))
                    .collect()
            })
            .collect();
        let latency = m.sink_latency();
        // Differences from the previous sample of the same attempt; a new attempt's
        // counters start at zero.
        let (before, since, elapsed) = match self.previous.take() {
            Some(p) if p.metrics.upgrade().is_some_and(|pm| Arc::ptr_eq(&pm, m)) => {
                (p.counts, p.latency, now.duration_since(p.at))
            }
            _ => (Vec::new(), HistogramSnapshot::default(), INTERVAL),
        };
        let secs = elapsed.as_secs_f64().max(1e-3);
        let share = |ns: u64| (ns as f64 / 1e9 / secs).clamp(0.0, 1.0);
        let mut operators = Vec::with_capacity(m.operators.len());
        let mut subtasks = Vec::with_capacity(m.operators.len());
        let (mut input, mut output) = (0.0, 0.0);
        let checkpoint = m.checkpoints.latest_completed();
        for (k, o) in m.operators.iter().enumerate() {
            let mut subs = Vec::with_capacity(o.subtasks.len());
            for (i, s) in o.subtasks.iter().enumerate() {
                let now_c = counts[k][i];
                let was = before
                    .get(k)
                    .and_then(|b| b.get(i))
                    .copied()
                    .unwrap_or_default();
                let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
                subs.push(SubtaskSample {
                    in_per_s: d(now_c.records_in, was.records_in) / secs,
                    out_per_s: d(now_c.records_out, was.records_out) / secs,
                    busy: share(now_c.busy_ns.saturating_sub(was.busy_ns)),
                    backpressure: share(
                        now_c.backpressured_ns.saturating_sub(was.backpressured_ns),
                    ),
                    ..SubtaskSample::of(i, s, o, checkpoint.as_ref())
                });
            }
            let n = subs.len().max(1) as f64;
            let in_per_s: f64 = subs.iter().map(|s| s.in_per_s).sum();
            if o.is_source {
                input += subs.iter().map(|s| s.out_per_s).sum::<f64>();
            }
            if o.is_sink {
                output += in_per_s;
            }
            operators.push(OperatorSample {
                id: o.node_id,
                busy: subs.iter().map(|s| s.busy).sum::<f64>() / n,
                backpressure: subs.iter().map(|s| s.backpressure).sum::<f64>() / n,
                in_per_s,
            });
            subtasks.push(subs);
        }
        let second = latency.since(&since);
        let sink_watermark = m
            .operators
            .iter()
            .filter(|o| o.is_sink)
            .flat_map(|o| o.subtasks.iter())
            .map(|s| s.watermark.load(Relaxed))
            .min()
            .and_then(watermark);
        let lags: Vec<i64> = subtasks
            .iter()
            .zip(&m.operators)
            .filter(|(_, o)| o.is_source)
            .flat_map(|(subs, _)| subs.iter().filter_map(|s| s.source_lag))
            .collect();
        self.push(Sample {
            time_ms: now_ms,
            input_per_s: input,
            output_per_s: output,
            latency_p50_ms: (second.count > 0).then(|| second.quantile(0.5) as f64 / 1000.0),
            latency_p99_ms: (second.count > 0).then(|| second.quantile(0.99) as f64 / 1000.0),
            event_time_lag_ms: sink_watermark.map(|w| (now_ms - w).max(0)),
            source_lag: (!lags.is_empty()).then(|| lags.iter().sum()),
            checkpoint_ms: checkpoint.as_ref().map(|c| c.duration_ms),
            checkpoint_bytes: checkpoint.as_ref().map(|c| c.state_bytes),
            memory_bytes: m.memory.used(),
            late_records: m.late_records(),
            dead_letters: m.dead_letters(),
            input_records: m.source_records(),
            operators,
        });
        self.subtasks = subtasks;
        self.previous = Some(Previous {
            at: now,
            metrics: Arc::downgrade(m),
            counts,
            latency,
        });
    }

    fn push(&mut self, s: Sample) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// When the latest sample was taken.
    pub(crate) fn latest_ms(&self) -> Option<i64> {
        self.samples.back().map(|s| s.time_ms)
    }

    /// The samples taken at or after `since_ms`, oldest first.
    pub(crate) fn since(&self, since_ms: i64) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.time_ms >= since_ms)
            .cloned()
            .collect()
    }

    /// The subtasks of operator `id` (its node id) at the latest sample.
    pub(crate) fn subtasks(&self, m: &JobMetrics, id: usize) -> Option<Vec<SubtaskSample>> {
        let k = m.operators.iter().position(|o| o.node_id == id)?;
        self.subtasks.get(k).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(parallelism: usize) -> Arc<JobMetrics> {
        let op = |id: usize, source: bool, sink: bool| sluice_runtime::metrics::OperatorMetrics {
            node_id: id,
            name: format!("op{id}"),
            is_source: source,
            is_sink: sink,
            subtasks: (0..parallelism).map(|_| SubtaskMetrics::new()).collect(),
        };
        Arc::new(JobMetrics {
            operators: vec![op(0, true, false), op(1, false, true)],
            checkpoints: Default::default(),
            memory: Arc::new(sluice_runtime::memory::JobMemory::open(None)),
        })
    }

    #[test]
    fn rates_and_shares_are_differences_over_the_elapsed_time() {
        let m = metrics(2);
        let mut h = History::default();
        let t0 = Instant::now();
        h.sample(&m, 1_000, t0);
        let src = &m.operators[0].subtasks;
        src[0].records_out.fetch_add(300, Relaxed);
        src[1].records_out.fetch_add(100, Relaxed);
        src[0].backpressured_ns.fetch_add(1_000_000_000, Relaxed);
        let sink = &m.operators[1].subtasks;
        sink[0].records_in.fetch_add(400, Relaxed);
        sink[0].busy_ns.fetch_add(500_000_000, Relaxed);
        sink[1].watermark.store(5_000, Relaxed);
        sink[0].watermark.store(7_000, Relaxed);
        h.sample(&m, 3_000, t0 + std::time::Duration::from_secs(2));
        let s = h.since(2_000);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.input_per_s, 200.0);
        assert_eq!(s.output_per_s, 200.0);
        // The sinks' lowest watermark (5 s) is ahead of this clock (3 s): no lag.
        assert_eq!(s.event_time_lag_ms, Some(0));
        // Half a second blocked of two, on one subtask of two.
        assert_eq!(s.operators[0].backpressure, 0.25);
        assert_eq!(s.operators[1].busy, 0.125);
        let subs = h.subtasks(&m, 0).unwrap();
        assert_eq!(subs[0].out_per_s, 150.0);
        assert_eq!(subs[1].out_per_s, 50.0);
        // A new attempt counts from zero: no negative rates.
        let again = metrics(2);
        h.sample(&again, 4_000, t0 + std::time::Duration::from_secs(3));
        assert_eq!(h.since(4_000)[0].input_per_s, 0.0);
    }

    #[test]
    fn a_long_batch_counts_as_busy_while_it_lasts() {
        let m = metrics(1);
        let mut h = History::default();
        let t0 = Instant::now();
        h.sample(&m, 10_000, t0);
        // A batch in the sink since 10.5 s, not done at 11 s.
        m.operators[1].subtasks[0]
            .busy_since_us
            .store(10_500_000, Relaxed);
        h.sample(&m, 11_000, t0 + std::time::Duration::from_secs(1));
        assert_eq!(h.since(11_000)[0].operators[1].busy, 0.5);
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes() {
        let m = metrics(1);
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..(KEPT as i64 + 10) {
            h.sample(&m, i * 1000, t0 + std::time::Duration::from_secs(i as u64));
        }
        let all = h.since(i64::MIN);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].time_ms, 10_000);
    }
}
