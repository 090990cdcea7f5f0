//! A keyed running aggregate (`GROUP BY` without windows). Its output is a changelog:
//! per input batch, for every key the batch touched, `+I` with the first result of a
//! new key, `-U` with the previous result and `+U` with the new one when it changed, and
//! `-D` with the last result of a group whose rows were all taken back. Applying the
//! changes in order holds, at the end of a bounded input, the batch `GROUP BY`.
//!
//! ```text
//!  in:  +I a 1   +I a 3   +I b 2   -U a 1   +U a 5          (GROUP BY k, SUM(v))
//!  out: +I a 4   +I b 2   -U a 4   +U a 8
//! ```
//!
//! Over an updating input (retractions from an inner aggregate, Top-N or join) the
//! accumulators take `-U`/`-D` rows back out (DataFusion's sliding accumulators, a
//! counted multiset for `min`/`max`) and each group counts its rows, so an emptied group
//! is deleted rather than showing `COUNT 0`.
//!
//! Aggregates are DataFusion aggregate functions (count, sum, min, max, avg and any
//! UDAF) through their accumulators. Per batch the work is columnar: keys are encoded
//! with the Arrow row format, rows are sorted by group (and addition or retraction) once
//! (one `take`), and each touched group's accumulators get zero-copy slices.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_common::hash_utils::RandomState;
use datafusion_expr::{Accumulator, Expr};
use sluice_types::{
    Batch, CheckpointBarrier, Result, RowKind, SluiceError, is_updating, row_kind_field,
    timestamp_field,
};

use super::retract::retractable;
use super::{PlannedAggregate, PlannedAggregates};
use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::PreparedOperator;
use crate::state::ttl::{Sweeps, Ttl, UNKNOWN_WRITE};
use crate::state::{OperatorState, RestoredState, TableReader, TableWriter, table_width};

/// Keyed running aggregate.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::datatypes::*;
/// use datafusion_expr::col;
/// use datafusion_functions_aggregate::expr_fn::{count, sum};
/// use sluice_runtime::operators::aggregates::group::AggregateOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("auction", DataType::Int64, false),
///     Field::new("price", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = AggregateOperator::prepare(
///     &["auction".to_string()],
///     &[count(col("price")).alias("bids"), sum(col("price")).alias("volume")],
///     &schema,
/// ).unwrap();
/// let names: Vec<_> = op.output_schema.fields().iter().map(|f| f.name().clone()).collect();
/// assert_eq!(names, ["auction", "bids", "volume", "_rowkind", "_timestamp"]);
/// ```
pub struct AggregateOperator {
    key_indices: Vec<usize>,
    aggregates: Vec<PlannedAggregate>,
    /// Over an updating input: per aggregate, its argument types (for retractable
    /// accumulators). `None`: an append-only input.
    retracting: Option<Arc<Vec<Vec<DataType>>>>,
    schema: SchemaRef,
    converter: RowConverter,
    groups: HashMap<Box<[u8]>, u32, RandomState>,
    group_keys: Rows,
    accumulators: Vec<Vec<Box<dyn Accumulator>>>,
    /// Over an updating input: the rows in each group (0: emptied, nothing emitted).
    rows: Vec<i64>,
    /// Groups emptied since the last compaction.
    emptied: usize,
    /// Forget a key no row reached for this long (event time, past the watermark).
    ttl: Option<Ttl>,
    /// With a TTL: per group, the latest event time of its rows.
    last: Vec<i64>,
    sweeps: Sweeps,
    /// A window aggregate over an updating input: the position (among the keys) of the
    /// window's end. Groups emit nothing as they change; each emits its result once, as
    /// an insert, when the watermark passes its window's end, and is dropped.
    fire_at: Option<usize>,
    /// In that mode: per group, its window's end (epoch ms).
    ends: Vec<i64>,
    /// In that mode: the watermark so far; a change for a window it passed is late.
    watermark: i64,
    /// Upsert mode: an update is its new row alone (no `-U`).
    upsert: bool,
}

/// A group the current batch touches.
struct Touched {
    group: u32,
    adds: u32,
    retracts: u32,
    max_ts: i64,
    /// The group's result before the batch, if it had one.
    before: Option<Vec<ScalarValue>>,
}

impl AggregateOperator {
    /// Checks keys and aggregates against the input schema.
    pub fn prepare(
        keys: &[String],
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Self::prepare_with_ttl(keys, aggregates, None, input)
    }

    /// [`Self::prepare`] with a state TTL: a key no row reached for `ttl_ms` of event
    /// time before the watermark is forgotten (a later row starts it over).
    pub fn prepare_with_ttl(
        keys: &[String],
        aggregates: &[Expr],
        ttl_ms: Option<i64>,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Self::prepare_mode(keys, aggregates, ttl_ms, None, false, input)
    }

