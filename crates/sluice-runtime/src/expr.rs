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

/// Evaluates an expression to one value per row. A failure names the expression as SQL
/// writes it and the first row it fails on, with that row's values.
pub fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &Batch) -> Result<ArrayRef> {
    let eval = |data: &arrow::array::RecordBatch| {
        expr.evaluate(data)
            .and_then(|v| v.into_array(data.num_rows()))
    };
    eval(&batch.data).map_err(|e| {
        // Only on failure: find the row, one at a time.
        let row = (0..batch.num_rows()).find(|&i| eval(&batch.data.slice(i, 1)).is_err());
        let at = row.map_or(String::new(), |i| {
            format!(" on the row ({})", row_text(batch, i))
        });
        SluiceError::user(format!("`{}` failed{at}: {}", sql_text(expr), cause(&e)))
    })
}

/// A physical expression as SQL writes it: columns by name (`price`, not `price@2`).
pub fn sql_text(expr: &Arc<dyn PhysicalExpr>) -> String {
    let text = expr.to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        let after_name = prev.is_alphanumeric() || prev == '_';
        if c == '@' && after_name && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            continue;
        }
        out.push(c);
        prev = c;
    }
    // A cast's target as SQL names it.
    for (arrow, sql) in [
        ("Int8", "TINYINT"),
        ("Int16", "SMALLINT"),
        ("Int32", "INT"),
        ("Int64", "BIGINT"),
        ("Float32", "FLOAT"),
        ("Float64", "DOUBLE"),
        ("Utf8", "STRING"),
        ("Utf8View", "STRING"),
        ("Boolean", "BOOLEAN"),
        ("Date32", "DATE"),
        ("Timestamp(Millisecond, None)", "TIMESTAMP(3)"),
        ("Timestamp(ms)", "TIMESTAMP(3)"),
    ] {
        out = out.replace(&format!(" AS {arrow})"), &format!(" AS {sql})"));
    }
    out
}

/// What went wrong, without the layers of error types around it.
fn cause(e: &datafusion_common::DataFusionError) -> String {
    use arrow::error::ArrowError;
    match e.find_root() {
        datafusion_common::DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::DivideByZero => "division by zero".into(),
            ArrowError::CastError(m)
            | ArrowError::ComputeError(m)
            | ArrowError::InvalidArgumentError(m) => m.clone(),
            other => other.to_string(),
        },
        datafusion_common::DataFusionError::Execution(m) => m.clone(),
        other => other.to_string(),
    }
}

/// A row's values as `name=value, …` (the user's columns, each cut to 64 characters).
pub fn row_text(batch: &Batch, row: usize) -> String {
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let schema = batch.data.schema();
    let mut parts = Vec::new();
    for (field, column) in schema
        .fields()
        .iter()
        .zip(batch.data.columns())
        .take(batch.num_user_columns())
    {
        let value = arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &options)
            .map(|f| f.value(row).to_string())
            .unwrap_or_else(|_| "?".into());
        parts.push(format!(
            "{}={}",
            field.name(),
            sluice_types::truncated(&value, 64)
        ));
    }
    parts.join(", ")
}
