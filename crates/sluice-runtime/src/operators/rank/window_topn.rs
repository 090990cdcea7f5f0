//! Top-N per window: of the rows of one window (and partition), the ones ranked `<= n`
//! by a column, ties included (SQL `RANK() … <= n`), emitted when the window closes.
//!
//! ```text
//!  window aggregate ──(auction, window_start, window_end, bids)──> top-n (n = 1, bids desc)
//!   [0,10): a=5 b=9 c=9 d=2        keeps b=9 c=9 (both rank 1)   fires at watermark 9 999
//! ```
//!
//! The input is a window aggregate's output (or any stream with `window_start` /
//! `window_end` columns). Per window and partition the operator keeps only the rows that
//! can still rank `<= n`: more rows only push ranks down, so a row ranked beyond `n`
//! never comes back. A row's rank is one plus the number of rows ordered strictly before
//! it, so the candidates after each batch are the rows that order at or before the `n`-th
//! one. Each window has an event-time timer at its last instant; when the watermark
//! reaches it the runtime fires it, and the window's rows are emitted and freed.
//!
//! A row for a window that has already fired (an upstream window re-firing within its
//! allowed lateness) is late here: counted and sent to the late side output or the
//! dead-letter output, never dropped silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion_common::hash_utils::RandomState;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, Watermark};

use crate::operator::{Collector, Operator, OperatorContext, TimeDomain, Timers};
use crate::operators::PreparedOperator;
use crate::operators::prepare_from_template;
use crate::operators::windows::{WINDOW_END, WINDOW_START, emit_late};
use crate::state::{OperatorState, RestoredState, TableWriter};

/// The keyed state table of top-n: the candidate rows of windows not fired yet.
const CANDIDATES_TABLE: &str = "candidates";

#[derive(serde::Deserialize)]
struct TopNMeta {
    watermark: i64,
}

/// The top-N-per-window operator.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::datatypes::*;
/// use sluice_runtime::operators::rank::window_topn::TopNPerWindowOperator;
/// let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("auction", DataType::Int64, false),
///     Field::new("window_start", ts.clone(), false),
///     Field::new("window_end", ts, false),
///     Field::new("bids", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = TopNPerWindowOperator::prepare(&[], "bids", true, 1, &schema).unwrap();
/// assert_eq!(op.output_schema, schema);
/// ```
pub struct TopNPerWindowOperator {
    schema: SchemaRef,
    /// What it emits: the input columns, plus the rank column when asked for.
    out_schema: SchemaRef,
    /// `ROW_NUMBER` (exactly `limit` rows, ties broken arbitrarily) instead of `RANK`.
    row_number: bool,
    /// Emit each row's rank (or row number) in a column of this name.
    rank_column: Option<String>,
    /// Columns that identify a group: `window_start`, then the partition columns.
    group_indices: Vec<usize>,
    group_types: Vec<DataType>,
    end_index: usize,
    /// The ranking columns, each with whether largest first: rows compare by their
    /// row-encoding under [`Self::ranking`] (nulls last).
    order: Vec<(usize, bool)>,
    ranking: RowConverter,
    limit: usize,
    converter: RowConverter,
    /// Window end → group key → candidate rows.
    windows: BTreeMap<i64, HashMap<Box<[u8]>, RecordBatch, RandomState>>,
    watermark: i64,
    latest_ingest_us: u64,
}

fn column_index(schema: &SchemaRef, name: &str, what: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        SluiceError::user(format!(
            "top-n per window: {what} column `{name}` not found; the input has {}",
            names.join(", ")
        ))
    })
}

impl TopNPerWindowOperator {
    /// Checks the columns against the input schema.
    pub fn prepare(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        limit: usize,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Self::prepare_numbered(
            partition_by,
            order_by,
            descending,
            limit,
            false,
            None,
            input,
        )
    }

    /// As [`Self::prepare`], with `ROW_NUMBER` semantics (`row_number`) and the rank as
    /// a column (`rank_column`).
    pub fn prepare_numbered(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        limit: usize,
        row_number: bool,
        rank_column: Option<&str>,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        let template = Self::new(partition_by, order_by, descending, limit, input)?
            .numbered(row_number, rank_column)?;
        let schema = Arc::clone(&template.out_schema);
        Ok(prepare_from_template(template, schema, Self::fresh))
    }

