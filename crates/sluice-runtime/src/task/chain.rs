//! A chain of operators fused into one task, and where its output goes.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use sluice_types::{Batch, CheckpointBarrier, Message, Result, Watermark, now_micros};

use crate::checkpoint::SubtaskSnapshot;
use crate::metrics::SubtaskMetrics;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain, Timers};
use crate::partition::Outputs;
use crate::state::RestoredState;

/// One operator of a chain, with its context.
pub(crate) struct Slot {
    pub op: Box<dyn Operator>,
    pub ctx: OperatorContext,
    pub is_sink: bool,
}

/// Output of chain element i: feeds element i+1, or the channels after the last.
pub(crate) struct ChainOut<'a> {
    pub(crate) rest: &'a mut [Slot],
    pub(crate) out: &'a mut Outputs,
    pub(crate) emitter: &'a SubtaskMetrics,
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
        // A sink chained after other operators counts its own time as its busy time
        // (the task's head counts the whole chain's): a slow sink shows as itself.
        let sink = match self.rest.first() {
            Some(next) if next.is_sink => Some(Arc::clone(&next.ctx.metrics)),
            _ => None,
        };
        let busy = sink.as_ref().map(|m| m.busy());
        let r = push_batch_from(self.rest, self.out, 0, batch, Some(bytes)).await;
        drop(busy);
        r
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
pub(crate) async fn push_batch_from(
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
    pub(crate) async fn process_measured(&mut self, batch: Batch, bytes: u64) -> Result<()> {
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
