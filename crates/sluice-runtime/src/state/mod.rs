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

pub mod key_group;
mod table;
pub(crate) mod timed_rows;
pub(crate) mod ttl;

use key_group::{key_group, key_hash_state, subtask_for_key_group};

pub use table::{AccumulatorStates, TableReader, TableWriter, table_width};

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

/// Keyed state for operators written against the operator API: one `T` per key
/// (keys row-encoded with the Arrow row format), checkpointed into a keyed table and
/// redistributed by key group on restore. With a TTL, an entry not written for that long
/// is invisible and dropped by [`KeyedState::expire`] (Flink's `StateTtlConfig` with
/// update-on-write and never-return-expired).
///
/// [`ValueState`], [`ListState`] and [`MapState`] are its three shapes.
///
/// ```
/// # use std::sync::Arc; use arrow::array::*; use arrow::datatypes::DataType;
/// use sluice_runtime::state::ListState;
/// let mut seen: ListState<i64> = ListState::new(&[DataType::Utf8], None).unwrap();
/// let keys = seen.encode(&[Arc::new(StringArray::from(vec!["a", "b", "a"])) as ArrayRef]).unwrap();
/// for (i, k) in keys.iter().enumerate() {
///     seen.append(k.as_ref(), i as i64, 0);
/// }
/// assert_eq!(seen.get(keys.row(0).as_ref(), 0), Some(&vec![0, 2]));
/// ```
pub struct KeyedState<T> {
    converter: arrow::row::RowConverter,
    entries:
        std::collections::HashMap<Box<[u8]>, Entry<T>, datafusion_common::hash_utils::RandomState>,
    ttl: Option<ttl::Ttl>,
}

struct Entry<T> {
    value: T,
    written_ms: i64,
}

/// One value per key.
pub type ValueState<V> = KeyedState<V>;
/// A list per key.
pub type ListState<V> = KeyedState<Vec<V>>;
/// A map per key.
pub type MapState<K, V> = KeyedState<BTreeMap<K, V>>;

impl<T: serde::Serialize + serde::de::DeserializeOwned> KeyedState<T> {
    /// Empty state for keys of `key_types`, entries expiring `ttl` after their last write.
    pub fn new(key_types: &[DataType], ttl: Option<std::time::Duration>) -> Result<Self> {
        let fields = key_types
            .iter()
            .map(|t| arrow::row::SortField::new(t.clone()))
            .collect();
        Ok(Self {
            converter: arrow::row::RowConverter::new(fields)
                .map_err(|e| SluiceError::user("unsupported key column type").with_source(e))?,
            entries: Default::default(),
            ttl: ttl::Ttl::of(ttl.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        })
    }

    /// Row-encodes key columns; `rows.row(i).as_ref()` is row i's key.
    pub fn encode(&self, key_columns: &[ArrayRef]) -> Result<arrow::row::Rows> {
        Ok(self.converter.convert_columns(key_columns)?)
    }

    fn live(&self, e: &Entry<T>, now_ms: i64) -> bool {
        self.ttl
            .is_none_or(|ttl| !ttl.expired_at(e.written_ms, now_ms))
    }

    /// The value of `key`, unless absent or expired at `now_ms`.
    pub fn get(&self, key: &[u8], now_ms: i64) -> Option<&T> {
        self.entries
            .get(key)
            .filter(|e| self.live(e, now_ms))
            .map(|e| &e.value)
    }

    /// Sets the value of `key`.
    pub fn put(&mut self, key: &[u8], value: T, now_ms: i64) {
        self.entries.insert(
            key.into(),
            Entry {
                value,
                written_ms: now_ms,
            },
        );
    }

    /// The value of `key` to change in place (a default one if absent or expired); counts
    /// as a write.
    pub fn update(&mut self, key: &[u8], now_ms: i64) -> &mut T
    where
        T: Default,
    {
        let ttl = self.ttl;
        let e = self.entries.entry(key.into()).or_insert_with(|| Entry {
            value: T::default(),
            written_ms: now_ms,
        });
        if ttl.is_some_and(|ttl| ttl.expired_at(e.written_ms, now_ms)) {
            e.value = T::default();
        }
        e.written_ms = now_ms;
        &mut e.value
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) -> Option<T> {
        self.entries.remove(key).map(|e| e.value)
    }

    /// Drops every entry expired at `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let Some(ttl) = self.ttl else {
            return 0;
        };
        let before = self.entries.len();
        self.entries
            .retain(|_, e| !ttl.expired_at(e.written_ms, now_ms));
        before - self.entries.len()
    }

    /// Number of keys held (expired ones included until [`KeyedState::expire`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds this state to a snapshot as keyed table `name` (keys, the value as JSON, the
    /// time of its last write).
    pub fn snapshot(
        &self,
        name: &str,
        max_parallelism: usize,
        out: &mut OperatorState,
    ) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let parser = self.converter.parser();
        let mut values = arrow::array::StringBuilder::new();
        let mut written = Vec::with_capacity(self.entries.len());
        for e in self.entries.values() {
            let json = serde_json::to_string(&e.value).map_err(|err| {
                SluiceError::internal("encoding keyed state failed").with_source(err)
            })?;
            values.append_value(json);
            written.push(e.written_ms);
        }
        TableWriter::keyed(
            Some(&self.converter),
            self.entries.keys().map(|k| parser.parse(k)),
            self.entries.len(),
        )?
        .column("value", Arc::new(values.finish()))
        .int64("written_ms", written)
        .finish(name, max_parallelism, out)
    }

    /// Adds the restored keyed table `name` to this state.
    pub fn restore(&mut self, name: &str, restored: &RestoredState) -> Result<()> {
        for batch in restored.table(name) {
            let nkeys = batch.num_columns().saturating_sub(2);
            let mut r = TableReader::new(batch, name, Some(&self.converter), nkeys, None)?;
            let values = r
                .column()?
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .ok_or_else(|| r.malformed())?;
            let written = r.int64()?;
            for i in 0..r.num_rows() {
                let value: T = serde_json::from_str(values.value(i)).map_err(|e| {
                    SluiceError::user(format!(
                        "checkpointed state `{name}` does not match its type"
                    ))
                    .with_source(e)
                })?;
                let key = r.key(i).expect("invariant: keyed state has keys");
                self.entries.insert(
                    key.as_ref().into(),
                    Entry {
                        value,
                        written_ms: written.value(i),
                    },
                );
            }
        }
        Ok(())
    }
}

