//! Window table-valued functions, as in Flink SQL:
//!
//! ```sql
//! TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
//! TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))  -- slide, size
//! TABLE(SESSION(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))                   -- gap; keys from GROUP BY
//! TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) -- keys given (= GROUP BY)
//! TABLE(TUMBLE_ROWS(TABLE bid, 100))                                                       -- count windows, per GROUP BY key
//! TABLE(HOP_ROWS(TABLE bid, 10, 100))                                                      -- slide, size in rows
//! ```
//!
//! Each adds `window_start` and `window_end` to the table's columns. Named arguments
//! (`size =>`, `slide =>`, `gap =>`, `lateness =>`, `late_sink =>`) may follow: `lateness` is
//! the allowed lateness, `late_sink` the name of a table that receives the rows too late
//! for their windows (with `late_reason` and `missed_watermark`).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion_common::{
    DFSchema, DFSchemaRef, DataFusionError, Diagnostic, ScalarValue, Span, TableReference,
};
use datafusion_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNodeCore,
};
use datafusion_sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Spanned, TableFactor, Value,
};
use sluice_plan::WindowSpec;

/// Which window a TVF assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd)]
pub enum TvfKind {
    /// `TUMBLE`: size in ms.
    Tumble(u64),
    /// `HOP`: size and slide in ms.
    Hop(u64, u64),
    /// `CUMULATE`: size and step in ms.
    Cumulate(u64, u64),
    /// `SESSION`: gap in ms.
    Session(u64),
    /// `TUMBLE_ROWS`/`HOP_ROWS`: size and slide in rows.
    Rows(u64, u64),
}

impl TvfKind {
    /// The runtime's window.
    pub fn spec(&self) -> WindowSpec {
        use std::time::Duration;
        match *self {
            TvfKind::Tumble(s) => WindowSpec::Tumbling {
                size: Duration::from_millis(s),
            },
            TvfKind::Hop(size, slide) => WindowSpec::Hopping {
                size: Duration::from_millis(size),
                slide: Duration::from_millis(slide),
            },
            TvfKind::Cumulate(size, step) => WindowSpec::Cumulate {
                size: Duration::from_millis(size),
                step: Duration::from_millis(step),
            },
            TvfKind::Session(gap) => WindowSpec::Session {
                gap: Duration::from_millis(gap),
            },
            TvfKind::Rows(size, slide) => WindowSpec::Count { size, slide },
        }
    }
}

/// A window TVF in a logical plan: its input with `window_start` and `window_end` added.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowTvf {
    /// The windowed table.
    pub input: LogicalPlan,
    /// The window.
    pub kind: TvfKind,
    /// The `DESCRIPTOR` column (time windows).
    pub time_column: Option<String>,
    /// Allowed lateness in ms.
    pub lateness_ms: u64,
    /// Table that receives late rows.
    pub late_sink: Option<String>,
    /// `SESSION(TABLE t PARTITION BY a, b, …)`: the columns sessions are kept apart by.
    pub partition_by: Vec<String>,
    /// Line and column of the call.
    pub at: (u64, u64),
    schema: DFSchemaRef,
}

impl PartialOrd for WindowTvf {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (
            self.kind,
            &self.time_column,
            self.lateness_ms,
            &self.late_sink,
            &self.partition_by,
            self.at,
        )
            .partial_cmp(&(
                other.kind,
                &other.time_column,
                other.lateness_ms,
                &other.late_sink,
                &other.partition_by,
                other.at,
            ))
    }
}

/// The two columns that bound a window TVF's windows (what window operators group by).
pub const WINDOW_COLUMNS: [&str; 2] = ["window_start", "window_end"];

/// The third column a window TVF adds: the window's last instant (`window_end` - 1 ms),
/// the event time of a window aggregate's rows when grouped by (Flink's `window_time`).
pub const WINDOW_TIME: &str = "window_time";

/// Whether `c` is a column a window TVF adds.
pub fn is_window_column(c: &str) -> bool {
    WINDOW_COLUMNS.contains(&c) || c == WINDOW_TIME
}

fn tvf_schema(input: &LogicalPlan) -> datafusion_common::Result<DFSchemaRef> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let extra = DFSchema::from_unqualified_fields(
        WINDOW_COLUMNS
            .iter()
            .chain([&WINDOW_TIME])
            .map(|n| Field::new(*n, ts.clone(), false))
            .collect::<Vec<_>>()
            .into(),
        Default::default(),
    )?;
    let mut schema = input.schema().as_ref().clone();
    schema.merge(&extra);
    Ok(Arc::new(schema))
}

