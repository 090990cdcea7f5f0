//! Turns a [`JobPlan`] into running tasks and supervises them.
//!
//! ```text
//!  JobPlan ──validate──> prepare every node against its input schema (bad config fails here)
//!          ──chain────> fuse nodes joined by a FORWARD edge with equal parallelism,
//!                       one output and one input, into one task
//!          ──wire─────> one bounded channel per (upstream subtask, downstream subtask)
//!          ──spawn────> one tokio task per chain per subtask
//!  JobHandle::wait ──> Ok when every task ended cleanly; the first root-cause error otherwise
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_plan::{EventTime, JobPlan, NodeId, NodeKind, Partitioning};
use sluice_types::{Result, SluiceError, TIMESTAMP_FIELD, TaskInfo, timestamp_field};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::dead_letter::{DeadLetterQueue, FileDeadLetters, LogDeadLetters};
use crate::metrics::{JobMetrics, OperatorMetrics, SubtaskMetrics};
use crate::operator::OperatorContext;
use crate::operators::{self, OperatorFactory};
use crate::partition::{DOWNSTREAM_GONE, OutputEdge, Outputs, Router};
use crate::source::{ConnectorRegistry, PreparedSource, assign_splits};
use crate::task::{
    Chain, EventTimeColumn, Inputs, Slot, SourceControl, SourceTask, run_operator_task,
    run_source_task,
};

enum PreparedNode {
    Source {
        source: Arc<dyn PreparedSource>,
        event_time: EventTimeColumn,
        out_of_orderness_ms: i64,
        idle_timeout: Option<std::time::Duration>,
    },
    Operator(OperatorFactory),
}

/// A plan checked and prepared: schemas known, connectors configured, chains formed.
pub struct PreparedJob {
    plan: JobPlan,
    nodes: Vec<PreparedNode>,
    schemas: Vec<SchemaRef>,
    input_schemas: Vec<SchemaRef>,
    /// Per node, the schema of its side output (late rows), if it has one.
    side_schemas: Vec<SchemaRef>,
    chains: Vec<Vec<NodeId>>,
}

fn source_schema(
    source: &dyn PreparedSource,
    node: &sluice_plan::SourceNode,
) -> Result<(SchemaRef, EventTimeColumn)> {
    let schema = source.schema()?;
    if schema.field_with_name(TIMESTAMP_FIELD).is_ok() {
        return Err(SluiceError::user(format!(
            "source column `{TIMESTAMP_FIELD}` clashes with the event-time column Sluice adds; rename it"
        )));
    }
    let column = match &node.event_time {
        EventTime::Ingestion => None,
        EventTime::ProcessingTime => {
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(timestamp_field()));
            return Ok((
                Arc::new(Schema::new(fields)),
                EventTimeColumn::ProcessingTime,
            ));
        }
        EventTime::ConnectorDefault => source.default_event_time(),
        EventTime::Column(c) => Some(c.clone()),
    };
    let event_time = match column {
        None => EventTimeColumn::Ingestion,
        Some(c) => {
            let i = schema.index_of(&c).map_err(|_| {
                SluiceError::user(format!(
                    "event-time column `{c}` is not a column of the source `{}`",
                    node.spec.connector
                ))
            })?;
            match schema.field(i).data_type() {
                DataType::Timestamp(_, _) | DataType::Int64 | DataType::Date64 => {}
                other => {
                    return Err(SluiceError::user(format!(
                        "event-time column `{c}` has type {other}; it must be a timestamp or BIGINT epoch milliseconds"
                    )));
                }
            }
            EventTimeColumn::Column(i)
        }
    };
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(timestamp_field()));
    Ok((Arc::new(Schema::new(fields)), event_time))
}

