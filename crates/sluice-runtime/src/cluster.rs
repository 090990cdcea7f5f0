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
//! Today an instance runs a job whose rows stay on the subtask that read them: one
//! Kafka source, operators without keyed state, Kafka sinks, forward edges only. Keyed
//! exchanges between instances (repartition topics) and state kept in shared storage
//! come later; such jobs are refused with the reason.

use std::collections::BTreeSet;
use std::time::Duration;

use datafusion_common::Column;
use datafusion_expr::Expr;
use sluice_plan::{
    ConnectorSpec, EventTime, JobPlan, NodeId, NodeKind, Partitioning, SourceNode, WatermarkSpec,
};
use sluice_types::{Result, SluiceError, TIMESTAMP_FIELD};

use crate::source::ConnectorRegistry;

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
                    "`{}` keeps keyed state: such a job runs as instances of a cluster with `sluice run --cluster` (which splits it at its keyed exchange), not as a server's job yet",
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
        .or_insert_with(|| format!("sluice-{}", cluster.name));
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

/// The column that carries event time through a repartition topic.
pub const EVENT_TIME_COLUMN: &str = "sluice_event_time";

/// A cluster job with keyed state, split at its keyed exchange into two jobs joined by a
/// repartition topic, as Kafka Streams splits a topology into sub-topologies:
///
/// ```text
///  front (every instance, a stateless cluster job):
///    Kafka source ─> stateless operators ─> repartition topic, keyed by the exchange's
///                                           keys, with watermark records
///  back (once per partition of the topic, on the instance the group gives it to):
///    topic partition p ─> keyed operators ─> Kafka sink
///      state checkpointed per partition; the offset each transaction commits names
///      the checkpoint taken with it, which the partition's next owner restores
/// ```
pub struct KeyedSplit {
    /// The front job (keeps the cluster's name and instance).
    pub front: JobPlan,
    /// The back job, before a partition is chosen ([`KeyedSplit::task`]).
    pub back: JobPlan,
    /// The repartition topic.
    pub topic: String,
    /// Its partitions: as many as the source's topic has (given by the caller).
    pub partitions: usize,
    /// The Kafka client options of the source (`properties.*` without the prefix) that
    /// say where the brokers are and how to reach them.
    pub client: std::collections::BTreeMap<String, String>,
    /// The client options for the group's members: the above, and the source's session
    /// timeout and heartbeat interval when it sets them.
    pub member_client: std::collections::BTreeMap<String, String>,
    /// The consumer group that assigns the topic's partitions to instances.
    pub assignment_group: String,
    /// The consumer group the back jobs' transactions commit their offsets to.
    pub offsets_group: String,
}

impl KeyedSplit {
    /// Where the back job for `partition` run as `token` keeps checkpoint `epoch`.
    pub fn checkpoint_location(&self, partition: i32, token: &str, epoch: u64) -> String {
        format!(
            "{}/{token}/{}",
            self.partition_checkpoints(partition),
            crate::checkpoint::checkpoint_dir("chk", epoch)
        )
    }

    /// The checkpoint directory the partition tasks share (each keeps its checkpoints
    /// under `CLUSTER/pPARTITION/TOKEN` in it).
    fn checkpoint_base(&self) -> String {
        self.back
            .config
            .checkpoint
            .dir
            .clone()
            .unwrap_or_else(|| format!("sluice-checkpoints/{}", self.back.name))
    }

    /// Where the runs of the back job for `partition` keep their checkpoints, each
    /// under its token.
    pub fn partition_checkpoints(&self, partition: i32) -> String {
        let name = self
            .back
            .config
            .cluster
            .as_ref()
            .map_or("", |c| c.name.as_str());
        format!(
            "{}/{name}/p{partition}",
            self.checkpoint_base().trim_end_matches('/')
        )
    }

