//! Managed operator state: what an operator hands over at a checkpoint barrier and gets
//! back on restore.
//!
//! ```text
//!  snapshot (subtask s of p)                     restore (subtask s' of p')
//!  keyed table "slices":                         every old subtask's "slices" rows whose
//!   _key_group | key cols | state cols   ──────>  key group s' owns, `_key_group` dropped
//!  meta (operator-wide JSON)            ──────>  every old subtask's meta (the operator
//!                                                 merges them: min watermark, …)
//! ```
//!
//! Keyed state is partitioned into key groups (`hash(key) % max_parallelism`, the same
//! hash the hash edges route by), and each subtask owns a contiguous range of key groups.
//! Because a snapshot row carries its key group, state written at one parallelism is
//! redistributed to any other by filtering, as Flink does with key-group ranges.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion_common::hash_utils::create_hashes;
use sluice_types::{Result, SluiceError};

use crate::partition::{key_group, key_hash_state, subtask_for_key_group};

/// First column of every keyed state table: the row's key group.
pub const KEY_GROUP_COLUMN: &str = "_key_group";

/// The state of one operator subtask at a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct OperatorState {
    /// Keyed tables by name; every batch starts with the [`KEY_GROUP_COLUMN`].
    pub keyed: BTreeMap<String, Vec<RecordBatch>>,
    /// Operator-wide values (JSON); on restore every subtask gets every old subtask's.
    pub meta: serde_json::Value,
}

impl OperatorState {
    /// Whether there is nothing to save.
    pub fn is_empty(&self) -> bool {
        self.keyed.values().all(|b| b.is_empty()) && self.meta.is_null()
    }

    /// Adds `columns` (with `schema`) as rows of keyed table `name`, prefixed with their
    /// key groups.
    pub fn push_keyed(
        &mut self,
        name: &str,
        key_groups: ArrayRef,
        fields: Vec<Arc<Field>>,
        columns: Vec<ArrayRef>,
    ) -> Result<()> {
        let mut all_fields = vec![Arc::new(Field::new(
            KEY_GROUP_COLUMN,
            DataType::UInt32,
            false,
        ))];
        all_fields.extend(fields);
        let mut all_columns = vec![key_groups];
        all_columns.extend(columns);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(all_fields)), all_columns)?;
        if batch.num_rows() > 0 {
            self.keyed.entry(name.to_string()).or_default().push(batch);
        }
        Ok(())
    }
}

/// What a subtask gets back on restore.
#[derive(Clone, Debug, Default)]
pub struct RestoredState {
    /// Keyed tables by name: the rows of the key groups this subtask owns, from every
    /// old subtask, without the key-group column.
    pub keyed: BTreeMap<String, Vec<RecordBatch>>,
    /// Every old subtask's operator-wide values.
    pub metas: Vec<serde_json::Value>,
}

impl RestoredState {
    /// Whether there is nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.keyed.values().all(|b| b.is_empty()) && self.metas.iter().all(|m| m.is_null())
    }

    /// The batches of keyed table `name`.
    pub fn table(&self, name: &str) -> &[RecordBatch] {
        self.keyed.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The non-null metas decoded as `T`.
    pub fn metas<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.metas
            .iter()
            .filter(|m| !m.is_null())
            .map(|m| {
                serde_json::from_value(m.clone()).map_err(|e| {
                    SluiceError::user("checkpointed operator state does not match the operator")
                        .with_source(e)
                })
            })
            .collect()
    }
}

/// The key group of every row of `key_columns` (`rows` rows; no columns: key group 0).
pub fn key_groups(
    key_columns: &[ArrayRef],
    rows: usize,
    max_parallelism: usize,
) -> Result<ArrayRef> {
    if key_columns.is_empty() {
        return Ok(Arc::new(UInt32Array::from(vec![0u32; rows])));
    }
    let mut hashes = vec![0u64; rows];
    create_hashes(key_columns, &key_hash_state(), &mut hashes)
        .map_err(|e| SluiceError::internal("hashing key columns failed").with_source(e))?;
    Ok(Arc::new(UInt32Array::from_iter_values(
        hashes.iter().map(|&h| key_group(h, max_parallelism) as u32),
    )))
}

