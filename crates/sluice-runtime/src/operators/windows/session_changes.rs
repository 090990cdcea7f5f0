//! Session windows over an updating input (Flink 1.19+ aggregates SESSION windows of CDC
//! input): every change, a retraction as much as an insert, is placed by its event time,
//! so changes closer than `gap` share a session; a session's aggregates add its inserts
//! and take its retractions back, and it is emitted once, as an insert, when the
//! watermark passes its end, unless its changes cancel out (no row left in it).
//!
//! ```text
//!  gap 10 s, key a:  +I 0 s, +I 4 s, -U 4 s, +U 6 s   → session [0, 16): 2 rows
//!                    +I 30 s, -D 30 s                  → session [30, 40): no row, nothing
//! ```
//!
//! Changes wait, as input batches, until the watermark passes them; then each key's
//! changes are sorted by time and cut into sessions, and the sessions the watermark
//! passed are aggregated (columnar: one `take` per session for its inserts, one for its
//! retractions) and emitted. A change whose own session would have ended at or before the
//! watermark is late: counted and sent to the late output (or the dead letters).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{take, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::RowConverter;
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_expr::{Accumulator, Expr};
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::aggregates::retract::retractable;
use crate::operators::aggregates::{PlannedAggregate, PlannedAggregates, argument_types};
use crate::operators::windows::{
    WINDOW_END, WINDOW_START, emit_late, encode_keys, key_converter, window_output_schema,
};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{OperatorState, RestoredState, TableWriter};

/// The changes not yet in a fired session, as input rows.
const PENDING: &str = "pending";

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("session window computation failed").with_source(e)
}

/// The session window aggregate of an updating input, one subtask.
pub struct SessionOfChangesOperator {
    gap: i64,
    key_indices: Vec<usize>,
    key_types: Vec<DataType>,
    converter: Option<RowConverter>,
    aggregates: Vec<PlannedAggregate>,
    arg_types: Vec<Vec<DataType>>,
    input: SchemaRef,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    watermark: i64,
}

impl SessionOfChangesOperator {
    /// Checks the gap, keys and aggregates (which must take values back) against the
    /// updating input.
    pub fn prepare(
        keys: &[String],
        gap: Duration,
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let gap = gap.as_millis() as i64;
        if gap <= 0 {
            return Err(SluiceError::user("a session gap must be at least 1 ms"));
        }
        let planned =
            PlannedAggregates::plan(keys, aggregates, input, &[WINDOW_START, WINDOW_END])?;
        let arg_types = argument_types(&planned.aggregates, input)?;
        for (a, t) in planned.aggregates.iter().zip(&arg_types) {
            retractable(a, t)?;
        }
        let schema = window_output_schema(&planned)?;
        let key_types: Vec<DataType> = planned
            .key_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let template = Self {
            gap,
            key_indices: planned.key_indices,
            converter: key_converter(&key_types)?,
            key_types,
            aggregates: planned.aggregates,
            arg_types,
            input: Arc::clone(input),
            schema: Arc::clone(&schema),
            pending: Vec::new(),
            watermark: i64::MIN,
        };
        Ok(prepare_from_template(template, schema, Self::fresh))
    }

    fn fresh(t: &Self) -> Result<Self> {
        Ok(Self {
            gap: t.gap,
            key_indices: t.key_indices.clone(),
            key_types: t.key_types.clone(),
            converter: key_converter(&t.key_types)?,
            aggregates: t.aggregates.clone(),
            arg_types: t.arg_types.clone(),
            input: Arc::clone(&t.input),
            schema: Arc::clone(&t.schema),
            pending: Vec::new(),
            watermark: i64::MIN,
        })
    }

