//! Keyed state tables: the one way every stateful operator writes its keyed state into a
//! checkpoint and reads it back.
//!
//! ```text
//!  snapshot                                       restore (rows of owned key groups)
//!  TableWriter::keyed(converter, key rows, n)     for batch in restored.table(NAME):
//!    .int64("start", …) .boolean("changed", …)      let mut r = TableReader::new(batch, …)?
//!    .accumulators(states)?                         r.key(i)  r.int64()?  r.boolean()?
//!    .finish(NAME, max_parallelism, &mut state)?    r.accumulators(&counts)  r.rest()
//!
//!  columns: _key_group | k0 … kn (key) | value columns in order | a{agg}_{field} …
//! ```
//!
//! The writer turns row-encoded keys back into columns, computes each row's key group
//! from them (the same hash the hash edges route by) and names the columns; the reader
//! checks the shape against what the operator expects ("the job changed" otherwise),
//! decodes the keys and hands out typed columns in order. Accumulator states (DataFusion's
//! intermediate state, the same one `merge_batch` takes) travel as columns per aggregate.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};
use arrow::row::{Row, RowConverter, Rows};
use datafusion_common::ScalarValue;
use sluice_types::{Result, SluiceError};

use super::{OperatorState, key_groups};

/// Builds one keyed state table of a snapshot.
#[must_use = "a table is added to the snapshot by `finish`"]
pub struct TableWriter {
    keys: Vec<ArrayRef>,
    rows: usize,
    fields: Vec<FieldRef>,
    columns: Vec<ArrayRef>,
}

impl TableWriter {
    /// A table of `rows` rows keyed by `keys`, row-encoded by `converter` (`None`: a
    /// non-keyed operator, every row in key group 0).
    pub fn keyed<'a>(
        converter: Option<&RowConverter>,
        keys: impl IntoIterator<Item = Row<'a>>,
        rows: usize,
    ) -> Result<Self> {
        let keys = match converter {
            Some(c) => c.convert_rows(keys)?,
            None => Vec::new(),
        };
        Ok(Self::with_key_columns(keys, rows))
    }

    /// A table of `rows` rows keyed by the key columns `keys` (none: key group 0).
    pub fn with_key_columns(keys: Vec<ArrayRef>, rows: usize) -> Self {
        let fields = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Arc::new(Field::new(format!("k{i}"), k.data_type().clone(), true)))
            .collect();
        Self {
            columns: keys.clone(),
            keys,
            rows,
            fields,
        }
    }

    /// A table of whole rows, `batch` as it is, keyed by its columns `key_indices`.
    pub fn rows_of(batch: &RecordBatch, key_indices: &[usize]) -> Self {
        Self {
            keys: key_indices
                .iter()
                .map(|&i| Arc::clone(batch.column(i)))
                .collect(),
            rows: batch.num_rows(),
            fields: batch.schema().fields().iter().cloned().collect(),
            columns: batch.columns().to_vec(),
        }
    }

    /// Adds a nullable value column.
    pub fn column(mut self, name: impl Into<String>, column: ArrayRef) -> Self {
        self.fields
            .push(Arc::new(Field::new(name, column.data_type().clone(), true)));
        self.columns.push(column);
        self
    }

    /// Adds a non-null 64-bit integer column.
    pub fn int64(mut self, name: &str, values: Vec<i64>) -> Self {
        self.fields
            .push(Arc::new(Field::new(name, DataType::Int64, false)));
        self.columns.push(Arc::new(Int64Array::from(values)));
        self
    }

    /// Adds a non-null boolean column.
    pub fn boolean(mut self, name: &str, values: Vec<bool>) -> Self {
        self.fields
            .push(Arc::new(Field::new(name, DataType::Boolean, false)));
        self.columns.push(Arc::new(BooleanArray::from(values)));
        self
    }

    /// Adds the accumulator states gathered row by row, `a{aggregate}_{field}` each.
    pub fn accumulators(mut self, states: AccumulatorStates) -> Result<Self> {
        for (a, per_field) in states.values.into_iter().enumerate() {
            for (j, values) in per_field.into_iter().enumerate() {
                let column = ScalarValue::iter_to_array(values).map_err(|e| {
                    SluiceError::internal("encoding accumulator state failed").with_source(e)
                })?;
                self = self.column(format!("a{a}_{j}"), column);
            }
        }
        Ok(self)
    }

    /// Adds accumulator states already in columns (per aggregate, its state columns),
    /// `a{aggregate}_{field}` each.
    pub fn accumulator_columns(mut self, states: &[Vec<ArrayRef>]) -> Self {
        for (a, columns) in states.iter().enumerate() {
            for (j, c) in columns.iter().enumerate() {
                self = self.column(format!("a{a}_{j}"), Arc::clone(c));
            }
        }
        self
    }

    /// Adds the table to `state` as keyed table `name` (nothing when it has no rows).
    pub fn finish(
        self,
        name: &str,
        max_parallelism: usize,
        state: &mut OperatorState,
    ) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let groups = key_groups(&self.keys, self.rows, max_parallelism)?;
        state.push_keyed(name, groups, self.fields, self.columns)
    }
}

