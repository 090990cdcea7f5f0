//! OVER aggregates over an updating input (`agg(x) OVER (PARTITION BY k ORDER BY c …)`
//! over a GROUP BY, a join of one, a CDC source): the output, materialized, is the OVER
//! of the materialized input, as a batch query would compute it over the table as it
//! stands.
//!
//! ```text
//!  per partition: its rows in order (ORDER BY columns, ties by the row's values)
//!  +I / +U row ──insert──┐                      ┌─> +I for a new row
//!  -U / -D row ──remove──┴─> rows whose frame   ├─> -U old, +U new for a row whose
//!                            changed: recompute ┘   aggregates changed
//!                                                   -D for a removed row
//! ```
//!
//! Rows do not wait for a watermark: there is no event-time order to wait for, the order
//! is the ORDER BY's and every change is applied where it falls. A change touches the rows
//! whose frame holds its place: the next `n` rows for `ROWS n PRECEDING`, the rows within
//! the interval after it for a RANGE frame, every later row for an unbounded frame. The
//! rows are the state; each row's last emitted aggregates are recomputed from them on
//! restore (they are a function of the rows).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int8Array, Int64Array, RecordBatch, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_expr::{Accumulator, Expr};
use sluice_plan::{OverFrame, OverOrder};
use sluice_types::{
    Batch, CheckpointBarrier, Result, RowKind, SluiceError, is_updating, user_column_count,
};

use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::aggregates::retract::{apply_row, retractable, row_args};
use crate::operators::aggregates::{PlannedAggregate, PlannedAggregates};
use crate::operators::{PreparedOperator, prepare_from_template};
use crate::state::{OperatorState, RestoredState};

/// The rows of every partition, with their event times.
const ROWS_TABLE: &str = "rows";

/// A row's place in its partition: its ORDER BY values, then all its values (ties are
/// broken the same way whatever the arrival order), then which copy of equal rows it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    order: Arc<[u8]>,
    row: Arc<[u8]>,
    copy: u32,
}

/// A row held in a partition.
struct Held {
    /// Its event time (the output row's).
    time: i64,
    /// A RANGE interval frame: the ORDER BY value in ms (NULL: `None`).
    value: Option<i64>,
    /// Per aggregate, its argument values.
    args: Vec<Vec<ScalarValue>>,
    /// The aggregates last emitted with it (`None`: not emitted yet).
    out: Option<Vec<ScalarValue>>,
}

type Partition = BTreeMap<Place, Held>;

/// A place a change inserted or removed a row at, with the row's RANGE value.
type Touched = (Place, Option<i64>);

/// One change to emit: a row (by its encoded values), its kind, time and aggregates.
struct Emit {
    row: Arc<[u8]>,
    kind: RowKind,
    time: i64,
    values: Vec<ScalarValue>,
}

/// The OVER aggregate of an updating input, one subtask.
pub struct ChangelogOverOperator {
    input: SchemaRef,
    schema: SchemaRef,
    width: usize,
    partition_by: Vec<usize>,
    order_by: Vec<usize>,
    aggregates: Vec<PlannedAggregate>,
    arg_types: Vec<Vec<DataType>>,
    frame: OverFrame,
    partition_rows: RowConverter,
    order_rows: RowConverter,
    user_rows: RowConverter,
    orders: Vec<OverOrder>,
    partitions: HashMap<Box<[u8]>, Partition>,
}

fn converter(fields: Vec<SortField>) -> Result<RowConverter> {
    RowConverter::new(fields).map_err(|e| {
        SluiceError::user("OVER over an updating input: unsupported column type").with_source(e)
    })
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("OVER aggregate computation failed").with_source(e)
}