    /// The back job for partition `partition`, as run `token` (unique per run): it reads
    /// that partition alone.
    pub fn task(&self, partition: i32, token: &str) -> Result<JobPlan> {
        let mut plan = self.back.clone();
        // Tasks of one process are jobs of their own, named apart.
        plan.name = format!("{}-p{partition}", self.back.name);
        plan.config.checkpoint.dir = Some(self.checkpoint_base());
        let cluster = plan.config.cluster.as_mut().ok_or_else(|| {
            SluiceError::internal("the back of a keyed cluster job without its cluster")
        })?;
        let owner = std::mem::replace(&mut cluster.instance, format!("p{partition}"));
        cluster.partition_task = Some(sluice_plan::PartitionTask {
            partition,
            token: token.to_string(),
            owner,
        });
        for n in &mut plan.nodes {
            if let NodeKind::Source(s) = &mut n.kind {
                s.spec
                    .options
                    .insert("scan.partitions".into(), partition.to_string());
            }
        }
        Ok(plan)
    }
}

/// The Kafka client options (without `properties.`) a repartition topic's readers and
/// writers take from the job's source `spec`: where the brokers are, how to reach them.
pub fn client_options(spec: &ConnectorSpec) -> std::collections::BTreeMap<String, String> {
    let wanted = |key: &str| {
        key == "bootstrap.servers"
            || key == "client.rack"
            || ["security.", "sasl.", "ssl."]
                .iter()
                .any(|p| key.starts_with(p))
    };
    spec.options
        .iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("properties.")?;
            wanted(k).then(|| (k.to_string(), v.clone()))
        })
        .collect()
}