    /// Sets `ROW_NUMBER` semantics and the rank column.
    pub fn numbered(mut self, row_number: bool, rank_column: Option<&str>) -> Result<Self> {
        self.row_number = row_number;
        self.rank_column = rank_column.map(str::to_string);
        if let Some(name) = rank_column {
            if self.schema.field_with_name(name).is_ok() {
                return Err(SluiceError::user(format!(
                    "top-n per window: the rank column `{name}` clashes with an input column"
                )));
            }
            let mut fields: Vec<Arc<arrow::datatypes::Field>> =
                self.schema.fields().iter().cloned().collect();
            let ts = fields.pop().expect("invariant: `_timestamp` is last");
            fields.push(Arc::new(arrow::datatypes::Field::new(
                name,
                DataType::Int64,
                false,
            )));
            fields.push(ts);
            self.out_schema = Arc::new(arrow::datatypes::Schema::new(fields));
        }
        Ok(self)
    }

    /// The ranking columns of `rows`, row-encoded: a smaller row ranks better.
    fn rank_keys(&self, rows: &RecordBatch) -> Result<arrow::row::Rows> {
        let columns: Vec<ArrayRef> = self
            .order
            .iter()
            .map(|&(i, _)| Arc::clone(rows.column(i)))
            .collect();
        Ok(self.ranking.convert_columns(&columns)?)
    }

    /// A fired group's rows in rank order, cut to the limit, with their ranks.
    fn finish_group(&self, rows: RecordBatch) -> Result<RecordBatch> {
        if !self.row_number && self.rank_column.is_none() {
            return Ok(rows);
        }
        let keys = self.rank_keys(&rows)?;
        // Rank order; arrival order among ties (a stable sort).
        let mut sorted: Vec<u32> = (0..rows.num_rows() as u32).collect();
        sorted.sort_by(|&a, &b| keys.row(a as usize).cmp(&keys.row(b as usize)));
        let mut ranks: Vec<i64> = Vec::with_capacity(rows.num_rows());
        for (i, w) in sorted.iter().enumerate() {
            let tied = i > 0 && keys.row(*w as usize) == keys.row(sorted[i - 1] as usize);
            let rank = if self.row_number || !tied {
                i as i64 + 1
            } else {
                ranks[i - 1]
            };
            ranks.push(rank);
        }
        let rows = take_record_batch(&rows, &UInt32Array::from(sorted))?;
        let keep = ranks
            .iter()
            .take_while(|&&r| r <= self.limit as i64)
            .count();
        let rows = rows.slice(0, keep);
        let Some(_) = &self.rank_column else {
            return Ok(rows);
        };
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        let ts = columns.pop().expect("invariant: `_timestamp` is last");
        columns.push(Arc::new(arrow::array::Int64Array::from(
            ranks[..keep].to_vec(),
        )));
        columns.push(ts);
        Ok(RecordBatch::try_new(Arc::clone(&self.out_schema), columns)?)
    }

    /// Orders rows tied on the ranking column by these columns, each with whether
    /// largest first.
    pub fn then_by(mut self, columns: &[(String, bool)]) -> Result<Self> {
        for (c, descending) in columns {
            let i = column_index(&self.schema, c, "order")?;
            self.order.push((i, *descending));
        }
        self.ranking = Self::ranking(&self.schema, &self.order)?;
        Ok(self)
    }

    fn ranking(input: &SchemaRef, order: &[(usize, bool)]) -> Result<RowConverter> {
        RowConverter::new(super::ranking_fields(input, order)).map_err(|e| {
            SluiceError::user("top-n per window: cannot order by these columns").with_source(e)
        })
    }

