//! Upserts to a changelog (Flink's ChangelogNormalize): what an `upsert-kafka` source
//! reads is a value per key (or a tombstone), not a changelog; keeping each key's last
//! row turns it into one that takes back what it replaces.
//!
//! ```text
//!  per key: its last row
//!  +I / +U row ──key held──> -U held row, +U row (nothing when they are equal)
//!              └─not held──> +I row
//!  -D key      ──key held──> -D held row (whole), forget it
//!              └─not held──> nothing
//! ```
//!
//! Input and output have the same columns; rows arrive hash-partitioned by the key.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int8Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use async_trait::async_trait;
use sluice_types::{
    Batch, CheckpointBarrier, Result, RowKind, SluiceError, is_updating, user_column_count,
};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{OperatorState, RestoredState};

const LAST_TABLE: &str = "last";

/// Keeps each key's last row; emits the changelog of the upserts.
pub struct ChangelogNormalizeOperator {
    input: SchemaRef,
    keys: Vec<usize>,
    key_rows: RowConverter,
    rows: RowConverter,
    width: usize,
    /// Key → its last row (user columns) and event time.
    last: HashMap<Box<[u8]>, (OwnedRow, i64)>,
}

fn converter(types: &[DataType]) -> Result<RowConverter> {
    RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).map_err(|e| {
        SluiceError::user("changelog normalize: unsupported column type").with_source(e)
    })
}

impl ChangelogNormalizeOperator {
    /// Checks the key columns against the input, an updating stream of upserts.
    pub fn prepare(keys: &[String], input: &SchemaRef) -> Result<PreparedOperator> {
        if !is_updating(input) {
            return Err(SluiceError::internal(
                "changelog normalize reads a stream of upserts with their kinds",
            ));
        }
        let width = user_column_count(input);
        let keys = crate::state::timed_rows::user_key_indices(input, keys)?;
        if keys.is_empty() {
            return Err(SluiceError::user("changelog normalize needs a key"));
        }
        let template = Self::build(Arc::clone(input), keys, width)?;
        Ok(prepare_from_template(
            template,
            Arc::clone(input),
            Self::fresh,
        ))
    }

    /// An empty operator over `input`, keyed by its columns `keys`.
    fn build(input: SchemaRef, keys: Vec<usize>, width: usize) -> Result<Self> {
        let types = |idx: &mut dyn Iterator<Item = usize>| -> Vec<DataType> {
            idx.map(|i| input.field(i).data_type().clone()).collect()
        };
        Ok(Self {
            key_rows: converter(&types(&mut keys.iter().copied()))?,
            rows: converter(&types(&mut (0..width)))?,
            input,
            keys,
            width,
            last: HashMap::new(),
        })
    }

    fn fresh(t: &Self) -> Result<Self> {
        Self::build(Arc::clone(&t.input), t.keys.clone(), t.width)
    }

    /// The registered constructor of `changelog-normalize` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let sluice_plan::NodeKind::ChangelogNormalize { keys } = kind else {
            return Err(crate::operators::wrong_node(kind, "changelog-normalize"));
        };
        Self::prepare(keys, &crate::operators::single_input(inputs)?)
    }

    /// Applies the upserts of `data` (user columns, kinds, times); returns the changes
    /// as (row of `data` or held row, kind, time) in order.
    fn apply(
        &mut self,
        user: &RecordBatch,
        kinds: impl Iterator<Item = RowKind>,
        times: &TimestampMillisecondArray,
    ) -> Result<Vec<(Change, RowKind, i64)>> {
        let keys = self.key_rows.convert_columns(
            &self
                .keys
                .iter()
                .map(|&i| Arc::clone(user.column(i)))
                .collect::<Vec<_>>(),
        )?;
        let rows = self.rows.convert_columns(user.columns())?;
        let mut out = Vec::new();
        for (i, kind) in kinds.enumerate() {
            let key = keys.row(i);
            let ts = times.value(i);
            match kind {
                RowKind::Insert | RowKind::UpdateAfter => {
                    let row = rows.row(i);
                    match self.last.get_mut(key.as_ref()) {
                        Some((held, held_ts)) => {
                            if held.row() == row {
                                continue;
                            }
                            out.push((Change::Held(held.clone()), RowKind::UpdateBefore, *held_ts));
                            out.push((Change::New(i), RowKind::UpdateAfter, ts));
                            *held = row.owned();
                            *held_ts = ts;
                        }
                        None => {
                            out.push((Change::New(i), RowKind::Insert, ts));
                            self.last.insert(key.as_ref().into(), (row.owned(), ts));
                        }
                    }
                }
                RowKind::Delete => {
                    if let Some((held, _)) = self.last.remove(key.as_ref()) {
                        out.push((Change::Held(held), RowKind::Delete, ts));
                    }
                }
                // An upsert stream has no "before" images; one would repeat a delete.
                RowKind::UpdateBefore => {}
            }
        }
        Ok(out)
    }

    /// The changes as a batch of the input's schema.
    fn batch(
        &self,
        user: &RecordBatch,
        changes: Vec<(Change, RowKind, i64)>,
    ) -> Result<RecordBatch> {
        // Rows of the batch by index, held rows decoded: concatenated in order.
        let mut parts: Vec<RecordBatch> = Vec::new();
        let mut run: Vec<u32> = Vec::new();
        let mut held: Vec<OwnedRow> = Vec::new();
        let flush_run = |run: &mut Vec<u32>, parts: &mut Vec<RecordBatch>| -> Result<()> {
            if !run.is_empty() {
                parts.push(take_record_batch(
                    user,
                    &UInt32Array::from(std::mem::take(run)),
                )?);
            }
            Ok(())
        };
        let flush_held = |held: &mut Vec<OwnedRow>, parts: &mut Vec<RecordBatch>| -> Result<()> {
            if !held.is_empty() {
                let columns = self.rows.convert_rows(held.iter().map(|r| r.row()))?;
                parts.push(RecordBatch::try_new(user.schema(), columns)?);
                held.clear();
            }
            Ok(())
        };
        for (c, _, _) in &changes {
            match c {
                Change::New(i) => {
                    flush_held(&mut held, &mut parts)?;
                    run.push(*i as u32);
                }
                Change::Held(r) => {
                    flush_run(&mut run, &mut parts)?;
                    held.push(r.clone());
                }
            }
        }
        flush_run(&mut run, &mut parts)?;
        flush_held(&mut held, &mut parts)?;
        let user_rows = arrow::compute::concat_batches(&user.schema(), &parts)?;
        let kinds = Int8Array::from_iter_values(changes.iter().map(|(_, k, _)| k.code()));
        let times = TimestampMillisecondArray::from_iter_values(changes.iter().map(|(_, _, t)| *t));
        let mut columns = user_rows.columns().to_vec();
        columns.push(Arc::new(kinds));
        columns.push(Arc::new(times));
        Ok(RecordBatch::try_new(Arc::clone(&self.input), columns)?)
    }
}

