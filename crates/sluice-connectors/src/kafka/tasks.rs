//! The Kafka side of a keyed cluster job's back part: which partitions of its
//! repartition topic this instance runs, and where each one's state is.
//!
//! ```text
//!  instances ── one consumer group on the repartition topic ──> partitions per instance
//!    (its members fetch nothing: they only learn what is theirs; a partition taken away
//!     is given up once the task running it has stopped)
//!  partition p ── committed offset of group `…-tasks`, metadata: run and epoch ──>
//!    the checkpoint its last transaction was taken with: what p's next task restores
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use sluice_types::{Result, SluiceError};

use super::mark::CommitMark;
use super::{METADATA_TIMEOUT, Topics, client_config, kafka_err, partitions};

/// What the group says about this instance's partitions.
#[derive(Debug)]
pub enum TaskEvent {
    /// These partitions are this instance's now.
    Assigned(Vec<i32>),
    /// These partitions go to others: stop their tasks, then answer on the sender (the
    /// group waits for it).
    Revoked(Vec<i32>, std::sync::mpsc::SyncSender<()>),
}

/// How long a revocation waits for its tasks to stop before the partitions are let go
/// anyway (a new owner fences a task that has not stopped).
const REVOKE_WAIT: Duration = Duration::from_secs(60);

struct AssignContext {
    events: tokio::sync::mpsc::UnboundedSender<TaskEvent>,
}

impl ClientContext for AssignContext {}

impl ConsumerContext for AssignContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Taken, and paused: this member only learns what is its own.
                let r = consumer.incremental_assign(tpl);
                if r.is_ok() {
                    let _ = consumer.pause(tpl);
                }
                let _ = self.events.send(TaskEvent::Assigned(parts));
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let (ack, stopped) = std::sync::mpsc::sync_channel(1);
                if self.events.send(TaskEvent::Revoked(parts, ack)).is_ok() {
                    let _ = stopped.recv_timeout(REVOKE_WAIT);
                }
                consumer.incremental_unassign(tpl)
            }
            _ => {
                tracing::warn!(error = ?err, "the repartition topic's consumer group failed to rebalance");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot take the repartition topic's assignment");
        }
    }
}

/// This instance's membership of the group that shares out a repartition topic's
/// partitions; leaves the group when dropped (its tasks are told to stop first).
pub struct Assignment {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Joins group `group` on `topic` as member `member` (a static member: an instance that
/// comes back takes its partitions back at once) and reports what the group gives and
/// takes on `events`. `options` are librdkafka client properties (brokers, security,
/// session timeout).
pub fn follow_assignment(
    options: &BTreeMap<String, String>,
    topic: &str,
    group: &str,
    member: &str,
    events: tokio::sync::mpsc::UnboundedSender<TaskEvent>,
) -> Result<Assignment> {
    let mut cfg = client_config(options);
    cfg.set("group.id", group)
        .set("group.instance.id", member)
        .set("client.id", member)
        .set("enable.auto.commit", "false")
        .set("partition.assignment.strategy", "cooperative-sticky");
    let consumer: BaseConsumer<AssignContext> =
        cfg.create_with_context(AssignContext { events })
            .map_err(kafka_err("cannot create the Kafka consumer"))?;
    consumer
        .subscribe(&[topic])
        .map_err(kafka_err(format!("cannot subscribe to `{topic}`")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("sluice-assignment".into())
        .spawn(move || {
            // Rebalances are served inside the poll; no record is expected (all paused).
            while !stopping.load(Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            // Leaving the group revokes everything first: the tasks stop.
            consumer.unsubscribe();
            let _ = consumer.poll(Duration::from_millis(100));
        })
        .map_err(|e| SluiceError::internal(format!("cannot start a thread: {e}")))?;
    Ok(Assignment {
        stop,
        thread: Some(thread),
    })
}

/// The checkpoint partition `partition` of `topic` was last committed with, as the
/// offset of group `group` names (its [`CommitMark`]'s run and epoch), with the offset; `None` before any.
/// Read as a `read_committed` consumer does: a transaction still open on it is waited
/// for.
pub fn committed_checkpoint(
    options: &BTreeMap<String, String>,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<(i64, String, u64)>> {
    let consumer: BaseConsumer = client_config(options)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka_err("cannot create the Kafka consumer"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .map_err(kafka_err(format!(
            "cannot read the committed offset of {topic}/{partition} for group `{group}`"
        )))?;
    let Some(e) = got.find_partition(topic, partition) else {
        return Ok(None);
    };
    let Offset::Offset(o) = e.offset() else {
        return Ok(None);
    };
    let named = CommitMark::parse(e.metadata()).and_then(|m| Some((m.run?, m.epoch?)));
    let Some((run, epoch)) = named else {
        return Err(SluiceError::user(format!(
            "the committed offset of {topic}/{partition} for group `{group}` names no checkpoint (metadata `{}`): the group is used by something else",
            e.metadata()
        )));
    };
    Ok(Some((o, run, epoch)))
}

/// The number of partitions of `topic`.
pub fn topic_partitions(options: &BTreeMap<String, String>, topic: &str) -> Result<usize> {
    Ok(partitions(options, &Topics::Names(vec![topic.to_string()]))?.len())
}

/// Creates the repartition topic `topic` with `n` partitions unless it exists, and
/// checks that an existing one has `n` (keys map to partitions by their number).
pub async fn ensure_repartition_topic(
    options: &BTreeMap<String, String>,
    topic: &str,
    n: usize,
) -> Result<()> {
    if let Ok(have) = topic_partitions(options, topic) {
        if have != n {
            return Err(SluiceError::user(format!(
                "the repartition topic `{topic}` has {have} partitions and this job reads it with {n} (as many as its sources' topics have, the most of them for a join, whose inputs must be co-partitioned): delete it (no instance running) or give the sources as many"
            )));
        }
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(options)
        .create()
        .map_err(kafka_err("cannot create a Kafka admin client"))?;
    let r = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                n as i32,
                // The broker's default replication factor.
                TopicReplication::Fixed(-1),
            )],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .map_err(kafka_err(format!(
            "cannot create the repartition topic `{topic}`"
        )))?;
    for res in r {
        if let Err((t, e)) = res
            && e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(SluiceError::external(format!(
                "cannot create the repartition topic `{t}`: {e}"
            )));
        }
    }
    Ok(())
}