/// Accumulator states gathered row by row for [`TableWriter::accumulators`]: per
/// aggregate, per state field, one value per row.
#[derive(Debug)]
pub struct AccumulatorStates {
    values: Vec<Vec<Vec<ScalarValue>>>,
}

impl AccumulatorStates {
    /// Empty, for `aggregates` aggregates.
    pub fn new(aggregates: usize) -> Self {
        Self {
            values: vec![Vec::new(); aggregates],
        }
    }

    /// Adds one row: per aggregate, its state values.
    pub fn push(&mut self, row: Vec<Vec<ScalarValue>>) {
        for (a, values) in row.into_iter().enumerate() {
            self.values[a].resize_with(values.len(), Vec::new);
            for (j, v) in values.into_iter().enumerate() {
                self.values[a][j].push(v);
            }
        }
    }
}

/// Reads one restored batch of a keyed state table, column by column in the order the
/// writer added them.
pub struct TableReader<'a> {
    batch: &'a RecordBatch,
    what: &'a str,
    keys: Option<Rows>,
    next: usize,
}

impl<'a> TableReader<'a> {
    /// Reads `batch` of the state of `what` (for messages), keyed by `nkeys` columns
    /// decoded with `converter` (`None`: not keyed); `columns` is how many columns the
    /// operator expects in all, or `None` to check it itself.
    pub fn new(
        batch: &'a RecordBatch,
        what: &'a str,
        converter: Option<&RowConverter>,
        nkeys: usize,
        columns: Option<usize>,
    ) -> Result<Self> {
        if let Some(expected) = columns
            && batch.num_columns() != expected
        {
            return Err(SluiceError::user(format!(
                "checkpointed {what} state has {} columns, this operator expects {expected}: the job changed",
                batch.num_columns()
            )));
        }
        if batch.num_columns() < nkeys {
            return Err(Self::malformed_error(what));
        }
        let keys = match converter {
            Some(c) => Some(c.convert_columns(&batch.columns()[..nkeys]).map_err(|e| {
                SluiceError::user(format!(
                    "checkpointed {what} keys do not match the operator's key types: the job changed"
                ))
                .with_source(e)
            })?),
            None => None,
        };
        Ok(Self {
            batch,
            what,
            keys,
            next: nkeys,
        })
    }

    fn malformed_error(what: &str) -> SluiceError {
        SluiceError::user(format!("checkpointed {what} state is malformed"))
    }

    /// The error for a table whose content makes no sense.
    pub fn malformed(&self) -> SluiceError {
        Self::malformed_error(self.what)
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Row `i`'s row-encoded key (`None` when not keyed).
    pub fn key(&self, i: usize) -> Option<Row<'_>> {
        self.keys.as_ref().map(|k| k.row(i))
    }

    /// All row-encoded keys (`None` when not keyed).
    pub fn keys(&self) -> Option<&Rows> {
        self.keys.as_ref()
    }

    /// Columns not read yet.
    pub fn remaining(&self) -> usize {
        self.batch.num_columns().saturating_sub(self.next)
    }

