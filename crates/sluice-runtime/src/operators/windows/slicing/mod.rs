//! Event-time tumbling and hopping window aggregates, computed from slices.
//!
//! ```text
//!  slide = 2 s, size = 6 s  →  slice width = gcd(size, slide) = 2 s
//!  time   0     2     4     6     8     10
//!  slices |--a--|--b--|--c--|--d--|--e--|
//!  window [0,6)  = a+b+c        fires when the watermark reaches 5.999
//!  window [2,8)  =   b+c+d      (slices are merged, rows are never copied)
//! ```
//!
//! Each row updates exactly one slice: per key, DataFusion `GroupsAccumulator`s, updated
//! columnar per batch. A new slice registers an event-time timer at the last instant of
//! each window it belongs to; when the watermark reaches a timer the runtime fires it, and
//! the window's slices are sealed into intermediate state, merged, and evaluated (all
//! windows due at one watermark in one batch); a slice is freed as soon as the
//! last window containing it can no longer change (its end plus the allowed lateness is
//! behind the watermark), so state stays proportional to the open windows.
//!
//! A late row (its windows have fired) still updates them within the allowed lateness, and
//! each window it changed fires again with the updated result. Beyond that it is counted
//! (`late_records`) and sent to the dead-letter output with its event time and the
//! watermark it missed: never dropped without a trace.

mod slices;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{take, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::RowConverter;
use async_trait::async_trait;
use datafusion_expr::{EmitTo, Expr, GroupsAccumulator};
use datafusion_physical_expr::GroupsAccumulatorAdapter;
use sluice_plan::WindowSpec;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use super::{
    MAX_EVENT_TIME, MIN_EVENT_TIME, WINDOW_END, WINDOW_START, arm_early_timer, dead_letter_rows,
    emit_late, encode_keys, key_converter, window_output_schema,
};
use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain, Timers};
use crate::operators::aggregates::{PlannedAggregate, PlannedAggregates};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{OperatorState, RestoredState, TableReader, TableWriter, table_width};
use slices::{Geometry, GroupMap, OpenPart, Sealed, Slice, gcd};

/// The keyed state table of window slices.
const SLICES_TABLE: &str = "slices";
/// Its column with the slice start.
const SLICE_COLUMN: &str = "_slice";

/// Operator-wide window state.
#[derive(serde::Serialize, serde::Deserialize)]
struct WindowMeta {
    watermark: i64,
    fired_up_to: i64,
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("window aggregate computation failed").with_source(e)
}

/// The tumbling / hopping window aggregate.
///
/// ```
/// # use std::sync::Arc; use std::time::Duration;
/// # use arrow::datatypes::*;
/// use datafusion_expr::col;
/// use datafusion_functions_aggregate::expr_fn::count;
/// use sluice_plan::WindowSpec;
/// use sluice_runtime::operators::windows::slicing::WindowAggregateOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("auction", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = WindowAggregateOperator::prepare(
///     &["auction".to_string()],
///     WindowSpec::Hopping { size: Duration::from_secs(10), slide: Duration::from_secs(2) },
///     &[count(col("auction")).alias("bids")],
///     Duration::ZERO,
///     &schema,
/// ).unwrap();
/// let names: Vec<_> = op.output_schema.fields().iter().map(|f| f.name().clone()).collect();
/// assert_eq!(names, ["auction", "window_start", "window_end", "bids", "_timestamp"]);
/// ```
pub struct WindowAggregateOperator {
    geometry: Geometry,
    key_indices: Vec<usize>,
    key_types: Vec<DataType>,
    aggregates: Vec<PlannedAggregate>,
    schema: SchemaRef,
    slices: BTreeMap<i64, Slice>,
    /// Every window with an end at or below this has fired.
    fired_up_to: i64,
    watermark: i64,
    scratch: Vec<usize>,
    /// Ingest time of the newest input row: window results carry it, so their
    /// end-to-end latency runs from the arrival of the input that closed the window.
    latest_ingest_us: u64,
    /// Early-firing interval (ms), and whether its timer is registered.
    early: Option<i64>,
    early_timer: bool,
}

impl WindowAggregateOperator {
    /// Checks the window, keys and aggregates against the input schema.
    pub fn prepare(
        keys: &[String],
        window: WindowSpec,
        aggregates: &[Expr],
        allowed_lateness: Duration,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Ok(Self::new(keys, window, aggregates, allowed_lateness, input)?.into_prepared())
    }

    /// Emit each open window's partial result every `interval` of processing time.
    pub fn with_early_firing(mut self, interval: Option<Duration>) -> Self {
        self.early = interval.map(|d| (d.as_millis() as i64).max(1));
        self
    }