impl<V: serde::Serialize + serde::de::DeserializeOwned> KeyedState<Vec<V>> {
    /// Appends to the list of `key`.
    pub fn append(&mut self, key: &[u8], value: V, now_ms: i64) {
        self.update(key, now_ms).push(value);
    }
}

impl<K, V> KeyedState<BTreeMap<K, V>>
where
    K: Ord + serde::Serialize + serde::de::DeserializeOwned,
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    /// Sets `map_key` in the map of `key`.
    pub fn insert(&mut self, key: &[u8], map_key: K, value: V, now_ms: i64) {
        self.update(key, now_ms).insert(map_key, value);
    }
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
        crate::state::key_group::hash_keys(&batch, &[0], &mut hashes).unwrap();
        for (h, g) in hashes.iter().zip(groups.values()) {
            assert_eq!(key_group(*h, 128), *g as usize);
        }
    }

    #[test]
    fn keyed_state_expires_and_survives_a_rescaling_restore() {
        let ttl = Some(std::time::Duration::from_millis(100));
        let mut s: MapState<String, i64> = MapState::new(&[DataType::Int64], ttl).unwrap();
        let keys = s
            .encode(&[Arc::new(Int64Array::from_iter_values(0..10)) as ArrayRef])
            .unwrap();
        for (i, k) in keys.iter().enumerate() {
            s.insert(k.as_ref(), "x".into(), i as i64, if i < 5 { 0 } else { 50 });
        }
        assert_eq!(s.get(keys.row(0).as_ref(), 99).map(|m| m["x"]), Some(0));
        assert_eq!(
            s.get(keys.row(0).as_ref(), 100),
            None,
            "expired: never returned"
        );
        assert_eq!(s.expire(100), 5);
        assert_eq!(s.len(), 5);
        // Written again after expiry: starts from empty.
        assert_eq!(s.update(keys.row(0).as_ref(), 200).len(), 0);

        let mut snap = OperatorState::default();
        s.snapshot("m", 128, &mut snap).unwrap();
        let bytes = encode_table(&snap.keyed["m"]).unwrap();
        let batches = decode_table(&bytes).unwrap();
        let mut total = 0;
        for sub in 0..3 {
            let mut restored = RestoredState::default();
            for b in &batches {
                if let Some(r) = owned_rows(b, sub, 3, 128).unwrap() {
                    restored.keyed.entry("m".into()).or_default().push(r);
                }
            }
            let mut r: MapState<String, i64> = MapState::new(&[DataType::Int64], ttl).unwrap();
            r.restore("m", &restored).unwrap();
            total += r.len();
            for k in keys.iter().skip(5) {
                if let Some(m) = r.get(k.as_ref(), 120) {
                    assert!(m["x"] >= 5);
                }
            }
        }
        assert_eq!(
            total, 6,
            "five live keys and the rewritten one, spread over subtasks"
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        assert!(decode_table(b"not arrow").is_err());
    }
}
