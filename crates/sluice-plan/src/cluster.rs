//! How a job runs as one instance of several (`sluice run --cluster`): the cluster's
//! and the instance's names, and the keyed part of a cluster job run for one partition.

/// One instance of a job run by several processes, possibly on several machines: the
/// instances share the job's Kafka partitions through one consumer group, as Kafka
/// Streams' instances do; no coordinator of Sluice's own is involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name, the same in every instance: the consumer group is named after it.
    pub name: String,
    /// This instance's name, unique in the cluster and stable across its restarts.
    pub instance: String,
    /// Whether `instance` was given (stable across restarts): the instance's consumers
    /// are then static members of the group, so a restarted instance takes its
    /// partitions back at once.
    pub static_membership: bool,
    /// Set when this job is the keyed part of a cluster job for one partition of its
    /// repartition topic (see [`PartitionTask`]).
    pub partition_task: Option<PartitionTask>,
}

/// The keyed part of a cluster job, run for one partition of its repartition topic
/// (as Kafka Streams runs one task per partition): its state is checkpointed per
/// partition, its transactional id is the partition's (so a new owner fences an old
/// one), and the offset its transactions commit names the checkpoint taken with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTask {
    /// The repartition topic's partition.
    pub partition: i32,
    /// This run's own name, unique across runs: its checkpoints are kept under it, and
    /// the offsets its transactions commit name it with the checkpoint's epoch (in their offset metadata).
    pub token: String,
    /// The instance that runs it (its cluster config's `instance` names the partition,
    /// which is what its transactional id is made of).
    pub owner: String,
}

impl ClusterConfig {
    /// A cluster instance. `instance`: a stable name (static membership); `None` names
    /// it after this host and process.
    pub fn new(name: impl Into<String>, instance: Option<String>) -> sluice_types::Result<Self> {
        let name = name.into();
        let static_membership = instance.is_some();
        let instance = instance.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            format!(
                "{}-{}",
                if host.is_empty() { "host" } else { &host },
                std::process::id()
            )
        });
        for (what, v) in [("cluster", &name), ("instance", &instance)] {
            let ok = !v.is_empty()
                && v.len() <= 100
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(sluice_types::SluiceError::user(format!(
                    "the {what} name `{v}` must be 1 to 100 letters, digits, `-`, `_` or `.` (it names consumer-group members and transactional ids)"
                )));
            }
        }
        Ok(Self {
            name,
            instance,
            static_membership,
            partition_task: None,
        })
    }

    /// The consumer group the instances share unless their source names one.
    pub fn group(&self) -> String {
        format!("sluice-{}", self.name)
    }

    /// The name of this instance's subtask `subtask` as Kafka sees it: its consumer's
    /// client id (and static member id), its producer's transactional id.
    pub fn member(&self, subtask: usize) -> String {
        format!("sluice-{}-{}-{subtask}", self.name, self.instance)
    }
}
