//! `'scan.partition-assignment' = 'group'`: the source's subtasks join the consumer
//! group and read what the group assigns them, as Kafka's own consumers do.
//!
//! ```text
//!  group ──assign P──> member (rebalance callback, inside the reader's poll)
//!                        start of P: a sibling's hand-over  > the restored checkpoint
//!                                    > the startup mode (looked up by the reader)
//!  group ──revoke P──> member: P's position becomes a hand-over for whoever gets P next
//! ```
//!
//! Positions stay exact across moves within a job: a subtask that gives up a partition
//! leaves its position in a hand-over table shared by the subtasks of the source, and the
//! next owner starts there, but only once it has passed as many checkpoint barriers as the
//! old owner had: its rows then belong to the same or a later checkpoint than the old
//! owner's last ones. A released partition nobody has taken yet is still reported at
//! barriers (marked `released`), so that a checkpoint always knows where it stands; the
//! runtime prefers an owner's position over a released one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::batch::PartitionQueue;

/// A partition: topic and number.
pub(crate) type Partition = (String, i32);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who holds a partition within one attempt of a job.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Holder {
    /// A subtask reads it (or is about to).
    Owned(usize),
    /// Given up by `by` at `offset`, after `by` had passed `epoch` barriers.
    Released { by: usize, offset: i64, epoch: u64 },
}

/// What the subtasks of one source share: hand-overs, and split numbers for partitions
/// that appeared after the job started.
#[derive(Default)]
pub(crate) struct GroupShared {
    state: Mutex<SharedState>,
}

#[derive(Default)]
struct SharedState {
    /// Per partition: the attempt the entry is of, and its holder.
    holders: HashMap<Partition, (u64, Holder)>,
    /// Partitions the group assigned that the job did not know at start, in the order
    /// they were first seen: split `known + i` is `extra[i]`.
    extra: Vec<Partition>,
}

impl GroupShared {
    /// The split number of `p`: its place among the partitions `known` at start, or
    /// after them in the order partitions were first seen since.
    pub(crate) fn split_of(&self, known: &[Partition], p: &Partition) -> usize {
        if let Some(i) = known.iter().position(|q| q == p) {
            return i;
        }
        let mut s = locked(&self.state);
        let i = match s.extra.iter().position(|q| q == p) {
            Some(i) => i,
            None => {
                s.extra.push(p.clone());
                s.extra.len() - 1
            }
        };
        known.len() + i
    }

    /// Partitions first seen after the start, from split `known` on.
    #[cfg(test)]
    pub(crate) fn extra(&self) -> Vec<Partition> {
        locked(&self.state).extra.clone()
    }
}

/// Where a newly assigned partition starts.
#[derive(Debug, PartialEq)]
pub(crate) enum Start {
    /// At this offset, now.
    At(i64),
    /// From the startup mode (no position is known): the reader looks it up, then
    /// starts it.
    Startup,
    /// Another subtask still holds it, or released it at a later barrier: wait.
    Wait,
}

/// What the rebalance callback tells the reader.
pub(crate) enum GroupEvent {
    /// The partition, where it starts, and its queue when it started at once.
    Assigned(Partition, Start, Option<PartitionQueue>),
    /// Taken away; `lost`: because this member was dropped from the group (its session
    /// expired), so what it read since its last commit is another member's now.
    Revoked(Partition, bool),
}

/// One subtask's membership: shared by its reader and its consumer's callback.
pub(crate) struct Member {
    pub(crate) shared: Arc<GroupShared>,
    pub(crate) subtask: usize,
    pub(crate) attempt: u64,
    /// Checkpoint barriers this subtask has passed in this attempt.
    pub(crate) epoch: AtomicU64,
    /// Positions of the restored checkpoint.
    pub(crate) restored: HashMap<Partition, i64>,
    pub(crate) events: Mutex<Vec<GroupEvent>>,
    /// Wakes the reader: records in a partition queue, or news from the group.
    pub(crate) wake: Arc<Notify>,
    /// A cluster instance's member: a partition starts where the group's committed
    /// offset says (the hand-over table is for subtasks of one process only).
    pub(crate) cluster: bool,
    /// Revoked partitions are let go only once the rows read from them are committed
    /// (exactly-once across instances): what the group revoked that was being fetched,
    /// and the barriers passed then. The group waits for it; meanwhile librdkafka
    /// pauses the consumer's fetches.
    pub(crate) defer_revoke: bool,
    pub(crate) pending_unassign: Mutex<Option<(TopicPartitionList, u64)>>,
    /// The reader is gone and its consumer closing: nothing more will be committed.
    pub(crate) closing: AtomicBool,
}

