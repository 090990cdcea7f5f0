//! Aggregates: the running `GROUP BY` ([`group`]), aggregates over updating inputs
//! ([`retract`]) and `OVER` windows ([`over`]); the aggregate planning they share with the
//! window operators.

pub mod changelog_over;
pub mod group;
pub mod over;
pub mod retract;

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion_common::ScalarValue;
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::{Accumulator, Expr};
use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use sluice_types::{Result, SluiceError, TIMESTAMP_FIELD};

use crate::expr::{coerce, df_schema};

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("aggregate computation failed").with_source(e)
}

/// One aggregate, planned.
#[derive(Clone)]
pub(crate) struct PlannedAggregate {
    pub function: Arc<AggregateFunctionExpr>,
    pub args: Vec<Arc<dyn PhysicalExpr>>,
}

/// Keys and aggregates checked against an input schema; shared by the running and the
/// window aggregates.
pub(crate) struct PlannedAggregates {
    pub key_indices: Vec<usize>,
    pub key_fields: Vec<Arc<Field>>,
    pub aggregates: Vec<PlannedAggregate>,
    pub aggregate_fields: Vec<Arc<Field>>,
}

impl PlannedAggregates {
    /// `reserved` are output names the caller adds itself (e.g. `window_start`).
    pub fn plan(
        keys: &[String],
        aggregates: &[Expr],
        input: &SchemaRef,
        reserved: &[&str],
    ) -> Result<Self> {
        let mut key_indices = Vec::new();
        let mut key_fields: Vec<Arc<Field>> = Vec::new();
        for k in keys {
            let i = input.index_of(k).map_err(|_| {
                SluiceError::user(format!(
                    "key column `{k}` does not exist; columns are: {}",
                    column_list(input)
                ))
            })?;
            key_indices.push(i);
            key_fields.push(Arc::new(input.field(i).clone()));
        }
        let df = df_schema(input)?;
        let props = ExecutionProps::new();
        let ctx = PhysicalPlanningContext::default();
        let mut planned = Vec::new();
        let mut aggregate_fields: Vec<Arc<Field>> = Vec::new();
        for a in aggregates {
            let coerced = coerce(a, &df)?;
            let lowered = LoweredAggregateBuilder::new(&coerced, &df, input, &props, &ctx)
                .build()
                .map_err(|e| {
                    SluiceError::user(format!(
                        "`{a}` is not an aggregate this operator can compute: {e}"
                    ))
                })?;
            if lowered.filter.is_some() {
                return Err(SluiceError::user(format!(
                    "`{a}`: FILTER inside aggregates is not supported yet; filter the stream before aggregating"
                )));
            }
            let field = lowered.aggregate.field();
            let taken = key_fields
                .iter()
                .chain(&aggregate_fields)
                .any(|f| f.name() == field.name());
            if taken || field.name() == TIMESTAMP_FIELD || reserved.contains(&field.name().as_str())
            {
                return Err(SluiceError::user(format!(
                    "output column `{}` is named twice; give the aggregate an alias",
                    field.name()
                )));
            }
            aggregate_fields.push(field);
            // Order-sensitive aggregates (first_value … ORDER BY) get their ordering
            // columns after the arguments, as DataFusion's own aggregation passes them.
            let mut args = lowered.aggregate.expressions();
            args.extend(
                lowered
                    .aggregate
                    .order_bys()
                    .iter()
                    .map(|o| Arc::clone(&o.expr)),
            );
            planned.push(PlannedAggregate {
                args,
                function: lowered.aggregate,
            });
        }
        Ok(Self {
            key_indices,
            key_fields,
            aggregates: planned,
            aggregate_fields,
        })
    }
}

/// Per aggregate, the data types of its arguments over `input` (what retractable
/// accumulators are built for).
pub(crate) fn argument_types(
    aggregates: &[PlannedAggregate],
    input: &SchemaRef,
) -> Result<Vec<Vec<arrow::datatypes::DataType>>> {
    aggregates
        .iter()
        .map(|a| {
            a.args
                .iter()
                .map(|e| e.data_type(input).map_err(df_err))
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// Accumulators of one group, merged from row `row` of intermediate `states` (per
/// aggregate, its state columns): how checkpointed accumulators come back.
pub(crate) fn accumulators_from(
    aggregates: &[PlannedAggregate],
    states: &[Vec<ArrayRef>],
    row: usize,
) -> Result<Vec<Box<dyn Accumulator>>> {
    let mut accs = aggregates
        .iter()
        .map(|a| a.function.create_accumulator().map_err(df_err))
        .collect::<Result<Vec<_>>>()?;
    for (acc, cols) in accs.iter_mut().zip(states) {
        let one: Vec<ArrayRef> = cols.iter().map(|c| c.slice(row, 1)).collect();
        acc.merge_batch(&one).map_err(df_err)?;
    }
    Ok(accs)
}

/// The intermediate state of `accs`, one value list per aggregate. `state` consumes an
/// accumulator's state, so each is replaced by one rebuilt from it.
pub(crate) fn take_accumulator_states(
    aggregates: &[PlannedAggregate],
    accs: &mut Vec<Box<dyn Accumulator>>,
) -> Result<Vec<Vec<ScalarValue>>> {
    let states = accs
        .iter_mut()
        .map(|a| a.state().map_err(df_err))
        .collect::<Result<Vec<_>>>()?;
    let arrays = states
        .iter()
        .map(|vals| {
            vals.iter()
                .map(|v| v.to_array().map_err(df_err))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    *accs = accumulators_from(aggregates, &arrays, 0)?;
    Ok(states)
}

/// Number of intermediate state columns of each aggregate.
pub(crate) fn state_column_counts(aggregates: &[PlannedAggregate]) -> Result<Vec<usize>> {
    aggregates
        .iter()
        .map(|a| Ok(a.function.state_fields().map_err(df_err)?.len()))
        .collect()
}

/// The input's columns, for messages.
fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .filter(|f| f.name() != TIMESTAMP_FIELD)
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
