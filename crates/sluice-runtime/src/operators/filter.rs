//! Keeps the rows for which a predicate is true (null counts as false, as in SQL).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StructArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Fields, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion_expr::Expr;
use datafusion_physical_expr::PhysicalExpr;
use sluice_plan::FieldUse;
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
    /// The input columns passed on, when not all of them are.
    keep: Option<Vec<usize>>,
}

impl FilterOperator {
    /// Checks the predicate against the input schema.
    pub fn prepare(predicate: &Expr, input: &SchemaRef) -> Result<PreparedOperator> {
        Self::passing(predicate, input, &FieldUse::All)
    }

    /// A filter passing on only what `passes` names of its input's columns (nested
    /// fields included; the rows' time and row kind always).
    pub fn passing(
        predicate: &Expr,
        input: &SchemaRef,
        passes: &FieldUse,
    ) -> Result<PreparedOperator> {
        let physical = plan_expr(predicate, input)?;
        let ty = physical
            .data_type(input)
            .map_err(|e| SluiceError::user(format!("invalid filter `{predicate}`: {e}")))?;
        if ty != DataType::Boolean {
            return Err(SluiceError::user(format!(
                "filter `{predicate}` has type {ty}; a filter must be a boolean expression"
            )));
        }
        let user = sluice_types::user_column_count(input);
        let (schema, keep) = match passes.narrows(&input.fields()[..user].iter().cloned().collect())
        {
            false => (Arc::clone(input), None),
            true => {
                let (mut keep, mut fields) = (Vec::new(), Vec::new());
                for (i, f) in input.fields()[..user].iter().enumerate() {
                    // (Field by field, by position: two columns may share a name.)
                    let one = passes.narrow(&Fields::from(vec![Arc::clone(f)]));
                    if let Some(f) = one.iter().next() {
                        keep.push(i);
                        fields.push(Arc::clone(f));
                    }
                }
                for i in user..input.fields().len() {
                    keep.push(i);
                    fields.push(Arc::clone(&input.fields()[i]));
                }
                let schema = Schema::new_with_metadata(fields, input.metadata().clone());
                (Arc::new(schema), Some(keep))
            }
        };
        Ok(PreparedOperator {
            output_schema: Arc::clone(&schema),
            factory: Arc::new(move |_| {
                Ok(Box::new(FilterOperator {
                    predicate: Arc::clone(&physical),
                    schema: Arc::clone(&schema),
                    keep: keep.clone(),
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
        let batch = match &self.keep {
            Some(keep) => {
                let columns = keep
                    .iter()
                    .zip(self.schema.fields())
                    .map(|(&i, f)| narrow(batch.data.column(i), f.data_type()))
                    .collect();
                let data = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
                batch.with_data(data)
            }
            None => batch,
        };
        if kept == batch.num_rows() {
            return out.collect(batch).await;
        }
        let data = filter_record_batch(&batch.data, mask)?;
        out.collect(batch.with_data(data)).await
    }
}

/// `array` with only the fields of its rows that `to` (the type it narrows to) has.
fn narrow(array: &ArrayRef, to: &DataType) -> ArrayRef {
    match (array.data_type(), to) {
        (DataType::Struct(from), DataType::Struct(fields)) if from != fields => {
            let rows = array
                .as_any()
                .downcast_ref::<StructArray>()
                .expect("invariant: a struct type is a struct array");
            let columns = fields
                .iter()
                .map(|f| {
                    let child = rows
                        .column_by_name(f.name())
                        .expect("invariant: narrowed from the row's fields");
                    narrow(child, f.data_type())
                })
                .collect();
            Arc::new(StructArray::new(
                fields.clone(),
                columns,
                rows.nulls().cloned(),
            ))
        }
        _ => Arc::clone(array),
    }
}

impl FilterOperator {
    /// The registered constructor of `filter` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<crate::operators::PreparedOperator> {
        let sluice_plan::NodeKind::Filter { predicate, passes } = kind else {
            return Err(crate::operators::wrong_node(kind, "filter"));
        };
        let input = &crate::operators::single_input(inputs)?;
        Self::passing(predicate, input, passes)
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

    #[tokio::test]
    async fn passes_on_only_the_columns_and_nested_fields_read_after_it() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{Field, Fields};
        let plain = batch_from_pretty(
            "
            | kind:Int64 | price:Int64 | _timestamp:Ts |
            | 2          | 10          | 1             |
            | 0          | 20          | 2             |
            | 2          | 30          | 3             |",
        );
        let children = Fields::from(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Utf8, true),
        ]);
        let r = StructArray::new(
            children,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
            Some(vec![true, true, false].into()),
        );
        let mut fields: Vec<Field> = vec![
            plain.data.schema().field(0).clone(),
            Field::new("r", r.data_type().clone(), true),
        ];
        fields.extend(
            plain.data.schema().fields()[1..]
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        let mut columns = vec![Arc::clone(plain.data.column(0)), Arc::new(r) as ArrayRef];
        columns.extend(plain.data.columns()[1..].iter().cloned());
        let data = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let input = plain.with_data(data);
        let passes = FieldUse::Fields(
            [
                ("price".to_string(), FieldUse::All),
                (
                    "r".to_string(),
                    FieldUse::Fields([("y".to_string(), FieldUse::All)].into()),
                ),
            ]
            .into(),
        );
        let p = FilterOperator::passing(&col("kind").eq(lit(2)), &input.data.schema(), &passes)
            .unwrap();
        let names: Vec<&str> = p
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            ["r", "price", "_timestamp"],
            "the input's order, the time kept"
        );
        let out = super::super::run_prepared(&p, vec![input]).await.unwrap();
        assert_pretty(
            &out,
            "
            +--------+-------+-------------------------+
            | r      | price | _timestamp              |
            +--------+-------+-------------------------+
            | {y: a} | 10    | 1970-01-01T00:00:00.001 |
            |        | 30    | 1970-01-01T00:00:00.003 |
            +--------+-------+-------------------------+",
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
