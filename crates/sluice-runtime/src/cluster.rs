//! What a job must be to run as one instance of several (`sluice run --cluster`), and
//! the options its Kafka connectors take from that.
//!
//! ```text
//!  instance A ─┐                          ┌─ partitions 0, 3 ─> A's subtasks
//!  instance B ─┼─ one consumer group ─────┼─ partitions 1, 4 ─> B's subtasks
//!  instance C ─┘  (Kafka assigns)         └─ partitions 2, 5 ─> C's subtasks
//!
//!  each source subtask ──forward──> … ──> its Kafka sink subtask
//!      one transaction per checkpoint: the rows written since the last one
//!      and the source's offsets (Kafka's exactly-once model: the commit is the truth)
//! ```
//!
//! An instance runs a job whose rows stay on the subtask that read them: one Kafka
//! source, operators without keyed state, one Kafka sink, forward edges only. A job with
//! keyed state is split at its keyed exchanges first ([`split_keyed`]): its parts are
//! such jobs, and per-partition tasks of the keyed parts.

use std::time::Duration;

use sluice_plan::{JobPlan, NodeKind, Partitioning};
use sluice_types::{Result, SluiceError};

mod keyed;

pub use keyed::{EVENT_TIME_COLUMN, KeyedSplit, KeyedStage, client_options, split_keyed};

/// A cluster instance's checkpoint interval unless the job sets one.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Checks that `plan` can run as a cluster instance and sets its Kafka source to follow
/// the consumer group (named after the cluster unless the table names one).
pub(crate) fn prepare(plan: &mut JobPlan) -> Result<()> {
    let Some(cluster) = plan.config.cluster.clone() else {
        return Ok(());
    };
    if cluster.partition_task.is_some() {
        // The keyed part of a cluster job, for one partition (see [`split_keyed`]): it
        // restores from the checkpoint its partition's committed offset names, which
        // is among the newest three (a commit follows its checkpoint at once).
        plan.config
            .checkpoint
            .interval
            .get_or_insert(DEFAULT_INTERVAL);
        plan.config.checkpoint.retained = plan.config.checkpoint.retained.max(3);
        transaction_timeouts(plan);
        return Ok(());
    }
    let refuse = |why: String| {
        Err(SluiceError::user(format!(
            "this job cannot run as an instance of cluster `{}`: {why}",
            cluster.name
        )))
    };
    // Each checkpoint commits a transaction, and a revoked partition is let go at the
    // next one: checkpoints must come, and often (Kafka Streams commits every 100 ms
    // when exactly-once).
    plan.config
        .checkpoint
        .interval
        .get_or_insert(DEFAULT_INTERVAL);
    let sources: Vec<usize> = plan
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::Source(_)))
        .map(|n| n.id)
        .collect();
    let [source] = sources.as_slice() else {
        return refuse(format!(
            "it reads {} sources; an instance reads one Kafka source (joins and unions across instances need repartition topics, which are not built yet)",
            sources.len()
        ));
    };
    let p = plan.nodes[*source].parallelism;
    let mut sinks = 0;
    for n in &plan.nodes {
        match &n.kind {
            NodeKind::Source(s) if s.spec.connector != "kafka" => {
                return refuse(format!(
                    "its source `{}` is `{}`; instances share the partitions of a `kafka` source",
                    n.name, s.spec.connector
                ));
            }
            NodeKind::Sink(spec) => {
                sinks += 1;
                if spec.connector != "kafka" {
                    return refuse(format!(
                        "its sink `{}` is `{}`; an instance writes to Kafka, in transactions that carry the source's offsets",
                        n.name, spec.connector
                    ));
                }
                let exactly_once =
                    plan.config.checkpoint.delivery == sluice_plan::DeliveryGuarantee::ExactlyOnce;
                if let Some(g) = spec.options.get("sink.delivery-guarantee")
                    && exactly_once
                    && g != "exactly-once"
                {
                    return refuse(format!(
                        "the job is exactly-once and its sink `{}` sets 'sink.delivery-guarantee' = '{g}': an exactly-once instance commits its offsets in the sink's transactions (run the job --delivery at-least-once instead)",
                        n.name
                    ));
                }
            }
            k if !k.is_stateless() => {
                return refuse(format!(
                    "`{}` keeps keyed state: such a job runs as instances of a cluster split at its keyed exchanges (`sluice run --cluster` and `sluice server` split it), not as one job",
                    n.name
                ));
            }
            _ => {}
        }
        if n.parallelism != p {
            return refuse(format!(
                "`{}` runs with parallelism {} and the source with {p}: every row stays on the subtask that read it",
                n.name, n.parallelism
            ));
        }
    }
    transaction_timeouts(plan);
    if sinks != 1 {
        return refuse(format!(
            "it has {sinks} sinks; an instance writes one Kafka sink (one transaction per subtask carries its rows and the source's offsets)"
        ));
    }
    if let Some(e) = plan
        .edges
        .iter()
        .find(|e| e.partitioning != Partitioning::Forward)
    {
        return refuse(format!(
            "rows go from `{}` to `{}` by {}; between instances rows change hands through a repartition topic only at the keyed exchange of a job with keyed state (`sluice run --cluster` splits it there)",
            plan.nodes[e.from].name, plan.nodes[e.to].name, e.partitioning
        ));
    }
    // Restores come from the group's committed offsets, not from a checkpoint.
    plan.config.restore = None;
    let NodeKind::Source(s) = &mut plan.nodes[*source].kind else {
        unreachable!("invariant: found as a source above");
    };
    let options = &mut s.spec.options;
    match options.get("scan.partition-assignment").map(String::as_str) {
        None | Some("group") => {}
        Some(other) => {
            return refuse(format!(
                "its source sets 'scan.partition-assignment' = '{other}'; the instances share partitions through the consumer group ('group')"
            ));
        }
    }
    options.insert("scan.partition-assignment".into(), "group".into());
    options
        .entry("properties.group.id".into())
        .or_insert_with(|| cluster.group());
    Ok(())
}