    /// [`Self::prepare_with_ttl`] emitting upserts: an update is its new row alone
    /// (`+U` without the `-U` before it), for a consumer that keeps each key's last row.
    pub fn prepare_upsert(
        keys: &[String],
        aggregates: &[Expr],
        ttl_ms: Option<i64>,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Self::prepare_mode(keys, aggregates, ttl_ms, None, true, input)
    }

    /// A window aggregate over an updating input (Flink 1.19+ aggregates windows of CDC
    /// input): the changes of each group (`keys`, which include the window's columns)
    /// are applied as they come, nothing is emitted until the watermark passes the
    /// group's window end (the key column `window_end`), then its result is emitted once
    /// as an insert (nothing for a window whose rows were all taken back) and the group
    /// is dropped. A change for a window already fired is late and dropped, as in Flink.
    pub fn prepare_windowed(
        keys: &[String],
        aggregates: &[Expr],
        window_end: &str,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let at = keys.iter().position(|k| k == window_end).ok_or_else(|| {
            SluiceError::internal(format!("the window end `{window_end}` is not a key"))
        })?;
        Self::prepare_mode(keys, aggregates, None, Some(at), false, input)
    }

    fn prepare_mode(
        keys: &[String],
        aggregates: &[Expr],
        ttl_ms: Option<i64>,
        fire_at: Option<usize>,
        upsert: bool,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        if keys.is_empty() {
            return Err(SluiceError::user(
                "a running aggregate needs at least one key column (use key_by)",
            ));
        }
        let planned = PlannedAggregates::plan(keys, aggregates, input, &[])?;
        let key_indices = planned.key_indices.clone();
        let mut fields = planned.key_fields.clone();
        fields.extend(planned.aggregate_fields.iter().cloned());
        let planned = planned.aggregates;
        let retracting = match is_updating(input) {
            false => None,
            true => {
                let types = super::argument_types(&planned, input)?;
                // Fail now if an aggregate cannot take values back.
                for (a, t) in planned.iter().zip(&types) {
                    retractable(a, t)?;
                }
                Some(Arc::new(types))
            }
        };
        if let Some(at) = fire_at
            && !matches!(
                input.field(key_indices[at]).data_type(),
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _)
            )
        {
            return Err(SluiceError::internal("a window end is a TIMESTAMP(3)"));
        }
        // Fired windows are final: inserts only.
        if fire_at.is_none() {
            fields.push(Arc::new(row_kind_field()));
        }
        fields.push(Arc::new(timestamp_field()));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let output_schema = Arc::clone(&schema);
        let sort_fields: Vec<SortField> = key_indices
            .iter()
            .map(|&i| SortField::new(input.field(i).data_type().clone()))
            .collect();
        // Fail now, not at the first batch, if a key type cannot be row-encoded.
        RowConverter::new(sort_fields.clone())
            .map_err(|e| SluiceError::user("unsupported key column type").with_source(e))?;
        Ok(PreparedOperator {
            output_schema,
            factory: Arc::new(move |_| {
                let converter = RowConverter::new(sort_fields.clone())?;
                let group_keys = converter.empty_rows(0, 0);
                Ok(Box::new(AggregateOperator {
                    key_indices: key_indices.clone(),
                    aggregates: planned.clone(),
                    retracting: retracting.clone(),
                    schema: Arc::clone(&schema),
                    converter,
                    groups: HashMap::with_hasher(RandomState::default()),
                    group_keys,
                    accumulators: Vec::new(),
                    rows: Vec::new(),
                    emptied: 0,
                    ttl: Ttl::of(ttl_ms),
                    last: Vec::new(),
                    sweeps: Sweeps::default(),
                    fire_at,
                    ends: Vec::new(),
                    watermark: i64::MIN,
                    upsert,
                }) as Box<dyn crate::operator::Operator>)
            }),
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        match &self.retracting {
            Some(types) => self
                .aggregates
                .iter()
                .zip(types.iter())
                .map(|(a, t)| retractable(a, t))
                .collect(),
            None => self
                .aggregates
                .iter()
                .map(|a| {
                    a.function.create_accumulator().map_err(|e| {
                        SluiceError::internal("cannot create accumulator").with_source(e)
                    })
                })
                .collect(),
        }
    }

    /// Number of distinct keys held.
    pub fn num_keys(&self) -> usize {
        self.groups.len()
    }

    /// Keeps the groups marked in `keep`, renumbering them.
    fn retain(&mut self, keep: &[bool]) {
        let old_keys = std::mem::replace(&mut self.group_keys, self.converter.empty_rows(0, 0));
        let accs = std::mem::take(&mut self.accumulators);
        let last = std::mem::take(&mut self.last);
        let rows = std::mem::take(&mut self.rows);
        let ends = std::mem::take(&mut self.ends);
        self.groups.clear();
        for (g, a) in accs.into_iter().enumerate() {
            if !keep[g] {
                continue;
            }
            let row = old_keys.row(g);
            self.groups
                .insert(row.as_ref().into(), self.accumulators.len() as u32);
            self.group_keys.push(row);
            self.accumulators.push(a);
            if let Some(&l) = last.get(g) {
                self.last.push(l);
            }
            if let Some(&r) = rows.get(g) {
                self.rows.push(r);
            }
            if let Some(&e) = ends.get(g) {
                self.ends.push(e);
            }
        }
        self.emptied = 0;
    }

    /// The window ends of the group keys `keys` (in that mode).
    fn window_ends<'a>(
        &self,
        keys: impl IntoIterator<Item = arrow::row::Row<'a>>,
    ) -> Result<Vec<i64>> {
        let Some(at) = self.fire_at else {
            return Ok(Vec::new());
        };
        let columns = self.converter.convert_rows(keys)?;
        let ends = columns[at]
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| SluiceError::internal("a window end is a TIMESTAMP(3)"))?;
        Ok(ends.iter().map(|e| e.unwrap_or(i64::MIN)).collect())
    }

    /// Emits the result of every group whose window ended at or before `watermark`
    /// (those with rows), and drops them.
    async fn fire(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        let due: Vec<u32> = (0..self.ends.len() as u32)
            .filter(|&g| self.ends[g as usize] <= watermark)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let fired: Vec<u32> = due
            .iter()
            .copied()
            .filter(|&g| self.rows.get(g as usize).is_none_or(|&r| r > 0))
            .collect();
        if !fired.is_empty() {
            let mut columns = self
                .converter
                .convert_rows(fired.iter().map(|&g| self.group_keys.row(g as usize)))?;
            let mut values: Vec<Vec<ScalarValue>> =
                vec![Vec::with_capacity(fired.len()); self.aggregates.len()];
            for &g in &fired {
                for (column, v) in values.iter_mut().zip(self.result(g)?) {
                    column.push(v);
                }
            }
            for (a, column) in values.into_iter().enumerate() {
                let field = self.schema.field(self.key_indices.len() + a);
                let array = ScalarValue::iter_to_array(column).map_err(df_err)?;
                columns.push(arrow::compute::cast(&array, field.data_type())?);
            }
            // A window's rows carry its last instant as their time, as window results do.
            columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                fired.iter().map(|&g| self.ends[g as usize] - 1),
            )));
            let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
            let batch = Batch::try_new(
                data,
                sluice_types::IngestTime::at(sluice_types::now_micros()),
            )?;
            out.collect(batch).await?;
        }
        let mut keep = vec![true; self.ends.len()];
        for g in due {
            keep[g as usize] = false;
        }
        self.retain(&keep);
        Ok(())
    }

    /// Forgets the keys whose TTL ran out at watermark `now`.
    fn expire(&mut self, ttl: Ttl, now: i64) {
        let keep: Vec<bool> = self.last.iter_mut().map(|l| !ttl.expired(l, now)).collect();
        if keep.contains(&false) {
            self.retain(&keep);
        }
    }

    /// Frees the groups whose rows were all taken back.
    fn drop_emptied(&mut self) {
        if self.emptied > 0 {
            let keep: Vec<bool> = self.rows.iter().map(|&r| r > 0).collect();
            self.retain(&keep);
        }
    }

    /// Accumulators of one group, merged from row `row` of intermediate `states`
    /// (per aggregate, its state columns).
    fn accumulators_from(
        &self,
        states: &[Vec<ArrayRef>],
        row: usize,
    ) -> Result<Vec<Box<dyn Accumulator>>> {
        let mut accs = self.new_accumulators()?;
        for (acc, cols) in accs.iter_mut().zip(states) {
            let one: Vec<ArrayRef> = cols.iter().map(|c| c.slice(row, 1)).collect();
            acc.merge_batch(&one).map_err(df_err)?;
        }
        Ok(accs)
    }

    /// Per aggregate, how many state columns its accumulator checkpoints.
    fn state_widths(&self) -> Result<Vec<usize>> {
        match &self.retracting {
            // Retractable accumulators keep more than the plain ones (a sliding sum
            // also counts its values; the min/max multiset keeps every value).
            Some(_) => self
                .new_accumulators()?
                .iter_mut()
                .map(|a| Ok(a.state().map_err(df_err)?.len()))
                .collect(),
            None => self
                .aggregates
                .iter()
                .map(|a| Ok(a.function.state_fields().map_err(df_err)?.len()))
                .collect(),
        }
    }

    /// Keyed table `groups`: `_key_group`, the key columns, every aggregate's state,
    /// then (over an updating input) each group's row count and (with a TTL) when it was
    /// last reached.
    fn snapshot_state(&mut self, max_parallelism: usize) -> Result<OperatorState> {
        self.drop_emptied();
        let mut state = OperatorState::default();
        let n = self.accumulators.len();
        if n == 0 {
            return Ok(state);
        }
        let mut states: Vec<Vec<ArrayRef>> = Vec::with_capacity(self.aggregates.len());
        for a in 0..self.aggregates.len() {
            // `state` consumes an accumulator's state: collect it, then rebuild below.
            let mut per_field: Vec<Vec<ScalarValue>> = Vec::new();
            for g in 0..n {
                let st = self.accumulators[g][a].state().map_err(df_err)?;
                per_field.resize_with(st.len(), || Vec::with_capacity(n));
                for (j, v) in st.into_iter().enumerate() {
                    per_field[j].push(v);
                }
            }
            states.push(
                per_field
                    .into_iter()
                    .map(|vals| ScalarValue::iter_to_array(vals).map_err(df_err))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        for g in 0..n {
            self.accumulators[g] = self.accumulators_from(&states, g)?;
        }
        let mut table = TableWriter::keyed(Some(&self.converter), self.group_keys.iter(), n)?
            .accumulator_columns(&states);
        if self.retracting.is_some() {
            table = table.int64("rows", self.rows.clone());
        }
        if self.ttl.is_some() {
            table = table.int64("last", self.last.clone());
        }
        table.finish(GROUPS_TABLE, max_parallelism, &mut state)?;
        Ok(state)
    }

    fn restore_state(&mut self, state: &RestoredState) -> Result<()> {
        let counts = self.state_widths()?;
        let keys = self.key_indices.len();
        let width = table_width(keys, 0, &counts) + usize::from(self.retracting.is_some());
        for batch in state.table(GROUPS_TABLE) {
            // A checkpoint taken with a TTL has a `last` column at the end.
            let columns = match batch.num_columns() == width + 1 {
                true => width + 1,
                false => width,
            };
            let mut r = TableReader::new(
                batch,
                "aggregate",
                Some(&self.converter),
                keys,
                Some(columns),
            )?;
            let states = r.accumulators(&counts)?;
            let rows = match self.retracting {
                Some(_) => Some(r.int64()?),
                None => None,
            };
            let last = match r.remaining() {
                0 => None,
                _ => Some(r.int64()?),
            };
            let keys = r.keys().expect("invariant: read with a converter");
            let ends = self.window_ends(keys.iter())?;
            self.ends.extend(ends);
            for (i, row) in keys.iter().enumerate() {
                let accs = self.accumulators_from(&states, i)?;
                let g = self.accumulators.len() as u32;
                self.accumulators.push(accs);
                self.groups.insert(row.as_ref().into(), g);
                self.group_keys.push(row);
                if let Some(rows) = rows {
                    self.rows.push(rows.value(i));
                }
                if self.ttl.is_some() {
                    // Without a recorded time (taken without a TTL): from the first sweep.
                    self.last.push(last.map_or(UNKNOWN_WRITE, |l| l.value(i)));
                }
            }
        }
        Ok(())
    }

    /// The current result of group `g`.
    fn result(&mut self, g: u32) -> Result<Vec<ScalarValue>> {
        self.accumulators[g as usize]
            .iter_mut()
            .map(|a| a.evaluate().map_err(df_err))
            .collect()
    }
}
/// The keyed state table of the running aggregate.
const GROUPS_TABLE: &str = "groups";

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("aggregate computation failed").with_source(e)
}

