//! What a job reads and writes, and its dataflow graph, for the API and `sluice ps`.

use serde::Serialize;

/// What a job reads and writes: `topic → job → topic`.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Lineage {
    /// Sources: connector and what it reads (topic, pattern, path, table).
    pub reads: Vec<Endpoint>,
    /// Sinks: connector and what it writes.
    pub writes: Vec<Endpoint>,
}

/// One end of a job's lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// The connector (`kafka`, `filesystem`, …).
    pub connector: String,
    /// The topic, pattern, path or table it names (the connector when none).
    pub name: String,
}

pub(crate) fn endpoint(spec: &sluice_plan::ConnectorSpec) -> Endpoint {
    let name = ["topic", "topic-pattern", "path", "table"]
        .iter()
        .find_map(|k| spec.options.get(*k))
        .cloned()
        .unwrap_or_else(|| spec.connector.clone());
    Endpoint {
        connector: spec.connector.clone(),
        name,
    }
}

pub(crate) fn lineage(plan: &sluice_plan::JobPlan) -> Lineage {
    let mut l = Lineage::default();
    for n in &plan.nodes {
        match &n.kind {
            sluice_plan::NodeKind::Source(s) => l.reads.push(endpoint(&s.spec)),
            sluice_plan::NodeKind::Sink(s) => l.writes.push(endpoint(s)),
            _ => {}
        }
    }
    l.reads.dedup();
    l.writes.dedup();
    l
}

/// The job's dataflow graph.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Graph {
    /// Operators: id, name, parallelism.
    pub nodes: Vec<GraphNode>,
    /// Edges: from, to, how rows are distributed.
    pub edges: Vec<GraphEdge>,
}

/// One operator of the graph.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GraphNode {
    /// Node id.
    pub id: usize,
    /// Display name.
    pub name: String,
    /// Subtasks.
    pub parallelism: usize,
}

/// One edge of the graph.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GraphEdge {
    /// Upstream node.
    pub from: usize,
    /// Downstream node.
    pub to: usize,
    /// Forward, hash(keys), rebalance, broadcast.
    pub partitioning: String,
}