    /// Emits every session whose end the watermark `wm` passed; keeps the rest waiting.
    async fn fire(&mut self, wm: i64, out: &mut dyn Collector) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let all = arrow::compute::concat_batches(&self.input, &std::mem::take(&mut self.pending))?;
        let changes = Batch::try_new(
            all,
            sluice_types::IngestTime::at(sluice_types::now_micros()),
        )?;
        let times = changes.timestamps().clone();
        let keys = encode_keys(self.converter.as_ref(), &self.key_indices, &changes)?;
        let additions: Vec<bool> = changes.kinds().map(|k| k.is_addition()).collect();
        let mut order: Vec<u32> = (0..changes.num_rows() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            let by_key = match &keys {
                Some(k) => k.row(a).cmp(&k.row(b)),
                None => std::cmp::Ordering::Equal,
            };
            by_key.then(times.value(a).cmp(&times.value(b)))
        });
        let same_key = |a: u32, b: u32| match &keys {
            Some(k) => k.row(a as usize) == k.row(b as usize),
            None => true,
        };
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.args.iter().map(|e| evaluate(e, &changes)).collect())
            .collect::<Result<_>>()?;
        let mut keep: Vec<u32> = Vec::new();
        // Per emitted session: a row of its key, start, end and aggregates.
        let mut key_rows: Vec<usize> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggregates.len()];
        let mut from = 0;
        while from < order.len() {
            let mut to = from + 1;
            while to < order.len()
                && same_key(order[from], order[to])
                && times.value(order[to] as usize) < times.value(order[to - 1] as usize) + self.gap
            {
                to += 1;
            }
            let session = &order[from..to];
            let start = times.value(session[0] as usize);
            let end = times.value(session[session.len() - 1] as usize) + self.gap;
            if end - 1 > wm {
                keep.extend_from_slice(session);
            } else {
                let (adds, takes): (Vec<u32>, Vec<u32>) =
                    session.iter().partition(|&&i| additions[i as usize]);
                if adds.len() > takes.len() {
                    let mut accs = self.accumulators()?;
                    for (acc, cols) in accs.iter_mut().zip(&args) {
                        let rows = |idx: &[u32]| -> Result<Vec<ArrayRef>> {
                            let idx = UInt32Array::from(idx.to_vec());
                            cols.iter().map(|c| Ok(take(c, &idx, None)?)).collect()
                        };
                        acc.update_batch(&rows(&adds)?).map_err(df_err)?;
                        if !takes.is_empty() {
                            acc.retract_batch(&rows(&takes)?).map_err(df_err)?;
                        }
                    }
                    for (v, acc) in values.iter_mut().zip(accs.iter_mut()) {
                        v.push(acc.evaluate().map_err(df_err)?);
                    }
                    key_rows.push(session[0] as usize);
                    starts.push(start);
                    ends.push(end);
                }
            }
            from = to;
        }
        if !keep.is_empty() {
            self.pending
                .push(take_record_batch(&changes.data, &UInt32Array::from(keep))?);
        }
        if key_rows.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from_iter_values(key_rows.iter().map(|&i| i as u32));
        let mut columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&k| Ok(take(changes.data.column(k), &idx, None)?))
            .collect::<Result<_>>()?;
        columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
        columns.push(Arc::new(TimestampMillisecondArray::from(ends.clone())));
        for (v, f) in values
            .into_iter()
            .zip(&self.schema.fields()[self.key_indices.len() + 2..])
        {
            let array = ScalarValue::iter_to_array(v).map_err(df_err)?;
            columns.push(arrow::compute::cast(&array, f.data_type())?);
        }
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            ends.iter().map(|e| e - 1),
        )));
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        out.collect(changes.with_data(data)).await
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates
            .iter()
            .zip(&self.arg_types)
            .map(|(a, t)| retractable(a, t))
            .collect()
    }
}

