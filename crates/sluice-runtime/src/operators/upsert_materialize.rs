//! Before an upsert sink (Flink's SinkUpsertMaterializer): an upsert sink keeps one value
//! per key, but the changelog it is given may hold several rows of one key (a join, a
//! Top-N, an aggregate grouped by other columns), and changes of one key may arrive from
//! different upstream subtasks in another order than they happened. Writing them as they
//! come would tombstone a key another row still holds, or leave a replaced value. This
//! step keeps, per key, the rows that hold it, in arrival order; the key's value is the
//! row added last.
//!
//! ```text
//!  per key: its rows, oldest first
//!  +I / +U row ──> append it ──> +I row (the key was empty) / +U row
//!  -U / -D row ──> remove its last copy ─┬─ it was the latest, others left ──> +U new latest
//!                                        ├─ no row left ─────────────────────> -U / -D row
//!                                        └─ an older row, or none such ───────> nothing
//! ```
//!
//! Input and output have the same columns; rows arrive hash-partitioned by the key.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int8Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use async_trait::async_trait;
use sluice_types::{
    Batch, CheckpointBarrier, Result, RowKind, SluiceError, is_updating, user_column_count,
};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{OperatorState, RestoredState};

const ROWS_TABLE: &str = "rows";

/// Keeps each key's rows; emits the key's latest row as its value.
pub struct UpsertMaterializeOperator {
    input: SchemaRef,
    keys: Vec<usize>,
    key_rows: RowConverter,
    rows: RowConverter,
    width: usize,
    /// Key → its rows (user columns) and their event times, oldest first.
    held: HashMap<Box<[u8]>, Vec<(OwnedRow, i64)>>,
}

fn converter(types: &[DataType]) -> Result<RowConverter> {
    RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).map_err(|e| {
        SluiceError::user("upsert materialize: unsupported column type").with_source(e)
    })
}

impl UpsertMaterializeOperator {
    /// Checks the key columns against the updating input.
    pub fn prepare(keys: &[String], input: &SchemaRef) -> Result<PreparedOperator> {
        if !is_updating(input) {
            return Err(SluiceError::internal(
                "upsert materialize reads an updating stream",
            ));
        }
        let width = user_column_count(input);
        let keys: Vec<usize> = keys
            .iter()
            .map(|k| {
                input.fields()[..width]
                    .iter()
                    .position(|f| f.name() == k)
                    .ok_or_else(|| {
                        SluiceError::user(format!("the key column `{k}` is not a column"))
                    })
            })
            .collect::<Result<_>>()?;
        if keys.is_empty() {
            return Err(SluiceError::user("upsert materialize needs a key"));
        }
        let template = Self::build(Arc::clone(input), keys, width)?;
        Ok(prepare_from_template(
            template,
            Arc::clone(input),
            Self::fresh,
        ))
    }

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
            held: HashMap::new(),
        })
    }

    fn fresh(t: &Self) -> Result<Self> {
        Self::build(Arc::clone(&t.input), t.keys.clone(), t.width)
    }

    /// The registered constructor of `upsert-materialize` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let sluice_plan::NodeKind::UpsertMaterialize { keys } = kind else {
            return Err(crate::operators::wrong_node(kind, "upsert-materialize"));
        };
        Self::prepare(keys, &crate::operators::single_input(inputs)?)
    }

    /// Applies the changes of `user` (with their kinds and times); returns what to emit:
    /// (row, kind, time) in order.
    fn apply(
        &mut self,
        user: &RecordBatch,
        kinds: impl Iterator<Item = RowKind>,
        times: &TimestampMillisecondArray,
    ) -> Result<Vec<(OwnedRow, RowKind, i64)>> {
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
            let row = rows.row(i);
            let ts = times.value(i);
            if kind.is_addition() {
                let list = match self.held.get_mut(key.as_ref()) {
                    Some(list) => list,
                    None => self.held.entry(key.as_ref().into()).or_default(),
                };
                let kind = match list.is_empty() {
                    true => RowKind::Insert,
                    false => RowKind::UpdateAfter,
                };
                list.push((row.owned(), ts));
                out.push((row.owned(), kind, ts));
                continue;
            }
            let Some(list) = self.held.get_mut(key.as_ref()) else {
                // Taking back a row the key never had: nothing to take back.
                continue;
            };
            let Some(at) = list.iter().rposition(|(r, _)| r.row() == row) else {
                continue;
            };
            let (removed, _) = list.remove(at);
            if list.is_empty() {
                // An update's before-image stays one (`-U`): the sink skips it when the
                // key's new value follows in the batch, and deletes the key when none does.
                self.held.remove(key.as_ref());
                out.push((removed, kind, ts));
            } else if at == list.len() {
                let (latest, latest_ts) = list.last().expect("invariant: not empty").clone();
                out.push((latest, RowKind::UpdateAfter, latest_ts.max(ts)));
            }
        }
        Ok(out)
    }

    /// The changes as a batch of the input's schema.
    fn batch(&self, changes: &[(OwnedRow, RowKind, i64)]) -> Result<RecordBatch> {
        let mut columns = self
            .rows
            .convert_rows(changes.iter().map(|(r, _, _)| r.row()))?;
        columns.push(Arc::new(Int8Array::from_iter_values(
            changes.iter().map(|(_, k, _)| k.code()),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            changes.iter().map(|(_, _, t)| *t),
        )));
        Ok(RecordBatch::try_new(Arc::clone(&self.input), columns)?)
    }
}

