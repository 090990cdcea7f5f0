//! Computes new columns from expressions; the row-kind column of an updating stream and
//! the event-time column are carried along.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion_expr::Expr;
use datafusion_physical_expr::PhysicalExpr;
use sluice_types::{
    Batch, ROW_KIND_FIELD, Result, SluiceError, TIMESTAMP_FIELD, user_column_count,
};

use super::PreparedOperator;
use crate::expr::{evaluate, output_field, plan_expr};
use crate::operator::{Collector, Operator, OperatorContext};

/// Projects expressions.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::datatypes::*;
/// use datafusion_expr::{col, lit};
/// use sluice_runtime::operators::project::ProjectOperator;
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("price", DataType::Int64, false),
///     sluice_types::timestamp_field(),
/// ]));
/// let op = ProjectOperator::prepare(&[(col("price") * lit(0.908)).alias("euros")], &schema).unwrap();
/// assert_eq!(op.output_schema.field(0).name(), "euros");
/// assert_eq!(op.output_schema.field(1).name(), "_timestamp");
/// ```
pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl ProjectOperator {
    /// Checks the expressions against the input schema.
    pub fn prepare(exprs: &[Expr], input: &SchemaRef) -> Result<PreparedOperator> {
        let mut physical = Vec::with_capacity(exprs.len());
        let mut fields = Vec::with_capacity(exprs.len() + 1);
        for e in exprs {
            let p = plan_expr(e, input)?;
            let f = output_field(e, &p, input)?;
            if f.name() == TIMESTAMP_FIELD || f.name() == ROW_KIND_FIELD {
                return Err(SluiceError::user(format!(
                    "`{}` is carried along with every row; do not project it",
                    f.name()
                )));
            }
            if fields
                .iter()
                .any(|g: &arrow::datatypes::FieldRef| g.name() == f.name())
            {
                return Err(SluiceError::user(format!(
                    "the projection names `{}` twice; give one an alias",
                    f.name()
                )));
            }
            fields.push(f);
            physical.push(p);
        }
        // The row kind (updating streams) and the event time, as they come.
        let carried = user_column_count(input);
        fields.extend(input.fields()[carried..].iter().cloned());
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let output_schema = Arc::clone(&schema);
        Ok(PreparedOperator {
            output_schema,
            factory: Arc::new(move |_| {
                Ok(Box::new(ProjectOperator {
                    exprs: physical.clone(),
                    schema: Arc::clone(&schema),
                }) as Box<dyn Operator>)
            }),
        })
    }
}

#[async_trait]
impl Operator for ProjectOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let mut columns = Vec::with_capacity(self.exprs.len() + 1);
        for e in &self.exprs {
            columns.push(evaluate(e, &batch)?);
        }
        columns.extend(
            batch.data.columns()[batch.num_user_columns()..]
                .iter()
                .cloned(),
        );
        let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        out.collect(batch.with_data(data)).await
    }
}

impl ProjectOperator {
    /// The registered constructor of `project` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::Project { exprs } = kind else {
            return Err(crate::operators::wrong_node(kind, "project"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::prepare(exprs, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_expr::{col, lit};
    use sluice_testkit::{assert_pretty, batch_from_pretty};

    #[tokio::test]
    async fn computes_columns_and_keeps_event_time() {
        let input = batch_from_pretty(
            "
            | auction:Int64 | price:Int64 | _timestamp:Ts |
            | 1             | 1000        | 10            |
            | 2             | 250         | 20            |",
        );
        let schema = input.data.schema();
        let p = ProjectOperator::prepare(
            &[col("auction"), (col("price") * lit(2)).alias("double")],
            &schema,
        )
        .unwrap();
        let out = super::super::run_prepared(&p, vec![input]).await.unwrap();
        assert_pretty(
            &out,
            "
            +---------+--------+-------------------------+
            | auction | double | _timestamp              |
            +---------+--------+-------------------------+
            | 1       | 2000   | 1970-01-01T00:00:00.010 |
            | 2       | 500    | 1970-01-01T00:00:00.020 |
            +---------+--------+-------------------------+",
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let input = batch_from_pretty(
            "
            | a:Int64 | _timestamp:Ts |
            | 1       | 1             |",
        );
        let e = ProjectOperator::prepare(&[col("a"), col("a")], &input.data.schema())
            .err()
            .unwrap();
        assert!(e.to_string().contains("names `a` twice"), "{e}");
    }
}
