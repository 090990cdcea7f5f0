//! Top-N without windows (SQL `ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) <= n`),
//! which is also deduplication (`n = 1`, ordered by time: keep the first or last row).
//!
//! ```text
//!  per partition key: its best n rows, in order
//!  batch ──group by key──> merge with the held rows, sort, keep n ──> emit the ranks
//!                                                                     whose row changed
//! ```
//!
//! The output is a changelog of the ranks: a rank filled for the first time is `+I`; a
//! rank whose row changed is `-U` with the row it held and `+U` with its new row (a row
//! entering the top pushes each row below it down one rank); a rank left empty is `-D`.
//! Over an append-only input a partition's list only improves or grows, so only its best
//! `n` rows are kept. Over an updating input (a changelog) a row taken back may let a row
//! from below the top back in, so every row of the partition is kept, in rank order, and
//! a retraction removes its row (the same column values) from wherever it is. Ties keep arrival
//! order in the direction of the sort: ascending keeps the earlier row (keep-first
//! deduplication), descending the later one (keep-last).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use async_trait::async_trait;
use sluice_types::{
    Batch, CheckpointBarrier, Result, RowKind, SluiceError, is_updating, row_kind_field,
    timestamp_field, user_column_count,
};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::PreparedOperator;
use crate::operators::prepare_from_template;
use crate::state::ttl::{Sweeps, Ttl};
use crate::state::{OperatorState, RestoredState, TableReader, TableWriter};

const HELD_TABLE: &str = "held";
/// With a TTL: when each partition was last reached.
const TOUCHED_TABLE: &str = "touched";

/// One held row: its rank order (order value, then arrival) and its user columns, both
/// in Arrow's row format (compact, comparable as bytes), and its event time.
struct Entry {
    order: OwnedRow,
    tiebreak: u64,
    row: OwnedRow,
    ts: i64,
}

/// A partition whose ranks the current batch changed.
struct Changed {
    /// The first rank that changed (0-based).
    from: usize,
    /// The rows its top `n` held before the batch, in rank order, with their times.
    before: Vec<(OwnedRow, i64)>,
}

/// The top-N operator of one subtask.
pub struct TopNOperator {
    input: SchemaRef,
    out_schema: SchemaRef,
    partition: Vec<usize>,
    partition_types: Vec<DataType>,
    /// The ordering columns with their directions (the first decides ties' direction).
    order: Vec<(usize, bool)>,
    descending: bool,
    limit: usize,
    /// Partition key → its best rows, in rank order.
    held: HashMap<Box<[u8]>, Vec<Entry>>,
    keys: RowConverter,
    /// The order column, encoded so that byte order is rank order.
    orders: RowConverter,
    /// The user columns of rows.
    rows: RowConverter,
    /// How many user columns the input has.
    width: usize,
    /// The input is a changelog: every row of a partition is held, retractions remove.
    retracting: bool,
    /// Arrival counter (ties: ascending keeps the earlier row, descending the later).
    seq: u64,
    /// Forget a partition no row reached for this long (event time, past the watermark).
    ttl: Option<Ttl>,
    /// Upsert mode: a rank's new row without the `-U` of its old one.
    upsert: bool,
    /// Per partition, the latest event time of a row offered to it (with a TTL).
    touched: HashMap<Box<[u8]>, i64>,
    sweeps: Sweeps,
}

fn converter(types: &[DataType]) -> Result<RowConverter> {
    RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())
        .map_err(|e| SluiceError::user("top-n: unsupported column type").with_source(e))
}

impl TopNOperator {
    /// Checks the columns against the input schema.
    pub fn prepare(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        limit: usize,
        rank_column: &str,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Self::prepare_ordered(
            partition_by,
            order_by,
            descending,
            &[],
            limit,
            rank_column,
            None,
            input,
        )
    }