#[async_trait]
impl Operator for UpsertMaterializeOperator {
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
        let data = self.batch(&changes)?;
        out.collect(batch.with_data(data)).await
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        // Oldest first per key: a restore appends them back in this order.
        if self.held.is_empty() {
            return Ok(state);
        }
        let held = || self.held.values().flatten();
        crate::state::timed_rows::write_timed_rows(
            &self.rows,
            held().map(|(r, _)| r.row()),
            held().map(|(_, t)| *t),
            &self.input,
            &self.keys,
            ROWS_TABLE,
            ctx.max_parallelism,
            &mut state,
        )?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(ROWS_TABLE) {
            let (user, times) =
                crate::state::timed_rows::read_timed_rows(b, self.width, "upsert-materialize")?;
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

    fn changes(rows: &[(i64, &str, RowKind)]) -> Batch {
        let user = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, false),
                Field::new("v", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
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

    fn shown(out: &[Batch]) -> Vec<String> {
        out.iter()
            .flat_map(|b| {
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
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_key_shows_its_latest_row_until_no_row_holds_it() {
        use RowKind::*;
        let first = changes(&[(1, "a", Insert), (1, "b", Insert), (2, "x", Insert)]);
        let schema = first.data.schema();
        let p = UpsertMaterializeOperator::prepare(&["k".to_string()], &schema).unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        // Key 1 loses "a" (older: nothing), an update of key 2 arrives new row first (as
        // from another upstream subtask): the key keeps "y".
        op.process_batch(
            changes(&[
                (1, "a", Delete),
                (2, "y", UpdateAfter),
                (2, "x", UpdateBefore),
            ]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(
            shown(&out.batches),
            ["+I 1 a", "+U 1 b", "+I 2 x", "+U 2 y"],
            "no tombstone for a key another row still holds"
        );
        // Through a checkpoint: key 1 holds "b" and "c"; taking "c" back shows "b" again,
        // taking "b" back deletes the key.
        op.process_batch(changes(&[(1, "c", Insert)]), &mut ctx, &mut out)
            .await
            .unwrap();
        let state = op.snapshot(&test_util::barrier(), &mut ctx).await.unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        op.restore(test_util::restored(&state, 0, 1), &mut ctx)
            .await
            .unwrap();
        let mut out = VecCollector::default();
        op.process_batch(
            changes(&[(1, "c", Delete), (1, "b", Delete), (3, "z", Delete)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(shown(&out.batches), ["+U 1 b", "-D 1 b"]);
    }
}
