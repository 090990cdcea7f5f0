//! The operator trait: one required method, defaulted hooks for everything else.
//!
//! ```text
//!            ┌──────────── runtime (per subtask) ────────────┐
//!  inputs ──>│ merge watermarks (min) · align barriers · EOD │──> outputs
//!            │        │ Data       │ Watermark    │ Barrier   │
//!            │  process_batch  on_watermark   snapshot      │
//!            │        └── Collector (next chained operator or channels)
//!            └───────────────────────────────────────────────┘
//! ```
//!
//! The runtime, not the operator, merges watermarks across inputs, aligns checkpoint
//! barriers and counts end-of-data; an operator only sees one merged stream of calls.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_plan::DeliveryGuarantee;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, TaskInfo, Watermark};

use crate::dead_letter::{DeadLetter, DeadLetterQueue};
use crate::metrics::SubtaskMetrics;
use crate::state::{OperatorState, RestoredState};

/// Where an operator's output goes: the next operator of its chain, or the channels to
/// downstream subtasks. Awaiting `collect` is how backpressure reaches the operator.
#[async_trait]
pub trait Collector: Send {
    /// Emits a batch downstream.
    async fn collect(&mut self, batch: Batch) -> Result<()>;

    /// Emits a batch on the named side output. Returns `false` when nothing consumes that
    /// output, so the operator can keep the rows another way (the dead-letter output).
    async fn collect_side(&mut self, _tag: &str, _batch: Batch) -> Result<bool> {
        Ok(false)
    }
}

/// A timer's domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeDomain {
    /// Fires when the watermark passes the time.
    EventTime,
    /// Fires when the wall clock passes the time.
    ProcessingTime,
}

/// An operator's timers, in event time and in processing time (epoch milliseconds).
/// The runtime fires event-time timers when the watermark reaches them and
/// processing-time timers when the wall clock does, each once, in time order.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timers {
    event_time: std::collections::BTreeSet<i64>,
    processing_time: std::collections::BTreeSet<i64>,
}

impl Timers {
    /// Registers a timer (registering the same time twice fires once).
    pub fn register(&mut self, domain: TimeDomain, time: i64) {
        self.set(domain).insert(time);
    }

    /// Removes a timer, if registered.
    pub fn delete(&mut self, domain: TimeDomain, time: i64) {
        self.set(domain).remove(&time);
    }

    /// The earliest pending timer of a domain.
    pub fn next(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event_time.first().copied(),
            TimeDomain::ProcessingTime => self.processing_time.first().copied(),
        }
    }

    /// Removes and returns the earliest timer at or before `time`.
    pub fn pop_due(&mut self, domain: TimeDomain, time: i64) -> Option<i64> {
        let set = self.set(domain);
        match set.first() {
            Some(&t) if t <= time => set.pop_first(),
            _ => None,
        }
    }

    /// Removes and returns every timer at or before `time`, earliest first.
    pub fn pop_all_due(&mut self, domain: TimeDomain, time: i64) -> Vec<i64> {
        let set = self.set(domain);
        let later = match time.checked_add(1) {
            Some(after) => set.split_off(&after),
            None => std::collections::BTreeSet::new(),
        };
        std::mem::replace(set, later).into_iter().collect()
    }

    /// Adds every timer of `other` (restoring timers of several old subtasks).
    pub fn merge(&mut self, other: &Timers) {
        self.event_time.extend(&other.event_time);
        self.processing_time.extend(&other.processing_time);
    }

    fn set(&mut self, domain: TimeDomain) -> &mut std::collections::BTreeSet<i64> {
        match domain {
            TimeDomain::EventTime => &mut self.event_time,
            TimeDomain::ProcessingTime => &mut self.processing_time,
        }
    }
}

/// What an operator can see of its surroundings.
pub struct OperatorContext {
    /// Which task this is.
    pub task: TaskInfo,
    /// The schema of the operator's input (for sources, of the rows they produce).
    pub input_schema: SchemaRef,
    /// The subtask's metrics.
    pub metrics: Arc<SubtaskMetrics>,
    /// The current (merged) input watermark.
    pub watermark: Option<Watermark>,
    /// The operator's timers.
    pub timers: Timers,
    /// Number of key groups (keyed state is partitioned by them).
    pub max_parallelism: usize,
    /// Whether the job takes checkpoints (sinks then commit per checkpoint).
    pub checkpointing: bool,
    /// The job's delivery guarantee.
    pub delivery: DeliveryGuarantee,
    /// Distinguishes this run of the job from earlier ones (after a restore), so that
    /// files written now never collide with files left by a failed run.
    pub attempt: u64,
    /// Set when this process is one instance of a job that several run together.
    pub cluster: Option<Arc<sluice_plan::ClusterConfig>>,
    /// The job's checkpoints: in [`Operator::commit`], the completed checkpoint's
    /// record (its state size among others) is there.
    pub checkpoints: Arc<crate::metrics::CheckpointStats>,
    dead_letters: Arc<dyn DeadLetterQueue>,
}

