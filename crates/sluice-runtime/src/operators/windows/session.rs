//! Event-time session windows: per key, rows closer than `gap` belong to one session
//! `[first row, last row + gap)`; sessions that come to overlap merge.
//!
//! ```text
//!  gap = 10 s, key a:   rows at 0 s, 4 s        → session [0, 14)
//!                       row at 30 s             → session [30, 40)
//!                       late row at 12 s        → [0, 14) and [12, 22) merge into [0, 22)
//! ```
//!
//! Per batch, each key's rows are sorted by event time and cut into micro-sessions
//! (columnar: one `take` per batch, zero-copy slices per micro-session); each
//! micro-session updates fresh accumulators and is then merged into the key's
//! overlapping sessions through the accumulators' intermediate state. Each session's end
//! has an event-time timer, and sessions wait in an index ordered by end: when the
//! watermark reaches a timer, the runtime fires it and the index gives exactly the due
//! sessions without scanning keys; a key's entry is freed with its last session.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{take, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter};
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_expr::{Accumulator, Expr};
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain};
use crate::operators::aggregates::{
    PlannedAggregate, PlannedAggregates, accumulators_from, state_column_counts,
    take_accumulator_states,
};
use crate::operators::windows::{
    MAX_EVENT_TIME, MIN_EVENT_TIME, WINDOW_END, WINDOW_START, arm_early_timer, dead_letter_rows,
    emit_late, encode_keys, key_converter, window_output_schema,
};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{
    AccumulatorStates, OperatorState, RestoredState, TableReader, TableWriter, table_width,
};

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("session window computation failed").with_source(e)
}

/// The keyed state table of the session window.
const SESSIONS_TABLE: &str = "sessions";

#[derive(serde::Deserialize)]
struct SessionMeta {
    watermark: i64,
}

struct Session {
    start: i64,
    /// Exclusive: last row + gap.
    end: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Changed since its last early result.
    changed: bool,
}

struct KeyState {
    key: Option<OwnedRow>,
    /// Disjoint, ordered by start.
    sessions: Vec<Session>,
}

/// The session window aggregate.
///
/// ```
/// # use std::sync::Arc; use std::time::Duration;
/// # use arrow::datatypes::*;
/// use datafusion_expr::col;
/// use datafusion_functions_aggregate::expr_fn::count;
/// use sluice_runtime::operators::windows::session::SessionWindowOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("bidder", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = SessionWindowOperator::prepare(
///     &["bidder".to_string()],
///     Duration::from_secs(10),
///     &[count(col("bidder")).alias("bids")],
///     Duration::ZERO,
///     &schema,
/// ).unwrap();
/// let names: Vec<_> = op.output_schema.fields().iter().map(|f| f.name().clone()).collect();
/// assert_eq!(names, ["bidder", "window_start", "window_end", "bids", "_timestamp"]);
/// ```
pub struct SessionWindowOperator {
    gap: i64,
    lateness: i64,
    key_indices: Vec<usize>,
    key_types: Vec<DataType>,
    aggregates: Vec<PlannedAggregate>,
    schema: SchemaRef,
    converter: Option<RowConverter>,
    ids: crate::operators::row_ids::RowIds,
    keys: Vec<KeyState>,
    free: Vec<u32>,
    /// (end, key id, start) of every session not yet expired.
    by_end: BTreeSet<(i64, u32, i64)>,
    watermark: i64,
    /// Ingest time of the newest input row: window results carry it, so their
    /// end-to-end latency runs from the arrival of the input that closed the window.
    latest_ingest_us: u64,
    /// Early-firing interval (ms), and whether its timer is registered.
    early: Option<i64>,
    early_timer: bool,
}

impl SessionWindowOperator {
    /// Checks the gap, keys and aggregates against the input schema.
    pub fn prepare(
        keys: &[String],
        gap: Duration,
        aggregates: &[Expr],
        allowed_lateness: Duration,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let template = Self::new(keys, gap, aggregates, allowed_lateness, input)?;
        let output_schema = Arc::clone(&template.schema);
        Ok(prepare_from_template(template, output_schema, Self::fresh))
    }