/// Splits a cluster job with keyed state at its keyed exchange (`None`: a job without
/// one, which runs as it is). `partitions` is the number of partitions of the source's
/// topic (the repartition topic gets as many).
pub fn split_keyed(
    plan: &JobPlan,
    registry: &ConnectorRegistry,
    partitions: usize,
) -> Result<Option<KeyedSplit>> {
    let Some(cluster) = plan.config.cluster.clone() else {
        return Ok(None);
    };
    let hashes: Vec<_> = plan
        .edges
        .iter()
        .filter(|e| matches!(e.partitioning, Partitioning::Hash(_)))
        .collect();
    let refuse = |why: String| -> Result<Option<KeyedSplit>> {
        Err(SluiceError::user(format!(
            "this job cannot run as an instance of cluster `{}`: {why}",
            cluster.name
        )))
    };
    let exchange = match hashes.as_slice() {
        [] => return Ok(None),
        [e] => (*e).clone(),
        _ => {
            return refuse(format!(
                "it exchanges rows by key {} times; an instance splits a job at one keyed exchange (a repartition topic) today",
                hashes.len()
            ));
        }
    };
    let Partitioning::Hash(keys) = &exchange.partitioning else {
        unreachable!("invariant: filtered to hash edges");
    };
    if plan.config.checkpoint.delivery != sluice_plan::DeliveryGuarantee::ExactlyOnce {
        // Each partition's state goes with the transaction that commits its offset, and
        // watermarks speak for source partitions through the same link.
        return refuse(format!(
            "it keeps keyed state, which instances hand over through their exactly-once transactions; run it --delivery exactly-once (this job: {})",
            plan.config.checkpoint.delivery
        ));
    }
    // The front: everything upstream of the exchange.
    let mut front_nodes = BTreeSet::new();
    let mut todo = vec![exchange.from];
    while let Some(n) = todo.pop() {
        if front_nodes.insert(n) {
            todo.extend(plan.inputs(n).map(|e| e.from));
        }
    }
    for &n in &front_nodes {
        let node = &plan.nodes[n];
        if !node.kind.is_stateless() || plan.outputs(n).any(|e| e.side.is_some()) {
            return refuse(format!(
                "`{}` comes before its keyed exchange and is not a stateless operator",
                node.name
            ));
        }
        if let NodeKind::Source(s) = &node.kind
            && s.spec.connector != "kafka"
        {
            return refuse(format!(
                "its source `{}` is `{}`; instances share the partitions of a `kafka` source",
                node.name, s.spec.connector
            ));
        }
    }
    let sources: Vec<NodeId> = front_nodes
        .iter()
        .copied()
        .filter(|&n| matches!(plan.nodes[n].kind, NodeKind::Source(_)))
        .collect();
    let [source] = sources.as_slice() else {
        return refuse(format!(
            "it reads {} sources; an instance reads one Kafka source",
            sources.len()
        ));
    };
    let back_nodes: Vec<NodeId> = (0..plan.nodes.len())
        .filter(|n| !front_nodes.contains(n))
        .collect();
    let is_exchange = |e: &sluice_plan::PlanEdge| {
        e.from == exchange.from && e.to == exchange.to && e.partitioning == exchange.partitioning
    };
    for e in &plan.edges {
        let crosses = front_nodes.contains(&e.from) != front_nodes.contains(&e.to);
        if crosses && !is_exchange(e) {
            return refuse(format!(
                "rows go from `{}` to `{}` besides its keyed exchange",
                plan.nodes[e.from].name, plan.nodes[e.to].name
            ));
        }
        if !crosses && e.partitioning != Partitioning::Forward && !is_exchange(e) {
            return refuse(format!(
                "rows go from `{}` to `{}` by {}; an instance splits a job at one keyed exchange today",
                plan.nodes[e.from].name, plan.nodes[e.to].name, e.partitioning
            ));
        }
    }
    let mut sinks = 0;
    for &n in &back_nodes {
        match &plan.nodes[n].kind {
            NodeKind::Source(_) => {
                return refuse(format!(
                    "its source `{}` is read after a keyed exchange (joins across instances are not built yet)",
                    plan.nodes[n].name
                ));
            }
            NodeKind::Sink(spec) if spec.connector != "kafka" => {
                return refuse(format!(
                    "its sink `{}` is `{}`; an instance writes to Kafka, in transactions that carry the source's offsets",
                    plan.nodes[n].name, spec.connector
                ));
            }
            NodeKind::Sink(_) => sinks += 1,
            _ => {}
        }
    }
    if sinks != 1 {
        return refuse(format!(
            "it has {sinks} sinks; an instance writes one Kafka sink"
        ));
    }
    let NodeKind::Source(src) = &plan.nodes[*source].kind else {
        unreachable!("invariant: a source");
    };
    let client = client_options(&src.spec);
    let mut member_client = client.clone();
    for k in ["session.timeout.ms", "heartbeat.interval.ms"] {
        if let Some(v) = src.spec.options.get(&format!("properties.{k}")) {
            member_client.insert(k.to_string(), v.clone());
        }
    }
    // What crosses the topic: the columns the exchange carries, and event time.
    let mut unclustered = plan.clone();
    unclustered.config.cluster = None;
    let prepared = crate::job::PreparedJob::prepare(unclustered, registry)?;
    let schema = prepared.schema(exchange.from);
    // An updating stream (a changelog source) crosses with its rows' kinds.
    let updating = schema.field_with_name(sluice_types::ROW_KIND_FIELD).is_ok();
    let columns: Vec<arrow::datatypes::FieldRef> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != TIMESTAMP_FIELD && f.name() != sluice_types::ROW_KIND_FIELD)
        .cloned()
        .collect();
    if columns.iter().any(|f| f.name() == EVENT_TIME_COLUMN) {
        return refuse(format!(
            "a column is named `{EVENT_TIME_COLUMN}`, which carries event time through the repartition topic; rename it"
        ));
    }
    let column = |name: &str| Expr::Column(Column::new_unqualified(name));
    let topic = format!("sluice-{}-repartition-{}", cluster.name, exchange.to);
    let mut props = ConnectorSpec::new("kafka");
    for (k, v) in &client {
        props.options.insert(format!("properties.{k}"), v.clone());
    }
    props.options.insert("topic".into(), topic.clone());
    // Avro: compact, and cheap to write and read (no field names, no text numbers); an
    // updating stream as Debezium changes, which carry each row's kind (an update's
    // before and after cross as a retraction and an insertion, as Flink reads them).
    let format = if updating { "debezium-json" } else { "avro" };
    props.options.insert("format".into(), format.into());

    // Front: the same nodes, then the event time as a column, into the topic.
    let p = plan.nodes[*source].parallelism;
    let mut front = JobPlan::new(format!("{}-front", plan.name));
    front.config = plan.config.clone();
    let mut ids = std::collections::HashMap::new();
    for &n in &front_nodes {
        let node = &plan.nodes[n];
        ids.insert(n, front.add_node(node.name.clone(), p, node.kind.clone()));
    }
    for e in &plan.edges {
        if let (Some(&a), Some(&b)) = (ids.get(&e.from), ids.get(&e.to)) {
            front.add_edge(a, b, Partitioning::Forward);
        }
    }
    let mut exprs: Vec<Expr> = columns.iter().map(|f| column(f.name())).collect();
    exprs.push(column(TIMESTAMP_FIELD).alias(EVENT_TIME_COLUMN));
    let with_time = front.add_node("event time", p, NodeKind::Project { exprs });
    front.add_edge(ids[&exchange.from], with_time, Partitioning::Forward);
    let mut sink = props.clone();
    sink.options.insert("key.fields".into(), keys.join(";"));
    sink.options.insert("key.format".into(), "json".into());
    sink.options
        .insert("sink.watermark-records".into(), "true".into());
    let into = front.add_node(format!("repartition {topic}"), p, NodeKind::Sink(sink));
    front.add_edge(with_time, into, Partitioning::Forward);

    // Back: one partition of the topic, then the same nodes at parallelism 1.
    let mut back = JobPlan::new(format!("{}-back", plan.name));
    back.config = plan.config.clone();
    let mut fields = columns.clone();
    fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
        EVENT_TIME_COLUMN,
        arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
        false,
    )));
    let mut read = props;
    read.options.insert(
        "properties.group.id".into(),
        format!("sluice-{}-tasks", cluster.name),
    );
    read.options
        .insert("scan.watermark-records".into(), "true".into());
    read.options
        .insert("scan.startup.mode".into(), "group-offsets".into());
    read.schema = Some(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)));
    let from = back.add_node(
        format!("repartition {topic}"),
        1,
        NodeKind::Source(SourceNode {
            spec: read,
            event_time: EventTime::Column(EVENT_TIME_COLUMN.into()),
            watermark: WatermarkSpec::default(),
        }),
    );
    let without_time = back.add_node(
        "columns",
        1,
        NodeKind::Project {
            exprs: columns.iter().map(|f| column(f.name())).collect(),
        },
    );
    back.add_edge(from, without_time, Partitioning::Forward);
    let mut ids = std::collections::HashMap::new();
    for &n in &back_nodes {
        let node = &plan.nodes[n];
        ids.insert(n, back.add_node(node.name.clone(), 1, node.kind.clone()));
    }
    for e in &plan.edges {
        if let (Some(&a), Some(&b)) = (ids.get(&e.from), ids.get(&e.to)) {
            match &e.side {
                None => back.add_edge(a, b, Partitioning::Forward),
                Some(tag) => back.add_side_edge(a, tag, b, Partitioning::Forward),
            }
        }
    }
    back.add_edge(without_time, ids[&exchange.to], Partitioning::Forward);
    Ok(Some(KeyedSplit {
        front,
        back,
        topic,
        partitions,
        client,
        member_client,
        assignment_group: format!("sluice-{}-repartition", cluster.name),
        offsets_group: format!("sluice-{}-tasks", cluster.name),
    }))
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
    fn keyed_jobs_split_only_at_one_exchange_and_exactly_once() {
        let registry = ConnectorRegistry::default();
        // Stateless: nothing to split.
        assert!(
            split_keyed(&kafka_job(false), &registry, 4)
                .unwrap()
                .is_none()
        );
        let mut plan = kafka_job(true);
        plan.config.checkpoint.delivery = sluice_plan::DeliveryGuarantee::AtLeastOnce;
        let e = split_keyed(&plan, &registry, 4).err().unwrap().to_string();
        assert!(e.contains("--delivery exactly-once"), "{e}");
        plan.config.checkpoint.delivery = sluice_plan::DeliveryGuarantee::ExactlyOnce;
        // A second exchange by key.
        let extra = plan.add_node("again", 2, NodeKind::Sink(ConnectorSpec::new("kafka")));
        plan.add_edge(0, extra, Partitioning::Hash(vec!["other".into()]));
        let e = split_keyed(&plan, &registry, 4).err().unwrap().to_string();
        assert!(e.contains("2 times"), "{e}");
        // A file sink after the exchange.
        let mut plan = kafka_job(true);
        plan.config.checkpoint.delivery = sluice_plan::DeliveryGuarantee::ExactlyOnce;
        plan.nodes[1].kind = NodeKind::Sink(ConnectorSpec::new("filesystem"));
        let e = split_keyed(&plan, &registry, 4).err().unwrap().to_string();
        assert!(e.contains("`filesystem`"), "{e}");
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
