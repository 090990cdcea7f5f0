//! The loop of an operator task, and its part in checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use sluice_types::{CheckpointBarrier, Message, Result, SluiceError, now_micros};
use tokio::sync::mpsc;

use crate::checkpoint::{FINAL_EPOCH, Notice, SubtaskSnapshot, TaskEvent};

use super::*;

/// A task's part in checkpoints: where it sends acknowledgements, where it hears of
/// completed checkpoints.
pub(crate) struct TaskCheckpoints {
    /// The task's number in the coordinator's count.
    pub task: usize,
    pub events: mpsc::UnboundedSender<TaskEvent>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

impl TaskCheckpoints {
    /// The next notice; never resolves once the coordinator is gone.
    pub(crate) async fn next(&mut self) -> Notice {
        match self.notices.recv().await {
            Some(n) => n,
            None => std::future::pending().await,
        }
    }

    pub(crate) fn send(&self, event: TaskEvent) {
        // The coordinator outlives every task of a running job; if it is gone the job is
        // being torn down anyway.
        let _ = self.events.send(event);
    }

    /// Waits until `epoch` completes (committing every checkpoint that completes
    /// meanwhile) or is given up; `true` if it completed.
    pub(crate) async fn wait_for(&mut self, epoch: u64, chain: &mut Chain) -> Result<bool> {
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
pub(crate) async fn next_notice(cp: &mut Option<TaskCheckpoints>) -> Notice {
    match cp {
        Some(cp) => cp.next().await,
        None => std::future::pending().await,
    }
}

/// The input ended and the chain flushed: hand over the final state (sink
/// committables) and commit once the coordinator recorded it.
pub(crate) async fn finish_checkpoints(
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
        let aligned = match msg {
            Message::Data(batch) => {
                metrics.input_queue.store(inputs.queued(), Relaxed);
                let _busy = metrics.busy();
                chain.process_from(inputs.input_of[i], batch).await?;
                None
            }
            Message::Watermark(w) => {
                inputs.set_watermark(i, w);
                let _busy = metrics.busy();
                while let Some(m) = inputs.merge() {
                    chain.watermark(m).await?;
                }
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
