//! One instance of a cluster job with keyed state (`sluice run --cluster` on a job with
//! keyed exchanges): its fronts run as any stateless cluster job, each keyed stage once
//! per partition of its input topics that the stage's group gives this instance.
//!
//! ```text
//!  instance ─┬─ fronts: Kafka source ─> … ─> repartition topic   (group sluice-NAME,
//!            │                                                   sluice-NAME-in1, …)
//!            └─ partition tasks, per keyed stage: its input topics' partitions (group
//!               sluice-NAME-repartition, …-repartition-s1, …) — per partition p one job:
//!                 restore the checkpoint p's committed offset names (group
//!                 sluice-NAME-tasks, metadata: run and epoch), read p of each input
//!                 from there, commit output + offsets + the checkpoint's name in one
//!                 transaction
//!               p taken away: its task is cancelled (its open transaction aborts;
//!               the next owner restores the last committed checkpoint)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_connectors::kafka::tasks::{self, TaskEvent};
use sluice_plan::{JobPlan, NodeKind, RestoreFrom};
use sluice_runtime::cluster::{KeyedSplit, KeyedStage};
use sluice_runtime::source::ConnectorRegistry;
use sluice_types::{Result, SluiceError};
use tokio::sync::watch;

use crate::Pipeline;
use crate::restart::RestartStrategy;

/// The jobs an instance runs now (its front and its partition tasks) by name, with their
/// metrics: what its metrics endpoint serves.
pub type RunningJobs = Arc<
    std::sync::Mutex<std::collections::BTreeMap<String, Arc<sluice_runtime::metrics::JobMetrics>>>,
>;

fn running(
    jobs: &RunningJobs,
) -> std::sync::MutexGuard<
    '_,
    std::collections::BTreeMap<String, Arc<sluice_runtime::metrics::JobMetrics>>,
