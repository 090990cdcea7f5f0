//! The I/O around the checkpoint [`Coordinator`]: injects barriers at the sources,
//! collects acknowledgements, writes state files asynchronously while the job goes on,
//! writes the manifest, tells tasks to commit, deletes old checkpoints, keeps history.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use sluice_types::{CheckpointBarrier, CheckpointKind, Result, SluiceError, now_micros};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::coordinator::{Action, Coordinator};
use super::storage::{CheckpointStorage, checkpoint_dir};
use super::{
    CheckpointRecord, CheckpointStats, CheckpointStatus, FINAL_EPOCH, Manifest, ManifestNode,
    Notice, SourceControl, SubtaskEntry, SubtaskSnapshot, TaskEvent,
};
use crate::state::encode_table;

/// Requests from the job's owner.
pub(crate) enum Request {
    /// Take a savepoint (and stop the job after it); the reply is its location.
    Savepoint {
        then_stop: bool,
        reply: oneshot::Sender<Result<String>>,
    },
}

/// The checkpoint in flight.
struct InFlight {
    epoch: u64,
    kind: CheckpointKind,
    then_stop: bool,
    started: Instant,
    triggered_at_ms: i64,
    storage: CheckpointStorage,
    dir: String,
    entries: Vec<SubtaskEntry>,
    uploads: JoinSet<Result<(usize, usize, u64)>>,
    bytes: u64,
    /// Bytes per (node, subtask) uploaded so far.
    subtask_bytes: std::collections::BTreeMap<(usize, usize), u64>,
    alignment_us: u64,
    all_acked: bool,
    savepoint_reply: Option<oneshot::Sender<Result<String>>>,
    /// Tasks whose state is in it (acknowledged, or finished and their final state).
    included: std::collections::BTreeSet<usize>,
}

/// Everything the coordinator task needs.
pub(crate) struct Runner {
    pub coordinator: Coordinator,
    pub job: String,
    pub max_parallelism: usize,
    pub nodes: Vec<ManifestNode>,
    pub checkpoints: Option<CheckpointStorage>,
    pub savepoints: Option<CheckpointStorage>,
    pub retained: usize,
    pub sources: Vec<mpsc::Sender<SourceControl>>,
    pub notices: Vec<mpsc::UnboundedSender<Notice>>,
    pub events: mpsc::UnboundedReceiver<TaskEvent>,
    pub requests: mpsc::Receiver<Request>,
    pub stats: std::sync::Arc<CheckpointStats>,
    /// Whether tasks send a final state at the end of input and wait for its commit.
    pub final_checkpoint: bool,
}

fn epoch_ms() -> i64 {
    (now_micros() / 1000) as i64
}

