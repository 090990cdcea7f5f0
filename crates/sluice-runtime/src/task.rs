//! Subtask loops. A task runs a chain of operators (stateless operators on forward
//! edges are fused, no channel between them) fed either by a source reader or by the
//! channels from upstream subtasks.
//!
//! ```text
//!  operator task:  inputs ─poll round-robin─> merge ─> chain[0] ─> chain[1] ─> … ─> Outputs
//!     Data        -> chain.process_batch
//!     Watermark   -> per-input watermark; min over live inputs; forward if it advanced
//!     Barrier     -> block that input until every live input delivered it (alignment),
//!                    then snapshot each chained operator and forward the barrier
//!     EndOfData   -> input ends (counts as watermark +∞); when all ended:
//!                    final watermark, close chain (flush), forward EndOfData, exit
//! ```

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use sluice_types::{
    Batch, CheckpointBarrier, IngestTime, Message, Result, SluiceError, Watermark, now_micros,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::checkpoint::SubtaskSnapshot;
use crate::checkpoint::runner::{Notice, TaskEvent};
use crate::metrics::SubtaskMetrics;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain, Timers};
use crate::partition::Outputs;
use crate::source::{ReadResult, SourceReader};
use crate::state::RestoredState;

/// One operator of a chain, with its context.
pub(crate) struct Slot {
    pub op: Box<dyn Operator>,
    pub ctx: OperatorContext,
    pub is_sink: bool,
}

/// Output of chain element i: feeds element i+1, or the channels after the last.
struct ChainOut<'a> {
    rest: &'a mut [Slot],
    out: &'a mut Outputs,
    emitter: &'a SubtaskMetrics,
}

#[async_trait]
impl Collector for ChainOut<'_> {
    async fn collect(&mut self, batch: Batch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.emitter
            .records_out
            .fetch_add(batch.num_rows() as u64, Relaxed);
        // Measured once: the next chained operator's bytes in are these bytes out.
        let bytes = crate::metrics::batch_bytes(&batch);
        self.emitter.bytes_out.fetch_add(bytes, Relaxed);
        push_batch_from(self.rest, self.out, 0, batch, Some(bytes)).await
    }

    async fn collect_side(&mut self, tag: &str, batch: Batch) -> Result<bool> {
        // Only a chain's last operator can have side edges (they end a chain).
        if !self.rest.is_empty() {
            return Ok(false);
        }
        self.out.send_side(tag, batch).await
    }
}

/// Pushes a batch that arrived on input `input` of the chain's head; `bytes` is its
/// size when the caller measured it already.
async fn push_batch_from(
    slots: &mut [Slot],
    out: &mut Outputs,
    input: usize,
    batch: Batch,
    bytes: Option<u64>,
) -> Result<()> {
    let Some((head, rest)) = slots.split_first_mut() else {
        return out.send_batch(batch).await;
    };
    let rows = batch.num_rows() as u64;
    let ingest = batch.ingest;
    let metrics = Arc::clone(&head.ctx.metrics);
    metrics.records_in.fetch_add(rows, Relaxed);
    metrics.batches_in.fetch_add(1, Relaxed);
    let bytes = bytes.unwrap_or_else(|| crate::metrics::batch_bytes(&batch));
    metrics.bytes_in.fetch_add(bytes, Relaxed);
    let mut c = ChainOut {
        rest,
        out,
        emitter: &metrics,
    };
    head.op
        .process_batch_from(input, batch, &mut head.ctx, &mut c)
        .await
        .map_err(|e| e.in_operator(&head.ctx.task.operator_name))?;
    if head.is_sink {
        let now = now_micros();
        metrics
            .latency_us
            .record_n(now.saturating_sub(ingest.min_us), rows);
    }
    Ok(())
}

/// A chain of operators and where its output goes.
pub(crate) struct Chain {
    pub slots: Vec<Slot>,
    pub out: Outputs,
}

