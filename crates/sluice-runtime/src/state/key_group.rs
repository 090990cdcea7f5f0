//! Key groups: the unit in which keyed state is partitioned and redistributed, and the
//! key hash the hash edges route by (the same function on both sides, so a row's state
//! lives where its rows arrive).

use datafusion_common::hash_utils::{RandomState, create_hashes};
use sluice_types::{Batch, Result, SluiceError};

/// The key group of a key hash: the unit in which keyed state is partitioned, and
/// redistributed when parallelism changes.
#[inline]
pub fn key_group(hash: u64, max_parallelism: usize) -> usize {
    (hash % max_parallelism as u64) as usize
}

/// The subtask that owns a key group (contiguous ranges of key groups per subtask).
#[inline]
pub fn subtask_for_key_group(
    key_group: usize,
    max_parallelism: usize,
    parallelism: usize,
) -> usize {
    key_group * parallelism / max_parallelism
}

/// The hash state used for key hashing: fixed seeds, so the same key maps to the same
/// key group in every process (needed for restoring state and for scale-out).
pub fn key_hash_state() -> RandomState {
    RandomState::default()
}

/// Hashes the key columns of every row into `hashes` (resized to the row count).
pub fn hash_keys(batch: &Batch, key_indices: &[usize], hashes: &mut Vec<u64>) -> Result<()> {
    hashes.clear();
    hashes.resize(batch.num_rows(), 0);
    let arrays: Vec<_> = key_indices.iter().map(|&i| batch.data.column(i)).collect();
    create_hashes(arrays, &key_hash_state(), hashes)
        .map_err(|e| SluiceError::internal("hashing key columns failed").with_source(e))?;
    Ok(())
}