#[async_trait]
impl Operator for AggregateOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        self.snapshot_state(ctx.max_parallelism)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        self.restore_state(&state)
    }

    async fn on_watermark(
        &mut self,
        watermark: sluice_types::Watermark,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<Option<sluice_types::Watermark>> {
        if self.fire_at.is_some()
            && let Some(t) = watermark.event_time()
            && t > self.watermark
        {
            self.watermark = t;
            self.fire(t, out).await?;
        }
        if let (Some(ttl), Some(t)) = (self.ttl, watermark.event_time())
            && self.sweeps.due(t, ttl.ms())
        {
            self.expire(ttl, t);
        }
        Ok(Some(watermark))
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        // A window aggregate of changes: a change for a window the watermark passed is
        // late (the window fired), and dropped.
        let window_end = |batch: &Batch, at: usize| -> Result<TimestampMillisecondArray> {
            Ok(batch
                .data
                .column(self.key_indices[at])
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(|| SluiceError::internal("a window end is a TIMESTAMP(3)"))?
                .clone())
        };
        let batch = match self.fire_at {
            Some(at) if self.watermark > i64::MIN => {
                let ends = window_end(&batch, at)?;
                let on_time: arrow::array::BooleanArray = ends
                    .iter()
                    .map(|e| Some(e.is_some_and(|e| e > self.watermark)))
                    .collect();
                match on_time.true_count() {
                    0 => return Ok(()),
                    n if n == batch.num_rows() => batch,
                    _ => {
                        let data = arrow::compute::filter_record_batch(&batch.data, &on_time)?;
                        batch.with_data(data)
                    }
                }
            }
            _ => batch,
        };
        // Each new group's window end, read off the rows.
        let ends = match self.fire_at {
            Some(at) => Some(window_end(&batch, at)?),
            None => None,
        };
        let n = batch.num_rows();
        let key_cols: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| Arc::clone(batch.data.column(i)))
            .collect();
        let rows = self.converter.convert_columns(&key_cols)?;
        let ts = batch.timestamps();
        let kinds = batch.row_kinds();

        // Per row its bucket (touched-group slot, then addition or retraction); the
        // touched groups in first-seen order with their results before this batch.
        let mut bucket = Vec::with_capacity(n);
        let mut slot_of_group: HashMap<u32, usize, RandomState> =
            HashMap::with_hasher(RandomState::default());
        let mut touched: Vec<Touched> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let (g, new) = match self.groups.get(row.as_ref()) {
                Some(&g) => (g, false),
                None => {
                    let g = self.accumulators.len() as u32;
                    let accs = self.new_accumulators()?;
                    self.accumulators.push(accs);
                    self.groups.insert(row.as_ref().into(), g);
                    self.group_keys.push(row);
                    if self.ttl.is_some() {
                        self.last.push(i64::MIN);
                    }
                    if self.retracting.is_some() {
                        self.rows.push(0);
                    }
                    if let Some(ends) = &ends {
                        self.ends.push(ends.value(i));
                    }
                    (g, true)
                }
            };
            if self.ttl.is_some() {
                let l = &mut self.last[g as usize];
                // Restored without a time: the first row sets it.
                *l = match *l {
                    UNKNOWN_WRITE => ts.value(i),
                    l => l.max(ts.value(i)),
                };
            }
            let slot = match slot_of_group.get(&g) {
                Some(&s) => s,
                None => {
                    let had = match self.retracting {
                        Some(_) => self.rows[g as usize] > 0,
                        None => !new,
                    };
                    // A window of changes emits when it fires, not as it changes.
                    let before = match had && self.fire_at.is_none() {
                        true => Some(self.result(g)?),
                        false => None,
                    };
                    touched.push(Touched {
                        group: g,
                        adds: 0,
                        retracts: 0,
                        max_ts: i64::MIN,
                        before,
                    });
                    slot_of_group.insert(g, touched.len() - 1);
                    touched.len() - 1
                }
            };
            let t = &mut touched[slot];
            let retract = kinds
                .is_some_and(|k| !RowKind::from_code(k.value(i)).is_none_or(RowKind::is_addition));
            match retract {
                true => t.retracts += 1,
                false => t.adds += 1,
            }
            t.max_ts = t.max_ts.max(ts.value(i));
            bucket.push((slot * 2 + usize::from(retract)) as u32);
        }

        // Counting sort of rows by bucket, then one take of the arguments.
        let mut offsets = Vec::with_capacity(touched.len() * 2 + 1);
        let mut acc = 0u32;
        for t in &touched {
            offsets.push(acc);
            acc += t.adds;
            offsets.push(acc);
            acc += t.retracts;
        }
        offsets.push(acc);
        let mut cursor = offsets.clone();
        let mut order = vec![0u32; n];
        for (row, &b) in bucket.iter().enumerate() {
            order[cursor[b as usize] as usize] = row as u32;
            cursor[b as usize] += 1;
        }
        let order = UInt32Array::from(order);

        for (a, agg) in self.aggregates.iter().enumerate() {
            let sorted: Vec<ArrayRef> = agg
                .args
                .iter()
                .map(|e| evaluate(e, &batch).and_then(|v| Ok(take(&v, &order, None)?)))
                .collect::<Result<_>>()?;
            for (slot, t) in touched.iter().enumerate() {
                let accumulator = &mut self.accumulators[t.group as usize][a];
                let slices = |start: u32, len: u32| -> Vec<ArrayRef> {
                    sorted
                        .iter()
                        .map(|c| c.slice(start as usize, len as usize))
                        .collect()
                };
                if t.adds > 0 {
                    accumulator
                        .update_batch(&slices(offsets[slot * 2], t.adds))
                        .map_err(df_err)?;
                }
                if t.retracts > 0 {
                    accumulator
                        .retract_batch(&slices(offsets[slot * 2 + 1], t.retracts))
                        .map_err(df_err)?;
                }
            }
        }

        // The changes: per touched group, what its result was and what it is now.
        let mut changes: Vec<(u32, RowKind, i64)> = Vec::with_capacity(touched.len());
        let mut values: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(touched.len()); self.aggregates.len()];
        let mut push = |g: u32, kind: RowKind, ts: i64, row: Vec<ScalarValue>| {
            changes.push((g, kind, ts));
            for (column, v) in values.iter_mut().zip(row) {
                column.push(v);
            }
        };
        for t in touched {
            let g = t.group;
            if self.fire_at.is_some() {
                // Its rows are counted; its result waits for the window to end.
                if let Some(r) = self.rows.get_mut(g as usize) {
                    *r += i64::from(t.adds) - i64::from(t.retracts);
                }
                continue;
            }
            let empty = match self.retracting {
                Some(_) => {
                    let r = &mut self.rows[g as usize];
                    *r += i64::from(t.adds) - i64::from(t.retracts);
                    *r <= 0
                }
                None => false,
            };
            if empty {
                // Every row of the group was taken back: it goes, with fresh (exact)
                // accumulators should it come back.
                if let Some(before) = t.before {
                    push(g, RowKind::Delete, t.max_ts, before);
                }
                self.rows[g as usize] = 0;
                self.accumulators[g as usize] = self.new_accumulators()?;
                self.emptied += 1;
                continue;
            }
            let now = self.result(g)?;
            match t.before {
                None => push(g, RowKind::Insert, t.max_ts, now),
                Some(before) if before != now => {
                    if !self.upsert {
                        push(g, RowKind::UpdateBefore, t.max_ts, before);
                    }
                    push(g, RowKind::UpdateAfter, t.max_ts, now);
                }
                Some(_) => {}
            }
        }
        if self.emptied > 1024 && self.emptied * 2 > self.accumulators.len() {
            self.drop_emptied();
        }
        if changes.is_empty() {
            return Ok(());
        }

        let mut columns = self.converter.convert_rows(
            changes
                .iter()
                .map(|&(g, _, _)| self.group_keys.row(g as usize)),
        )?;
        for (a, column) in values.into_iter().enumerate() {
            let field = self.schema.field(self.key_indices.len() + a);
            let array = ScalarValue::iter_to_array(column).map_err(df_err)?;
            // A sliding accumulator may answer in a wider type than the planned field.
            columns.push(arrow::compute::cast(&array, field.data_type())?);
        }
        columns.push(Arc::new(Int8Array::from_iter_values(
            changes.iter().map(|c| c.1.code()),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            changes.iter().map(|c| c.2),
        )));
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        out.collect(batch.with_data(data)).await
    }
}