> {
    jobs.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a failed partition task waits before it starts again.
const TASK_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Splits `plan` if it is a cluster job with keyed state (`None`: it runs as it is).
pub fn keyed(plan: &JobPlan, registry: &ConnectorRegistry) -> Result<Option<KeyedSplit>> {
    if plan.config.cluster.is_none() || plan.nodes.iter().all(|n| n.kind.is_stateless()) {
        return Ok(None);
    }
    // The repartition topics get as many partitions as the sources' topics have.
    let mut partitions = std::collections::BTreeMap::new();
    for n in &plan.nodes {
        let NodeKind::Source(source) = &n.kind else {
            continue;
        };
        if source.spec.connector != "kafka" {
            // The split says why it cannot run.
            continue;
        }
        let topic = source.spec.options.get("topic").ok_or_else(|| {
            SluiceError::user(format!(
                "a cluster job with keyed state reads Kafka `topic`s (source `{}` has a `topic-pattern`)",
                n.name
            ))
        })?;
        let client = sluice_runtime::cluster::client_options(&source.spec);
        partitions.insert(n.id, tasks::topic_partitions(&client, topic)?);
    }
    sluice_runtime::cluster::split_keyed(plan, registry, &partitions)
}

/// Told of every attempt of the first front as it starts (a server shows its metrics
/// and stops the instance through it).
pub type FrontHook = Arc<dyn Fn(&sluice_runtime::JobHandle) + Send + Sync>;

/// A partition task that runs (or stops) and the handle that waits for it.
type RunningTask = (watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// Runs this instance of a keyed cluster job until `stop` turns true (then the fronts
/// drain and the partition tasks are cancelled) or a front ends (cancelled, or failed
/// for good).
pub async fn run_keyed(
    split: KeyedSplit,
    registry: ConnectorRegistry,
    strategy: RestartStrategy,
    mut stop: watch::Receiver<bool>,
    jobs: RunningJobs,
    on_front: Option<FrontHook>,
) -> Result<()> {
    // Co-partitioned: every input of a stage has its partitions, or the job stops here.
    for (topic, n) in &split.topics {
        tasks::ensure_repartition_topic(&split.client, topic, *n).await?;
    }
    let split = Arc::new(split);
    let cluster = split.fronts[0]
        .config
        .cluster
        .clone()
        .ok_or_else(|| SluiceError::internal("a keyed cluster job without its cluster"))?;
    // The fronts: stateless cluster jobs, restarted as the strategy says.
    let mut fronts = tokio::task::JoinSet::new();
    let mut front_stops = Vec::new();
    for (k, plan) in split.fronts.iter().enumerate() {
        let hook = on_front.clone().filter(|_| k == 0);
        let front = Pipeline::from_plan(plan.clone());
        front.registry(registry.clone());
        let (stop_tx, stop_rx) = watch::channel(None);
        front_stops.push(stop_rx);
        let front_jobs = Arc::clone(&jobs);
        let name = plan.name.clone();
        let strategy = strategy.clone();
        fronts.spawn(async move {
            front
                .run_with_restarts(strategy, |h| {
                    running(&front_jobs).insert(name.clone(), h.metrics());
                    let _ = stop_tx.send(Some(h.stop_handle()));
                    if let Some(hook) = &hook {
                        hook(h);
                    }
                })
                .await
        });
    }
    // The partition tasks of every stage, as the stages' groups give and take partitions.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut assignments = Vec::new();
    for (s, stage) in split.stages.iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assignments.push(tasks::follow_assignment(
            &split.member_client,
            stage.topic(),
            &stage.assignment_group,
            &stage.member(&cluster.instance),
            tx,
        )?);
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if events_tx.send((s, e)).is_err() {
                    return;
                }
            }
        });
        tracing::info!(stage = s, topics = ?stage.inputs, group = %stage.assignment_group, "running the keyed part of the job for the partitions the group gives this instance");
    }
    drop(events_tx);
    let mut running_tasks: HashMap<(usize, i32), RunningTask> = HashMap::new();
    let result = loop {
        tokio::select! {
            e = events.recv() => match e {
                Some((s, TaskEvent::Assigned(parts))) => {
                    for p in parts {
                        let (cancel, cancelled) = watch::channel(false);
                        let task = tokio::spawn(run_task(
                            Arc::clone(&split),
                            s,
                            registry.clone(),
                            cluster.instance.clone(),
                            p,
                            cancelled,
                            Arc::clone(&jobs),
                        ));
                        if let Some((old, h)) = running_tasks.insert((s, p), (cancel, task)) {
                            let _ = old.send(true);
                            let _ = h.await;
                        }
                    }
                }
                Some((s, TaskEvent::Revoked(parts, done))) => {
                    for p in parts {
                        if let Some((cancel, h)) = running_tasks.remove(&(s, p)) {
                            let _ = cancel.send(true);
                            let _ = h.await;
                            tracing::info!(stage = s, partition = p, "stopped the task of a partition the group gave to another instance");
                        }
                    }
                    let _ = done.send(());
                }
                None => break Err(SluiceError::internal("the repartition topics' consumer groups went away")),
            },
            r = fronts.join_next() => {
                break match r {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => Err(SluiceError::internal(format!("a front of the job failed: {e}"))),
                    None => Ok(()),
                };
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    for f in &mut front_stops {
                        let h = f.borrow_and_update().clone();
                        if let Some(h) = h {
                            h.stop().await;
                        }
                    }
                    let mut r = Ok(());
                    while let Some(done) = fronts.join_next().await {
                        let done = done
                            .map_err(|e| SluiceError::internal(e.to_string()))
                            .and_then(|r| r);
                        r = r.and(done);
                    }
                    break r;
                }
            }
        }
    };
    // A front that ended (or failed for good) ends the others too.
    fronts.abort_all();
    for (_, (cancel, h)) in running_tasks.drain() {
        let _ = cancel.send(true);
        let _ = h.await;
    }
    // Every task has stopped: leaving the groups need not wait for anyone.
    drop(events);
    drop(assignments);
    result
}

