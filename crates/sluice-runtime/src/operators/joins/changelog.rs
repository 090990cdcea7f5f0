//! The regular join of updating inputs, and regular outer joins: a join whose output
//! takes rows back. Each side holds its rows as a multiset per join key (row → how many
//! times it is there, how many rows of the other side it matches); a row added to one
//! side joins the other side's rows, a row taken back takes its joined rows back.
//!
//! ```text
//!  left +I l (key k)   ── right[k] = {r×2} ──>  +I (l, r)  +I (l, r)
//!  right -D r (key k)  ── left[k] = {l×1}  ──>  -D (l, r)
//!  LEFT JOIN: left +I l, right[k] empty    ──>  +I (l, NULL)
//!             then right +I r              ──>  -D (l, NULL)  +I (l, r)
//!             then right -D r              ──>  -D (l, r)     +I (l, NULL)
//! ```
//!
//! Additions come out as `+I`, retractions as `-D` (every change of a joined row is a
//! delete of its old pair and an insert of its new one), so a consumer applying them in
//! order, by multiset or by key, holds the batch join. Rows are identified by all their
//! columns; a retraction of a row the side does not hold changes nothing. The held rows
//! (with their counts, match counts and event times) are the state, checkpointed by key
//! group of the join key.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int8Array, Int64Array, RecordBatch, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use sluice_types::{
    Batch, CheckpointBarrier, Result, RowKind, SluiceError, row_kind_field, timestamp_field,
    user_column_count,
};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::{OperatorFactory, PreparedOperator};
use crate::state::ttl::{Sweeps, Ttl};
use crate::state::{OperatorState, RestoredState, TableWriter};

/// One held row: how many times it is there, how many rows of the other side match
/// each of them, and its latest event time.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    count: i64,
    matches: i64,
    ts: i64,
}

/// One side's rows: join key → row (row-encoded user columns) → [`Held`].
type SideRows = HashMap<Box<[u8]>, HashMap<Box<[u8]>, Held>>;

/// The left and right parts of a joined row (`None`: NULLs), row-encoded.
type Parts = (Option<Box<[u8]>>, Option<Box<[u8]>>);

/// A joined row to emit: its left and right parts, kind and time.
type Out = (Option<Box<[u8]>>, Option<Box<[u8]>>, RowKind, i64);

/// The changelog join of one subtask.
pub struct ChangelogJoinOperator {
    /// Per side: key column indices, user column count, row converter.
    keys: [Vec<usize>; 2],
    widths: [usize; 2],
    rows: [RowConverter; 2],
    key_converter: RowConverter,
    /// Which sides keep their unmatched rows (left, right).
    outer: [bool; 2],
    held: [SideRows; 2],
    schema: SchemaRef,
    /// Per side, `table.exec.state.ttl`: a row no change reached for this long (event
    /// time, past the watermark) is forgotten, without taking anything back (as Flink).
    ttl: [Option<Ttl>; 2],
    sweeps: Sweeps,
}

fn converter(types: Vec<DataType>) -> Result<RowConverter> {
    RowConverter::new(types.into_iter().map(SortField::new).collect())
        .map_err(|e| SluiceError::user("join: unsupported column type").with_source(e))
}

impl ChangelogJoinOperator {
    /// Checks the keys against the two inputs (updating or not); `outer` says which sides
    /// keep their unmatched rows (left, right).
    pub fn prepare(
        left_keys: &[String],
        right_keys: &[String],
        outer: (bool, bool),
        inputs: [&SchemaRef; 2],
    ) -> Result<PreparedOperator> {
        Self::prepare_with_ttl(left_keys, right_keys, outer, [None, None], inputs)
    }