impl OperatorContext {
    /// In `on_timer` for event-time timer `first`: the watermark that made it due and
    /// every other event-time timer due at it (removed, earliest first, `first` leading),
    /// so that an operator can fire all that is due now in one go.
    pub fn take_due_event_timers(&mut self, first: i64) -> (i64, Vec<i64>) {
        let wm = self
            .watermark
            .and_then(|w| w.event_time())
            .map_or(first, |w| w.max(first));
        let mut due = vec![first];
        due.extend(self.timers.pop_all_due(TimeDomain::EventTime, wm));
        (wm, due)
    }

    /// Context for one subtask.
    pub fn new(
        task: TaskInfo,
        input_schema: SchemaRef,
        metrics: Arc<SubtaskMetrics>,
        dead_letters: Arc<dyn DeadLetterQueue>,
    ) -> Self {
        Self {
            task,
            input_schema,
            metrics,
            watermark: None,
            timers: Timers::default(),
            max_parallelism: 128,
            checkpointing: false,
            delivery: DeliveryGuarantee::default(),
            attempt: 0,
            cluster: None,
            checkpoints: Arc::default(),
            dead_letters,
        }
    }

    /// Sends a record that could not be processed to the job's dead-letter output,
    /// with its position and the error, and counts it. Nothing is silently dropped.
    pub fn dead_letter(&self, record: DeadLetter) {
        self.metrics
            .dead_letters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dead_letters.send(&self.task, record);
    }
}

/// A dataflow operator. Only [`Operator::process_batch`] is required; the defaulted hooks
/// are where windows (watermarks, timers), checkpoints (snapshot) and two-phase-commit
/// sinks (commit) plug in.
#[async_trait]
pub trait Operator: Send {
    /// The schema of the batches this operator emits (event-time column last).
    fn output_schema(&self) -> SchemaRef;

    /// Called once before the first message.
    async fn on_start(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Processes one batch of rows, emitting any output to `out`.
    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()>;

    /// Processes one batch that arrived on input `input` (the node's input edges in plan
    /// order). Operators with one input need not implement it.
    async fn process_batch_from(
        &mut self,
        input: usize,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let _ = input;
        self.process_batch(batch, ctx, out).await
    }

    /// The merged input watermark advanced. Fire what is due, then return the
    /// watermark to forward downstream (`None` holds it back).
    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        Ok(Some(watermark))
    }

    /// A timer registered by this operator fired.
    async fn on_timer(
        &mut self,
        _domain: TimeDomain,
        _time: i64,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// A checkpoint barrier was aligned on all inputs (or, at the end of input, the
    /// final state is asked for): return the operator's state. Keyed state goes into
    /// tables partitioned by key group so it can be redistributed on restore. For sinks
    /// this is the pre-commit of a two-phase commit: flush, and return what
    /// [`Operator::commit`] will publish.
    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        _ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        Ok(OperatorState::default())
    }

    /// Before the first message of a restored job: the state of the key groups this
    /// subtask owns, and every old subtask's operator-wide state.
    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        Err(SluiceError::user(format!(
            "the checkpoint holds state for `{}`, which keeps none: the job changed",
            ctx.task.operator_name
        )))
    }

    /// The checkpoint `epoch` completed everywhere: commit what was pre-committed.
    async fn commit(&mut self, _epoch: u64, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// All inputs ended (after the final +∞ watermark): flush everything and release
    /// resources. Output emitted here is the operator's last.
    async fn on_close(
        &mut self,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        Ok(())
    }
}

/// A collector that keeps what it is given: for tests and for operators that buffer.
#[derive(Default)]
pub struct VecCollector {
    /// Collected batches, in order.
    pub batches: Vec<Batch>,
    /// Side-output batches with their tags, in order.
    pub side: Vec<(String, Batch)>,
}

#[async_trait]
impl Collector for VecCollector {
    async fn collect(&mut self, batch: Batch) -> Result<()> {
        self.batches.push(batch);
        Ok(())
    }

    async fn collect_side(&mut self, tag: &str, batch: Batch) -> Result<bool> {
        self.side.push((tag.to_string(), batch));
        Ok(true)
    }
}

impl OperatorContext {
    /// A context for testing one operator alone.
    pub fn for_test(input_schema: SchemaRef) -> Self {
        Self::new(
            TaskInfo::for_test("test"),
            input_schema,
            SubtaskMetrics::new(),
            Arc::new(crate::dead_letter::LogDeadLetters),
        )
    }
}
