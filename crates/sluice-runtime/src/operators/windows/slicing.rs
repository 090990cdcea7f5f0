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
//! columnar per batch. When the watermark passes a window's end, the window's slices are
//! sealed into intermediate state, merged, and evaluated; a slice is freed as soon as the
//! last window containing it can no longer change (its end plus the allowed lateness is
//! behind the watermark), so state stays proportional to the open windows.
//!
//! A late row (its windows have fired) still updates them within the allowed lateness, and
//! each window it changed fires again with the updated result. Beyond that it is counted
//! (`late_records`) and sent to the dead-letter output with its event time and the
//! watermark it missed: never dropped without a trace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{take, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use datafusion_common::hash_utils::RandomState;
use datafusion_expr::{EmitTo, Expr, GroupsAccumulator};
use datafusion_physical_expr::GroupsAccumulatorAdapter;
use sluice_plan::WindowSpec;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use super::{
    MAX_EVENT_TIME, MIN_EVENT_TIME, WINDOW_END, WINDOW_START, arm_early_timer, dead_letter_rows,
    emit_late, window_output_schema,
};
use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext, TimeDomain};
use crate::operators::aggregates::{PlannedAggregate, PlannedAggregates};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{OperatorState, RestoredState, TableReader, TableWriter, table_width};

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

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("window aggregate computation failed").with_source(e)
}

/// Window geometry in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    size: i64,
    slide: i64,
    /// Slice width: gcd(size, slide).
    width: i64,
    lateness: i64,
    /// CUMULATE: the windows of a period share its start (a multiple of `size`) and end
    /// every `slide` (the step) up to `start + size`.
    cumulate: bool,
}

impl Geometry {
    /// Where the window ending at `end` starts.
    fn start_of(&self, end: i64) -> i64 {
        match self.cumulate {
            true => end
                .saturating_sub(1)
                .div_euclid(self.size)
                .saturating_mul(self.size),
            false => end.saturating_sub(self.size),
        }
    }

    fn slice_of(&self, t: i64) -> i64 {
        t.div_euclid(self.width).saturating_mul(self.width)
    }

    /// Window starts lie on the slide grid; ends are `start + size` (on the grid only
    /// when the slide divides the size). The smallest window end at or above `x`.
    fn end_at_or_after(&self, x: i64) -> i64 {
        if self.cumulate {
            // Every point of the step grid ends a window.
            return x
                .saturating_add(self.slide - 1)
                .div_euclid(self.slide)
                .saturating_mul(self.slide);
        }
        let start = x.saturating_sub(self.size);
        start
            .saturating_add(self.slide - 1)
            .div_euclid(self.slide)
            .saturating_mul(self.slide)
            .saturating_add(self.size)
    }

    /// End of the first window containing the slice starting at `s`
    /// (the window must reach the slice's end, `s + width`).
    fn first_end(&self, s: i64) -> i64 {
        self.end_at_or_after(s.saturating_add(self.width))
    }

    /// End of the last window containing the slice starting at `s`
    /// (the last grid start at or before `s`).
    fn last_end(&self, s: i64) -> i64 {
        if self.cumulate {
            // The period's full window.
            return s
                .div_euclid(self.size)
                .saturating_mul(self.size)
                .saturating_add(self.size);
        }
        s.div_euclid(self.slide)
            .saturating_mul(self.slide)
            .saturating_add(self.size)
    }

    /// A window fires once the watermark reaches its last millisecond.
    fn fired(end: i64, watermark: i64) -> bool {
        end.saturating_sub(1) <= watermark
    }

    /// Whether the window ending at `end` can still change.
    fn expired(&self, end: i64, watermark: i64) -> bool {
        end.saturating_sub(1).saturating_add(self.lateness) <= watermark
    }
}

/// Key rows to dense group indices.
struct GroupMap {
    converter: Option<RowConverter>,
    ids: HashMap<Box<[u8]>, u32, RandomState>,
    keys: Option<Rows>,
    len: usize,
}