impl Runner {
    /// Runs until every task finished (or the job's tasks are gone).
    pub async fn run(mut self) {
        let mut inflight: Option<InFlight> = None;
        let mut savepoint_replies: VecDeque<oneshot::Sender<Result<String>>> = VecDeque::new();
        let mut finished: Vec<Option<Vec<SubtaskSnapshot>>> =
            (0..self.notices.len()).map(|_| None).collect();
        let mut requests_open = true;
        loop {
            let deadline = self.coordinator.next_deadline();
            let uploading = inflight.as_ref().is_some_and(|f| !f.uploads.is_empty());
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    if let Some(a) = self.coordinator.poll(Instant::now()) {
                        self.act(a, &mut inflight, &mut savepoint_replies, &finished).await;
                    }
                }
                r = async { inflight.as_mut().expect("invariant: uploading").uploads.join_next().await }, if uploading => {
                    let f = inflight.as_mut().expect("invariant: uploading");
                    match r {
                        Some(Ok(Ok((node, subtask, bytes)))) => {
                            f.bytes += bytes;
                            *f.subtask_bytes.entry((node, subtask)).or_default() += bytes;
                        }
                        Some(Ok(Err(e))) => {
                            let epoch = f.epoch;
                            tracing::warn!(job = %self.job, epoch, error = %e, "writing checkpoint state failed");
                            if let Some(a) = self.coordinator.failed(epoch, Instant::now()) {
                                self.act(a, &mut inflight, &mut savepoint_replies, &finished).await;
                            }
                            continue;
                        }
                        Some(Err(join)) => {
                            let epoch = f.epoch;
                            tracing::warn!(job = %self.job, epoch, error = %join, "a checkpoint upload task failed");
                            if let Some(a) = self.coordinator.failed(epoch, Instant::now()) {
                                self.act(a, &mut inflight, &mut savepoint_replies, &finished).await;
                            }
                            continue;
                        }
                        None => {}
                    }
                    self.maybe_finalize(&mut inflight).await;
                }
                req = self.requests.recv(), if requests_open => match req {
                    Some(Request::Savepoint { then_stop, reply }) => {
                        if self.savepoints.is_none() {
                            let _ = reply.send(Err(SluiceError::user(
                                "savepoints need a checkpoint or savepoint directory; set one",
                            )));
                        } else {
                            self.coordinator.request_savepoint(then_stop);
                            savepoint_replies.push_back(reply);
                        }
                    }
                    None => requests_open = false,
                },
                ev = self.events.recv() => match ev {
                    None => break,
                    Some(TaskEvent::Ack { epoch, task, snapshots, alignment_us }) => {
                        let Some(f) = inflight.as_mut().filter(|f| f.epoch == epoch) else {
                            continue; // an aborted checkpoint
                        };
                        f.alignment_us = f.alignment_us.max(alignment_us);
                        f.included.insert(task);
                        for s in snapshots {
                            f.entries.push(upload(&f.storage, &f.dir, s, &mut f.uploads));
                        }
                        if let Some(Action::Finalize { .. }) = self.coordinator.ack(epoch, task) {
                            f.all_acked = true;
                            self.maybe_finalize(&mut inflight).await;
                        }
                    }
                    Some(TaskEvent::Finished { task, snapshots }) => {
                        finished[task] = Some(snapshots);
                        if finished.iter().all(Option::is_some) {
                            if let Some(f) = inflight.take() {
                                self.abort(f, "the input ended before every task took the barrier");
                            }
                            let all = finished.iter_mut().flat_map(|s| s.take().unwrap_or_default()).collect();
                            self.final_checkpoint(all).await;
                            break;
                        }
                        // The others go on, and so do checkpoints: this task's final state
                        // stands in for its part of them.
                        if let Some(f) = inflight.as_mut()
                            && f.included.insert(task)
                        {
                            for s in finished[task].iter().flatten().cloned() {
                                f.entries.push(upload(&f.storage, &f.dir, s, &mut f.uploads));
                            }
                        }
                        if let Some(Action::Finalize { .. }) = self.coordinator.task_finished(task)
                            && let Some(f) = inflight.as_mut()
                        {
                            f.all_acked = true;
                            self.maybe_finalize(&mut inflight).await;
                        }
                    }
                },
            }
        }
        for r in savepoint_replies {
            let _ = r.send(Err(SluiceError::user(
                "the job ended before the savepoint was taken",
            )));
        }
    }

    async fn act(
        &mut self,
        action: Action,
        inflight: &mut Option<InFlight>,
        savepoint_replies: &mut VecDeque<oneshot::Sender<Result<String>>>,
        finished: &[Option<Vec<SubtaskSnapshot>>],
    ) {
        match action {
            Action::Trigger {
                epoch,
                kind,
                then_stop,
            } => {
                let (storage, dir) = match kind {
                    CheckpointKind::Checkpoint => {
                        (self.checkpoints.clone(), checkpoint_dir("chk", epoch))
                    }
                    CheckpointKind::Savepoint => {
                        (self.savepoints.clone(), checkpoint_dir("savepoint", epoch))
                    }
                };
                let Some(storage) = storage else {
                    // No directory for this kind: nothing can be written.
                    self.coordinator
                        .decline(epoch, "no checkpoint directory", Instant::now());
                    return;
                };
                let barrier = CheckpointBarrier {
                    epoch,
                    triggered_at_us: now_micros(),
                    kind,
                    then_stop,
                };
                *inflight = Some(InFlight {
                    epoch,
                    kind,
                    then_stop,
                    started: Instant::now(),
                    triggered_at_ms: epoch_ms(),
                    storage,
                    dir,
                    entries: Vec::new(),
                    uploads: JoinSet::new(),
                    subtask_bytes: Default::default(),
                    bytes: 0,
                    alignment_us: 0,
                    all_acked: false,
                    savepoint_reply: match kind {
                        CheckpointKind::Savepoint => savepoint_replies.pop_front(),
                        CheckpointKind::Checkpoint => None,
                    },
                    included: Default::default(),
                });
                // Tasks that already finished are in it with their final state.
                let f = inflight.as_mut().expect("invariant: set");
                for (task, snapshots) in finished.iter().enumerate() {
                    if let Some(snapshots) = snapshots {
                        f.included.insert(task);
                        for s in snapshots.iter().cloned() {
                            f.entries
                                .push(upload(&f.storage, &f.dir, s, &mut f.uploads));
                        }
                    }
                }
                self.record(
                    inflight.as_ref().expect("invariant: set"),
                    CheckpointStatus::InProgress,
                );
                tracing::debug!(job = %self.job, epoch, ?kind, "checkpoint triggered");
                // A source that ended takes no barrier; its final state is (or will be)
                // in the checkpoint. With none left, checkpoints are over.
                let mut taken = 0;
                for s in &self.sources {
                    if s.send(SourceControl::Barrier(barrier)).await.is_ok() {
                        taken += 1;
                    }
                }
                if taken == 0 {
                    self.coordinator.sources_ended();
                    if let Some(Action::Abort { epoch, reason }) =
                        self.coordinator
                            .decline(epoch, "every source has ended", Instant::now())
                        && let Some(f) = inflight.take()
                    {
                        debug_assert_eq!(f.epoch, epoch);
                        self.abort(f, &reason);
                    }
                }
            }
            Action::Abort { epoch, reason } => {
                if let Some(f) = inflight.take() {
                    debug_assert_eq!(f.epoch, epoch);
                    self.abort(f, &reason);
                }
            }
            Action::Finalize { .. } => {}
        }
    }

    fn abort(&self, mut f: InFlight, reason: &str) {
        tracing::warn!(job = %self.job, epoch = f.epoch, reason, "checkpoint aborted");
        self.stats.failed.fetch_add(1, Relaxed);
        f.uploads.abort_all();
        self.record(&f, CheckpointStatus::Failed(reason.to_string()));
        if let Some(r) = f.savepoint_reply.take() {
            let _ = r.send(Err(SluiceError::external(format!(
                "savepoint {} failed: {reason}",
                f.epoch
            ))));
        }
        for n in &self.notices {
            let _ = n.send(Notice::Aborted(f.epoch));
        }
        // Its files are deleted with the next retention pass (no manifest: incomplete).
    }

    fn record(&self, f: &InFlight, status: CheckpointStatus) {
        self.stats.record(CheckpointRecord {
            epoch: f.epoch,
            kind: kind_name(f.kind).to_string(),
            status,
            triggered_at_ms: f.triggered_at_ms,
            duration_ms: f.started.elapsed().as_millis() as u64,
            state_bytes: f.bytes,
            alignment_ms: f.alignment_us as f64 / 1000.0,
            location: format!("{}/{}", f.storage.location(), f.dir),
            subtasks: per_subtask(&f.subtask_bytes),
        });
    }

    fn manifest(
        &self,
        epoch: u64,
        kind: &str,
        started: Instant,
        bytes: u64,
        mut entries: Vec<SubtaskEntry>,
    ) -> Manifest {
        entries.sort_by_key(|e| (e.node, e.subtask));
        Manifest {
            version: Manifest::VERSION,
            job: self.job.clone(),
            epoch,
            kind: kind.to_string(),
            completed_at_ms: epoch_ms(),
            duration_ms: started.elapsed().as_millis() as u64,
            state_bytes: bytes,
            max_parallelism: self.max_parallelism,
            nodes: self.nodes.clone(),
            subtasks: entries,
            sealed: true,
            checksum: None,
        }
    }

    async fn maybe_finalize(&mut self, inflight: &mut Option<InFlight>) {
        let ready = inflight
            .as_ref()
            .is_some_and(|f| f.all_acked && f.uploads.is_empty());
        if !ready {
            return;
        }
        let mut f = inflight.take().expect("invariant: ready");
        let manifest = self.manifest(
            f.epoch,
            kind_name(f.kind),
            f.started,
            f.bytes,
            std::mem::take(&mut f.entries),
        );
        if let Err(e) = f.storage.write_manifest(&f.dir, &manifest).await {
            tracing::warn!(job = %self.job, epoch = f.epoch, error = %e, "writing the manifest failed");
            self.coordinator.failed(f.epoch, Instant::now());
            self.abort(f, &e.to_string());
            return;
        }
        crate::crash::point("checkpoint-manifest");
        let Some((kind, stop)) = self.coordinator.completed(f.epoch, Instant::now()) else {
            return;
        };
        self.stats.completed.fetch_add(1, Relaxed);
        self.record(&f, CheckpointStatus::Completed);
        tracing::info!(
            job = %self.job, epoch = f.epoch, kind = kind_name(kind),
            duration_ms = manifest.duration_ms, bytes = f.bytes,
            "checkpoint complete"
        );
        for n in &self.notices {
            let _ = n.send(Notice::Committed(f.epoch));
        }
        if let Some(r) = f.savepoint_reply.take() {
            let _ = r.send(Ok(format!("{}/{}", f.storage.location(), f.dir)));
        }
        if kind == CheckpointKind::Checkpoint
            && let Some(s) = &self.checkpoints
            && let Err(e) = s.retain("chk", self.retained).await
        {
            tracing::warn!(job = %self.job, error = %e, "deleting old checkpoints failed");
        }
        if stop {
            debug_assert!(f.then_stop);
            tracing::info!(job = %self.job, epoch = f.epoch, "stopped with a savepoint");
        }
    }

    /// The input ended everywhere: record the final state (sink committables, sources
    /// done) as a checkpoint, then let the tasks commit and exit.
    async fn final_checkpoint(&mut self, snapshots: Vec<SubtaskSnapshot>) {
        let epoch = self.coordinator.next_epoch();
        let storage = self.checkpoints.clone().filter(|_| self.final_checkpoint);
        let Some(storage) = storage else {
            for n in &self.notices {
                let _ = n.send(Notice::Committed(FINAL_EPOCH));
            }
            return;
        };
        let started = Instant::now();
        let dir = checkpoint_dir("chk", epoch);
        let mut uploads = JoinSet::new();
        let entries: Vec<SubtaskEntry> = snapshots
            .into_iter()
            .map(|s| upload(&storage, &dir, s, &mut uploads))
            .collect();
        let mut bytes = 0;
        let mut ok = true;
        let mut subtask_bytes = std::collections::BTreeMap::new();
        while let Some(r) = uploads.join_next().await {
            match r {
                Ok(Ok((node, subtask, b))) => {
                    bytes += b;
                    *subtask_bytes.entry((node, subtask)).or_default() += b;
                }
                Ok(Err(e)) => {
                    tracing::error!(job = %self.job, error = %e, "writing the final checkpoint failed");
                    ok = false;
                }
                Err(e) => {
                    tracing::error!(job = %self.job, error = %e, "writing the final checkpoint failed");
                    ok = false;
                }
            }
        }
        let manifest = self.manifest(epoch, "final", started, bytes, entries);
        if ok && let Err(e) = storage.write_manifest(&dir, &manifest).await {
            tracing::error!(job = %self.job, error = %e, "writing the final manifest failed");
            ok = false;
        }
        let notice = if ok {
            crate::crash::point("final-manifest");
            self.stats.completed.fetch_add(1, Relaxed);
            if let Err(e) = storage.retain("chk", self.retained).await {
                tracing::warn!(job = %self.job, error = %e, "deleting old checkpoints failed");
            }
            Notice::Committed(FINAL_EPOCH)
        } else {
            self.stats.failed.fetch_add(1, Relaxed);
            Notice::Aborted(FINAL_EPOCH)
        };
        self.stats.record(CheckpointRecord {
            epoch,
            kind: "final".into(),
            status: if ok {
                CheckpointStatus::Completed
            } else {
                CheckpointStatus::Failed("writing the final checkpoint failed".into())
            },
            triggered_at_ms: epoch_ms(),
            duration_ms: started.elapsed().as_millis() as u64,
            state_bytes: bytes,
            alignment_ms: 0.0,
            location: format!("{}/{dir}", storage.location()),
            subtasks: per_subtask(&subtask_bytes),
        });
        for n in &self.notices {
            let _ = n.send(notice);
        }
    }
}

