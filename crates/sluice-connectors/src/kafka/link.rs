//! A cluster instance's exactly-once link between a source subtask and the Kafka sink
//! subtask its rows go to (forward, in the same process): the sink commits, in each
//! checkpoint's transaction, the offsets the source had reached at that checkpoint's
//! barrier, under the consumer's group membership, as Kafka's own exactly-once
//! processing does. The commit is the only record of progress: an instance that takes
//! a partition over starts at its committed offset.
//!
//! ```text
//!  source subtask s        barrier k: offsets ──push(k)──┐
//!  (group member)                                         ▼
//!  sink subtask s          barrier k: take(k) ─> commit of checkpoint k:
//!                                                 send offsets (member's generation)
//!                                                 commit the transaction ──> committed = k
//!  source: a revoked partition is let go (incremental unassign) once the
//!          transaction of the first barrier after its revocation is committed
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use tokio::sync::Notify;

use super::group::Partition;
use super::mark::CommitMark;
use super::source::SourceConsumer;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one source subtask and its sink subtask share.
#[derive(Default)]
pub(crate) struct TxnLink {
    consumer: Mutex<Weak<SourceConsumer>>,
    /// Per barrier passed by the source (counted from 1 in this attempt): the next
    /// offset of every partition it read or still holds, with the claim it held it by.
    barriers: Mutex<VecDeque<Passed>>,
    /// The partitions the source holds now, each by a claim of its own: a partition let
    /// go (and maybe taken back later) is never committed from an offset read under an
    /// earlier claim, which another member may have moved past since.
    held: Mutex<HashMap<Partition, u64>>,
    claims: AtomicU64,
    /// The last barrier whose transaction is committed.
    committed: AtomicU64,
    /// Wakes the sources' readers when a transaction is committed.
    wake: Mutex<Vec<Arc<Notify>>>,
    /// The source's partitions as it knew them at start (a partition's index here
    /// names it as a writer of watermark records).
    partitions: Mutex<Vec<Partition>>,
}

/// Barriers' offsets kept for a sink that has not taken them (one that is not
/// exactly-once never does).
const KEPT: usize = 64;

type Key = (String, u64, usize);

/// A partition's offset, read under a claim.
pub(crate) type Held = (Partition, i64, u64);

/// A partition with its own watermark (epoch ms) at a barrier.
pub(crate) type Watermarked = (Partition, i64);

/// A barrier the source passed: its number, offsets and watermarks.
type Passed = (u64, Vec<Held>, Vec<Watermarked>);

static LINKS: LazyLock<Mutex<HashMap<Key, Weak<TxnLink>>>> = LazyLock::new(Mutex::default);

/// The link of subtask `subtask` of job `job`'s attempt `attempt`, made by whichever
/// side asks first; it lives while either side holds it.
pub(crate) fn link(job: &str, attempt: u64, subtask: usize) -> Arc<TxnLink> {
    let mut links = locked(&LINKS);
    links.retain(|_, l| l.strong_count() > 0);
    let key = (job.to_string(), attempt, subtask);
    if let Some(l) = links.get(&key).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(TxnLink::default());
    links.insert(key, Arc::downgrade(&l));
    l
}

impl TxnLink {
    /// The source's consumer, and what wakes its reader. A job with several sources
    /// (a partition task reading the repartition topics of a join) attaches each; their
    /// consumers are of one group, and the last attached commits for all.
    pub(crate) fn attach(&self, consumer: &Arc<SourceConsumer>, wake: &Arc<Notify>) {
        *locked(&self.consumer) = Arc::downgrade(consumer);
        locked(&self.wake).push(Arc::clone(wake));
    }

    /// The source's partitions as it knew them at start (those of every source that
    /// attached, in order).
    pub(crate) fn set_partitions(&self, partitions: Vec<Partition>) {
        let mut all = locked(&self.partitions);
        for p in partitions {
            if !all.contains(&p) {
                all.push(p);
            }
        }
    }

    /// Of `watermarks`, those of partitions the source knew at start, by their index
    /// there, and how many it knew.
    pub(crate) fn writers(&self, watermarks: &[(Partition, i64)]) -> (Vec<(u32, i64)>, u32) {
        let all = locked(&self.partitions);
        let ids = watermarks
            .iter()
            .filter_map(|(p, w)| Some((all.iter().position(|q| q == p)? as u32, *w)))
            .collect();
        (ids, all.len() as u32)
    }

    /// The source reads `p` from now on.
    pub(crate) fn hold(&self, p: &Partition) {
        let claim = self.claims.fetch_add(1, Ordering::SeqCst) + 1;
        locked(&self.held).insert(p.clone(), claim);
    }

    /// The source lets `p` go: offsets read under its claim are not committed any more.
    pub(crate) fn release(&self, p: &Partition) {
        locked(&self.held).remove(p);
    }

    /// The source passed barrier `n` at these offsets.
    pub(crate) fn push(
        &self,
        n: u64,
        offsets: Vec<(Partition, i64)>,
        watermarks: Vec<(Partition, i64)>,
    ) {
        let offsets = {
            let held = locked(&self.held);
            offsets
                .into_iter()
                .filter_map(|(p, o)| {
                    let claim = *held.get(&p)?;
                    Some((p, o, claim))
                })
                .collect()
        };
        let mut b = locked(&self.barriers);
        b.push_back((n, offsets, watermarks));
        while b.len() > KEPT {
            b.pop_front();
        }
    }