    /// This operator as a template for every subtask.
    pub fn into_prepared(self) -> PreparedOperator {
        let output_schema = Arc::clone(&self.schema);
        prepare_from_template(self, output_schema, |t| Ok(t.fresh()))
    }

    /// An operator with empty state.
    pub fn new(
        keys: &[String],
        window: WindowSpec,
        aggregates: &[Expr],
        allowed_lateness: Duration,
        input: &SchemaRef,
    ) -> Result<Self> {
        let Some((size, slide)) = window.size_and_slide_ms() else {
            return Err(SluiceError::internal(
                "session windows are built by the session operator",
            ));
        };
        if size <= 0 || slide <= 0 {
            return Err(SluiceError::user(format!(
                "window {window}: size and slide must be at least 1 ms"
            )));
        }
        if slide > size {
            return Err(SluiceError::user(format!(
                "window {window}: the slide is longer than the size, so rows between windows would be lost"
            )));
        }
        let cumulate = matches!(window, WindowSpec::Cumulate { .. });
        if cumulate && size % slide != 0 {
            return Err(SluiceError::user(format!(
                "window {window}: the size must be a whole number of steps"
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
        // Fail now, not at the first batch, if a key type cannot be row-encoded.
        GroupMap::new(&key_types)?;
        Ok(Self {
            geometry: Geometry {
                size,
                slide,
                width: gcd(size, slide),
                lateness: allowed_lateness.as_millis() as i64,
                cumulate,
            },
            key_indices: planned.key_indices,
            key_types,
            aggregates: planned.aggregates,
            schema,
            slices: BTreeMap::new(),
            fired_up_to: i64::MIN,
            watermark: i64::MIN,
            scratch: Vec::new(),
            latest_ingest_us: 0,
            early: None,
            early_timer: false,
        })
    }

    /// The same operator with empty state (one per subtask).
    fn fresh(&self) -> Self {
        Self {
            geometry: self.geometry,
            key_indices: self.key_indices.clone(),
            key_types: self.key_types.clone(),
            aggregates: self.aggregates.clone(),
            schema: Arc::clone(&self.schema),
            slices: BTreeMap::new(),
            fired_up_to: i64::MIN,
            watermark: i64::MIN,
            scratch: Vec::new(),
            latest_ingest_us: 0,
            early: self.early,
            early_timer: false,
        }
    }

    /// Number of slices held (for tests of state cleanup).
    pub fn slices_held(&self) -> usize {
        self.slices.len()
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggregates
            .iter()
            .map(|a| {
                let f = Arc::clone(&a.function);
                if f.groups_accumulator_supported() {
                    f.create_groups_accumulator().map_err(df_err)
                } else {
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        f.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect()
    }

    fn open_part(&self) -> Result<OpenPart> {
        Ok(OpenPart {
            groups: GroupMap::new(&self.key_types)?,
            accumulators: self.new_accumulators()?,
        })
    }

    /// Registers a timer at the last instant of every window that the slice starting at
    /// `start` belongs to and that has not fired yet, unless the watermark passed it
    /// beyond the allowed lateness: a row late for some of its windows (a hopping window
    /// that closed empty) counts only in the others.
    fn arm_windows_of(&self, start: i64, timers: &mut Timers) {
        let g = self.geometry;
        let mut end = g.first_end(start);
        while end <= g.last_end(start) {
            if end > self.fired_up_to && !g.expired(end, self.watermark) {
                timers.register(TimeDomain::EventTime, end.saturating_sub(1));
            }
            match end.checked_add(g.slide) {
                Some(next) => end = next,
                None => break,
            }
        }
    }

    fn update_slice(
        &mut self,
        start: i64,
        rows: &RecordBatch,
        args: &[Vec<ArrayRef>],
    ) -> Result<()> {
        let fresh = match self.slices.get(&start).and_then(|s| s.open.as_ref()) {
            Some(_) => None,
            None => Some(self.open_part()?),
        };
        let slice = self.slices.entry(start).or_default();
        if let Some(p) = fresh {
            slice.open = Some(p);
        }
        let part = slice.open.as_mut().expect("invariant: opened above");
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| Arc::clone(rows.column(i)))
            .collect();
        part.groups
            .intern(&keys, rows.num_rows(), &mut self.scratch)?;
        let total = part.groups.len;
        for (acc, values) in part.accumulators.iter_mut().zip(args) {
            acc.update_batch(values, &self.scratch, None, total)
                .map_err(df_err)?;
        }
        Ok(())
    }

    /// Fires every window with an end in `ends`, in order, and emits one batch.
    async fn fire(&mut self, ends: &BTreeSet<i64>, out: &mut dyn Collector) -> Result<()> {
        let mut batches = Vec::new();
        for &end in ends {
            if let Some(b) = self.evaluate_window(end, true)? {
                batches.push(b);
            }
        }
        if batches.is_empty() {
            return Ok(());
        }
        let data = arrow::compute::concat_batches(&self.schema, &batches)?;
        let ingest = sluice_types::IngestTime::at(match self.latest_ingest_us {
            0 => sluice_types::now_micros(),
            t => t,
        });
        out.collect(Batch { data, ingest }).await
    }

    /// Fires windows again after late rows changed them: per window, only the results of
    /// the keys that changed (all of it when the window is not keyed).
    async fn fire_again(
        &mut self,
        windows: BTreeMap<i64, HashSet<Box<[u8]>>>,
        converter: Option<&RowConverter>,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let mut batches = Vec::new();
        let nkeys = self.key_indices.len();
        for (end, changed) in windows {
            let Some(b) = self.evaluate_window(end, true)? else {
                continue;
            };
            let b = match converter {
                Some(c) => {
                    let keys = c.convert_columns(&b.columns()[..nkeys])?;
                    let keep: arrow::array::BooleanArray = keys
                        .iter()
                        .map(|k| Some(changed.contains(k.as_ref())))
                        .collect();
                    arrow::compute::filter_record_batch(&b, &keep)?
                }
                None => b,
            };
            if b.num_rows() > 0 {
                batches.push(b);
            }
        }
        if batches.is_empty() {
            return Ok(());
        }
        let data = arrow::compute::concat_batches(&self.schema, &batches)?;
        let ingest = sluice_types::IngestTime::at(match self.latest_ingest_us {
            0 => sluice_types::now_micros(),
            t => t,
        });
        out.collect(Batch { data, ingest }).await
    }

    fn seal(&mut self, start: i64) -> Result<()> {
        let Some(slice) = self.slices.get_mut(&start) else {
            return Ok(());
        };
        let Some(mut part) = slice.open.take() else {
            return Ok(());
        };
        let keys = part.groups.key_columns()?;
        let groups = part.groups.len;
        let states = part
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All).map_err(df_err))
            .collect::<Result<Vec<_>>>()?;
        slice.sealed.push(Sealed {
            keys,
            states,
            groups,
        });
        Ok(())
    }

    fn evaluate_window(&mut self, end: i64, last: bool) -> Result<Option<RecordBatch>> {
        let start = self.geometry.start_of(end);
        let members: Vec<i64> = self.slices.range(start..end).map(|(&s, _)| s).collect();
        if members.is_empty() {
            return Ok(None);
        }
        let (groups, keys, values) = if last
            && members.len() == 1
            && self.geometry.size == self.geometry.slide
            && self.geometry.lateness == 0
            && self.slices[&members[0]].sealed.is_empty()
        {
            // Tumbling without lateness: nothing else will read this slice; evaluate it.
            let mut slice = self
                .slices
                .remove(&members[0])
                .expect("invariant: member exists");
            let mut part = slice
                .open
                .take()
                .expect("invariant: unsealed slice has an open part");
            let values = part
                .accumulators
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All).map_err(df_err))
                .collect::<Result<Vec<_>>>()?;
            (part.groups.len, part.groups.key_columns()?, values)
        } else {
            for &s in &members {
                self.seal(s)?;
            }
            let mut merged = self.open_part()?;
            for s in &members {
                for sealed in &self.slices[s].sealed {
                    merged
                        .groups
                        .intern(&sealed.keys, sealed.groups, &mut self.scratch)?;
                    let total = merged.groups.len;
                    for (acc, state) in merged.accumulators.iter_mut().zip(&sealed.states) {
                        acc.merge_batch(state, &self.scratch, total)
                            .map_err(df_err)?;
                    }
                }
            }
            let values = merged
                .accumulators
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All).map_err(df_err))
                .collect::<Result<Vec<_>>>()?;
            (merged.groups.len, merged.groups.key_columns()?, values)
        };
        if groups == 0 {
            return Ok(None);
        }
        let mut columns = keys;
        columns.push(Arc::new(TimestampMillisecondArray::from_value(
            start, groups,
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, groups)));
        columns.extend(values);
        columns.push(Arc::new(TimestampMillisecondArray::from_value(
            end.saturating_sub(1),
            groups,
        )));
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            columns,
        )?))
    }

    /// The checkpointed state: every slice sealed into intermediate aggregate state, as
    /// a keyed table `slices` (`_key_group`, `_slice`, keys, states), and the watermark
    /// and firing progress as meta.
    fn snapshot_state(&mut self, max_parallelism: usize) -> Result<OperatorState> {
        let starts: Vec<i64> = self.slices.keys().copied().collect();
        let mut state = OperatorState::default();
        for &start in &starts {
            self.seal(start)?;
            for sealed in &self.slices[&start].sealed {
                TableWriter::with_key_columns(sealed.keys.clone(), sealed.groups)
                    .int64(SLICE_COLUMN, vec![start; sealed.groups])
                    .accumulator_columns(&sealed.states)
                    .finish(SLICES_TABLE, max_parallelism, &mut state)?;
            }
        }
        state.meta = serde_json::to_value(WindowMeta {
            watermark: self.watermark,
            fired_up_to: self.fired_up_to,
        })
        .map_err(|e| SluiceError::internal("encoding window state failed").with_source(e))?;
        Ok(state)
    }

    /// Restores slices (as sealed parts) and progress from a checkpoint.
    fn restore_state(&mut self, state: &RestoredState) -> Result<()> {
        let metas: Vec<WindowMeta> = state.metas()?;
        if let Some(m) = metas.iter().map(|m| m.watermark).min() {
            self.watermark = m;
        }
        if let Some(f) = metas.iter().map(|m| m.fired_up_to).min() {
            self.fired_up_to = f;
        }
        let counts = self.state_column_counts()?;
        let keys = self.key_types.len();
        let width = table_width(keys, 1, &counts);
        for batch in state.table(SLICES_TABLE) {
            let batch = &slices_layout(batch, keys)?;
            // Key columns stay columns here (a slice keeps its groups columnar).
            let mut r = TableReader::new(batch, "window", None, 0, Some(width))?;
            for (k, t) in r.columns(keys)?.iter().zip(&self.key_types) {
                crate::state::expect_type(k.as_ref(), t, "window key")?;
            }
            let slices = r.int64()?;
            let mut rows_of: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (i, &start) in slices.values().iter().enumerate() {
                rows_of.entry(start).or_default().push(i as u32);
            }
            for (start, rows) in rows_of {
                let part = take_record_batch(batch, &UInt32Array::from(rows))?;
                let mut r = TableReader::new(&part, "window", None, 0, Some(width))?;
                let key_columns = r.columns(keys)?.to_vec();
                r.int64()?;
                let states = r.accumulators(&counts)?;
                self.slices.entry(start).or_default().sealed.push(Sealed {
                    keys: key_columns,
                    states,
                    groups: part.num_rows(),
                });
            }
        }
        self.expire();
        Ok(())
    }

    /// The number of intermediate state columns of each aggregate.
    fn state_column_counts(&self) -> Result<Vec<usize>> {
        self.aggregates
            .iter()
            .map(|a| Ok(a.function.state_fields().map_err(df_err)?.len()))
            .collect()
    }

    /// Drops slices that no window can read any more.
    fn expire(&mut self) {
        let g = self.geometry;
        let wm = self.watermark;
        self.slices.retain(|&s, _| !g.expired(g.last_end(s), wm));
    }
}

