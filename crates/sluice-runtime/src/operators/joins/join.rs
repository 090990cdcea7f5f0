//! Equi-join of two append-only streams: regular inner joins, and interval and window
//! joins (inner or outer). Joins that take rows back (of updating inputs, or regular
//! outer joins) are [`super::changelog`].
//!
//! ```text
//!  left batch ──probe right buffer (same key, time condition)──> joined rows
//!             └─buffer (index by key)
//!  right batch ─probe left buffer──> joined rows
//!             └─buffer
//!  watermark w: a buffered batch whose newest row is older than w - retain is freed
//!               (no future row can join it); index entries to it are dropped lazily
//! ```
//!
//! Both inputs arrive hash-partitioned by their key columns, so a key's rows of both sides
//! meet in one subtask. A joined row carries the left columns, then the right ones; its
//! event time is the later of the two, so it is never late when neither input row was.
//! Buffered rows are the state: checkpointed by key group, restored into any parallelism.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use sluice_plan::NodeKind;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, TIMESTAMP_FIELD, Watermark};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::{OperatorFactory, PreparedOperator};
use crate::state::{OperatorState, RestoredState, TableWriter};

/// A buffered row: (batch, row, event time).
type RowRef = (u32, u32, i64);

/// One input's buffered rows.
struct Side {
    /// Column indices of the key in this side's batches.
    keys: Vec<usize>,
    /// Keep a row until the watermark passes its time plus this; `None`: forever.
    retain: Option<i64>,
    /// Or until the watermark passes this column's value (`r.time <= l.expires`).
    until: Option<usize>,
    /// Buffered batches (user columns and `_timestamp`); `None` once freed.
    batches: Vec<Option<RecordBatch>>,
    /// Newest event time in each buffered batch.
    newest: Vec<i64>,
    /// Rows by encoded key.
    index: HashMap<Box<[u8]>, Vec<RowRef>>,
    /// Batches freed since the index was last swept.
    freed_since_sweep: usize,
    /// Ids of the batches still buffered (the expiry scan visits only these).
    live: Vec<u32>,
    /// An outer side: per buffered batch, per row, whether it matched (or was already
    /// emitted alone), and how many rows of the batch are still pending.
    outer: Option<Vec<(Vec<bool>, usize)>>,
}

impl Side {
    fn new(keys: Vec<usize>, retain: Option<i64>) -> Self {
        Self {
            keys,
            retain,
            batches: Vec::new(),
            newest: Vec::new(),
            index: HashMap::new(),
            freed_since_sweep: 0,
            live: Vec::new(),
            outer: None,
            until: None,
        }
    }

    /// Marks a buffered row of an outer side as matched.
    fn mark(&mut self, b: u32, r: u32) {
        if let Some(flags) = &mut self.outer {
            let (rows, pending) = &mut flags[b as usize];
            if !rows[r as usize] {
                rows[r as usize] = true;
                *pending -= 1;
            }
        }
    }

    fn insert(
        &mut self,
        data: RecordBatch,
        keys: &arrow::row::Rows,
        ts: &TimestampMillisecondArray,
    ) -> Result<()> {
        let b = self.batches.len() as u32;
        let mut newest = i64::MIN;
        // With an `until` column, a batch lives as long as its latest value there.
        let until = match self.until {
            Some(c) => Some(
                data.column(c)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(|| {
                        SluiceError::internal("the join's until column is not a timestamp")
                    })?
                    .clone(),
            ),
            None => None,
        };
        for r in 0..data.num_rows() {
            let t = ts.value(r);
            newest = match &until {
                Some(u) if u.is_valid(r) => newest.max(u.value(r)),
                // A NULL bound never frees the row.
                Some(_) => i64::MAX,
                None => newest.max(t),
            };
            let key = keys.row(r);
            match self.index.get_mut(key.as_ref()) {
                Some(rows) => rows.push((b, r as u32, t)),
                None => {
                    self.index
                        .insert(key.as_ref().into(), vec![(b, r as u32, t)]);
                }
            }
        }
        if let Some(flags) = &mut self.outer {
            flags.push((vec![false; data.num_rows()], data.num_rows()));
        }
        self.batches.push(Some(data));
        self.newest.push(newest);
        self.live.push(b);
        Ok(())
    }

