//! OVER aggregates (SQL `agg(x) OVER (PARTITION BY k ORDER BY ts ROWS|RANGE … PRECEDING)`):
//! every input row comes out once, with the aggregates over the rows of its partition
//! that precede it in event time, within its frame.
//!
//! ```text
//!  rows ──buffer until the watermark passes them──> in event-time order, per partition:
//!        frame history (time, args) ── add the row, take back what left the frame ──>
//!        emit the row + aggregates (RANGE: rows of equal time are peers, same values)
//! ```
//!
//! Rows arriving at or below the watermark are late: counted and dropped (Flink drops
//! them too). Bounded frames use retractable accumulators and keep their frame's rows,
//! which are the state; `UNBOUNDED PRECEDING` keeps only the accumulators.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_expr::{Accumulator, Expr};
use sluice_plan::OverFrame;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::PreparedOperator;
use crate::operators::aggregates::retract::{apply_row, retractable, row_args};
use crate::operators::aggregates::{PlannedAggregate, PlannedAggregates};
use crate::state::ttl::{Sweeps, Ttl};
use crate::state::{OperatorState, RestoredState, TableReader, TableWriter};

/// Buffered input rows (not yet passed by the watermark).
const PENDING: &str = "pending";
/// Per partition, the rows of its frame (bounded frames) or its accumulators' state.
const FRAMES: &str = "frames";

/// One partition's frame.
struct Partition {
    /// The latest event time of its rows.
    last: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Rows in the frame, oldest first: (time, per aggregate its argument values).
    rows: VecDeque<(i64, Vec<Vec<ScalarValue>>)>,
}

/// The OVER aggregate of one subtask.
pub struct OverAggregateOperator {
    key_indices: Vec<usize>,
    aggregates: Vec<PlannedAggregate>,
    arg_types: Vec<Vec<DataType>>,
    frame: OverFrame,
    input: SchemaRef,
    schema: SchemaRef,
    converter: RowConverter,
    partitions: HashMap<Box<[u8]>, Partition>,
    /// Rows waiting for the watermark, with their arrival order.
    pending: Vec<RecordBatch>,
    watermark: i64,
    /// Forget a partition no row reached for this long (event time, past the watermark).
    ttl: Option<Ttl>,
    sweeps: Sweeps,
}

impl OverAggregateOperator {
    /// Checks partition columns and aggregates against the input schema.
    pub fn prepare(
        partition_by: &[String],
        aggregates: &[Expr],
        frame: OverFrame,
        ttl_ms: Option<i64>,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let planned = PlannedAggregates::plan(partition_by, aggregates, input, &[])?;
        let arg_types = super::argument_types(&planned.aggregates, input)?;
        let bounded = frame.bounded();
        for (a, t) in planned.aggregates.iter().zip(&arg_types) {
            accumulator(a, t, bounded)?;
        }
        let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
        let ts = fields.pop().expect("invariant: `_timestamp` is last");
        for f in &planned.aggregate_fields {
            if fields.iter().any(|x| x.name() == f.name()) {
                return Err(SluiceError::user(format!(
                    "OVER aggregate `{}` has the name of an input column; give it an alias",
                    f.name()
                )));
            }
            fields.push(Arc::new(f.as_ref().clone().with_nullable(true)));
        }
        fields.push(ts);
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let sort: Vec<SortField> = planned
            .key_indices
            .iter()
            .map(|&i| SortField::new(input.field(i).data_type().clone()))
            .collect();
        RowConverter::new(sort.clone())
            .map_err(|e| SluiceError::user("unsupported partition column type").with_source(e))?;
        let (key_indices, aggregates) = (planned.key_indices, planned.aggregates);
        let (input, out) = (Arc::clone(input), Arc::clone(&schema));
        Ok(PreparedOperator {
            output_schema: schema,
            factory: Arc::new(move |_| {
                Ok(Box::new(OverAggregateOperator {
                    key_indices: key_indices.clone(),
                    aggregates: aggregates.clone(),
                    arg_types: arg_types.clone(),
                    frame,
                    input: Arc::clone(&input),
                    schema: Arc::clone(&out),
                    converter: RowConverter::new(sort.clone())?,
                    partitions: HashMap::new(),
                    pending: Vec::new(),
                    watermark: i64::MIN,
                    ttl: Ttl::of(ttl_ms),
                    sweeps: Sweeps::default(),
                }) as Box<dyn Operator>)
            }),
        })
    }

