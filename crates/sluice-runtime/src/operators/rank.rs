//! Top-N without windows (SQL `ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) <= n`),
//! which is also deduplication (`n = 1`, ordered by time: keep the first or last row).
//!
//! ```text
//!  per partition key: its best n rows, in order
//!  batch ──group by key──> merge with the held rows, sort, keep n ──> emit the ranks
//!                                                                     whose row changed
//! ```
//!
//! The output is an upsert stream keyed by the partition columns and the rank column: the
//! newest row for (key, rank) is the current one. The input is append-only, so a
//! partition's list only improves or grows; no rank is ever deleted. Ties keep arrival
//! order in the direction of the sort: ascending keeps the earlier row (keep-first
//! deduplication), descending the later one (keep-last).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError};

use super::PreparedOperator;
use super::window::prepare_from_template;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::state::{OperatorState, RestoredState, key_groups};

const HELD_TABLE: &str = "held";

/// The top-N operator of one subtask.
pub struct TopNOperator {
    input: SchemaRef,
    out_schema: SchemaRef,
    partition: Vec<usize>,
    partition_types: Vec<DataType>,
    order: usize,
    descending: bool,
    limit: usize,
    /// Partition key → its best rows, in rank order (input schema).
    held: HashMap<Box<[u8]>, RecordBatch>,
    converter: RowConverter,
}

impl TopNOperator {
    /// Checks the columns against the input schema.
    pub fn prepare(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        limit: usize,
        rank_column: &str,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        if limit == 0 {
            return Err(SluiceError::user("top-n needs n >= 1"));
        }
        let index = |name: &str, what: &str| {
            input.index_of(name).map_err(|_| {
                SluiceError::user(format!("top-n: {what} column `{name}` is not in the input"))
            })
        };
        let partition: Vec<usize> = partition_by
            .iter()
            .map(|p| index(p, "partition"))
            .collect::<Result<_>>()?;
        let order = index(order_by, "order")?;
        if input.field_with_name(rank_column).is_ok() {
            return Err(SluiceError::user(format!(
                "top-n: the rank column `{rank_column}` clashes with an input column"
            )));
        }
        let partition_types: Vec<DataType> = partition
            .iter()
            .map(|&i| input.field(i).data_type().clone())
            .collect();
        let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
        let ts = fields.pop().expect("invariant: `_timestamp` is last");
        fields.push(Arc::new(Field::new(rank_column, DataType::Int64, false)));
        fields.push(ts);
        let out_schema: SchemaRef = Arc::new(Schema::new(fields));
        let template = Self {
            input: Arc::clone(input),
            out_schema: Arc::clone(&out_schema),
            partition,
            converter: Self::converter(&partition_types)?,
            partition_types,
            order,
            descending,
            limit,
            held: HashMap::new(),
        };
        Ok(prepare_from_template(template, out_schema, Self::fresh))
    }

    fn converter(types: &[DataType]) -> Result<RowConverter> {
        RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).map_err(|e| {
            SluiceError::user("top-n: unsupported partition column type").with_source(e)
        })
    }

    fn fresh(&self) -> Result<Self> {
        Ok(Self {
            input: Arc::clone(&self.input),
            out_schema: Arc::clone(&self.out_schema),
            partition: self.partition.clone(),
            converter: Self::converter(&self.partition_types)?,
            partition_types: self.partition_types.clone(),
            order: self.order,
            descending: self.descending,
            limit: self.limit,
            held: HashMap::new(),
        })
    }

    fn keys(&self, data: &RecordBatch) -> Result<arrow::row::Rows> {
        let cols: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|&i| Arc::clone(data.column(i)))
            .collect();
        if cols.is_empty() {
            // No partition: one group. An empty key for every row.
            return Ok(RowConverter::new(vec![SortField::new(DataType::Boolean)])?
                .convert_columns(&[Arc::new(arrow::array::BooleanArray::from(vec![
                    true;
                    data.num_rows()
                ])) as ArrayRef])?);
        }
        Ok(self.converter.convert_columns(&cols)?)
    }

    /// The best `limit` rows of `rows` (held rows first, so ties keep arrival order).
    fn best(&self, rows: &RecordBatch) -> Result<RecordBatch> {
        let n = rows.num_rows();
        let seq: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..n as u64));
        let options = SortOptions {
            descending: self.descending,
            nulls_first: false,
        };
        let sorted = lexsort_to_indices(
            &[
                SortColumn {
                    values: Arc::clone(rows.column(self.order)),
                    options: Some(options),
                },
                SortColumn {
                    values: seq,
                    options: Some(options),
                },
            ],
            Some(self.limit),
        )?;
        Ok(take_record_batch(rows, &sorted)?)
    }

    /// The rows of `new` at ranks where it differs from `old`, with their ranks.
    fn changed(&self, old: Option<&RecordBatch>, new: &RecordBatch) -> Result<Option<RecordBatch>> {
        let encode = |b: &RecordBatch| -> Result<arrow::row::Rows> {
            let fields = b
                .schema()
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            Ok(RowConverter::new(fields)?.convert_columns(b.columns())?)
        };
        let new_rows = encode(new)?;
        let old_rows = old.map(encode).transpose()?;
        let mut idx = Vec::new();
        for i in 0..new.num_rows() {
            let same = match (&old_rows, old) {
                (Some(o), Some(ob)) if i < ob.num_rows() => o.row(i) == new_rows.row(i),
                _ => false,
            };
            if !same {
                idx.push(i as u32);
            }
        }
        if idx.is_empty() {
            return Ok(None);
        }
        let ranks = Int64Array::from_iter_values(idx.iter().map(|&i| i as i64 + 1));
        let rows = take_record_batch(new, &UInt32Array::from(idx))?;
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        let ts = columns.pop().expect("invariant: `_timestamp` is last");
        columns.push(Arc::new(ranks));
        columns.push(ts);
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.out_schema),
            columns,
        )?))
    }
}