    /// The next column.
    pub fn column(&mut self) -> Result<&'a ArrayRef> {
        let c = self
            .batch
            .columns()
            .get(self.next)
            .ok_or_else(|| self.malformed())?;
        self.next += 1;
        Ok(c)
    }

    /// The next `n` columns.
    pub fn columns(&mut self, n: usize) -> Result<&'a [ArrayRef]> {
        let cs = self
            .batch
            .columns()
            .get(self.next..self.next + n)
            .ok_or_else(|| self.malformed())?;
        self.next += n;
        Ok(cs)
    }

    /// Every column not read yet.
    pub fn rest(&mut self) -> &'a [ArrayRef] {
        let cs = &self.batch.columns()[self.next.min(self.batch.num_columns())..];
        self.next = self.batch.num_columns();
        cs
    }

    /// The next column, as 64-bit integers.
    pub fn int64(&mut self) -> Result<&'a Int64Array> {
        let c = self.column()?;
        c.as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| self.malformed())
    }

    /// The next column, as booleans.
    pub fn boolean(&mut self) -> Result<&'a BooleanArray> {
        let c = self.column()?;
        c.as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| self.malformed())
    }

    /// The next columns as accumulator states, `counts[a]` columns for aggregate `a`.
    pub fn accumulators(&mut self, counts: &[usize]) -> Result<Vec<Vec<ArrayRef>>> {
        counts
            .iter()
            .map(|&c| Ok(self.columns(c)?.to_vec()))
            .collect()
    }
}

/// The number of columns a table holds with `nkeys` key columns, `values` value columns
/// and accumulator state columns `counts`.
pub fn table_width(nkeys: usize, values: usize, counts: &[usize]) -> usize {
    nkeys + values + counts.iter().sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RestoredState, decode_table, encode_table, owned_rows};
    use arrow::array::StringArray;
    use arrow::row::SortField;

    #[test]
    fn a_table_round_trips_through_key_groups_at_another_parallelism() {
        let conv = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        let keys = conv
            .convert_columns(&[Arc::new(StringArray::from_iter_values(
                (0..100).map(|i| format!("key{i}")),
            )) as ArrayRef])
            .unwrap();
        let mut states = AccumulatorStates::new(1);
        for i in 0..100 {
            states.push(vec![vec![
                ScalarValue::Int64(Some(i)),
                ScalarValue::Int64(Some(2 * i)),
            ]]);
        }
        let mut snap = OperatorState::default();
        TableWriter::keyed(Some(&conv), keys.iter(), 100)
            .unwrap()
            .int64("n", (0..100).collect())
            .boolean("odd", (0..100).map(|i| i % 2 == 1).collect())
            .accumulators(states)
            .unwrap()
            .finish("t", 128, &mut snap)
            .unwrap();
        let batches = decode_table(&encode_table(&snap.keyed["t"]).unwrap()).unwrap();
        let mut seen = 0;
        for sub in 0..3 {
            let mut restored = RestoredState::default();
            for b in &batches {
                if let Some(r) = owned_rows(b, sub, 3, 128).unwrap() {
                    restored.keyed.entry("t".into()).or_default().push(r);
                }
            }
            for b in restored.table("t") {
                let width = table_width(1, 2, &[2]);
                let mut r = TableReader::new(b, "test", Some(&conv), 1, Some(width)).unwrap();
                let n = r.int64().unwrap();
                let odd = r.boolean().unwrap();
                let acc = r.accumulators(&[2]).unwrap();
                assert_eq!(r.remaining(), 0);
                let back = conv.convert_rows(r.keys().unwrap().iter()).unwrap();
                let names = back[0].as_any().downcast_ref::<StringArray>().unwrap();
                let twice = acc[0][1].as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..r.num_rows() {
                    assert_eq!(names.value(i), format!("key{}", n.value(i)));
                    assert_eq!(odd.value(i), n.value(i) % 2 == 1);
                    assert_eq!(twice.value(i), 2 * n.value(i));
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 100);
    }

    #[test]
    fn a_changed_shape_is_a_user_error() {
        let batch = RecordBatch::try_from_iter([(
            "k0",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        )])
        .unwrap();
        let err = TableReader::new(&batch, "window", None, 0, Some(3))
            .err()
            .unwrap();
        assert!(err.to_string().contains("the job changed"), "{err}");
        let mut r = TableReader::new(&batch, "window", None, 0, None).unwrap();
        assert!(r.boolean().is_err(), "an Int64 column is not booleans");
        assert!(r.int64().is_err(), "no column left");
    }
}