impl ChangelogOverOperator {
    /// Checks partition and order columns and the aggregates against the input.
    pub fn prepare(
        partition_by: &[String],
        order_by: &[OverOrder],
        aggregates: &[Expr],
        frame: OverFrame,
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        if !is_updating(input) {
            return Err(SluiceError::internal(
                "the OVER aggregate of changes reads an updating stream",
            ));
        }
        let planned = PlannedAggregates::plan(partition_by, aggregates, input, &[])?;
        let arg_types = super::argument_types(&planned.aggregates, input)?;
        for (a, t) in planned.aggregates.iter().zip(&arg_types) {
            retractable(a, t)?;
        }
        let width = user_column_count(input);
        let column = |name: &str| -> Result<usize> {
            input.fields()[..width]
                .iter()
                .position(|f| f.name() == name)
                .ok_or_else(|| {
                    SluiceError::user(format!("ORDER BY column `{name}` is not a column"))
                })
        };
        let order_idx: Vec<usize> = order_by
            .iter()
            .map(|o| column(&o.column))
            .collect::<Result<_>>()?;
        if order_idx.is_empty() {
            return Err(SluiceError::user("an OVER aggregate needs an ORDER BY"));
        }
        if let OverFrame::Range { .. } = frame {
            let ty = input.field(order_idx[0]).data_type();
            if order_idx.len() != 1
                || order_by[0].descending
                || !matches!(ty, DataType::Timestamp(..))
            {
                return Err(SluiceError::user(
                    "a RANGE frame with an interval orders by one timestamp column, ascending",
                ));
            }
        }
        let mut fields: Vec<Arc<Field>> = input.fields()[..width].to_vec();
        for f in &planned.aggregate_fields {
            if fields.iter().any(|x| x.name() == f.name()) {
                return Err(SluiceError::user(format!(
                    "OVER aggregate `{}` has the name of an input column; give it an alias",
                    f.name()
                )));
            }
            fields.push(Arc::new(f.as_ref().clone().with_nullable(true)));
        }
        fields.extend(input.fields()[width..].iter().cloned());
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let template = Self {
            input: Arc::clone(input),
            schema: Arc::clone(&schema),
            width,
            partition_by: planned.key_indices,
            order_by: order_idx,
            aggregates: planned.aggregates,
            arg_types,
            frame,
            partition_rows: converter(Vec::new())?,
            order_rows: converter(Vec::new())?,
            user_rows: converter(Vec::new())?,
            orders: order_by.to_vec(),
            partitions: HashMap::new(),
        };
        Ok(prepare_from_template(
            Self::fresh(&template)?,
            schema,
            Self::fresh,
        ))
    }

    /// An empty operator configured as `t`.
    fn fresh(t: &Self) -> Result<Self> {
        let sort = |i: usize| SortField::new(t.input.field(i).data_type().clone());
        let order: Vec<SortField> = t
            .order_by
            .iter()
            .zip(&t.orders)
            .map(|(&i, o)| {
                SortField::new_with_options(
                    t.input.field(i).data_type().clone(),
                    arrow::compute::SortOptions {
                        descending: o.descending,
                        nulls_first: o.nulls_first,
                    },
                )
            })
            .collect();
        Ok(Self {
            input: Arc::clone(&t.input),
            schema: Arc::clone(&t.schema),
            width: t.width,
            partition_by: t.partition_by.clone(),
            order_by: t.order_by.clone(),
            aggregates: t.aggregates.clone(),
            arg_types: t.arg_types.clone(),
            frame: t.frame,
            partition_rows: converter(t.partition_by.iter().map(|&i| sort(i)).collect())?,
            order_rows: converter(order)?,
            user_rows: converter((0..t.width).map(sort).collect())?,
            orders: t.orders.clone(),
            partitions: HashMap::new(),
        })
    }

