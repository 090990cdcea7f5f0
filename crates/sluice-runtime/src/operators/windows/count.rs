//! Count windows: per key, in arrival order, one result every `slide` rows over the last
//! `size` rows (tumbling when `slide == size`).
//!
//! ```text
//!  size = 6, slide = 2  →  panes of gcd = 2 rows
//!  rows of key a:  r1 r2 | r3 r4 | r5 r6 | r7 r8
//!  fires after r2 (r1–r2), r4 (r1–r4), r6 (r1–r6), r8 (r3–r8), …
//! ```
//!
//! Rows update the open pane's accumulators with zero-copy slices; a full pane is sealed
//! into intermediate state; a firing merges the last `size / gcd` panes. Only those panes
//! are kept per key. At the end of input, rows since the last firing fire as a partial
//! window, so no row is left unreported (Flink's count trigger never fires a remainder).
//!
//! Output: keys, `window_start` / `window_end` (the event-time range of the window's rows,
//! end exclusive), the aggregates, and `_timestamp` (the last row's event time).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter};
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_common::hash_utils::RandomState;
use datafusion_expr::{Accumulator, Expr};
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError};

use super::WindowResults;
use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain};
use crate::operators::aggregates::{
    PlannedAggregate, PlannedAggregates, accumulators_from, state_column_counts,
    take_accumulator_states,
};
use crate::operators::windows::{
    WINDOW_END, WINDOW_START, arm_early_timer, encode_keys, key_converter, window_output_schema,
};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{
    AccumulatorStates, OperatorState, RestoredState, TableReader, TableWriter, table_width,
};

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("count window computation failed").with_source(e)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The keyed state table of count windows: one row per pane.
const PANES_TABLE: &str = "panes";
/// Its counter columns, after the keys.
const COUNT_STATE_COLUMNS: [&str; 7] = [
    "part",
    "min_ts",
    "max_ts",
    "open_rows",
    "since_fire",
    "panes_since_fire",
    "changed",
];

/// A sealed pane: per aggregate, its state as one-row arrays; its event-time range.
struct Pane {
    states: Vec<Vec<ArrayRef>>,
    min_ts: i64,
    max_ts: i64,
}

struct KeyState {
    key: Option<OwnedRow>,
    panes: VecDeque<Pane>,
    open: Vec<Box<dyn Accumulator>>,
    open_rows: u64,
    open_min: i64,
    open_max: i64,
    /// Rows since the last firing.
    since_fire: u64,
    /// Panes sealed since the last firing.
    panes_since_fire: usize,
    /// Rows arrived since the last result (final or early).
    changed: bool,
}

/// The count window operator.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::datatypes::*;
/// use datafusion_expr::col;
/// use datafusion_functions_aggregate::expr_fn::sum;
/// use sluice_runtime::operators::windows::count::CountWindowOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("k", DataType::Utf8, false),
///     Field::new("v", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = CountWindowOperator::prepare(&["k".to_string()], 100, 10, &[sum(col("v")).alias("total")], &schema)
///     .unwrap();
/// assert_eq!(op.output_schema.field(3).name(), "total");
/// ```
pub struct CountWindowOperator {
    size: u64,
    slide: u64,
    pane: u64,
    key_indices: Vec<usize>,
    key_types: Vec<DataType>,
    aggregates: Vec<PlannedAggregate>,
    schema: SchemaRef,
    converter: Option<RowConverter>,
    ids: HashMap<Box<[u8]>, usize, RandomState>,
    keys: Vec<KeyState>,
    latest_ingest_us: u64,
    /// Early-firing interval (ms), and whether its timer is registered.
    early: Option<i64>,
    early_timer: bool,
}

impl CountWindowOperator {
    /// Checks the sizes, keys and aggregates against the input schema.
    pub fn prepare(
        keys: &[String],
        size: u64,
        slide: u64,
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let template = Self::new(keys, size, slide, aggregates, input)?;
        let output_schema = Arc::clone(&template.schema);
        Ok(prepare_from_template(template, output_schema, Self::fresh))
    }