#[async_trait]
impl Operator for SessionOfChangesOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let ts = batch.timestamps();
        let (gap, wm) = (self.gap, self.watermark);
        let late: Vec<u32> = (0..batch.num_rows() as u32)
            .filter(|&r| ts.value(r as usize).saturating_add(gap - 1) <= wm)
            .collect();
        if late.is_empty() {
            self.pending.push(batch.data);
            return Ok(());
        }
        let on_time: Vec<u32> = (0..batch.num_rows() as u32)
            .filter(|&r| ts.value(r as usize).saturating_add(gap - 1) > wm)
            .collect();
        if !on_time.is_empty() {
            self.pending
                .push(take_record_batch(&batch.data, &UInt32Array::from(on_time))?);
        }
        let rows = take_record_batch(&batch.data, &UInt32Array::from(late))?;
        let reason = format!("late change: its session closed (watermark {wm} ms, gap {gap} ms)");
        emit_late(ctx, batch.with_data(rows), out, &reason, wm).await
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        if let Some(t) = watermark.event_time()
            && t > self.watermark
        {
            self.watermark = t;
            self.fire(t, out).await?;
        }
        Ok(Some(watermark))
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        if !self.pending.is_empty() {
            let all = arrow::compute::concat_batches(&self.input, &self.pending)?;
            TableWriter::rows_of(&all, &self.key_indices).finish(
                PENDING,
                ctx.max_parallelism,
                &mut state,
            )?;
        }
        state.meta = serde_json::json!({ "watermark": self.watermark });
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(PENDING) {
            if b.schema().fields().len() != self.input.fields().len() {
                return Err(SluiceError::user(
                    "the checkpoint's session state has other columns: the job changed",
                ));
            }
            self.pending.push(RecordBatch::try_new(
                Arc::clone(&self.input),
                b.columns().to_vec(),
            )?);
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            watermark: i64,
        }
        // Subtasks merged on restore: the lowest watermark of them holds.
        if let Some(w) = state.metas::<Meta>()?.iter().map(|m| m.watermark).min() {
            self.watermark = w;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use crate::operators::test_util;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, max, sum};
    use sluice_types::RowKind;

    /// Changes of (key, value) rows at times.
    fn changes(rows: &[(i64, i64, i64, RowKind)]) -> Batch {
        let timed: Vec<_> = rows
            .iter()
            .map(|&(k, v, t, kind)| (kind, k, v, t))
            .collect();
        test_util::timed_change_batch(["k", "v"], &timed)
    }

    fn rows(out: &[Batch]) -> Vec<String> {
        use arrow::util::display::array_value_to_string;
        let mut v: Vec<String> = out
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(move |r| {
                    (0..b.data.num_columns() - 1)
                        .map(|c| array_value_to_string(b.data.column(c), r).unwrap())
                        .collect::<Vec<_>>()
                        .join(",")
                })
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn changes_make_sessions_and_cancelled_sessions_emit_nothing() {
        use RowKind::*;
        let first = changes(&[
            (1, 5, 0, Insert),
            (1, 7, 4, Insert),
            (1, 7, 4, UpdateBefore),
            (1, 9, 6, UpdateAfter),
            (2, 3, 30, Insert),
        ]);
        let schema = first.data.schema();
        let p = SessionOfChangesOperator::prepare(
            &["k".into()],
            Duration::from_millis(10),
            &[
                count(col("v")).alias("n"),
                sum(col("v")).alias("s"),
                max(col("v")).alias("hi"),
            ],
            &schema,
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        // Key 1's session [0, 16) is due at 15; key 2's is not.
        op.on_watermark(Watermark::EventTime(15), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(
            rows(&out.batches),
            ["1,1970-01-01T00:00:00,1970-01-01T00:00:00.016,2,14,9"],
            "max 7 was taken back"
        );
        // Through a checkpoint: key 2's row waits; its deletion cancels the session.
        let state = op.snapshot(&test_util::barrier(), &mut ctx).await.unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        op.restore(test_util::restored(&state, 0, 1), &mut ctx)
            .await
            .unwrap();
        let mut out = VecCollector::default();
        // A change at 3 is late (its session would have closed at 12 < 15).
        op.process_batch(
            changes(&[(2, 3, 30, Delete), (3, 1, 32, Insert), (1, 1, 3, Insert)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        op.on_watermark(Watermark::MAX, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(
            rows(&out.batches),
            ["3,1970-01-01T00:00:00.032,1970-01-01T00:00:00.042,1,1,1"]
        );
        assert_eq!(
            ctx.metrics
                .late_records
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
