//! A running aggregate over an *updating* input: the upserts of another running
//! aggregate (or Top-N). Each input row replaces the earlier row of its upsert key, so
//! the earlier row's values are taken back out of its group before the new ones go in.
//!
//! ```text
//!  upsert (key u, group g, args) ──> last[u] = (g, old args)? ──retract old──> accs[g]
//!                                                            ──update new───> accs[g]
//!  emit: one row per group touched (upserts by the group keys)
//! ```
//!
//! The group columns must be among the input's upsert key columns, so all the updates
//! of one upsert key belong to one group, hash to one subtask and can be retracted
//! there (the planner checks). A group whose rows all left emits its empty aggregates
//! (COUNT 0, others NULL).
//!
//! Retractable accumulators: DataFusion's sliding ones (`count`, `sum`, `avg`, …) and, for
//! `min` and `max` (whose sliding forms only drop the oldest value), a counted multiset.
//! State in checkpoints: the current row of every upsert key (its group keys, upsert key
//! and arguments); the accumulators are rebuilt from it on restore.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use datafusion_common::hash_utils::RandomState;
use datafusion_expr::{Accumulator, Expr};
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError, timestamp_field};

use crate::expr::evaluate;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::PreparedOperator;
use crate::operators::aggregates::{PlannedAggregate, PlannedAggregates};
use crate::state::{OperatorState, RestoredState, TableReader, TableWriter};

/// The keyed state table: one row per upsert key.
const UPSERTS_TABLE: &str = "upserts";

/// A row's aggregate arguments: per aggregate, per argument.
type Args = Vec<Vec<ScalarValue>>;

/// A running aggregate that retracts the earlier row of each upsert key.
pub struct RetractAggregateOperator {
    key_indices: Vec<usize>,
    upsert_indices: Vec<usize>,
    aggregates: Vec<PlannedAggregate>,
    /// Per aggregate, the data types of its arguments.
    arg_types: Vec<Vec<DataType>>,
    schema: SchemaRef,
    converter: RowConverter,
    upsert_converter: RowConverter,
    groups: HashMap<Box<[u8]>, u32, RandomState>,
    group_keys: Rows,
    accumulators: Vec<Vec<Box<dyn Accumulator>>>,
    /// Rows currently in each group (a group can empty out).
    counts: Vec<u64>,
    /// Upsert key → (group, its arguments: per aggregate, per argument).
    last: HashMap<Box<[u8]>, (u32, Args), RandomState>,
}

/// A retractable accumulator for one aggregate.
pub(crate) fn retractable(
    a: &PlannedAggregate,
    arg_types: &[DataType],
) -> Result<Box<dyn Accumulator>> {
    let name = a.function.fun().name().to_ascii_lowercase();
    if name == "min" || name == "max" {
        let dt = arg_types.first().cloned().unwrap_or(DataType::Null);
        return Ok(Box::new(MultisetMinMax {
            max: name == "max",
            data_type: dt,
            values: BTreeMap::new(),
        }));
    }
    let acc = a.function.create_sliding_accumulator().map_err(|e| {
        SluiceError::user(format!(
            "`{}` over an updating input: it cannot take values back ({e})",
            a.function.name()
        ))
    })?;
    if !acc.supports_retract_batch() {
        return Err(SluiceError::user(format!(
            "`{}` cannot take values back, so it cannot aggregate an updating input (a GROUP BY without windows); use COUNT, SUM, AVG, MIN or MAX",
            a.function.name()
        )));
    }
    Ok(acc)
}

