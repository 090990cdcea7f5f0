//! Checkpoints and savepoints: the protocol ([`coordinator`], pure logic), what a
//! checkpoint holds ([`Manifest`]), and where it goes ([`CheckpointStorage`], through
//! `object_store`: a local directory by default, an S3-compatible store by URL).
//!
//! ```text
//!  <checkpoint dir>/
//!    chk-00000012/                     one directory per checkpoint
//!      n3-s0-slices.arrow              keyed state tables (Arrow IPC), per node/subtask
//!      _manifest.json                  written last: its presence means "complete"
//!    chk-00000013/                     in progress, or aborted (no manifest)
//!    savepoints/sp-00000014/           savepoints (kept until deleted by hand)
//! ```

pub mod coordinator;
pub(crate) mod runner;
mod storage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_types::CheckpointBarrier;

use crate::operator::Timers;
use crate::state::OperatorState;

pub use crate::metrics::{CheckpointRecord, CheckpointStats, CheckpointStatus, SubtaskStateBytes};
pub use storage::{CheckpointStorage, checkpoint_dir};

/// Name of the file that marks a checkpoint complete.
pub const MANIFEST: &str = "_manifest.json";

/// Where one split of a source stood at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPosition {
    /// The split's id ([`crate::Split::id`]).
    pub split: String,
    /// The connector's position (a byte offset, an event count, `{"done": true}`).
    pub position: serde_json::Value,
}

/// What one operator subtask handed over at a barrier.
#[derive(Clone, Debug)]
pub(crate) struct SubtaskSnapshot {
    pub node: usize,
    pub subtask: usize,
    pub state: OperatorState,
    pub timers: Timers,
    pub positions: Vec<SplitPosition>,
}

/// A job graph node as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestNode {
    /// Node id.
    pub id: usize,
    /// Node name.
    pub name: String,
    /// Parallelism when the checkpoint was taken.
    pub parallelism: usize,
}

/// One subtask's entry in a manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SubtaskEntry {
    /// Node id.
    pub node: usize,
    /// Subtask index.
    pub subtask: usize,
    /// Operator-wide state.
    #[serde(default)]
    pub meta: serde_json::Value,
    /// Registered timers.
    #[serde(default)]
    pub timers: Timers,
    /// Keyed state tables: table name to file name in the checkpoint directory.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// Source split positions.
    #[serde(default)]
    pub positions: Vec<SplitPosition>,
}

/// Everything needed to restore a job: written last, so a checkpoint without one is
/// incomplete.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// The job's name.
    pub job: String,
    /// Checkpoint id.
    pub epoch: u64,
    /// `checkpoint`, `savepoint`, or `final` (taken when the input ended).
    pub kind: String,
    /// When it completed (epoch ms).
    pub completed_at_ms: i64,
    /// Trigger to completion.
    pub duration_ms: u64,
    /// Bytes of state files.
    pub state_bytes: u64,
    /// Key groups of the job.
    pub max_parallelism: usize,
    /// The job graph's nodes.
    pub nodes: Vec<ManifestNode>,
    /// Every subtask's state.
    pub subtasks: Vec<SubtaskEntry>,
    /// Whether its state files carry their checksums (written by this format and on).
    #[serde(default)]
    pub sealed: bool,
    /// xxHash64 of the manifest written without this field (hex); checked on read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl Manifest {
    /// Current format version.
    pub const VERSION: u32 = 1;
}

/// What a task tells the coordinator.
pub(crate) enum TaskEvent {
    /// The task snapshotted `epoch`.
    Ack {
        epoch: u64,
        task: usize,
        snapshots: Vec<SubtaskSnapshot>,
        /// Time from the first barrier to alignment on all inputs.
        alignment_us: u64,
    },
    /// All inputs ended and the task flushed: its final state (sink committables).
    Finished {
        task: usize,
        snapshots: Vec<SubtaskSnapshot>,
    },
}

/// What the coordinator tells a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    /// Checkpoint `epoch` is complete: commit what was pre-committed up to it.
    Committed(u64),
    /// Checkpoint `epoch` was given up.
    Aborted(u64),
}

/// Control messages for a source task, from the job (and later the checkpoint coordinator).
#[derive(Debug)]
pub enum SourceControl {
    /// Inject this barrier into the stream.
    Barrier(CheckpointBarrier),
    /// Stop reading and end the stream gracefully: final watermark, flush, end of data.
    Stop,
}

/// The epoch of the final snapshot taken when the input ended.
pub(crate) const FINAL_EPOCH: u64 = u64::MAX;
