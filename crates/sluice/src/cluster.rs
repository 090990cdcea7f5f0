//! One instance of a cluster job with keyed state (`sluice run --cluster` on a job with
//! a keyed exchange): its front runs as any stateless cluster job, its back once per
//! partition of the repartition topic that the group gives this instance.
//!
//! ```text
//!  instance ─┬─ front: Kafka source ─> … ─> repartition topic   (group sluice-NAME)
//!            └─ partition tasks: the repartition topic's partitions (group
//!               sluice-NAME-repartition) — per partition p one back job:
//!                 restore the checkpoint p's committed offset names (group
//!                 sluice-NAME-tasks, metadata: run and epoch), read p from there,
//!                 commit output + offset + the checkpoint's name in one transaction
//!               p taken away: its task is cancelled (its open transaction aborts;
//!               the next owner restores the last committed checkpoint)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_connectors::kafka::tasks::{self, TaskEvent};
use sluice_plan::{JobPlan, NodeKind, RestoreFrom};
use sluice_runtime::cluster::KeyedSplit;
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
    // The repartition topic gets as many partitions as the source's topic has.
    let source = plan.nodes.iter().find_map(|n| match &n.kind {
        NodeKind::Source(s) if s.spec.connector == "kafka" => Some(s),
        _ => None,
    });
    let Some(source) = source else {
        // The split says why it cannot run.
        return sluice_runtime::cluster::split_keyed(plan, registry, 0);
    };
    let topic = source.spec.options.get("topic").ok_or_else(|| {
        SluiceError::user(
            "a cluster job with keyed state reads one Kafka `topic` (not a `topic-pattern`)",
        )
    })?;
    let client = sluice_runtime::cluster::client_options(&source.spec);
    let partitions = tasks::topic_partitions(&client, topic)?;
    sluice_runtime::cluster::split_keyed(plan, registry, partitions)
}

/// Runs this instance of a keyed cluster job until `stop` turns true (then the front
/// drains and the partition tasks are cancelled) or the front fails for good.
pub async fn run_keyed(
    split: KeyedSplit,
    registry: ConnectorRegistry,
    strategy: RestartStrategy,
    mut stop: watch::Receiver<bool>,
    jobs: RunningJobs,
) -> Result<()> {
    tasks::ensure_repartition_topic(&split.client, &split.topic, split.partitions).await?;
    let split = Arc::new(split);
    let cluster = split
        .front
        .config
        .cluster
        .clone()
        .ok_or_else(|| SluiceError::internal("a keyed cluster job without its cluster"))?;
    // The front: a stateless cluster job, restarted as the strategy says.
    let front = Pipeline::from_plan(split.front.clone());
    front.registry(registry.clone());
    let (front_stop_tx, mut front_stop) = watch::channel(None);
    let front_jobs = Arc::clone(&jobs);
    let front_name = split.front.name.clone();
    let mut front_run = tokio::spawn(async move {
        front
            .run_with_restarts(strategy, |h| {
                running(&front_jobs).insert(front_name.clone(), h.metrics());
                let _ = front_stop_tx.send(Some(h.stop_handle()));
            })
            .await
    });
    // The partition tasks, as the group gives and takes partitions.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let member = format!("sluice-{}-{}-tasks", cluster.name, cluster.instance);
    let assignment = tasks::follow_assignment(
        &split.member_client,
        &split.topic,
        &split.assignment_group,
        &member,
        events_tx,
    )?;
    tracing::info!(topic = %split.topic, group = %split.assignment_group, "running the keyed part of the job for the repartition topic's partitions the group gives this instance");
    let mut running: HashMap<i32, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let result = loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(TaskEvent::Assigned(parts)) => {
                    for p in parts {
                        let (cancel, cancelled) = watch::channel(false);
                        let task = tokio::spawn(run_task(
                            Arc::clone(&split),
                            registry.clone(),
                            cluster.instance.clone(),
                            p,
                            cancelled,
                            Arc::clone(&jobs),
                        ));
                        if let Some((old, h)) = running.insert(p, (cancel, task)) {
                            let _ = old.send(true);
                            let _ = h.await;
                        }
                    }
                }
                Some(TaskEvent::Revoked(parts, done)) => {
                    for p in parts {
                        if let Some((cancel, h)) = running.remove(&p) {
                            let _ = cancel.send(true);
                            let _ = h.await;
                            tracing::info!(partition = p, "stopped the task of a partition the group gave to another instance");
                        }
                    }
                    let _ = done.send(());
                }
                None => break Err(SluiceError::internal("the repartition topic's consumer group went away")),
            },
            r = &mut front_run => {
                break match r {
                    Ok(r) => r,
                    Err(e) => Err(SluiceError::internal(format!("the front of the job failed: {e}"))),
                };
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    if let Some(h) = front_stop.borrow_and_update().clone() {
                        h.stop().await;
                    }
                    break (&mut front_run)
                        .await
                        .map_err(|e| SluiceError::internal(e.to_string()))
                        .and_then(|r| r);
                }
            }
        }
    };
    for (_, (cancel, h)) in running.drain() {
        let _ = cancel.send(true);
        let _ = h.await;
    }
    // Every task has stopped: leaving the group need not wait for anyone.
    drop(events);
    drop(assignment);
    result
}

/// Runs the back job for partition `partition` until `cancel` turns true, each run
/// restoring the checkpoint the partition's committed offset names, and starting again
/// after a failure.
async fn run_task(
    split: Arc<KeyedSplit>,
    registry: ConnectorRegistry,
    instance: String,
    partition: i32,
    mut cancel: watch::Receiver<bool>,
    jobs: RunningJobs,
) {
    let mut run = 0u32;
    let name = format!("{}-p{partition}", split.back.name);
    loop {
        if *cancel.borrow() {
            running(&jobs).remove(&name);
            return;
        }
        run += 1;
        let r = task_once(
            &split,
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
                tracing::warn!(partition, error = %e, "a partition task failed; starting it again from its partition's last committed checkpoint");
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
async fn task_once(
    split: &KeyedSplit,
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
        split.topic.clone(),
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
    let mut plan = split.task(partition, &token)?;
    if let Some((offset, from, epoch)) = &committed {
        let at = split.checkpoint_location(partition, from, *epoch);
        tracing::info!(partition, offset, checkpoint = %at, "restoring a partition's state from the checkpoint its committed offset names");
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
    let dir = split.partition_checkpoints(partition);
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