#[async_trait]
impl Operator for TopNOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.out_schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let data = &batch.data;
        let keys = self.keys(data)?;
        let mut groups: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for i in 0..data.num_rows() {
            groups.entry(keys.row(i).data()).or_default().push(i as u32);
        }
        let mut emitted = Vec::new();
        for (key, idx) in groups {
            let rows = take_record_batch(data, &UInt32Array::from(idx))?;
            let old = self.held.get(key);
            let merged = match old {
                Some(h) => concat_batches(&self.input, [h, &rows])?,
                None => rows,
            };
            let best = self.best(&merged)?;
            if let Some(changed) = self.changed(old, &best)? {
                emitted.push(changed);
            }
            self.held.insert(key.into(), best);
        }
        if !emitted.is_empty() {
            let data = concat_batches(&self.out_schema, &emitted)?;
            out.collect(batch.with_data(data)).await?;
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        if self.held.is_empty() {
            return Ok(state);
        }
        let all = concat_batches(&self.input, self.held.values())?;
        let keys: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|&i| Arc::clone(all.column(i)))
            .collect();
        let groups = key_groups(&keys, all.num_rows(), ctx.max_parallelism)?;
        let fields = all.schema().fields().iter().cloned().collect();
        state.push_keyed(HELD_TABLE, groups, fields, all.columns().to_vec())?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(HELD_TABLE) {
            let b = RecordBatch::try_new(Arc::clone(&self.input), b.columns().to_vec())?;
            let keys = self.keys(&b)?;
            let mut groups: HashMap<&[u8], Vec<u32>> = HashMap::new();
            for i in 0..b.num_rows() {
                groups.entry(keys.row(i).data()).or_default().push(i as u32);
            }
            for (key, idx) in groups {
                let rows = take_record_batch(&b, &UInt32Array::from(idx))?;
                let merged = match self.held.get(key) {
                    Some(h) => concat_batches(&self.input, [h, &rows])?,
                    None => rows,
                };
                let best = self.best(&merged)?;
                self.held.insert(key.into(), best);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::run_prepared;
    use arrow::array::TimestampMillisecondArray;
    use sluice_types::IngestTime;

    fn batch(rows: &[(i64, i64, i64)]) -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
            sluice_types::timestamp_field(),
        ]));
        Batch::try_new(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.iter().map(|r| r.2),
                    )),
                ],
            )
            .unwrap(),
            IngestTime::at(0),
        )
        .unwrap()
    }

    fn rows(out: &[Batch]) -> Vec<(i64, i64, i64)> {
        let mut v = Vec::new();
        for b in out {
            let c = |i: usize| {
                b.data
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            for r in 0..b.num_rows() {
                v.push((c(0).value(r), c(1).value(r), c(2).value(r)));
            }
        }
        v
    }

    #[tokio::test]
    async fn emits_the_ranks_that_change() {
        let schema = batch(&[]).data.schema();
        let p = TopNOperator::prepare(&["k".into()], "v", true, 2, "rn", &schema).unwrap();
        let out = run_prepared(
            &p,
            vec![
                batch(&[(1, 5, 0), (1, 7, 1), (2, 1, 2)]),
                batch(&[(1, 6, 3)]), // rank 2 changes: 6 replaces 5
                batch(&[(1, 4, 4)]), // no change
                batch(&[(1, 9, 5)]), // ranks 1 and 2 change
            ],
        )
        .await
        .unwrap();
        // (key, value, rank): 3 + 1 + 0 + 2 changes; the last row of each (key, rank) is
        // the current top-2.
        let got = rows(&out);
        assert_eq!(got.len(), 6);
        let mut last = std::collections::BTreeMap::new();
        for (k, v, r) in got {
            last.insert((k, r), v);
        }
        assert_eq!(
            last.into_iter().collect::<Vec<_>>(),
            vec![((1, 1), 9), ((1, 2), 7), ((2, 1), 1)]
        );
    }

    #[tokio::test]
    async fn deduplication_keeps_the_first_or_the_last_row() {
        let schema = batch(&[]).data.schema();
        let first =
            TopNOperator::prepare(&["k".into()], "_timestamp", false, 1, "rn", &schema).unwrap();
        let input = || {
            vec![
                batch(&[(1, 10, 5), (1, 11, 5)]),
                batch(&[(1, 12, 6), (2, 13, 1)]),
            ]
        };
        let out = run_prepared(&first, input()).await.unwrap();
        assert_eq!(rows(&out), vec![(1, 10, 1), (2, 13, 1)]);
        let last =
            TopNOperator::prepare(&["k".into()], "_timestamp", true, 1, "rn", &schema).unwrap();
        let out = run_prepared(&last, input()).await.unwrap();
        // the tie at time 5 keeps the later row (11); then 12 replaces it
        let mut got = rows(&out);
        got.sort_unstable();
        assert_eq!(got, vec![(1, 11, 1), (1, 12, 1), (2, 13, 1)]);
    }
}
