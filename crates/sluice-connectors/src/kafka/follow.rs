//! The reader's side of `'scan.partition-assignment' = 'group'`: what the group's
//! rebalances said, partitions started where they start, and (in a cluster instance)
//! revoked partitions let go once their offsets are committed.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::{ReadResult, Split};
use sluice_types::{Result, SluiceError};

use super::batch::PartitionQueue;
use super::group::{GroupEvent, Member, Partition, Start};
use super::kafka_err;
use super::reader::KafkaReader;
use super::source::{SourceConsumer, start_offsets};

/// A subtask's reading in group mode: which of the (shared) splits it reads now.
pub(crate) struct GroupRead {
    pub(crate) member: Arc<Member>,
    /// Per split: read by this subtask now.
    pub(crate) owned: Vec<bool>,
    /// Assigned, not started yet (paused): the split, and whether it is claimed (to start
    /// from the startup mode) or waits for another subtask to let go of it.
    pub(crate) waiting: Vec<(usize, bool)>,
    /// Revoked, no longer read, held until the transaction that carries their offsets
    /// is committed (see [`Member::defer_revoke`]).
    pub(crate) revoking: Vec<usize>,
    /// When the group revoked what `revoking` holds.
    pub(crate) revoked_at: Option<Instant>,
    /// The subtask's metrics: partitions revoked, the last hand-over's pause.
    pub(crate) metrics: Arc<sluice_runtime::metrics::SubtaskMetrics>,
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        // The consumer closes after this: it gives its partitions up at once (closing,
        // it waits for that), including any whose revocation was waiting for a commit
        // that will not come.
        let (Some(g), Some(c)) = (&self.group_read, &self.consumer) else {
            return;
        };
        g.member
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let pending = g
            .member
            .pending_unassign
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((stop, _)) = pending {
            let _ = c.incremental_unassign(&stop);
        }
    }
}

impl KafkaReader {
    /// The local split of `p`, added when the group assigns a partition the job did not
    /// know at start.
    fn local_split(&mut self, p: &Partition) -> usize {
        if let Some(i) = self.parts.iter().position(|q| q == p) {
            return i;
        }
        let index = self.config.shared.split_of(&self.config.partitions, p);
        self.splits
            .push(Split::new(format!("{}/{}", p.0, p.1), index));
        self.parts.push(p.clone());
        self.next.push(0);
        self.ended.push(false);
        if let Some(g) = self.group_read.as_mut() {
            g.owned.push(false);
        }
        self.parts.len() - 1
    }

    /// Takes in what the group's rebalances said, and starts the partitions that were
    /// waiting once they can start.
    pub(crate) async fn follow_group(&mut self, consumer: &Arc<SourceConsumer>) -> Result<()> {
        self.apply_group_events()?;
        self.finish_revocation(consumer)?;
        self.start_waiting(consumer).await
    }