    /// An operator with empty state.
    pub fn new(
        keys: &[String],
        gap: Duration,
        aggregates: &[Expr],
        allowed_lateness: Duration,
        input: &SchemaRef,
    ) -> Result<Self> {
        let gap_ms = gap.as_millis() as i64;
        if gap_ms <= 0 {
            return Err(SluiceError::user("a session gap must be at least 1 ms"));
        }
        let planned =
            PlannedAggregates::plan(keys, aggregates, input, &[WINDOW_START, WINDOW_END])?;
        let schema = window_output_schema(&planned)?;
        let key_types: Vec<DataType> = planned
            .key_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let mut op = Self {
            gap: gap_ms,
            lateness: allowed_lateness.as_millis() as i64,
            key_indices: planned.key_indices,
            key_types,
            aggregates: planned.aggregates,
            schema,
            converter: None,
            ids: Default::default(),
            keys: Vec::new(),
            free: Vec::new(),
            by_end: BTreeSet::new(),
            watermark: i64::MIN,
            latest_ingest_us: 0,
            early: None,
            early_timer: false,
        };
        op.converter = key_converter(&op.key_types)?;
        Ok(op)
    }

    fn fresh(&self) -> Result<Self> {
        Ok(Self {
            gap: self.gap,
            lateness: self.lateness,
            key_indices: self.key_indices.clone(),
            key_types: self.key_types.clone(),
            aggregates: self.aggregates.clone(),
            schema: Arc::clone(&self.schema),
            converter: key_converter(&self.key_types)?,
            ids: Default::default(),
            keys: Vec::new(),
            free: Vec::new(),
            by_end: BTreeSet::new(),
            watermark: i64::MIN,
            latest_ingest_us: 0,
            early: self.early,
            early_timer: false,
        })
    }

    /// Also emit the current result of every open session that changed, this often
    /// (processing time), before its final result.
    pub fn with_early_firing(mut self, interval: Option<Duration>) -> Self {
        self.early = interval.map(|d| (d.as_millis() as i64).max(1));
        self
    }

    /// The operator as a prepared plan node.
    pub fn into_prepared(self) -> PreparedOperator {
        let output_schema = Arc::clone(&self.schema);
        prepare_from_template(self, output_schema, Self::fresh)
    }

    /// Keys with at least one live session (for tests of state cleanup).
    pub fn keys_held(&self) -> usize {
        self.keys.iter().filter(|k| !k.sessions.is_empty()).count()
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates
            .iter()
            .map(|a| a.function.create_accumulator().map_err(df_err))
            .collect()
    }

