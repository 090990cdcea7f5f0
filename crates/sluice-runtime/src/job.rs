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
use std::sync::atomic::Ordering::Relaxed;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_plan::{
    DeliveryGuarantee, EventTime, JobPlan, NodeId, NodeKind, Partitioning, RestoreFrom,
};
use sluice_types::{Result, SluiceError, TIMESTAMP_FIELD, TaskInfo, timestamp_field};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::checkpoint::coordinator::{Coordinator, Timing};
use crate::checkpoint::runner::{Request, Runner};
use crate::checkpoint::{
    CheckpointStats, CheckpointStorage, Manifest, ManifestNode, SourceControl,
};
use tracing::Instrument;

use crate::dead_letter::{DeadLetterQueue, FileDeadLetters, LogDeadLetters};
use crate::metrics::{JobMetrics, OperatorMetrics, SubtaskMetrics};
use crate::operator::OperatorContext;
use crate::operator::Timers;
use crate::operators::{self, OperatorFactory};
use crate::partition::{DOWNSTREAM_GONE, OutputEdge, Outputs, Router, UPSTREAM_GONE};
use crate::source::Split;
use crate::source::{ConnectorRegistry, PreparedSource, assign_splits};
use crate::state::{self, RestoredState};
use crate::task::{
    Chain, EventTimeColumn, Inputs, Slot, SourceTask, TaskCheckpoints, run_operator_task,
    run_source_task,
};

/// A checkpoint being restored: its manifest and its decoded state tables.
struct Restore {
    manifest: Manifest,
    tables: HashMap<String, Arc<Vec<arrow::array::RecordBatch>>>,
    /// Where it was read from.
    location: String,
}

impl Restore {
    /// Sets each split's position from the checkpoint; returns the watermark to resume
    /// from (the lowest any old subtask had reached).
    fn positions(&self, node: NodeId, splits: &mut [Split]) -> Result<Option<i64>> {
        let mut positions: HashMap<&str, &serde_json::Value> = HashMap::new();
        let mut watermark: Option<i64> = None;
        // An old subtask that had not emitted a watermark yet (a Kafka partition that had
        // not delivered holds its subtask back) means there is none to resume from:
        // resuming from the others' would make its rows late.
        let mut all_had_one = true;
        for e in self.manifest.subtasks.iter().filter(|e| e.node == node) {
            for p in &e.positions {
                // A split given up and not yet taken (shared splits) yields to its new
                // owner's position.
                let released = |v: &serde_json::Value| v.get("released") == Some(&true.into());
                match positions.get(p.split.as_str()) {
                    Some(old) if released(&p.position) && !released(old) => {}
                    _ => {
                        positions.insert(&p.split, &p.position);
                    }
                }
            }
            match e.meta.get("watermark").and_then(serde_json::Value::as_i64) {
                Some(w) => watermark = Some(watermark.map_or(w, |m| m.min(w))),
                None => all_had_one = false,
            }
        }
        let watermark = watermark.filter(|_| all_had_one);
        for s in splits.iter_mut() {
            s.position = positions.remove(s.id.as_str()).cloned();
        }
        // A split the checkpoint was reading that the source no longer has: its rows
        // would be lost or read twice. (A split read to the end may have been removed.)
        if let Some((id, _)) = positions.iter().find(|(_, p)| p.as_str() != Some("done")) {
            return Err(SluiceError::user(format!(
                "the checkpoint reads split `{id}`, which the source no longer has (generator splits depend on the parallelism: restore generator sources at the parallelism of the checkpoint)"
            )));
        }
        Ok(watermark)
    }