    /// [`Self::prepare`] with a state TTL per side (ms of event time).
    pub fn prepare_with_ttl(
        left_keys: &[String],
        right_keys: &[String],
        outer: (bool, bool),
        ttl_ms: [Option<i64>; 2],
        inputs: [&SchemaRef; 2],
    ) -> Result<PreparedOperator> {
        if left_keys.is_empty() || left_keys.len() != right_keys.len() {
            return Err(SluiceError::user(
                "a join needs pairs of equal key columns (left = right)",
            ));
        }
        let mut keys: [Vec<usize>; 2] = Default::default();
        let mut key_types = Vec::new();
        for (side, (names, input)) in [left_keys, right_keys].into_iter().zip(inputs).enumerate() {
            let what = ["left", "right"][side];
            for k in names {
                let i = input.index_of(k).map_err(|_| {
                    SluiceError::user(format!(
                        "join key `{k}` is not a column of the {what} input"
                    ))
                })?;
                keys[side].push(i);
            }
        }
        for (&l, &r) in keys[0].iter().zip(&keys[1]) {
            let (lt, rt) = (
                inputs[0].field(l).data_type(),
                inputs[1].field(r).data_type(),
            );
            if lt != rt {
                return Err(SluiceError::user(format!(
                    "join keys `{}` ({lt}) and `{}` ({rt}) have different types; cast one",
                    inputs[0].field(l).name(),
                    inputs[1].field(r).name()
                )));
            }
            key_types.push(lt.clone());
        }
        let widths = inputs.map(|s| user_column_count(s));
        let user = |side: usize| -> Vec<Arc<Field>> {
            let nullable = [outer.1, outer.0][side];
            inputs[side].fields()[..widths[side]]
                .iter()
                .map(|f| match nullable {
                    true => Arc::new(f.as_ref().clone().with_nullable(true)),
                    false => Arc::clone(f),
                })
                .collect()
        };
        let mut fields = user(0);
        for f in user(1) {
            if fields.iter().any(|l| l.name() == f.name()) {
                return Err(SluiceError::user(format!(
                    "both join inputs have a column `{}`; rename one",
                    f.name()
                )));
            }
            fields.push(f);
        }
        fields.push(Arc::new(row_kind_field()));
        fields.push(Arc::new(timestamp_field()));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let types = |side: usize| -> Vec<DataType> {
            inputs[side].fields()[..widths[side]]
                .iter()
                .map(|f| f.data_type().clone())
                .collect()
        };
        let row_types = [types(0), types(1)];
        converter(row_types[0].clone())?;
        converter(row_types[1].clone())?;
        converter(key_types.clone())?;
        let out = Arc::clone(&schema);
        let factory: OperatorFactory = Arc::new(move |_| {
            Ok(Box::new(ChangelogJoinOperator {
                keys: keys.clone(),
                widths,
                rows: [
                    converter(row_types[0].clone())?,
                    converter(row_types[1].clone())?,
                ],
                key_converter: converter(key_types.clone())?,
                outer: [outer.0, outer.1],
                held: Default::default(),
                schema: Arc::clone(&out),
                ttl: ttl_ms.map(Ttl::of),
                sweeps: Sweeps::default(),
            }) as Box<dyn Operator>)
        });
        Ok(PreparedOperator {
            output_schema: schema,
            factory,
        })
    }

    /// Row-encodes the join keys and the user columns of rows of `side`.
    fn encode(&self, side: usize, data: &RecordBatch) -> Result<(Rows, Rows)> {
        let keys: Vec<ArrayRef> = self.keys[side]
            .iter()
            .map(|&i| Arc::clone(data.column(i)))
            .collect();
        let keys = self.key_converter.convert_columns(&keys)?;
        let rows = self.rows[side].convert_columns(&data.columns()[..self.widths[side]])?;
        Ok((keys, rows))
    }

