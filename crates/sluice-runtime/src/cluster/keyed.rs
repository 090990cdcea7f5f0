//! A cluster job with keyed state, split at its keyed exchanges into jobs joined by
//! repartition topics, as Kafka Streams splits a topology into sub-topologies:
//!
//! ```text
//!  fronts (every instance; one per Kafka source, each a stateless cluster job):
//!    Kafka source ─> stateless operators ─> repartition topic, keyed by the exchange's
//!                                           keys, with watermark records
//!  keyed stages (once per partition p, on the instance the stage's group gives p to):
//!    partition p of each input topic ─> keyed operators ─> the Kafka sink, or the
//!                                                          next stage's topic
//!      state checkpointed per partition; the offsets each transaction commits name
//!      the checkpoint taken with it, which the partition's next owner restores
//! ```
//!
//! A stage's input topics all have as many partitions (the most any upstream has) and
//! carry their exchange's keys alike, so partition p of each holds the same keys: the
//! inputs of a join are co-partitioned by construction, and topics left by an earlier
//! run with other counts are refused at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, TimeUnit};
use datafusion_common::Column;
use datafusion_expr::Expr;
use sluice_plan::{
    ConnectorSpec, EventTime, JobPlan, NodeId, NodeKind, Partitioning, PlanEdge, SourceNode,
    WatermarkSpec,
};
use sluice_types::{Result, SluiceError, TIMESTAMP_FIELD};

use crate::source::ConnectorRegistry;

/// The column that carries event time through a repartition topic.
pub const EVENT_TIME_COLUMN: &str = "sluice_event_time";

/// A cluster job with keyed state, split (see the module's text).
pub struct KeyedSplit {
    /// The fronts, one per Kafka source: the first keeps the cluster's name (its group
    /// is `sluice-NAME`), the others are named `NAME-inK`.
    pub fronts: Vec<JobPlan>,
    /// The keyed stages, upstream first.
    pub stages: Vec<KeyedStage>,
    /// Every repartition topic with its partitions.
    pub topics: Vec<(String, usize)>,
    /// The Kafka client options of the sources (`properties.*` without the prefix)
    /// that say where the brokers are and how to reach them.
    pub client: BTreeMap<String, String>,
    /// The client options for the groups' members: the above, and the first source's
    /// session timeout and heartbeat interval when it sets them.
    pub member_client: BTreeMap<String, String>,
    /// The consumer group every stage's transactions commit their offsets to.
    pub offsets_group: String,
}

/// One keyed stage: its job, run once per partition of its input topics.
pub struct KeyedStage {
    /// Its place among the stages (0 first).
    pub index: usize,
    /// The stage's job, before a partition is chosen ([`KeyedStage::task`]).
    pub back: JobPlan,
    /// Its input topics: partition p of each is read by task p.
    pub inputs: Vec<String>,
    /// Their partitions.
    pub partitions: usize,
    /// The consumer group that gives the partitions of the first input to instances.
    pub assignment_group: String,
    /// The member name of instance `instance` in that group.
    member_suffix: String,
    cluster: String,
}

impl KeyedStage {
    /// The first input: its partitions name the tasks.
    pub fn topic(&self) -> &str {
        &self.inputs[0]
    }

    /// This instance's member in the stage's assignment group.
    pub fn member(&self, instance: &str) -> String {
        format!("sluice-{}-{instance}-{}", self.cluster, self.member_suffix)
    }

    /// The name of task `partition` (a job of its own).
    pub fn task_name(&self, partition: i32) -> String {
        format!("{}-p{partition}", self.back.name)
    }

    /// What names the task of `partition` in transactional ids and checkpoint paths.
    fn task_id(&self, partition: i32) -> String {
        match self.index {
            0 => format!("p{partition}"),
            s => format!("s{s}p{partition}"),
        }
    }

    /// Where the task for `partition` run as `token` keeps checkpoint `epoch`.
    pub fn checkpoint_location(&self, partition: i32, token: &str, epoch: u64) -> String {
        format!(
            "{}/{token}/{}",
            self.partition_checkpoints(partition),
            crate::checkpoint::checkpoint_dir("chk", epoch)
        )
    }

    /// The checkpoint directory the tasks share.
    fn checkpoint_base(&self) -> String {
        self.back
            .config
            .checkpoint
            .dir
            .clone()
            .unwrap_or_else(|| format!("sluice-checkpoints/{}", self.back.name))
    }