    /// An operator with empty state.
    pub fn new(
        keys: &[String],
        size: u64,
        slide: u64,
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<Self> {
        if size == 0 || slide == 0 {
            return Err(SluiceError::user(
                "a count window needs at least 1 row per window and per slide",
            ));
        }
        if slide > size {
            return Err(SluiceError::user(format!(
                "count window of {size} rows sliding by {slide}: the slide is longer than the window, so rows between windows would be lost"
            )));
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
            size,
            slide,
            pane: gcd(size, slide),
            key_indices: planned.key_indices,
            key_types,
            aggregates: planned.aggregates,
            schema,
            converter: None,
            ids: HashMap::with_hasher(RandomState::default()),
            keys: Vec::new(),
            latest_ingest_us: 0,
            early: None,
            early_timer: false,
        };
        op.converter = key_converter(&op.key_types)?;
        Ok(op)
    }

    fn fresh(&self) -> Result<Self> {
        Ok(Self {
            size: self.size,
            slide: self.slide,
            pane: self.pane,
            key_indices: self.key_indices.clone(),
            key_types: self.key_types.clone(),
            aggregates: self.aggregates.clone(),
            schema: Arc::clone(&self.schema),
            converter: key_converter(&self.key_types)?,
            ids: HashMap::with_hasher(RandomState::default()),
            keys: Vec::new(),
            latest_ingest_us: 0,
            early: self.early,
            early_timer: false,
        })
    }

    /// Also emit, this often (processing time), the partial result of every key with rows
    /// since its last result: its newest rows up to the window size, as at end of input.
    pub fn with_early_firing(mut self, interval: Option<Duration>) -> Self {
        self.early = interval.map(|d| (d.as_millis() as i64).max(1));
        self
    }

    /// The operator as a prepared plan node.
    pub fn into_prepared(self) -> PreparedOperator {
        let output_schema = Arc::clone(&self.schema);
        prepare_from_template(self, output_schema, Self::fresh)
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates
            .iter()
            .map(|a| a.function.create_accumulator().map_err(df_err))
            .collect()
    }

    fn key_id(&mut self, row: Option<arrow::row::Row<'_>>) -> Result<usize> {
        let existing = match &row {
            Some(r) => self.ids.get(r.as_ref()).copied(),
            None => (!self.keys.is_empty()).then_some(0),
        };
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = self.keys.len();
        self.keys.push(KeyState {
            key: row.as_ref().map(|r| r.owned()),
            panes: VecDeque::new(),
            open: self.accumulators()?,
            open_rows: 0,
            open_min: i64::MAX,
            open_max: i64::MIN,
            since_fire: 0,
            panes_since_fire: 0,
            changed: false,
        });
        if let Some(r) = row {
            self.ids.insert(r.as_ref().into(), id);
        }
        Ok(id)
    }

    /// Seals key `id`'s open pane.
    fn seal(&mut self, id: usize) -> Result<()> {
        let fresh = self.accumulators()?;
        let k = &mut self.keys[id];
        if k.open_rows == 0 {
            return Ok(());
        }
        let mut open = std::mem::replace(&mut k.open, fresh);
        let states = open
            .iter_mut()
            .map(|a| {
                a.state()
                    .map_err(df_err)?
                    .into_iter()
                    .map(|v| v.to_array().map_err(df_err))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        k.panes.push_back(Pane {
            states,
            min_ts: k.open_min,
            max_ts: k.open_max,
        });
        k.open_rows = 0;
        k.open_min = i64::MAX;
        k.open_max = i64::MIN;
        k.panes_since_fire += 1;
        let keep = (self.size / self.pane) as usize;
        while k.panes.len() > keep {
            k.panes.pop_front();
        }
        Ok(())
    }

    /// The result over key `id`'s last `size` rows (its newest panes).
    fn result(&self, id: usize, out: &mut WindowResults) -> Result<()> {
        let k = &self.keys[id];
        let mut accs = self.accumulators()?;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for p in &k.panes {
            for (acc, state) in accs.iter_mut().zip(&p.states) {
                acc.merge_batch(state).map_err(df_err)?;
            }
            lo = lo.min(p.min_ts);
            hi = hi.max(p.max_ts);
        }
        if let Some(key) = &k.key {
            out.keys.push(key.clone());
        }
        out.starts.push(lo);
        out.ends.push(hi.saturating_add(1));
        out.times.push(hi);
        for (v, acc) in out.values.iter_mut().zip(accs.iter_mut()) {
            v.push(acc.evaluate().map_err(df_err)?);
        }
        Ok(())
    }

    /// The partial result of key `id` without sealing its open pane: its newest panes and
    /// the open one, up to `size` rows.
    fn partial_result(&mut self, id: usize, out: &mut WindowResults) -> Result<()> {
        let mut accs = self.accumulators()?;
        let mut reopened = self.accumulators()?;
        let full = (self.size / self.pane) as usize;
        let k = &mut self.keys[id];
        let keep = full - usize::from(k.open_rows > 0);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for p in k.panes.iter().rev().take(keep) {
            for (acc, state) in accs.iter_mut().zip(&p.states) {
                acc.merge_batch(state).map_err(df_err)?;
            }
            lo = lo.min(p.min_ts);
            hi = hi.max(p.max_ts);
        }
        if k.open_rows > 0 {
            // `state()` consumes an accumulator's state: merge it into the result and
            // into a fresh accumulator that replaces the open one.
            for ((open, acc), again) in k.open.iter_mut().zip(&mut accs).zip(&mut reopened) {
                let state: Vec<ArrayRef> = open
                    .state()
                    .map_err(df_err)?
                    .into_iter()
                    .map(|v| v.to_array().map_err(df_err))
                    .collect::<Result<_>>()?;
                acc.merge_batch(&state).map_err(df_err)?;
                again.merge_batch(&state).map_err(df_err)?;
            }
            k.open = reopened;
            lo = lo.min(k.open_min);
            hi = hi.max(k.open_max);
        }
        if let Some(key) = &k.key {
            out.keys.push(key.clone());
        }
        out.starts.push(lo);
        out.ends.push(hi.saturating_add(1));
        out.times.push(hi);
        for (v, acc) in out.values.iter_mut().zip(accs.iter_mut()) {
            v.push(acc.evaluate().map_err(df_err)?);
        }
        Ok(())
    }

    async fn emit(&self, out: WindowResults, collector: &mut dyn Collector) -> Result<()> {
        match out.into_batch(&self.schema, self.converter.as_ref(), self.latest_ingest_us)? {
            Some(batch) => collector.collect(batch).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Operator for CountWindowOperator {
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
        // Rows grouped by key, arrival order kept within a key (stable sort).
        let mut order: Vec<(usize, u32)> = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let id = self.key_id(rows.as_ref().map(|r| r.row(i)))?;
            order.push((id, i as u32));
        }
        order.sort_by_key(|o| o.0);
        let idx = UInt32Array::from_iter_values(order.iter().map(|o| o.1));
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
        let mut at = 0;
        while at < order.len() {
            let id = order[at].0;
            let run_end = order[at..]
                .iter()
                .position(|o| o.0 != id)
                .map_or(order.len(), |p| at + p);
            while at < run_end {
                let k = &mut self.keys[id];
                let take_n = ((self.pane - k.open_rows) as usize).min(run_end - at);
                for (acc, cols) in k.open.iter_mut().zip(&args) {
                    let slices: Vec<ArrayRef> = cols.iter().map(|c| c.slice(at, take_n)).collect();
                    acc.update_batch(&slices).map_err(df_err)?;
                }
                for o in &order[at..at + take_n] {
                    let t = ts.value(o.1 as usize);
                    k.open_min = k.open_min.min(t);
                    k.open_max = k.open_max.max(t);
                }
                k.open_rows += take_n as u64;
                k.since_fire += take_n as u64;
                k.changed = true;
                at += take_n;
                if k.open_rows == self.pane {
                    self.seal(id)?;
                    let k = &mut self.keys[id];
                    if k.since_fire == self.slide {
                        k.since_fire = 0;
                        k.changed = false;
                        k.panes_since_fire = 0;
                        self.result(id, &mut fired)?;
                    }
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
        let mut state = OperatorState::default();
        // One row per sealed pane (part 0, 1, …) and one for the open pane (part -1);
        // the key's counters repeat on each of its rows.
        let mut key_ids = Vec::new();
        let mut ints: [Vec<i64>; 7] = Default::default();
        let mut values = AccumulatorStates::new(self.aggregates.len());
        for id in 0..self.keys.len() {
            let open = take_accumulator_states(&self.aggregates, &mut self.keys[id].open)?;
            let k = &self.keys[id];
            let counters = [
                k.open_rows as i64,
                k.since_fire as i64,
                k.panes_since_fire as i64,
                i64::from(k.changed),
            ];
            let parts = k
                .panes
                .iter()
                .enumerate()
                .map(|(i, p)| (i as i64, p.min_ts, p.max_ts))
                .chain(std::iter::once((-1, k.open_min, k.open_max)));
            for (part, lo, hi) in parts {
                key_ids.push(id);
                for (col, v) in ints
                    .iter_mut()
                    .zip([part, lo, hi].into_iter().chain(counters))
                {
                    col.push(v);
                }
            }
            for p in &k.panes {
                values.push(
                    p.states
                        .iter()
                        .map(|cols| {
                            cols.iter()
                                .map(|c| ScalarValue::try_from_array(c, 0).map_err(df_err))
                                .collect::<Result<Vec<_>>>()
                        })
                        .collect::<Result<Vec<_>>>()?,
                );
            }
            values.push(open);
        }
        let keys = key_ids.iter().map(|&id| {
            self.keys[id]
                .key
                .as_ref()
                .expect("invariant: keyed state has its key")
                .row()
        });
        let mut table = TableWriter::keyed(self.converter.as_ref(), keys, key_ids.len())?;
        for (name, v) in COUNT_STATE_COLUMNS.into_iter().zip(ints) {
            table = table.int64(name, v);
        }
        table
            .accumulators(values)?
            .finish(PANES_TABLE, ctx.max_parallelism, &mut state)?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        self.early_timer = ctx.timers.next(TimeDomain::ProcessingTime).is_some();
        let counts = state_column_counts(&self.aggregates)?;
        let nkeys = self.key_types.len();
        let nints = COUNT_STATE_COLUMNS.len();
        let width = table_width(nkeys, nints, &counts);
        for batch in state.table(PANES_TABLE) {
            let mut r = TableReader::new(
                batch,
                "count window",
                self.converter.as_ref(),
                nkeys,
                Some(width),
            )?;
            let ints = (0..nints).map(|_| r.int64()).collect::<Result<Vec<_>>>()?;
            let states = r.accumulators(&counts)?;
            for i in 0..r.num_rows() {
                let id = self.key_id(r.key(i))?;
                let v = |c: usize| ints[c].value(i);
                let k = &mut self.keys[id];
                k.open_rows = v(3) as u64;
                k.since_fire = v(4) as u64;
                k.panes_since_fire = v(5) as usize;
                k.changed = v(6) != 0;
                if v(0) < 0 {
                    k.open = accumulators_from(&self.aggregates, &states, i)?;
                    k.open_min = v(1);
                    k.open_max = v(2);
                } else {
                    k.panes.push_back(Pane {
                        states: states
                            .iter()
                            .map(|cs| cs.iter().map(|c| c.slice(i, 1)).collect())
                            .collect(),
                        min_ts: v(1),
                        max_ts: v(2),
                    });
                }
            }
        }
        Ok(())
    }

    async fn on_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let Some(every) = self.early.filter(|_| domain == TimeDomain::ProcessingTime) else {
            return Ok(());
        };
        let mut fired = WindowResults::new(self.aggregates.len());
        for id in 0..self.keys.len() {
            if self.keys[id].changed {
                self.keys[id].changed = false;
                self.partial_result(id, &mut fired)?;
            }
        }
        let any = !fired.is_empty();
        self.emit(fired, out).await?;
        // Keep firing while keys change; otherwise the next row re-arms the timer.
        if any {
            ctx.timers
                .register(TimeDomain::ProcessingTime, time + every);
        } else {
            self.early_timer = false;
        }
        Ok(())
    }

    async fn on_close(
        &mut self,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        // Rows since the last firing fire now, as a partial window.
        let mut fired = WindowResults::new(self.aggregates.len());
        for id in 0..self.keys.len() {
            if self.keys[id].since_fire == 0 {
                continue;
            }
            self.seal(id)?;
            self.result(id, &mut fired)?;
            self.keys[id].since_fire = 0;
        }
        self.emit(fired, out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, sum};
    use sluice_testkit::{assert_pretty, batch_from_pretty};

    #[tokio::test]
    async fn panes_survive_a_checkpoint_and_a_change_of_parallelism() {
        use crate::operators::test_util::{kv_batch, run_plain, run_through_checkpoint};
        let batches: Vec<Batch> = (0..5)
            .map(|b| {
                kv_batch(
                    &(0..37)
                        .map(|i| (i % 6, b * 37 + i, b * 100 + i))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        for (size, slide) in [(4, 4), (6, 2), (5, 3)] {
            let make = || {
                Box::new(
                    CountWindowOperator::new(
                        &["k".into()],
                        size,
                        slide,
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
                    "count window {size}/{slide}, parallelism {p}"
                );
            }
        }
    }

    #[tokio::test]
    async fn early_firings_emit_the_growing_window_of_changed_keys() {
        use crate::operators::test_util::{fire_processing_timer, kv_batch, window_rows};
        let schema = kv_batch(&[]).data.schema();
        let mut op = CountWindowOperator::new(
            &["k".into()],
            4,
            2,
            &[sum(col("v")).alias("total")],
            &schema,
        )
        .unwrap()
        .with_early_firing(Some(Duration::from_millis(50)));
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = crate::operator::VecCollector::default();
        // k1: one row (half a pane), early result covers it.
        op.process_batch(kv_batch(&[(1, 1, 10)]), &mut ctx, &mut out)
            .await
            .unwrap();
        fire_processing_timer(&mut op, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(window_rows(&out.batches), ["k1,10,11,1"]);
        // Second row completes the pane: the window of 2 fires on count; no early result.
        op.process_batch(kv_batch(&[(1, 2, 20)]), &mut ctx, &mut out)
            .await
            .unwrap();
        fire_processing_timer(&mut op, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(window_rows(&out.batches[1..]), ["k1,10,21,3"]);
        // Rows 3..5: the count firing at row 4 covers rows 1-4; the early result then
        // covers the newest rows up to the window size (rows 3, 4 and the open row 5).
        op.process_batch(
            kv_batch(&[(1, 4, 30), (1, 8, 40), (1, 16, 50)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        let t = fire_processing_timer(&mut op, &mut ctx, &mut out).await;
        assert!(t.is_some(), "re-armed by the new rows");
        assert_eq!(
            window_rows(&out.batches[2..]),
            ["k1,10,41,15", "k1,30,51,28"]
        );
        // The early result did not disturb the open pane: row 6 fires rows 3-6.
        op.process_batch(kv_batch(&[(1, 32, 60)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(window_rows(&out.batches[4..]), ["k1,30,61,60"]);
    }

    async fn run(size: u64, slide: u64, batches: Vec<Batch>) -> Vec<Batch> {
        let schema = batches[0].data.schema();
        let p = CountWindowOperator::prepare(
            &["k".into()],
            size,
            slide,
            &[count(col("v")).alias("n"), sum(col("v")).alias("total")],
            &schema,
        )
        .unwrap();
        crate::operators::run_prepared(&p, batches).await.unwrap()
    }

    fn input() -> Vec<Batch> {
        vec![
            batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 1       | 10            |
                | b      | 100     | 5             |
                | a      | 2       | 30            |
                | a      | 3       | 20            |",
            ),
            batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 4       | 40            |
                | a      | 5       | 50            |",
            ),
        ]
    }

    #[tokio::test]
    async fn tumbling_count_windows_fire_every_n_rows_and_flush_the_rest() {
        let out = run(2, 2, input()).await;
        assert_pretty(
            &out,
            "
            +---+-------------------------+-------------------------+---+-------+-------------------------+
            | k | window_start            | window_end              | n | total | _timestamp              |
            +---+-------------------------+-------------------------+---+-------+-------------------------+
            | a | 1970-01-01T00:00:00.010 | 1970-01-01T00:00:00.031 | 2 | 3     | 1970-01-01T00:00:00.030 |
            | a | 1970-01-01T00:00:00.020 | 1970-01-01T00:00:00.041 | 2 | 7     | 1970-01-01T00:00:00.040 |
            | a | 1970-01-01T00:00:00.050 | 1970-01-01T00:00:00.051 | 1 | 5     | 1970-01-01T00:00:00.050 |
            | b | 1970-01-01T00:00:00.005 | 1970-01-01T00:00:00.006 | 1 | 100   | 1970-01-01T00:00:00.005 |
            +---+-------------------------+-------------------------+---+-------+-------------------------+",
        );
    }

    #[tokio::test]
    async fn sliding_count_windows_cover_the_last_n_rows() {
        let out = run(4, 2, input()).await;
        assert_pretty(
            &out,
            "
            +---+-------------------------+-------------------------+---+-------+-------------------------+
            | k | window_start            | window_end              | n | total | _timestamp              |
            +---+-------------------------+-------------------------+---+-------+-------------------------+
            | a | 1970-01-01T00:00:00.010 | 1970-01-01T00:00:00.031 | 2 | 3     | 1970-01-01T00:00:00.030 |
            | a | 1970-01-01T00:00:00.010 | 1970-01-01T00:00:00.041 | 4 | 10    | 1970-01-01T00:00:00.040 |
            | a | 1970-01-01T00:00:00.020 | 1970-01-01T00:00:00.051 | 3 | 12    | 1970-01-01T00:00:00.050 |
            | b | 1970-01-01T00:00:00.005 | 1970-01-01T00:00:00.006 | 1 | 100   | 1970-01-01T00:00:00.005 |
            +---+-------------------------+-------------------------+---+-------+-------------------------+",
        );
    }

    #[test]
    fn a_slide_longer_than_the_window_is_rejected() {
        let e = CountWindowOperator::new(&["k".into()], 2, 3, &[], &input()[0].data.schema())
            .err()
            .unwrap();
        assert!(e.to_string().contains("slide is longer"), "{e}");
    }

    mod property {
        use super::*;
        use arrow::array::{Int64Array, StringArray};
        use proptest::prelude::*;

        fn reference(rows: &[(i64, i64, i64)], size: u64, slide: u64) -> Vec<String> {
            let mut per_key: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
            for &(k, v, t) in rows {
                per_key.entry(k).or_default().push((v, t));
            }
            let mut out = Vec::new();
            let mut fire = |k: i64, window: &[(i64, i64)]| {
                let n = window.len();
                let total: i64 = window.iter().map(|r| r.0).sum();
                let lo = window.iter().map(|r| r.1).min().unwrap();
                let hi = window.iter().map(|r| r.1).max().unwrap();
                out.push(format!("k{k},{lo},{},{n},{total},{hi}", hi + 1));
            };
            for (k, rs) in per_key {
                let (size, slide) = (size as usize, slide as usize);
                let mut last_fire = 0;
                for i in 1..=rs.len() {
                    if i % slide == 0 {
                        fire(k, &rs[i.saturating_sub(size)..i]);
                        last_fire = i;
                    }
                }
                if last_fire < rs.len() {
                    // The partial window at the end: the last `size` rows up to the end,
                    // starting at a pane boundary like any window.
                    let pane = gcd(size as u64, slide as u64) as usize;
                    let end = rs.len();
                    let panes = end.div_ceil(pane);
                    let first_pane = panes.saturating_sub(size / pane);
                    fire(k, &rs[first_pane * pane..end]);
                }
            }
            out.sort();
            out
        }

        use crate::operators::test_util::kv_batch as batch;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn count_windows_equal_a_row_by_row_computation(
                (size, slide) in (1..8u64).prop_flat_map(|size| (Just(size), 1..=size)),
                rows in prop::collection::vec((0..3i64, -50..50i64, 0..1000i64), 1..120),
                cuts in prop::collection::vec(1..20usize, 1..10),
            ) {
                let mut batches = Vec::new();
                let mut at = 0;
                for c in cuts.iter().cycle() {
                    if at >= rows.len() { break; }
                    let end = (at + c).min(rows.len());
                    batches.push(batch(&rows[at..end]));
                    at = end;
                }
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let out = rt.block_on(run(size, slide, batches));
                let mut got = Vec::new();
                for b in &out {
                    let d = &b.data;
                    let k = d.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                    let ts = |i: usize| d.column(i).as_any().downcast_ref::<TimestampMillisecondArray>().unwrap().clone();
                    let int = |i: usize| d.column(i).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                    let (ws, we, n, total, t) = (ts(1), ts(2), int(3), int(4), ts(5));
                    for r in 0..d.num_rows() {
                        got.push(format!("{},{},{},{},{},{}", k.value(r), ws.value(r), we.value(r), n.value(r), total.value(r), t.value(r)));
                    }
                }
                got.sort();
                prop_assert_eq!(got, reference(&rows, size, slide));
            }
        }
    }
}