    /// The restored state of subtask `subtask` of `parallelism` of `node`.
    fn state_for(
        &self,
        node: NodeId,
        subtask: usize,
        parallelism: usize,
    ) -> Result<Option<(RestoredState, Timers)>> {
        let mut restored = RestoredState::default();
        let mut timers = Timers::default();
        let mut any = false;
        for e in self.manifest.subtasks.iter().filter(|e| e.node == node) {
            any = true;
            restored.metas.push(e.meta.clone());
            timers.merge(&e.timers);
            for (name, file) in &e.tables {
                let Some(batches) = self.tables.get(file) else {
                    continue;
                };
                for b in batches.iter() {
                    if let Some(rows) =
                        state::owned_rows(b, subtask, parallelism, self.manifest.max_parallelism)?
                    {
                        restored.keyed.entry(name.clone()).or_default().push(rows);
                    }
                }
            }
        }
        Ok(any.then_some((restored, timers)))
    }
}

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
        EventTime::Expr(e) => {
            let physical = crate::expr::plan_expr(e, &schema)?;
            match physical.data_type(&schema).map_err(|err| {
                SluiceError::user(format!("invalid event-time expression `{e}`")).with_source(err)
            })? {
                DataType::Timestamp(_, _) | DataType::Int64 | DataType::Date64 => {}
                other => {
                    return Err(SluiceError::user(format!(
                        "the event-time expression `{e}` gives {other}; it must give a timestamp or BIGINT epoch milliseconds"
                    )));
                }
            }
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(timestamp_field()));
            return Ok((
                Arc::new(Schema::new(fields)),
                EventTimeColumn::Expr(physical),
            ));
        }
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
    pub fn prepare(mut plan: JobPlan, registry: &ConnectorRegistry) -> Result<Self> {
        plan.validate()?;
        crate::cluster::prepare(&mut plan)?;
        plan.mark_reads();
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
                    let source = registry.prepare_source(&s.spec).map_err(ctx)?;
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
                    let p = operators::prepare_node(kind, &inputs, registry).map_err(ctx)?;
                    if let Some(side) = p.side_output_schema {
                        side_schemas[id] = side;
                    }
                    input_schemas[id] = p.input_schema;
                    schemas[id] = p.operator.output_schema;
                    prepared[id] = Some(PreparedNode::Operator(p.operator.factory));
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
                let schema = &self.schemas[id];
                let cols: Vec<String> = schema.fields()[..sluice_types::user_column_count(schema)]
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                // As Flink's EXPLAIN says which nodes emit updates and deletes.
                let changes = match sluice_types::is_updating(schema) {
                    true => " changelog (+I -U +U -D)",
                    false => "",
                };
                let _ = writeln!(
                    s,
                    "{link}[{id}] {} `{}` -> ({}){changes}",
                    node.kind.label(),
                    node.name,
                    cols.join(", ")
                );
                // What the job reads of a source (a JSON decoder builds only that).
                let user = &schema.fields()[..sluice_types::user_column_count(schema)];
                if let NodeKind::Source(src) = &node.kind
                    && src.spec.reads.narrows(&user.iter().cloned().collect())
                {
                    let _ = writeln!(s, "      reads ({})", src.spec.reads);
                }
                // The conditions a source may skip rows by (Parquet: whole row groups).
                if let NodeKind::Source(src) = &node.kind
                    && !src.spec.filters.is_empty()
                {
                    let f: Vec<String> = src.spec.filters.iter().map(|e| e.to_string()).collect();
                    let _ = writeln!(s, "      filters ({})", f.join(", "));
                }
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

    /// Reads the snapshot to restore from, if the job asks for one. From the latest
    /// checkpoint, a damaged one (a file missing, cut short or changed) is passed over
    /// for the one before it, saying so; a job that has checkpoints but no intact one
    /// fails rather than start from scratch.
    async fn load_restore(
        &self,
        checkpoints: Option<&CheckpointStorage>,
    ) -> Result<Option<Restore>> {
        match &self.plan.config.restore {
            None => Ok(None),
            Some(RestoreFrom::Path(p)) => {
                let storage = CheckpointStorage::open(p)?;
                let manifest = storage.read_manifest("").await?;
                self.check_compatible(&manifest)?;
                self.read_snapshot(&storage, "", manifest).await.map(Some)
            }
            Some(RestoreFrom::Latest) => {
                let Some(storage) = checkpoints else {
                    return Err(SluiceError::user(
                        "restoring from the latest checkpoint needs a checkpoint directory",
                    ));
                };
                let complete = storage.complete("chk").await?;
                if complete.is_empty() {
                    tracing::info!(job = %self.plan.name, dir = storage.location(), "no completed checkpoint; starting fresh");
                    return Ok(None);
                }
                let mut damaged = Vec::new();
                for dir in &complete {
                    let read = match storage.read_manifest(dir).await {
                        Ok(m) => {
                            // A checkpoint of another job graph is the user's to fix,
                            // whichever one is tried: no falling back past it.
                            self.check_compatible(&m)?;
                            self.read_snapshot(storage, dir, m).await
                        }
                        Err(e) => Err(e),
                    };
                    match read {
                        Ok(r) => {
                            if !damaged.is_empty() {
                                tracing::warn!(job = %self.plan.name, passed_over = ?damaged, "restoring from {dir}: newer checkpoints are damaged; what exactly-once sinks committed after this one is written again");
                            }
                            return Ok(Some(r));
                        }
                        Err(e) => {
                            tracing::warn!(job = %self.plan.name, checkpoint = %dir, error = %e.report(), "a checkpoint is damaged; trying the one before it");
                            damaged.push(format!("{dir}: {e}"));
                        }
                    }
                }
                Err(SluiceError::user(format!(
                    "no intact checkpoint in {} to restore from: {}",
                    storage.location(),
                    damaged.join("; ")
                )))
            }
        }
    }

    /// Fails unless `manifest` was taken by a job of this graph and key groups.
    fn check_compatible(&self, manifest: &crate::checkpoint::Manifest) -> Result<()> {
        let plan = &self.plan;
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        let old: Vec<&str> = manifest.nodes.iter().map(|n| n.name.as_str()).collect();
        if names != old {
            return Err(SluiceError::user(format!(
                "checkpoint {} was taken by a different job graph (operators {old:?}, this job has {names:?})",
                manifest.epoch
            )));
        }
        if manifest.max_parallelism != plan.config.max_parallelism {
            return Err(SluiceError::user(format!(
                "checkpoint {} has {} key groups, this job {}: keep max_parallelism unchanged",
                manifest.epoch, manifest.max_parallelism, plan.config.max_parallelism
            )));
        }
        Ok(())
    }

    /// Reads and decodes every state file of the checkpoint in `dir`, checking the
    /// checksums of those that carry one.
    async fn read_snapshot(
        &self,
        storage: &CheckpointStorage,
        dir: &str,
        manifest: crate::checkpoint::Manifest,
    ) -> Result<Restore> {
        let plan = &self.plan;
        let started = std::time::Instant::now();
        let mut tables: HashMap<String, Arc<Vec<arrow::array::RecordBatch>>> = HashMap::new();
        for e in &manifest.subtasks {
            for file in e.tables.values() {
                let bytes = match manifest.sealed {
                    true => storage.get_sealed(dir, file).await?,
                    false => storage.get(dir, file).await?,
                };
                let decoded = tokio::task::spawn_blocking(move || state::decode_table(&bytes))
                    .await
                    .map_err(|e| SluiceError::internal("decoding state failed").with_source(e))??;
                tables.insert(file.clone(), Arc::new(decoded));
            }
        }
        tracing::info!(
            job = %plan.name, epoch = manifest.epoch, kind = %manifest.kind,
            read_ms = started.elapsed().as_millis() as u64, "restoring from {}/{dir}", storage.location()
        );
        let location = match dir {
            "" => storage.location().to_string(),
            d => format!("{}/{d}", storage.location().trim_end_matches('/')),
        };
        Ok(Restore {
            manifest,
            tables,
            location,
        })
    }

    /// Starts the job on the current tokio runtime (restoring first if configured).
    pub async fn start(self) -> Result<JobHandle> {
        let plan = &self.plan;
        let cfg = &plan.config.checkpoint;
        let checkpointing = cfg.delivery != DeliveryGuarantee::AtMostOnce
            && (cfg.interval.is_some() || cfg.dir.is_some());
        let mut checkpoint_dir = cfg
            .dir
            .clone()
            .unwrap_or_else(|| format!("sluice-checkpoints/{}", plan.name));
        let cluster = plan.config.cluster.clone().map(Arc::new);
        if let Some(c) = &cluster {
            // Instances may share a directory (or bucket): each writes its own.
            checkpoint_dir = format!(
                "{}/{}/{}",
                checkpoint_dir.trim_end_matches('/'),
                c.name,
                c.instance
            );
            // A partition's task: each run under a name of its own (its transactions
            // name their checkpoints by it).
            if let Some(t) = &c.partition_task {
                checkpoint_dir = format!("{checkpoint_dir}/{}", t.token);
            }
        }
        let checkpoints = match checkpointing || plan.config.restore.is_some() {
            true => Some(CheckpointStorage::open(&checkpoint_dir)?),
            false => None,
        };
        let savepoints = match (&cfg.savepoint_dir, &checkpoints) {
            (Some(d), _) => Some(CheckpointStorage::open(d)?),
            (None, Some(c)) => Some(c.child("savepoints")),
            (None, None) => None,
        };
        let stats = Arc::new(CheckpointStats::default());
        let read_started = std::time::Instant::now();
        let restore = self.load_restore(checkpoints.as_ref()).await?;
        if let Some(r) = &restore {
            stats
                .restore_read_ms
                .store(read_started.elapsed().as_millis() as u64, Relaxed);
            let _ = stats.restored.set(crate::metrics::RestoredFrom {
                epoch: r.manifest.epoch,
                kind: r.manifest.kind.clone(),
                location: r.location.clone(),
                positions: r
                    .manifest
                    .subtasks
                    .iter()
                    .flat_map(|e| {
                        let node = r
                            .manifest
                            .nodes
                            .iter()
                            .find(|n| n.id == e.node)
                            .map_or_else(|| e.node.to_string(), |n| n.name.clone());
                        e.positions
                            .iter()
                            .map(move |p| (node.clone(), p.split.clone(), p.position.to_string()))
                    })
                    .collect(),
            });
        }
        let first_epoch = match &checkpoints {
            Some(s) => {
                let on_disk = s.highest_epoch("chk").await?.unwrap_or(0);
                let saved = match &savepoints {
                    Some(sp) => sp
                        .highest_epoch("savepoint")
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0),
                    None => 0,
                };
                let restored = restore.as_ref().map_or(0, |r| r.manifest.epoch);
                on_disk.max(saved).max(restored) + 1
            }
            None => 1,
        };
        let attempt = sluice_types::now_micros();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut notices = Vec::new();
        let mut task_count = 0usize;
        let mut new_task_checkpoints = || {
            checkpointing.then(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                notices.push(tx);
                task_count += 1;
                TaskCheckpoints {
                    task: task_count - 1,
                    events: events_tx.clone(),
                    notices: rx,
                }
            })
        };
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
        // Per task, per subtask: its receivers, each with the input edge it belongs to.
        type TaskInputs = Vec<Vec<(mpsc::Receiver<sluice_types::Message>, usize)>>;
        let mut inputs: Vec<TaskInputs> = outputs
            .iter()
            .map(|subtasks| subtasks.iter().map(|_| Vec::new()).collect())
            .collect();
        for (ei, e) in plan.edges.iter().enumerate() {
            let (Some(&up), Some(&down)) = (tail_of.get(&e.from), head_of.get(&e.to)) else {
                continue; // chained edge
            };
            // Which input of the downstream operator this edge is.
            let input_index = plan.edges[..ei].iter().filter(|x| x.to == e.to).count();
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
                    inputs[down][d].push((rx, input_index));
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
        let memory = Arc::new(crate::memory::JobMemory::open(plan.config.memory_limit));
        if plan.config.memory_limit.is_some() && !crate::memory::installed() {
            tracing::warn!(job = %plan.name, "a memory limit is set but this process does not measure memory (its allocator is not Sluice's accounting one): not enforced");
        }
        let mut aborts = Vec::new();
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
                    let mut ctx = OperatorContext::new(
                        task_info(id),
                        Arc::clone(&self.input_schemas[id]),
                        Arc::clone(&metrics[id][s]),
                        Arc::clone(&dead_letters),
                    );
                    ctx.max_parallelism = plan.config.max_parallelism;
                    ctx.checkpointing = checkpointing;
                    ctx.delivery = cfg.delivery;
                    ctx.attempt = attempt;
                    ctx.cluster = cluster.clone();
                    ctx.checkpoints = Arc::clone(&stats);
                    ctx
                };
                let mut slots = Vec::new();
                let mut restored_slots = Vec::new();
                let mut source = None;
                for &id in chain_nodes {
                    match &self.nodes[id] {
                        PreparedNode::Source {
                            source: src,
                            event_time,
                            out_of_orderness_ms,
                            idle_timeout,
                        } => {
                            let mut splits = src.splits(p)?;
                            let mut restored_watermark = None;
                            if let Some(r) = &restore {
                                restored_watermark = r.positions(id, &mut splits)?;
                            }
                            let info = task_info(id);
                            let mine = match src.shares_splits() {
                                true => splits,
                                false => assign_splits(&splits, s, p),
                            };
                            let reader = src.reader(mine, &info)?;
                            let (tx, rx) = mpsc::channel(16);
                            controls.push(tx);
                            source = Some(SourceTask {
                                reader,
                                ctx: ctx_for(id),
                                event_time: event_time.clone(),
                                out_of_orderness_ms: *out_of_orderness_ms,
                                idle_timeout: *idle_timeout,
                                max_rows: plan.config.batch.max_rows,
                                linger: plan.config.batch.linger,
                                control: rx,
                                restored_watermark,
                                checkpoints: None,
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
                            restored_slots.push(match &restore {
                                Some(r) => r.state_for(id, s, p)?,
                                None => None,
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
                // Every event of the task carries its job and task (per-task logs).
                let span = tracing::info_span!("task", job = %plan.name, task = %name);
                let cp = new_task_checkpoints();
                let mut chain = chain;
                let task_stats = Arc::clone(&stats);
                match source {
                    Some(mut src) => {
                        src.checkpoints = cp;
                        aborts.push(
                            tasks.spawn(
                                crate::isolate::guarded(name, async move {
                                    restore_chain(&mut chain, restored_slots, &task_stats).await?;
                                    run_source_task(src, chain).await
                                })
                                .charged_to(&memory)
                                .instrument(span),
                            ),
                        );
                    }
                    None => {
                        let align = cfg.delivery == DeliveryGuarantee::ExactlyOnce;
                        let (receivers, input_of): (Vec<_>, Vec<_>) = receivers.into_iter().unzip();
                        let inputs = Inputs::with_inputs(receivers, input_of, align);
                        aborts.push(
                            tasks.spawn(
                                crate::isolate::guarded(name, async move {
                                    restore_chain(&mut chain, restored_slots, &task_stats).await?;
                                    run_operator_task(chain, inputs, cp).await
                                })
                                .charged_to(&memory)
                                .instrument(span),
                            ),
                        );
                    }
                }
            }
        }
        drop(events_tx);
        let (requests_tx, requests_rx) = mpsc::channel(4);
        if checkpointing {
            let runner = Runner {
                coordinator: Coordinator::new(
                    Timing {
                        interval: cfg.interval,
                        timeout: cfg.timeout,
                        min_pause: cfg.min_pause,
                    },
                    task_count,
                    first_epoch,
                    std::time::Instant::now(),
                ),
                job: plan.name.clone(),
                max_parallelism: plan.config.max_parallelism,
                nodes: plan
                    .nodes
                    .iter()
                    .map(|n| ManifestNode {
                        id: n.id,
                        name: n.name.clone(),
                        parallelism: n.parallelism,
                    })
                    .collect(),
                checkpoints,
                savepoints,
                retained: cfg.retained,
                sources: controls.clone(),
                notices,
                events: events_rx,
                requests: requests_rx,
                stats: Arc::clone(&stats),
                final_checkpoint: cfg.delivery == DeliveryGuarantee::ExactlyOnce,
            };
            let span = tracing::info_span!("task", job = %plan.name, task = "checkpoints");
            aborts.push(
                tasks.spawn(
                    crate::isolate::guarded("checkpoints".into(), async move {
                        runner.run().await;
                        Ok(())
                    })
                    .instrument(span),
                ),
            );
        }
        let job_metrics = Arc::new(JobMetrics {
            memory,
            checkpoints: stats,
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
            aborts: Arc::new(aborts),
            controls,
            metrics: job_metrics,
            requests: requests_tx,
        })
    }
}

/// A running job.
pub struct JobHandle {
    name: String,
    tasks: JoinSet<std::result::Result<(), (String, SluiceError)>>,
    aborts: Arc<Vec<tokio::task::AbortHandle>>,
    controls: Vec<mpsc::Sender<SourceControl>>,
    metrics: Arc<JobMetrics>,
    requests: mpsc::Sender<Request>,
}

/// A cloneable way to stop a running job: gracefully, or by cancelling it.
#[derive(Clone)]
pub struct StopHandle {
    aborts: Arc<Vec<tokio::task::AbortHandle>>,
    controls: Vec<mpsc::Sender<SourceControl>>,
    requests: mpsc::Sender<Request>,
}

impl StopHandle {
    /// Cancels the job, as Flink's cancel does: every task stops where it is (at its
    /// next wait: a send, a receive, a read), nothing more is emitted, open windows are
    /// dropped, no final checkpoint is taken and exactly-once sinks commit nothing
    /// more. [`JobHandle::wait`] then returns as for a finished job.
    pub fn cancel(&self) {
        for a in self.aborts.iter() {
            a.abort();
        }
    }

    /// Asks every source to end its stream: the job flushes and finishes.
    pub async fn stop(&self) {
        for c in &self.controls {
            let _ = c.send(SourceControl::Stop).await;
        }
    }

    /// Takes a savepoint; returns its location. With `then_stop` the job ends right after
    /// it (nothing read after the savepoint, no windows fired early), so a job resumed
    /// from it continues exactly where this one stopped.
    pub async fn savepoint(&self, then_stop: bool) -> Result<String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request::Savepoint { then_stop, reply })
            .await
            .map_err(|_| {
                SluiceError::user("the job takes no checkpoints (at-most-once or no checkpoint directory), so it cannot take a savepoint")
            })?;
        rx.await
            .map_err(|_| SluiceError::user("the job ended before the savepoint was taken"))?
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
            aborts: Arc::clone(&self.aborts),
            controls: self.controls.clone(),
            requests: self.requests.clone(),
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
            let secondary =
                |e: &SluiceError| e.message == DOWNSTREAM_GONE || e.message == UPSTREAM_GONE;
            let is_secondary = secondary(&err.1);
            match &first {
                None => {
                    let trace = err.1.backtrace_text().unwrap_or_default();
                    tracing::error!(job = %self.name, task = %err.0, error = %err.1, backtrace = %trace, "task failed; cancelling the job");
                    self.tasks.abort_all();
                    first = Some(err);
                }
                Some((_, f)) if secondary(f) && !is_secondary => first = Some(err),
                Some(_) => {}
            }
        }
        match first {
            None => {
                crate::crash::point("job-finished");
                tracing::info!(job = %self.name, "job finished");
                Ok(())
            }
            Some((_, e)) => Err(e),
        }
    }
}

/// Hands restored state to a chain's operators, timing it.
async fn restore_chain(
    chain: &mut Chain,
    states: Vec<Option<(RestoredState, Timers)>>,
    stats: &CheckpointStats,
) -> Result<()> {
    if states.iter().all(Option::is_none) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    chain.restore(states).await?;
    stats
        .restore_tasks_ms
        .fetch_max(started.elapsed().as_millis() as u64, Relaxed);
    Ok(())
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => sluice_types::panic_message(p.as_ref()),
        Err(e) => e.to_string(),
    }
}