#[async_trait]
impl Operator for WindowAggregateOperator {
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
        let g = self.geometry;
        let ts = batch.timestamps();
        // Row indices per slice (most batches touch one or two slices).
        let mut per_slice: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut out_of_range = Vec::new();
        for (i, &t) in ts.values().iter().enumerate() {
            if (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&t) {
                per_slice.entry(g.slice_of(t)).or_default().push(i as u32);
            } else {
                out_of_range.push(i as u32);
            }
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
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.args.iter().map(|e| evaluate(e, &batch)).collect())
            .collect::<Result<_>>()?;
        // Windows that fire again for late rows, with the keys those rows changed (only
        // their results go out again, as a per-key window would fire).
        let mut refire: BTreeMap<i64, HashSet<Box<[u8]>>> = BTreeMap::new();
        let converter = key_converter(&self.key_types)?;
        for (start, rows) in per_slice {
            let idx = UInt32Array::from(rows);
            let part = if idx.len() == batch.num_rows() {
                batch.data.clone()
            } else {
                take_record_batch(&batch.data, &idx)?
            };
            if g.expired(g.last_end(start), self.watermark) {
                let reason = format!(
                    "late row: every window it belongs to closed (watermark {} ms, allowed lateness {} ms)",
                    self.watermark, g.lateness
                );
                emit_late(ctx, batch.with_data(part), out, &reason, self.watermark).await?;
                continue;
            }
            let part_args: Vec<Vec<ArrayRef>> = if idx.len() == batch.num_rows() {
                args.clone()
            } else {
                args.iter()
                    .map(|cols| {
                        cols.iter()
                            .map(|c| take(c, &idx, None))
                            .collect::<std::result::Result<_, _>>()
                    })
                    .collect::<std::result::Result<_, _>>()?
            };
            let new_slice = !self.slices.contains_key(&start);
            self.update_slice(start, &part, &part_args)?;
            if new_slice {
                self.arm_windows_of(start, &mut ctx.timers);
            }
            // Windows that already fired and include this slice fire again, for the keys
            // of these rows.
            let keys = encode_keys(
                converter.as_ref(),
                &self.key_indices,
                &batch.with_data(part.clone()),
            )?;
            let mut end = g.first_end(start);
            while end <= g.last_end(start) && end <= self.fired_up_to {
                if !g.expired(end, self.watermark) {
                    let changed = refire.entry(end).or_default();
                    if let Some(keys) = &keys {
                        changed.extend(keys.iter().map(|k| Box::<[u8]>::from(k.as_ref())));
                    }
                }
                match end.checked_add(g.slide) {
                    Some(next) => end = next,
                    None => break,
                }
            }
        }
        if !refire.is_empty() {
            self.fire_again(refire, converter.as_ref(), out).await?;
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
        // The windows' timers follow from the slices (whichever old subtasks they came
        // from, and for checkpoints taken before windows kept timers).
        let starts: Vec<i64> = self.slices.keys().copied().collect();
        for start in starts {
            self.arm_windows_of(start, &mut ctx.timers);
        }
        self.early_timer = ctx.timers.next(TimeDomain::ProcessingTime).is_some();
        Ok(())
    }