    /// Where the runs of the task for `partition` keep their checkpoints, each under
    /// its token: `<dir>/NAME/pP` (`sPpP` in later stages).
    pub fn partition_checkpoints(&self, partition: i32) -> String {
        format!(
            "{}/{}/{}",
            self.checkpoint_base().trim_end_matches('/'),
            self.cluster,
            self.task_id(partition)
        )
    }

    /// The task for partition `partition`, as run `token` (unique per run): it reads
    /// that partition of each input alone, and writes watermark records as writer
    /// `partition` of the stage's partitions.
    pub fn task(&self, partition: i32, token: &str) -> Result<JobPlan> {
        let mut plan = self.back.clone();
        // Tasks of one process are jobs of their own, named apart.
        plan.name = self.task_name(partition);
        plan.config.checkpoint.dir = Some(self.checkpoint_base());
        let id = self.task_id(partition);
        let cluster = plan.config.cluster.as_mut().ok_or_else(|| {
            SluiceError::internal("the back of a keyed cluster job without its cluster")
        })?;
        let owner = std::mem::replace(&mut cluster.instance, id);
        cluster.partition_task = Some(sluice_plan::PartitionTask {
            partition,
            token: token.to_string(),
            owner,
        });
        for n in &mut plan.nodes {
            match &mut n.kind {
                NodeKind::Source(s) => {
                    s.spec
                        .options
                        .insert("scan.partitions".into(), partition.to_string());
                }
                NodeKind::Sink(s)
                    if s.options.get("sink.watermark-records").map(String::as_str)
                        == Some("true") =>
                {
                    s.options.insert(
                        "sink.watermark-records.writer".into(),
                        format!("{partition}/{}", self.partitions),
                    );
                }
                _ => {}
            }
        }
        Ok(plan)
    }
}