impl GroupMap {
    fn new(key_types: &[DataType]) -> Result<Self> {
        let converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types
                    .iter()
                    .map(|t| SortField::new(t.clone()))
                    .collect(),
            )?)
        };
        let keys = converter.as_ref().map(|c| c.empty_rows(0, 0));
        Ok(Self {
            converter,
            ids: HashMap::with_hasher(RandomState::default()),
            keys,
            len: 0,
        })
    }

    /// Group index of every row of `key_columns` (`rows` rows).
    fn intern(
        &mut self,
        key_columns: &[ArrayRef],
        rows: usize,
        out: &mut Vec<usize>,
    ) -> Result<()> {
        out.clear();
        let (Some(conv), Some(keys)) = (self.converter.as_mut(), self.keys.as_mut()) else {
            // Not keyed: one group.
            self.len = self.len.max(usize::from(rows > 0));
            out.resize(rows, 0);
            return Ok(());
        };
        let encoded = conv.convert_columns(key_columns)?;
        for row in encoded.iter() {
            let id = match self.ids.get(row.as_ref()) {
                Some(&id) => id,
                None => {
                    let id = self.len as u32;
                    self.ids.insert(row.as_ref().into(), id);
                    keys.push(row);
                    self.len += 1;
                    id
                }
            };
            out.push(id as usize);
        }
        Ok(())
    }

    /// The key columns of all groups, in group order.
    fn key_columns(&self) -> Result<Vec<ArrayRef>> {
        match (&self.converter, &self.keys) {
            (Some(c), Some(k)) => Ok(c.convert_rows(k.iter())?),
            _ => Ok(Vec::new()),
        }
    }
}

/// Intermediate state of a finished part of a slice: key columns and, per aggregate,
/// its state columns (one row per group).
struct Sealed {
    keys: Vec<ArrayRef>,
    states: Vec<Vec<ArrayRef>>,
    groups: usize,
}

struct OpenPart {
    groups: GroupMap,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

#[derive(Default)]
struct Slice {
    sealed: Vec<Sealed>,
    open: Option<OpenPart>,
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