impl RetractAggregateOperator {
    /// Checks keys, upsert key and aggregates against the input schema.
    pub fn prepare(
        keys: &[String],
        upsert_key: &[String],
        aggregates: &[Expr],
        input: &SchemaRef,
    ) -> Result<PreparedOperator> {
        if keys.is_empty() {
            return Err(SluiceError::user(
                "an aggregate over an updating input needs at least one key column",
            ));
        }
        if let Some(k) = keys.iter().find(|k| !upsert_key.contains(k)) {
            return Err(SluiceError::user(format!(
                "GROUP BY column `{k}` of an aggregate over an updating input must be one of the input's key columns ({}), so that every update of a row stays in its group",
                upsert_key.join(", ")
            )));
        }
        let planned = PlannedAggregates::plan(keys, aggregates, input, &[])?;
        let upsert_indices = upsert_key
            .iter()
            .map(|k| {
                input.index_of(k).map_err(|_| {
                    SluiceError::user(format!("upsert key column `{k}` does not exist"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let arg_types: Vec<Vec<DataType>> = planned
            .aggregates
            .iter()
            .map(|a| {
                a.args
                    .iter()
                    .map(|e| e.data_type(input).map_err(df_err))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        // Fail now if an aggregate cannot retract.
        for (a, t) in planned.aggregates.iter().zip(&arg_types) {
            retractable(a, t)?;
        }
        let key_indices = planned.key_indices.clone();
        let mut fields = planned.key_fields.clone();
        fields.extend(planned.aggregate_fields.iter().cloned());
        fields.push(Arc::new(timestamp_field()));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let sort = |idx: &[usize]| -> Vec<SortField> {
            idx.iter()
                .map(|&i| SortField::new(input.field(i).data_type().clone()))
                .collect()
        };
        let (key_sort, upsert_sort) = (sort(&key_indices), sort(&upsert_indices));
        RowConverter::new(key_sort.clone())
            .and_then(|_| RowConverter::new(upsert_sort.clone()))
            .map_err(|e| SluiceError::user("unsupported key column type").with_source(e))?;
        let aggregates = planned.aggregates;
        let output_schema = Arc::clone(&schema);
        Ok(PreparedOperator {
            output_schema,
            factory: Arc::new(move |_| {
                let converter = RowConverter::new(key_sort.clone())?;
                let group_keys = converter.empty_rows(0, 0);
                Ok(Box::new(RetractAggregateOperator {
                    key_indices: key_indices.clone(),
                    upsert_indices: upsert_indices.clone(),
                    aggregates: aggregates.clone(),
                    arg_types: arg_types.clone(),
                    schema: Arc::clone(&schema),
                    converter,
                    upsert_converter: RowConverter::new(upsert_sort.clone())?,
                    groups: HashMap::with_hasher(RandomState::default()),
                    group_keys,
                    accumulators: Vec::new(),
                    counts: Vec::new(),
                    last: HashMap::with_hasher(RandomState::default()),
                }) as Box<dyn Operator>)
            }),
        })
    }

    fn group_of(&mut self, key: arrow::row::Row<'_>) -> Result<u32> {
        if let Some(&g) = self.groups.get(key.as_ref()) {
            return Ok(g);
        }
        let g = self.accumulators.len() as u32;
        let accs = self
            .aggregates
            .iter()
            .zip(&self.arg_types)
            .map(|(a, t)| retractable(a, t))
            .collect::<Result<Vec<_>>>()?;
        self.accumulators.push(accs);
        self.counts.push(0);
        self.groups.insert(key.as_ref().into(), g);
        self.group_keys.push(key);
        Ok(g)
    }

    /// Puts one row's arguments into (`add`) or takes them out of group `g`.
    fn apply(&mut self, g: u32, args: &[Vec<ScalarValue>], add: bool) -> Result<()> {
        apply_row(&mut self.accumulators[g as usize], args, add)?;
        let c = &mut self.counts[g as usize];
        *c = if add { *c + 1 } else { c.saturating_sub(1) };
        Ok(())
    }

    /// Replaces the row of `upsert` (if any) by `args` in group `g`.
    fn upsert(
        &mut self,
        upsert: Box<[u8]>,
        g: u32,
        args: Vec<Vec<ScalarValue>>,
    ) -> Result<Option<u32>> {
        let previous = self.last.remove(&upsert);
        let mut left = None;
        if let Some((pg, old)) = &previous {
            self.apply(*pg, old, false)?;
            if *pg != g {
                left = Some(*pg);
            }
        }
        self.apply(g, &args, true)?;
        self.last.insert(upsert, (g, args));
        Ok(left)
    }
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("aggregate computation failed").with_source(e)
}

/// Adds (`add`) one row's argument values (per aggregate, per argument) to
/// accumulators, or takes them back out.
pub(crate) fn apply_row(
    accs: &mut [Box<dyn Accumulator>],
    args: &[Vec<ScalarValue>],
    add: bool,
) -> Result<()> {
    for (acc, values) in accs.iter_mut().zip(args) {
        let arrays = values
            .iter()
            .map(|v| v.to_array().map_err(df_err))
            .collect::<Result<Vec<_>>>()?;
        match add {
            true => acc.update_batch(&arrays),
            false => acc.retract_batch(&arrays),
        }
        .map_err(df_err)?;
    }
    Ok(())
}

/// Row `row`'s argument values: per aggregate, per argument.
pub(crate) fn row_args(args: &[Vec<ArrayRef>], row: usize) -> Result<Vec<Vec<ScalarValue>>> {
    args.iter()
        .map(|a| {
            a.iter()
                .map(|c| ScalarValue::try_from_array(c, row).map_err(df_err))
                .collect()
        })
        .collect()
}

#[async_trait]
impl Operator for RetractAggregateOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let n = batch.num_rows();
        let cols = |idx: &[usize]| -> Vec<ArrayRef> {
            idx.iter()
                .map(|&i| Arc::clone(batch.data.column(i)))
                .collect()
        };
        let keys = self.converter.convert_columns(&cols(&self.key_indices))?;
        let upserts = self
            .upsert_converter
            .convert_columns(&cols(&self.upsert_indices))?;
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.args.iter().map(|e| evaluate(e, &batch)).collect())
            .collect::<Result<_>>()?;
        let ts = batch.timestamps();
        // Touched groups in first-touch order with the latest time that touched them.
        let mut touched: Vec<(u32, i64)> = Vec::new();
        let mut slot: HashMap<u32, usize, RandomState> =
            HashMap::with_hasher(RandomState::default());
        let mut touch = |g: u32, t: i64, touched: &mut Vec<(u32, i64)>| {
            let s = *slot.entry(g).or_insert_with(|| {
                touched.push((g, i64::MIN));
                touched.len() - 1
            });
            touched[s].1 = touched[s].1.max(t);
        };
        for i in 0..n {
            let g = self.group_of(keys.row(i))?;
            let values = row_args(&args, i)?;
            let left = self.upsert(upserts.row(i).as_ref().into(), g, values)?;
            touch(g, ts.value(i), &mut touched);
            if let Some(pg) = left {
                touch(pg, ts.value(i), &mut touched);
            }
        }
        let mut columns = self.converter.convert_rows(
            touched
                .iter()
                .map(|&(g, _)| self.group_keys.row(g as usize)),
        )?;
        for a in 0..self.aggregates.len() {
            let values = touched
                .iter()
                .map(|&(g, _)| self.accumulators[g as usize][a].evaluate().map_err(df_err))
                .collect::<Result<Vec<_>>>()?;
            let field = self.schema.field(self.key_indices.len() + a);
            let array = match values.is_empty() {
                true => arrow::array::new_empty_array(field.data_type()),
                false => ScalarValue::iter_to_array(values).map_err(df_err)?,
            };
            // A sliding accumulator may answer in a wider type than the planned field.
            columns.push(arrow::compute::cast(&array, field.data_type())?);
        }
        columns.push(Arc::new(TimestampMillisecondArray::from(
            touched.iter().map(|t| t.1).collect::<Vec<_>>(),
        )));
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        out.collect(batch.with_data(data)).await
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        let mut state = OperatorState::default();
        if self.last.is_empty() {
            return Ok(state);
        }
        let entries: Vec<(&Box<[u8]>, &(u32, Args))> = self.last.iter().collect();
        let parser = self.upsert_converter.parser();
        let upsert_cols = self
            .upsert_converter
            .convert_rows(entries.iter().map(|(u, _)| parser.parse(u)))?;
        let groups = entries
            .iter()
            .map(|(_, (g, _))| self.group_keys.row(*g as usize));
        let mut table = TableWriter::keyed(Some(&self.converter), groups, entries.len())?;
        for (i, c) in upsert_cols.into_iter().enumerate() {
            table = table.column(format!("u{i}"), c);
        }
        for (a, types) in self.arg_types.iter().enumerate() {
            for j in 0..types.len() {
                let values = entries.iter().map(|(_, (_, args))| args[a][j].clone());
                let array = ScalarValue::iter_to_array(values).map_err(df_err)?;
                table = table.column(format!("a{a}_{j}"), array);
            }
        }
        table.finish(UPSERTS_TABLE, ctx.max_parallelism, &mut state)?;
        Ok(state)
    }

    async fn restore(&mut self, state: RestoredState, _ctx: &mut OperatorContext) -> Result<()> {
        let (nk, nu) = (self.key_indices.len(), self.upsert_indices.len());
        let na: usize = self.arg_types.iter().map(Vec::len).sum();
        for batch in state.table(UPSERTS_TABLE) {
            let mut r = TableReader::new(
                batch,
                "aggregate",
                Some(&self.converter),
                nk,
                Some(nk + nu + na),
            )?;
            let upserts = self.upsert_converter.convert_columns(r.columns(nu)?)?;
            let args_columns = r.rest();
            let keys = r.keys().expect("invariant: read with a converter");
            for i in 0..r.num_rows() {
                let g = self.group_of(keys.row(i))?;
                let mut col = 0;
                let mut args = Vec::with_capacity(self.arg_types.len());
                for types in &self.arg_types {
                    let mut values = Vec::with_capacity(types.len());
                    for _ in types {
                        values.push(
                            ScalarValue::try_from_array(&args_columns[col], i).map_err(df_err)?,
                        );
                        col += 1;
                    }
                    args.push(values);
                }
                self.upsert(upserts.row(i).as_ref().into(), g, args)?;
            }
        }
        Ok(())
    }
}

/// `min` or `max` that can take any value back: a counted multiset of the values.
#[derive(Debug)]
struct MultisetMinMax {
    max: bool,
    data_type: DataType,
    values: BTreeMap<Ordered, u64>,
}

/// A scalar ordered as SQL orders values of one type (NaN equal to itself).
#[derive(Debug, Clone, PartialEq)]
struct Ordered(ScalarValue);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl Accumulator for MultisetMinMax {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion_common::Result<()> {
        let a = &values[0];
        for i in 0..a.len() {
            if a.is_valid(i) {
                *self
                    .values
                    .entry(Ordered(ScalarValue::try_from_array(a, i)?))
                    .or_insert(0) += 1;
            }
        }
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> datafusion_common::Result<()> {
        let a = &values[0];
        for i in 0..a.len() {
            if a.is_valid(i) {
                let k = Ordered(ScalarValue::try_from_array(a, i)?);
                if let Some(c) = self.values.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        self.values.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> datafusion_common::Result<ScalarValue> {
        let v = match self.max {
            true => self.values.last_key_value(),
            false => self.values.first_key_value(),
        };
        match v {
            Some((k, _)) => Ok(k.0.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.len() * 64
    }

    fn state(&mut self) -> datafusion_common::Result<Vec<ScalarValue>> {
        // Checkpoints keep the upserted rows, not accumulator states.
        Err(datafusion_common::DataFusionError::Internal(
            "the multiset min/max is rebuilt from the upserted rows".into(),
        ))
    }

    fn merge_batch(&mut self, _states: &[ArrayRef]) -> datafusion_common::Result<()> {
        Err(datafusion_common::DataFusionError::Internal(
            "the multiset min/max is rebuilt from the upserted rows".into(),
        ))
    }
}

impl RetractAggregateOperator {
    /// The registered constructor of `updating aggregate` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::UpdatingAggregate {
            keys,
            upsert_key,
            aggregates,
        } = kind
        else {
            return Err(crate::operators::wrong_node(kind, "updating aggregate"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare(keys, upsert_key, aggregates, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::latest_per_key;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use datafusion_expr::col;
    use datafusion_functions_aggregate::expr_fn::{avg, count, max, min, sum};

    /// Upserts (auction, category, price): the final price of auctions, updating.
    fn batch(rows: &[(i64, &str, i64)]) -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("category", DataType::Utf8, false),
            Field::new("price", DataType::Int64, false),
            timestamp_field(),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..rows.len() as i64).map(|i| i * 10),
                )),
            ],
        )
        .unwrap();
        Batch::try_new(
            data,
            sluice_types::IngestTime {
                min_us: 0,
                max_us: 0,
            },
        )
        .unwrap()
    }

    fn operator(schema: &SchemaRef) -> Box<dyn Operator> {
        let p = RetractAggregateOperator::prepare(
            &["category".into()],
            &["auction".into(), "category".into()],
            &[
                count(col("price")).alias("n"),
                sum(col("price")).alias("total"),
                avg(col("price")).alias("mean"),
                min(col("price")).alias("low"),
                max(col("price")).alias("high"),
            ],
            schema,
        )
        .unwrap();
        (p.factory)(&sluice_types::TaskInfo::for_test("retract")).unwrap()
    }

    #[tokio::test]
    async fn updates_replace_their_earlier_rows_in_every_aggregate() {
        let first = batch(&[(1, "a", 10), (2, "a", 30), (3, "b", 5)]);
        let schema = first.data.schema();
        let mut op = operator(&schema);
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = crate::operator::VecCollector::default();
        op.process_batch(first, &mut ctx, &mut out).await.unwrap();
        // Auction 2's price goes up, auction 1's too, twice in one batch; the max (30)
        // is replaced and the old values leave sum, avg and min.
        op.process_batch(
            batch(&[(2, "a", 50), (1, "a", 20), (1, "a", 40)]),
            &mut ctx,
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(
            latest_per_key(&out.batches),
            ["a,2,90,45.0,40,50", "b,1,5,5.0,5,5"]
        );

        // A checkpoint, restored into a fresh operator: the same state.
        let state = op
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        let restored = crate::operators::test_util::restored(&state, 0, 1);
        let mut again = operator(&schema);
        again.restore(restored, &mut ctx).await.unwrap();
        let mut out2 = crate::operator::VecCollector::default();
        again
            .process_batch(batch(&[(2, "a", 1)]), &mut ctx, &mut out2)
            .await
            .unwrap();
        assert_eq!(latest_per_key(&out2.batches), ["a,2,41,20.5,1,40"]);
    }

    #[test]
    fn group_columns_outside_the_upsert_key_and_unretractable_aggregates_are_refused() {
        let schema = batch(&[(1, "a", 1)]).data.schema();
        let e = RetractAggregateOperator::prepare(
            &["category".into()],
            &["auction".into()],
            &[count(col("price"))],
            &schema,
        )
        .err()
        .unwrap();
        assert!(
            e.message.contains("must be one of the input's key columns"),
            "{e}"
        );
    }
}