    /// Frees batches no future row can join; sweeps the index when many were freed.
    fn expire(&mut self, watermark: i64) {
        let retain = match (self.until, self.retain) {
            (Some(_), _) => 0,
            (None, Some(r)) => r,
            (None, None) => return,
        };
        let (batches, newest) = (&mut self.batches, &self.newest);
        let mut freed = 0;
        self.live.retain(|&b| {
            let keep = newest[b as usize].saturating_add(retain) >= watermark;
            if !keep {
                batches[b as usize] = None;
                freed += 1;
            }
            keep
        });
        self.freed_since_sweep += freed;
        if self.freed_since_sweep > 64 || (self.live.is_empty() && !self.index.is_empty()) {
            let batches = &self.batches;
            self.index.retain(|_, rows| {
                rows.retain(|(b, _, _)| batches[*b as usize].is_some());
                !rows.is_empty()
            });
            self.freed_since_sweep = 0;
            if self.live.is_empty() {
                self.batches.clear();
                self.newest.clear();
            }
        }
    }
}

/// The join operator of one subtask.
pub struct JoinOperator {
    sides: [Side; 2],
    /// Which sides keep their unmatched rows (left, right).
    outer: (bool, bool),
    interval: Option<(i64, i64)>,
    converter: RowConverter,
    schema: SchemaRef,
    /// Number of user columns of the left input.
    left_width: usize,
    right_width: usize,
}

fn key_indices(schema: &SchemaRef, keys: &[String], side: &str) -> Result<Vec<usize>> {
    keys.iter()
        .map(|k| {
            schema.index_of(k).map_err(|_| {
                SluiceError::user(format!(
                    "join key `{k}` is not a column of the {side} input"
                ))
            })
        })
        .collect()
}