impl Member {
    pub(crate) fn new(
        shared: Arc<GroupShared>,
        subtask: usize,
        attempt: u64,
        restored: HashMap<Partition, i64>,
    ) -> Self {
        Self {
            shared,
            subtask,
            attempt,
            epoch: AtomicU64::new(0),
            restored,
            events: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
            cluster: false,
            defer_revoke: false,
            pending_unassign: Mutex::new(None),
            closing: AtomicBool::new(false),
        }
    }

    /// A member of a cluster instance (see [`Member::cluster`]); `defer_revoke` when the
    /// job is exactly-once.
    pub(crate) fn in_cluster(mut self, defer_revoke: bool) -> Self {
        self.cluster = true;
        self.defer_revoke = defer_revoke;
        self
    }

    /// Takes `p` for this subtask if it can start now: where it starts.
    pub(crate) fn claim(&self, p: &Partition) -> Start {
        if self.cluster {
            return Start::Startup;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut s = locked(&self.shared.state);
        let current = s
            .holders
            .get(p)
            .filter(|(a, _)| *a == self.attempt)
            .map(|(_, h)| *h);
        let start = match current {
            // First owner in this attempt: the checkpoint's position, else the startup mode.
            None => match self.restored.get(p) {
                Some(&o) => Start::At(o),
                None => Start::Startup,
            },
            Some(Holder::Owned(s)) if s == self.subtask => Start::Startup,
            Some(Holder::Owned(_)) => Start::Wait,
            Some(Holder::Released {
                offset, epoch: e, ..
            }) if e <= epoch => Start::At(offset),
            Some(Holder::Released { .. }) => Start::Wait,
        };
        if start != Start::Wait {
            s.holders
                .insert(p.clone(), (self.attempt, Holder::Owned(self.subtask)));
        }
        start
    }

    /// Gives `p` up at `offset` (`None`: it was claimed but never started, so whoever
    /// takes it next starts as if it had never been read).
    pub(crate) fn release(&self, p: &Partition, offset: Option<i64>) {
        if self.cluster {
            return;
        }
        let mut s = locked(&self.shared.state);
        if s.holders.get(p) != Some(&(self.attempt, Holder::Owned(self.subtask))) {
            return;
        }
        match offset {
            Some(offset) => {
                let epoch = self.epoch.load(Ordering::SeqCst);
                s.holders.insert(
                    p.clone(),
                    (
                        self.attempt,
                        Holder::Released {
                            by: self.subtask,
                            offset,
                            epoch,
                        },
                    ),
                );
            }
            None => {
                s.holders.remove(p);
            }
        }
    }

    /// Positions of partitions no subtask reads now that a checkpoint must still know:
    /// those this subtask gave up that nobody has taken yet, and those of the restored
    /// checkpoint that nobody has started in this attempt (every subtask reports these,
    /// alike).
    pub(crate) fn released(&self) -> Vec<(Partition, i64)> {
        let s = locked(&self.shared.state);
        let mut out: Vec<(Partition, i64)> = s
            .holders
            .iter()
            .filter_map(|(p, (a, h))| match h {
                Holder::Released { by, offset, .. }
                    if *a == self.attempt && *by == self.subtask =>
                {
                    Some((p.clone(), *offset))
                }
                _ => None,
            })
            .collect();
        for (p, &o) in &self.restored {
            if s.holders.get(p).is_none_or(|(a, _)| *a != self.attempt) {
                out.push((p.clone(), o));
            }
        }
        out.sort();
        out
    }

    pub(crate) fn take_events(&self) -> Vec<GroupEvent> {
        std::mem::take(&mut *locked(&self.events))
    }
}

/// The source consumer's context: in group mode, it answers the group's rebalances
/// (incrementally: the cooperative protocol, or Kafka's new consumer protocol).
#[derive(Default)]
pub(crate) struct SourceContext {
    pub(crate) member: Option<Arc<Member>>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let Some(member) = &self.member else {
            return;
        };
        let parts: Vec<Partition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        // Partitions start fetching only once it is known where: those that can start
        // now are added to the consumer's assignment here, the others by the reader
        // later (librdkafka takes incremental assignments at any time). The callback
        // always answers, or the group would wait for it.
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut now = TopicPartitionList::new();
                let mut events = Vec::new();
                let mut failed = None;
                for p in parts {
                    let mut start = member.claim(&p);
                    let mut queue = None;
                    if let Start::At(o) = start {
                        // Its records go to a queue of its own from the first fetch on.
                        match PartitionQueue::open(consumer, &p, &member.wake) {
                            Ok(q) => {
                                queue = Some(q);
                                let _ = now.add_partition_offset(&p.0, p.1, Offset::Offset(o));
                            }
                            Err(e) => {
                                failed = Some(e);
                                member.release(&p, Some(o));
                                start = Start::Wait;
                            }
                        }
                    }
                    events.push(GroupEvent::Assigned(p, start, queue));
                }
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "cannot read an assigned partition now; trying again");
                }
                locked(&member.events).extend(events);
                consumer.incremental_assign(&now)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Only what was started is in the consumer's own assignment.
                let fetching = consumer.assignment().unwrap_or_default();
                let mut stop = TopicPartitionList::new();
                for (t, p) in &parts {
                    if fetching.find_partition(t, *p).is_some() {
                        stop.add_partition(t, *p);
                    }
                }
                let lost = consumer.assignment_lost();
                locked(&member.events)
                    .extend(parts.into_iter().map(|p| GroupEvent::Revoked(p, lost)));
                // Lost partitions (this member was dropped from the group) cannot be
                // committed any more: nothing to wait for.
                let closing = member.closing.load(Ordering::SeqCst);
                match member.defer_revoke && !lost && !closing {
                    true => {
                        let epoch = member.epoch.load(Ordering::SeqCst);
                        *locked(&member.pending_unassign) = Some((stop, epoch));
                        Ok(())
                    }
                    false => consumer.incremental_unassign(&stop),
                }
            }
            other => Err(KafkaError::Rebalance(other.into())),
        };
        member.wake.notify_one();
        if let Err(e) = result {
            tracing::warn!(error = %e, subtask = member.subtask, "a consumer-group rebalance failed; librdkafka rejoins the group");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    fn members(restored: &[(i32, i64)]) -> (Member, Member) {
        let shared = Arc::new(GroupShared::default());
        let restored: HashMap<Partition, i64> = restored.iter().map(|&(n, o)| (p(n), o)).collect();
        (
            Member::new(Arc::clone(&shared), 0, 1, restored.clone()),
            Member::new(shared, 1, 1, restored),
        )
    }

    #[test]
    fn a_partition_moves_with_its_position_once_the_taker_has_passed_the_same_barriers() {
        let (a, b) = members(&[(0, 40)]);
        // The first owner starts from the checkpoint, or the startup mode.
        assert_eq!(a.claim(&p(0)), Start::At(40));
        assert_eq!(a.claim(&p(1)), Start::Startup);
        // Held by a: b waits.
        assert_eq!(b.claim(&p(0)), Start::Wait);
        // a passed a barrier, read on to 55 and gave 0 up: b, behind by one barrier,
        // waits for its own barrier.
        a.epoch.store(1, Ordering::SeqCst);
        a.release(&p(0), Some(55));
        assert_eq!(a.released(), vec![(p(0), 55)]);
        assert_eq!(b.claim(&p(0)), Start::Wait);
        b.epoch.store(1, Ordering::SeqCst);
        assert_eq!(b.claim(&p(0)), Start::At(55));
        // Taken: no longer a's to report, and a cannot release it again.
        assert!(a.released().is_empty());
        // Restored partitions nobody has started are reported by everyone.
        let (c, _) = members(&[(3, 7)]);
        assert_eq!(c.released(), vec![(p(3), 7)]);
        assert_eq!(c.claim(&p(3)), Start::At(7));
        assert!(c.released().is_empty());
        a.release(&p(0), Some(60));
        assert_eq!(b.claim(&p(0)), Start::Startup);
        // A partition claimed but never started goes back to its startup mode.
        a.release(&p(1), None);
        assert_eq!(b.claim(&p(1)), Start::Startup);
    }

    #[test]
    fn entries_of_an_earlier_attempt_are_ignored() {
        let shared = Arc::new(GroupShared::default());
        let old = Member::new(Arc::clone(&shared), 0, 1, HashMap::new());
        assert_eq!(old.claim(&p(0)), Start::Startup);
        old.release(&p(0), Some(99));
        let restored: HashMap<Partition, i64> = [(p(0), 10)].into_iter().collect();
        let new = Member::new(shared, 1, 2, restored);
        assert_eq!(new.claim(&p(0)), Start::At(10));
    }

    #[test]
    fn partitions_unknown_at_start_get_split_numbers_after_the_known_ones() {
        let shared = GroupShared::default();
        let parts = vec![p(0), p(1)];
        assert_eq!(shared.split_of(&parts, &p(1)), 1);
        assert_eq!(shared.split_of(&parts, &p(7)), 2);
        assert_eq!(shared.split_of(&parts, &p(5)), 3);
        assert_eq!(shared.split_of(&parts, &p(7)), 2);
        assert_eq!(shared.extra(), vec![p(7), p(5)]);
    }
}