    /// Drops the partitions no future row can see: with a RANGE frame, those whose
    /// latest row is older than any future row's frame; with a TTL, those idle past it.
    fn sweep(&mut self, t: i64) {
        let range = match self.frame {
            OverFrame::Range { preceding_ms } => Some(preceding_ms),
            _ => None,
        };
        let every = match (range, self.ttl.map(Ttl::ms)) {
            (Some(r), Some(l)) => r.min(l),
            (Some(r), None) => r,
            (None, Some(l)) => l,
            (None, None) => return,
        };
        if !self.sweeps.due(t, every) {
            return;
        }
        let ttl = self.ttl;
        self.partitions.retain(|_, p| {
            let empty_frame = range.is_some_and(|r| p.last < t.saturating_sub(r));
            let idle = ttl.is_some_and(|l| l.expired(&mut p.last, t));
            !(empty_frame || idle)
        });
    }

    /// The encoded partition keys of `columns` (`None` without PARTITION BY).
    fn partition_keys(&self, columns: &[ArrayRef]) -> Result<Option<arrow::row::Rows>> {
        match self.key_indices.is_empty() {
            true => Ok(None),
            false => Ok(Some(self.converter.convert_columns(columns)?)),
        }
    }

    fn new_partition(&self) -> Result<Partition> {
        let bounded = self.frame.bounded();
        Ok(Partition {
            last: i64::MIN,
            accumulators: self
                .aggregates
                .iter()
                .zip(&self.arg_types)
                .map(|(a, t)| accumulator(a, t, bounded))
                .collect::<Result<_>>()?,
            rows: VecDeque::new(),
        })
    }