fn kind_name(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::Checkpoint => "checkpoint",
        CheckpointKind::Savepoint => "savepoint",
    }
}

/// Starts writing a subtask's keyed tables; returns its manifest entry.
fn upload(
    storage: &CheckpointStorage,
    dir: &str,
    s: SubtaskSnapshot,
    uploads: &mut JoinSet<Result<(usize, usize, u64)>>,
) -> SubtaskEntry {
    let mut entry = SubtaskEntry {
        node: s.node,
        subtask: s.subtask,
        meta: s.state.meta,
        timers: s.timers,
        tables: Default::default(),
        positions: s.positions,
    };
    for (name, batches) in s.state.keyed {
        if batches.is_empty() {
            continue;
        }
        let file = format!("n{}-s{}-{name}.arrow", s.node, s.subtask);
        entry.tables.insert(name, file.clone());
        let storage = storage.clone();
        let dir = dir.to_string();
        uploads.spawn(async move {
            let bytes = tokio::task::spawn_blocking(move || encode_table(&batches))
                .await
                .map_err(|e| SluiceError::internal("encoding state failed").with_source(e))??;
            let n = bytes.len() as u64;
            storage.put_sealed(&dir, &file, bytes).await?;
            Ok((s.node, s.subtask, n))
        });
    }
    entry
}

/// Each subtask's bytes, in (node, subtask) order.
fn per_subtask(
    bytes: &std::collections::BTreeMap<(usize, usize), u64>,
) -> Vec<crate::metrics::SubtaskStateBytes> {
    bytes
        .iter()
        .map(
            |(&(node, subtask), &bytes)| crate::metrics::SubtaskStateBytes {
                node,
                subtask,
                bytes,
            },
        )
        .collect()
}