/// Runs the task of stage `stage` for partition `partition` until `cancel` turns true,
/// each run restoring the checkpoint the partition's committed offset names, and
/// starting again after a failure.
async fn run_task(
    split: Arc<KeyedSplit>,
    stage: usize,
    registry: ConnectorRegistry,
    instance: String,
    partition: i32,
    mut cancel: watch::Receiver<bool>,
    jobs: RunningJobs,
) {
    let mut run = 0u32;
    let name = split.stages[stage].task_name(partition);
    loop {
        if *cancel.borrow() {
            running(&jobs).remove(&name);
            return;
        }
        run += 1;
        let r = task_once(
            &split,
            &split.stages[stage],
            &registry,
            &instance,
            partition,
            run,
            &mut cancel,
            &jobs,
        )
        .await;
        match r {
            Ok(()) => {
                running(&jobs).remove(&name);
                return;
            }
            Err(e) => {
                tracing::warn!(stage, partition, error = %e, "a partition task failed; starting it again from its partition's last committed checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(TASK_RESTART_DELAY) => {}
                    _ = cancel.changed() => {}
                }
            }
        }
    }
}

/// Deletes the checkpoints of the runs under `dir` other than `keep`.
async fn forget_runs(dir: &str, keep: &[String]) -> Result<()> {
    let storage = sluice_runtime::checkpoint::CheckpointStorage::open(dir)?;
    for run in storage.children().await? {
        if !keep.contains(&run) {
            storage.child(&run).delete_all("chk").await?;
        }
    }
    Ok(())
}

/// One run of a partition task: `Ok` once cancelled (or its input ended).
#[allow(clippy::too_many_arguments)]
async fn task_once(
    split: &KeyedSplit,
    stage: &KeyedStage,
    registry: &ConnectorRegistry,
    instance: &str,
    partition: i32,
    run: u32,
    cancel: &mut watch::Receiver<bool>,
    jobs: &RunningJobs,
) -> Result<()> {
    let (client, group, topic) = (
        split.client.clone(),
        split.offsets_group.clone(),
        stage.topic().to_string(),
    );
    let committed = tokio::task::spawn_blocking(move || {
        tasks::committed_checkpoint(&client, &group, &topic, partition)
    })
    .await
    .map_err(|e| SluiceError::internal(e.to_string()))??;
    let token = format!(
        "{instance}-{}-{run}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut plan = stage.task(partition, &token)?;
    if let Some((offset, from, epoch)) = &committed {
        let at = stage.checkpoint_location(partition, from, *epoch);
        tracing::info!(stage = stage.index, partition, offset, checkpoint = %at, "restoring a partition's state from the checkpoint its committed offset names");
        plan.config.restore = Some(RestoreFrom::Path(at));
    }
    let plan_name = plan.name.clone();
    let pipeline = Pipeline::from_plan(plan);
    pipeline.registry(registry.clone());
    let handle = pipeline.start().await?;
    running(jobs).insert(plan_name, handle.metrics());
    // Earlier runs' checkpoints are of no more use, but the one restored (until this
    // run commits one of its own).
    let keep: Vec<String> = committed
        .map(|(_, from, _)| from)
        .into_iter()
        .chain([token])
        .collect();
    let dir = stage.partition_checkpoints(partition);
    tokio::spawn(async move {
        if let Err(e) = forget_runs(&dir, &keep).await {
            tracing::warn!(error = %e, dir = %dir, "cannot delete the checkpoints of a partition's earlier tasks");
        }
    });
    let stop = handle.stop_handle();
    let wait = handle.wait();
    tokio::pin!(wait);
    tokio::select! {
        r = &mut wait => r,
        _ = cancel.changed() => {
            stop.cancel();
            let _ = wait.await;
            Ok(())
        }
    }
}