impl UserDefinedLogicalNodeCore for WindowTvf {
    fn name(&self) -> &str {
        "WindowTvf"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WindowTvf: {}", self.kind.spec())
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion_common::Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("a window TVF has one input".to_string()))?;
        Ok(Self {
            schema: tvf_schema(&input)?,
            input,
            ..self.clone()
        })
    }
}

/// Plans `TABLE(TUMBLE(…))` and friends.
#[derive(Debug)]
pub struct WindowTvfPlanner;

fn err(
    span: datafusion_sql::sqlparser::tokenizer::Span,
    msg: impl Into<String>,
) -> DataFusionError {
    let msg = msg.into();
    DataFusionError::Plan(msg.clone()).with_diagnostic(Diagnostic::new_error(
        msg,
        Span::try_from_sqlparser_span(span),
    ))
}

const USAGE: &str = "window functions take: TUMBLE(TABLE t, DESCRIPTOR(time_col), size), HOP(TABLE t, DESCRIPTOR(time_col), slide, size), CUMULATE(TABLE t, DESCRIPTOR(time_col), step, size), SESSION(TABLE t, DESCRIPTOR(time_col), gap), TUMBLE_ROWS(TABLE t, rows), HOP_ROWS(TABLE t, slide_rows, size_rows)";

impl RelationPlanner for WindowTvfPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        ctx: &mut dyn RelationPlannerContext,
    ) -> datafusion_common::Result<RelationPlanning> {
        let TableFactor::TableFunction { expr, alias } = relation else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let span = expr.span();
        let SqlExpr::Function(f) = &expr else {
            return Err(err(
                span,
                format!("TABLE(…) takes a window function; {USAGE}"),
            ));
        };
        let name = f.name.to_string().to_ascii_lowercase();
        if !matches!(
            name.as_str(),
            "tumble" | "hop" | "cumulate" | "session" | "tumble_rows" | "hop_rows"
        ) {
            return Err(err(
                span,
                format!("unknown table function `{name}`; {USAGE}"),
            ));
        }
        let FunctionArguments::List(list) = &f.args else {
            return Err(err(span, USAGE));
        };
        let mut positional: Vec<&SqlExpr> = Vec::new();
        let mut named: Vec<(String, &SqlExpr)> = Vec::new();
        for a in &list.args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => {
                    if !named.is_empty() {
                        return Err(err(e.span(), "positional arguments come before named ones"));
                    }
                    positional.push(e)
                }
                FunctionArg::Named {
                    name,
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => named.push((name.value.to_ascii_lowercase(), e)),
                _ => return Err(err(span, USAGE)),
            }
        }
        // The table.
        let Some(table) = positional.first() else {
            return Err(err(span, USAGE));
        };
        let table_name = match table {
            SqlExpr::Identifier(i) => ctx.normalize_ident(i.clone()),
            SqlExpr::CompoundIdentifier(parts) => parts
                .iter()
                .map(|p| ctx.normalize_ident(p.clone()))
                .collect::<Vec<_>>()
                .join("."),
            other => {
                return Err(err(
                    other.span(),
                    "the first argument names a table or view: TABLE name",
                ));
            }
        };
        let source = ctx
            .context_provider()
            .get_table_source(TableReference::bare(table_name.clone()))?;
        let input = LogicalPlanBuilder::scan(table_name.as_str(), source, None)?.build()?;
        let rows = name.ends_with("_rows");
        let mut rest = positional[1..].to_vec();
        // `TABLE t PARTITION BY a, b` (rewritten to `,SLUICE_PBY(a, b)` before parsing).
        let mut partition_by = Vec::new();
        if let Some(SqlExpr::Function(pby)) = rest.first().copied()
            && pby.name.to_string().eq_ignore_ascii_case("sluice_pby")
        {
            if name != "session" {
                return Err(err(
                    pby.name.span(),
                    "PARTITION BY is for SESSION windows; other windows take their keys from GROUP BY",
                ));
            }
            let FunctionArguments::List(keys) = &pby.args else {
                return Err(err(pby.name.span(), "PARTITION BY names columns"));
            };
            for k in &keys.args {
                match k {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Identifier(i))) => {
                        let c = ctx.normalize_ident(i.clone());
                        if input.schema().field_with_unqualified_name(&c).is_err() {
                            return Err(err(
                                i.span,
                                format!(
                                    "PARTITION BY names `{c}`, which is not a column of `{table_name}`"
                                ),
                            ));
                        }
                        partition_by.push(c);
                    }
                    _ => return Err(err(pby.name.span(), "PARTITION BY names columns")),
                }
            }
            rest.remove(0);
        }
        let mut time_column = None;
        if !rows {
            let Some(d) = rest.first().copied() else {
                return Err(err(
                    span,
                    format!("{name} needs DESCRIPTOR(time_column); {USAGE}"),
                ));
            };
            time_column = Some(descriptor(d, ctx)?);
            if input
                .schema()
                .field_with_unqualified_name(time_column.as_deref().unwrap_or_default())
                .is_err()
            {
                return Err(err(
                    d.span(),
                    format!(
                        "DESCRIPTOR names `{}`, which is not a column of `{table_name}`",
                        time_column.unwrap_or_default()
                    ),
                ));
            }
            rest.remove(0);
        }
        let mut get = |pos: usize, key: &str| -> Option<&SqlExpr> {
            named
                .iter()
                .position(|(n, _)| n == key)
                .map(|i| named.remove(i).1)
                .or_else(|| rest.get(pos).copied())
        };
        let fan_out = |size: u64, slide: u64, what: &str| {
            let n = size / slide.max(1);
            match n > sluice_plan::MAX_WINDOWS_PER_ROW {
                true => Err(err(
                    span,
                    format!(
                        "{what} puts every row in {n} windows; at most {} (make it larger)",
                        sluice_plan::MAX_WINDOWS_PER_ROW
                    ),
                )),
                false => Ok(()),
            }
        };
        let kind = match name.as_str() {
            "tumble" => TvfKind::Tumble(need_interval(get(0, "size"), "size", span, ctx)?),
            "hop" => {
                let slide = need_interval(get(0, "slide"), "slide", span, ctx)?;
                let size = need_interval(get(1, "size"), "size", span, ctx)?;
                if slide > size {
                    return Err(err(span, "HOP's slide must not be larger than its size"));
                }
                fan_out(size, slide, "HOP's slide")?;
                TvfKind::Hop(size, slide)
            }
            "cumulate" => {
                let step = need_interval(get(0, "step"), "step", span, ctx)?;
                let size = need_interval(get(1, "size"), "size", span, ctx)?;
                if step == 0 || step > size || size % step != 0 {
                    return Err(err(
                        span,
                        "CUMULATE's size must be a whole number of steps (step first, then size)",
                    ));
                }
                fan_out(size, step, "CUMULATE's step")?;
                TvfKind::Cumulate(size, step)
            }
            "session" => TvfKind::Session(need_interval(get(0, "gap"), "gap", span, ctx)?),
            "tumble_rows" => {
                let size = need_count(get(0, "size"), "size", span)?;
                TvfKind::Rows(size, size)
            }
            _ => {
                let slide = need_count(get(0, "slide"), "slide", span)?;
                let size = need_count(get(1, "size"), "size", span)?;
                fan_out(size, slide, "HOP_ROWS's slide")?;
                TvfKind::Rows(size, slide)
            }
        };
        let expected = match kind {
            TvfKind::Hop(..) | TvfKind::Cumulate(..) | TvfKind::Rows(..)
                if name != "tumble_rows" =>
            {
                2
            }
            _ => 1,
        };
        if rest.len() > expected {
            return Err(err(
                rest[expected].span(),
                format!("too many arguments; {USAGE}"),
            ));
        }
        let lateness_ms = match get(usize::MAX, "lateness") {
            Some(e) if rows => {
                return Err(err(e.span(), "count windows have no lateness"));
            }
            Some(e) => interval_ms(e, ctx)?,
            None => 0,
        };
        let late_sink = match get(usize::MAX, "late_sink") {
            Some(SqlExpr::Value(v)) => match &v.value {
                Value::SingleQuotedString(s) => Some(s.clone()),
                _ => return Err(err(v.span(), "late_sink => 'table name'")),
            },
            Some(SqlExpr::Identifier(i)) => Some(ctx.normalize_ident(i.clone())),
            Some(e) => return Err(err(e.span(), "late_sink => 'table name'")),
            None => None,
        };
        if rows && late_sink.is_some() {
            return Err(err(span, "count windows have no late rows"));
        }
        if let Some((n, e)) = named.first() {
            return Err(err(
                e.span(),
                format!(
                    "unknown argument `{n}`; named arguments are size, slide, gap, lateness, late_sink"
                ),
            ));
        }
        let node = WindowTvf {
            schema: tvf_schema(&input)?,
            input,
            kind,
            time_column,
            lateness_ms,
            late_sink,
            partition_by,
            at: (span.start.line, span.start.column),
        };
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan, alias,
        ))))
    }
}