/// Where a change's row comes from.
enum Change {
    /// Row `i` of the batch.
    New(usize),
    /// A row held before.
    Held(OwnedRow),
}

#[async_trait]
impl Operator for ChangelogNormalizeOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.input)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let user = batch.user_columns();
        let changes = self.apply(&user, batch.kinds(), batch.timestamps())?;
        if changes.is_empty() {
            return Ok(());
        }
        let data = self.batch(&user, changes)?;
        out.collect(batch.with_data(data)).await
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        if self.last.is_empty() {
            return Ok(state);
        }
        crate::state::timed_rows::write_timed_rows(
            &self.rows,
            self.last.values().map(|(r, _)| r.row()),
            self.last.values().map(|(_, t)| *t),
            &self.input,
            &self.keys,
            LAST_TABLE,
            ctx.max_parallelism,
            &mut state,
        )?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(LAST_TABLE) {
            let (user, times) =
                crate::state::timed_rows::read_timed_rows(b, self.width, "changelog-normalize")?;
            let inserts = std::iter::repeat_n(RowKind::Insert, user.num_rows());
            self.apply(&user, inserts, &times)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use crate::operators::test_util;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn upserts(rows: &[(i64, Option<&str>, RowKind)]) -> Batch {
        let user = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, false),
                Field::new("v", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        Batch::from_changes(
            &user,
            Int8Array::from_iter_values(rows.iter().map(|r| r.2.code())),
            TimestampMillisecondArray::from_iter_values(0..rows.len() as i64),
            sluice_types::IngestTime::at(0),
        )
        .unwrap()
    }

    fn changes(b: &Batch) -> Vec<String> {
        let k = b
            .data
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let v = b
            .data
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        b.kinds()
            .enumerate()
            .map(|(i, kind)| format!("{} {} {}", kind.short(), k.value(i), v.value(i)))
            .collect()
    }

    #[tokio::test]
    async fn upserts_become_updates_and_tombstones_take_back_the_whole_row() {
        use RowKind::*;
        let first = upserts(&[(1, Some("a"), Insert), (2, Some("b"), Insert)]);
        let schema = first.data.schema();
        let p = ChangelogNormalizeOperator::prepare(&["k".to_string()], &schema).unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        // Key 1 changes, key 2 is written again unchanged, key 2 is deleted (its
        // tombstone carries the key only), key 3 is deleted without ever being there.
        let second = upserts(&[
            (1, Some("a2"), Insert),
            (2, Some("b"), Insert),
            (2, None, Delete),
            (3, None, Delete),
        ]);
        op.process_batch(second, &mut ctx, &mut out).await.unwrap();
        let all: Vec<String> = out.batches.iter().flat_map(changes).collect();
        assert_eq!(all, ["+I 1 a", "+I 2 b", "-U 1 a", "+U 1 a2", "-D 2 b"]);

        // Restored from a snapshot, it knows key 1's row.
        let state = op.snapshot(&test_util::barrier(), &mut ctx).await.unwrap();
        let mut again = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        again
            .restore(test_util::restored(&state, 0, 1), &mut ctx)
            .await
            .unwrap();
        let mut out = VecCollector::default();
        again
            .process_batch(upserts(&[(1, None, Delete)]), &mut ctx, &mut out)
            .await
            .unwrap();
        let all: Vec<String> = out.batches.iter().flat_map(changes).collect();
        assert_eq!(all, ["-D 1 a2"]);
    }
}