/// The rows of `batch` (a keyed state table) whose key group subtask `subtask` of
/// `parallelism` owns, without the key-group column; `None` when there are none.
pub fn owned_rows(
    batch: &RecordBatch,
    subtask: usize,
    parallelism: usize,
    max_parallelism: usize,
) -> Result<Option<RecordBatch>> {
    let groups = batch
        .column(0)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| SluiceError::user("checkpoint table has no key-group column"))?;
    let mask: BooleanArray = groups
        .values()
        .iter()
        .map(|&g| Some(subtask_for_key_group(g as usize, max_parallelism, parallelism) == subtask))
        .collect();
    let kept = arrow::compute::filter_record_batch(batch, &mask)?;
    if kept.num_rows() == 0 {
        return Ok(None);
    }
    Ok(Some(
        kept.project(&(1..kept.num_columns()).collect::<Vec<_>>())?,
    ))
}

/// Encodes the batches of one table as an Arrow IPC file.
pub fn encode_table(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &first.schema())?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(buf)
}

/// Decodes an Arrow IPC file written by [`encode_table`].
pub fn decode_table(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| SluiceError::user("checkpoint state file is corrupt").with_source(e))?;
    reader
        .map(|b| {
            b.map_err(|e| SluiceError::user("checkpoint state file is corrupt").with_source(e))
        })
        .collect()
}

/// The number of bytes the arrays of `batches` hold in memory.
pub fn batches_size(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::get_array_memory_size).sum()
}

/// Checks that a restored array has the expected type.
pub fn expect_type(array: &dyn Array, expected: &DataType, what: &str) -> Result<()> {
    if array.data_type() != expected {
        return Err(SluiceError::user(format!(
            "checkpointed {what} has type {}, the operator expects {expected}: the job changed",
            array.data_type()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn rows_redistribute_by_key_group_to_any_parallelism() {
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1_000));
        let groups = key_groups(&[Arc::clone(&keys)], 1_000, 128).unwrap();
        let mut state = OperatorState::default();
        state
            .push_keyed(
                "t",
                groups,
                vec![Arc::new(Field::new("k", DataType::Int64, false))],
                vec![keys],
            )
            .unwrap();
        let bytes = encode_table(&state.keyed["t"]).unwrap();
        let batches = decode_table(&bytes).unwrap();
        for p in [1, 2, 3, 7] {
            let mut seen: Vec<i64> = Vec::new();
            for s in 0..p {
                for b in &batches {
                    if let Some(r) = owned_rows(b, s, p, 128).unwrap() {
                        let k = r.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                        seen.extend(k.values());
                    }
                }
            }
            seen.sort();
            assert_eq!(seen, (0..1_000).collect::<Vec<_>>(), "parallelism {p}");
        }
    }

    #[test]
    fn state_key_groups_match_the_hash_router() {
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(0..100));
        let groups = key_groups(&[Arc::clone(&keys)], 100, 128).unwrap();
        let groups = groups.as_any().downcast_ref::<UInt32Array>().unwrap();
        let batch = sluice_types::Batch::from_user_columns(
            &RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
                vec![keys],
            )
            .unwrap(),
            arrow::array::TimestampMillisecondArray::from_value(0, 100),
            sluice_types::IngestTime::at(0),
        )
        .unwrap();
        let mut hashes = Vec::new();
        crate::partition::hash_keys(&batch, &[0], &mut hashes).unwrap();
        for (h, g) in hashes.iter().zip(groups.values()) {
            assert_eq!(key_group(*h, 128), *g as usize);
        }
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        assert!(decode_table(b"not arrow").is_err());
    }
}