fn descriptor(
    e: &SqlExpr,
    ctx: &mut dyn RelationPlannerContext,
) -> datafusion_common::Result<String> {
    if let SqlExpr::Function(f) = e
        && f.name.to_string().eq_ignore_ascii_case("descriptor")
        && let FunctionArguments::List(l) = &f.args
        && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Identifier(i)))] =
            l.args.as_slice()
    {
        return Ok(ctx.normalize_ident(i.clone()));
    }
    Err(err(e.span(), "expected DESCRIPTOR(time_column)"))
}

fn need_interval(
    e: Option<&SqlExpr>,
    what: &str,
    span: datafusion_sql::sqlparser::tokenizer::Span,
    ctx: &mut dyn RelationPlannerContext,
) -> datafusion_common::Result<u64> {
    let e = e.ok_or_else(|| err(span, format!("missing the window {what}; {USAGE}")))?;
    let ms = interval_ms(e, ctx)?;
    if ms == 0 {
        return Err(err(e.span(), format!("the window {what} must be positive")));
    }
    Ok(ms)
}

/// Milliseconds of an `INTERVAL` literal.
pub fn interval_ms(
    e: &SqlExpr,
    ctx: &mut dyn RelationPlannerContext,
) -> datafusion_common::Result<u64> {
    let bad = || {
        err(
            e.span(),
            format!("expected an interval such as INTERVAL '10' SECOND, found `{e}`"),
        )
    };
    if !matches!(e, SqlExpr::Interval(_)) {
        return Err(bad());
    }
    let expr = ctx.sql_to_expr(e.clone(), &DFSchema::empty())?;
    literal_interval_ms(&expr).ok_or_else(bad)
}