    /// Lets revoked partitions go once the transaction that carries their last offsets
    /// is committed: whoever reads them next starts there.
    fn finish_revocation(&mut self, consumer: &SourceConsumer) -> Result<()> {
        let (Some(g), Some(link)) = (self.group_read.as_mut(), &self.link) else {
            return Ok(());
        };
        let mut pending = g
            .member
            .pending_unassign
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some((_, passed)) = pending.as_ref() else {
            return Ok(());
        };
        if link.committed_through() <= *passed {
            return Ok(());
        }
        let (stop, _) = pending.take().expect("invariant: checked above");
        drop(pending);
        let mut handed = Vec::new();
        for i in g.revoking.drain(..) {
            // No later transaction commits an offset of it.
            link.release(&self.parts[i]);
            handed.push(self.splits[i].id.clone());
        }
        consumer
            .incremental_unassign(&stop)
            .map_err(kafka_err("cannot let revoked partitions go"))?;
        let pause = g
            .revoked_at
            .take()
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        g.metrics
            .last_handover_ms
            .store(pause, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(partitions = ?handed, subtask = g.member.subtask, pause_ms = pause, "handed partitions over to the consumer group, their offsets committed");
        Ok(())
    }

    /// Takes in what the group's rebalances said (the callback runs inside a poll).
    fn apply_group_events(&mut self) -> Result<()> {
        let Some(member) = self.group_read.as_ref().map(|g| Arc::clone(&g.member)) else {
            return Ok(());
        };
        for event in member.take_events() {
            match event {
                GroupEvent::Revoked(p, lost) => {
                    if lost && member.defer_revoke {
                        // Rows read from it since the last commit are in the open
                        // transaction, and the partition's next owner reads them again
                        // from the committed offset: this attempt must not commit.
                        return Err(SluiceError::external(format!(
                            "the consumer group dropped this instance's subtask {} (it was cut off, or stalled longer than 'properties.session.timeout.ms'), and its partitions went to other members: its uncommitted output is aborted and it starts again from the group's committed offsets",
                            member.subtask
                        )));
                    }
                    let i = self.local_split(&p);
                    let g = self.group_read.as_mut().expect("group mode");
                    if g.owned[i] {
                        g.owned[i] = false;
                        g.metrics
                            .partitions_revoked
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if member.defer_revoke {
                            g.revoking.push(i);
                            g.revoked_at.get_or_insert_with(Instant::now);
                        }
                        member.release(&p, Some(self.next[i]));
                        self.queue
                            .push_back(ReadResult::SplitEnd(self.splits[i].index));
                    } else if let Some(w) = g.waiting.iter().position(|&(s, _)| s == i) {
                        let (_, claimed) = g.waiting.remove(w);
                        if claimed {
                            member.release(&p, None);
                        }
                    }
                    if let Some(b) = self.batches.as_mut() {
                        b.remove(i);
                    }
                    tracing::info!(partition = %format!("{}/{}", p.0, p.1), subtask = member.subtask, "the consumer group took a partition away");
                }
                GroupEvent::Assigned(p, start, queue) => {
                    let i = self.local_split(&p);
                    if let (Some(q), Some(b)) = (queue, self.batches.as_mut()) {
                        b.insert(i, q);
                    }
                    match start {
                        Start::At(o) => self.begin(i, o),
                        Start::Startup => self.group_waiting().push((i, true)),
                        Start::Wait => self.group_waiting().push((i, false)),
                    }
                }
            }
        }
        Ok(())
    }

    fn group_waiting(&mut self) -> &mut Vec<(usize, bool)> {
        &mut self.group_read.as_mut().expect("group mode").waiting
    }

    /// Split `i` is read from `offset` on: it holds event time back from now.
    fn begin(&mut self, i: usize, offset: i64) {
        if let Some(g) = self.group_read.as_mut() {
            g.owned[i] = true;
        }
        if let Some(link) = &self.link {
            link.hold(&self.parts[i]);
        }
        self.next[i] = offset;
        self.queue.push_back(ReadResult::Batch {
            split: self.splits[i].index,
            rows: RecordBatch::new_empty(Arc::clone(&self.config.columns.all)),
        });
        tracing::info!(partition = %self.splits[i].id, offset, "reading a partition the consumer group assigned");
    }

    /// Starts the assigned partitions that can start now: released by their last owner
    /// (at a barrier this subtask has passed too), or new to this attempt (from the
    /// startup mode, looked up first). Cancel-safe: the waiting list changes only
    /// between awaits.
    async fn start_waiting(&mut self, consumer: &Arc<SourceConsumer>) -> Result<()> {
        let Some(g) = self.group_read.as_mut() else {
            return Ok(());
        };
        if g.waiting.is_empty() {
            return Ok(());
        }
        let member = Arc::clone(&g.member);
        let mut ready: Vec<(usize, i64)> = Vec::new();
        for w in g.waiting.iter_mut().filter(|w| !w.1) {
            match member.claim(&self.parts[w.0]) {
                Start::At(o) => ready.push((w.0, o)),
                Start::Startup => w.1 = true,
                Start::Wait => {}
            }
        }
        self.start(consumer, ready)?;
        let lookup: Vec<Partition> = self
            .group_read
            .iter()
            .flat_map(|g| g.waiting.iter().filter(|w| w.1))
            .map(|w| self.parts[w.0].clone())
            .collect();
        if lookup.is_empty() {
            return Ok(());
        }
        let (config, group, c) = (
            Arc::clone(&self.config),
            self.group.clone(),
            Arc::clone(consumer),
        );
        let committed_first = member.cluster;
        let found = tokio::task::spawn_blocking(move || {
            start_offsets(&config, &lookup, &group, &c, committed_first)
        })
        .await
        .map_err(|e| SluiceError::internal(e.to_string()))?;
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                // The brokers are away for now: looked up again at the next read.
                tracing::warn!(error = %e, "cannot look up where assigned partitions start; trying again");
                return Ok(());
            }
        };
        // Still waiting (not revoked meanwhile) and claimed: start them.
        let ready: Vec<(usize, i64)> = self
            .group_read
            .iter()
            .flat_map(|g| g.waiting.iter().filter(|w| w.1))
            .filter_map(|w| Some((w.0, *found.get(&self.parts[w.0])?)))
            .collect();
        self.start(consumer, ready)
    }

    /// Adds waiting partitions to the consumer's assignment, each at its offset.
    fn start(&mut self, consumer: &SourceConsumer, ready: Vec<(usize, i64)>) -> Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &(i, o) in &ready {
            let (t, p) = &self.parts[i];
            tpl.add_partition_offset(t, *p, Offset::Offset(o))
                .map_err(kafka_err("bad partition"))?;
            let wake = self.group_read.as_ref().map(|g| Arc::clone(&g.member.wake));
            if let (Some(wake), Some(b)) = (wake, self.batches.as_mut()) {
                b.insert(i, PartitionQueue::open(consumer, &self.parts[i], &wake)?);
            }
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(kafka_err("cannot start reading assigned partitions"))?;
        self.group_waiting()
            .retain(|w| !ready.iter().any(|r| r.0 == w.0));
        for (i, o) in ready {
            self.begin(i, o);
        }
        Ok(())
    }
}