    async fn on_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        if domain == TimeDomain::EventTime {
            // Every window whose last instant the watermark reached, in one batch: this
            // timer and the others due now.
            let mut due = BTreeSet::new();
            for t in ctx.take_due_event_timers(time).1 {
                let end = t.saturating_add(1);
                if end > self.fired_up_to {
                    due.insert(end);
                }
            }
            if let Some(&last) = due.last() {
                self.fire(&due, out).await?;
                self.fired_up_to = last;
            }
            return Ok(());
        }
        let Some(every) = self.early else {
            return Ok(());
        };
        // Early firing: the partial result of every window that has rows and has not fired.
        let g = self.geometry;
        let mut open = BTreeSet::new();
        for &s in self.slices.keys() {
            let mut end = g.first_end(s);
            while end <= g.last_end(s) {
                if end > self.fired_up_to && !Geometry::fired(end, self.watermark) {
                    open.insert(end);
                }
                match end.checked_add(g.slide) {
                    Some(next) => end = next,
                    None => break,
                }
            }
        }
        let mut batches = Vec::new();
        for end in open {
            if let Some(b) = self.evaluate_window(end, false)? {
                batches.push(b);
            }
        }
        if !batches.is_empty() {
            let data = arrow::compute::concat_batches(&self.schema, &batches)?;
            let ingest = sluice_types::IngestTime::at(match self.latest_ingest_us {
                0 => sluice_types::now_micros(),
                t => t,
            });
            out.collect(Batch { data, ingest }).await?;
        }
        // Keep firing while windows are open; otherwise the next row re-arms the timer.
        if self.slices.is_empty() {
            self.early_timer = false;
        } else {
            ctx.timers
                .register(TimeDomain::ProcessingTime, time + every);
        }
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
        // The due windows fired on their timers, just before this.
        self.watermark = wm;
        self.expire();
        Ok(Some(watermark))
    }
}

/// A checkpointed slices table in today's layout (keys, `_slice`, accumulator states):
/// checkpoints taken before the keyed state tables put `_slice` first, and are reordered;
/// anything else without `_slice` right after the keys is not a slices table.
fn slices_layout(batch: &RecordBatch, keys: usize) -> Result<RecordBatch> {
    let schema = batch.schema();
    let named = |i: usize| schema.fields().get(i).map(|f| f.name().as_str());
    if named(keys) == Some(SLICE_COLUMN) {
        return Ok(batch.clone());
    }
    if named(0) != Some(SLICE_COLUMN) {
        return Err(SluiceError::user(
            "checkpointed window state has no slice column where this window expects it: the job changed",
        ));
    }
    let mut order: Vec<usize> = (1..=keys).collect();
    order.push(0);
    order.extend(keys + 1..batch.num_columns());
    Ok(batch.project(&order)?)
}

#[cfg(test)]
mod tests;
