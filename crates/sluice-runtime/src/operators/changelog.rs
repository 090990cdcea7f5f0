//! Turns an upsert stream (the newest row of a key is its value) into a Debezium-style
//! changelog: one row per change with `before` (the key's previous row, or null),
//! `after` (the new row) and `op` (`c` for a new key, `u` for an update).
//!
//! ```text
//!  upserts by (k):  k=1 v=5   k=1 v=7   k=2 v=1
//!  changelog:       {before: null, after: {k:1,v:5}, op: c}
//!                   {before: {k:1,v:5}, after: {k:1,v:7}, op: u}
//!                   {before: null, after: {k:2,v:1}, op: c}
//! ```
//!
//! A row equal to the key's current one changes nothing and is not emitted. The last row
//! of every key is the operator's state, checkpointed by key group.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBufferBuilder, RecordBatch, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::{interleave, take};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use async_trait::async_trait;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, TIMESTAMP_FIELD};

use super::PreparedOperator;
use super::prepare_from_template;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::state::{OperatorState, RestoredState, TableWriter};

const LAST_TABLE: &str = "last";

/// The changelog operator of one subtask.
pub struct ChangelogOperator {
    input: SchemaRef,
    /// The user columns (without `_timestamp`), as the struct fields of before/after.
    fields: Fields,
    out_schema: SchemaRef,
    keys: Vec<usize>,
    key_converter: RowConverter,
    row_converter: RowConverter,
    /// Key → its current row (user columns, row format).
    last: HashMap<Box<[u8]>, OwnedRow>,
}

impl ChangelogOperator {
    /// Checks the key columns against the input schema.
    pub fn prepare(keys: &[String], input: &SchemaRef) -> Result<PreparedOperator> {
        let key_idx: Vec<usize> = keys
            .iter()
            .map(|k| {
                input.index_of(k).map_err(|_| {
                    SluiceError::user(format!(
                        "changelog key `{k}` is not a column of the rows; select it"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let fields: Fields = input
            .fields()
            .iter()
            .filter(|f| f.name() != TIMESTAMP_FIELD)
            .cloned()
            .collect();
        let row = DataType::Struct(fields.clone());
        let out_schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("before", row.clone(), true),
            Field::new("after", row, false),
            Field::new("op", DataType::Utf8, false),
            sluice_types::timestamp_field(),
        ]));
        let template = Self::build(Arc::clone(input), fields, Arc::clone(&out_schema), key_idx)?;
        Ok(prepare_from_template(template, out_schema, Self::fresh))
    }

    fn build(
        input: SchemaRef,
        fields: Fields,
        out_schema: SchemaRef,
        keys: Vec<usize>,
    ) -> Result<Self> {
        let key_types: Vec<DataType> = keys
            .iter()
            .map(|&i| input.field(i).data_type().clone())
            .collect();
        let conv = |types: Vec<DataType>| {
            RowConverter::new(types.into_iter().map(SortField::new).collect())
                .map_err(|e| SluiceError::user("changelog: unsupported column type").with_source(e))
        };
        // No key columns: one key, and the key converter is never used.
        let key_fields = if key_types.is_empty() {
            vec![DataType::Boolean]
        } else {
            key_types
        };
        Ok(Self {
            key_converter: conv(key_fields)?,
            row_converter: conv(fields.iter().map(|f| f.data_type().clone()).collect())?,
            input,
            fields,
            out_schema,
            keys,
            last: HashMap::new(),
        })
    }

    fn fresh(&self) -> Result<Self> {
        Self::build(
            Arc::clone(&self.input),
            self.fields.clone(),
            Arc::clone(&self.out_schema),
            self.keys.clone(),
        )
    }

    fn user_columns(&self, data: &RecordBatch) -> Vec<ArrayRef> {
        data.columns()[..self.fields.len()].to_vec()
    }

    /// Records the rows of `data` as their keys' current rows; returns the changes as
    /// (row index, previous row).
    fn absorb(&mut self, data: &RecordBatch) -> Result<Vec<(u32, Option<OwnedRow>)>> {
        let key_cols: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|&i| Arc::clone(data.column(i)))
            .collect();
        let keys = match key_cols.is_empty() {
            // No key columns: every row updates the one key.
            true => None,
            false => Some(self.key_converter.convert_columns(&key_cols)?),
        };
        let rows = self
            .row_converter
            .convert_columns(&self.user_columns(data))?;
        let mut changes = Vec::new();
        for i in 0..data.num_rows() {
            let row = rows.row(i);
            let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(i).data());
            match self.last.get_mut(key) {
                Some(current) if current.row() == row => {}
                Some(current) => {
                    let previous = std::mem::replace(current, row.owned());
                    changes.push((i as u32, Some(previous)));
                }
                None => {
                    self.last.insert(key.into(), row.owned());
                    changes.push((i as u32, None));
                }
            }
        }
        Ok(changes)
    }

    fn emit(
        &self,
        data: &RecordBatch,
        changes: Vec<(u32, Option<OwnedRow>)>,
    ) -> Result<RecordBatch> {
        let idx = UInt32Array::from_iter_values(changes.iter().map(|(i, _)| *i));
        let after_cols: Vec<ArrayRef> = self
            .user_columns(data)
            .iter()
            .map(|c| take(c, &idx, None))
            .collect::<std::result::Result<_, _>>()?;
        // before: previous rows where there was one, nulls elsewhere.
        let previous: Vec<_> = changes
            .iter()
            .filter_map(|(_, p)| p.as_ref().map(|r| r.row()))
            .collect();
        let prev_cols = if previous.is_empty() {
            Vec::new()
        } else {
            self.row_converter.convert_rows(previous)?
        };
        let mut valid = BooleanBufferBuilder::new(changes.len());
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(changes.len());
        let mut k = 0;
        for (_, p) in &changes {
            valid.append(p.is_some());
            // source 0: the previous rows; source 1: the new rows (placeholder values)
            if p.is_some() {
                picks.push((0, k));
                k += 1;
            } else {
                picks.push((1, picks.len()));
            }
        }
        let before_cols: Vec<ArrayRef> = if prev_cols.is_empty() {
            after_cols.clone()
        } else {
            prev_cols
                .iter()
                .zip(&after_cols)
                .map(|(p, a)| interleave(&[p.as_ref() as &dyn Array, a.as_ref()], &picks))
                .collect::<std::result::Result<_, _>>()?
        };
        let nulls = NullBuffer::new(valid.finish());
        let before = StructArray::try_new(self.fields.clone(), before_cols, Some(nulls))?;
        let after = StructArray::try_new(self.fields.clone(), after_cols, None)?;
        let op = StringArray::from_iter_values(
            changes
                .iter()
                .map(|(_, p)| if p.is_some() { "u" } else { "c" }),
        );
        let ts = take(data.column(data.num_columns() - 1), &idx, None)?;
        Ok(RecordBatch::try_new(
            Arc::clone(&self.out_schema),
            vec![Arc::new(before), Arc::new(after), Arc::new(op), ts],
        )?)
    }
}

#[async_trait]
impl Operator for ChangelogOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.out_schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let changes = self.absorb(&batch.data)?;
        if changes.is_empty() {
            return Ok(());
        }
        let data = self.emit(&batch.data, changes)?;
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
        let columns = self
            .row_converter
            .convert_rows(self.last.values().map(|r| r.row()))?;
        let rows = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(self.fields.clone())),
            columns,
        )?;
        TableWriter::rows_of(&rows, &self.keys).finish(
            LAST_TABLE,
            ctx.max_parallelism,
            &mut state,
        )?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(LAST_TABLE) {
            self.absorb(b)?;
        }
        Ok(())
    }
}