    /// [`Self::prepare`] with further ordering columns for rows equal in `order_by`
    /// (`ORDER BY price DESC, date_time ASC`), and a state TTL: a partition no row
    /// reached for `ttl_ms` of event time before the watermark is forgotten.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_ordered(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        then_by: &[(String, bool)],
        limit: usize,
        rank_column: &str,
        ttl_ms: Option<i64>,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        Self::prepare_mode(
            partition_by,
            order_by,
            descending,
            then_by,
            limit,
            rank_column,
            ttl_ms,
            false,
            input,
        )
    }

    /// [`Self::prepare_ordered`]; with `upsert`, a rank's new row goes out alone (`+U`,
    /// no `-U` of the row it replaces), for a consumer keyed by (partition, rank).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_mode(
        partition_by: &[String],
        order_by: &str,
        descending: bool,
        then_by: &[(String, bool)],
        limit: usize,
        rank_column: &str,
        ttl_ms: Option<i64>,
        upsert: bool,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        if limit == 0 {
            return Err(SluiceError::user("top-n needs n >= 1"));
        }
        let index = |name: &str, what: &str| {
            input.index_of(name).map_err(|_| {
                SluiceError::user(format!("top-n: {what} column `{name}` is not in the input"))
            })
        };
        let partition: Vec<usize> = partition_by
            .iter()
            .map(|p| index(p, "partition"))
            .collect::<Result<_>>()?;
        let mut order = vec![(index(order_by, "order")?, descending)];
        for (c, d) in then_by {
            order.push((index(c, "order")?, *d));
        }
        if input.field_with_name(rank_column).is_ok() {
            return Err(SluiceError::user(format!(
                "top-n: the rank column `{rank_column}` clashes with an input column"
            )));
        }
        let partition_types: Vec<DataType> = partition
            .iter()
            .map(|&i| input.field(i).data_type().clone())
            .collect();
        let mut fields: Vec<Arc<Field>> = input.fields()[..user_column_count(input)].to_vec();
        fields.push(Arc::new(Field::new(rank_column, DataType::Int64, false)));
        fields.push(Arc::new(row_kind_field()));
        fields.push(Arc::new(timestamp_field()));
        let out_schema: SchemaRef = Arc::new(Schema::new(fields));
        let mut template = Self::build(
            Arc::clone(input),
            Arc::clone(&out_schema),
            partition,
            partition_types,
            order,
            descending,
            limit,
        )?;
        template.ttl = Ttl::of(ttl_ms);
        template.upsert = upsert;
        Ok(prepare_from_template(template, out_schema, Self::fresh))
    }

    fn build(
        input: SchemaRef,
        out_schema: SchemaRef,
        partition: Vec<usize>,
        partition_types: Vec<DataType>,
        order: Vec<(usize, bool)>,
        descending: bool,
        limit: usize,
    ) -> Result<Self> {
        let order_fields = super::ranking_fields(&input, &order);
        let width = user_column_count(&input);
        let all: Vec<DataType> = input.fields()[..width]
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Self {
            width,
            retracting: is_updating(&input),
            keys: converter(&partition_types)?,
            orders: RowConverter::new(order_fields).map_err(|e| {
                SluiceError::user("top-n: cannot order by that type").with_source(e)
            })?,
            rows: converter(&all)?,
            input,
            out_schema,
            partition,
            partition_types,
            order,
            descending,
            limit,
            held: HashMap::new(),
            upsert: false,
            seq: 0,
            ttl: None,
            touched: HashMap::new(),
            sweeps: Sweeps::default(),
        })
    }

    fn fresh(&self) -> Result<Self> {
        let mut op = Self::build(
            Arc::clone(&self.input),
            Arc::clone(&self.out_schema),
            self.partition.clone(),
            self.partition_types.clone(),
            self.order.clone(),
            self.descending,
            self.limit,
        )?;
        op.ttl = self.ttl;
        op.upsert = self.upsert;
        Ok(op)
    }

    /// The schema of checkpointed rows: the user columns and `_timestamp`.
    fn held_schema(&self) -> SchemaRef {
        let mut fields = self.input.fields()[..self.width].to_vec();
        fields.push(Arc::new(timestamp_field()));
        Arc::new(Schema::new(fields))
    }

    fn partition_keys(&self, data: &RecordBatch) -> Result<Option<arrow::row::Rows>> {
        if self.partition.is_empty() {
            return Ok(None);
        }
        let cols: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|&i| Arc::clone(data.column(i)))
            .collect();
        Ok(Some(self.keys.convert_columns(&cols)?))
    }

    /// Offers every row of `data` to its partition's list (a retraction takes its row
    /// out); returns, per touched partition, the first rank that changed and the rows
    /// its top held before.
    fn absorb(&mut self, data: &RecordBatch) -> Result<HashMap<Box<[u8]>, Changed>> {
        let keys = self.partition_keys(data)?;
        let order_cols: Vec<ArrayRef> = self
            .order
            .iter()
            .map(|&(i, _)| Arc::clone(data.column(i)))
            .collect();
        let orders = self.orders.convert_columns(&order_cols)?;
        let rows = self.rows.convert_columns(&data.columns()[..self.width])?;
        let ts = data
            .column(data.num_columns() - 1)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .ok_or_else(|| SluiceError::internal("top-n input lost its event time"))?
            .clone();
        let kinds = match self.retracting {
            true => Some(
                data.column(data.num_columns() - 2)
                    .as_any()
                    .downcast_ref::<Int8Array>()
                    .ok_or_else(|| SluiceError::internal("top-n input lost its row kinds"))?
                    .clone(),
            ),
            false => None,
        };
        let limit = self.limit;
        let mut changed: HashMap<Box<[u8]>, Changed> = HashMap::new();
        for i in 0..data.num_rows() {
            self.seq += 1;
            let tiebreak = if self.descending {
                u64::MAX - self.seq
            } else {
                self.seq
            };
            let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(i).data());
            let t = ts.value(i);
            if self.ttl.is_some() {
                match self.touched.get_mut(key) {
                    Some(last) => *last = (*last).max(t),
                    None => {
                        self.touched.insert(key.into(), t);
                    }
                }
            }
            let order = orders.row(i);
            let row = rows.row(i);
            let add = kinds
                .as_ref()
                .is_none_or(|k| RowKind::from_code(k.value(i)).is_none_or(RowKind::is_addition));
            let list = match self.held.get_mut(key) {
                Some(l) => l,
                None if !add => continue,
                None => self.held.entry(key.into()).or_default(),
            };
            let at = match add {
                true => list.partition_point(|e| (e.order.row(), e.tiebreak) < (order, tiebreak)),
                // The held row with these values, among those of its order value.
                false => {
                    let first = list.partition_point(|e| e.order.row() < order);
                    let found = list[first..]
                        .iter()
                        .take_while(|e| e.order.row() == order)
                        .position(|e| e.row.row() == row);
                    match found {
                        Some(p) => first + p,
                        None => continue,
                    }
                }
            };
            if at < limit {
                match changed.get_mut(key) {
                    Some(c) => c.from = c.from.min(at),
                    None => {
                        let before = list
                            .iter()
                            .take(limit)
                            .map(|e| (e.row.clone(), e.ts))
                            .collect();
                        changed.insert(key.into(), Changed { from: at, before });
                    }
                }
            } else if !self.retracting {
                continue;
            }
            match add {
                true => {
                    list.insert(
                        at,
                        Entry {
                            order: order.owned(),
                            tiebreak,
                            row: row.owned(),
                            ts: t,
                        },
                    );
                    if !self.retracting {
                        list.truncate(limit);
                    }
                }
                false => {
                    list.remove(at);
                    if list.is_empty() {
                        self.held.remove(key);
                    }
                }
            }
        }
        Ok(changed)
    }

    /// The changes of the top ranks of the partitions in `changed`, from their first
    /// changed rank on: the row a rank held taken back, its new row added.
    fn emit(&self, changed: &HashMap<Box<[u8]>, Changed>) -> Result<Option<RecordBatch>> {
        let mut picked = Vec::new();
        let mut ranks = Vec::new();
        let mut kinds = Vec::new();
        let mut times = Vec::new();
        let empty = Vec::new();
        for (key, c) in changed {
            let list = self.held.get(key).unwrap_or(&empty);
            let now = list.len().min(self.limit);
            for r in c.from..now.max(c.before.len()) {
                let old = c.before.get(r);
                let new = list.get(r).filter(|_| r < now);
                if let (Some((o, _)), Some(n)) = (old, new)
                    && *o == n.row
                {
                    continue;
                }
                let rank = r as i64 + 1;
                // In upsert mode the rank's new row alone replaces the old one.
                if let Some((row, ts)) = old
                    && !(self.upsert && new.is_some())
                {
                    picked.push(row.row());
                    ranks.push(rank);
                    times.push(*ts);
                    kinds.push(match new {
                        Some(_) => RowKind::UpdateBefore,
                        None => RowKind::Delete,
                    });
                }
                if let Some(e) = new {
                    picked.push(e.row.row());
                    ranks.push(rank);
                    times.push(e.ts);
                    kinds.push(match old {
                        Some(_) => RowKind::UpdateAfter,
                        None => RowKind::Insert,
                    });
                }
            }
        }
        if picked.is_empty() {
            return Ok(None);
        }
        let mut columns = self.rows.convert_rows(picked)?;
        columns.push(Arc::new(Int64Array::from(ranks)));
        columns.push(Arc::new(Int8Array::from_iter_values(
            kinds.iter().map(|k| k.code()),
        )));
        columns.push(Arc::new(arrow::array::TimestampMillisecondArray::from(
            times,
        )));
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.out_schema),
            columns,
        )?))
    }
}