    /// The registered constructor of `over … of changes` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let sluice_plan::NodeKind::ChangelogOverAggregate {
            partition_by,
            order_by,
            aggregates,
            frame,
        } = kind
        else {
            return Err(crate::operators::wrong_node(kind, "OVER of changes"));
        };
        let input = crate::operators::single_input(inputs)?;
        Self::prepare(partition_by, order_by, aggregates, *frame, &input)
    }

    /// Applies the changes of `batch` (of the input's schema); returns what to emit.
    fn apply(&mut self, batch: &Batch) -> Result<Vec<Emit>> {
        let data = &batch.data;
        let cols = |idx: &[usize]| -> Vec<ArrayRef> {
            idx.iter().map(|&i| Arc::clone(data.column(i))).collect()
        };
        // Without PARTITION BY every row is in the one partition (the empty key).
        let parts = match self.partition_by.is_empty() {
            true => None,
            false => Some(
                self.partition_rows
                    .convert_columns(&cols(&self.partition_by))?,
            ),
        };
        let orders = self.order_rows.convert_columns(&cols(&self.order_by))?;
        let rows = self
            .user_rows
            .convert_columns(&data.columns()[..self.width])?;
        let values: Option<Int64Array> = match self.frame {
            OverFrame::Range { .. } => {
                let c = data.column(self.order_by[0]);
                let ms =
                    arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                let v = arrow::compute::cast(&ms, &DataType::Int64)?;
                Some(
                    v.as_any()
                        .downcast_ref::<Int64Array>()
                        .cloned()
                        .ok_or_else(|| {
                            SluiceError::internal(
                                "an ORDER BY timestamp did not become milliseconds",
                            )
                        })?,
                )
            }
            _ => None,
        };
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.args.iter().map(|e| evaluate(e, batch)).collect())
            .collect::<Result<_>>()?;
        let times = batch.timestamps();
        let mut emit = Vec::new();
        // Per partition, the places changed (with their RANGE values).
        let mut touched: HashMap<Box<[u8]>, Vec<Touched>> = HashMap::new();
        for (i, kind) in batch.kinds().enumerate() {
            let part: &[u8] = match &parts {
                Some(parts) => parts.row(i).data(),
                None => &[],
            };
            if !self.partitions.contains_key(part) {
                self.partitions.insert(part.into(), Partition::new());
            }
            let p = self
                .partitions
                .get_mut(part)
                .expect("invariant: inserted above");
            let order: Arc<[u8]> = orders.row(i).as_ref().into();
            let row: Arc<[u8]> = rows.row(i).as_ref().into();
            let first = Place {
                order,
                row,
                copy: 0,
            };
            let last_copy = p
                .range(
                    first.clone()..=Place {
                        copy: u32::MAX,
                        ..first.clone()
                    },
                )
                .next_back()
                .map(|(k, _)| k.copy);
            let value = values
                .as_ref()
                .and_then(|v| v.is_valid(i).then(|| v.value(i)));
            let place = match (kind.is_addition(), last_copy) {
                (true, last) => {
                    let place = Place {
                        copy: last.map_or(0, |c| c + 1),
                        ..first
                    };
                    let held = Held {
                        time: times.value(i),
                        value,
                        args: row_args(&args, i)?,
                        out: None,
                    };
                    p.insert(place.clone(), held);
                    place
                }
                (false, Some(copy)) => {
                    let place = Place { copy, ..first };
                    if let Some(Held { out: Some(old), .. }) = p.remove(&place) {
                        emit.push(Emit {
                            row: Arc::clone(&place.row),
                            kind: RowKind::Delete,
                            time: times.value(i),
                            values: old,
                        });
                    }
                    place
                }
                // Taking back a row that is not there: nothing to take back.
                (false, None) => continue,
            };
            touched.entry(part.into()).or_default().push((place, value));
        }
        for (part, places) in touched {
            let Some(p) = self.partitions.get_mut(&part) else {
                continue;
            };
            for (from, to) in merged(
                places
                    .iter()
                    .filter_map(|(k, v)| affected(self.frame, p, k, *v)),
            ) {
                for (place, values) in
                    recompute(self.frame, &self.aggregates, &self.arg_types, p, &from, &to)?
                {
                    let held = p
                        .get_mut(&place)
                        .expect("invariant: recomputed rows are held");
                    match held.out.replace(values.clone()) {
                        None => emit.push(Emit {
                            row: Arc::clone(&place.row),
                            kind: RowKind::Insert,
                            time: held.time,
                            values,
                        }),
                        Some(old) if old != values => {
                            emit.push(Emit {
                                row: Arc::clone(&place.row),
                                kind: RowKind::UpdateBefore,
                                time: held.time,
                                values: old,
                            });
                            emit.push(Emit {
                                row: Arc::clone(&place.row),
                                kind: RowKind::UpdateAfter,
                                time: held.time,
                                values,
                            });
                        }
                        Some(_) => {}
                    }
                }
            }
            if p.is_empty() {
                self.partitions.remove(&part);
            }
        }
        Ok(emit)
    }

    /// The changes as a batch of the output schema.
    fn batch(&self, emit: &[Emit]) -> Result<RecordBatch> {
        let parser = self.user_rows.parser();
        let mut columns = self
            .user_rows
            .convert_rows(emit.iter().map(|e| parser.parse(&e.row)))?;
        for (a, f) in self.schema.fields()[self.width..self.width + self.aggregates.len()]
            .iter()
            .enumerate()
        {
            let array = ScalarValue::iter_to_array(emit.iter().map(|e| e.values[a].clone()))
                .map_err(df_err)?;
            columns.push(arrow::compute::cast(&array, f.data_type())?);
        }
        columns.push(Arc::new(Int8Array::from_iter_values(
            emit.iter().map(|e| e.kind.code()),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            emit.iter().map(|e| e.time),
        )));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// The first and last place (inclusive) whose frame holds `place` (changed, with RANGE
/// value `value`), in `p` as it is now; `None` if no row's frame holds it.
fn affected(
    frame: OverFrame,
    p: &Partition,
    place: &Place,
    value: Option<i64>,
) -> Option<(Place, Place)> {
    // Peers of a RANGE frame start with the first row of their ORDER BY values.
    let start = |place: &Place| Place {
        order: Arc::clone(&place.order),
        row: Arc::from(&[][..]),
        copy: 0,
    };
    let last = || p.last_key_value().map(|(k, _)| k.clone());
    match frame {
        OverFrame::Rows { preceding } => {
            let (from, _) = p.range(place.clone()..).next()?;
            let to = p
                .range(from.clone()..)
                .nth(preceding as usize)
                .map(|(k, _)| k.clone());
            Some((from.clone(), to.or_else(last)?))
        }
        OverFrame::UnboundedRows => Some((p.range(place.clone()..).next()?.0.clone(), last()?)),
        OverFrame::UnboundedRange => Some((p.range(start(place)..).next()?.0.clone(), last()?)),
        OverFrame::Range { preceding_ms } => {
            let mut after = p.range(start(place)..);
            let (from, _) = after.next()?;
            let within = |h: &Held| match (h.value, value) {
                (Some(x), Some(v)) => x <= v.saturating_add(preceding_ms),
                (None, None) => true,
                _ => false,
            };
            let to = p
                .range(from.clone()..)
                .take_while(|(_, h)| within(h))
                .last()
                .map(|(k, _)| k.clone())?;
            Some((from.clone(), to))
        }
    }
}

/// Overlapping ranges of places joined.
fn merged(ranges: impl Iterator<Item = (Place, Place)>) -> Vec<(Place, Place)> {
    let mut all: Vec<(Place, Place)> = ranges.collect();
    all.sort();
    let mut out: Vec<(Place, Place)> = Vec::with_capacity(all.len());
    for (from, to) in all {
        match out.last_mut() {
            Some((_, end)) if from <= *end => {
                if to > *end {
                    *end = to;
                }
            }
            _ => out.push((from, to)),
        }
    }
    out
}

/// The aggregates of every row from `from` to `to` (inclusive; whole peer groups for RANGE
/// frames), sliding one accumulator along.
fn recompute(
    frame: OverFrame,
    aggregates: &[PlannedAggregate],
    arg_types: &[Vec<DataType>],
    p: &Partition,
    from: &Place,
    to: &Place,
) -> Result<Vec<(Place, Vec<ScalarValue>)>> {
    let mut accs: Vec<Box<dyn Accumulator>> = aggregates
        .iter()
        .zip(arg_types)
        .map(|(a, t)| retractable(a, t))
        .collect::<Result<_>>()?;
    let evaluate = |accs: &mut [Box<dyn Accumulator>]| -> Result<Vec<ScalarValue>> {
        accs.iter_mut()
            .map(|a| a.evaluate().map_err(df_err))
            .collect()
    };
    let mut window: VecDeque<&Held> = VecDeque::new();
    let mut out = Vec::new();
    match frame {
        OverFrame::Rows { .. } | OverFrame::UnboundedRows => {
            let bound = match frame {
                OverFrame::Rows { preceding } => Some(preceding as usize),
                _ => None,
            };
            let before = p.range(..from.clone()).rev();
            let prime: Vec<&Held> = match bound {
                Some(n) => before.take(n).map(|(_, h)| h).collect(),
                None => before.map(|(_, h)| h).collect(),
            };
            for h in prime.into_iter().rev() {
                apply_row(&mut accs, &h.args, true)?;
                window.push_back(h);
            }
            for (place, h) in p.range(from.clone()..=to.clone()) {
                apply_row(&mut accs, &h.args, true)?;
                window.push_back(h);
                if let Some(n) = bound {
                    while window.len() > n + 1 {
                        let old = window.pop_front().expect("invariant: longer than n + 1");
                        apply_row(&mut accs, &old.args, false)?;
                    }
                }
                out.push((place.clone(), evaluate(&mut accs)?));
            }
        }
        OverFrame::Range { .. } | OverFrame::UnboundedRange => {
            let preceding = match frame {
                OverFrame::Range { preceding_ms } => Some(preceding_ms),
                _ => None,
            };
            // Whether a row of value `x` is in the frame of rows of value `v`.
            let in_frame = |x: Option<i64>, v: Option<i64>| match (preceding, x, v) {
                (None, _, _) => true,
                (Some(r), Some(x), Some(v)) => x >= v.saturating_sub(r),
                (Some(_), None, None) => true,
                (Some(_), _, _) => false,
            };
            let first = p.get(from).map(|h| h.value);
            let prime: Vec<&Held> = p
                .range(..from.clone())
                .rev()
                .map(|(_, h)| h)
                .take_while(|h| first.is_some_and(|v| in_frame(h.value, v)))
                .collect();
            for h in prime.into_iter().rev() {
                apply_row(&mut accs, &h.args, true)?;
                window.push_back(h);
            }
            let mut rows = p.range(from.clone()..=to.clone()).peekable();
            while let Some((place, h)) = rows.next() {
                let mut group = vec![place.clone()];
                apply_row(&mut accs, &h.args, true)?;
                window.push_back(h);
                while let Some((next, nh)) = rows.next_if(|(k, _)| k.order == place.order) {
                    group.push(next.clone());
                    apply_row(&mut accs, &nh.args, true)?;
                    window.push_back(nh);
                }
                while window.front().is_some_and(|w| !in_frame(w.value, h.value)) {
                    let old = window.pop_front().expect("invariant: non-empty");
                    apply_row(&mut accs, &old.args, false)?;
                }
                let values = evaluate(&mut accs)?;
                out.extend(group.into_iter().map(|k| (k, values.clone())));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Operator for ChangelogOverOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let emit = self.apply(&batch)?;
        if emit.is_empty() {
            return Ok(());
        }
        let data = self.batch(&emit)?;
        out.collect(batch.with_data(data)).await
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        if self.partitions.is_empty() {
            return Ok(state);
        }
        let parser = self.user_rows.parser();
        let held = || self.partitions.values().flat_map(|p| p.iter());
        crate::state::timed_rows::write_timed_rows(
            &self.user_rows,
            held().map(|(k, _)| parser.parse(&k.row)),
            held().map(|(_, h)| h.time),
            &self.input,
            &self.partition_by,
            ROWS_TABLE,
            ctx.max_parallelism,
            &mut state,
        )?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        for b in state.table(ROWS_TABLE) {
            let (user, times) = crate::state::timed_rows::read_timed_rows(b, self.width, "OVER")?;
            let kinds = Int8Array::from_iter_values(std::iter::repeat_n(
                RowKind::Insert.code(),
                user.num_rows(),
            ));
            let rows = Batch::from_changes(&user, kinds, times, sluice_types::IngestTime::at(0))?;
            let rows = rows.with_data(RecordBatch::try_new(
                Arc::clone(&self.input),
                rows.data.columns().to_vec(),
            )?);
            // The aggregates they were last emitted with are recomputed, not emitted.
            self.apply(&rows)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use crate::operators::test_util;
    use arrow::array::StringArray;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{count, sum};

    /// Changes of (partition, order, value) rows.
    fn changes(rows: &[(&str, i64, i64, RowKind)]) -> Batch {
        let user = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("o", DataType::Int64, false),
                Field::new("v", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        Batch::from_changes(
            &user,
            Int8Array::from_iter_values(rows.iter().map(|r| r.3.code())),
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.1)),
            sluice_types::IngestTime::at(0),
        )
        .unwrap()
    }

    fn make(frame: OverFrame, schema: &SchemaRef) -> PreparedOperator {
        ChangelogOverOperator::prepare(
            &["k".into()],
            &[OverOrder {
                column: "o".into(),
                descending: false,
                nulls_first: false,
            }],
            &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
            frame,
            schema,
        )
        .unwrap()
    }

    /// The output changelog materialized: the rows it holds, sorted.
    fn materialized(out: &[Batch]) -> Vec<String> {
        use arrow::util::display::array_value_to_string;
        let mut held: BTreeMap<String, i64> = BTreeMap::new();
        for b in out {
            let n = b.num_user_columns();
            for (r, kind) in b.kinds().enumerate() {
                let row = (0..n)
                    .map(|c| array_value_to_string(b.data.column(c), r).unwrap())
                    .collect::<Vec<_>>()
                    .join(",");
                let e = held.entry(row.clone()).or_default();
                *e += if kind.is_addition() { 1 } else { -1 };
                assert!(
                    *e >= 0,
                    "{} {row}: takes back a row never emitted",
                    kind.short()
                );
                if *e == 0 {
                    held.remove(&row);
                }
            }
        }
        held.into_iter()
            .flat_map(|(r, n)| std::iter::repeat_n(r, n as usize))
            .collect()
    }

    /// The OVER of the rows as a batch query computes it, for rows of one partition
    /// ordered by `o` without ties.
    fn batch_answer(frame: OverFrame, rows: &[(&str, i64, i64)]) -> Vec<String> {
        let mut rows = rows.to_vec();
        rows.sort_by_key(|r| (r.0, r.1, r.2));
        let mut out = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let frame_rows: Vec<&(&str, i64, i64)> = rows[..=i]
                .iter()
                .enumerate()
                .filter(|(j, x)| {
                    x.0 == r.0
                        && match frame {
                            OverFrame::Rows { preceding } => {
                                rows[*j..=i].iter().filter(|y| y.0 == r.0).count() as u64
                                    <= preceding + 1
                            }
                            OverFrame::Range { preceding_ms } => x.1 >= r.1 - preceding_ms,
                            _ => true,
                        }
                })
                .map(|(_, x)| x)
                .collect();
            let s: i64 = frame_rows.iter().map(|x| x.2).sum();
            out.push(format!("{},{},{},{},{s}", r.0, r.1, r.2, frame_rows.len()));
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn the_materialized_output_is_the_over_of_the_materialized_input() {
        use RowKind::*;
        // Rows inserted out of order, one updated, one deleted, in three batches; order
        // values distinct per partition, so every frame is well defined.
        let batches = [
            changes(&[
                ("a", 30, 3, Insert),
                ("a", 10, 1, Insert),
                ("b", 10, 7, Insert),
            ]),
            changes(&[
                ("a", 20, 2, Insert),
                ("a", 30, 3, UpdateBefore),
                ("a", 40, 4, UpdateAfter),
                ("b", 15, 8, Insert),
            ]),
            changes(&[
                ("a", 10, 1, Delete),
                ("a", 25, 5, Insert),
                ("b", 10, 7, Delete),
            ]),
        ];
        let end = [("a", 20, 2), ("a", 40, 4), ("a", 25, 5), ("b", 15, 8)];
        let schema = batches[0].data.schema();
        for frame in [
            OverFrame::Rows { preceding: 1 },
            OverFrame::UnboundedRows,
            OverFrame::Range { preceding_ms: 10 },
            OverFrame::UnboundedRange,
        ] {
            let range_frame = matches!(frame, OverFrame::Range { .. });
            let schema = if range_frame {
                // RANGE intervals order by a timestamp: `o` as one.
                Arc::new(Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| match f.name().as_str() {
                            "o" => Arc::new(Field::new(
                                "o",
                                DataType::Timestamp(TimeUnit::Millisecond, None),
                                false,
                            )),
                            _ => Arc::clone(f),
                        })
                        .collect::<Vec<_>>(),
                ))
            } else {
                Arc::clone(&schema)
            };
            let retype = |b: &Batch| {
                let mut cols = b.data.columns().to_vec();
                cols[1] = arrow::compute::cast(&cols[1], schema.field(1).data_type()).unwrap();
                b.with_data(RecordBatch::try_new(Arc::clone(&schema), cols).unwrap())
            };
            let p = make(frame, &schema);
            let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
            let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
            let mut out = VecCollector::default();
            for (i, b) in batches.iter().enumerate() {
                if i == 2 {
                    // Through a checkpoint: the restored operator knows every row.
                    let state = op.snapshot(&test_util::barrier(), &mut ctx).await.unwrap();
                    op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
                    op.restore(test_util::restored(&state, 0, 1), &mut ctx)
                        .await
                        .unwrap();
                }
                op.process_batch(retype(b), &mut ctx, &mut out)
                    .await
                    .unwrap();
            }
            let mut want = batch_answer(frame, &end);
            if range_frame {
                want = want
                    .into_iter()
                    .map(|r| {
                        let mut f: Vec<String> = r.split(',').map(str::to_string).collect();
                        f[1] = format!("1970-01-01T00:00:00.{:03}", f[1].parse::<i64>().unwrap());
                        f.join(",")
                    })
                    .collect();
            }
            assert_eq!(materialized(&out.batches), want, "{frame:?}");
        }
    }

    #[tokio::test]
    async fn random_changes_leave_the_batch_answer() {
        // Random inserts and take-backs of held rows (order values distinct within a
        // partition), in random batches, for every frame; the materialized output after
        // each batch is the batch OVER of the rows held.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for frame in [
            OverFrame::Rows { preceding: 0 },
            OverFrame::Rows { preceding: 2 },
            OverFrame::UnboundedRows,
            OverFrame::UnboundedRange,
        ] {
            let schema = changes(&[("a", 0, 0, RowKind::Insert)]).data.schema();
            let p = make(frame, &schema);
            let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
            let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
            let mut out = VecCollector::default();
            let mut held: Vec<(&str, i64, i64)> = Vec::new();
            for _ in 0..40 {
                let mut batch = Vec::new();
                for _ in 0..1 + next(6) {
                    if !held.is_empty() && next(3) == 0 {
                        let r = held.swap_remove(next(held.len() as u64) as usize);
                        batch.push((r.0, r.1, r.2, RowKind::Delete));
                    } else {
                        let k = ["a", "b"][next(2) as usize];
                        let o = next(1000) as i64;
                        if held.iter().any(|r| r.0 == k && r.1 == o) {
                            continue;
                        }
                        let r = (k, o, next(10) as i64);
                        held.push(r);
                        batch.push((r.0, r.1, r.2, RowKind::Insert));
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                op.process_batch(changes(&batch), &mut ctx, &mut out)
                    .await
                    .unwrap();
                assert_eq!(
                    materialized(&out.batches),
                    batch_answer(frame, &held),
                    "{frame:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn equal_rows_and_peers_come_and_go_one_by_one() {
        use RowKind::*;
        let first = changes(&[
            ("a", 10, 1, Insert),
            ("a", 10, 1, Insert),
            ("a", 10, 2, Insert),
        ]);
        let schema = first.data.schema();
        let p = make(OverFrame::UnboundedRange, &schema);
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("t")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        // All three are peers: each sees all three.
        assert_eq!(
            materialized(&out.batches),
            ["a,10,1,3,4", "a,10,1,3,4", "a,10,2,3,4"]
        );
        op.process_batch(changes(&[("a", 10, 1, Delete)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(materialized(&out.batches), ["a,10,1,2,3", "a,10,2,2,3"]);
        // A row taken back that was never there changes nothing.
        op.process_batch(changes(&[("a", 99, 9, Delete)]), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(materialized(&out.batches), ["a,10,1,2,3", "a,10,2,2,3"]);
    }
}