impl ChangelogOperator {
    /// The registered constructor of `changelog` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::Changelog { keys } = kind else {
            return Err(crate::operators::wrong_node(kind, "changelog"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare(keys, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::run_prepared;

    fn batch(rows: &[(i64, i64)]) -> Batch {
        let rows: Vec<(i64, i64, i64)> = rows.iter().map(|&(k, v)| (k, v, 0)).collect();
        crate::operators::test_util::int_batch(["k", "v"], &rows)
    }

    #[tokio::test]
    async fn updates_carry_the_previous_row() {
        let schema = batch(&[]).data.schema();
        let p = ChangelogOperator::prepare(&["k".into()], &schema).unwrap();
        let out = run_prepared(
            &p,
            vec![
                batch(&[(1, 5), (2, 1)]),
                batch(&[(1, 7), (2, 1)]),
                batch(&[(1, 8)]),
            ],
        )
        .await
        .unwrap();
        let mut lines = Vec::new();
        for b in &out {
            let data = b.user_columns();
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            w.write(&data).unwrap();
            w.finish().unwrap();
            lines.extend(
                String::from_utf8(w.into_inner())
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
        assert_eq!(
            lines,
            [
                r#"{"after":{"k":1,"v":5},"op":"c"}"#,
                r#"{"after":{"k":2,"v":1},"op":"c"}"#,
                r#"{"before":{"k":1,"v":5},"after":{"k":1,"v":7},"op":"u"}"#,
                r#"{"before":{"k":1,"v":7},"after":{"k":1,"v":8},"op":"u"}"#,
            ],
            "an unchanged row (2, 1) is not emitted"
        );
    }
}