impl PreparedJob {
    /// Validates the plan and prepares every node; all configuration errors surface here.
    pub fn prepare(plan: JobPlan, registry: &ConnectorRegistry) -> Result<Self> {
        plan.validate()?;
        for e in &plan.edges {
            if e.partitioning == Partitioning::Forward
                && plan.nodes[e.from].parallelism != plan.nodes[e.to].parallelism
            {
                return Err(SluiceError::user(format!(
                    "forward edge `{}` -> `{}` joins different parallelisms ({} and {}); use rebalance",
                    plan.nodes[e.from].name,
                    plan.nodes[e.to].name,
                    plan.nodes[e.from].parallelism,
                    plan.nodes[e.to].parallelism
                )));
            }
        }
        let order = plan.topological_order()?;
        let n = plan.nodes.len();
        let empty: SchemaRef = Arc::new(Schema::new(vec![timestamp_field()]));
        let mut schemas: Vec<SchemaRef> = vec![Arc::clone(&empty); n];
        let mut input_schemas: Vec<SchemaRef> = vec![Arc::clone(&empty); n];
        let mut side_schemas: Vec<SchemaRef> = vec![Arc::clone(&empty); n];
        let mut prepared: Vec<Option<PreparedNode>> = (0..n).map(|_| None).collect();
        for &id in &order {
            let node = &plan.nodes[id];
            let ctx = |e: SluiceError| e.in_operator(&node.name);
            match &node.kind {
                NodeKind::Source(s) => {
                    let source = registry
                        .source(&s.spec.connector)
                        .map_err(ctx)?
                        .prepare(&s.spec)
                        .map_err(ctx)?;
                    let (schema, event_time) = source_schema(source.as_ref(), s).map_err(ctx)?;
                    input_schemas[id] = Arc::clone(&schema);
                    schemas[id] = schema;
                    prepared[id] = Some(PreparedNode::Source {
                        source,
                        event_time,
                        out_of_orderness_ms: s.watermark.max_out_of_orderness.as_millis() as i64,
                        idle_timeout: s.watermark.idle_timeout,
                    });
                }
                kind => {
                    let mut inputs: Vec<&SchemaRef> = Vec::new();
                    for e in plan.inputs(id) {
                        inputs.push(match &e.side {
                            None => &schemas[e.from],
                            Some(tag) => {
                                let from = &plan.nodes[e.from];
                                if !from.kind.side_outputs().contains(&tag.as_str()) {
                                    return Err(ctx(SluiceError::user(format!(
                                        "`{}` has no side output `{tag}`",
                                        from.name
                                    ))));
                                }
                                &side_schemas[e.from]
                            }
                        });
                    }
                    let input = Arc::clone(inputs[0]);
                    for other in &inputs[1..] {
                        if other.fields() != input.fields() {
                            return Err(ctx(SluiceError::user(format!(
                                "inputs have different schemas: {input} and {other}"
                            ))));
                        }
                    }
                    let p = operators::prepare(kind, &input, registry).map_err(ctx)?;
                    if !kind.side_outputs().is_empty() {
                        side_schemas[id] =
                            operators::window::late_output_schema(&input).map_err(ctx)?;
                    }
                    input_schemas[id] = input;
                    schemas[id] = p.output_schema;
                    prepared[id] = Some(PreparedNode::Operator(p.factory));
                }
            }
            for e in plan.outputs(id) {
                if let Partitioning::Hash(keys) = &e.partitioning {
                    let out_schema = match e.side {
                        None => &schemas[id],
                        Some(_) => &side_schemas[id],
                    };
                    for k in keys {
                        if out_schema.index_of(k).is_err() {
                            return Err(SluiceError::user(format!(
                                "key column `{k}` is not in the output of `{}`",
                                node.name
                            )));
                        }
                    }
                }
            }
        }
        // Chains: follow single forward edges between equal parallelism.
        let mut chained_into = vec![false; n];
        let mut chains = Vec::new();
        for &id in &order {
            if chained_into[id] {
                continue;
            }
            let mut chain = vec![id];
            let mut cur = id;
            loop {
                let outs: Vec<_> = plan.outputs(cur).collect();
                if outs.len() != 1 {
                    break;
                }
                let e = outs[0];
                let next = e.to;
                if e.partitioning != Partitioning::Forward
                    || e.side.is_some()
                    || plan.inputs(next).count() != 1
                    || plan.nodes[next].parallelism != plan.nodes[cur].parallelism
                {
                    break;
                }
                chained_into[next] = true;
                chain.push(next);
                cur = next;
            }
            chains.push(chain);
        }
        let nodes = prepared
            .into_iter()
            .map(|p| p.expect("invariant: every node prepared in topological order"))
            .collect();
        Ok(Self {
            plan,
            nodes,
            schemas,
            input_schemas,
            side_schemas,
            chains,
        })
    }