impl JoinOperator {
    /// Checks a join node against its two input schemas and builds its factory.
    pub fn prepare(kind: &NodeKind, inputs: &[&SchemaRef]) -> Result<PreparedOperator> {
        let NodeKind::Join {
            left_keys,
            right_keys,
            interval,
            left_retain_ms,
            right_retain_ms,
            outer,
            until,
        } = kind
        else {
            return Err(SluiceError::internal("not a join node"));
        };
        let [left, right] = inputs else {
            return Err(SluiceError::user(format!(
                "a join has two inputs, this one has {}",
                inputs.len()
            )));
        };
        if left_keys.is_empty() || left_keys.len() != right_keys.len() {
            return Err(SluiceError::user(
                "a join needs pairs of equal key columns (left = right)",
            ));
        }
        let lk = key_indices(left, left_keys, "left")?;
        let rk = key_indices(right, right_keys, "right")?;
        let mut sort_fields = Vec::new();
        for (&l, &r) in lk.iter().zip(&rk) {
            let (lt, rt) = (left.field(l).data_type(), right.field(r).data_type());
            if lt != rt {
                return Err(SluiceError::user(format!(
                    "join keys `{}` ({lt}) and `{}` ({rt}) have different types; cast one",
                    left.field(l).name(),
                    right.field(r).name()
                )));
            }
            sort_fields.push(SortField::new(lt.clone()));
        }
        RowConverter::new(sort_fields.clone())
            .map_err(|e| SluiceError::user("unsupported join key type").with_source(e))?;
        if let Some((lo, hi)) = interval
            && lo > hi
        {
            return Err(SluiceError::user(format!(
                "the join's time bounds are empty: lower {lo} ms > upper {hi} ms"
            )));
        }
        let user = |s: &SchemaRef| -> Vec<Arc<Field>> {
            s.fields()
                .iter()
                .filter(|f| f.name() != TIMESTAMP_FIELD)
                .cloned()
                .collect()
        };
        let nullable = |fs: Vec<Arc<Field>>, yes: bool| -> Vec<Arc<Field>> {
            fs.into_iter()
                .map(|f| match yes {
                    true => Arc::new(f.as_ref().clone().with_nullable(true)),
                    false => f,
                })
                .collect()
        };
        // A side's columns are NULL in the rows the other side keeps unmatched.
        let mut fields = nullable(user(left), outer.1);
        let right_user = nullable(user(right), outer.0);
        for f in &right_user {
            if fields.iter().any(|l| l.name() == f.name()) {
                return Err(SluiceError::user(format!(
                    "both join inputs have a column `{}`; rename one",
                    f.name()
                )));
            }
        }
        let left_width = fields.len();
        let right_width = right_user.len();
        fields.extend(right_user);
        fields.push(Arc::new(sluice_types::timestamp_field()));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let interval = *interval;
        let outer = *outer;
        if (outer.0 || outer.1) && interval.is_none() {
            return Err(SluiceError::internal(
                "a regular outer join is a changelog join, not an append-only one",
            ));
        }
        let (lr, rr) = (*left_retain_ms, *right_retain_ms);
        // Per side, its `until` column (a timestamp), if any.
        let until_index =
            |s: &SchemaRef, c: &Option<String>, what: &str| -> Result<Option<usize>> {
                let Some(c) = c else { return Ok(None) };
                let i = s.index_of(c).map_err(|_| {
                    SluiceError::user(format!("the {what} input has no column `{c}`"))
                })?;
                match s.field(i).data_type() {
                    arrow::datatypes::DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        _,
                    ) => Ok(Some(i)),
                    // Not a millisecond timestamp: the condition still filters, frees nothing.
                    _ => Ok(None),
                }
            };
        let untils = [
            until_index(left, &until.0, "left")?,
            until_index(right, &until.1, "right")?,
        ];
        let out = Arc::clone(&schema);
        let factory: OperatorFactory = Arc::new(move |_task| {
            let mut sides = [Side::new(lk.clone(), lr), Side::new(rk.clone(), rr)];
            for (side, u) in sides.iter_mut().zip(untils) {
                side.until = u;
            }
            for (side, keep) in sides.iter_mut().zip([outer.0, outer.1]) {
                if keep {
                    side.outer = Some(Vec::new());
                }
            }
            Ok(Box::new(JoinOperator {
                sides,
                outer,
                interval,
                converter: RowConverter::new(sort_fields.clone())
                    .map_err(|e| SluiceError::internal("row converter").with_source(e))?,
                schema: Arc::clone(&out),
                left_width,
                right_width,
            }) as Box<dyn Operator>)
        });
        Ok(PreparedOperator {
            output_schema: schema,
            factory,
        })
    }

    fn encode(&self, side: usize, data: &RecordBatch) -> Result<arrow::row::Rows> {
        let cols: Vec<ArrayRef> = self.sides[side]
            .keys
            .iter()
            .map(|&i| Arc::clone(data.column(i)))
            .collect();
        self.converter
            .convert_columns(&cols)
            .map_err(|e| SluiceError::internal("encoding join keys").with_source(e))
    }

    fn matches(&self, side: usize, this_ts: i64, other_ts: i64) -> bool {
        let Some((lo, hi)) = self.interval else {
            return true;
        };
        // right time - left time
        let d = if side == 0 {
            other_ts - this_ts
        } else {
            this_ts - other_ts
        };
        lo <= d && d <= hi
    }

    /// Joins rows of `batch` from `side` with the other side's buffer, from `cursor`
    /// (row, and match of that row) on, until `limit` pairs or the batch's end; returns
    /// them as a batch and moves the cursor. Rows of this side that matched are added to
    /// `matched` (outer sides). A hot key's matches thus leave in bounded batches, with a
    /// wait (for the downstream channel) between them.
    fn join_chunk(
        &mut self,
        side: usize,
        batch: &Batch,
        keys: &arrow::row::Rows,
        cursor: &mut (usize, usize),
        limit: usize,
        matched: &mut Vec<u32>,
    ) -> Result<Option<Batch>> {
        let data = &batch.data;
        let ts = batch.timestamps();
        let other = &self.sides[1 - side];
        let mut this_rows: Vec<u32> = Vec::new();
        let mut other_rows: Vec<(u32, u32)> = Vec::new();
        let mut out_ts: Vec<i64> = Vec::new();
        if other.index.is_empty() {
            cursor.0 = data.num_rows();
        }
        while cursor.0 < data.num_rows() && this_rows.len() < limit {
            let r = cursor.0;
            let Some(entries) = other.index.get(keys.row(r).as_ref()) else {
                *cursor = (r + 1, 0);
                continue;
            };
            let t = ts.value(r);
            let mut e = cursor.1;
            while e < entries.len() && this_rows.len() < limit {
                let (b, row, ot) = entries[e];
                if other.batches[b as usize].is_some() && self.matches(side, t, ot) {
                    this_rows.push(r as u32);
                    other_rows.push((b, row));
                    out_ts.push(t.max(ot));
                }
                e += 1;
            }
            *cursor = match e < entries.len() {
                true => (r, e),
                false => (r + 1, 0),
            };
        }
        for &(b, r) in &other_rows {
            self.sides[1 - side].mark(b, r);
        }
        if self.sides[side].outer.is_some() {
            matched.extend(&this_rows);
        }
        if this_rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            self.build(side, data, this_rows, other_rows, out_ts, batch)?,
        ))
    }

    /// Buffers `batch` of `side` (after it was joined), marking its rows that matched.
    fn buffer(
        &mut self,
        side: usize,
        batch: &Batch,
        keys: &arrow::row::Rows,
        matched: Vec<u32>,
    ) -> Result<()> {
        let id = self.sides[side].batches.len() as u32;
        self.sides[side].insert(batch.data.clone(), keys, batch.timestamps())?;
        for r in matched {
            self.sides[side].mark(id, r);
        }
        Ok(())
    }

    /// Emits the rows of outer sides that can no longer match (time + retention below
    /// `watermark`; all of them at the end), each once, with NULLs for the other side.
    fn emit_unmatched(&mut self, watermark: i64, out_rows: &mut Vec<RecordBatch>) -> Result<()> {
        for side in 0..2 {
            let s = &mut self.sides[side];
            let Some(flags) = &mut s.outer else { continue };
            let retain = s.retain;
            for &b in &s.live {
                let (rows, pending) = &mut flags[b as usize];
                if *pending == 0 {
                    continue;
                }
                let Some(data) = &s.batches[b as usize] else {
                    continue;
                };
                let ts = data
                    .column(data.num_columns() - 1)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(|| SluiceError::internal("join rows lost their event time"))?;
                let mut pick = Vec::new();
                for (r, done) in rows.iter_mut().enumerate() {
                    let due = watermark == i64::MAX
                        || retain.is_some_and(|k| ts.value(r).saturating_add(k) < watermark);
                    if !*done && due {
                        *done = true;
                        *pending -= 1;
                        pick.push(r as u32);
                    }
                }
                if pick.is_empty() {
                    continue;
                }
                let idx = UInt32Array::from(pick);
                let (w_this, w_other) = match side {
                    0 => (self.left_width, self.right_width),
                    _ => (self.right_width, self.left_width),
                };
                let this: Vec<ArrayRef> = (0..w_this)
                    .map(|c| take(data.column(c), &idx, None))
                    .collect::<std::result::Result<_, _>>()?;
                let n = idx.len();
                let offset = if side == 0 { self.left_width } else { 0 };
                let nulls: Vec<ArrayRef> = (0..w_other)
                    .map(|c| {
                        arrow::array::new_null_array(self.schema.field(offset + c).data_type(), n)
                    })
                    .collect();
                let (mut columns, right) = match side {
                    0 => (this, nulls),
                    _ => (nulls, this),
                };
                columns.extend(right);
                columns.push(take(data.column(data.num_columns() - 1), &idx, None)?);
                out_rows.push(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
            }
        }
        Ok(())
    }

    /// The watermark to forward: held back so that rows still waiting to be emitted
    /// unmatched stay above it.
    fn output_watermark(&self, t: i64) -> Option<i64> {
        if t == i64::MAX {
            return Some(t);
        }
        let mut hold = 0i64;
        for (side, keep) in [self.outer.0, self.outer.1].into_iter().enumerate() {
            if keep {
                hold = hold.max(self.sides[side].retain?);
            }
        }
        match hold {
            0 if !(self.outer.0 || self.outer.1) => Some(t),
            h => Some(t.saturating_sub(h).saturating_sub(1)),
        }
    }

    fn build(
        &self,
        side: usize,
        data: &RecordBatch,
        this_rows: Vec<u32>,
        other_rows: Vec<(u32, u32)>,
        out_ts: Vec<i64>,
        batch: &Batch,
    ) -> Result<Batch> {
        let idx = UInt32Array::from(this_rows);
        let width = |s: usize| {
            if s == 0 {
                self.left_width
            } else {
                self.right_width
            }
        };
        let this_cols: Vec<ArrayRef> = (0..width(side))
            .map(|c| take(data.column(c), &idx, None))
            .collect::<std::result::Result<_, _>>()?;
        // The other side's rows, from the buffered batches they live in.
        let other = &self.sides[1 - side];
        let mut used: HashMap<u32, usize> = HashMap::new();
        let mut sources: Vec<&RecordBatch> = Vec::new();
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(other_rows.len());
        for (b, r) in other_rows {
            let pos = *used.entry(b).or_insert_with(|| {
                sources.push(
                    other.batches[b as usize]
                        .as_ref()
                        .expect("invariant: matched rows live in buffered batches"),
                );
                sources.len() - 1
            });
            picks.push((pos, r as usize));
        }
        let other_cols: Vec<ArrayRef> = (0..width(1 - side))
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    sources.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &picks)
            })
            .collect::<std::result::Result<_, _>>()?;
        let (mut columns, right) = if side == 0 {
            (this_cols, other_cols)
        } else {
            (other_cols, this_cols)
        };
        columns.extend(right);
        columns.push(Arc::new(TimestampMillisecondArray::from(out_ts)));
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(batch.with_data(data))
    }

    fn snapshot_side(
        &self,
        side: usize,
        name: &str,
        state: &mut OperatorState,
        max_p: usize,
    ) -> Result<()> {
        let s = &self.sides[side];
        for (id, b) in s.batches.iter().enumerate() {
            let Some(b) = b else { continue };
            let mut table = TableWriter::rows_of(b, &self.sides[side].keys);
            // An outer side: which rows matched (or were emitted alone) already.
            if let Some(flags) = &s.outer {
                table = table.boolean(MATCHED, flags[id].0.clone());
            }
            table.finish(name, max_p, state)?;
        }
        Ok(())
    }
}

