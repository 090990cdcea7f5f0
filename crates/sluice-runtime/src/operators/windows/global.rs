//! Global windows: per key, one window over every row, fired by a trigger.
//!
//! ```text
//!  trigger = count 3 or every 10 s of processing time, purging
//!  rows of key a:  r1 r2 r3 | r4 ·····(10 s of wall clock)····· | r5 r6 …
//!  fires:               ^ 3 rows             ^ timer: r4 alone
//! ```
//!
//! A trigger fires a key's window when any of its conditions holds: `count` rows since the
//! key's last firing; the watermark passing a multiple of an event-time interval; the wall
//! clock passing a multiple of a processing-time interval. The time conditions fire only
//! keys that received rows since their last firing. A purging trigger empties the window
//! on firing (each result covers the rows since the previous one) and frees the key's
//! state; otherwise results are cumulative and the state stays.
//!
//! At the end of the input every key with rows since its last firing fires once more, so
//! no row goes unreported (Flink's global window would never fire them).
//!
//! Output: keys, `window_start` / `window_end` (event-time range of the window's rows, end
//! exclusive), the aggregates, and `_timestamp`: for an event-time firing at boundary `b`,
//! `b − 1`, like a window ending at `b`; otherwise the window's largest event time.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter};
use async_trait::async_trait;
use datafusion_common::hash_utils::RandomState;
use datafusion_expr::{Accumulator, Expr};
use sluice_plan::TriggerSpec;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use super::WindowResults;
use crate::operators::aggregates::{
    PlannedAggregate, PlannedAggregates, accumulators_from, state_column_counts,
    take_accumulator_states,
};
use crate::operators::{PreparedOperator, prepare_from_template};

use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain};
use crate::operators::windows::{
    WINDOW_END, WINDOW_START, encode_keys, key_converter, window_output_schema,
};
use crate::state::{
    AccumulatorStates, OperatorState, RestoredState, TableReader, TableWriter, table_width,
};

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("global window computation failed").with_source(e)
}

/// The keyed state table of the global window.
const KEYS_TABLE: &str = "keys";

struct KeyState {
    key: Option<OwnedRow>,
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Rows since the last firing.
    since_fire: u64,
    /// Event-time range of the window's rows (since the last purge).
    min_ts: i64,
    max_ts: i64,
    /// With an event-time interval: the first boundary after the earliest row since the
    /// last firing (the key fires when the watermark reaches `due − 1`).
    due: i64,
}

/// The global window operator.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::datatypes::*;
/// use datafusion_expr::col;
/// use datafusion_functions_aggregate::expr_fn::sum;
/// use sluice_plan::TriggerSpec;
/// use sluice_runtime::operators::windows::global::GlobalWindowOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("k", DataType::Utf8, false),
///     Field::new("v", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = GlobalWindowOperator::prepare(
///     &["k".to_string()], TriggerSpec::count(100).purging(), &[sum(col("v")).alias("total")], &schema,
/// ).unwrap();
/// assert_eq!(op.output_schema.field(3).name(), "total");
/// ```
pub struct GlobalWindowOperator {
    trigger: TriggerSpec,
    event_every: Option<i64>,
    processing_every: Option<i64>,
    key_indices: Vec<usize>,
    key_types: Vec<DataType>,
    aggregates: Vec<PlannedAggregate>,
    schema: SchemaRef,
    converter: Option<RowConverter>,
    keys: HashMap<Box<[u8]>, KeyState, RandomState>,
    /// The last watermark forwarded downstream.
    watermark: i64,
    timer_armed: bool,
    latest_ingest_us: u64,
}

fn interval_ms(d: std::time::Duration, what: &str) -> Result<i64> {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms < 1 {
        return Err(SluiceError::user(format!(
            "a global window's {what} trigger interval must be at least 1 ms, got {d:?}"
        )));
    }
    Ok(ms)
}

