//! Logical expressions (DataFusion `Expr`) to physical ones, with DataFusion's type
//! coercion, so `col("price").gt(lit(1_000))` works on an Int64 column.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{FieldRef, SchemaRef};
use datafusion_common::DFSchema;
use datafusion_common::tree_node::TreeNode;
use datafusion_expr::Expr;
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_physical_expr::{PhysicalExpr, create_physical_expr};
use sluice_types::{Batch, Result, SluiceError};

/// The DataFusion schema of an Arrow schema.
pub fn df_schema(schema: &SchemaRef) -> Result<DFSchema> {
    DFSchema::try_from(Arc::clone(schema))
        .map_err(|e| SluiceError::user("invalid schema").with_source(e))
}

/// Applies DataFusion's type coercion to an expression over `schema`.
pub fn coerce(expr: &Expr, schema: &DFSchema) -> Result<Expr> {
    let mut rewriter = TypeCoercionRewriter::new(schema);
    expr.clone()
        .rewrite(&mut rewriter)
        .map(|t| t.data)
        .map_err(|e| SluiceError::user(format!("invalid expression `{expr}`: {e}")))
}

/// Plans a physical expression over batches of `schema`.
pub fn plan_expr(expr: &Expr, schema: &SchemaRef) -> Result<Arc<dyn PhysicalExpr>> {
    let df = df_schema(schema)?;
    let coerced = coerce(expr, &df)?;
    create_physical_expr(
        &coerced,
        &df,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .map_err(|e| SluiceError::user(format!("invalid expression `{expr}`: {e}")))
}

/// The output field of a physical expression, named as the logical one.
pub fn output_field(
    expr: &Expr,
    physical: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
) -> Result<FieldRef> {
    let field = physical
        .return_field(schema)
        .map_err(|e| SluiceError::user(format!("invalid expression `{expr}`: {e}")))?;
    let name = expr.schema_name().to_string();
    Ok(Arc::new(field.as_ref().clone().with_name(name)))
}

/// Evaluates an expression to one value per row.
pub fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &Batch) -> Result<ArrayRef> {
    expr.evaluate(&batch.data)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| SluiceError::user(format!("evaluating `{expr}` failed")).with_source(e))
}