#[async_trait]
impl Operator for TopNOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.out_schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let changed = self.absorb(&batch.data)?;
        if let Some(data) = self.emit(&changed)? {
            out.collect(batch.with_data(data)).await?;
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: sluice_types::Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<sluice_types::Watermark>> {
        if let (Some(ttl), Some(t)) = (self.ttl, watermark.event_time())
            && self.sweeps.due(t, ttl.ms())
        {
            let held = &mut self.held;
            self.touched.retain(|key, last| {
                let gone = ttl.expired(last, t);
                if gone {
                    held.remove(key);
                }
                !gone
            });
        }
        Ok(Some(watermark))
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        if self.ttl.is_some() && !self.touched.is_empty() && !self.partition.is_empty() {
            // When each partition was last reached, for its TTL.
            let parser = self.keys.parser();
            let entries: Vec<(&Box<[u8]>, &i64)> = self.touched.iter().collect();
            TableWriter::keyed(
                Some(&self.keys),
                entries.iter().map(|(k, _)| parser.parse(k)),
                entries.len(),
            )?
            .int64("last", entries.iter().map(|(_, t)| **t).collect())
            .finish(TOUCHED_TABLE, ctx.max_parallelism, &mut state)?;
        }
        // Rank order is kept: rows go out per partition, best first, as inserts.
        let entries: Vec<&Entry> = self.held.values().flatten().collect();
        if entries.is_empty() {
            return Ok(state);
        }
        let mut columns = self
            .rows
            .convert_rows(entries.iter().map(|e| e.row.row()))?;
        columns.push(Arc::new(
            arrow::array::TimestampMillisecondArray::from_iter_values(entries.iter().map(|e| e.ts)),
        ));
        let all = RecordBatch::try_new(self.held_schema(), columns)?;
        TableWriter::rows_of(&all, &self.partition).finish(
            HELD_TABLE,
            ctx.max_parallelism,
            &mut state,
        )?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(HELD_TABLE) {
            let b = RecordBatch::try_new(self.held_schema(), b.columns().to_vec())?;
            // Held rows come back as inserts, in rank order.
            let retracting = std::mem::replace(&mut self.retracting, false);
            let limit = std::mem::replace(&mut self.limit, usize::MAX);
            let r = self.absorb(&b);
            (self.retracting, self.limit) = (retracting, limit);
            r?;
        }
        for b in state.table(TOUCHED_TABLE) {
            let nkeys = b.num_columns().saturating_sub(1);
            let mut r = TableReader::new(b, "top-n", Some(&self.keys), nkeys, None)?;
            let last = r.int64()?;
            for i in 0..r.num_rows() {
                let key = r.key(i).expect("invariant: read with a converter");
                self.touched.insert(key.as_ref().into(), last.value(i));
            }
        }
        Ok(())
    }
}