    /// The output schema of a node.
    pub fn schema(&self, node: NodeId) -> &SchemaRef {
        &self.schemas[node]
    }

    /// The plan.
    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }

    /// The chains (tasks) the job will run: node ids fused into one task each.
    pub fn chains(&self) -> &[Vec<NodeId>] {
        &self.chains
    }

    /// A text rendering of the dataflow: tasks, chained operators, parallelism, edges.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "job `{}`", self.plan.name);
        for (t, chain) in self.chains.iter().enumerate() {
            let head = &self.plan.nodes[chain[0]];
            let _ = writeln!(s, "task {t} (parallelism {}):", head.parallelism);
            for (k, &id) in chain.iter().enumerate() {
                let node = &self.plan.nodes[id];
                let link = if k == 0 { "  " } else { "  └─ chained: " };
                let cols: Vec<String> = self.schemas[id]
                    .fields()
                    .iter()
                    .filter(|f| f.name() != TIMESTAMP_FIELD)
                    .map(|f| f.name().clone())
                    .collect();
                let _ = writeln!(
                    s,
                    "{link}[{id}] {} `{}` -> ({})",
                    node.kind.label(),
                    node.name,
                    cols.join(", ")
                );
            }
        }
        for e in &self.plan.edges {
            let internal = self
                .chains
                .iter()
                .any(|c| c.windows(2).any(|w| w[0] == e.from && w[1] == e.to));
            let side = e
                .side
                .as_ref()
                .map(|t| format!(" (side output `{t}`)"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "edge [{}] -> [{}] {}{}{side}",
                e.from,
                e.to,
                e.partitioning,
                if internal { " (chained)" } else { "" }
            );
        }
        s
    }

    /// Starts the job on the current tokio runtime.
    pub fn start(self) -> Result<JobHandle> {
        let plan = &self.plan;
        let dead_letters: Arc<dyn DeadLetterQueue> = match &plan.config.dead_letter_path {
            Some(p) => Arc::new(FileDeadLetters::open(p)?),
            None => Arc::new(LogDeadLetters),
        };
        let metrics: Vec<Vec<Arc<SubtaskMetrics>>> = plan
            .nodes
            .iter()
            .map(|n| (0..n.parallelism).map(|_| SubtaskMetrics::new()).collect())
            .collect();
        let head_of: HashMap<NodeId, usize> = self
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| (c[0], i))
            .collect();
        let tail_of: HashMap<NodeId, usize> = self
            .chains
            .iter()
            .enumerate()
            .map(|(i, c)| (*c.last().expect("invariant: chains are non-empty"), i))
            .collect();

        // Channels for every edge between chains.
        let cap = plan.config.channel_capacity;
        let mut outputs: Vec<Vec<Vec<OutputEdge>>> = self
            .chains
            .iter()
            .map(|c| {
                (0..plan.nodes[c[0]].parallelism)
                    .map(|_| Vec::new())
                    .collect()
            })
            .collect();
        let mut inputs: Vec<Vec<Vec<mpsc::Receiver<sluice_types::Message>>>> = outputs
            .iter()
            .map(|subtasks| subtasks.iter().map(|_| Vec::new()).collect())
            .collect();
        for e in &plan.edges {
            let (Some(&up), Some(&down)) = (tail_of.get(&e.from), head_of.get(&e.to)) else {
                continue; // chained edge
            };
            let pu = plan.nodes[e.from].parallelism;
            let pd = plan.nodes[e.to].parallelism;
            for (u, out) in outputs[up].iter_mut().enumerate().take(pu) {
                let targets: Vec<usize> = match e.partitioning {
                    Partitioning::Forward => vec![u],
                    _ => (0..pd).collect(),
                };
                let mut senders = Vec::with_capacity(targets.len());
                for d in targets {
                    let (tx, rx) = mpsc::channel(cap);
                    senders.push(tx);
                    inputs[down][d].push(rx);
                }
                let router = match &e.partitioning {
                    Partitioning::Forward => Router::Forward,
                    Partitioning::Rebalance => Router::Rebalance { next: u },
                    Partitioning::Broadcast => Router::Broadcast,
                    Partitioning::Hash(keys) => Router::hash(
                        keys.iter()
                            .map(|k| {
                                let schema = match e.side {
                                    None => &self.schemas[e.from],
                                    Some(_) => &self.side_schemas[e.from],
                                };
                                schema.index_of(k).expect("invariant: checked at prepare")
                            })
                            .collect(),
                        plan.config.max_parallelism,
                    ),
                };
                out.push(match &e.side {
                    None => OutputEdge::new(router, senders),
                    Some(tag) => OutputEdge::side(router, senders, tag),
                });
            }
        }

        let mut tasks = JoinSet::new();
        let mut controls = Vec::new();
        for (t, chain_nodes) in self.chains.iter().enumerate() {
            let p = plan.nodes[chain_nodes[0]].parallelism;
            for (s, (edges, receivers)) in std::mem::take(&mut outputs[t])
                .into_iter()
                .zip(std::mem::take(&mut inputs[t]))
                .enumerate()
            {
                let task_info = |id: NodeId| TaskInfo {
                    job: plan.name.clone(),
                    operator_id: id,
                    operator_name: plan.nodes[id].name.clone(),
                    subtask: s,
                    parallelism: p,
                };
                let ctx_for = |id: NodeId| {
                    OperatorContext::new(
                        task_info(id),
                        Arc::clone(&self.input_schemas[id]),
                        Arc::clone(&metrics[id][s]),
                        Arc::clone(&dead_letters),
                    )
                };
                let mut slots = Vec::new();
                let mut source = None;
                for &id in chain_nodes {
                    match &self.nodes[id] {
                        PreparedNode::Source {
                            source: src,
                            event_time,
                            out_of_orderness_ms,
                            idle_timeout,
                        } => {
                            let splits = src.splits(p)?;
                            let info = task_info(id);
                            let reader = src.reader(assign_splits(&splits, s, p), &info)?;
                            let (tx, rx) = mpsc::channel(16);
                            controls.push(tx);
                            source = Some(SourceTask {
                                reader,
                                ctx: ctx_for(id),
                                event_time: *event_time,
                                out_of_orderness_ms: *out_of_orderness_ms,
                                idle_timeout: *idle_timeout,
                                max_rows: plan.config.batch.max_rows,
                                linger: plan.config.batch.linger,
                                control: rx,
                            });
                        }
                        PreparedNode::Operator(factory) => {
                            let info = task_info(id);
                            let op =
                                factory(&info).map_err(|e| e.in_operator(&info.operator_name))?;
                            slots.push(Slot {
                                op,
                                ctx: ctx_for(id),
                                is_sink: matches!(plan.nodes[id].kind, NodeKind::Sink(_)),
                            });
                        }
                    }
                }
                let tail = *chain_nodes.last().expect("invariant: chains are non-empty");
                let chain = Chain {
                    slots,
                    out: Outputs::new(edges, Arc::clone(&metrics[tail][s])),
                };
                let name = format!("{}[{}]", plan.nodes[chain_nodes[0]].name, s);
                match source {
                    Some(src) => {
                        tasks.spawn(async move {
                            run_source_task(src, chain).await.map_err(|e| (name, e))
                        });
                    }
                    None => {
                        let inputs = Inputs::new(receivers);
                        tasks.spawn(async move {
                            run_operator_task(chain, inputs)
                                .await
                                .map_err(|e| (name, e))
                        });
                    }
                }
            }
        }
        let job_metrics = Arc::new(JobMetrics {
            operators: plan
                .nodes
                .iter()
                .zip(metrics)
                .map(|(n, subtasks)| OperatorMetrics {
                    node_id: n.id,
                    name: n.name.clone(),
                    is_source: matches!(n.kind, NodeKind::Source(_)),
                    is_sink: matches!(n.kind, NodeKind::Sink(_)),
                    subtasks,
                })
                .collect(),
        });
        tracing::info!(job = %plan.name, tasks = tasks.len(), "job started");
        Ok(JobHandle {
            name: plan.name.clone(),
            tasks,
            controls,
            metrics: job_metrics,
        })
    }
}