    /// Rows of one slice: update its open part.
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
        let mut refire = BTreeSet::new();
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
            self.update_slice(start, &part, &part_args)?;
            // Windows that already fired and include this slice fire again.
            let mut end = g.first_end(start);
            while end <= g.last_end(start) && end <= self.fired_up_to {
                if !g.expired(end, self.watermark) {
                    refire.insert(end);
                }
                match end.checked_add(g.slide) {
                    Some(next) => end = next,
                    None => break,
                }
            }
        }
        if !refire.is_empty() {
            self.fire(&refire, out).await?;
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
        let Some(every) = self.early.filter(|_| domain == TimeDomain::ProcessingTime) else {
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
        out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        let Some(wm) = watermark.event_time() else {
            return Ok(Some(watermark));
        };
        if wm <= self.watermark {
            return Ok(Some(watermark));
        }
        self.watermark = wm;
        let g = self.geometry;
        let mut due = BTreeSet::new();
        for &s in self.slices.keys() {
            let not_fired = match self.fired_up_to {
                i64::MIN => i64::MIN,
                f => g.end_at_or_after(f.saturating_add(1)),
            };
            let mut end = g.first_end(s).max(not_fired);
            while end <= g.last_end(s) && Geometry::fired(end, wm) {
                due.insert(end);
                match end.checked_add(g.slide) {
                    Some(next) => end = next,
                    None => break,
                }
            }
        }
        if let Some(&last) = due.last() {
            self.fire(&due, out).await?;
            self.fired_up_to = self.fired_up_to.max(last);
        }
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
mod tests {
    use super::*;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, max, sum};
    use sluice_testkit::{assert_pretty, batch_from_pretty};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test]
    async fn windows_survive_a_checkpoint_and_a_change_of_parallelism() {
        use crate::operators::test_util::{kv_batch, run_plain, run_through_checkpoint};
        let batches: Vec<Batch> = (0..6)
            .map(|b| {
                kv_batch(
                    &(0..50)
                        .map(|i| (i % 9, i, b * 700 + i * 13))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        for window in [
            WindowSpec::Tumbling {
                size: Duration::from_secs(1),
            },
            WindowSpec::Hopping {
                size: Duration::from_secs(2),
                slide: Duration::from_millis(500),
            },
        ] {
            let make = || {
                Box::new(
                    WindowAggregateOperator::new(
                        &["k".into()],
                        window,
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
                    run_through_checkpoint(make, &batches, 3, p, &[0]).await,
                    whole,
                    "{window}, parallelism {p}"
                );
            }
        }
    }

    #[tokio::test]
    async fn checkpoints_with_the_earlier_slices_layout_still_restore() {
        use crate::operators::test_util::{barrier, kv_batch, restored, window_rows};
        let batches: Vec<Batch> = (0..3)
            .map(|b| {
                kv_batch(
                    &(0..40)
                        .map(|i| (i % 7, i, b * 300 + i * 7))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let schema = batches[0].data.schema();
        let make = || {
            WindowAggregateOperator::new(
                &["k".into()],
                WindowSpec::Tumbling {
                    size: Duration::from_millis(200),
                },
                &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
                Duration::ZERO,
                &schema,
            )
            .unwrap()
        };
        let mut op = make();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = crate::operator::VecCollector::default();
        for b in &batches {
            op.process_batch(b.clone(), &mut ctx, &mut out)
                .await
                .unwrap();
        }
        let state = op.snapshot(&barrier(), &mut ctx).await.unwrap();
        // The layout before the state tables: `_key_group`, `_slice`, keys, states.
        let mut earlier = state.clone();
        for b in earlier.keyed.get_mut(SLICES_TABLE).unwrap() {
            let mut order = vec![0, 2];
            order.push(1);
            order.extend(3..b.num_columns());
            *b = b.project(&order).unwrap();
            assert_eq!(b.schema().field(1).name(), SLICE_COLUMN);
        }
        let mut results = Vec::new();
        for s in [&state, &earlier] {
            let mut op = make();
            let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
            op.restore(restored(s, 0, 1), &mut ctx).await.unwrap();
            let mut out = crate::operator::VecCollector::default();
            op.on_watermark(Watermark::EventTime(i64::MAX), &mut ctx, &mut out)
                .await
                .unwrap();
            results.push(window_rows(&out.batches));
        }
        assert!(!results[0].is_empty());
        assert_eq!(results[0], results[1]);
    }

    async fn run(window: WindowSpec, lateness: Duration, steps: Vec<Step>) -> (Vec<Batch>, u64) {
        let (out, late, _) = run_counting(window, lateness, steps).await;
        (out, late)
    }

    async fn run_counting(
        window: WindowSpec,
        lateness: Duration,
        steps: Vec<Step>,
    ) -> (Vec<Batch>, u64, u64) {
        let first = match &steps[0] {
            Step::Rows(b) => b.clone(),
            Step::Wm(_) => panic!("start with rows"),
        };
        let schema = first.data.schema();
        let p = WindowAggregateOperator::prepare(
            &["k".into()],
            window,
            &[
                count(col("v")).alias("n"),
                sum(col("v")).alias("total"),
                max(col("v")).alias("hi"),
            ],
            lateness,
            &schema,
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("window")).unwrap();
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = crate::operator::VecCollector::default();
        for s in steps {
            match s {
                Step::Rows(b) => op.process_batch(b, &mut ctx, &mut out).await.unwrap(),
                Step::Wm(t) => {
                    op.on_watermark(Watermark::EventTime(t), &mut ctx, &mut out)
                        .await
                        .unwrap();
                }
            }
        }
        let late = ctx
            .metrics
            .late_records
            .load(std::sync::atomic::Ordering::Relaxed);
        let dead = ctx
            .metrics
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed);
        (out.batches, late, dead)
    }

    enum Step {
        Rows(Batch),
        Wm(i64),
    }

    #[tokio::test]
    async fn tumbling_windows_fire_on_watermark_with_out_of_order_rows() {
        let (out, late) = run(
            WindowSpec::Tumbling { size: secs(10) },
            Duration::ZERO,
            vec![
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 1       | 1000          |
                    | b      | 2       | 12000         |
                    | a      | 3       | 9999          |",
                )),
                Step::Wm(9_000),
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 4       | 9500          |
                    | a      | 5       | 15000         |",
                )),
                Step::Wm(9_999),
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 100     | 9000          |",
                )),
                Step::Wm(i64::MAX),
            ],
        )
        .await;
        assert_pretty(
            &out,
            "
            +---+---------------------+---------------------+---+-------+----+-------------------------+
            | k | window_start        | window_end          | n | total | hi | _timestamp              |
            +---+---------------------+---------------------+---+-------+----+-------------------------+
            | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 3 | 8     | 4  | 1970-01-01T00:00:09.999 |
            | b | 1970-01-01T00:00:10 | 1970-01-01T00:00:20 | 1 | 2     | 2  | 1970-01-01T00:00:19.999 |
            | a | 1970-01-01T00:00:10 | 1970-01-01T00:00:20 | 1 | 5     | 5  | 1970-01-01T00:00:19.999 |
            +---+---------------------+---------------------+---+-------+----+-------------------------+",
        );
        assert_eq!(late, 1, "the row at 9 000 arrived after its window closed");
    }

    #[tokio::test]
    async fn hopping_windows_merge_slices() {
        let (out, _) = run(
            WindowSpec::Hopping {
                size: secs(4),
                slide: secs(2),
            },
            Duration::ZERO,
            vec![
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 1       | 500           |
                    | a      | 2       | 2500          |
                    | a      | 3       | 4500          |",
                )),
                Step::Wm(i64::MAX),
            ],
        )
        .await;
        assert_pretty(
            &out,
            "
            +---+---------------------+---------------------+---+-------+----+-------------------------+
            | k | window_start        | window_end          | n | total | hi | _timestamp              |
            +---+---------------------+---------------------+---+-------+----+-------------------------+
            | a | 1969-12-31T23:59:58 | 1970-01-01T00:00:02 | 1 | 1     | 1  | 1970-01-01T00:00:01.999 |
            | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:04 | 2 | 3     | 2  | 1970-01-01T00:00:03.999 |
            | a | 1970-01-01T00:00:02 | 1970-01-01T00:00:06 | 2 | 5     | 3  | 1970-01-01T00:00:05.999 |
            | a | 1970-01-01T00:00:04 | 1970-01-01T00:00:08 | 1 | 3     | 3  | 1970-01-01T00:00:07.999 |
            +---+---------------------+---------------------+---+-------+----+-------------------------+",
        );
    }

    #[tokio::test]
    async fn allowed_lateness_refires_then_late_rows_are_counted() {
        let (out, late) = run(
            WindowSpec::Tumbling { size: secs(10) },
            secs(5),
            vec![
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 1       | 1000          |",
                )),
                Step::Wm(10_000),
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 2       | 2000          |",
                )),
                Step::Wm(15_000),
                Step::Rows(batch_from_pretty(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 3       | 3000          |",
                )),
            ],
        )
        .await;
        assert_pretty(
            &out,
            "
            +---+---------------------+---------------------+---+-------+----+-------------------------+
            | k | window_start        | window_end          | n | total | hi | _timestamp              |
            +---+---------------------+---------------------+---+-------+----+-------------------------+
            | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 1 | 1     | 1  | 1970-01-01T00:00:09.999 |
            | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 2 | 3     | 2  | 1970-01-01T00:00:09.999 |
            +---+---------------------+---------------------+---+-------+----+-------------------------+",
        );
        assert_eq!(late, 1, "beyond the allowed lateness the row is late");
    }

    #[tokio::test]
    async fn extreme_event_times_neither_panic_nor_hang() {
        let (out, late, dead) = run_counting(
            WindowSpec::Hopping {
                size: secs(4),
                slide: secs(2),
            },
            Duration::ZERO,
            vec![
                Step::Rows(batch_from_pretty(&format!(
                    "
                    | k:Utf8 | v:Int64 | _timestamp:Ts |
                    | a      | 1       | {}            |
                    | b      | 2       | {}            |
                    | c      | 3       | 1000          |",
                    i64::MIN + 5,
                    i64::MAX - 5
                ))),
                Step::Wm(i64::MAX),
            ],
        )
        .await;
        let rows: usize = out.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2, "the in-range row is in its two windows");
        assert_eq!(
            (late, dead),
            (0, 2),
            "out-of-range rows go to the dead-letter output"
        );
    }

    /// A user-defined aggregate: the product of the values.
    #[derive(Debug)]
    struct Product(i64);

    impl datafusion_expr::Accumulator for Product {
        fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion_common::Result<()> {
            let v = values[0]
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            self.0 = v.iter().flatten().fold(self.0, |a, b| a * b);
            Ok(())
        }
        fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion_common::Result<()> {
            self.update_batch(states)
        }
        fn state(&mut self) -> datafusion_common::Result<Vec<datafusion_common::ScalarValue>> {
            Ok(vec![datafusion_common::ScalarValue::Int64(Some(self.0))])
        }
        fn evaluate(&mut self) -> datafusion_common::Result<datafusion_common::ScalarValue> {
            Ok(datafusion_common::ScalarValue::Int64(Some(self.0)))
        }
        fn size(&self) -> usize {
            std::mem::size_of::<Self>()
        }
    }

    #[tokio::test]
    async fn distinct_first_last_and_user_aggregates() {
        use datafusion_functions_aggregate::expr_fn::{count_distinct, first_value, last_value};
        let product = datafusion_expr::create_udaf(
            "product",
            vec![DataType::Int64],
            Arc::new(DataType::Int64),
            datafusion_expr::Volatility::Immutable,
            Arc::new(|_| Ok(Box::new(Product(1)))),
            Arc::new(vec![DataType::Int64]),
        );
        let input = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | 3       | 300           |
            | a      | 2       | 100           |
            | a      | 3       | 900           |
            | a      | 5       | 500           |",
        );
        let by_time = || vec![col("_timestamp").sort(true, false)];
        let p = WindowAggregateOperator::prepare(
            &["k".into()],
            WindowSpec::Tumbling { size: secs(1) },
            &[
                count_distinct(col("v")).alias("distinct"),
                first_value(col("v"), by_time()).alias("first"),
                last_value(col("v"), by_time()).alias("last"),
                product.call(vec![col("v")]).alias("product"),
            ],
            Duration::ZERO,
            &input.data.schema(),
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("window")).unwrap();
        let mut ctx = OperatorContext::for_test(input.data.schema());
        let mut out = crate::operator::VecCollector::default();
        op.process_batch(input, &mut ctx, &mut out).await.unwrap();
        op.on_watermark(Watermark::MAX, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_pretty(
            &out.batches,
            "
            +---+---------------------+---------------------+----------+-------+------+---------+-------------------------+
            | k | window_start        | window_end          | distinct | first | last | product | _timestamp              |
            +---+---------------------+---------------------+----------+-------+------+---------+-------------------------+
            | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:01 | 3        | 2     | 3    | 90      | 1970-01-01T00:00:00.999 |
            +---+---------------------+---------------------+----------+-------+------+---------+-------------------------+",
        );
    }

    #[tokio::test]
    async fn early_firings_emit_partial_results_before_the_final_one() {
        let rows = |v: i64, t: i64| {
            batch_from_pretty(&format!(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | {v}     | {t}           |"
            ))
        };
        let schema = rows(1, 1).data.schema();
        let mut op = WindowAggregateOperator::new(
            &["k".into()],
            WindowSpec::Tumbling { size: secs(10) },
            &[sum(col("v")).alias("total")],
            Duration::ZERO,
            &schema,
        )
        .unwrap()
        .with_early_firing(Some(Duration::from_millis(100)));
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = crate::operator::VecCollector::default();
        op.process_batch(rows(1, 1_000), &mut ctx, &mut out)
            .await
            .unwrap();
        let t = ctx
            .timers
            .next(TimeDomain::ProcessingTime)
            .expect("an early-firing timer");
        ctx.timers.pop_due(TimeDomain::ProcessingTime, t);
        op.on_timer(TimeDomain::ProcessingTime, t, &mut ctx, &mut out)
            .await
            .unwrap();
        op.process_batch(rows(2, 2_000), &mut ctx, &mut out)
            .await
            .unwrap();
        let t2 = ctx
            .timers
            .next(TimeDomain::ProcessingTime)
            .expect("re-armed while windows are open");
        assert_eq!(t2, t + 100);
        ctx.timers.pop_due(TimeDomain::ProcessingTime, t2);
        op.on_timer(TimeDomain::ProcessingTime, t2, &mut ctx, &mut out)
            .await
            .unwrap();
        op.on_watermark(Watermark::MAX, &mut ctx, &mut out)
            .await
            .unwrap();
        let totals: Vec<String> = out
            .batches
            .iter()
            .map(|b| arrow::util::display::array_value_to_string(b.data.column(3), 0).unwrap())
            .collect();
        assert_eq!(totals, ["1", "3", "3"], "partial, partial, final");
        op.on_timer(TimeDomain::ProcessingTime, t2 + 100, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(out.batches.len(), 3, "nothing open: no more early results");
    }

    #[test]
    fn invalid_windows_are_rejected() {
        let b = batch_from_pretty(
            "
            | k:Utf8 | _timestamp:Ts |
            | a      | 1             |",
        );
        let e = WindowAggregateOperator::prepare(
            &["k".into()],
            WindowSpec::Hopping {
                size: secs(2),
                slide: secs(4),
            },
            &[],
            Duration::ZERO,
            &b.data.schema(),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("slide is longer than the size"),
            "{e}"
        );
    }

    mod property {
        use super::*;
        use arrow::array::{Int64Array, StringArray};
        use proptest::prelude::*;

        const BOUND: i64 = 100;

        fn reference(rows: &[(i64, i64, i64)], size: i64, slide: i64) -> Vec<String> {
            // From scratch: every window [s, s + size) with s on the slide grid holding t.
            let mut acc: BTreeMap<(i64, i64), (i64, i64, i64)> = BTreeMap::new();
            for &(k, v, t) in rows {
                let mut s = t.div_euclid(slide) * slide;
                while s > t - size {
                    let e = acc.entry((k, s)).or_insert((0, 0, i64::MIN));
                    *e = (e.0 + 1, e.1 + v, e.2.max(v));
                    s -= slide;
                }
            }
            let mut out: Vec<String> = acc
                .into_iter()
                .map(|((k, s), (n, total, hi))| format!("k{k},{s},{},{n},{total},{hi}", s + size))
                .collect();
            out.sort();
            out
        }

        use crate::operators::test_util::kv_batch as batch;

        fn rows_of(out: &[Batch]) -> Vec<String> {
            let mut v = Vec::new();
            for b in out {
                let d = &b.data;
                let k = d.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let ts = |i: usize| {
                    d.column(i)
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .unwrap()
                        .clone()
                };
                let int = |i: usize| {
                    d.column(i)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .clone()
                };
                let (ws, we, n, total, hi) = (ts(1), ts(2), int(3), int(4), int(5));
                for r in 0..d.num_rows() {
                    v.push(format!(
                        "{},{},{},{},{},{}",
                        k.value(r),
                        ws.value(r),
                        we.value(r),
                        n.value(r),
                        total.value(r),
                        hi.value(r)
                    ));
                }
            }
            v.sort();
            v
        }

        fn geometry() -> impl Strategy<Value = (i64, i64)> {
            prop_oneof![
                (1..=5i64).prop_map(|k| (100 * k, 100 * k)), // tumbling
                (1..=3i64, 1..=4i64).prop_map(|(s, k)| (100 * s * k, 100 * s)), // hopping, size = k * slide
                Just((300i64, 200i64)), // slide does not divide size
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn windows_equal_a_batch_computation(
                (size, slide) in geometry(),
                events in prop::collection::vec((0..4i64, -50..50i64, 0..40i64, 0..=BOUND), 1..300),
                cuts in prop::collection::vec(1..40usize, 1..20),
            ) {
                // Rows out of order by at most BOUND: t = base - jitter, base non-decreasing.
                let mut base = 0;
                let rows: Vec<(i64, i64, i64)> = events
                    .iter()
                    .map(|&(k, v, step, jitter)| {
                        base += step;
                        (k, v, base - jitter)
                    })
                    .collect();
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let keys = ["k".to_string()];
                let aggs = [count(col("v")).alias("n"), sum(col("v")).alias("total"), max(col("v")).alias("hi")];
                let schema = batch(&rows[..1]).data.schema();
                let window = if size == slide {
                    WindowSpec::Tumbling { size: Duration::from_millis(size as u64) }
                } else {
                    WindowSpec::Hopping { size: Duration::from_millis(size as u64), slide: Duration::from_millis(slide as u64) }
                };
                let mut op = WindowAggregateOperator::new(&keys, window, &aggs, Duration::ZERO, &schema).unwrap();
                let mut ctx = OperatorContext::for_test(schema);
                let mut out = crate::operator::VecCollector::default();
                let mut max_slices = 0;
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
                        let wm = Watermark::EventTime(max_t - BOUND - 1);
                        op.on_watermark(wm, &mut ctx, &mut out).await.unwrap();
                        max_slices = max_slices.max(op.slices_held());
                    }
                    op.on_watermark(Watermark::MAX, &mut ctx, &mut out).await.unwrap();
                });
                prop_assert_eq!(ctx.metrics.late_records.load(std::sync::atomic::Ordering::Relaxed), 0);
                prop_assert_eq!(rows_of(&out.batches), reference(&rows, size, slide));
                prop_assert_eq!(op.slices_held(), 0, "all window state is freed at the end");
                // Live slices cover at most the open windows plus the out-of-order bound.
                let width = gcd(size, slide);
                let bound = ((size + BOUND + 40 * 40) / width + 2) as usize;
                prop_assert!(max_slices <= bound, "{} slices held, bound {}", max_slices, bound);
            }

            #[test]
            fn cumulate_windows_equal_a_batch_computation(
                (steps, step) in (1..=4i64, 1..=3i64).prop_map(|(k, s)| (k, 100 * s)),
                events in prop::collection::vec((0..4i64, -50..50i64, 0..40i64, 0..=BOUND), 1..300),
                cuts in prop::collection::vec(1..40usize, 1..20),
            ) {
                let size = steps * step;
                let mut base = 0;
                let rows: Vec<(i64, i64, i64)> = events
                    .iter()
                    .map(|&(k, v, d, jitter)| {
                        base += d;
                        (k, v, base - jitter)
                    })
                    .collect();
                // From scratch: a row at t is in its period's windows that end after t.
                let mut acc: BTreeMap<(i64, i64, i64), (i64, i64, i64)> = BTreeMap::new();
                for &(k, v, t) in &rows {
                    let start = t.div_euclid(size) * size;
                    let mut end = start + step;
                    while end <= start + size {
                        if end > t {
                            let e = acc.entry((k, start, end)).or_insert((0, 0, i64::MIN));
                            *e = (e.0 + 1, e.1 + v, e.2.max(v));
                        }
                        end += step;
                    }
                }
                let mut want: Vec<String> = acc
                    .into_iter()
                    .map(|((k, s, e), (n, total, hi))| format!("k{k},{s},{e},{n},{total},{hi}"))
                    .collect();
                want.sort();
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let keys = ["k".to_string()];
                let aggs = [count(col("v")).alias("n"), sum(col("v")).alias("total"), max(col("v")).alias("hi")];
                let schema = batch(&rows[..1]).data.schema();
                let window = WindowSpec::Cumulate {
                    size: Duration::from_millis(size as u64),
                    step: Duration::from_millis(step as u64),
                };
                let mut op = WindowAggregateOperator::new(&keys, window, &aggs, Duration::ZERO, &schema).unwrap();
                let mut ctx = OperatorContext::for_test(schema);
                let mut out = crate::operator::VecCollector::default();
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
                        op.on_watermark(Watermark::EventTime(max_t - BOUND - 1), &mut ctx, &mut out).await.unwrap();
                    }
                    op.on_watermark(Watermark::MAX, &mut ctx, &mut out).await.unwrap();
                });
                prop_assert_eq!(rows_of(&out.batches), want);
                prop_assert_eq!(op.slices_held(), 0, "all window state is freed at the end");
            }
        }
    }
}