    /// Emits, in event-time order, every pending row at or below `upto`.
    async fn fire(&mut self, upto: i64, out: &mut dyn Collector) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Only the waiting batches that hold due rows are touched: the rest stay as they
        // are (no copy per watermark of everything that waits).
        let mut due_parts = Vec::new();
        let mut waiting = Vec::with_capacity(self.pending.len());
        for b in std::mem::take(&mut self.pending) {
            let ts = event_times(&b)?;
            let (lo, hi) = ts
                .values()
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            if lo > upto {
                waiting.push(b);
            } else if hi <= upto {
                due_parts.push(b);
            } else {
                let (due, keep): (Vec<u32>, Vec<u32>) =
                    (0..b.num_rows() as u32).partition(|&r| ts.value(r as usize) <= upto);
                due_parts.push(arrow::compute::take_record_batch(
                    &b,
                    &UInt32Array::from(due),
                )?);
                waiting.push(arrow::compute::take_record_batch(
                    &b,
                    &UInt32Array::from(keep),
                )?);
            }
        }
        self.pending = waiting;
        if due_parts.is_empty() {
            return Ok(());
        }
        let all = arrow::compute::concat_batches(&self.input, &due_parts)?;
        let ts = event_times(&all)?;
        let key_columns = |b: &RecordBatch| -> Vec<ArrayRef> {
            self.key_indices
                .iter()
                .map(|&i| Arc::clone(b.column(i)))
                .collect()
        };
        // RANGE frames: rows of one partition and time are peers, with the same values.
        let peers = self.frame.peers();
        // Event-time order, arrival order among equal times (a stable sort); for peers,
        // a partition's rows of one time next to each other whatever arrived between.
        let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
        if peers {
            let keys = self.partition_keys(&key_columns(&all))?;
            order.sort_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                ts.value(a)
                    .cmp(&ts.value(b))
                    .then_with(|| key_at(&keys, a).cmp(key_at(&keys, b)))
            });
        } else {
            order.sort_by_key(|&r| ts.value(r as usize));
        }
        let data = arrow::compute::take_record_batch(&all, &UInt32Array::from(order))?;
        let keys = self.partition_keys(&key_columns(&data))?;
        // The rows as a batch, to evaluate the aggregates' arguments over.
        let rows = Batch::try_new(
            data.clone(),
            sluice_types::IngestTime {
                min_us: 0,
                max_us: 0,
            },
        )?;
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.args.iter().map(|e| evaluate(e, &rows)).collect())
            .collect::<Result<_>>()?;
        let ts = event_times(&data)?;
        let n = data.num_rows();
        let frame = self.frame;
        let bounded = frame.bounded();
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(n); self.aggregates.len()];
        let mut r = 0;
        while r < n {
            let key = key_at(&keys, r);
            let t = ts.value(r);
            let mut end = r + 1;
            if peers {
                while end < n && ts.value(end) == t && key_at(&keys, end) == key {
                    end += 1;
                }
            }
            if !self.partitions.contains_key(key) {
                let p = self.new_partition()?;
                self.partitions.insert(key.into(), p);
            }
            let p = self
                .partitions
                .get_mut(key)
                .expect("invariant: inserted above");
            p.last = p.last.max(t);
            for row in r..end {
                let vals = row_args(&args, row)?;
                apply_row(&mut p.accumulators, &vals, true)?;
                if bounded {
                    p.rows.push_back((t, vals));
                }
                if !peers {
                    if let OverFrame::Rows { preceding } = frame {
                        while p.rows.len() as u64 > preceding + 1 {
                            let (_, old) = p.rows.pop_front().expect("invariant: non-empty");
                            apply_row(&mut p.accumulators, &old, false)?;
                        }
                    }
                    push_values(&mut values, &mut p.accumulators)?;
                }
            }
            if peers {
                if let OverFrame::Range { preceding_ms } = frame {
                    let from = t.saturating_sub(preceding_ms);
                    while p.rows.front().is_some_and(|(ft, _)| *ft < from) {
                        let (_, old) = p.rows.pop_front().expect("invariant: non-empty");
                        apply_row(&mut p.accumulators, &old, false)?;
                    }
                }
                for _ in r..end {
                    push_values(&mut values, &mut p.accumulators)?;
                }
            }
            r = end;
        }
        let mut columns: Vec<ArrayRef> = data.columns()[..data.num_columns() - 1].to_vec();
        for (v, f) in values
            .into_iter()
            .zip(&self.schema.fields()[self.input.fields().len() - 1..])
        {
            let array = ScalarValue::iter_to_array(v).map_err(df_err)?;
            columns.push(arrow::compute::cast(&array, f.data_type())?);
        }
        columns.push(Arc::clone(data.column(data.num_columns() - 1)));
        let out_data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let b = Batch::try_new(
            out_data,
            sluice_types::IngestTime {
                min_us: sluice_types::now_micros(),
                max_us: sluice_types::now_micros(),
            },
        )?;
        out.collect(b).await
    }
}

/// Row `r`'s encoded partition key (empty without PARTITION BY: one partition).
fn key_at(keys: &Option<arrow::row::Rows>, r: usize) -> &[u8] {
    keys.as_ref().map_or(&[][..], |k| k.row(r).data())
}

/// The event-time column (last) of a batch of the operator's input.
fn event_times(b: &RecordBatch) -> Result<TimestampMillisecondArray> {
    b.column(b.num_columns() - 1)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| SluiceError::internal("OVER input lost its event time"))
}

/// Evaluates every aggregate into `values` (one row).
fn push_values(values: &mut [Vec<ScalarValue>], accs: &mut [Box<dyn Accumulator>]) -> Result<()> {
    for (v, acc) in values.iter_mut().zip(accs) {
        v.push(acc.evaluate().map_err(df_err)?);
    }
    Ok(())
}