/// Milliseconds of an interval literal expression, if it is one without months.
pub fn literal_interval_ms(expr: &Expr) -> Option<u64> {
    let Expr::Literal(v, _) = expr else {
        return None;
    };
    let ms: i128 = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i.days as i128 * 86_400_000 + i.nanoseconds as i128 / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i.days as i128 * 86_400_000 + i.milliseconds as i128
        }
        _ => return None,
    };
    u64::try_from(ms).ok()
}

fn need_count(
    e: Option<&SqlExpr>,
    what: &str,
    span: datafusion_sql::sqlparser::tokenizer::Span,
) -> datafusion_common::Result<u64> {
    let e = e.ok_or_else(|| err(span, format!("missing the window {what} (rows); {USAGE}")))?;
    if let SqlExpr::Value(v) = e
        && let Value::Number(n, _) = &v.value
        && let Ok(n) = n.parse::<u64>()
        && n > 0
    {
        return Ok(n);
    }
    Err(err(
        e.span(),
        format!("the window {what} is a positive number of rows, found `{e}`"),
    ))
}

/// A table read with `FOR SYSTEM_TIME AS OF …`: the right side of a lookup join.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LookupTable {
    /// The table's name in the catalog.
    pub table: String,
    schema: DFSchemaRef,
}

impl PartialOrd for LookupTable {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.table.partial_cmp(&other.table)
    }
}

impl UserDefinedLogicalNodeCore for LookupTable {
    fn name(&self) -> &str {
        "LookupTable"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        Vec::new()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LookupTable: {}", self.table)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        _inputs: Vec<LogicalPlan>,
    ) -> datafusion_common::Result<Self> {
        Ok(self.clone())
    }
}

/// Plans tables named where the script had `FOR SYSTEM_TIME AS OF` as lookup tables.
#[derive(Debug)]
pub struct LookupPlanner {
    /// Line and column of each such table name.
    pub at: Vec<(u64, u64)>,
}

impl RelationPlanner for LookupPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        ctx: &mut dyn RelationPlannerContext,
    ) -> datafusion_common::Result<RelationPlanning> {
        let TableFactor::Table { name, alias, .. } = &relation else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let start = name.span().start;
        if !self.at.contains(&(start.line, start.column)) {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        }
        let table = ctx.object_name_to_table_reference(name.clone())?;
        let source = ctx.context_provider().get_table_source(table.clone())?;
        let schema = Arc::new(DFSchema::try_from_qualified_schema(
            table.clone(),
            &source.schema(),
        )?);
        let node = LookupTable {
            table: table.table().to_string(),
            schema,
        };
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan,
            alias.clone(),
        ))))
    }
}