impl GlobalWindowOperator {
    /// Checks the trigger, keys and aggregates against the input schema.
    pub fn prepare(
        keys: &[String],
        trigger: TriggerSpec,
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let template = Self::new(keys, trigger, aggregates, input)?;
        let output_schema = Arc::clone(&template.schema);
        Ok(prepare_from_template(template, output_schema, Self::fresh))
    }

    /// An operator with empty state.
    pub fn new(
        keys: &[String],
        trigger: TriggerSpec,
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<Self> {
        if trigger == TriggerSpec::default() || trigger == TriggerSpec::default().purging() {
            return Err(SluiceError::user(
                "a global window needs a trigger: a count, an event-time interval or a processing-time interval (otherwise it never fires)",
            ));
        }
        if trigger.count == Some(0) {
            return Err(SluiceError::user(
                "a count trigger needs at least 1 row per firing",
            ));
        }
        let event_every = trigger
            .event_time_every
            .map(|d| interval_ms(d, "event-time"))
            .transpose()?;
        let processing_every = trigger
            .processing_time_every
            .map(|d| interval_ms(d, "processing-time"))
            .transpose()?;
        let planned =
            PlannedAggregates::plan(keys, aggregates, input, &[WINDOW_START, WINDOW_END])?;
        let schema = window_output_schema(&planned)?;
        let key_types: Vec<DataType> = planned
            .key_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Self {
            trigger,
            event_every,
            processing_every,
            key_indices: planned.key_indices,
            converter: key_converter(&key_types)?,
            key_types,
            aggregates: planned.aggregates,
            schema,
            keys: HashMap::with_hasher(RandomState::default()),
            watermark: i64::MIN,
            timer_armed: false,
            latest_ingest_us: 0,
        })
    }

    fn fresh(&self) -> Result<Self> {
        Ok(Self {
            trigger: self.trigger,
            event_every: self.event_every,
            processing_every: self.processing_every,
            key_indices: self.key_indices.clone(),
            converter: key_converter(&self.key_types)?,
            key_types: self.key_types.clone(),
            aggregates: self.aggregates.clone(),
            schema: Arc::clone(&self.schema),
            keys: HashMap::with_hasher(RandomState::default()),
            watermark: i64::MIN,
            timer_armed: false,
            latest_ingest_us: 0,
        })
    }

    /// Keys holding state, for tests and metrics.
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates
            .iter()
            .map(|a| a.function.create_accumulator().map_err(df_err))
            .collect()
    }

    /// Appends key `k`'s result to `out`; with a purging trigger the key's state goes.
    fn fire(&mut self, k: &[u8], time: Option<i64>, out: &mut WindowResults) -> Result<()> {
        let purge = self.trigger.purge;
        let Some(state) = self.keys.get_mut(k) else {
            return Ok(());
        };
        for (v, acc) in out.values.iter_mut().zip(state.accumulators.iter_mut()) {
            v.push(acc.evaluate().map_err(df_err)?);
        }
        if let Some(key) = &state.key {
            out.keys.push(key.clone());
        }
        out.starts.push(state.min_ts);
        out.ends.push(state.max_ts.saturating_add(1));
        out.times.push(time.unwrap_or(state.max_ts));
        state.since_fire = 0;
        state.due = i64::MAX;
        if purge {
            self.keys.remove(k);
        }
        Ok(())
    }

    /// Fires every key with rows since its last firing that are due by `due_by`.
    fn fire_pending(
        &mut self,
        due_by: i64,
        time: Option<i64>,
        out: &mut WindowResults,
    ) -> Result<()> {
        let pending: Vec<Box<[u8]>> = self
            .keys
            .iter()
            .filter(|(_, s)| s.since_fire > 0 && s.due.saturating_sub(1) <= due_by)
            .map(|(k, _)| k.clone())
            .collect();
        for k in pending {
            self.fire(&k, time, out)?;
        }
        Ok(())
    }

    async fn emit(&self, out: WindowResults, collector: &mut dyn Collector) -> Result<()> {
        match out.into_batch(&self.schema, self.converter.as_ref(), self.latest_ingest_us)? {
            Some(batch) => collector.collect(batch).await,
            None => Ok(()),
        }
    }

    fn arm_timer(&mut self, ctx: &mut OperatorContext) {
        if let (Some(every), false) = (self.processing_every, self.timer_armed) {
            let now = (sluice_types::now_micros() / 1000) as i64;
            let next = (now.div_euclid(every) + 1).saturating_mul(every);
            ctx.timers.register(TimeDomain::ProcessingTime, next);
            self.timer_armed = true;
        }
    }
}