impl TopNOperator {
    /// The registered constructor of `top-n` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::TopN {
            partition_by,
            order_by,
            descending,
            then_by,
            limit,
            rank_column,
            ttl_ms,
            upsert,
        } = kind
        else {
            return Err(crate::operators::wrong_node(kind, "top-n"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare_mode(
            partition_by,
            order_by,
            *descending,
            then_by,
            *limit,
            rank_column,
            *ttl_ms,
            *upsert,
            input,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::run_prepared;

    fn batch(rows: &[(i64, i64, i64)]) -> Batch {
        crate::operators::test_util::int_batch(["k", "v"], rows)
    }

    fn rows(out: &[Batch]) -> Vec<(i64, i64, i64)> {
        let mut v = Vec::new();
        for b in out {
            let c = |i: usize| {
                b.data
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            for r in 0..b.num_rows() {
                v.push((c(0).value(r), c(1).value(r), c(2).value(r)));
            }
        }
        v
    }

    #[tokio::test]
    async fn emits_the_ranks_that_change() {
        let schema = batch(&[]).data.schema();
        let p = TopNOperator::prepare(&["k".into()], "v", true, 2, "rn", &schema).unwrap();
        let out = run_prepared(
            &p,
            vec![
                batch(&[(1, 5, 0), (1, 7, 1), (2, 1, 2)]),
                batch(&[(1, 6, 3)]), // rank 2 changes: 6 replaces 5
                batch(&[(1, 4, 4)]), // no change
                batch(&[(1, 9, 5)]), // ranks 1 and 2 change
            ],
        )
        .await
        .unwrap();
        // 3 inserts; rank 2 updated (-U 5, +U 6); ranks 1 and 2 updated (9 pushes 7 down).
        let kinds: Vec<&str> = out
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(|i| b.row_kind(i).short()))
            .collect();
        assert_eq!(
            kinds,
            ["+I", "+I", "+I", "-U", "+U", "-U", "+U", "-U", "+U"],
            "{:?}",
            rows(&out)
        );
        assert_eq!(
            crate::operators::test_util::materialize(&out),
            ["1,7,2", "1,9,1", "2,1,1"]
        );
    }

    #[tokio::test]
    async fn deduplication_keeps_the_first_or_the_last_row() {
        let schema = batch(&[]).data.schema();
        let first =
            TopNOperator::prepare(&["k".into()], "_timestamp", false, 1, "rn", &schema).unwrap();
        let input = || {
            vec![
                batch(&[(1, 10, 5), (1, 11, 5)]),
                batch(&[(1, 12, 6), (2, 13, 1)]),
            ]
        };
        let out = run_prepared(&first, input()).await.unwrap();
        assert_eq!(rows(&out), vec![(1, 10, 1), (2, 13, 1)]);
        let last =
            TopNOperator::prepare(&["k".into()], "_timestamp", true, 1, "rn", &schema).unwrap();
        let out = run_prepared(&last, input()).await.unwrap();
        // the tie at time 5 keeps the later row (11); then 12 replaces it
        // One batch's changes come out as one: 10 then 11 in a batch is +I 11.
        assert_eq!(rows(&out).len(), 4, "+I 11, -U 11, +U 12, +I 13");
        assert_eq!(
            crate::operators::test_util::materialize(&out),
            ["1,12,1", "2,13,1"]
        );
    }

    #[tokio::test]
    async fn a_partition_idle_past_its_ttl_is_forgotten_even_across_a_checkpoint() {
        let schema = batch(&[]).data.schema();
        let p = TopNOperator::prepare_ordered(
            &["k".into()],
            "_timestamp",
            false,
            &[],
            1,
            "rn",
            Some(100),
            &schema,
        )
        .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("topn")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = crate::operator::VecCollector::default();
        // Deduplication: key 1 first seen at 10, key 2 at 150.
        op.process_batch(batch(&[(1, 10, 10), (2, 20, 150)]), &mut ctx, &mut out)
            .await
            .unwrap();
        op.on_watermark(sluice_types::Watermark::EventTime(105), &mut ctx, &mut out)
            .await
            .unwrap();
        // Key 1 still remembered (10 + 100 >= 105): a repeat is no news.
        op.process_batch(batch(&[(1, 11, 106)]), &mut ctx, &mut out)
            .await
            .unwrap();
        let mut first = rows(&out.batches);
        first.sort();
        assert_eq!(first, vec![(1, 10, 1), (2, 20, 1)]);
        let state = op
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("topn")).unwrap();
        op.restore(
            crate::operators::test_util::restored(&state, 0, 1),
            &mut ctx,
        )
        .await
        .unwrap();
        // Key 1 was last reached at 106 (kept through the checkpoint): forgotten at 207.
        let mut later = crate::operator::VecCollector::default();
        op.on_watermark(
            sluice_types::Watermark::EventTime(207),
            &mut ctx,
            &mut later,
        )
        .await
        .unwrap();
        op.process_batch(batch(&[(1, 12, 300), (2, 21, 300)]), &mut ctx, &mut later)
            .await
            .unwrap();
        assert_eq!(
            rows(&later.batches),
            vec![(1, 12, 1)],
            "key 1 starts over; key 2 (reached at 150) is still remembered"
        );
    }

    #[tokio::test]
    async fn over_an_updating_input_a_row_taken_back_lets_the_next_one_in() {
        use crate::operators::test_util::{change_batch, changes};
        use sluice_types::RowKind::{Delete as D, Insert as I};
        let schema = change_batch(["k", "v"], &[]).data.schema();
        let p = TopNOperator::prepare(&["k".into()], "v", true, 2, "rn", &schema).unwrap();
        let feed = [
            vec![(I, 1, 5), (I, 1, 7), (I, 1, 3)],
            vec![(D, 1, 7)],
            vec![(D, 1, 5), (D, 1, 9)],
            vec![(D, 1, 3)],
        ];
        // Through a checkpoint before the third batch: the row below the top (3) is kept too.
        let out = crate::operators::test_util::feed_changes_through_restore(&p, &feed, 2).await;
        assert_eq!(
            changes(&out),
            [
                "+I 1,7,1", "+I 1,5,2", "-U 1,7,1", "+U 1,5,1", "-U 1,5,2", "+U 1,3,2", "-U 1,5,1",
                "+U 1,3,1", "-D 1,3,2", "-D 1,3,1",
            ]
        );
        assert!(crate::operators::test_util::materialize(&out).is_empty());
    }

    #[tokio::test]
    async fn in_upsert_mode_a_rank_gets_its_new_row_alone() {
        use crate::operators::test_util::{change_batch, changes};
        use sluice_types::RowKind::{Delete as D, Insert as I};
        let schema = change_batch(["k", "v"], &[]).data.schema();
        let p =
            TopNOperator::prepare_mode(&["k".into()], "v", true, &[], 2, "rn", None, true, &schema)
                .unwrap();
        let feed = [
            vec![(I, 1, 5), (I, 1, 7), (I, 1, 3)],
            vec![(D, 1, 7)],
            vec![(D, 1, 5), (D, 1, 9)],
            vec![(D, 1, 3)],
        ];
        let out = crate::operators::test_util::feed_changes_through_restore(&p, &feed, 2).await;
        // The same ranks as above without the -U rows: each (k, rn) is replaced, and a
        // rank left empty is deleted.
        assert_eq!(
            changes(&out),
            [
                "+I 1,7,1", "+I 1,5,2", "+U 1,5,1", "+U 1,3,2", "+U 1,3,1", "-D 1,3,2", "-D 1,3,1"
            ]
        );
    }
}