    fn key_id(&mut self, row: Option<arrow::row::Row<'_>>) -> u32 {
        let Some(row) = row else {
            // Not keyed: one key.
            if self.keys.is_empty() {
                self.keys.push(KeyState {
                    key: None,
                    sessions: Vec::new(),
                });
            }
            return 0;
        };
        let bytes = row.as_ref();
        let hash = self.ids.hash(bytes);
        let keys = &self.keys;
        let found = self.ids.get(hash, |id| {
            keys[id as usize]
                .key
                .as_ref()
                .is_some_and(|k| k.row().as_ref() == bytes)
        });
        if let Some(id) = found {
            return id;
        }
        let state = KeyState {
            key: Some(row.owned()),
            sessions: Vec::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = state;
                id
            }
            None => {
                self.keys.push(state);
                (self.keys.len() - 1) as u32
            }
        };
        self.ids.insert(hash, id);
        id
    }

    /// Merges a new session into key `id`'s sessions; returns the merged session's
    /// (start, end).
    fn merge_in(&mut self, id: u32, mut new: Session) -> Result<(i64, i64)> {
        let key = &mut self.keys[id as usize];
        let mut i = 0;
        while i < key.sessions.len() {
            let s = &key.sessions[i];
            if s.start < new.end && new.start < s.end {
                let old = key.sessions.remove(i);
                self.by_end.remove(&(old.end, id, old.start));
                new.start = new.start.min(old.start);
                new.end = new.end.max(old.end);
                for (acc, mut o) in new.accumulators.iter_mut().zip(old.accumulators) {
                    let state: Vec<ArrayRef> = o
                        .state()
                        .map_err(df_err)?
                        .into_iter()
                        .map(|v| v.to_array())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(df_err)?;
                    acc.merge_batch(&state).map_err(df_err)?;
                }
            } else {
                i += 1;
            }
        }
        let pos = key.sessions.partition_point(|s| s.start < new.start);
        let (start, end) = (new.start, new.end);
        key.sessions.insert(pos, new);
        self.by_end.insert((end, id, start));
        Ok((start, end))
    }

    /// Evaluates and emits the given sessions (by key and start).
    async fn emit(&mut self, due: Vec<(u32, i64)>, out: &mut dyn Collector) -> Result<()> {
        if due.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(due.len());
        let mut starts = Vec::with_capacity(due.len());
        let mut ends = Vec::with_capacity(due.len());
        let mut values: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(due.len()); self.aggregates.len()];
        for (id, start) in due {
            let key = &mut self.keys[id as usize];
            let Some(s) = key.sessions.iter_mut().find(|s| s.start == start) else {
                continue;
            };
            for (v, acc) in values.iter_mut().zip(s.accumulators.iter_mut()) {
                v.push(acc.evaluate().map_err(df_err)?);
            }
            starts.push(s.start);
            ends.push(s.end);
            keys.push(id);
        }
        let n = keys.len();
        let mut columns: Vec<ArrayRef> = match &self.converter {
            Some(c) => c.convert_rows(keys.iter().map(|&id| {
                self.keys[id as usize]
                    .key
                    .as_ref()
                    .expect("invariant: keyed state has its key")
                    .row()
            }))?,
            None => Vec::new(),
        };
        columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
        columns.push(Arc::new(TimestampMillisecondArray::from(ends.clone())));
        for v in values {
            columns.push(ScalarValue::iter_to_array(v).map_err(df_err)?);
        }
        columns.push(Arc::new(TimestampMillisecondArray::from(
            ends.iter().map(|e| e - 1).collect::<Vec<_>>(),
        )));
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        debug_assert_eq!(data.num_rows(), n);
        let ingest = sluice_types::IngestTime::at(match self.latest_ingest_us {
            0 => sluice_types::now_micros(),
            t => t,
        });
        out.collect(Batch { data, ingest }).await
    }

    /// Keyed table `sessions`: `_key_group`, keys, start, end, changed, every
    /// aggregate's state; the watermark as meta.
    fn snapshot_state(&mut self, max_parallelism: usize) -> Result<OperatorState> {
        let mut state = OperatorState {
            keyed: Default::default(),
            meta: serde_json::json!({ "watermark": self.watermark }),
        };
        let mut key_rows = Vec::new();
        let (mut starts, mut ends, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let mut values = AccumulatorStates::new(self.aggregates.len());
        for id in 0..self.keys.len() {
            for i in 0..self.keys[id].sessions.len() {
                let s = &mut self.keys[id].sessions[i];
                values.push(take_accumulator_states(
                    &self.aggregates,
                    &mut s.accumulators,
                )?);
                starts.push(s.start);
                ends.push(s.end);
                changed.push(s.changed);
                key_rows.push(id);
            }
        }
        let keys = key_rows.iter().map(|&id| {
            self.keys[id]
                .key
                .as_ref()
                .expect("invariant: keyed state has its key")
                .row()
        });
        TableWriter::keyed(self.converter.as_ref(), keys, key_rows.len())?
            .int64("start", starts)
            .int64("end", ends)
            .boolean("changed", changed)
            .accumulators(values)?
            .finish(SESSIONS_TABLE, max_parallelism, &mut state)?;
        Ok(state)
    }

    fn restore_state(&mut self, state: &RestoredState) -> Result<()> {
        let metas: Vec<SessionMeta> = state.metas()?;
        if let Some(w) = metas.iter().map(|m| m.watermark).min() {
            self.watermark = w;
        }
        let counts = state_column_counts(&self.aggregates)?;
        let nkeys = self.key_types.len();
        let width = table_width(nkeys, 3, &counts);
        for batch in state.table(SESSIONS_TABLE) {
            let mut r = TableReader::new(
                batch,
                "session window",
                self.converter.as_ref(),
                nkeys,
                Some(width),
            )?;
            let starts = r.int64()?;
            let ends = r.int64()?;
            let changed = r.boolean()?;
            let states = r.accumulators(&counts)?;
            for i in 0..r.num_rows() {
                let id = self.key_id(r.key(i));
                let session = Session {
                    start: starts.value(i),
                    end: ends.value(i),
                    accumulators: accumulators_from(&self.aggregates, &states, i)?,
                    changed: changed.value(i),
                };
                self.merge_in(id, session)?;
            }
        }
        Ok(())
    }

    /// Drops sessions that can no longer change, and keys left with none.
    fn expire(&mut self) {
        let cutoff = self.watermark.saturating_sub(self.lateness);
        // A session [s, e) is final once e - 1 + lateness <= watermark.
        while let Some(&(end, id, start)) = self.by_end.first() {
            if end.saturating_sub(1) > cutoff {
                break;
            }
            self.by_end.pop_first();
            let key = &mut self.keys[id as usize];
            key.sessions.retain(|s| s.start != start);
            if key.sessions.is_empty()
                && let Some(k) = key.key.take()
            {
                let hash = self.ids.hash(k.row().as_ref());
                self.ids.remove(hash, id);
                self.free.push(id);
            }
        }
    }
}