impl Chain {
    pub async fn start(&mut self) -> Result<()> {
        for s in &mut self.slots {
            let name = s.ctx.task.operator_name.clone();
            s.op.on_start(&mut s.ctx)
                .await
                .map_err(|e| e.in_operator(&name))?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub async fn process(&mut self, batch: Batch) -> Result<()> {
        push_batch_from(&mut self.slots, &mut self.out, 0, batch, None).await
    }

    /// A source's batch, already measured (`bytes`) as the source's output.
    async fn process_measured(&mut self, batch: Batch, bytes: u64) -> Result<()> {
        push_batch_from(&mut self.slots, &mut self.out, 0, batch, Some(bytes)).await
    }

    /// A batch from input `input` of the chain's head.
    pub async fn process_from(&mut self, input: usize, batch: Batch) -> Result<()> {
        push_batch_from(&mut self.slots, &mut self.out, input, batch, None).await
    }

    pub async fn watermark(&mut self, mut wm: Watermark) -> Result<()> {
        for i in 0..self.slots.len() {
            let (head, rest) = self.slots[i..]
                .split_first_mut()
                .expect("invariant: i < len");
            head.ctx.watermark = Some(wm);
            let metrics = Arc::clone(&head.ctx.metrics);
            if let Some(t) = wm.event_time() {
                metrics.watermark.store(t, Relaxed);
            }
            let mut c = ChainOut {
                rest,
                out: &mut self.out,
                emitter: &metrics,
            };
            if let Some(t) = wm.event_time() {
                while let Some(due) = head.ctx.timers.pop_due(TimeDomain::EventTime, t) {
                    head.op
                        .on_timer(TimeDomain::EventTime, due, &mut head.ctx, &mut c)
                        .await
                        .map_err(|e| e.in_operator(&head.ctx.task.operator_name))?;
                }
            }
            match head
                .op
                .on_watermark(wm, &mut head.ctx, &mut c)
                .await
                .map_err(|e| e.in_operator(&head.ctx.task.operator_name))?
            {
                Some(w) => wm = w,
                None => return Ok(()),
            }
        }
        self.out.broadcast(Message::Watermark(wm)).await
    }

    /// The earliest processing-time timer of any chained operator (epoch ms).
    pub fn next_processing_timer(&self) -> Option<i64> {
        self.slots
            .iter()
            .filter_map(|s| s.ctx.timers.next(TimeDomain::ProcessingTime))
            .min()
    }

    /// Fires every processing-time timer due at `now_ms`, operator by operator.
    pub async fn fire_processing_timers(&mut self, now_ms: i64) -> Result<()> {
        for i in 0..self.slots.len() {
            let (head, rest) = self.slots[i..]
                .split_first_mut()
                .expect("invariant: i < len");
            let metrics = Arc::clone(&head.ctx.metrics);
            let mut c = ChainOut {
                rest,
                out: &mut self.out,
                emitter: &metrics,
            };
            while let Some(due) = head.ctx.timers.pop_due(TimeDomain::ProcessingTime, now_ms) {
                head.op
                    .on_timer(TimeDomain::ProcessingTime, due, &mut head.ctx, &mut c)
                    .await
                    .map_err(|e| e.in_operator(&head.ctx.task.operator_name))?;
            }
        }
        Ok(())
    }

    /// Snapshots every chained operator (state and timers).
    pub async fn snapshot(&mut self, barrier: &CheckpointBarrier) -> Result<Vec<SubtaskSnapshot>> {
        let mut out = Vec::with_capacity(self.slots.len());
        for s in &mut self.slots {
            let state =
                s.op.snapshot(barrier, &mut s.ctx)
                    .await
                    .map_err(|e| e.in_operator(&s.ctx.task.operator_name))?;
            out.push(SubtaskSnapshot {
                node: s.ctx.task.operator_id,
                subtask: s.ctx.task.subtask,
                state,
                timers: s.ctx.timers.clone(),
                positions: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Snapshots every chained operator, then forwards the barrier.
    pub async fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<Vec<SubtaskSnapshot>> {
        let snapshots = self.snapshot(&barrier).await?;
        self.out.broadcast(Message::Barrier(barrier)).await?;
        Ok(snapshots)
    }

    /// Checkpoint `epoch` completed: every operator commits.
    pub async fn commit(&mut self, epoch: u64) -> Result<()> {
        for s in &mut self.slots {
            s.op.commit(epoch, &mut s.ctx)
                .await
                .map_err(|e| e.in_operator(&s.ctx.task.operator_name))?;
        }
        Ok(())
    }

    /// Gives each operator its restored state (`states[i]` for slot i), before start.
    pub async fn restore(&mut self, states: Vec<Option<(RestoredState, Timers)>>) -> Result<()> {
        for (s, restored) in self.slots.iter_mut().zip(states) {
            let Some((state, timers)) = restored else {
                continue;
            };
            s.ctx.timers.merge(&timers);
            s.op.restore(state, &mut s.ctx)
                .await
                .map_err(|e| e.in_operator(&s.ctx.task.operator_name))?;
        }
        Ok(())
    }

    /// Final watermark (if not yet sent), flush every operator in order, end of data.
    pub async fn finish(&mut self, last_watermark: Option<Watermark>) -> Result<()> {
        if last_watermark != Some(Watermark::MAX) {
            self.watermark(Watermark::MAX).await?;
        }
        for i in 0..self.slots.len() {
            let (head, rest) = self.slots[i..]
                .split_first_mut()
                .expect("invariant: i < len");
            let metrics = Arc::clone(&head.ctx.metrics);
            let mut c = ChainOut {
                rest,
                out: &mut self.out,
                emitter: &metrics,
            };
            head.op
                .on_close(&mut head.ctx, &mut c)
                .await
                .map_err(|e| e.in_operator(&head.ctx.task.operator_name))?;
        }
        self.out.broadcast(Message::EndOfData).await
    }
}

/// The inputs of an operator task: one channel per upstream subtask.
pub(crate) struct Inputs {
    receivers: Vec<mpsc::Receiver<Message>>,
    /// Which input edge of the head operator each receiver belongs to.
    input_of: Vec<usize>,
    watermarks: Vec<Option<Watermark>>,
    /// Largest event-time watermark each input reached (kept while it is idle).
    last_time: Vec<Option<i64>>,
    ended: Vec<bool>,
    blocked: Vec<bool>,
    /// Inputs that delivered the pending barrier.
    seen: Vec<bool>,
    /// Block inputs that delivered the barrier until all did (exactly-once).
    align: bool,
    pending_barrier: Option<CheckpointBarrier>,
    barrier_since: Option<Instant>,
    next: usize,
    live: usize,
    merged: Option<Watermark>,
    /// The largest event time forwarded.
    emitted_time: i64,
    /// Inputs whose upstream sent a stop-with-savepoint barrier (they may close early).
    stopping: Vec<bool>,
    /// An upstream task went away without ending its stream: it failed or was cancelled.
    upstream_gone: bool,
}

impl Inputs {
    #[cfg(test)]
    pub fn new(receivers: Vec<mpsc::Receiver<Message>>, align: bool) -> Self {
        let n = receivers.len();
        Self::with_inputs(receivers, vec![0; n], align)
    }

    /// Receivers with the input edge each belongs to.
    pub fn with_inputs(
        receivers: Vec<mpsc::Receiver<Message>>,
        input_of: Vec<usize>,
        align: bool,
    ) -> Self {
        let n = receivers.len();
        Self {
            receivers,
            input_of,
            watermarks: vec![None; n],
            last_time: vec![None; n],
            ended: vec![false; n],
            blocked: vec![false; n],
            seen: vec![false; n],
            align,
            pending_barrier: None,
            barrier_since: None,
            next: 0,
            live: n,
            merged: None,
            emitted_time: i64::MIN,
            stopping: vec![false; n],
            upstream_gone: false,
        }
    }

    /// The next message from any live, unblocked input; `None` once all inputs ended,
    /// or once an upstream task went away without ending its stream (`upstream_gone`):
    /// its input did not end, so nothing may be flushed as if it had.
    async fn next(&mut self) -> Option<(usize, Message)> {
        if self.live == 0 || self.upstream_gone {
            return None;
        }
        poll_fn(|cx| {
            let n = self.receivers.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.ended[i] || self.blocked[i] {
                    continue;
                }
                match self.receivers[i].poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Some((i, m)));
                    }
                    // Closed after a stop-with-savepoint barrier: that input is done.
                    Poll::Ready(None) if self.stopping[i] => {
                        return Poll::Ready(Some((i, Message::EndOfData)));
                    }
                    // The sender went away without EndOfData: its task failed or was
                    // cancelled; the job reports that task's error. Treating it as the
                    // end of the input would fire windows with part of their rows.
                    Poll::Ready(None) => {
                        self.upstream_gone = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    fn queued(&self) -> u64 {
        self.receivers.iter().map(|r| r.len() as u64).sum()
    }

    /// Records a watermark from input `i`.
    fn set_watermark(&mut self, i: usize, w: Watermark) {
        if let Watermark::EventTime(t) = w {
            self.last_time[i] = Some(self.last_time[i].map_or(t, |old: i64| old.max(t)));
        }
        self.watermarks[i] = Some(w);
    }

    /// The next merged watermark to forward, if any; call until `None`.
    ///
    /// The minimum over live, active inputs; ended inputs count as +∞; idle inputs do not
    /// hold it back. When every live input is idle, event time first advances to the
    /// largest watermark any of them reached (as Flink's watermark valve does), then the
    /// merged stream is idle. Event time never moves backwards.
    fn merge(&mut self) -> Option<Watermark> {
        let candidate = if self.live == 0 {
            Watermark::MAX
        } else {
            let mut min: Option<i64> = None;
            let mut max_idle: Option<i64> = None;
            for i in 0..self.watermarks.len() {
                if self.ended[i] {
                    continue;
                }
                match self.watermarks[i] {
                    None => return None,
                    Some(Watermark::Idle) => max_idle = max_idle.max(self.last_time[i]),
                    Some(Watermark::EventTime(t)) => min = Some(min.map_or(t, |m: i64| m.min(t))),
                }
            }
            match (min, max_idle) {
                (Some(t), _) => Watermark::EventTime(t),
                (None, Some(t)) if t > self.emitted_time => Watermark::EventTime(t),
                (None, _) => Watermark::Idle,
            }
        };
        let out = match candidate {
            Watermark::EventTime(t) if t > self.emitted_time => {
                self.emitted_time = t;
                Some(candidate)
            }
            // Active again after idleness, without new event time: say so.
            Watermark::EventTime(_) if self.merged == Some(Watermark::Idle) => {
                Some(Watermark::EventTime(self.emitted_time))
            }
            Watermark::EventTime(_) => None,
            Watermark::Idle => (self.merged != Some(Watermark::Idle)).then_some(Watermark::Idle),
        };
        if out.is_some() {
            self.merged = out;
        }
        out
    }

    fn end(&mut self, i: usize) {
        if !self.ended[i] {
            self.ended[i] = true;
            self.blocked[i] = false;
            self.seen[i] = false;
            self.live -= 1;
        }
    }

    /// Records a barrier on input i; returns it (with the time alignment took) once every
    /// live input delivered it. Aligned (exactly-once): an input that delivered the
    /// barrier is not read until then. Unaligned (at-least-once): it goes on.
    fn barrier(
        &mut self,
        i: usize,
        b: CheckpointBarrier,
    ) -> Option<(CheckpointBarrier, std::time::Duration)> {
        self.stopping[i] |= b.then_stop;
        match self.pending_barrier {
            // A barrier of a checkpoint already superseded (given up): ignore it.
            Some(p) if p.epoch > b.epoch => return None,
            Some(p) if p.epoch < b.epoch => self.release_barrier(),
            _ => {}
        }
        if self.pending_barrier.is_none() {
            self.barrier_since = Some(Instant::now());
        }
        self.seen[i] = true;
        self.blocked[i] = self.align;
        self.pending_barrier = Some(b);
        self.aligned()
    }

    fn aligned(&mut self) -> Option<(CheckpointBarrier, std::time::Duration)> {
        let b = self.pending_barrier?;
        let all = (0..self.seen.len()).all(|i| self.ended[i] || self.seen[i]);
        if !all {
            return None;
        }
        let took = self.barrier_since.map(|t| t.elapsed()).unwrap_or_default();
        self.release_barrier();
        Some((b, took))
    }

    /// Forgets the pending barrier and unblocks every input.
    fn release_barrier(&mut self) {
        self.blocked.iter_mut().for_each(|x| *x = false);
        self.seen.iter_mut().for_each(|x| *x = false);
        self.pending_barrier = None;
        self.barrier_since = None;
    }

    /// Checkpoint `epoch` was given up: stop waiting for its barrier.
    fn abort_barrier(&mut self, epoch: u64) {
        if self.pending_barrier.is_some_and(|p| p.epoch <= epoch) {
            self.release_barrier();
        }
    }
}

/// A task's part in checkpoints: where it sends acknowledgements, where it hears of
/// completed checkpoints.
pub(crate) struct TaskCheckpoints {
    /// The task's number in the coordinator's count.
    pub task: usize,
    pub events: mpsc::UnboundedSender<TaskEvent>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

/// The epoch of the final snapshot taken when the input ended.
pub(crate) const FINAL_EPOCH: u64 = u64::MAX;

impl TaskCheckpoints {
    /// The next notice; never resolves once the coordinator is gone.
    async fn next(&mut self) -> Notice {
        match self.notices.recv().await {
            Some(n) => n,
            None => std::future::pending().await,
        }
    }

    fn send(&self, event: TaskEvent) {
        // The coordinator outlives every task of a running job; if it is gone the job is
        // being torn down anyway.
        let _ = self.events.send(event);
    }

    /// Waits until `epoch` completes (committing every checkpoint that completes
    /// meanwhile) or is given up; `true` if it completed.
    async fn wait_for(&mut self, epoch: u64, chain: &mut Chain) -> Result<bool> {
        loop {
            match self.next().await {
                Notice::Committed(e) => {
                    chain.commit(e).await?;
                    if e == epoch {
                        return Ok(true);
                    }
                }
                Notice::Aborted(e) if e == epoch => return Ok(false),
                Notice::Aborted(_) => {}
            }
        }
    }
}

/// Waits for the next notice if the task takes part in checkpoints; otherwise never.
async fn next_notice(cp: &mut Option<TaskCheckpoints>) -> Notice {
    match cp {
        Some(cp) => cp.next().await,
        None => std::future::pending().await,
    }
}

/// The input ended and the chain flushed: hand over the final state (sink
/// committables) and commit once the coordinator recorded it.
async fn finish_checkpoints(
    cp: Option<TaskCheckpoints>,
    chain: &mut Chain,
    mut snapshots: Vec<SubtaskSnapshot>,
) -> Result<()> {
    let Some(mut cp) = cp else {
        return Ok(());
    };
    let barrier = CheckpointBarrier {
        epoch: FINAL_EPOCH,
        triggered_at_us: now_micros(),
        kind: sluice_types::CheckpointKind::Checkpoint,
        then_stop: false,
    };
    snapshots.extend(chain.snapshot(&barrier).await?);
    cp.send(TaskEvent::Finished {
        task: cp.task,
        snapshots,
    });
    if !cp.wait_for(FINAL_EPOCH, chain).await? {
        return Err(SluiceError::external(
            "the final checkpoint could not be written; output since the last checkpoint is not committed",
        ));
    }
    Ok(())
}

/// Runs an operator task until all inputs end (or a stop-with-savepoint completes).
pub(crate) async fn run_operator_task(
    mut chain: Chain,
    mut inputs: Inputs,
    mut cp: Option<TaskCheckpoints>,
) -> Result<()> {
    chain.start().await?;
    let metrics = Arc::clone(&chain.slots[0].ctx.metrics);
    loop {
        let timer = chain.next_processing_timer();
        let next = tokio::select! {
            biased;
            notice = next_notice(&mut cp) => {
                match notice {
                    Notice::Committed(e) => chain.commit(e).await?,
                    Notice::Aborted(e) => inputs.abort_barrier(e),
                }
                continue;
            }
            _ = sleep_until_epoch_ms(timer.unwrap_or(i64::MAX)), if timer.is_some() => {
                chain.fire_processing_timers(epoch_ms()).await?;
                continue;
            }
            next = inputs.next() => next,
        };
        let Some((i, msg)) = next else { break };
        let started = Instant::now();
        let aligned = match msg {
            Message::Data(batch) => {
                metrics.input_queue.store(inputs.queued(), Relaxed);
                chain.process_from(inputs.input_of[i], batch).await?;
                metrics
                    .busy_ns
                    .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                None
            }
            Message::Watermark(w) => {
                inputs.set_watermark(i, w);
                while let Some(m) = inputs.merge() {
                    chain.watermark(m).await?;
                }
                metrics
                    .busy_ns
                    .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
                None
            }
            Message::Barrier(b) => inputs.barrier(i, b),
            Message::EndOfData => {
                inputs.end(i);
                let aligned = inputs.aligned();
                while inputs.live > 0
                    && let Some(m) = inputs.merge()
                {
                    chain.watermark(m).await?;
                }
                aligned
            }
        };
        if let Some((b, took)) = aligned {
            let snapshots = chain.barrier(b).await?;
            if let Some(cp) = cp.as_mut() {
                cp.send(TaskEvent::Ack {
                    epoch: b.epoch,
                    task: cp.task,
                    snapshots,
                    alignment_us: took.as_micros() as u64,
                });
                if b.then_stop && cp.wait_for(b.epoch, &mut chain).await? {
                    // Stopped with a savepoint: end here, without firing what is open.
                    return Ok(());
                }
            }
        }
    }
    if inputs.upstream_gone {
        return Err(SluiceError::internal(crate::partition::UPSTREAM_GONE));
    }
    let last = inputs.merged;
    chain.finish(last).await?;
    finish_checkpoints(cp, &mut chain, Vec::new()).await
}

/// Wall-clock time in epoch milliseconds (the processing-time domain).
fn epoch_ms() -> i64 {
    (now_micros() / 1000) as i64
}

/// Sleeps until the wall clock reaches `ms` (epoch milliseconds).
async fn sleep_until_epoch_ms(ms: i64) {
    let wait = ms.saturating_sub(epoch_ms()).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}

/// Control messages for a source task, from the job (and later the checkpoint coordinator).
#[derive(Debug)]
pub enum SourceControl {
    /// Inject this barrier into the stream.
    Barrier(CheckpointBarrier),
    /// Stop reading and end the stream gracefully: final watermark, flush, end of data.
    Stop,
}

/// How a source derives `_timestamp` from what its reader returns.
#[derive(Clone)]
pub(crate) enum EventTimeColumn {
    /// Column index in the reader's rows.
    Column(usize),
    /// An expression over the reader's rows (a computed column).
    Expr(Arc<dyn datafusion_physical_expr::PhysicalExpr>),
    /// Wall-clock time of ingestion.
    Ingestion,
    /// Wall-clock time of ingestion, and watermarks that follow the wall clock.
    ProcessingTime,
}

/// How often a processing-time source advances its watermark without rows.
const PROCESSING_TIME_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Everything a source task needs.
pub(crate) struct SourceTask {
    pub reader: Box<dyn SourceReader>,
    pub ctx: OperatorContext,
    pub event_time: EventTimeColumn,
    pub out_of_orderness_ms: i64,
    pub idle_timeout: Option<std::time::Duration>,
    pub max_rows: usize,
    pub linger: std::time::Duration,
    pub control: mpsc::Receiver<SourceControl>,
    /// The watermark reached before a restore: event time resumes from there.
    pub restored_watermark: Option<i64>,
    pub checkpoints: Option<TaskCheckpoints>,
}

impl SourceTask {
    /// The source's own state: where its splits stand and its watermark.
    fn snapshot(&self, clocks: &SplitClocks, positions: bool) -> Result<SubtaskSnapshot> {
        let positions = match positions {
            true => self
                .reader
                .positions()
                .map_err(|e| e.in_operator(&self.ctx.task.operator_name))?,
            false => Vec::new(),
        };
        let meta = match clocks.emitted {
            i64::MIN => serde_json::Value::Null,
            w => serde_json::json!({ "watermark": w }),
        };
        Ok(SubtaskSnapshot {
            node: self.ctx.task.operator_id,
            subtask: self.ctx.task.subtask,
            state: crate::state::OperatorState {
                keyed: Default::default(),
                meta,
            },
            timers: Timers::default(),
            positions,
        })
    }
}

/// Per-split event-time clocks of one source subtask. A split counts from its first
/// batch (an empty batch announces it) until it ends, as lazily assigned splits do in
/// Flink; a split without rows for the idle timeout does not hold back event time until
/// it has rows again.
pub(crate) struct SplitClocks {
    splits: std::collections::BTreeMap<usize, SplitClock>,
    bound: i64,
    idle_timeout: Option<std::time::Duration>,
    /// The largest event-time watermark emitted: the watermark never moves back.
    emitted: i64,
}

struct SplitClock {
    max_ts: i64,
    last_rows: Instant,
}

impl SplitClocks {
    pub(crate) fn new(bound: i64, idle_timeout: Option<std::time::Duration>) -> Self {
        Self {
            splits: Default::default(),
            bound,
            idle_timeout,
            emitted: i64::MIN,
        }
    }

    /// Rows of `split` arrived, the largest event time among them `max_ts`.
    pub(crate) fn observe(&mut self, split: usize, max_ts: Option<i64>, now: Instant) {
        let c = self.splits.entry(split).or_insert(SplitClock {
            max_ts: i64::MIN,
            last_rows: now,
        });
        c.last_rows = now;
        if let Some(t) = max_ts {
            c.max_ts = c.max_ts.max(t);
        }
    }

    /// `split` has no more rows.
    pub(crate) fn end(&mut self, split: usize) {
        self.splits.remove(&split);
    }

    fn idle(&self, c: &SplitClock, now: Instant) -> bool {
        self.idle_timeout.is_some_and(|t| c.last_rows + t <= now)
    }

    /// When the next active split turns idle (the watermark may then advance).
    pub(crate) fn next_idle_at(&self, now: Instant) -> Option<Instant> {
        let t = self.idle_timeout?;
        self.splits
            .values()
            .filter(|c| !self.idle(c, now))
            .map(|c| c.last_rows + t)
            .min()
    }

    /// The subtask's watermark now: the minimum over active splits (never below what was
    /// emitted), `Idle` when every split it reads is idle, `None` while nothing is known.
    pub(crate) fn watermark(&mut self, now: Instant) -> Option<Watermark> {
        let mut min: Option<i64> = None;
        let mut any_idle = false;
        for c in self.splits.values() {
            if self.idle(c, now) {
                any_idle = true;
            } else {
                min = Some(min.map_or(c.max_ts, |m| m.min(c.max_ts)));
            }
        }
        match min {
            Some(i64::MIN) => None,
            Some(m) => {
                self.emitted = self.emitted.max(m.saturating_sub(self.bound));
                Some(Watermark::EventTime(self.emitted))
            }
            None if any_idle => Some(Watermark::Idle),
            None => None,
        }
    }
}

struct Pending {
    batches: Vec<RecordBatch>,
    rows: usize,
    first_us: u64,
    last_us: u64,
    since: Option<Instant>,
}

/// Runs a source task: adaptive batching (`max_rows` or `linger`), event time,
/// watermarks (bounded out-of-orderness), barrier injection, and a clean end.
pub(crate) async fn run_source_task(mut src: SourceTask, mut chain: Chain) -> Result<()> {
    chain.start().await?;
    let name = src.ctx.task.operator_name.clone();
    src.reader
        .open(&mut src.ctx)
        .await
        .map_err(|e| e.in_operator(&name))?;
    let mut pending = Pending {
        batches: Vec::new(),
        rows: 0,
        first_us: 0,
        last_us: 0,
        since: None,
    };
    let mut clocks = SplitClocks::new(src.out_of_orderness_ms, src.idle_timeout);
    if let Some(w) = src.restored_watermark {
        clocks.emitted = w;
    }
    let mut cp = src.checkpoints.take();
    let mut last_wm: Option<Watermark> = None;
    let started = Instant::now();
    // Positions recorded at barriers, until their checkpoint completes.
    let mut recorded: std::collections::BTreeMap<u64, Vec<crate::checkpoint::SplitPosition>> =
        Default::default();
    loop {
        // A generator's read never waits, so without this the task would never give its
        // thread back: control messages (checkpoint barriers) would wait for the end of
        // input, and other tasks on the thread would starve. Yields once tokio's
        // cooperative budget is spent.
        tokio::task::consume_budget().await;
        let deadline = pending.since.map(|t| t + src.linger);
        let want = src.max_rows - pending.rows;
        // A split turning idle may let the watermark advance; a subtask that never had
        // rows is idle after the timeout.
        let processing_time = matches!(src.event_time, EventTimeColumn::ProcessingTime);
        let tick = processing_time.then(|| {
            let ms = PROCESSING_TIME_TICK.as_millis() as i64;
            (epoch_ms() / ms + 1) * ms
        });
        let idle_at = match (src.idle_timeout, last_wm) {
            _ if processing_time => None,
            (Some(_), Some(Watermark::Idle)) => None,
            (Some(t), None) if clocks.splits.is_empty() => Some(started + t),
            _ if pending.rows > 0 => None,
            _ => clocks.next_idle_at(Instant::now()),
        };
        let timer = chain.next_processing_timer();
        tokio::select! {
            biased;
            _ = sleep_until_epoch_ms(timer.unwrap_or(i64::MAX)), if timer.is_some() => {
                chain.fire_processing_timers(epoch_ms()).await?;
            }
            notice = next_notice(&mut cp) => {
                if let Notice::Committed(e) = notice {
                    chain.commit(e).await?;
                    // Positions of this checkpoint go to the reader; older ones are moot.
                    let positions = recorded.remove(&e);
                    recorded.retain(|&k, _| k > e);
                    if let Some(p) = positions {
                        src.reader.checkpoint_complete(&p).map_err(|err| err.in_operator(&name))?;
                    }
                }
            }
            ctrl = src.control.recv() => match ctrl {
                Some(SourceControl::Barrier(b)) => {
                    flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                    let own = src.snapshot(&clocks, cp.is_some())?;
                    if cp.is_some() {
                        recorded.insert(b.epoch, own.positions.clone());
                    }
                    let mut snapshots = vec![own];
                    snapshots.extend(chain.barrier(b).await?);
                    if let Some(cp) = cp.as_mut() {
                        cp.send(TaskEvent::Ack { epoch: b.epoch, task: cp.task, snapshots, alignment_us: 0 });
                        if b.then_stop && cp.wait_for(b.epoch, &mut chain).await? {
                            // Stopped with a savepoint: nothing after the barrier is read.
                            src.reader.close(&mut src.ctx).await.map_err(|e| e.in_operator(&name))?;
                            return Ok(());
                        }
                    }
                }
                Some(SourceControl::Stop) | None => break,
            },
            _ = sleep_until_epoch_ms(tick.unwrap_or(i64::MAX)), if tick.is_some() => {
                // The wall clock moved: rows read so far go out, then the watermark.
                flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
            }
            _ = sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                if clocks.splits.is_empty() {
                    last_wm = Some(Watermark::Idle);
                    src.ctx.metrics.watermark.store(i64::MIN, Relaxed);
                    chain.watermark(Watermark::Idle).await?;
                } else {
                    emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
                }
            }
            r = src.reader.read(want, &mut src.ctx) => {
                match r.map_err(|e| e.in_operator(&name))? {
                    ReadResult::Batch { split, rows: b } => {
                        let now = now_micros();
                        // An empty batch announces a split: it holds back event time from
                        // now on, until it has rows, idles or ends.
                        let t = match b.num_rows() {
                            0 => None,
                            _ => max_event_time(&src, &b, now)?,
                        };
                        clocks.observe(split, t, Instant::now());
                        if pending.since.is_none() {
                            pending.since = Some(Instant::now());
                            pending.first_us = now;
                        }
                        pending.last_us = now;
                        pending.rows += b.num_rows();
                        if b.num_rows() > 0 {
                            pending.batches.push(b);
                        }
                        if pending.rows >= src.max_rows {
                            flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        }
                    }
                    ReadResult::Idle => {
                        flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        if last_wm != Some(Watermark::Idle) && last_wm.is_some() {
                            last_wm = Some(Watermark::Idle);
                            chain.watermark(Watermark::Idle).await?;
                        }
                    }
                    ReadResult::SplitEnd(split) => {
                        // Rows read so far go out before the split stops holding back.
                        flush(&mut src, &mut chain, &mut pending, &mut clocks, &mut last_wm).await?;
                        clocks.end(split);
                        emit_watermark(&mut src, &mut chain, &mut clocks, &mut last_wm).await?;
                    }
                    ReadResult::End => break,
                }
            }
        }
    }
    flush(
        &mut src,
        &mut chain,
        &mut pending,
        &mut clocks,
        &mut last_wm,
    )
    .await?;
    let own = src.snapshot(&clocks, cp.is_some())?;
    let positions = own.positions.clone();
    let checkpointing = cp.is_some();
    chain.finish(last_wm).await?;
    finish_checkpoints(cp, &mut chain, vec![own]).await?;
    if checkpointing {
        src.reader
            .checkpoint_complete(&positions)
            .map_err(|e| e.in_operator(&name))?;
    }
    src.reader
        .close(&mut src.ctx)
        .await
        .map_err(|e| e.in_operator(&name))
}

async fn flush(
    src: &mut SourceTask,
    chain: &mut Chain,
    pending: &mut Pending,
    clocks: &mut SplitClocks,
    last_wm: &mut Option<Watermark>,
) -> Result<()> {
    if pending.batches.is_empty() {
        pending.since = None;
        pending.rows = 0;
        return Ok(());
    }
    let rows = if pending.batches.len() == 1 {
        pending.batches.pop().expect("invariant: one batch")
    } else {
        let schema = pending.batches[0].schema();
        let b = concat_batches(&schema, &pending.batches)?;
        pending.batches.clear();
        b
    };
    let ingest = IngestTime {
        min_us: pending.first_us,
        max_us: pending.last_us,
    };
    pending.rows = 0;
    pending.since = None;
    let Some(batch) = with_event_time(src, &rows, ingest)? else {
        return Ok(());
    };
    let n = batch.num_rows() as u64;
    src.ctx.metrics.records_out.fetch_add(n, Relaxed);
    let bytes = crate::metrics::batch_bytes(&batch);
    src.ctx.metrics.bytes_out.fetch_add(bytes, Relaxed);
    let started = Instant::now();
    chain.process_measured(batch, bytes).await?;
    let r = emit_watermark(src, chain, clocks, last_wm).await;
    src.ctx
        .metrics
        .busy_ns
        .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
    r
}

/// Emits the subtask's watermark if it advanced (or the subtask turned idle or active).
async fn emit_watermark(
    src: &mut SourceTask,
    chain: &mut Chain,
    clocks: &mut SplitClocks,
    last_wm: &mut Option<Watermark>,
) -> Result<()> {
    let wm = if matches!(src.event_time, EventTimeColumn::ProcessingTime) {
        // Rows already sent carry read times up to now; later rows come later.
        clocks.emitted = clocks.emitted.max(epoch_ms() - 1);
        Watermark::EventTime(clocks.emitted)
    } else {
        match clocks.watermark(Instant::now()) {
            Some(wm) => wm,
            None => return Ok(()),
        }
    };
    let changed = match (*last_wm, wm) {
        (Some(Watermark::EventTime(old)), Watermark::EventTime(new)) => new > old,
        (Some(Watermark::Idle), Watermark::Idle) => false,
        (None, Watermark::Idle) => false,
        _ => true,
    };
    if changed {
        *last_wm = Some(wm);
        src.ctx
            .metrics
            .watermark
            .store(wm.event_time().unwrap_or(i64::MIN), Relaxed);
        chain.watermark(wm).await?;
    }
    Ok(())
}

/// The largest event time among `rows` (nulls ignored; ingestion time: now).
fn max_event_time(src: &SourceTask, rows: &RecordBatch, now_us: u64) -> Result<Option<i64>> {
    match &src.event_time {
        EventTimeColumn::Ingestion | EventTimeColumn::ProcessingTime => {
            Ok(Some((now_us / 1000) as i64))
        }
        EventTimeColumn::Column(_) | EventTimeColumn::Expr(_) => {
            let col = event_time_values(&src.event_time, rows)?;
            let ms = match col.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, None) => col,
                _ => cast(&col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
            };
            let ms = ms
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(|| SluiceError::internal("event time is not Timestamp(ms)"))?;
            Ok(arrow::compute::max(ms))
        }
    }
}

/// The event-time column (or computed value) of a reader's rows, before conversion.
fn event_time_values(et: &EventTimeColumn, rows: &RecordBatch) -> Result<arrow::array::ArrayRef> {
    match et {
        EventTimeColumn::Column(i) => Ok(std::sync::Arc::clone(rows.column(*i))),
        EventTimeColumn::Expr(e) => e
            .evaluate(rows)
            .and_then(|v| v.into_array(rows.num_rows()))
            .map_err(|e| SluiceError::user("computing the event time failed").with_source(e)),
        EventTimeColumn::Ingestion | EventTimeColumn::ProcessingTime => {
            Err(SluiceError::internal("no event-time column"))
        }
    }
}

/// Appends `_timestamp`; rows whose event time is null go to the dead-letter output.
fn with_event_time(
    src: &SourceTask,
    rows: &RecordBatch,
    ingest: IngestTime,
) -> Result<Option<Batch>> {
    let n = rows.num_rows();
    let ts: TimestampMillisecondArray = match &src.event_time {
        EventTimeColumn::Ingestion | EventTimeColumn::ProcessingTime => {
            TimestampMillisecondArray::from_value((ingest.max_us / 1000) as i64, n)
        }
        et @ (EventTimeColumn::Column(_) | EventTimeColumn::Expr(_)) => {
            let col = event_time_values(et, rows)?;
            let ms = match col.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, None) => col,
                DataType::Timestamp(_, _) | DataType::Int64 | DataType::Date64 => {
                    cast(&col, &DataType::Timestamp(TimeUnit::Millisecond, None))?
                }
                other => {
                    return Err(SluiceError::internal(format!(
                        "event-time column has type {other}, checked at planning"
                    )));
                }
            };
            let ms = ms
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("invariant: cast to Timestamp(ms)")
                .clone();
            if ms.null_count() > 0 {
                return dead_letter_null_times(src, rows, &ms, ingest);
            }
            ms
        }
    };
    Ok(Some(Batch::from_user_columns(rows, ts, ingest)?))
}

fn dead_letter_null_times(
    src: &SourceTask,
    rows: &RecordBatch,
    ts: &TimestampMillisecondArray,
    ingest: IngestTime,
) -> Result<Option<Batch>> {
    let valid = arrow::compute::is_not_null(ts)?;
    let invalid = arrow::compute::not(&valid)?;
    let bad = arrow::compute::filter_record_batch(rows, &invalid)?;
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&bad)?;
        w.finish()?;
    }
    for line in String::from_utf8_lossy(&buf).lines() {
        src.ctx.dead_letter(crate::dead_letter::DeadLetter {
            position: src.ctx.task.operator_name.clone(),
            error: "event-time column is null".into(),
            raw: line.to_string(),
        });
    }
    let good = arrow::compute::filter_record_batch(rows, &valid)?;
    if good.num_rows() == 0 {
        return Ok(None);
    }
    let good_ts = arrow::compute::filter(ts, &valid)?;
    let good_ts = good_ts
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("invariant: filter keeps the type")
        .clone();
    Ok(Some(Batch::from_user_columns(&good, good_ts, ingest)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> Inputs {
        let rx = (0..n).map(|_| mpsc::channel(1).1).collect();
        Inputs::new(rx, true)
    }

    fn drain(i: &mut Inputs) -> Vec<Watermark> {
        std::iter::from_fn(|| i.merge()).collect()
    }

    #[test]
    fn minimum_over_inputs_and_never_backwards() {
        let mut i = inputs(2);
        i.set_watermark(0, Watermark::EventTime(10));
        assert_eq!(drain(&mut i), [], "input 1 has said nothing yet");
        i.set_watermark(1, Watermark::EventTime(5));
        assert_eq!(drain(&mut i), [Watermark::EventTime(5)]);
        i.set_watermark(1, Watermark::EventTime(20));
        assert_eq!(drain(&mut i), [Watermark::EventTime(10)]);
        i.set_watermark(0, Watermark::EventTime(8));
        assert_eq!(drain(&mut i), [], "never backwards");
    }

    #[test]
    fn idle_inputs_are_skipped_and_all_idle_releases_the_largest_time() {
        let mut i = inputs(2);
        i.set_watermark(0, Watermark::EventTime(5_000));
        // Input 0 goes idle before input 1 says anything: nothing is known yet.
        i.set_watermark(0, Watermark::Idle);
        assert_eq!(drain(&mut i), []);
        // Input 1 idle too: event time advances to what input 0 reached, then idle.
        i.set_watermark(1, Watermark::Idle);
        assert_eq!(
            drain(&mut i),
            [Watermark::EventTime(5_000), Watermark::Idle]
        );
        // Input 1 active again, behind: active at the event time already reached.
        i.set_watermark(1, Watermark::EventTime(3_000));
        assert_eq!(drain(&mut i), [Watermark::EventTime(5_000)]);
        i.set_watermark(1, Watermark::EventTime(7_000));
        assert_eq!(drain(&mut i), [Watermark::EventTime(7_000)]);
    }

    /// Registers an event-time timer 10 ms after each batch's last row and a
    /// processing-time timer at 1000 ms; records what fires.
    struct TimerOperator {
        schema: arrow::datatypes::SchemaRef,
        fired: Arc<std::sync::Mutex<Vec<(TimeDomain, i64)>>>,
    }

    #[async_trait]
    impl Operator for TimerOperator {
        fn output_schema(&self) -> arrow::datatypes::SchemaRef {
            Arc::clone(&self.schema)
        }

        async fn process_batch(
            &mut self,
            b: Batch,
            ctx: &mut OperatorContext,
            _: &mut dyn Collector,
        ) -> Result<()> {
            let t = b.max_timestamp().unwrap();
            ctx.timers.register(TimeDomain::EventTime, t + 10);
            ctx.timers.register(TimeDomain::ProcessingTime, 1_000);
            Ok(())
        }

        async fn on_timer(
            &mut self,
            domain: TimeDomain,
            time: i64,
            _ctx: &mut OperatorContext,
            _out: &mut dyn Collector,
        ) -> Result<()> {
            self.fired.lock().unwrap().push((domain, time));
            Ok(())
        }
    }

    #[tokio::test]
    async fn timers_fire_once_in_time_order() {
        let b = sluice_testkit::batch_from_pretty(
            "
            | v:Int64 | _timestamp:Ts |
            | 1       | 100           |",
        );
        let b2 = sluice_testkit::batch_from_pretty(
            "
            | v:Int64 | _timestamp:Ts |
            | 1       | 90            |",
        );
        let fired = Arc::new(std::sync::Mutex::new(Vec::new()));
        let schema = b.data.schema();
        let mut chain = Chain {
            slots: vec![Slot {
                op: Box::new(TimerOperator {
                    schema: Arc::clone(&schema),
                    fired: Arc::clone(&fired),
                }),
                ctx: OperatorContext::for_test(schema),
                is_sink: true,
            }],
            out: Outputs::new(Vec::new(), crate::metrics::SubtaskMetrics::new()),
        };
        chain.process(b).await.unwrap();
        chain.process(b2).await.unwrap();
        chain.watermark(Watermark::EventTime(105)).await.unwrap();
        assert_eq!(*fired.lock().unwrap(), [(TimeDomain::EventTime, 100)]);
        chain.watermark(Watermark::EventTime(200)).await.unwrap();
        assert_eq!(chain.next_processing_timer(), Some(1_000));
        chain.fire_processing_timers(999).await.unwrap();
        chain.fire_processing_timers(5_000).await.unwrap();
        chain.fire_processing_timers(6_000).await.unwrap();
        assert_eq!(
            *fired.lock().unwrap(),
            [
                (TimeDomain::EventTime, 100),
                (TimeDomain::EventTime, 110),
                (TimeDomain::ProcessingTime, 1_000)
            ],
            "each timer fires once; the same time registered twice fires once"
        );
        assert_eq!(chain.next_processing_timer(), None);
    }

    #[test]
    fn ended_inputs_count_as_the_end_of_time() {
        let mut i = inputs(2);
        i.set_watermark(0, Watermark::EventTime(1));
        i.set_watermark(1, Watermark::EventTime(2));
        assert_eq!(drain(&mut i), [Watermark::EventTime(1)]);
        i.end(0);
        assert_eq!(drain(&mut i), [Watermark::EventTime(2)]);
        i.end(1);
        assert_eq!(drain(&mut i), [Watermark::MAX]);
    }
}

#[cfg(test)]
mod split_clock_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn minimum_over_splits_never_backwards_ended_splits_release() {
        let now = Instant::now();
        let mut c = SplitClocks::new(10, None);
        assert_eq!(c.watermark(now), None, "nothing read yet");
        c.observe(0, Some(1_000), now);
        c.observe(1, Some(300), now);
        assert_eq!(c.watermark(now), Some(Watermark::EventTime(290)));
        // A split seen later, behind the others: holds back, but never moves backwards.
        c.observe(2, Some(100), now);
        assert_eq!(c.watermark(now), Some(Watermark::EventTime(290)));
        c.end(1);
        c.end(2);
        assert_eq!(c.watermark(now), Some(Watermark::EventTime(990)));
    }

    #[test]
    fn an_idle_split_stops_holding_back_until_it_has_rows_again() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(100);
        let mut c = SplitClocks::new(0, Some(timeout));
        c.observe(0, Some(5_000), t0);
        c.observe(1, Some(1_000), t0);
        let later = t0 + Duration::from_millis(60);
        c.observe(0, Some(6_000), later);
        assert_eq!(c.watermark(later), Some(Watermark::EventTime(1_000)));
        assert_eq!(
            c.next_idle_at(later),
            Some(t0 + timeout),
            "split 1 turns idle first"
        );
        let after = t0 + Duration::from_millis(120);
        assert_eq!(c.watermark(after), Some(Watermark::EventTime(6_000)));
        let all_idle = t0 + Duration::from_millis(200);
        assert_eq!(c.watermark(all_idle), Some(Watermark::Idle));
        c.observe(1, Some(2_000), all_idle);
        assert_eq!(
            c.watermark(all_idle),
            Some(Watermark::EventTime(6_000)),
            "active again, never backwards"
        );
    }
}