    /// Applies one row of `side` and pushes what it changes in the join's output. A row
    /// whose key has a NULL (`joins` false) matches nothing, as in SQL.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        side: usize,
        key: &[u8],
        row: &[u8],
        add: bool,
        joins: bool,
        t: i64,
        out: &mut Vec<Out>,
    ) {
        let pair = |this: &[u8], other: Option<&[u8]>| -> Parts {
            let (this, other) = (Some(this.into()), other.map(Into::into));
            match side {
                0 => (this, other),
                _ => (other, this),
            }
        };
        // A pair (other row, this side NULL) of the other side: the other way round.
        let alone = |other: &[u8]| -> Parts {
            match side {
                0 => (None, Some(other.into())),
                _ => (Some(other.into()), None),
            }
        };
        let (this_outer, other_outer) = (self.outer[side], self.outer[1 - side]);
        if !add {
            let known = self.held[side]
                .get(key)
                .and_then(|rows| rows.get(row))
                .is_some_and(|h| h.count > 0);
            if !known {
                return;
            }
        }
        let mut total = 0;
        let others = match joins {
            true => self.held[1 - side].get_mut(key),
            false => None,
        };
        if let Some(others) = others {
            for (other, h) in others.iter_mut() {
                total += h.count;
                let ts = t.max(h.ts);
                let (l, r) = pair(row, Some(other));
                for _ in 0..h.count {
                    match add {
                        true => {
                            if other_outer && h.matches == 0 {
                                let (al, ar) = alone(other);
                                out.push((al, ar, RowKind::Delete, ts));
                            }
                            out.push((l.clone(), r.clone(), RowKind::Insert, ts));
                        }
                        false => {
                            out.push((l.clone(), r.clone(), RowKind::Delete, ts));
                            if other_outer && h.matches == 1 {
                                let (al, ar) = alone(other);
                                out.push((al, ar, RowKind::Insert, ts));
                            }
                        }
                    }
                }
                h.matches += if add { 1 } else { -1 };
            }
        }
        if this_outer && total == 0 {
            let (l, r) = pair(row, None);
            let kind = if add {
                RowKind::Insert
            } else {
                RowKind::Delete
            };
            out.push((l, r, kind, t));
        }
        let rows = self.held[side].entry(key.into()).or_default();
        match add {
            true => {
                let h = rows.entry(row.into()).or_default();
                h.count += 1;
                h.matches = total;
                h.ts = h.ts.max(t);
            }
            false => {
                if let Some(h) = rows.get_mut(row) {
                    h.count -= 1;
                    if h.count <= 0 {
                        rows.remove(row);
                    }
                }
                if rows.is_empty() {
                    self.held[side].remove(key);
                }
            }
        }
    }

    /// The output rows for `changes`.
    fn build(&self, changes: Vec<Out>) -> Result<RecordBatch> {
        let n = changes.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for side in 0..2 {
            let parser = self.rows[side].parser();
            let present: Vec<usize> = (0..n)
                .filter(|&i| {
                    if side == 0 {
                        changes[i].0.is_some()
                    } else {
                        changes[i].1.is_some()
                    }
                })
                .collect();
            let part = |i: usize| match side {
                0 => changes[i].0.as_deref(),
                _ => changes[i].1.as_deref(),
            };
            let decoded = self.rows[side].convert_rows(
                present
                    .iter()
                    .map(|&i| parser.parse(part(i).unwrap_or_default())),
            )?;
            // Spread the present rows over all n, NULL where the side is missing.
            let mut picks = Vec::with_capacity(n);
            let mut next = 0u32;
            for i in 0..n {
                match part(i) {
                    Some(_) => {
                        picks.push(Some(next));
                        next += 1;
                    }
                    None => picks.push(None),
                }
            }
            let idx = arrow::array::UInt32Array::from(picks);
            for c in decoded {
                columns.push(arrow::compute::take(&c, &idx, None)?);
            }
        }
        columns.push(Arc::new(Int8Array::from_iter_values(
            changes.iter().map(|c| c.2.code()),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            changes.iter().map(|c| c.3),
        )));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    fn snapshot_side(&self, side: usize, state: &mut OperatorState, max_p: usize) -> Result<()> {
        let parser = self.rows[side].parser();
        let mut rows = Vec::new();
        let (mut counts, mut matches, mut times) = (Vec::new(), Vec::new(), Vec::new());
        for held in self.held[side].values() {
            for (row, h) in held {
                rows.push(parser.parse(row));
                counts.push(h.count);
                matches.push(h.matches);
                times.push(h.ts);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let columns = self.rows[side].convert_rows(rows)?;
        let fields: Vec<Arc<Field>> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Arc::new(Field::new(format!("c{i}"), c.data_type().clone(), true)))
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        TableWriter::rows_of(&batch, &self.keys[side])
            .int64("count", counts)
            .int64("matches", matches)
            .int64("ts", times)
            .finish(SIDES[side], max_p, state)
    }
}

const SIDES: [&str; 2] = ["left", "right"];

#[async_trait]
impl Operator for ChangelogJoinOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        self.process_batch_from(0, batch, ctx, out).await
    }

    async fn process_batch_from(
        &mut self,
        input: usize,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        if input > 1 {
            return Err(SluiceError::internal("a join has two inputs"));
        }
        let (keys, rows) = self.encode(input, &batch.data)?;
        let ts = batch.timestamps().clone();
        // Rows with a NULL in their key join nothing.
        let null_key = |i: usize| {
            self.keys[input]
                .iter()
                .any(|&c| batch.data.column(c).is_null(i))
        };
        let joins: Vec<bool> = (0..batch.num_rows()).map(|i| !null_key(i)).collect();
        let mut changes = Vec::new();
        for ((i, &joins), kind) in joins.iter().enumerate().zip(batch.kinds()) {
            let add = kind.is_addition();
            self.apply(
                input,
                keys.row(i).as_ref(),
                rows.row(i).as_ref(),
                add,
                joins,
                ts.value(i),
                &mut changes,
            );
            // Many matches leave in bounded batches, each sent before more are built.
            if changes.len() >= super::MAX_OUTPUT_ROWS {
                let data = self.build(std::mem::take(&mut changes))?;
                out.collect(batch.with_data(data)).await?;
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let data = self.build(changes)?;
        out.collect(batch.with_data(data)).await
    }

    async fn on_watermark(
        &mut self,
        watermark: sluice_types::Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<sluice_types::Watermark>> {
        let shortest = self.ttl.iter().flatten().map(|t| t.ms()).min();
        if let (Some(every), Some(now)) = (shortest, watermark.event_time())
            && self.sweeps.due(now, every)
        {
            for (side, ttl) in self.ttl.into_iter().enumerate() {
                let Some(ttl) = ttl else { continue };
                self.held[side].retain(|_, rows| {
                    rows.retain(|_, h| !ttl.expired_at(h.ts, now));
                    !rows.is_empty()
                });
            }
        }
        Ok(Some(watermark))
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        for side in 0..2 {
            self.snapshot_side(side, &mut state, ctx.max_parallelism)?;
        }
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for (side, name) in SIDES.iter().enumerate() {
            let w = self.widths[side];
            for b in state.table(name) {
                if b.num_columns() != w + 3 {
                    return Err(SluiceError::user(format!(
                        "the join's checkpointed {} rows have {} columns, expected {}: the job changed",
                        name,
                        b.num_columns(),
                        w + 3
                    )));
                }
                let int = |c: usize| -> Result<Int64Array> {
                    b.column(c)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .cloned()
                        .ok_or_else(|| SluiceError::user("join state: a count is not BIGINT"))
                };
                let (counts, matches, times) = (int(w)?, int(w + 1)?, int(w + 2)?);
                let user = b.project(&(0..w).collect::<Vec<_>>())?;
                let (keys, rows) = self.encode(side, &user)?;
                for i in 0..b.num_rows() {
                    self.held[side]
                        .entry(keys.row(i).as_ref().into())
                        .or_default()
                        .insert(
                            rows.row(i).as_ref().into(),
                            Held {
                                count: counts.value(i),
                                matches: matches.value(i),
                                ts: times.value(i),
                            },
                        );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use crate::operators::test_util::materialize;

    use crate::operators::test_util::change_batch as changes;

    fn operator(outer: (bool, bool)) -> Box<dyn Operator> {
        let l = changes(["k", "a"], &[]).data.schema();
        let r = changes(["rk", "b"], &[]).data.schema();
        let p =
            ChangelogJoinOperator::prepare(&["k".into()], &["rk".into()], outer, [&l, &r]).unwrap();
        (p.factory)(&sluice_types::TaskInfo::for_test("join")).unwrap()
    }

    use RowKind::{Delete as D, Insert as I, UpdateAfter as UA, UpdateBefore as UB};

    /// Feeds (side, rows) in order, checkpointing and restoring in the middle; returns
    /// the materialized output.
    /// One input batch: its side and its (kind, key, value) rows.
    type Step = (usize, Vec<(RowKind, i64, i64)>);

    async fn run(outer: (bool, bool), steps: &[Step]) -> Vec<String> {
        let mut op = operator(outer);
        let mut ctx = OperatorContext::for_test(changes(["k", "a"], &[]).data.schema());
        let mut out = VecCollector::default();
        for (n, (side, rows)) in steps.iter().enumerate() {
            if n == steps.len() / 2 {
                let state = op
                    .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
                    .await
                    .unwrap();
                op = operator(outer);
                op.restore(
                    crate::operators::test_util::restored(&state, 0, 1),
                    &mut ctx,
                )
                .await
                .unwrap();
            }
            let names = [["k", "a"], ["rk", "b"]][*side];
            op.process_batch_from(*side, changes(names, rows), &mut ctx, &mut out)
                .await
                .unwrap();
        }
        materialize(&out.batches)
    }

    #[tokio::test]
    async fn updates_on_either_side_take_their_joined_rows_back() {
        let got = run(
            (false, false),
            &[
                (0, vec![(I, 1, 10), (I, 2, 20)]),
                (1, vec![(I, 1, 100), (I, 1, 101)]),
                (0, vec![(UB, 1, 10), (UA, 1, 11)]),
                (1, vec![(D, 1, 100), (I, 2, 200)]),
                // A retraction of a row never held changes nothing.
                (1, vec![(D, 3, 300)]),
            ],
        )
        .await;
        assert_eq!(got, ["1,11,1,101", "2,20,2,200"]);
    }

    #[tokio::test]
    async fn outer_sides_keep_their_unmatched_rows_with_nulls_as_matches_come_and_go() {
        let steps = [
            (0, vec![(I, 1, 10), (I, 2, 20)]),
            (1, vec![(I, 1, 100), (I, 3, 300)]),
            (1, vec![(I, 1, 101)]),
            (1, vec![(D, 1, 100), (D, 1, 101)]),
            (0, vec![(I, 3, 30), (D, 2, 20)]),
        ];
        assert_eq!(run((true, false), &steps).await, ["1,10,,", "3,30,3,300"]);
        assert_eq!(run((false, true), &steps).await, ["3,30,3,300"]);
        assert_eq!(run((true, true), &steps).await, ["1,10,,", "3,30,3,300"]);
        let before_right_leaves = &steps[..3];
        assert_eq!(
            run((true, true), before_right_leaves).await,
            [",,3,300", "1,10,1,100", "1,10,1,101", "2,20,,"]
        );
    }

    #[tokio::test]
    async fn rows_past_the_state_ttl_are_forgotten_without_taking_anything_back() {
        let l = changes(["k", "a"], &[]).data.schema();
        let r = changes(["rk", "b"], &[]).data.schema();
        let p = ChangelogJoinOperator::prepare_with_ttl(
            &["k".into()],
            &["rk".into()],
            (false, false),
            [Some(100), Some(100)],
            [&l, &r],
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("join")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&l));
        let mut out = VecCollector::default();
        // Left row 1 at event time 0; right row 2 at 0.
        op.process_batch_from(
            0,
            changes(["k", "a"], &[(I, 1, 10), (I, 2, 20)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        op.on_watermark(sluice_types::Watermark::EventTime(150), &mut ctx, &mut out)
            .await
            .unwrap();
        op.process_batch_from(1, changes(["rk", "b"], &[(I, 1, 100)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert!(out.batches.is_empty(), "the left rows expired at 100");
    }
}