    /// An operator with empty state.
    pub fn new(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        limit: usize,
        input: &SchemaRef,
    ) -> Result<Self> {
        if limit == 0 {
            return Err(SluiceError::user(
                "top-n per window needs n >= 1 (n = 0 would drop every row)",
            ));
        }
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let start = column_index(input, WINDOW_START, "window")?;
        let end_index = column_index(input, WINDOW_END, "window")?;
        for i in [start, end_index] {
            if input.field(i).data_type() != &ts {
                return Err(SluiceError::user(format!(
                    "top-n per window: `{}` must be a millisecond timestamp (a window aggregate's output), not {}",
                    input.field(i).name(),
                    input.field(i).data_type()
                )));
            }
        }
        let order_index = column_index(input, order_by, "order")?;
        let order_type = input.field(order_index).data_type();
        if !(order_type.is_primitive() || matches!(order_type, DataType::Utf8 | DataType::Boolean))
        {
            return Err(SluiceError::user(format!(
                "top-n per window: cannot order by `{order_by}` of type {order_type}"
            )));
        }
        let order = vec![(order_index, descending)];
        let mut group_indices = vec![start];
        for p in partition_by {
            group_indices.push(column_index(input, p, "partition")?);
        }
        let group_types: Vec<DataType> = group_indices
            .iter()
            .map(|&i| input.field(i).data_type().clone())
            .collect();
        Ok(Self {
            schema: Arc::clone(input),
            out_schema: Arc::clone(input),
            row_number: false,
            rank_column: None,
            converter: Self::converter(&group_types)?,
            group_indices,
            group_types,
            end_index,
            ranking: Self::ranking(input, &order)?,
            order,
            limit,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            latest_ingest_us: 0,
        })
    }

    fn converter(types: &[DataType]) -> Result<RowConverter> {
        RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect()).map_err(|e| {
            SluiceError::user("top-n per window: unsupported partition column type").with_source(e)
        })
    }

    fn fresh(&self) -> Result<Self> {
        Ok(Self {
            schema: Arc::clone(&self.schema),
            out_schema: Arc::clone(&self.out_schema),
            row_number: self.row_number,
            rank_column: self.rank_column.clone(),
            group_indices: self.group_indices.clone(),
            group_types: self.group_types.clone(),
            converter: Self::converter(&self.group_types)?,
            end_index: self.end_index,
            order: self.order.clone(),
            ranking: Self::ranking(&self.schema, &self.order)?,
            limit: self.limit,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            latest_ingest_us: 0,
        })
    }

    /// Windows (and partitions) held, for tests and metrics.
    pub fn groups_held(&self) -> usize {
        self.windows.values().map(HashMap::len).sum()
    }

    /// The rows of `rows` that can still rank `<= limit`: those ordered at or before
    /// the `limit`-th (more rows only push ranks down).
    fn prune(&self, rows: RecordBatch) -> Result<RecordBatch> {
        if rows.num_rows() <= self.limit {
            return Ok(rows);
        }
        let keys = self.rank_keys(&rows)?;
        let mut idx: Vec<usize> = (0..rows.num_rows()).collect();
        let (_, &mut nth, _) =
            idx.select_nth_unstable_by(self.limit - 1, |&a, &b| keys.row(a).cmp(&keys.row(b)));
        let threshold = keys.row(nth);
        let keep: arrow::array::BooleanArray = (0..rows.num_rows())
            .map(|i| Some(keys.row(i) <= threshold))
            .collect();
        Ok(filter_record_batch(&rows, &keep)?)
    }

    /// Adds the rows of windows that have not fired to their groups (keeping only rows
    /// that can still rank); returns the indices of the late rows.
    fn absorb(&mut self, data: &RecordBatch, timers: &mut Timers) -> Result<Vec<u32>> {
        let ends = data
            .column(self.end_index)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .ok_or_else(|| SluiceError::internal("window_end is not a ms timestamp"))?
            .clone();
        let cols: Vec<ArrayRef> = self
            .group_indices
            .iter()
            .map(|&i| Arc::clone(data.column(i)))
            .collect();
        let keys = self.converter.convert_columns(&cols)?;
        // Rows per (window end, group), in first-seen order; late rows apart.
        let mut groups: HashMap<(i64, &[u8]), Vec<u32>, RandomState> =
            HashMap::with_hasher(RandomState::default());
        let mut late = Vec::new();
        for i in 0..data.num_rows() {
            let end = ends.value(i);
            if end.saturating_sub(1) <= self.watermark {
                late.push(i as u32);
                continue;
            }
            groups
                .entry((end, keys.row(i).data()))
                .or_default()
                .push(i as u32);
        }
        let whole = groups.len() == 1 && late.is_empty();
        for ((end, key), idx) in groups {
            let rows = if whole {
                data.clone()
            } else {
                take_record_batch(data, &UInt32Array::from(idx))?
            };
            if !self.windows.contains_key(&end) {
                timers.register(TimeDomain::EventTime, end.saturating_sub(1));
            }
            let window = self.windows.entry(end).or_default();
            let merged = match window.remove(key) {
                Some(held) => concat_batches(&self.schema, [&held, &rows])?,
                None => rows,
            };
            let kept = self.prune(merged)?;
            self.windows
                .entry(end)
                .or_default()
                .insert(key.into(), kept);
        }
        Ok(late)
    }

    async fn fire_through(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        let mut ready = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().saturating_sub(1) > watermark {
                break;
            }
            for rows in entry.remove().into_values() {
                ready.push(self.finish_group(rows)?);
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let data = concat_batches(&self.out_schema, &ready)?;
        let ingest = sluice_types::IngestTime::at(match self.latest_ingest_us {
            0 => sluice_types::now_micros(),
            t => t,
        });
        out.collect(Batch { data, ingest }).await
    }
}