/// The Kafka client options (without `properties.`) a repartition topic's readers and
/// writers take from the job's source `spec`: where the brokers are, how to reach them.
pub fn client_options(spec: &ConnectorSpec) -> BTreeMap<String, String> {
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

/// What crosses one repartition topic.
struct Exchange {
    topic: String,
    /// The columns as the job names them.
    columns: Vec<FieldRef>,
    /// Their names in the topic: the exchange's keys `k0, k1, …` (so that the inputs of
    /// a join key their records alike), the others `c0, c1, …` (Avro names).
    renamed: Vec<String>,
    keys: usize,
    /// The connector options of the topic, for its writer and its reader.
    spec: ConnectorSpec,
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

impl Exchange {
    /// Into the topic: the columns renamed and the event time, written by key with
    /// watermark records, at parallelism `p`. Returns the sink.
    fn write(&self, job: &mut JobPlan, from: NodeId, p: usize) -> NodeId {
        let mut exprs: Vec<Expr> = self
            .columns
            .iter()
            .zip(&self.renamed)
            .map(|(f, to)| column(f.name()).alias(to))
            .collect();
        exprs.push(column(TIMESTAMP_FIELD).alias(EVENT_TIME_COLUMN));
        let with_time = job.add_node("event time", p, NodeKind::Project { exprs });
        job.add_edge(from, with_time, Partitioning::Forward);
        let mut sink = self.spec.clone();
        let keys: Vec<String> = (0..self.keys).map(|i| format!("k{i}")).collect();
        sink.options.insert("key.fields".into(), keys.join(";"));
        sink.options.insert("key.format".into(), "json".into());
        sink.options
            .insert("sink.watermark-records".into(), "true".into());
        let into = job.add_node(
            format!("repartition {}", self.topic),
            p,
            NodeKind::Sink(sink),
        );
        job.add_edge(with_time, into, Partitioning::Forward);
        into
    }

    /// Out of the topic (one partition, chosen per task): the columns under their
    /// names again, event time from the topic's column and watermark records. Returns
    /// the node whose output is the exchange's rows.
    fn read(&self, job: &mut JobPlan, offsets_group: &str) -> NodeId {
        let mut fields: Vec<FieldRef> = self
            .columns
            .iter()
            .zip(&self.renamed)
            .map(|(f, to)| Arc::new(f.as_ref().clone().with_name(to)))
            .collect();
        fields.push(Arc::new(Field::new(
            EVENT_TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )));
        let mut read = self.spec.clone();
        read.options
            .insert("properties.group.id".into(), offsets_group.to_string());
        read.options
            .insert("scan.watermark-records".into(), "true".into());
        read.options
            .insert("scan.startup.mode".into(), "group-offsets".into());
        read.schema = Some(Arc::new(Schema::new(fields)));
        let from = job.add_node(
            format!("repartition {}", self.topic),
            1,
            NodeKind::Source(SourceNode {
                spec: read,
                event_time: EventTime::Column(EVENT_TIME_COLUMN.into()),
                watermark: WatermarkSpec::default(),
            }),
        );
        let exprs = self
            .columns
            .iter()
            .zip(&self.renamed)
            .map(|(f, from)| column(from).alias(f.name()))
            .collect();
        let named = job.add_node("columns", 1, NodeKind::Project { exprs });
        job.add_edge(from, named, Partitioning::Forward);
        named
    }
}

/// Splits a cluster job with keyed state at its keyed exchanges (`None`: a job without
/// one, which runs as it is). `partitions` gives each Kafka source node's topic's
/// partition count.
pub fn split_keyed(
    plan: &JobPlan,
    registry: &ConnectorRegistry,
    partitions: &BTreeMap<NodeId, usize>,
) -> Result<Option<KeyedSplit>> {
    let Some(cluster) = plan.config.cluster.clone() else {
        return Ok(None);
    };
    let refuse = |why: String| -> Result<Option<KeyedSplit>> {
        Err(SluiceError::user(format!(
            "this job cannot run as an instance of cluster `{}`: {why}",
            cluster.name
        )))
    };
    let is_hash = |e: &PlanEdge| matches!(e.partitioning, Partitioning::Hash(_));
    let hashes: Vec<&PlanEdge> = plan.edges.iter().filter(|e| is_hash(e)).collect();
    if hashes.is_empty() {
        return Ok(None);
    }
    if plan.config.checkpoint.delivery != sluice_plan::DeliveryGuarantee::ExactlyOnce {
        // Each partition's state goes with the transaction that commits its offset, and
        // watermarks speak for source partitions through the same link.
        return refuse(format!(
            "it keeps keyed state, which instances hand over through their exactly-once transactions; run it --delivery exactly-once (this job: {})",
            plan.config.checkpoint.delivery
        ));
    }
    for e in &plan.edges {
        let (from, to) = (&plan.nodes[e.from].name, &plan.nodes[e.to].name);
        match &e.partitioning {
            Partitioning::Forward => {}
            Partitioning::Hash(_) if e.side.is_none() => {}
            Partitioning::Hash(_) => {
                return refuse(format!(
                    "the side output `{}` of `{from}` goes to `{to}` by key; only main outputs cross a repartition topic",
                    e.side.as_deref().unwrap_or_default()
                ));
            }
            other => {
                return refuse(format!(
                    "rows go from `{from}` to `{to}` by {other}; between instances rows change hands only by key, through repartition topics"
                ));
            }
        }
    }
    // Stages: what forward edges connect.
    let mut stage_of: Vec<usize> = (0..plan.nodes.len()).collect();
    fn root(s: &mut [usize], mut n: usize) -> usize {
        while s[n] != n {
            s[n] = s[s[n]];
            n = s[n];
        }
        n
    }
    for e in plan.edges.iter().filter(|e| !is_hash(e)) {
        let (a, b) = (root(&mut stage_of, e.from), root(&mut stage_of, e.to));
        stage_of[a.max(b)] = a.min(b);
    }
    // The stages in topological order, and each node's stage.
    let mut groups: Vec<(usize, Vec<NodeId>)> = Vec::new();
    let mut group_of = vec![0; plan.nodes.len()];
    for n in plan.topological_order()? {
        let r = root(&mut stage_of, n);
        group_of[n] = match groups.iter().position(|(g, _)| *g == r) {
            Some(g) => g,
            None => {
                groups.push((r, Vec::new()));
                groups.len() - 1
            }
        };
        groups[group_of[n]].1.push(n);
    }
    let mut fronts_at: Vec<usize> = Vec::new();
    let mut keyed_at: Vec<usize> = Vec::new();
    for (g, (_, nodes)) in groups.iter().enumerate() {
        let sources: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|&n| matches!(plan.nodes[n].kind, NodeKind::Source(_)))
            .collect();
        let outs = hashes.iter().filter(|e| nodes.contains(&e.from)).count();
        let sinks = nodes
            .iter()
            .filter(|&&n| matches!(plan.nodes[n].kind, NodeKind::Sink(_)))
            .count();
        for &n in nodes {
            let node = &plan.nodes[n];
            match &node.kind {
                NodeKind::Source(s) if s.spec.connector != "kafka" => {
                    return refuse(format!(
                        "its source `{}` is `{}`; instances share the partitions of a `kafka` source",
                        node.name, s.spec.connector
                    ));
                }
                NodeKind::Sink(spec) if spec.connector != "kafka" => {
                    return refuse(format!(
                        "its sink `{}` is `{}`; an instance writes to Kafka, in transactions that carry the source's offsets",
                        node.name, spec.connector
                    ));
                }
                _ => {}
            }
        }
        match sources.as_slice() {
            [] => {
                if outs + sinks != 1 {
                    return refuse(format!(
                        "its keyed part after `{}` writes {sinks} sinks and {outs} keyed exchanges; each keyed part of a job writes one Kafka sink or one exchange by key",
                        plan.nodes[nodes[0]].name
                    ));
                }
                keyed_at.push(g);
            }
            [s] => {
                if sinks != 0 || outs != 1 {
                    return refuse(format!(
                        "the rows of source `{}` go to {sinks} sinks and {outs} keyed exchanges before any keyed state; an instance sends each source's rows to one keyed exchange",
                        plan.nodes[*s].name
                    ));
                }
                if let Some(&n) = nodes.iter().find(|&&n| {
                    !plan.nodes[n].kind.is_stateless() || plan.outputs(n).any(|e| e.side.is_some())
                }) {
                    return refuse(format!(
                        "`{}` comes before its keyed exchange and is not a stateless operator",
                        plan.nodes[n].name
                    ));
                }
                fronts_at.push(g);
            }
            many => {
                return refuse(format!(
                    "sources {} are read together before any keyed exchange (a union); an instance reads each Kafka source on its own",
                    many.iter()
                        .map(|&n| format!("`{}`", plan.nodes[n].name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    let external_sinks = plan
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::Sink(_)))
        .count();
    if external_sinks != 1 {
        return refuse(format!(
            "it has {external_sinks} sinks; an instance writes one Kafka sink"
        ));
    }

    let front_sources: Vec<NodeId> = fronts_at
        .iter()
        .map(|&g| {
            groups[g]
                .1
                .iter()
                .copied()
                .find(|&n| matches!(plan.nodes[n].kind, NodeKind::Source(_)))
                .expect("invariant: a front has its source")
        })
        .collect();
    let source_spec = |n: NodeId| match &plan.nodes[n].kind {
        NodeKind::Source(s) => &s.spec,
        _ => unreachable!("invariant: a source node"),
    };
    let first = source_spec(front_sources[0]);
    let client = client_options(first);
    for &s in &front_sources[1..] {
        if client_options(source_spec(s)) != client {
            return refuse(format!(
                "its sources `{}` and `{}` are on different Kafka clusters (or reach them differently); an instance's repartition topics and commits live on one",
                plan.nodes[front_sources[0]].name, plan.nodes[s].name
            ));
        }
    }
    let mut member_client = client.clone();
    for k in ["session.timeout.ms", "heartbeat.interval.ms"] {
        if let Some(v) = first.options.get(&format!("properties.{k}")) {
            member_client.insert(k.to_string(), v.clone());
        }
    }

    // The schemas of what crosses, from the job as one process would run it.
    let mut unclustered = plan.clone();
    unclustered.config.cluster = None;
    let prepared = crate::job::PreparedJob::prepare(unclustered, registry)?;

    // Partitions: a front's exchange has its source's; a stage's inputs all have the
    // most of their upstreams' (co-partitioned), and its output as many.
    let mut group_partitions: HashMap<usize, usize> = HashMap::new();
    for (&g, &s) in fronts_at.iter().zip(&front_sources) {
        let n = partitions.get(&s).copied().unwrap_or(0);
        if n == 0 {
            return refuse(format!(
                "the topic of source `{}` has no partitions",
                plan.nodes[s].name
            ));
        }
        group_partitions.insert(g, n);
    }
    for &g in &keyed_at {
        let mut n = 0;
        for e in hashes.iter().filter(|e| groups[g].1.contains(&e.to)) {
            let up = group_of[e.from];
            n = n.max(group_partitions.get(&up).copied().unwrap_or(0));
        }
        group_partitions.insert(g, n);
    }

    // One topic per exchange: `sluice-NAME-repartition-TO` (`-TO-I` for the I-th of
    // several into one operator, a join).
    let mut exchanges: Vec<Exchange> = Vec::new();
    for e in &hashes {
        let Partitioning::Hash(keys) = &e.partitioning else {
            unreachable!("invariant: hash edges");
        };
        let into: Vec<&&PlanEdge> = hashes.iter().filter(|x| x.to == e.to).collect();
        let topic = match into.iter().position(|x| std::ptr::eq(**x, *e)) {
            Some(i) if into.len() > 1 => {
                format!("sluice-{}-repartition-{}-{i}", cluster.name, e.to)
            }
            _ => format!("sluice-{}-repartition-{}", cluster.name, e.to),
        };
        let schema = prepared.schema(e.from);
        let updating = schema.field_with_name(sluice_types::ROW_KIND_FIELD).is_ok();
        let columns: Vec<FieldRef> = schema
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
        let mut renamed = Vec::with_capacity(columns.len());
        for (i, f) in columns.iter().enumerate() {
            renamed.push(match keys.iter().position(|k| k == f.name()) {
                Some(k) => format!("k{k}"),
                None => format!("c{i}"),
            });
        }
        for k in keys {
            if !columns.iter().any(|f| f.name() == k) {
                return refuse(format!(
                    "the key `{k}` of the exchange from `{}` is not one of its columns",
                    plan.nodes[e.from].name
                ));
            }
        }
        let mut spec = ConnectorSpec::new("kafka");
        for (k, v) in &client {
            spec.options.insert(format!("properties.{k}"), v.clone());
        }
        spec.options.insert("topic".into(), topic.clone());
        // Avro: compact, and cheap to write and read; an updating stream as Debezium
        // changes, which carry each row's kind (an update's before and after cross as a
        // retraction and an insertion, as Flink reads them).
        let format = if updating { "debezium-json" } else { "avro" };
        spec.options.insert("format".into(), format.into());
        exchanges.push(Exchange {
            topic,
            columns,
            renamed,
            keys: keys.len(),
            spec,
        });
    }
    let exchange_of = |e: &PlanEdge| {
        hashes
            .iter()
            .position(|x| std::ptr::eq(*x, e))
            .expect("invariant: a hash edge")
    };
    let offsets_group = format!("sluice-{}-tasks", cluster.name);

    // Fronts: the source's nodes at its parallelism, then the topic.
    let mut fronts = Vec::new();
    for (k, (&g, &s)) in fronts_at.iter().zip(&front_sources).enumerate() {
        let p = plan.nodes[s].parallelism;
        let mut front = JobPlan::new(match k {
            0 => format!("{}-front", plan.name),
            k => format!("{}-front{k}", plan.name),
        });
        front.config = plan.config.clone();
        if k > 0
            && let Some(c) = front.config.cluster.as_mut()
        {
            // A group, members and transactional ids of its own.
            c.name = format!("{}-in{k}", cluster.name);
        }
        let mut ids = HashMap::new();
        for &n in &groups[g].1 {
            let node = &plan.nodes[n];
            ids.insert(n, front.add_node(node.name.clone(), p, node.kind.clone()));
        }
        for e in &plan.edges {
            match (ids.get(&e.from), ids.get(&e.to)) {
                (Some(&a), Some(&b)) => front.add_edge(a, b, Partitioning::Forward),
                (Some(&a), None) => {
                    exchanges[exchange_of(e)].write(&mut front, a, p);
                }
                _ => {}
            }
        }
        fronts.push(front);
    }
    let groups_of_fronts: BTreeSet<String> = fronts
        .iter()
        .zip(&front_sources)
        .map(|(f, &s)| {
            source_spec(s)
                .options
                .get("properties.group.id")
                .cloned()
                .unwrap_or_else(|| {
                    f.config
                        .cluster
                        .as_ref()
                        .map_or_else(String::new, |c| c.group())
                })
        })
        .collect();
    if groups_of_fronts.len() != fronts.len() {
        return refuse(
            "its sources set the same 'properties.group.id'; each source is read by a consumer group of its own (leave it unset: `sluice-NAME`, `sluice-NAME-in1`, …)".into(),
        );
    }

    // Keyed stages: their nodes at parallelism 1, each input read from its topic (in the
    // order the operator takes its inputs), into the sink or the next topic.
    let mut stages = Vec::new();
    for (index, &g) in keyed_at.iter().enumerate() {
        let mut back = JobPlan::new(match index {
            0 => format!("{}-back", plan.name),
            s => format!("{}-back{s}", plan.name),
        });
        back.config = plan.config.clone();
        let nodes = &groups[g].1;
        let mut ids = HashMap::new();
        for &n in nodes {
            let node = &plan.nodes[n];
            ids.insert(n, back.add_node(node.name.clone(), 1, node.kind.clone()));
        }
        let mut inputs = Vec::new();
        for e in &plan.edges {
            match (ids.get(&e.from), ids.get(&e.to)) {
                (Some(&a), Some(&b)) => match &e.side {
                    None => back.add_edge(a, b, Partitioning::Forward),
                    Some(tag) => back.add_side_edge(a, tag, b, Partitioning::Forward),
                },
                (None, Some(&b)) => {
                    let x = &exchanges[exchange_of(e)];
                    let read = x.read(&mut back, &offsets_group);
                    back.add_edge(read, b, Partitioning::Forward);
                    inputs.push(x.topic.clone());
                }
                (Some(&a), None) => {
                    exchanges[exchange_of(e)].write(&mut back, a, 1);
                }
                (None, None) => {}
            }
        }
        stages.push(KeyedStage {
            index,
            back,
            inputs,
            partitions: group_partitions[&g],
            assignment_group: match index {
                0 => format!("sluice-{}-repartition", cluster.name),
                s => format!("sluice-{}-repartition-s{s}", cluster.name),
            },
            member_suffix: match index {
                0 => "tasks".into(),
                s => format!("tasks-s{s}"),
            },
            cluster: cluster.name.clone(),
        });
    }
    let mut topics = Vec::new();
    for (x, e) in exchanges.iter().zip(&hashes) {
        let g = group_of[e.to];
        topics.push((x.topic.clone(), group_partitions[&g]));
    }
    Ok(Some(KeyedSplit {
        fronts,
        stages,
        topics,
        client,
        member_client,
        offsets_group,
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_plan::{ClusterConfig, ConnectorSpec, EventTime, SourceNode, WatermarkSpec};

    use super::*;

    fn source(plan: &mut JobPlan, name: &str, topic: &str) -> NodeId {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]);
        let mut spec = ConnectorSpec::new("kafka")
            .with_option("topic", topic)
            .with_option("properties.bootstrap.servers", "127.0.0.1:1")
            .with_option("format", "json")
            .with_option("scan.partitions", "0");
        spec.schema = Some(Arc::new(schema));
        plan.add_node(
            name,
            2,
            NodeKind::Source(SourceNode {
                spec,
                event_time: EventTime::Ingestion,
                watermark: WatermarkSpec::default(),
            }),
        )
    }

    fn sink(plan: &mut JobPlan, connector: &str) -> NodeId {
        plan.add_node(
            "sink",
            2,
            NodeKind::Sink(
                ConnectorSpec::new(connector)
                    .with_option("topic", "out")
                    .with_option("properties.bootstrap.servers", "127.0.0.1:1")
                    .with_option("format", "json"),
            ),
        )
    }

    fn clustered(mut plan: JobPlan) -> JobPlan {
        plan.config.checkpoint.interval = Some(Duration::from_secs(1));
        plan.config.checkpoint.delivery = sluice_plan::DeliveryGuarantee::ExactlyOnce;
        plan.config.cluster = Some(ClusterConfig::new("c1", Some("a".into())).unwrap());
        plan
    }

    fn parts(n: &[(NodeId, usize)]) -> BTreeMap<NodeId, usize> {
        n.iter().copied().collect()
    }

    #[test]
    fn a_stateless_job_is_not_split_and_keyed_state_needs_exactly_once() {
        let registry = ConnectorRegistry::default();
        let mut plan = JobPlan::new("j");
        let s = source(&mut plan, "src", "in");
        let k = sink(&mut plan, "kafka");
        plan.add_edge(s, k, Partitioning::Forward);
        let plan = clustered(plan);
        assert!(
            split_keyed(&plan, &registry, &parts(&[(s, 4)]))
                .unwrap()
                .is_none()
        );
        let mut plan = plan;
        plan.edges[0].partitioning = Partitioning::Hash(vec!["id".into()]);
        plan.config.checkpoint.delivery = sluice_plan::DeliveryGuarantee::AtLeastOnce;
        let e = split_keyed(&plan, &registry, &parts(&[(s, 4)]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--delivery exactly-once"), "{e}");
        plan.config.checkpoint.delivery = sluice_plan::DeliveryGuarantee::ExactlyOnce;
        plan.nodes[k].kind = NodeKind::Sink(ConnectorSpec::new("filesystem"));
        let e = split_keyed(&plan, &registry, &parts(&[(s, 4)]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`filesystem`"), "{e}");
    }
}
