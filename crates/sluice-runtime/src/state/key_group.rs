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

/// The first key group `subtask` owns: state an unkeyed subtask files under it comes
/// back to the same subtask when the parallelism is unchanged.
#[inline]
pub fn first_key_group(subtask: usize, parallelism: usize, max_parallelism: usize) -> usize {
    (subtask * max_parallelism).div_ceil(parallelism.max(1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subtask_owns_its_first_key_group() {
        for max in [1, 7, 128, 1000] {
            for p in 1..=max.min(40) {
                for s in 0..p {
                    let g = first_key_group(s, p, max);
                    assert_eq!(subtask_for_key_group(g, max, p), s, "{s} of {p}, max {max}");
                    assert!(g == 0 || subtask_for_key_group(g - 1, max, p) < s);
                }
            }
        }
    }
}