/// A killed instance's open transaction holds read_committed readers of its output back
/// until it times out: 10 s (as Kafka Streams sets it when exactly-once), or ten
/// checkpoint intervals when they are longer, unless the sink table sets one.
fn transaction_timeouts(plan: &mut JobPlan) {
    let interval = plan.config.checkpoint.interval.unwrap_or(DEFAULT_INTERVAL);
    let timeout = (interval * 10).max(Duration::from_secs(10));
    for n in &mut plan.nodes {
        if let NodeKind::Sink(spec) = &mut n.kind {
            spec.options
                .entry("properties.transaction.timeout.ms".into())
                .or_insert_with(|| timeout.as_millis().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_plan::{ClusterConfig, ConnectorSpec, EventTime, SourceNode, WatermarkSpec};

    use super::*;

    fn kafka_job(keyed: bool) -> JobPlan {
        let mut plan = JobPlan::new("j");
        let src = plan.add_node(
            "src",
            2,
            NodeKind::Source(SourceNode {
                spec: ConnectorSpec::new("kafka").with_option("topic", "in"),
                event_time: EventTime::Ingestion,
                watermark: WatermarkSpec::default(),
            }),
        );
        let sink = plan.add_node("sink", 2, NodeKind::Sink(ConnectorSpec::new("kafka")));
        let partitioning = match keyed {
            true => Partitioning::Hash(vec!["id".into()]),
            false => Partitioning::Forward,
        };
        plan.add_edge(src, sink, partitioning);
        plan.config.checkpoint.interval = Some(Duration::from_secs(1));
        plan.config.cluster = Some(ClusterConfig::new("c1", Some("a".into())).unwrap());
        plan
    }

    #[test]
    fn a_forward_kafka_job_follows_the_group_named_after_the_cluster() {
        let mut plan = kafka_job(false);
        plan.config.checkpoint.interval = None;
        prepare(&mut plan).unwrap();
        assert_eq!(plan.config.checkpoint.interval, Some(DEFAULT_INTERVAL));
        let NodeKind::Source(s) = &plan.nodes[0].kind else {
            panic!()
        };
        assert_eq!(s.spec.options["scan.partition-assignment"], "group");
        assert_eq!(s.spec.options["properties.group.id"], "sluice-c1");
        let NodeKind::Sink(sink) = &plan.nodes[1].kind else {
            panic!()
        };
        assert_eq!(sink.options["properties.transaction.timeout.ms"], "10000");
    }

    #[test]
    fn a_partition_task_keeps_three_checkpoints_and_its_restore() {
        let mut plan = kafka_job(false);
        plan.config.checkpoint.retained = 1;
        plan.config.restore = Some(sluice_plan::RestoreFrom::Path("x/chk-00000002".into()));
        if let Some(c) = plan.config.cluster.as_mut() {
            c.partition_task = Some(sluice_plan::PartitionTask {
                partition: 3,
                token: "a-1".into(),
                owner: "a".into(),
            });
        }
        prepare(&mut plan).unwrap();
        assert_eq!(plan.config.checkpoint.retained, 3);
        assert!(plan.config.restore.is_some());
        // It reads the partition it is given, not what a group gives.
        let NodeKind::Source(s) = &plan.nodes[0].kind else {
            panic!()
        };
        assert!(!s.spec.options.contains_key("scan.partition-assignment"));
    }

    #[test]
    fn jobs_an_instance_cannot_run_yet_are_refused_with_the_reason() {
        let e = prepare(&mut kafka_job(true)).unwrap_err().to_string();
        assert!(
            e.contains("repartition topic") && e.contains("cluster `c1`"),
            "{e}"
        );
        let mut plan = kafka_job(false);
        if let NodeKind::Source(s) = &mut plan.nodes[0].kind {
            s.spec
                .options
                .insert("scan.partition-assignment".into(), "job".into());
        }
        let e = prepare(&mut plan).unwrap_err().to_string();
        assert!(e.contains("'group'"), "{e}");
        assert!(ClusterConfig::new("a b", None).is_err());
    }
}