#[async_trait]
impl Operator for TopNPerWindowOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.out_schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        self.latest_ingest_us = self.latest_ingest_us.max(batch.ingest.max_us);
        let late = self.absorb(&batch.data, &mut ctx.timers)?;
        if !late.is_empty() {
            let rows = take_record_batch(&batch.data, &UInt32Array::from(late))?;
            let reason = format!(
                "late row: its window already fired in top-n (watermark {} ms)",
                self.watermark
            );
            emit_late(ctx, batch.with_data(rows), out, &reason, self.watermark).await?;
        }
        Ok(())
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
        let held: Vec<&RecordBatch> = self.windows.values().flat_map(HashMap::values).collect();
        if held.is_empty() {
            return Ok(state);
        }
        let rows = concat_batches(&self.schema, held)?;
        // Routed to this operator by (window_end, partition columns): the same key groups.
        let mut key_indices = vec![self.end_index];
        key_indices.extend_from_slice(&self.group_indices[1..]);
        TableWriter::rows_of(&rows, &key_indices).finish(
            CANDIDATES_TABLE,
            ctx.max_parallelism,
            &mut state,
        )?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        let metas: Vec<TopNMeta> = state.metas()?;
        if let Some(w) = metas.iter().map(|m| m.watermark).min() {
            self.watermark = w;
        }
        for b in state.table(CANDIDATES_TABLE) {
            if b.schema().fields() != self.schema.fields() {
                return Err(SluiceError::user(
                    "checkpointed top-n rows do not match this operator's input: the job changed",
                ));
            }
            let b = RecordBatch::try_new(Arc::clone(&self.schema), b.columns().to_vec())?;
            let late = self.absorb(&b, &mut ctx.timers)?;
            debug_assert!(late.is_empty(), "fired windows are not checkpointed");
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
        if domain != TimeDomain::EventTime {
            return Ok(());
        }
        // Every window whose last instant the watermark reached, in one batch.
        let (wm, _) = ctx.take_due_event_timers(time);
        self.fire_through(wm, out).await
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        // The due windows fired on their timers, just before this.
        if let Some(wm) = watermark.event_time() {
            self.watermark = self.watermark.max(wm);
        }
        Ok(Some(watermark))
    }

    async fn on_close(
        &mut self,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        self.fire_through(i64::MAX, out).await
    }
}

