//! Keeps the rows for which a predicate is true (null counts as false, as in SQL).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion_expr::Expr;
use datafusion_physical_expr::PhysicalExpr;
use sluice_types::{Batch, Result, SluiceError};

use super::PreparedOperator;
use crate::expr::{evaluate, plan_expr};
use crate::operator::{Collector, Operator, OperatorContext};

/// Filters rows by a boolean expression.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::array::*; use arrow::datatypes::*;
/// use datafusion_expr::{col, lit};
/// use sluice_runtime::operators::filter::FilterOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("price", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = FilterOperator::prepare(&col("price").gt(lit(1_000)), &schema).unwrap();
/// assert_eq!(op.output_schema, schema);
/// ```
pub struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

impl FilterOperator {
    /// Checks the predicate against the input schema.
    pub fn prepare(predicate: &Expr, input: &SchemaRef) -> Result<PreparedOperator> {
        let physical = plan_expr(predicate, input)?;
        let ty = physical
            .data_type(input)
            .map_err(|e| SluiceError::user(format!("invalid filter `{predicate}`: {e}")))?;
        if ty != DataType::Boolean {
            return Err(SluiceError::user(format!(
                "filter `{predicate}` has type {ty}; a filter must be a boolean expression"
            )));
        }
        let schema = Arc::clone(input);
        let output_schema = Arc::clone(input);
        Ok(PreparedOperator {
            output_schema,
            factory: Arc::new(move |_| {
                Ok(Box::new(FilterOperator {
                    predicate: Arc::clone(&physical),
                    schema: Arc::clone(&schema),
                }) as Box<dyn Operator>)
            }),
        })
    }
}

#[async_trait]
impl Operator for FilterOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let mask = evaluate(&self.predicate, &batch)?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("invariant: predicate type checked at planning");
        let kept = if mask.null_count() == 0 {
            mask.true_count()
        } else {
            mask.iter().filter(|v| *v == Some(true)).count()
        };
        if kept == 0 {
            return Ok(());
        }
        if kept == batch.num_rows() {
            return out.collect(batch).await;
        }
        let data = filter_record_batch(&batch.data, mask)?;
        out.collect(batch.with_data(data)).await
    }
}

impl FilterOperator {
    /// The registered constructor of `filter` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::Filter { predicate } = kind else {
            return Err(crate::operators::wrong_node(kind, "filter"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare(predicate, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_expr::{col, lit};
    use sluice_testkit::{assert_pretty, batch_from_pretty};

    #[tokio::test]
    async fn keeps_matching_rows_and_treats_null_as_false() {
        let input = batch_from_pretty(
            "
            | auction:Int64 | price:Int64 | _timestamp:Ts |
            | 1             | 500         | 1             |
            | 2             | 1500        | 2             |
            | 3             |             | 3             |
            | 4             | 2000        | 4             |",
        );
        let p =
            FilterOperator::prepare(&col("price").gt(lit(1_000)), &input.data.schema()).unwrap();
        let out = super::super::run_prepared(&p, vec![input]).await.unwrap();
        assert_pretty(
            &out,
            "
            +---------+-------+-------------------------+
            | auction | price | _timestamp              |
            +---------+-------+-------------------------+
            | 2       | 1500  | 1970-01-01T00:00:00.002 |
            | 4       | 2000  | 1970-01-01T00:00:00.004 |
            +---------+-------+-------------------------+",
        );
    }

    #[test]
    fn rejects_non_boolean_predicates_and_unknown_columns() {
        let input = batch_from_pretty(
            "
            | price:Int64 | _timestamp:Ts |
            | 1           | 1             |",
        );
        let schema = input.data.schema();
        let e = FilterOperator::prepare(&col("price"), &schema)
            .err()
            .unwrap();
        assert!(e.to_string().contains("must be a boolean"), "{e}");
        let e = FilterOperator::prepare(&col("nope").gt(lit(1)), &schema)
            .err()
            .unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