const SIDES: [&str; 2] = ["left", "right"];

/// The column of an outer side's checkpointed rows saying which already matched.
const MATCHED: &str = "__matched";

#[async_trait]
impl Operator for JoinOperator {
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
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = self.encode(input, &batch.data)?;
        let mut cursor = (0, 0);
        let mut matched = Vec::new();
        while cursor.0 < batch.num_rows() {
            let chunk = self.join_chunk(
                input,
                &batch,
                &keys,
                &mut cursor,
                super::MAX_OUTPUT_ROWS,
                &mut matched,
            )?;
            if let Some(b) = chunk {
                out.collect(b).await?;
            }
        }
        self.buffer(input, &batch, &keys, matched)
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        let Some(t) = watermark.event_time() else {
            return Ok(Some(watermark));
        };
        if self.outer.0 || self.outer.1 {
            let mut rows = Vec::new();
            self.emit_unmatched(t, &mut rows)?;
            for data in rows {
                let ingest = sluice_types::IngestTime {
                    min_us: sluice_types::now_micros(),
                    max_us: sluice_types::now_micros(),
                };
                out.collect(Batch::try_new(data, ingest)?).await?;
            }
        }
        for s in &mut self.sides {
            s.expire(t);
        }
        Ok(self.output_watermark(t).map(Watermark::EventTime))
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        for (i, name) in SIDES.iter().enumerate() {
            self.snapshot_side(i, name, &mut state, ctx.max_parallelism)?;
        }
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for (i, name) in SIDES.iter().enumerate() {
            for b in state.table(name) {
                let (b, matched) = match b.schema().fields().last() {
                    Some(f) if f.name() == MATCHED => {
                        let m = b
                            .column(b.num_columns() - 1)
                            .as_any()
                            .downcast_ref::<arrow::array::BooleanArray>()
                            .ok_or_else(|| SluiceError::user("join state: bad matched column"))?
                            .clone();
                        let mut rest = b.clone();
                        rest.remove_column(b.num_columns() - 1);
                        (rest, Some(m))
                    }
                    _ => (b.clone(), None),
                };
                let b = &b;
                let keys = self.encode(i, b)?;
                let ts = b
                    .column(b.num_columns() - 1)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(|| SluiceError::user("join state has no event-time column"))?
                    .clone();
                let id = self.sides[i].batches.len() as u32;
                self.sides[i].insert(b.clone(), &keys, &ts)?;
                if let Some(m) = matched {
                    for r in 0..m.len() {
                        if m.value(r) {
                            self.sides[i].mark(id, r as u32);
                        }
                    }
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
    use arrow::array::Int64Array;
    use sluice_types::TaskInfo;

    fn side(names: [&str; 2], rows: &[(i64, i64, i64)]) -> Batch {
        crate::operators::test_util::int_batch(names, rows)
    }

    /// A join of `k, a` (left) with `rk, b` (right) on `k = rk`.
    fn build_join(kind: impl FnOnce(NodeKind) -> NodeKind) -> PreparedOperator {
        let l = side(["k", "a"], &[]).data.schema();
        let r = side(["rk", "b"], &[]).data.schema();
        let kind = kind(NodeKind::Join {
            left_keys: vec!["k".into()],
            right_keys: vec!["rk".into()],
            interval: None,
            left_retain_ms: None,
            right_retain_ms: None,
            outer: (false, false),
            until: (None, None),
        });
        JoinOperator::prepare(&kind, &[&l, &r]).unwrap()
    }

    fn instance(p: &PreparedOperator) -> Box<dyn Operator> {
        (p.factory)(&TaskInfo::for_test("join")).unwrap()
    }

    fn op(interval: Option<(i64, i64)>, retain: Option<i64>) -> Box<dyn Operator> {
        instance(&build_join(|mut k| {
            if let NodeKind::Join {
                interval: i,
                left_retain_ms,
                right_retain_ms,
                ..
            } = &mut k
            {
                (*i, *left_retain_ms, *right_retain_ms) = (interval, retain, retain);
            }
            k
        }))
    }

    fn rows(out: &VecCollector) -> Vec<(i64, i64, i64, i64, i64)> {
        let mut v = Vec::new();
        for b in &out.batches {
            let c = |i: usize| {
                b.data
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let ts = b.timestamps();
            for r in 0..b.num_rows() {
                v.push((
                    c(0).value(r),
                    c(1).value(r),
                    c(2).value(r),
                    c(3).value(r),
                    ts.value(r),
                ));
            }
        }
        v.sort_unstable();
        v
    }

    #[tokio::test]
    async fn joins_equal_keys_from_either_side_within_the_interval() {
        let mut j = op(Some((-5, 5)), Some(10));
        let schema = side(["k", "a"], &[]).data.schema();
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = VecCollector::default();
        j.process_batch_from(
            0,
            side(["k", "a"], &[(1, 10, 100), (2, 20, 100)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        // right rows: key 1 at 103 (in), key 1 at 110 (out of [-5, 5]), key 3 (no left)
        j.process_batch_from(
            1,
            side(["rk", "b"], &[(1, 7, 103), (1, 8, 110), (3, 9, 100)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        // a later left row joins the buffered right row at 110
        j.process_batch_from(0, side(["k", "a"], &[(1, 11, 106)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(
            rows(&out),
            vec![(1, 10, 1, 7, 103), (1, 11, 1, 7, 106), (1, 11, 1, 8, 110)]
        );
    }

    #[tokio::test]
    async fn a_hot_key_leaves_in_bounded_batches() {
        // 7 buffered left rows and 5 000 right rows of one key: 35 000 pairs, in batches
        // of at most crate::operators::joins::MAX_OUTPUT_ROWS, none lost or repeated, a row's matches split across
        // batches where the limit falls.
        let mut j = op(None, None);
        let schema = side(["k", "a"], &[]).data.schema();
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = VecCollector::default();
        let left: Vec<(i64, i64, i64)> = (0..7).map(|a| (1, a, 100)).collect();
        j.process_batch_from(0, side(["k", "a"], &left), &mut ctx, &mut out)
            .await
            .unwrap();
        let right: Vec<(i64, i64, i64)> = (0..5_000).map(|b| (1, b, 100)).collect();
        j.process_batch_from(1, side(["rk", "b"], &right), &mut ctx, &mut out)
            .await
            .unwrap();
        let sizes: Vec<usize> = out.batches.iter().map(|b| b.num_rows()).collect();
        assert!(
            sizes
                .iter()
                .all(|&n| n <= crate::operators::joins::MAX_OUTPUT_ROWS),
            "{sizes:?}"
        );
        assert_eq!(
            sizes.len(),
            35_000_usize.div_ceil(crate::operators::joins::MAX_OUTPUT_ROWS),
            "{sizes:?}"
        );
        let pairs: std::collections::BTreeSet<(i64, i64)> =
            rows(&out).iter().map(|r| (r.1, r.3)).collect();
        assert_eq!(pairs.len(), 35_000);
        assert_eq!(rows(&out).len(), 35_000);
    }

    #[tokio::test]
    async fn the_watermark_frees_rows_no_future_row_can_join() {
        let mut j = op(None, Some(10));
        let schema = side(["k", "a"], &[]).data.schema();
        let mut ctx = OperatorContext::for_test(schema);
        let mut out = VecCollector::default();
        j.process_batch_from(0, side(["k", "a"], &[(1, 10, 100)]), &mut ctx, &mut out)
            .await
            .unwrap();
        j.on_watermark(Watermark::EventTime(111), &mut ctx, &mut out)
            .await
            .unwrap();
        j.process_batch_from(1, side(["rk", "b"], &[(1, 7, 120)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert!(rows(&out).is_empty(), "the left row expired at 110 < 111");
        // The right row is still buffered: a new left row joins it, and the state
        // survives a snapshot/restore round trip.
        let state = j
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        let mut restored = op(None, Some(10));
        restored
            .restore(
                crate::operators::test_util::restored(&state, 0, 1),
                &mut ctx,
            )
            .await
            .unwrap();
        restored
            .process_batch_from(0, side(["k", "a"], &[(1, 12, 121)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(rows(&out), vec![(1, 12, 1, 7, 121)]);
    }

    fn text_rows(out: &VecCollector) -> Vec<String> {
        use arrow::util::display::array_value_to_string;
        let mut v = Vec::new();
        for b in &out.batches {
            let d = &b.data;
            for r in 0..d.num_rows() {
                let cells: Vec<String> = (0..d.num_columns())
                    .map(|c| array_value_to_string(d.column(c), r).unwrap())
                    .collect();
                v.push(cells.join(","));
            }
        }
        v
    }

    #[tokio::test]
    async fn a_left_outer_interval_join_emits_unmatched_rows_once_they_cannot_match() {
        let p = build_join(|mut k| {
            if let NodeKind::Join {
                interval,
                left_retain_ms,
                right_retain_ms,
                outer,
                ..
            } = &mut k
            {
                (*interval, *left_retain_ms, *right_retain_ms) = (Some((0, 10)), Some(10), Some(0));
                *outer = (true, false);
            }
            k
        });
        assert!(p.output_schema.field(2).is_nullable());
        let l = side(["k", "a"], &[]).data.schema();
        let make = || instance(&p);
        let mut j = make();
        let mut ctx = OperatorContext::for_test(Arc::clone(&l));
        let mut out = VecCollector::default();
        j.process_batch_from(
            0,
            side(["k", "a"], &[(1, 1, 100), (2, 2, 100), (3, 3, 104)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        j.process_batch_from(1, side(["rk", "b"], &[(1, 7, 105)]), &mut ctx, &mut out)
            .await
            .unwrap();
        // Left 2 (time 100) can match until 110; at watermark 110 it still can.
        let wm = j
            .on_watermark(Watermark::EventTime(110), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(
            wm,
            Some(Watermark::EventTime(99)),
            "held back by the retention"
        );
        assert_eq!(text_rows(&out), ["1,1,1,7,1970-01-01T00:00:00.105"]);
        // A checkpoint in between keeps which rows matched.
        let state = j
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        let mut j = make();
        j.restore(
            crate::operators::test_util::restored(&state, 0, 1),
            &mut ctx,
        )
        .await
        .unwrap();
        let mut later = VecCollector::default();
        let wm = j
            .on_watermark(Watermark::EventTime(111), &mut ctx, &mut later)
            .await
            .unwrap();
        assert_eq!(wm, Some(Watermark::EventTime(100)));
        // Left 2 is emitted alone, at its own time, above the watermark forwarded before.
        assert_eq!(text_rows(&later), ["2,2,,,1970-01-01T00:00:00.100"]);
        // The end: left 3 never matched either; left 1 did and is not repeated.
        let mut end = VecCollector::default();
        j.on_watermark(Watermark::MAX, &mut ctx, &mut end)
            .await
            .unwrap();
        assert_eq!(text_rows(&end), ["3,3,,,1970-01-01T00:00:00.104"]);
        let mut none = VecCollector::default();
        j.on_watermark(Watermark::MAX, &mut ctx, &mut none)
            .await
            .unwrap();
        assert!(none.batches.is_empty(), "each unmatched row once");
    }

    #[test]
    fn rows_bounded_by_a_column_are_freed_once_the_watermark_passes_it() {
        use arrow::datatypes::{DataType, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new(
                "expires",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            sluice_types::timestamp_field(),
        ]));
        let left = |rows: &[(i64, Option<i64>, i64)]| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(TimestampMillisecondArray::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.iter().map(|r| r.2),
                    )),
                ],
            )
            .unwrap()
        };
        let mut s = Side::new(vec![0], None);
        s.until = Some(1);
        let conv = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        for rows in [
            vec![(1, Some(150), 100), (2, Some(120), 100)],
            vec![(3, None, 100)],
            vec![(4, Some(300), 200)],
        ] {
            let b = left(&rows);
            let keys = conv.convert_columns(&[Arc::clone(b.column(0))]).unwrap();
            let ts = b
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap()
                .clone();
            s.insert(b, &keys, &ts).unwrap();
        }
        // Without `until` these rows would be kept forever (no retention).
        s.expire(149);
        assert_eq!(s.live.len(), 3, "the first batch's latest bound is 150");
        s.expire(151);
        assert_eq!(s.live, vec![1, 2], "freed once the watermark passed 150");
        s.expire(10_000);
        assert_eq!(s.live, vec![1], "a NULL bound never frees its row");
    }
}