/// A running job.
pub struct JobHandle {
    name: String,
    tasks: JoinSet<std::result::Result<(), (String, SluiceError)>>,
    controls: Vec<mpsc::Sender<SourceControl>>,
    metrics: Arc<JobMetrics>,
}

/// A cloneable way to stop a running job gracefully.
#[derive(Clone)]
pub struct StopHandle {
    controls: Vec<mpsc::Sender<SourceControl>>,
}

impl StopHandle {
    /// Asks every source to end its stream: the job flushes and finishes.
    pub async fn stop(&self) {
        for c in &self.controls {
            let _ = c.send(SourceControl::Stop).await;
        }
    }
}

impl JobHandle {
    /// The job's live metrics.
    pub fn metrics(&self) -> Arc<JobMetrics> {
        Arc::clone(&self.metrics)
    }

    /// A handle that stops the job gracefully.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            controls: self.controls.clone(),
        }
    }

    /// Injects a checkpoint barrier at every source.
    pub async fn inject_barrier(&self, barrier: sluice_types::CheckpointBarrier) -> Result<()> {
        for c in &self.controls {
            c.send(SourceControl::Barrier(barrier))
                .await
                .map_err(|_| SluiceError::internal("a source task has already ended"))?;
        }
        Ok(())
    }

    /// Waits for every task. On the first failure the other tasks are cancelled and
    /// the root cause is returned (not the "downstream stopped" errors it caused).
    pub async fn wait(mut self) -> Result<()> {
        let mut first: Option<(String, SluiceError)> = None;
        while let Some(r) = self.tasks.join_next().await {
            let err = match r {
                Ok(Ok(())) => continue,
                Ok(Err((task, e))) => (task, e),
                Err(join) if join.is_cancelled() => continue,
                Err(join) => {
                    let msg = panic_message(join);
                    (
                        "task".to_string(),
                        SluiceError::internal(format!("a task panicked: {msg}")),
                    )
                }
            };
            let is_secondary = err.1.message == DOWNSTREAM_GONE;
            match &first {
                None => {
                    tracing::error!(job = %self.name, task = %err.0, error = %err.1, "task failed; cancelling the job");
                    self.tasks.abort_all();
                    first = Some(err);
                }
                Some((_, f)) if f.message == DOWNSTREAM_GONE && !is_secondary => first = Some(err),
                Some(_) => {}
            }
        }
        match first {
            None => {
                tracing::info!(job = %self.name, "job finished");
                Ok(())
            }
            Some((_, e)) => Err(e),
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into()),
        Err(e) => e.to_string(),
    }
}