    /// The offsets at barrier `n` (those of earlier barriers are dropped).
    #[cfg(test)]
    pub(crate) fn take(&self, n: u64) -> Option<Vec<Held>> {
        self.take_with_watermarks(n).map(|(o, _)| o)
    }

    /// As [`Self::take`], with each partition's own watermark at the barrier. With
    /// several sources, what each pushed at barrier `n` (every source passes a barrier
    /// before the sink does).
    pub(crate) fn take_with_watermarks(&self, n: u64) -> Option<(Vec<Held>, Vec<Watermarked>)> {
        let mut b = locked(&self.barriers);
        let mut found: Option<(Vec<Held>, Vec<Watermarked>)> = None;
        b.retain_mut(|(k, offsets, wms)| {
            if *k == n {
                let f = found.get_or_insert_with(Default::default);
                f.0.append(offsets);
                f.1.append(wms);
            }
            *k > n
        });
        found
    }

    /// Of `offsets`, those of partitions still held under the claim they were read by.
    pub(crate) fn still_held(&self, offsets: &[Held]) -> Vec<Held> {
        let held = locked(&self.held);
        offsets
            .iter()
            .filter(|(p, _, claim)| held.get(p) == Some(claim))
            .cloned()
            .collect()
    }

    /// The marks of the group's last commits of `parts` (see [`CommitMark`]), read as a
    /// `read_committed` consumer reads them. Blocking.
    pub(crate) fn committed_marks(&self, parts: &[Partition]) -> HashMap<Partition, CommitMark> {
        let Some(consumer) = locked(&self.consumer).upgrade() else {
            return HashMap::new();
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition(t, *p);
        }
        match consumer.committed_offsets(tpl, super::METADATA_TIMEOUT) {
            Ok(got) => got
                .elements()
                .iter()
                .filter_map(|e| {
                    let mark = CommitMark::parse(e.metadata())?;
                    Some(((e.topic().to_string(), e.partition()), mark))
                })
                .collect(),
            Err(e) => {
                tracing::info!(error = %e, "cannot read the last commits of partitions this instance takes over (their pause is not known)");
                HashMap::new()
            }
        }
    }

    /// The consumer's current group membership, for offsets committed in a transaction
    /// (a member that has lost its partitions since cannot commit them).
    pub(crate) fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        locked(&self.consumer).upgrade()?.group_metadata()
    }

    /// The transaction of barrier `n` is committed.
    pub(crate) fn committed(&self, n: u64) {
        self.committed.fetch_max(n, Ordering::SeqCst);
        for w in locked(&self.wake).iter() {
            w.notify_one();
        }
    }

    /// The last barrier whose transaction is committed.
    pub(crate) fn committed_through(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_takes_the_offsets_of_its_own_barrier() {
        let l = link("job-link-test", 7, 0);
        assert!(Arc::ptr_eq(&l, &link("job-link-test", 7, 0)));
        assert!(!Arc::ptr_eq(&l, &link("job-link-test", 8, 0)));
        let t0 = ("t".to_string(), 0);
        let p = |o| vec![(t0.clone(), o)];
        let held = |h: Vec<Held>| -> Vec<(Partition, i64)> {
            l.still_held(&h)
                .into_iter()
                .map(|(p, o, _)| (p, o))
                .collect()
        };
        l.hold(&t0);
        l.push(1, p(10), vec![]);
        l.push(2, p(20), vec![]);
        l.push(3, p(30), vec![]);
        let two = l.take(2).unwrap();
        assert_eq!(held(two), p(20));
        assert_eq!(l.take(2), None);
        let three = l.take(3).unwrap();
        // Let go and taken back: what was read under the old claim is not committed.
        l.release(&t0);
        assert!(l.still_held(&three).is_empty());
        l.hold(&t0);
        assert!(l.still_held(&three).is_empty());
        l.push(4, p(40), vec![]);
        assert_eq!(held(l.take(4).unwrap()), p(40));
        // A partition not held is not pushed.
        l.push(5, vec![(("t".to_string(), 9), 1)], vec![]);
        assert!(l.take(5).unwrap().is_empty());
        l.committed(3);
        l.committed(2);
        assert_eq!(l.committed_through(), 3);
        for n in 0..100 {
            l.push(n, p(n as i64), vec![]);
        }
        assert_eq!(held(l.take(99).unwrap()), p(99));
    }

    /// A partition task that reads two repartition topics (a join): each source pushes
    /// its offsets at each barrier, in any order; the sink takes both.
    #[test]
    fn two_sources_offsets_at_one_barrier_are_taken_together() {
        let l = link("job-link-two", 1, 0);
        let (a, b) = (("a".to_string(), 3), ("b".to_string(), 3));
        l.hold(&a);
        l.hold(&b);
        l.push(1, vec![(a.clone(), 10)], vec![(a.clone(), 100)]);
        l.push(2, vec![(a.clone(), 20)], vec![]);
        l.push(1, vec![(b.clone(), 5)], vec![(b.clone(), 90)]);
        let (offsets, wms) = l.take_with_watermarks(1).unwrap();
        let offsets: Vec<(Partition, i64)> = offsets.into_iter().map(|(p, o, _)| (p, o)).collect();
        assert_eq!(offsets, vec![(a.clone(), 10), (b.clone(), 5)]);
        assert_eq!(wms, vec![(a.clone(), 100), (b.clone(), 90)]);
        l.push(2, vec![(b.clone(), 7)], vec![]);
        assert_eq!(l.take(2).unwrap().len(), 2);
        assert_eq!(l.take(2), None);
    }
}