#[async_trait]
impl Operator for SessionWindowOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        self.latest_ingest_us = self.latest_ingest_us.max(batch.ingest.max_us);
        arm_early_timer(self.early, &mut self.early_timer, ctx);
        let ts = batch.timestamps().clone();
        let rows = encode_keys(self.converter.as_ref(), &self.key_indices, &batch)?;
        // Sort rows by (key id, event time); late and out-of-range rows go aside.
        let mut order: Vec<(u32, i64, u32)> = Vec::with_capacity(batch.num_rows());
        let (mut late, mut out_of_range) = (Vec::new(), Vec::new());
        for i in 0..batch.num_rows() {
            let t = ts.value(i);
            if !(MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&t) {
                out_of_range.push(i as u32);
                continue;
            }
            if (t + self.gap - 1).saturating_add(self.lateness) <= self.watermark {
                late.push(i as u32);
                continue;
            }
            let id = self.key_id(rows.as_ref().map(|r| r.row(i)));
            order.push((id, t, i as u32));
        }
        if !out_of_range.is_empty() {
            let bad = take_record_batch(&batch.data, &UInt32Array::from(out_of_range))?;
            dead_letter_rows(
                ctx,
                &bad,
                &format!(
                    "event time outside the range windows support ({MIN_EVENT_TIME}..={MAX_EVENT_TIME} ms)"
                ),
            )?;
        }
        if !late.is_empty() {
            let bad = take_record_batch(&batch.data, &UInt32Array::from(late))?;
            let reason = format!(
                "late row: its session closed (watermark {} ms, gap {} ms, allowed lateness {} ms)",
                self.watermark, self.gap, self.lateness
            );
            emit_late(ctx, batch.with_data(bad), out, &reason, self.watermark).await?;
        }
        if order.is_empty() {
            return Ok(());
        }
        order.sort_unstable();
        let idx = UInt32Array::from_iter_values(order.iter().map(|o| o.2));
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| {
                a.args
                    .iter()
                    .map(|e| evaluate(e, &batch).and_then(|v| Ok(take(&v, &idx, None)?)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        // Cut the sorted rows into micro-sessions: same key, gaps below `gap`.
        let mut refire = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let (id, first_t, _) = order[start];
            let mut end = start + 1;
            while end < order.len()
                && order[end].0 == id
                && order[end].1 < order[end - 1].1 + self.gap
            {
                end += 1;
            }
            let mut accumulators = self.accumulators()?;
            for (acc, cols) in accumulators.iter_mut().zip(&args) {
                let slices: Vec<ArrayRef> =
                    cols.iter().map(|c| c.slice(start, end - start)).collect();
                acc.update_batch(&slices).map_err(df_err)?;
            }
            let session = Session {
                start: first_t,
                end: order[end - 1].1 + self.gap,
                accumulators,
                changed: true,
            };
            let (s, e) = self.merge_in(id, session)?;
            // Already behind the watermark (a late row within the allowed lateness, maybe
            // merged into a session that fired): fire now, the watermark will not.
            if e.saturating_sub(1) <= self.watermark {
                refire.push((id, s));
            } else {
                ctx.timers
                    .register(TimeDomain::EventTime, e.saturating_sub(1));
            }
            start = end;
        }
        // A session merged twice in this batch is emitted once, with its final value.
        refire.sort_unstable();
        refire.dedup();
        self.emit(refire, out).await
    }

    async fn on_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        if domain == TimeDomain::EventTime {
            // Every session whose last instant the watermark reached since the last
            // watermark, in end order and in one batch: this timer's and the others due
            // now (their timers are spent with it).
            let (wm, _) = ctx.take_due_event_timers(time);
            let previous = self.watermark;
            let due: Vec<(u32, i64)> = self
                .by_end
                .iter()
                .take_while(|(end, _, _)| end.saturating_sub(1) <= wm)
                .filter(|(end, _, _)| end.saturating_sub(1) > previous)
                .map(|&(_, id, start)| (id, start))
                .collect();
            return self.emit(due, out).await;
        }
        let Some(every) = self.early else {
            return Ok(());
        };
        // Early firing: every open session that changed since its last early result.
        let wm = self.watermark;
        let mut due = Vec::new();
        for &(end, id, start) in self.by_end.range((wm.saturating_add(2), 0, i64::MIN)..) {
            debug_assert!(end.saturating_sub(1) > wm);
            let key = &mut self.keys[id as usize];
            if let Some(s) = key.sessions.iter_mut().find(|s| s.start == start)
                && s.changed
            {
                s.changed = false;
                due.push((id, start));
            }
        }
        self.emit(due, out).await?;
        // Keep firing while sessions are open; otherwise the next row re-arms the timer.
        if self.by_end.is_empty() {
            self.early_timer = false;
        } else {
            ctx.timers
                .register(TimeDomain::ProcessingTime, time + every);
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        self.snapshot_state(ctx.max_parallelism)
    }

    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        self.restore_state(&state)?;
        // Each open session's timer, from the sessions themselves.
        for &(end, _, _) in &self.by_end {
            if end.saturating_sub(1) > self.watermark {
                ctx.timers
                    .register(TimeDomain::EventTime, end.saturating_sub(1));
            }
        }
        self.early_timer = ctx.timers.next(TimeDomain::ProcessingTime).is_some();
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        let Some(wm) = watermark.event_time() else {
            return Ok(Some(watermark));
        };
        if wm <= self.watermark {
            return Ok(Some(watermark));
        }
        // The due sessions fired on their timers, just before this.
        self.watermark = wm;
        self.expire();
        Ok(Some(watermark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::advance;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, sum};
    use sluice_testkit::{assert_pretty, batch_from_pretty};

    #[tokio::test]
    async fn sessions_survive_a_checkpoint_and_a_change_of_parallelism() {
        use crate::operators::test_util::{kv_batch, run_plain, run_through_checkpoint};
        // Sessions of 100 ms gap per key: batch 0's close before the checkpoint (after
        // batch 2), which falls inside the sessions of batches 1 and 2; batches 3-5 make
        // sessions of their own after it.
        let batches: Vec<Batch> = (0..6)
            .map(|b| {
                kv_batch(
                    &(0..40)
                        .map(|i| {
                            (
                                i % 7,
                                i,
                                [0, 300, 360, 900, 960, 1020][b as usize] + (i % 5) * 10,
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let make = || {
            Box::new(
                SessionWindowOperator::new(
                    &["k".into()],
                    Duration::from_millis(100),
                    &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
                    Duration::ZERO,
                    &batches[0].data.schema(),
                )
                .unwrap(),
            ) as Box<dyn Operator>
        };
        let whole = run_plain(make, &batches).await;
        assert!(!whole.is_empty());
        for p in [1, 2, 3] {
            assert_eq!(
                run_through_checkpoint(make, &batches, 2, p, &[0]).await,
                whole,
                "parallelism {p}"
            );
        }
    }

    #[tokio::test]
    async fn early_firings_emit_changed_open_sessions_before_the_final_result() {
        use crate::operators::test_util::{fire_processing_timer, kv_batch, window_rows};
        let mut op = SessionWindowOperator::new(
            &["k".into()],
            Duration::from_millis(100),
            &[sum(col("v")).alias("total")],
            Duration::ZERO,
            &kv_batch(&[]).data.schema(),
        )
        .unwrap()
        .with_early_firing(Some(Duration::from_millis(50)));
        let mut ctx = OperatorContext::for_test(kv_batch(&[]).data.schema());
        let mut out = crate::operator::VecCollector::default();
        op.process_batch(kv_batch(&[(1, 1, 1000), (2, 5, 2000)]), &mut ctx, &mut out)
            .await
            .unwrap();
        fire_processing_timer(&mut op, &mut ctx, &mut out)
            .await
            .unwrap();
        let mut first = window_rows(&out.batches);
        first.sort();
        assert_eq!(first, ["k1,1000,1100,1", "k2,2000,2100,5"]);
        // An out-of-order row extends k1's session; only k1 changed.
        op.process_batch(kv_batch(&[(1, 2, 950)]), &mut ctx, &mut out)
            .await
            .unwrap();
        fire_processing_timer(&mut op, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(window_rows(&out.batches[1..]), ["k1,950,1100,3"]);
        // Nothing changed: the next tick emits nothing.
        fire_processing_timer(&mut op, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(out.batches.len(), 2);
        // The watermark closes k1's session: its final result; k2 stays open.
        advance(&mut op, &mut ctx, Watermark::EventTime(1500), &mut out)
            .await
            .unwrap();
        assert_eq!(window_rows(&out.batches[2..]), ["k1,950,1100,3"]);
        // A closed session never fires early again.
        fire_processing_timer(&mut op, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(out.batches.len(), 3);
    }

    fn op(lateness: Duration) -> SessionWindowOperator {
        let b = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | 1       | 1             |",
        );
        SessionWindowOperator::new(
            &["k".into()],
            Duration::from_secs(10),
            &[count(col("v")).alias("n"), sum(col("v")).alias("total")],
            lateness,
            &b.data.schema(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sessions_merge_and_fire_when_the_watermark_passes_their_end() {
        let mut op = op(Duration::ZERO);
        let mut ctx = OperatorContext::for_test(
            batch_from_pretty("| k:Utf8 | v:Int64 | _timestamp:Ts |\n| a | 1 | 1 |")
                .data
                .schema(),
        );
        let mut out = crate::operator::VecCollector::default();
        let b1 = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | 1       | 0             |
            | b      | 10      | 5000          |
            | a      | 2       | 30000         |
            | a      | 3       | 4000          |",
        );
        op.process_batch(b1, &mut ctx, &mut out).await.unwrap();
        advance(&mut op, &mut ctx, Watermark::EventTime(13_000), &mut out)
            .await
            .unwrap();
        assert!(out.batches.is_empty(), "[0, 14 s) is still open at 13 s");
        // 12 s bridges a's two first rows' session with nothing new: extends it to 22 s.
        let b2 = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | 4       | 12000         |",
        );
        op.process_batch(b2, &mut ctx, &mut out).await.unwrap();
        advance(&mut op, &mut ctx, Watermark::MAX, &mut out)
            .await
            .unwrap();
        assert_pretty(
            &out.batches,
            "
            +---+---------------------+---------------------+---+-------+-------------------------+
            | k | window_start        | window_end          | n | total | _timestamp              |
            +---+---------------------+---------------------+---+-------+-------------------------+
            | b | 1970-01-01T00:00:05 | 1970-01-01T00:00:15 | 1 | 10    | 1970-01-01T00:00:14.999 |
            | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:22 | 3 | 8     | 1970-01-01T00:00:21.999 |
            | a | 1970-01-01T00:00:30 | 1970-01-01T00:00:40 | 1 | 2     | 1970-01-01T00:00:39.999 |
            +---+---------------------+---------------------+---+-------+-------------------------+",
        );
        assert_eq!(op.keys_held(), 0, "all session state is freed");
    }

    #[tokio::test]
    async fn late_rows_refire_within_lateness_and_are_kept_aside_beyond() {
        let mut op = op(Duration::from_secs(5));
        let schema = batch_from_pretty("| k:Utf8 | v:Int64 | _timestamp:Ts |\n| a | 1 | 1 |")
            .data
            .schema();
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = crate::operator::VecCollector::default();
        let row = |t: i64| {
            batch_from_pretty(&format!(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 1       | {t}           |"
            ))
        };
        op.process_batch(row(0), &mut ctx, &mut out).await.unwrap();
        advance(&mut op, &mut ctx, Watermark::EventTime(12_000), &mut out)
            .await
            .unwrap();
        assert_eq!(out.batches.len(), 1, "[0, 10 s) fired");
        // Within lateness: merges into [0, 11 s), already behind the watermark: fires now.
        op.process_batch(row(1_000), &mut ctx, &mut out)
            .await
            .unwrap();
        // A late row of a new key within lateness fires at once too.
        let b = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | z      | 7       | 1500          |",
        );
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        advance(&mut op, &mut ctx, Watermark::EventTime(20_000), &mut out)
            .await
            .unwrap();
        // Beyond lateness: counted and kept aside.
        op.process_batch(row(2_000), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_pretty(
            &out.batches,
            "
            +---+-------------------------+-------------------------+---+-------+-------------------------+
            | k | window_start            | window_end              | n | total | _timestamp              |
            +---+-------------------------+-------------------------+---+-------+-------------------------+
            | a | 1970-01-01T00:00:00     | 1970-01-01T00:00:10     | 1 | 1     | 1970-01-01T00:00:09.999 |
            | a | 1970-01-01T00:00:00     | 1970-01-01T00:00:11     | 2 | 2     | 1970-01-01T00:00:10.999 |
            | z | 1970-01-01T00:00:01.500 | 1970-01-01T00:00:11.500 | 1 | 7     | 1970-01-01T00:00:11.499 |
            +---+-------------------------+-------------------------+---+-------+-------------------------+",
        );
        assert_eq!(
            ctx.metrics
                .late_records
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(op.keys_held(), 0);
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        const BOUND: i64 = 100;

        fn reference(rows: &[(i64, i64, i64)], gap: i64) -> Vec<String> {
            let mut per_key: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
            for &(k, v, t) in rows {
                per_key.entry(k).or_default().push((t, v));
            }
            let mut out = Vec::new();
            for (k, mut rs) in per_key {
                rs.sort();
                let (mut start, mut last, mut n, mut total) = (rs[0].0, rs[0].0, 0, 0);
                for &(t, v) in &rs {
                    if t >= last + gap {
                        out.push(format!("k{k},{start},{},{n},{total}", last + gap));
                        (start, n, total) = (t, 0, 0);
                    }
                    last = t;
                    n += 1;
                    total += v;
                }
                out.push(format!("k{k},{start},{},{n},{total}", last + gap));
            }
            out.sort();
            out
        }

        /// Rows `(key, value, time)` of one batch, and the watermark after it.
        type Chunk = (Vec<(i64, i64, i64)>, i64);

        /// A model of sessions as rows arrive, the watermark moving between chunks: a row
        /// whose own session `[t, t + gap)` ends at or before the watermark is late; others
        /// join every open session of their key they overlap; a session fires (and is
        /// forgotten) once the watermark reaches its last instant. Returns the fired
        /// sessions and the late rows.
        fn model(chunks: &[Chunk], gap: i64) -> (Vec<String>, Vec<(i64, i64, i64)>) {
            // Per key: open sessions (start, end, count, total).
            let mut open: std::collections::BTreeMap<i64, Vec<(i64, i64, i64, i64)>> =
                Default::default();
            let (mut fired, mut late) = (Vec::new(), Vec::new());
            let mut wm = i64::MIN;
            let fire = |open: &mut std::collections::BTreeMap<i64, Vec<(i64, i64, i64, i64)>>,
                        wm: i64,
                        fired: &mut Vec<String>| {
                for (k, sessions) in open.iter_mut() {
                    sessions.retain(|&(s, e, n, total)| {
                        let due = e - 1 <= wm;
                        if due {
                            fired.push(format!("k{k},{s},{e},{n},{total}"));
                        }
                        !due
                    });
                }
            };
            for (rows, next_wm) in chunks {
                for &(k, v, t) in rows {
                    if t + gap - 1 <= wm {
                        late.push((k, v, t));
                        continue;
                    }
                    let sessions = open.entry(k).or_default();
                    let (mut s, mut e, mut n, mut total) = (t, t + gap, 1, v);
                    sessions.retain(|&(os, oe, on, ot)| {
                        let overlaps = os < e && s < oe;
                        if overlaps {
                            (s, e, n, total) = (s.min(os), e.max(oe), n + on, total + ot);
                        }
                        !overlaps
                    });
                    // A merge can reach sessions it did not overlap before it grew.
                    loop {
                        let before = sessions.len();
                        sessions.retain(|&(os, oe, on, ot)| {
                            let overlaps = os < e && s < oe;
                            if overlaps {
                                (s, e, n, total) = (s.min(os), e.max(oe), n + on, total + ot);
                            }
                            !overlaps
                        });
                        if sessions.len() == before {
                            break;
                        }
                    }
                    sessions.push((s, e, n, total));
                }
                wm = wm.max(*next_wm);
                fire(&mut open, wm, &mut fired);
            }
            fire(&mut open, i64::MAX, &mut fired);
            fired.sort();
            (fired, late)
        }

        use crate::operators::test_util::kv_batch as batch;

        /// Rows `(key, value, time)` out of order by at most BOUND: time = base - jitter,
        /// base growing by each event's step.
        fn out_of_order(events: &[(i64, i64, i64, i64)]) -> Vec<(i64, i64, i64)> {
            let mut base = 0;
            events
                .iter()
                .map(|&(k, v, step, jitter)| {
                    base += step;
                    (k, v, base - jitter)
                })
                .collect()
        }

        /// Sessions of `gap` ms per key counting and summing `v`.
        fn counting(gap: i64, schema: &SchemaRef) -> SessionWindowOperator {
            SessionWindowOperator::new(
                &["k".to_string()],
                Duration::from_millis(gap as u64),
                &[count(col("v")).alias("n"), sum(col("v")).alias("total")],
                Duration::ZERO,
                schema,
            )
            .unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Late rows too: the watermark may trail less than the jitter. The model
            /// decides which rows are late and which sessions fire; the operator must agree,
            /// with the late rows on the late output and in the count.
            #[test]
            fn sessions_with_late_rows_follow_the_model(
                gap in 1..400i64,
                events in prop::collection::vec((0..4i64, -50..50i64, 0..120i64, 0..=BOUND), 1..300),
                cuts in prop::collection::vec(1..40usize, 1..20),
                lag in 0..=BOUND,
            ) {
                let rows = out_of_order(&events);
                // The chunks and the watermark after each.
                let mut chunks = Vec::new();
                let (mut at, mut max_t) = (0, i64::MIN);
                for c in cuts.iter().cycle() {
                    if at >= rows.len() { break; }
                    let end = (at + c).min(rows.len());
                    let chunk = rows[at..end].to_vec();
                    at = end;
                    max_t = max_t.max(chunk.iter().map(|r| r.2).max().unwrap());
                    chunks.push((chunk, max_t - lag - 1));
                }
                let schema = batch(&rows[..1]).data.schema();
                let mut op = counting(gap, &schema);
                let mut ctx = OperatorContext::for_test(schema);
                let mut out = crate::operator::VecCollector::default();
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let mut wm = i64::MIN;
                    for (chunk, next) in &chunks {
                        op.process_batch(batch(chunk), &mut ctx, &mut out).await.unwrap();
                        wm = wm.max(*next);
                        advance(&mut op, &mut ctx, Watermark::EventTime(wm), &mut out).await.unwrap();
                    }
                    advance(&mut op, &mut ctx, Watermark::MAX, &mut out).await.unwrap();
                });
                let (fired, late) = model(&chunks, gap);
                prop_assert_eq!(
                    ctx.metrics.late_records.load(std::sync::atomic::Ordering::Relaxed) as usize,
                    late.len()
                );
                let late_out: usize = out.side.iter().filter(|(t, _)| t == "late").map(|(_, b)| b.num_rows()).sum();
                prop_assert_eq!(late_out, late.len(), "the late rows on the late output");
                prop_assert_eq!(crate::operators::test_util::all_window_rows(&out.batches), fired);
                prop_assert_eq!(op.keys_held(), 0, "all session state is freed at the end");
            }
            #[test]
            fn sessions_equal_a_batch_computation(
                gap in 1..400i64,
                events in prop::collection::vec((0..4i64, -50..50i64, 0..120i64, 0..=BOUND), 1..300),
                cuts in prop::collection::vec(1..40usize, 1..20),
            ) {
                let rows = out_of_order(&events);
                let schema = batch(&rows[..1]).data.schema();
                let mut op = counting(gap, &schema);
                let mut ctx = OperatorContext::for_test(schema);
                let mut out = crate::operator::VecCollector::default();
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let mut at = 0;
                    let mut max_t = i64::MIN;
                    for c in cuts.iter().cycle() {
                        if at >= rows.len() { break; }
                        let end = (at + c).min(rows.len());
                        let chunk = &rows[at..end];
                        at = end;
                        op.process_batch(batch(chunk), &mut ctx, &mut out).await.unwrap();
                        max_t = max_t.max(chunk.iter().map(|r| r.2).max().unwrap());
                        advance(&mut op, &mut ctx, Watermark::EventTime(max_t - BOUND - 1), &mut out).await.unwrap();
                    }
                    advance(&mut op, &mut ctx, Watermark::MAX, &mut out).await.unwrap();
                });
                prop_assert_eq!(ctx.metrics.late_records.load(std::sync::atomic::Ordering::Relaxed), 0);
                prop_assert_eq!(crate::operators::test_util::all_window_rows(&out.batches), reference(&rows, gap));
                prop_assert_eq!(op.keys_held(), 0, "all session state is freed at the end");
            }
        }
    }
}