impl AggregateOperator {
    /// The registered constructor of `aggregate` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let input = &crate::operators::single_input(inputs)?;
        match kind {
            sluice_plan::NodeKind::Aggregate {
                keys,
                aggregates,
                ttl_ms,
                upsert,
            } => Self::prepare_mode(keys, aggregates, *ttl_ms, None, *upsert, input),
            sluice_plan::NodeKind::ChangelogWindowAggregate {
                keys,
                aggregates,
                window_end,
            } => Self::prepare_windowed(keys, aggregates, window_end, input),
            _ => Err(crate::operators::wrong_node(kind, "aggregate")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{avg, count, max, min, sum};
    use sluice_testkit::{assert_pretty, batch_from_pretty};

    use crate::operators::test_util::materialize;

    #[tokio::test]
    async fn running_aggregates_survive_a_checkpoint_and_a_change_of_parallelism() {
        use crate::operators::test_util::kv_batch;
        use crate::state::{decode_table, encode_table, key_groups, owned_rows};
        let batches: Vec<Batch> = (0..4)
            .map(|b| kv_batch(&(0..30).map(|i| (i % 11, b * 30 + i, i)).collect::<Vec<_>>()))
            .collect();
        let schema = batches[0].data.schema();
        let make = || {
            let p = AggregateOperator::prepare(
                &["k".into()],
                &[
                    count(col("v")).alias("n"),
                    sum(col("v")).alias("s"),
                    avg(col("v")).alias("m"),
                ],
                &schema,
            )
            .unwrap();
            (p.factory)(&sluice_types::TaskInfo::for_test("agg")).unwrap()
        };
        let mut whole = crate::operator::VecCollector::default();
        let mut op = make();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        for b in &batches {
            op.process_batch(b.clone(), &mut ctx, &mut whole)
                .await
                .unwrap();
        }
        let expected = materialize(&whole.batches);

        let mut out = crate::operator::VecCollector::default();
        let mut op = make();
        for b in &batches[..2] {
            op.process_batch(b.clone(), &mut ctx, &mut out)
                .await
                .unwrap();
        }
        let barrier = sluice_types::CheckpointBarrier {
            epoch: 1,
            triggered_at_us: 0,
            kind: sluice_types::CheckpointKind::Checkpoint,
            then_stop: false,
        };
        let state = op.snapshot(&barrier, &mut ctx).await.unwrap();
        // The snapshot left the operator intact: it goes on with the same values.
        let mut cont = crate::operator::VecCollector::default();
        for b in &batches[2..] {
            op.process_batch(b.clone(), &mut ctx, &mut cont)
                .await
                .unwrap();
        }
        let mut both = out.batches.clone();
        both.extend(cont.batches);
        assert_eq!(materialize(&both), expected);

        let table = decode_table(&encode_table(&state.keyed["groups"]).unwrap()).unwrap();
        for p in [1, 2, 3] {
            let mut got = out.batches.clone();
            for s in 0..p {
                let mut restored = RestoredState::default();
                for b in &table {
                    if let Some(r) = owned_rows(b, s, p, 128).unwrap() {
                        restored.keyed.entry("groups".into()).or_default().push(r);
                    }
                }
                let mut op = make();
                op.restore(restored, &mut ctx).await.unwrap();
                let mut o = crate::operator::VecCollector::default();
                for b in &batches[2..] {
                    let g = key_groups(&[Arc::clone(b.data.column(0))], b.num_rows(), 128).unwrap();
                    let g = g.as_any().downcast_ref::<UInt32Array>().unwrap();
                    let mask: arrow::array::BooleanArray = g
                        .values()
                        .iter()
                        .map(|&g| {
                            Some(crate::partition::subtask_for_key_group(g as usize, 128, p) == s)
                        })
                        .collect();
                    let rows = arrow::compute::filter_record_batch(&b.data, &mask).unwrap();
                    op.process_batch(b.with_data(rows), &mut ctx, &mut o)
                        .await
                        .unwrap();
                }
                got.extend(o.batches);
            }
            assert_eq!(materialize(&got), expected, "parallelism {p}");
        }
    }

    #[tokio::test]
    async fn emits_updated_values_for_touched_keys() {
        let b1 = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | 1       | 1             |
            | b      | 10      | 2             |
            | a      | 3       | 3             |",
        );
        let b2 = batch_from_pretty(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | 5       | 4             |
            | c      |         | 5             |",
        );
        let schema = b1.data.schema();
        let p = AggregateOperator::prepare(
            &["k".into()],
            &[
                count(col("v")).alias("n"),
                sum(col("v")).alias("total"),
                min(col("v")).alias("lo"),
                max(col("v")).alias("hi"),
                avg(col("v")).alias("mean"),
            ],
            &schema,
        )
        .unwrap();
        let out = crate::operators::run_prepared(&p, vec![b1, b2])
            .await
            .unwrap();
        assert_pretty(
            &out,
            "
            +---+---+-------+----+----+------+----------+-------------------------+
            | k | n | total | lo | hi | mean | _rowkind | _timestamp              |
            +---+---+-------+----+----+------+----------+-------------------------+
            | a | 2 | 4     | 1  | 3  | 2.0  | 0        | 1970-01-01T00:00:00.003 |
            | b | 1 | 10    | 10 | 10 | 10.0 | 0        | 1970-01-01T00:00:00.002 |
            | a | 2 | 4     | 1  | 3  | 2.0  | 1        | 1970-01-01T00:00:00.004 |
            | a | 3 | 9     | 1  | 5  | 3.0  | 2        | 1970-01-01T00:00:00.004 |
            | c | 0 |       |    |    |      | 0        | 1970-01-01T00:00:00.005 |
            +---+---+-------+----+----+------+----------+-------------------------+",
        );
    }

    #[test]
    fn unknown_key_is_a_clear_error() {
        let b = batch_from_pretty(
            "
            | k:Utf8 | _timestamp:Ts |
            | a      | 1             |",
        );
        let e = AggregateOperator::prepare(&["x".into()], &[], &b.data.schema())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("key column `x` does not exist; columns are: k"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_key_idle_past_its_ttl_is_forgotten_and_starts_over() {
        use crate::operators::test_util::kv_batch;
        let first = kv_batch(&[(1, 10, 10), (2, 20, 150)]);
        let schema = first.data.schema();
        let p = AggregateOperator::prepare_with_ttl(
            &["k".into()],
            &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
            Some(100),
            &schema,
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("agg")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = crate::operator::VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        let wm = |t| sluice_types::Watermark::EventTime(t);
        op.on_watermark(wm(105), &mut ctx, &mut out).await.unwrap();
        // Key 1 reached again at 106: still remembered, its count goes on.
        op.process_batch(kv_batch(&[(1, 1, 106)]), &mut ctx, &mut out)
            .await
            .unwrap();
        // Through a checkpoint, then past key 1's TTL (106 + 100 < 300) but not key 2's.
        let state = op
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("agg")).unwrap();
        op.restore(
            crate::operators::test_util::restored(&state, 0, 1),
            &mut ctx,
        )
        .await
        .unwrap();
        op.on_watermark(wm(210), &mut ctx, &mut out).await.unwrap();
        op.process_batch(kv_batch(&[(1, 5, 300), (2, 5, 300)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(
            materialize(&out.batches),
            ["k1,1,5", "k1,2,11", "k2,2,25"],
            "key 1 started over (+I; its expiry took nothing back downstream, as in Flink); key 2 kept counting"
        );
    }

    #[tokio::test]
    async fn over_an_updating_input_retractions_leave_their_groups_and_an_emptied_group_is_deleted()
    {
        use crate::operators::test_util::{change_batch, changes};
        use sluice_types::RowKind::{
            Delete as D, Insert as I, UpdateAfter as UA, UpdateBefore as UB,
        };
        let schema = change_batch(["k", "v"], &[]).data.schema();
        let p = AggregateOperator::prepare(
            &["k".into()],
            &[
                count(col("v")).alias("n"),
                sum(col("v")).alias("s"),
                max(col("v")).alias("hi"),
                min(col("v")).alias("lo"),
            ],
            &schema,
        )
        .unwrap();
        let feed = [
            vec![(I, 1, 1), (I, 1, 5), (I, 2, 2)],
            vec![(UB, 1, 5), (UA, 1, 3), (D, 2, 2)],
            vec![(D, 1, 1), (D, 1, 3)],
            vec![(I, 1, 7)],
        ];
        // Through a checkpoint before the third batch: counts and the min/max multisets come back.
        let out = crate::operators::test_util::feed_changes_through_restore(&p, &feed, 2).await;
        assert_eq!(
            changes(&out),
            [
                "+I 1,2,6,5,1",
                "+I 2,1,2,2,2",
                "-U 1,2,6,5,1",
                "+U 1,2,4,3,1",
                "-D 2,1,2,2,2",
                "-D 1,2,4,3,1",
                "+I 1,1,7,7,7",
            ]
        );
        assert_eq!(materialize(&out), ["1,1,7,7,7"]);
    }

    /// Windows of changes: nothing comes out as they change; each window's result comes
    /// out once, as an insert, when the watermark passes its end (through a checkpoint
    /// taken before), a window emptied by deletes emits nothing, and a change for a window
    /// already fired is dropped.
    #[tokio::test]
    async fn windows_of_changes_emit_once_when_the_watermark_passes_their_end() {
        use crate::operator::VecCollector;
        use crate::operators::test_util::{barrier, restored};
        use arrow::array::{Int64Array, TimestampMillisecondArray};
        use arrow::datatypes::Field;
        use sluice_types::RowKind::{
            Delete as D, Insert as I, UpdateAfter as UA, UpdateBefore as UB,
        };
        use sluice_types::{IngestTime, Watermark};
        let changes = |rows: &[(RowKind, i64, i64)]| -> Batch {
            // (kind, window end, value)
            let user = RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new(
                        "window_end",
                        DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                        false,
                    ),
                    Field::new("v", DataType::Int64, false),
                ])),
                vec![
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.iter().map(|r| r.1),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                ],
            )
            .unwrap();
            Batch::from_changes(
                &user,
                Int8Array::from_iter_values(rows.iter().map(|r| r.0.code())),
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.1 - 1)),
                IngestTime::at(0),
            )
            .unwrap()
        };
        let schema = changes(&[]).data.schema();
        let p = AggregateOperator::prepare_windowed(
            &["window_end".into()],
            &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
            "window_end",
            &schema,
        )
        .unwrap();
        let names: Vec<_> = p
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            ["window_end", "n", "s", "_timestamp"],
            "inserts only"
        );
        let task = sluice_types::TaskInfo::for_test("w");
        let mut op = (p.factory)(&task).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(
            changes(&[(I, 10, 1), (I, 10, 5), (I, 20, 2), (I, 30, 9)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        op.process_batch(
            changes(&[(UB, 10, 5), (UA, 10, 3), (D, 30, 9)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        assert!(out.batches.is_empty(), "nothing before a window ends");
        let state = op.snapshot(&barrier(), &mut ctx).await.unwrap();
        let mut op = (p.factory)(&task).unwrap();
        op.restore(restored(&state, 0, 1), &mut ctx).await.unwrap();
        let fired = |out: &VecCollector| -> Vec<String> {
            out.batches
                .iter()
                .flat_map(|b| {
                    let e = b
                        .data
                        .column(0)
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .unwrap()
                        .clone();
                    let n = b
                        .data
                        .column(1)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .clone();
                    let s = b
                        .data
                        .column(2)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .clone();
                    (0..b.num_rows())
                        .map(move |i| format!("{} {} {}", e.value(i), n.value(i), s.value(i)))
                })
                .collect()
        };
        op.on_watermark(Watermark::EventTime(10), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(fired(&out), ["10 2 4"]);
        // Late for window 10: dropped; window 20 still takes changes.
        op.process_batch(changes(&[(D, 10, 1), (I, 20, 4)]), &mut ctx, &mut out)
            .await
            .unwrap();
        op.on_watermark(Watermark::EventTime(35), &mut ctx, &mut out)
            .await
            .unwrap();
        // Window 30 lost its only row: nothing.
        assert_eq!(fired(&out), ["10 2 4", "20 2 6"]);
    }
}
