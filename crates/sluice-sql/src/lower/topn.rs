//! Lowering Top-N: `ROW_NUMBER`/`RANK` filtered by a limit, per window or over a
//! whole stream, and deduplication.

use datafusion_common::ScalarValue;
use datafusion_expr::expr::WindowFunction;
use datafusion_expr::{BinaryExpr, Expr, LogicalPlan, Operator, WindowFunctionDefinition};
use sluice_plan::{NodeKind, Partitioning};

use crate::error::{Result, SqlError};
use crate::window_tvf::WINDOW_COLUMNS;

use super::*;

impl Lowerer<'_> {
    /// `LIMIT n` on a stream: the first `n` rows to arrive (one subtask sees them all),
    /// or with `ORDER BY`, the top `n` rows by that order as they change (a Top-N over
    /// the whole stream, as Flink plans it).
    pub(crate) fn limit(&mut self, l: &datafusion_expr::logical_plan::Limit) -> Result<Lowered> {
        use datafusion_expr::logical_plan::{FetchType, SkipType};
        match l.get_skip_type().map_err(SqlError::datafusion)? {
            SkipType::Literal(0) => {}
            _ => return Err(SqlError::unsupported("OFFSET on a stream")),
        }
        let fetch = match l.get_fetch_type().map_err(SqlError::datafusion)? {
            FetchType::Literal(Some(n)) if n > 0 => n,
            FetchType::Literal(Some(_)) => {
                return Err(SqlError::new(
                    "LIMIT 0 passes no row; give a positive limit",
                ));
            }
            _ => return Err(SqlError::new("LIMIT takes a number of rows")),
        };
        let LogicalPlan::Sort(sort) = l.input.as_ref() else {
            if matches!(l.input.as_ref(), LogicalPlan::Projection(p) if matches!(p.input.as_ref(), LogicalPlan::Sort(_)))
            {
                return Err(SqlError::unsupported(
                    "ORDER BY a column the SELECT list leaves out, with LIMIT, on a stream (select that column too)",
                ));
            }
            let input = self.lower(&l.input)?;
            if input.updating {
                return Err(SqlError::new(
                    "LIMIT over an updating result is not supported: add ORDER BY … to make it a Top-N",
                ));
            }
            let node = self.add(&input, NodeKind::Limit { fetch }, 1, None);
            return Ok(Lowered { node, ..input });
        };
        let input = self.lower(&sort.input)?;
        let input = self.materialize(input)?;
        let mut order = Vec::new();
        for s in &sort.expr {
            let Some(c) = as_column(&resolve(&s.expr, &input.columns)).map(str::to_string) else {
                return Err(SqlError::unsupported(format!(
                    "ORDER BY an expression (`{}`) with LIMIT on a stream (order by a column)",
                    s.expr
                )));
            };
            order.push((c, !s.asc));
        }
        let ((order_by, descending), then_by) = order
            .split_first()
            .map(|(f, rest)| (f.clone(), rest.to_vec()))
            .ok_or_else(|| SqlError::new("ORDER BY names no column"))?;
        let rank = "_rank".to_string();
        let node = self.add(
            &input,
            NodeKind::TopN {
                partition_by: Vec::new(),
                order_by,
                descending,
                then_by,
                limit: fetch,
                rank_column: rank.clone(),
                ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
                upsert: false,
            },
            1,
            None,
        );
        let mut columns = input.columns.clone();
        columns.push(rank);
        let ranked = Lowered {
            node,
            columns,
            rowtime: None,
            window: None,
            updating: true,
            window_end: None,
            window_start: None,
        };
        let exprs = input.columns.iter().map(|c| ucol(c)).collect();
        Ok(self.project(&ranked, exprs, input.columns.clone()))
    }

    /// `WHERE rk <= n` over `RANK() OVER (PARTITION BY window_start, window_end … ORDER BY x)`.
    pub(crate) fn top_n(
        &mut self,
        f: &datafusion_expr::logical_plan::Filter,
    ) -> Result<Option<Lowered>> {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = unqualify(&f.predicate) else {
            return Ok(None);
        };
        let (column, limit) = match (left.as_ref(), op, right.as_ref()) {
            (Expr::Column(c), op, Expr::Literal(v, _)) => (c.name.clone(), limit_of(op, v, false)),
            (Expr::Literal(v, _), op, Expr::Column(c)) => (c.name.clone(), limit_of(op, v, true)),
            _ => return Ok(None),
        };
        // Follow the column down through aliases and plain projections to a Window node.
        let rank_name = column.clone();
        let mut name = column;
        let mut plan = f.input.as_ref();
        // The projections passed on the way down, re-applied over the Top-N's output.
        let mut skipped: Vec<&datafusion_expr::logical_plan::Projection> = Vec::new();
        let window = loop {
            match plan {
                LogicalPlan::SubqueryAlias(a) => plan = &a.input,
                LogicalPlan::Projection(p) => {
                    skipped.push(p);
                    let Some(i) = p.schema.fields().iter().position(|f| f.name() == &name) else {
                        return Ok(None);
                    };
                    for e in &p.expr {
                        if as_column(&unqualify(e)).is_none() {
                            return Ok(None);
                        }
                    }
                    let picked = unqualify(&p.expr[i]);
                    let Some(c) = as_column(&picked) else {
                        return Ok(None);
                    };
                    name = c.to_string();
                    plan = &p.input;
                }
                LogicalPlan::Window(w) => break w,
                _ => return Ok(None),
            }
        };
        let n_in = window.input.schema().fields().len();
        let Some(i) = window
            .schema
            .fields()
            .iter()
            .position(|f| f.name() == &name)
        else {
            return Ok(None);
        };
        if i < n_in || window.window_expr.len() != 1 {
            return Err(SqlError::unsupported(
                "more than one OVER (…) function in a Top-N",
            ));
        }
        let window_out = window.schema.field(i).name().clone();
        let Expr::WindowFunction(wf) = window.window_expr[0].clone().unalias() else {
            return Ok(None);
        };
        let WindowFunction { fun, params } = wf.as_ref();
        let fname = match fun {
            WindowFunctionDefinition::WindowUDF(u) => u.name().to_string(),
            WindowFunctionDefinition::AggregateUDF(u) => u.name().to_string(),
        };
        let Some(limit) = limit else {
            return Err(SqlError::new(format!(
                "a Top-N filters its rank with `<= n`, `< n` or `= 1` (n a positive integer), not `{}`",
                f.predicate
            )));
        };
        if fname != "rank" && fname != "row_number" {
            return Err(SqlError::unsupported(format!(
                "{}() in a Top-N (RANK() keeps ties, ROW_NUMBER() does not)",
                fname.to_uppercase()
            )));
        }
        let input = self.lower(&window.input)?;
        let input = self.materialize(input)?;
        let partition: Vec<String> = params
            .partition_by
            .iter()
            .map(|e| as_column(&resolve(e, &input.columns)).map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| SqlError::new("a Top-N partitions by columns"))?;
        let per_window = WINDOW_COLUMNS
            .iter()
            .all(|w| partition.iter().any(|p| p == w));
        let Some((order, more)) = params.order_by.split_first() else {
            return Err(SqlError::new("a Top-N needs an ORDER BY"));
        };
        let Some(order_by) = as_column(&resolve(&order.expr, &input.columns)).map(str::to_string)
        else {
            return Err(SqlError::new("a Top-N orders by a column"));
        };
        let mut then_by = Vec::new();
        for o in more {
            let Some(c) = as_column(&resolve(&o.expr, &input.columns)).map(str::to_string) else {
                return Err(SqlError::new("a Top-N orders by columns"));
            };
            then_by.push((c, !o.asc));
        }
        for c in partition
            .iter()
            .chain([&order_by])
            .chain(then_by.iter().map(|(c, _)| c))
        {
            if !input.columns.contains(c) {
                return Err(SqlError::new(format!(
                    "Top-N column `{c}` is not available here"
                )));
            }
        }
        if !per_window {
            // Top-N over the whole stream: an updating result (changes of the ranks).
            if fname != "row_number" {
                return Err(SqlError::unsupported(
                    "RANK() without windows (use ROW_NUMBER(), or partition by window_start, window_end)",
                ));
            }
            let (p, edge) = if partition.is_empty() {
                (1, None)
            } else {
                (
                    self.parallelism,
                    Some(Partitioning::Hash(partition.clone())),
                )
            };
            let node = self.add(
                &input,
                NodeKind::TopN {
                    partition_by: partition,
                    order_by,
                    descending: !order.asc,
                    then_by,
                    limit,
                    rank_column: rank_name.clone(),
                    ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
                    upsert: false,
                },
                p,
                edge,
            );
            let mut columns = input.columns.clone();
            columns.push(rank_name.clone());
            let out = Lowered {
                node,
                columns,
                rowtime: None,
                window: None,
                updating: true,
                window_end: None,
                window_start: None,
            };
            return Ok(Some(self.reproject(out, &skipped, &window_out, &rank_name)));
        }
        let others: Vec<String> = partition
            .iter()
            .filter(|p| !WINDOW_COLUMNS.contains(&p.as_str()))
            .cloned()
            .collect();
        let mut hash = vec!["window_end".to_string()];
        hash.extend(others.iter().cloned());
        let node = self.add(
            &input,
            NodeKind::TopNPerWindow {
                partition_by: others,
                order_by,
                descending: !order.asc,
                then_by,
                limit,
                row_number: fname == "row_number",
                rank_column: Some(rank_name.clone()),
            },
            self.parallelism,
            Some(Partitioning::Hash(hash)),
        );
        let mut columns = input.columns.clone();
        columns.push(rank_name.clone());
        let out = Lowered {
            node,
            columns,
            ..input
        };
        Ok(Some(self.reproject(out, &skipped, &window_out, &rank_name)))
    }

    /// Re-applies the column projections (renames, reorders, drops) that lay between a
    /// Top-N's filter and its OVER window, innermost first; the window function's output
    /// is the rank column.
    pub(crate) fn reproject(
        &mut self,
        mut out: Lowered,
        skipped: &[&datafusion_expr::logical_plan::Projection],
        window_out: &str,
        rank: &str,
    ) -> Lowered {
        for p in skipped.iter().rev() {
            let mut exprs = Vec::with_capacity(p.expr.len());
            let mut names = Vec::with_capacity(p.expr.len());
            for (e, f) in p.expr.iter().zip(p.schema.fields()) {
                let e = e.clone().unalias();
                let source = match &e {
                    Expr::Column(c) if c.name == window_out => rank.to_string(),
                    _ => match as_column(&resolve(&e, &out.columns)) {
                        Some(c) if out.columns.iter().any(|x| x == c) => c.to_string(),
                        // Not a plain column of ours: keep the Top-N's output as it is.
                        _ => return out,
                    },
                };
                exprs.push(ucol(source.as_str()));
                names.push(f.name().clone());
            }
            // The rank column keeps its name when the projection passes it on as is.
            out = self.project(&out, exprs, names);
        }
        out
    }
}

/// The limit of `rank <op> v`, if it is a Top-N bound.
pub(crate) fn limit_of(op: Operator, v: &ScalarValue, flipped: bool) -> Option<usize> {
    let n: i64 = match v {
        ScalarValue::Int64(Some(n)) => *n,
        ScalarValue::Int32(Some(n)) => *n as i64,
        ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok()?,
        _ => return None,
    };
    let op = if flipped { op.swap()? } else { op };
    let limit = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    usize::try_from(limit).ok().filter(|&l| l > 0)
}