/// An accumulator for a frame: retractable for bounded frames.
fn accumulator(
    a: &PlannedAggregate,
    types: &[DataType],
    bounded: bool,
) -> Result<Box<dyn Accumulator>> {
    match bounded {
        true => retractable(a, types),
        false => a.function.create_accumulator().map_err(df_err),
    }
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("OVER aggregate computation failed").with_source(e)
}

#[async_trait]
impl Operator for OverAggregateOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        let ts = batch.timestamps();
        let wm = self.watermark;
        let keep: Vec<u32> = (0..batch.num_rows() as u32)
            .filter(|&r| ts.value(r as usize) > wm)
            .collect();
        let late = batch.num_rows() - keep.len();
        if late > 0 {
            // Their place in event-time order has passed: dropped, and counted.
            ctx.metrics
                .late_records
                .fetch_add(late as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if keep.len() == batch.num_rows() {
            self.pending.push(batch.data);
        } else if !keep.is_empty() {
            self.pending.push(arrow::compute::take_record_batch(
                &batch.data,
                &UInt32Array::from(keep),
            )?);
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        if let Some(t) = watermark.event_time() {
            self.watermark = self.watermark.max(t);
            self.fire(t, out).await?;
            self.sweep(t);
        }
        Ok(Some(watermark))
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        let max_p = ctx.max_parallelism;
        if !self.pending.is_empty() {
            let all = arrow::compute::concat_batches(&self.input, &self.pending)?;
            TableWriter::rows_of(&all, &self.key_indices).finish(PENDING, max_p, &mut state)?;
        }
        if self.partitions.is_empty() {
            return Ok(state);
        }
        // One row per frame row (bounded) or per partition (its accumulators' state).
        let parser = self.converter.parser();
        let mut key_rows = Vec::new();
        let mut times: Vec<i64> = Vec::new();
        let mut cells: Vec<Vec<ScalarValue>> = Vec::new();
        for (key, p) in &mut self.partitions {
            if self.frame.bounded() {
                for (t, vals) in &p.rows {
                    key_rows.push(parser.parse(key));
                    times.push(*t);
                    let flat: Vec<ScalarValue> = vals.iter().flatten().cloned().collect();
                    cells.resize_with(flat.len(), Vec::new);
                    for (c, v) in cells.iter_mut().zip(flat) {
                        c.push(v);
                    }
                }
            } else {
                key_rows.push(parser.parse(key));
                times.push(p.last);
                let mut flat = Vec::new();
                for acc in &mut p.accumulators {
                    flat.extend(acc.state().map_err(df_err)?);
                }
                // `state` consumed the accumulators: rebuild them from it.
                let arrays: Vec<ArrayRef> = flat
                    .iter()
                    .map(|v| v.to_array().map_err(df_err))
                    .collect::<Result<_>>()?;
                let mut col = 0;
                for (a, acc) in self.aggregates.iter().zip(p.accumulators.iter_mut()) {
                    let n = a.function.state_fields().map_err(df_err)?.len();
                    let mut fresh = a.function.create_accumulator().map_err(df_err)?;
                    fresh.merge_batch(&arrays[col..col + n]).map_err(df_err)?;
                    *acc = fresh;
                    col += n;
                }
                cells.resize_with(flat.len(), Vec::new);
                for (c, v) in cells.iter_mut().zip(flat) {
                    c.push(v);
                }
            }
        }
        let n = times.len();
        let converter = (!self.key_indices.is_empty()).then_some(&self.converter);
        let mut table = TableWriter::keyed(converter, key_rows, n)?.int64("t", times);
        for (j, c) in cells.into_iter().enumerate() {
            table = table.column(
                format!("v{j}"),
                ScalarValue::iter_to_array(c).map_err(df_err)?,
            );
        }
        table.finish(FRAMES, max_p, &mut state)?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(PENDING) {
            self.pending.push(b.clone());
        }
        let nk = self.key_indices.len();
        for b in state.table(FRAMES) {
            let converter = (nk > 0).then_some(&self.converter);
            let mut reader = TableReader::new(b, "OVER", converter, nk, None)?;
            let times = reader.int64()?;
            let values = reader.rest();
            let keys = reader.keys().cloned();
            for r in 0..b.num_rows() {
                let key = key_at(&keys, r);
                if !self.partitions.contains_key(key) {
                    let p = self.new_partition()?;
                    self.partitions.insert(key.into(), p);
                }
                let bounded = self.frame.bounded();
                let p = self
                    .partitions
                    .get_mut(key)
                    .expect("invariant: inserted above");
                if bounded {
                    let mut col = 0;
                    let mut vals = Vec::with_capacity(self.arg_types.len());
                    for types in &self.arg_types {
                        let mut v = Vec::with_capacity(types.len());
                        for _ in types {
                            let c = values.get(col).ok_or_else(|| reader.malformed())?;
                            v.push(ScalarValue::try_from_array(c, r).map_err(df_err)?);
                            col += 1;
                        }
                        vals.push(v);
                    }
                    apply_row(&mut p.accumulators, &vals, true)?;
                    p.rows.push_back((times.value(r), vals));
                    p.last = p.last.max(times.value(r));
                } else {
                    p.last = p.last.max(times.value(r));
                    let mut col = 0;
                    for (a, acc) in self.aggregates.iter().zip(p.accumulators.iter_mut()) {
                        let n = a.function.state_fields().map_err(df_err)?.len();
                        let cols: Vec<ArrayRef> = values
                            .get(col..col + n)
                            .ok_or_else(|| reader.malformed())?
                            .iter()
                            .map(|c| c.slice(r, 1))
                            .collect();
                        acc.merge_batch(&cols).map_err(df_err)?;
                        col += n;
                    }
                }
            }
        }
        // Frame rows of one partition may come from several checkpointed batches:
        // keep them in time order.
        for p in self.partitions.values_mut() {
            p.rows.make_contiguous().sort_by_key(|(t, _)| *t);
        }
        Ok(())
    }
}

impl OverAggregateOperator {
    /// The registered constructor of `over aggregate` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::OverAggregate {
            partition_by,
            aggregates,
            frame,
            ttl_ms,
        } = kind
        else {
            return Err(crate::operators::wrong_node(kind, "over aggregate"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare(partition_by, aggregates, *frame, *ttl_ms, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use crate::operators::test_util::kv_batch;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, max, sum};

    fn rows(out: &[Batch]) -> Vec<String> {
        use arrow::util::display::array_value_to_string;
        let mut v = Vec::new();
        for b in out {
            let d = &b.data;
            for r in 0..d.num_rows() {
                v.push(
                    (0..d.num_columns())
                        .map(|c| array_value_to_string(d.column(c), r).unwrap())
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        }
        v
    }

    fn make(frame: OverFrame, schema: &SchemaRef) -> Box<dyn Operator> {
        let p = OverAggregateOperator::prepare(
            &["k".into()],
            &[
                count(col("v")).alias("n"),
                sum(col("v")).alias("s"),
                max(col("v")).alias("hi"),
            ],
            frame,
            None,
            schema,
        )
        .unwrap();
        (p.factory)(&sluice_types::TaskInfo::for_test("over")).unwrap()
    }

    /// Feeds `input` in two halves with watermarks, optionally through a checkpoint.
    async fn run(frame: OverFrame, input: &[Batch], checkpoint: bool) -> Vec<String> {
        let schema = input[0].data.schema();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        let mut op = make(frame, &schema);
        let half = input.len() / 2;
        for (i, b) in input.iter().enumerate() {
            if i == half && checkpoint {
                let state = op
                    .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
                    .await
                    .unwrap();
                let restored = crate::operators::test_util::restored(&state, 0, 1);
                op = make(frame, &schema);
                op.restore(restored, &mut ctx).await.unwrap();
            }
            op.process_batch(b.clone(), &mut ctx, &mut out)
                .await
                .unwrap();
            let t = b.timestamps().values().iter().copied().max().unwrap();
            op.on_watermark(Watermark::EventTime(t - 50), &mut ctx, &mut out)
                .await
                .unwrap();
        }
        op.on_watermark(Watermark::MAX, &mut ctx, &mut out)
            .await
            .unwrap();
        rows(&out.batches)
    }

    #[tokio::test]
    async fn frames_survive_a_checkpoint_and_come_out_in_event_time_order() {
        // Two keys, rows out of order within the 50 ms bound: row n at 100 + 10 n - 25 (n
        // mod 3), so key 0's rows arrive as 0 (100 ms), 2 (70 ms), 4 (115 ms), 6 (160 ms),
        // 8 (130 ms), …
        let input: Vec<Batch> = (0..8)
            .map(|b| {
                kv_batch(
                    &(0..10)
                        .map(|i| {
                            let n = b * 10 + i;
                            (n % 2, n, 100 + n * 10 - (n % 3) * 25)
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        for frame in [
            OverFrame::Rows { preceding: 2 },
            OverFrame::Range { preceding_ms: 40 },
            OverFrame::UnboundedRows,
        ] {
            let whole = run(frame, &input, false).await;
            assert_eq!(whole.len(), 80, "{frame:?}: every row once");
            assert_eq!(run(frame, &input, true).await, whole, "{frame:?}");
        }
        // ROWS 2 PRECEDING, in event-time order: key 0's rows come out as 2, 0, 4, 8, 6, …
        // (not in arrival order); the third sees 2, 0 and 4, the fourth 0, 4 and 8.
        let whole = run(OverFrame::Rows { preceding: 2 }, &input, false).await;
        let k0: Vec<&String> = whole.iter().filter(|r| r.starts_with("k0,")).collect();
        assert!(
            k0[0].starts_with("k0,2,") && k0[1].starts_with("k0,0,"),
            "{k0:?}"
        );
        assert!(
            k0[2].starts_with("k0,4,") && k0[2].contains(",3,6,4,"),
            "{k0:?}"
        );
        assert!(
            k0[3].starts_with("k0,8,") && k0[3].contains(",3,12,8,"),
            "the oldest left the frame: {k0:?}"
        );
    }

    #[tokio::test]
    async fn without_partition_by_all_rows_are_one_partition_through_a_checkpoint() {
        let input = [
            kv_batch(&[(1, 1, 10), (2, 5, 20)]),
            kv_batch(&[(1, 2, 30), (2, 4, 30)]),
        ];
        let schema = input[0].data.schema();
        for frame in [OverFrame::Rows { preceding: 1 }, OverFrame::UnboundedRange] {
            let make = || {
                let p = OverAggregateOperator::prepare(
                    &[],
                    &[sum(col("v")).alias("s")],
                    frame,
                    None,
                    &schema,
                )
                .unwrap();
                (p.factory)(&sluice_types::TaskInfo::for_test("over")).unwrap()
            };
            let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
            let mut out = VecCollector::default();
            let mut op = make();
            op.process_batch(input[0].clone(), &mut ctx, &mut out)
                .await
                .unwrap();
            op.on_watermark(Watermark::EventTime(25), &mut ctx, &mut out)
                .await
                .unwrap();
            let state = op
                .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
                .await
                .unwrap();
            let mut op = make();
            op.restore(
                crate::operators::test_util::restored(&state, 0, 1),
                &mut ctx,
            )
            .await
            .unwrap();
            op.process_batch(input[1].clone(), &mut ctx, &mut out)
                .await
                .unwrap();
            op.on_watermark(Watermark::MAX, &mut ctx, &mut out)
                .await
                .unwrap();
            let sums: Vec<String> = rows(&out.batches)
                .iter()
                .map(|r| r.split(',').nth(2).unwrap().to_string())
                .collect();
            let want = match frame {
                // 1, 1+5, then the two rows at 30 (arrival order): 5+2, 2+4.
                OverFrame::Rows { .. } => ["1", "6", "7", "6"],
                // Running totals; the two rows at 30 are peers.
                _ => ["1", "6", "12", "12"],
            };
            assert_eq!(sums, want, "{frame:?}");
        }
    }

    #[tokio::test]
    async fn a_range_frame_holds_every_peer_whatever_the_arrival_order() {
        // Rows of one partition and time are peers in a RANGE frame: key 1's two rows at
        // 10 see each other although a row of key 2 at 10 arrived between them.
        let input = kv_batch(&[(1, 1, 10), (2, 5, 10), (1, 2, 10), (1, 4, 20)]);
        let schema = input.data.schema();
        for frame in [
            OverFrame::Range { preceding_ms: 100 },
            OverFrame::UnboundedRange,
        ] {
            let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
            let mut out = VecCollector::default();
            let mut op = make(frame, &schema);
            op.process_batch(input.clone(), &mut ctx, &mut out)
                .await
                .unwrap();
            op.on_watermark(Watermark::MAX, &mut ctx, &mut out)
                .await
                .unwrap();
            let mut got = rows(&out.batches);
            got.sort();
            // k, v, then COUNT, SUM, MAX over the frame, then the time.
            assert_eq!(
                got,
                [
                    "k1,1,2,3,2,1970-01-01T00:00:00.010",
                    "k1,2,2,3,2,1970-01-01T00:00:00.010",
                    "k1,4,3,7,4,1970-01-01T00:00:00.020",
                    "k2,5,1,5,5,1970-01-01T00:00:00.010",
                ],
                "{frame:?}"
            );
        }
    }

    #[tokio::test]
    async fn partitions_no_future_row_can_see_are_dropped() {
        let input = kv_batch(&[(1, 5, 10), (2, 7, 10)]);
        let schema = input.data.schema();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        let p = OverAggregateOperator::prepare(
            &["k".into()],
            &[sum(col("v")).alias("s")],
            OverFrame::Range { preceding_ms: 100 },
            None,
            &schema,
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("over")).unwrap();
        op.process_batch(input, &mut ctx, &mut out).await.unwrap();
        op.on_watermark(Watermark::EventTime(50), &mut ctx, &mut out)
            .await
            .unwrap();
        op.process_batch(kv_batch(&[(1, 1, 120)]), &mut ctx, &mut out)
            .await
            .unwrap();
        // At 200 key 2's rows (time 10) are older than any future row's frame: dropped.
        // Key 1's row at 120 is not.
        op.on_watermark(Watermark::EventTime(200), &mut ctx, &mut out)
            .await
            .unwrap();
        let state = op
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        let frame_rows: usize = state.keyed[FRAMES].iter().map(|b| b.num_rows()).sum();
        assert_eq!(
            frame_rows, 1,
            "key 1's row at 120 (its row at 10 left the frame); key 2 is gone"
        );
        // A ROWS frame keeps its partitions, until the TTL.
        let p = OverAggregateOperator::prepare(
            &["k".into()],
            &[sum(col("v")).alias("s")],
            OverFrame::Rows { preceding: 1 },
            Some(100),
            &schema,
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("over")).unwrap();
        op.process_batch(kv_batch(&[(1, 5, 10), (2, 7, 150)]), &mut ctx, &mut out)
            .await
            .unwrap();
        op.on_watermark(Watermark::EventTime(200), &mut ctx, &mut out)
            .await
            .unwrap();
        let mut later = VecCollector::default();
        op.process_batch(kv_batch(&[(1, 1, 300), (2, 1, 300)]), &mut ctx, &mut later)
            .await
            .unwrap();
        op.on_watermark(Watermark::EventTime(300), &mut ctx, &mut later)
            .await
            .unwrap();
        let mut got = rows(&later.batches);
        got.sort();
        // Key 1 (idle since 10) starts over; key 2 still sums its previous row.
        assert_eq!(got[0].split(',').nth(2), Some("1"), "{got:?}");
        assert_eq!(got[1].split(',').nth(2), Some("8"), "{got:?}");
    }
}