impl TopNPerWindowOperator {
    /// The registered constructor of `top-n per window` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::TopNPerWindow {
            partition_by,
            order_by,
            descending,
            then_by,
            limit,
            row_number,
            rank_column,
        } = kind
        else {
            return Err(crate::operators::wrong_node(kind, "top-n per window"));
        };
        let input = &crate::operators::single_input(inputs)?;
        let template = Self::new(partition_by, order_by, *descending, *limit, input)?
            .then_by(then_by)?
            .numbered(*row_number, rank_column.as_deref())?;
        let schema = Arc::clone(&template.out_schema);
        Ok(prepare_from_template(template, schema, Self::fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use arrow::array::StringArray;
    use sluice_testkit::batch_from_pretty;

    #[tokio::test]
    async fn candidates_survive_a_checkpoint_and_a_change_of_parallelism() {
        use crate::operators::test_util::{run_plain, run_through_checkpoint};
        use arrow::array::{Int64Array, TimestampMillisecondArray};
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", DataType::Utf8, false),
            arrow::datatypes::Field::new(WINDOW_START, ts(), false),
            arrow::datatypes::Field::new(WINDOW_END, ts(), false),
            arrow::datatypes::Field::new("n", DataType::Int64, false),
            sluice_types::timestamp_field(),
        ]));
        // Per batch, 12 keys in each of 3 windows, the windows moving on by one per batch
        // (the first fires before the checkpoint, others span it); counts with ties.
        let batches: Vec<Batch> = (0..4)
            .map(|b| {
                let rows: Vec<(String, i64, i64)> = (0..36)
                    .map(|i| {
                        (
                            format!("k{}-{b}", i % 12),
                            (i / 12 + b) * 1_000,
                            (i * 7 + b) % 5,
                        )
                    })
                    .collect();
                let data = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|r| r.0.clone()),
                        )),
                        Arc::new(TimestampMillisecondArray::from_iter_values(
                            rows.iter().map(|r| r.1),
                        )),
                        Arc::new(TimestampMillisecondArray::from_iter_values(
                            rows.iter().map(|r| r.1 + 1_000),
                        )),
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                        Arc::new(TimestampMillisecondArray::from_iter_values(
                            rows.iter().map(|r| r.1 + 999),
                        )),
                    ],
                )
                .unwrap();
                Batch::try_new(data, sluice_types::IngestTime::at(0)).unwrap()
            })
            .collect();
        let make = || {
            Box::new(TopNPerWindowOperator::new(&[], "n", true, 2, &schema).unwrap())
                as Box<dyn Operator>
        };
        let whole = run_plain(make, &batches).await;
        assert!(whole.len() >= 6, "{whole:?}");
        for p in [1, 2, 3] {
            // Routed by window_end, as the hash edge into top-n is.
            assert_eq!(
                run_through_checkpoint(make, &batches, 2, p, &[2]).await,
                whole,
                "parallelism {p}"
            );
        }
    }

    /// The `k` column of every emitted row, sorted per batch.
    fn keys(out: &[Batch]) -> Vec<Vec<String>> {
        out.iter()
            .map(|b| {
                let i = b.data.schema().index_of("k").unwrap();
                let k = b
                    .data
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                let mut v: Vec<String> = k.iter().map(|s| s.unwrap().to_string()).collect();
                v.sort();
                v
            })
            .collect()
    }

    #[tokio::test]
    async fn keeps_every_row_tying_for_the_top_and_frees_the_window() {
        let first = batch_from_pretty(
            "
            | k:Utf8 | window_start:Ts | window_end:Ts | n:Int64 | _timestamp:Ts |
            | a      | 0               | 10            | 5       | 9             |
            | b      | 0               | 10            | 9       | 9             |
            | x      | 10              | 20            | 1       | 19            |",
        );
        let schema = first.data.schema();
        let mut op = TopNPerWindowOperator::new(&[], "n", true, 1, &schema).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        // Later rows of the same window: c ties with b, d ranks below.
        let more = batch_from_pretty(
            "
            | k:Utf8 | window_start:Ts | window_end:Ts | n:Int64 | _timestamp:Ts |
            | c      | 0               | 10            | 9       | 9             |
            | d      | 0               | 10            | 2       | 9             |",
        );
        op.process_batch(more, &mut ctx, &mut out).await.unwrap();
        assert!(out.batches.is_empty(), "nothing fires before the watermark");
        crate::operators::test_util::advance(&mut op, &mut ctx, Watermark::EventTime(9), &mut out)
            .await
            .unwrap();
        assert_eq!(op.groups_held(), 1, "window [0,10) freed, [10,20) held");
        assert_eq!(keys(&out.batches), [["b", "c"]]);
        // A row for the fired window is late: kept aside, not dropped.
        let late = batch_from_pretty(
            "
            | k:Utf8 | window_start:Ts | window_end:Ts | n:Int64 | _timestamp:Ts |
            | e      | 0               | 10            | 99      | 9             |",
        );
        op.process_batch(late, &mut ctx, &mut out).await.unwrap();
        assert_eq!(out.side.len(), 1);
        assert_eq!(
            ctx.metrics
                .late_records
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        op.on_close(&mut ctx, &mut out).await.unwrap();
        assert_eq!(keys(&out.batches[1..]), [["x"]]);
        assert_eq!(op.groups_held(), 0);
    }

    #[tokio::test]
    async fn rank_n_per_partition_ascending_with_ties_at_the_cut() {
        let input = batch_from_pretty(
            "
            | g:Utf8 | k:Utf8 | window_start:Ts | window_end:Ts | n:Int64 | _timestamp:Ts |
            | g1     | a      | 0               | 10            | 3       | 9             |
            | g1     | b      | 0               | 10            | 1       | 9             |
            | g1     | c      | 0               | 10            | 2       | 9             |
            | g1     | d      | 0               | 10            | 2       | 9             |
            | g1     | f      | 0               | 10            |         | 9             |
            | g2     | e      | 0               | 10            | 7       | 9             |",
        );
        let schema = input.data.schema();
        let mut op = TopNPerWindowOperator::new(&["g".into()], "n", false, 2, &schema).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(input, &mut ctx, &mut out).await.unwrap();
        op.on_close(&mut ctx, &mut out).await.unwrap();
        // g1: b (rank 1), c and d (rank 2); a (rank 4) and the null (last) are out.
        // g2: e alone.
        assert_eq!(keys(&out.batches), [["b", "c", "d", "e"]]);
    }

    #[tokio::test]
    async fn ties_on_the_first_column_are_ranked_by_the_next() {
        // ORDER BY n DESC, k ASC: the two rows with n = 5 are not tied any more.
        let input = batch_from_pretty(
            "
            | k:Utf8 | window_start:Ts | window_end:Ts | n:Int64 | _timestamp:Ts |
            | c      | 0               | 10            | 5       | 9             |
            | d      | 0               | 10            | 1       | 9             |
            | a      | 0               | 10            | 5       | 9             |
            | b      | 0               | 10            | 3       | 9             |
            | e      | 0               | 10            | 5       | 9             |",
        );
        let schema = input.data.schema();
        let mut op = TopNPerWindowOperator::new(&[], "n", true, 2, &schema)
            .unwrap()
            .then_by(&[("k".into(), false)])
            .unwrap()
            .numbered(false, Some("rk"))
            .unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        // Two batches: the first one's rows are pruned before the second arrives.
        op.process_batch(input.with_data(input.data.slice(0, 3)), &mut ctx, &mut out)
            .await
            .unwrap();
        op.process_batch(input.with_data(input.data.slice(3, 2)), &mut ctx, &mut out)
            .await
            .unwrap();
        op.on_close(&mut ctx, &mut out).await.unwrap();
        assert_eq!(keys(&out.batches), [["a", "c"]]);
        let ranks = out.batches[0].data.column_by_name("rk").unwrap();
        let ranks = ranks
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(ranks.values(), &[1, 2]);
    }

    #[test]
    fn bad_columns_are_rejected_with_the_available_names() {
        let schema = batch_from_pretty(
            "
            | k:Utf8 | window_start:Ts | window_end:Ts | n:Int64 | _timestamp:Ts |
            | a      | 0               | 10            | 5       | 9             |",
        )
        .data
        .schema();
        let err = TopNPerWindowOperator::new(&[], "missing", true, 1, &schema)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`missing` not found") && err.contains("window_end"),
            "{err}"
        );
        assert!(TopNPerWindowOperator::new(&[], "n", true, 0, &schema).is_err());
    }
}