#[async_trait]
impl Operator for GlobalWindowOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.latest_ingest_us = self.latest_ingest_us.max(batch.ingest.max_us);
        self.arm_timer(ctx);
        let ts = batch.timestamps().clone();
        let encoded = encode_keys(self.converter.as_ref(), &self.key_indices, &batch)?;
        // Row indices per key, arrival order kept within a key.
        let mut per_key: HashMap<&[u8], Vec<u32>, RandomState> =
            HashMap::with_hasher(RandomState::default());
        for i in 0..batch.num_rows() {
            let k: &[u8] = encoded.as_ref().map_or(&[], |r| r.row(i).data());
            per_key.entry(k).or_default().push(i as u32);
        }
        let mut order: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut runs: Vec<(&[u8], usize, usize)> = Vec::with_capacity(per_key.len());
        for (k, rows) in per_key {
            runs.push((k, order.len(), rows.len()));
            order.extend(rows);
        }
        let idx = UInt32Array::from(order);
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
        let mut fired = WindowResults::new(self.aggregates.len());
        for (k, start, len) in runs {
            let mut at = start;
            let end = start + len;
            while at < end {
                if !self.keys.contains_key(k) {
                    let key = encoded.as_ref().map(|r| {
                        let first = idx.value(at) as usize;
                        r.row(first).owned()
                    });
                    let accumulators = self.accumulators()?;
                    self.keys.insert(
                        k.into(),
                        KeyState {
                            key,
                            accumulators,
                            since_fire: 0,
                            min_ts: i64::MAX,
                            max_ts: i64::MIN,
                            due: i64::MAX,
                        },
                    );
                }
                let state = self
                    .keys
                    .get_mut(k)
                    .ok_or_else(|| SluiceError::internal("global window key vanished"))?;
                let room = match self.trigger.count {
                    Some(n) => (n - state.since_fire) as usize,
                    None => usize::MAX,
                };
                let n = room.min(end - at);
                for (acc, cols) in state.accumulators.iter_mut().zip(&args) {
                    let slices: Vec<ArrayRef> = cols.iter().map(|c| c.slice(at, n)).collect();
                    acc.update_batch(&slices).map_err(df_err)?;
                }
                let mut lo = i64::MAX;
                for &row in &idx.values()[at..at + n] {
                    let t = ts.value(row as usize);
                    lo = lo.min(t);
                    state.max_ts = state.max_ts.max(t);
                }
                state.min_ts = state.min_ts.min(lo);
                if let Some(every) = self.event_every {
                    let due = (lo.div_euclid(every).saturating_add(1)).saturating_mul(every);
                    if due < state.due {
                        state.due = due;
                        ctx.timers
                            .register(TimeDomain::EventTime, due.saturating_sub(1));
                    }
                }
                state.since_fire += n as u64;
                at += n;
                if Some(state.since_fire) == self.trigger.count {
                    self.fire(k, None, &mut fired)?;
                }
            }
        }
        self.emit(fired, out).await
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState {
            keyed: Default::default(),
            meta: serde_json::json!({ "watermark": self.watermark }),
        };
        if self.keys.is_empty() {
            return Ok(state);
        }
        let n = self.keys.len();
        let mut ints: [Vec<i64>; 4] = Default::default();
        let mut values = AccumulatorStates::new(self.aggregates.len());
        let mut key_rows = Vec::with_capacity(n);
        for s in self.keys.values_mut() {
            values.push(take_accumulator_states(
                &self.aggregates,
                &mut s.accumulators,
            )?);
            ints[0].push(s.since_fire as i64);
            ints[1].push(s.min_ts);
            ints[2].push(s.max_ts);
            ints[3].push(s.due);
            key_rows.push(s.key.clone());
        }
        let keys = key_rows.iter().map(|k| {
            k.as_ref()
                .expect("invariant: keyed state has its key")
                .row()
        });
        let mut table = TableWriter::keyed(self.converter.as_ref(), keys, n)?;
        for (name, v) in ["since_fire", "min_ts", "max_ts", "due"]
            .into_iter()
            .zip(ints)
        {
            table = table.int64(name, v);
        }
        table
            .accumulators(values)?
            .finish(KEYS_TABLE, ctx.max_parallelism, &mut state)?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Meta {
            watermark: i64,
        }
        let metas: Vec<Meta> = state.metas()?;
        if let Some(w) = metas.iter().map(|m| m.watermark).min() {
            self.watermark = w;
        }
        self.timer_armed = ctx.timers.next(TimeDomain::ProcessingTime).is_some();
        let counts = state_column_counts(&self.aggregates)?;
        let nkeys = self.key_types.len();
        let width = table_width(nkeys, 4, &counts);
        for batch in state.table(KEYS_TABLE) {
            let mut r = TableReader::new(
                batch,
                "global window",
                self.converter.as_ref(),
                nkeys,
                Some(width),
            )?;
            let (since, lo, hi, due) = (r.int64()?, r.int64()?, r.int64()?, r.int64()?);
            let states = r.accumulators(&counts)?;
            for i in 0..r.num_rows() {
                let (bytes, key): (Box<[u8]>, _) = match r.key(i) {
                    Some(k) => (k.as_ref().into(), Some(k.owned())),
                    None => (Box::from(&[][..]), None),
                };
                self.keys.insert(
                    bytes,
                    KeyState {
                        key,
                        accumulators: accumulators_from(&self.aggregates, &states, i)?,
                        since_fire: since.value(i) as u64,
                        min_ts: lo.value(i),
                        max_ts: hi.value(i),
                        due: due.value(i),
                    },
                );
            }
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        if let Some(wm) = watermark.event_time() {
            self.watermark = self.watermark.max(wm);
        }
        Ok(Some(watermark))
    }

    async fn on_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let mut fired = WindowResults::new(self.aggregates.len());
        if domain == TimeDomain::EventTime {
            // Keys whose boundary the watermark reached; their result stands at `time`,
            // the last instant before the boundary, or (a late row's key, whose boundary
            // had passed) just after the watermark already forwarded, so it is not late
            // downstream.
            let at = time.max(self.watermark.saturating_add(1));
            self.fire_pending(time, Some(at), &mut fired)?;
            return self.emit(fired, out).await;
        }
        let Some(every) = self.processing_every else {
            return Ok(());
        };
        self.fire_pending(i64::MAX, None, &mut fired)?;
        self.emit(fired, out).await?;
        // The next row re-arms the timer; an idle operator keeps no timer.
        self.timer_armed = false;
        if self.keys.values().any(|s| s.since_fire > 0) {
            ctx.timers
                .register(TimeDomain::ProcessingTime, time.saturating_add(every));
            self.timer_armed = true;
        }
        Ok(())
    }

    async fn on_close(
        &mut self,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let mut fired = WindowResults::new(self.aggregates.len());
        self.fire_pending(i64::MAX, None, &mut fired)?;
        self.emit(fired, out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use crate::operators::test_util::kv_batch;
    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, sum};
    use std::time::Duration;

    #[tokio::test]
    async fn count_triggered_state_survives_a_checkpoint_and_a_change_of_parallelism() {
        use crate::operators::test_util::{run_plain, run_through_checkpoint};
        let batches: Vec<Batch> = (0..5)
            .map(|b| {
                kv_batch(
                    &(0..37)
                        .map(|i| (i % 6, b * 37 + i, b * 100 + i))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        for trigger in [TriggerSpec::count(4).purging(), TriggerSpec::count(5)] {
            let make = || {
                Box::new(
                    GlobalWindowOperator::new(
                        &["k".into()],
                        trigger,
                        &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
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
                    "{trigger:?}, parallelism {p}"
                );
            }
        }
    }

    fn op(trigger: TriggerSpec) -> (GlobalWindowOperator, OperatorContext) {
        let schema = kv_batch(&[]).data.schema();
        let op = GlobalWindowOperator::new(
            &["k".into()],
            trigger,
            &[count(col("v")).alias("n"), sum(col("v")).alias("total")],
            &schema,
        )
        .unwrap();
        (op, OperatorContext::for_test(schema))
    }

    /// `key,start,end,n,total,_timestamp` per output row, in emission order.
    fn rows(out: &[Batch]) -> Vec<String> {
        let mut v = Vec::new();
        for b in out {
            let d = &b.data;
            let k = d.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let s = d.column(1).as_primitive::<TimestampMillisecondType>();
            let e = d.column(2).as_primitive::<TimestampMillisecondType>();
            let n = d.column(3).as_primitive::<Int64Type>();
            let t = d.column(4).as_primitive::<Int64Type>();
            let ts = d.column(5).as_primitive::<TimestampMillisecondType>();
            for i in 0..d.num_rows() {
                v.push(format!(
                    "{},{},{},{},{},{}",
                    k.value(i),
                    s.value(i),
                    e.value(i),
                    n.value(i),
                    t.value(i),
                    ts.value(i)
                ));
            }
        }
        v
    }

    #[tokio::test]
    async fn count_trigger_purging_fires_every_n_rows_per_key_out_of_order() {
        let (mut op, mut ctx) = op(TriggerSpec::count(2).purging());
        let mut out = VecCollector::default();
        // Key 1: rows at 50, 10 (out of order) fire; then 30 starts a new window.
        let b = kv_batch(&[(1, 1, 50), (2, 5, 7), (1, 2, 10), (1, 3, 30)]);
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        assert_eq!(rows(&out.batches), ["k1,10,51,2,3,50"]);
        assert_eq!(op.keys_held(), 2, "k1 (one row since) and k2");
        let b = kv_batch(&[(1, 4, 5), (2, 6, 8)]);
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        let mut got = rows(&out.batches[1..]);
        got.sort();
        assert_eq!(got, ["k1,5,31,2,7,30", "k2,7,9,2,11,8"]);
        assert_eq!(op.keys_held(), 0, "purged keys free their state");
    }

    #[tokio::test]
    async fn count_trigger_without_purge_is_cumulative_and_end_of_input_fires_the_rest() {
        let (mut op, mut ctx) = op(TriggerSpec::count(2));
        let mut out = VecCollector::default();
        let b = kv_batch(&[(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4), (1, 5, 5)]);
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        op.on_close(&mut ctx, &mut out).await.unwrap();
        assert_eq!(
            rows(&out.batches),
            ["k1,1,3,2,3,2", "k1,1,5,4,10,4", "k1,1,6,5,15,5"]
        );
    }

    /// What the runtime does on a watermark at `wm`.
    async fn advance(
        op: &mut GlobalWindowOperator,
        ctx: &mut OperatorContext,
        out: &mut VecCollector,
        wm: i64,
    ) {
        crate::operators::test_util::advance(op, ctx, sluice_types::Watermark::EventTime(wm), out)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn event_time_trigger_fires_changed_keys_when_the_watermark_passes_a_boundary() {
        let (mut op, mut ctx) = op(TriggerSpec::event_time_every(Duration::from_millis(10)));
        let mut out = VecCollector::default();
        let b = kv_batch(&[(1, 1, 3), (2, 2, 12), (1, 3, 8)]);
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        advance(&mut op, &mut ctx, &mut out, 8).await;
        assert!(out.batches.is_empty(), "boundary 10 not reached");
        advance(&mut op, &mut ctx, &mut out, 9).await;
        // k1 (rows at 3 and 8) is due at boundary 10; k2 (row at 12) only at 20.
        assert_eq!(rows(&out.batches), ["k1,3,9,2,4,9"]);
        // A late row (behind the watermark) joins k1's window and fires at the next
        // timer, with k2 at boundary 20.
        let b = kv_batch(&[(1, 10, 2)]);
        op.process_batch(b, &mut ctx, &mut out).await.unwrap();
        advance(&mut op, &mut ctx, &mut out, 25).await;
        let mut got = rows(&out.batches[1..]);
        got.sort();
        // k1's result stands just after the watermark it missed (9), so it is not late.
        assert_eq!(got, ["k1,2,9,3,14,10", "k2,12,13,1,2,19"]);
    }

    #[tokio::test]
    async fn processing_time_trigger_fires_on_the_timer_and_rearms_only_with_new_rows() {
        let trigger = TriggerSpec::processing_time_every(Duration::from_millis(100))
            .or(TriggerSpec::count(1000))
            .purging();
        let (mut op, mut ctx) = op(trigger);
        let mut out = VecCollector::default();
        op.process_batch(kv_batch(&[(1, 1, 5), (1, 2, 6)]), &mut ctx, &mut out)
            .await
            .unwrap();
        let t = ctx
            .timers
            .pop_due(TimeDomain::ProcessingTime, i64::MAX)
            .expect("a processing-time timer");
        assert_eq!(t % 100, 0, "timers sit on multiples of the interval");
        op.on_timer(TimeDomain::ProcessingTime, t, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(rows(&out.batches), ["k1,5,7,2,3,6"]);
        assert_eq!(ctx.timers.next(TimeDomain::ProcessingTime), None);
        op.process_batch(kv_batch(&[(1, 7, 9)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert!(ctx.timers.next(TimeDomain::ProcessingTime).is_some());
    }

    #[test]
    fn a_trigger_that_never_fires_is_rejected() {
        let schema = kv_batch(&[]).data.schema();
        for t in [
            TriggerSpec::default(),
            TriggerSpec::default().purging(),
            TriggerSpec::count(0),
            TriggerSpec::event_time_every(Duration::from_micros(10)),
        ] {
            let e = GlobalWindowOperator::new(&["k".into()], t, &[count(col("v"))], &schema);
            assert!(e.is_err(), "{t}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Per key in arrival order: with `count`, a result every `n` rows (the rows since
        /// the last result when purging, all rows so far otherwise) and the remainder at
        /// the end.
        fn count_reference(rows: &[(i64, i64, i64)], n: usize, purge: bool) -> Vec<String> {
            let mut per_key: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
            for &(k, v, t) in rows {
                per_key.entry(k).or_default().push((v, t));
            }
            let mut out = Vec::new();
            for (k, rs) in per_key {
                let mut from = 0;
                let mut fire = |lo_i: usize, hi_i: usize| {
                    let w = &rs[lo_i..hi_i];
                    let total: i64 = w.iter().map(|r| r.0).sum();
                    let lo = w.iter().map(|r| r.1).min().unwrap();
                    let hi = w.iter().map(|r| r.1).max().unwrap();
                    out.push(format!("k{k},{lo},{},{},{total},{hi}", hi + 1, w.len()));
                };
                for i in 1..=rs.len() {
                    if i % n == 0 || i == rs.len() {
                        fire(if purge { from } else { 0 }, i);
                        from = i;
                    }
                }
            }
            out.sort();
            out
        }

        /// Event-time trigger every `every` ms, purging, rows in order within `bound` and a
        /// watermark of `max − bound` after each batch: per key, a result per boundary
        /// with the rows that arrived since the key last fired.
        fn event_time_reference(
            batches: &[Vec<(i64, i64, i64)>],
            every: i64,
            bound: i64,
        ) -> Vec<String> {
            let mut pending: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
            let mut out = Vec::new();
            let mut max = i64::MIN;
            let mut wm = i64::MIN;
            let fire = |rs: Vec<(i64, i64)>, k: i64, at: i64, out: &mut Vec<String>| {
                let total: i64 = rs.iter().map(|r| r.0).sum();
                let lo = rs.iter().map(|r| r.1).min().unwrap();
                let hi = rs.iter().map(|r| r.1).max().unwrap();
                out.push(format!("k{k},{lo},{},{},{total},{at}", hi + 1, rs.len()));
            };
            for b in batches {
                for &(k, v, t) in b {
                    pending.entry(k).or_default().push((v, t));
                    max = max.max(t);
                }
                let new_wm = max - bound;
                if new_wm > wm {
                    // Keys whose first boundary after their earliest pending row is reached.
                    let keys: Vec<i64> = pending.keys().copied().collect();
                    for k in keys {
                        let lo = pending[&k].iter().map(|r| r.1).min().unwrap();
                        let due = (lo.div_euclid(every) + 1) * every;
                        if due - 1 <= new_wm {
                            let at = (due - 1).max(wm.saturating_add(1));
                            fire(pending.remove(&k).unwrap(), k, at, &mut out);
                        }
                    }
                    wm = new_wm;
                }
            }
            for (k, rs) in std::mem::take(&mut pending) {
                let hi = rs.iter().map(|r| r.1).max().unwrap();
                fire(rs, k, hi, &mut out);
            }
            out.sort();
            out
        }

        fn cut(rows: &[(i64, i64, i64)], cuts: &[usize]) -> Vec<Vec<(i64, i64, i64)>> {
            let mut batches = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= rows.len() {
                    break;
                }
                let end = (at + c).min(rows.len());
                batches.push(rows[at..end].to_vec());
                at = end;
            }
            batches
        }

        async fn run(
            trigger: TriggerSpec,
            batches: &[Vec<(i64, i64, i64)>],
            bound: i64,
        ) -> Vec<String> {
            let (mut op, mut ctx) = op(trigger);
            let mut out = VecCollector::default();
            let mut max = i64::MIN;
            for b in batches {
                max = b.iter().map(|r| r.2).fold(max, i64::max);
                op.process_batch(kv_batch(b), &mut ctx, &mut out)
                    .await
                    .unwrap();
                advance(&mut op, &mut ctx, &mut out, max - bound).await;
            }
            op.on_close(&mut ctx, &mut out).await.unwrap();
            let mut got = rows(&out.batches);
            got.sort();
            got
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn count_triggered_global_windows_equal_a_row_by_row_computation(
                n in 1..8u64,
                purge in any::<bool>(),
                rows in prop::collection::vec((0..3i64, -50..50i64, 0..1000i64), 1..120),
                cuts in prop::collection::vec(1..20usize, 1..10),
            ) {
                let mut trigger = TriggerSpec::count(n);
                trigger.purge = purge;
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let got = rt.block_on(run(trigger, &cut(&rows, &cuts), 0));
                prop_assert_eq!(got, count_reference(&rows, n as usize, purge));
            }

            #[test]
            fn event_time_triggered_global_windows_equal_a_reference(
                every in 1..200i64,
                bound in 0..50i64,
                deltas in prop::collection::vec((0..3i64, -50..50i64, 0..30i64, 0..50i64), 1..120),
                cuts in prop::collection::vec(1..20usize, 1..10),
            ) {
                // Event times rise by `step` and jitter back by at most `bound`.
                let mut t = 0;
                let rows: Vec<(i64, i64, i64)> = deltas
                    .iter()
                    .map(|&(k, v, step, back)| {
                        t += step;
                        (k, v, t - back.min(bound))
                    })
                    .collect();
                let batches = cut(&rows, &cuts);
                let trigger = TriggerSpec::event_time_every(Duration::from_millis(every as u64)).purging();
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let got = rt.block_on(run(trigger, &batches, bound));
                prop_assert_eq!(got, event_time_reference(&batches, every, bound));
            }
        }
    }
}
