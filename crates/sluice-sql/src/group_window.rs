//! Flink's group window functions, the syntax before window TVFs and still accepted by
//! Flink 2.x:
//!
//! ```sql
//! SELECT bidder, COUNT(*), SESSION_START(ts, INTERVAL '10' SECOND), SESSION_END(ts, INTERVAL '10' SECOND)
//! FROM bid GROUP BY bidder, SESSION(ts, INTERVAL '10' SECOND)
//! ```
//!
//! is the window TVF query
//!
//! ```sql
//! SELECT bidder, COUNT(*), window_start, window_end
//! FROM TABLE(SESSION(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND)) AS bid
//! GROUP BY bidder, window_start, window_end
//! ```
//!
//! and is rewritten to it before planning (`TUMBLE(ts, size)`, `HOP(ts, slide, size)`,
//! `SESSION(ts, gap)`; `…_START` and `…_END` become the window's columns).

use std::ops::ControlFlow;

use datafusion_sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, Query, Select,
    SetExpr, Spanned, TableAlias, TableFactor, VisitMut, VisitorMut, visit_expressions_mut,
};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;

use crate::error::SqlError;
use crate::script::Pos;

/// Rewrites every group window of `q` (and of its subqueries) to a window TVF.
pub(crate) fn rewrite(q: &mut Query) -> Result<(), SqlError> {
    struct Rewriter;
    impl VisitorMut for Rewriter {
        type Break = SqlError;
        fn post_visit_query(&mut self, q: &mut Query) -> ControlFlow<SqlError> {
            match set_expr(&mut q.body) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => ControlFlow::Break(e),
            }
        }
    }
    match q.visit(&mut Rewriter) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

fn set_expr(e: &mut SetExpr) -> Result<(), SqlError> {
    match e {
        SetExpr::Select(s) => select(s),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr(left)?;
            set_expr(right)
        }
        _ => Ok(()),
    }
}

/// The group window functions and their TVFs' names.
const KINDS: [&str; 3] = ["TUMBLE", "HOP", "SESSION"];

fn at(e: &impl Spanned) -> Pos {
    e.span().start.into()
}

/// `TUMBLE(…)`, `HOP(…)` or `SESSION(…)` with plain arguments: its kind and arguments.
fn group_window(e: &Expr) -> Option<(&'static str, Vec<&Expr>)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.to_string();
    let kind = KINDS.into_iter().find(|k| name.eq_ignore_ascii_case(k))?;
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let args = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((kind, args))
}

fn select(s: &mut Select) -> Result<(), SqlError> {
    let GroupByExpr::Expressions(keys, _) = &mut s.group_by else {
        return Ok(());
    };
    let windows: Vec<usize> = (0..keys.len())
        .filter(|&i| group_window(&keys[i]).is_some())
        .collect();
    let Some(&index) = windows.first() else {
        return Ok(());
    };
    let key = keys[index].clone();
    if windows.len() > 1 {
        return Err(SqlError::at(
            at(&keys[windows[1]]),
            "a GROUP BY takes one group window (TUMBLE, HOP or SESSION)",
        ));
    }
    let (kind, args) = group_window(&key).expect("invariant: found above");
    let want = match kind {
        "HOP" => 3,
        _ => 2,
    };
    let usage = match kind {
        "TUMBLE" => "TUMBLE(time_column, INTERVAL size)",
        "HOP" => "HOP(time_column, INTERVAL slide, INTERVAL size)",
        _ => "SESSION(time_column, INTERVAL gap)",
    };
    if args.len() != want {
        return Err(SqlError::at(
            at(&key),
            format!("the group window is {usage}"),
        ));
    }
    let time = match args[0] {
        Expr::Identifier(i) => i.clone(),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => parts[1].clone(),
        other => {
            return Err(SqlError::at(
                at(other),
                format!("{usage}: the first argument is a time column of the table"),
            ));
        }
    };
    let [from] = s.from.as_mut_slice() else {
        return Err(not_over_a_table(&key, kind));
    };
    if !from.joins.is_empty() {
        return Err(not_over_a_table(&key, kind));
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = &from.relation
    else {
        return Err(not_over_a_table(&key, kind));
    };
    let intervals: Vec<String> = args[1..].iter().map(|a| a.to_string()).collect();
    let tvf = format!(
        "SELECT * FROM TABLE({kind}({name}, DESCRIPTOR({time}), {}))",
        intervals.join(", ")
    );
    let alias = alias.clone().unwrap_or_else(|| TableAlias {
        explicit: true,
        name: name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .cloned()
            .unwrap_or_else(|| Ident::new(name.to_string())),
        columns: Vec::new(),
        at: None,
    });
    let relation = parse_relation(&tvf)
        .ok_or_else(|| SqlError::at(at(&key), format!("the group window is {usage}")))?;
    from.relation = match relation {
        TableFactor::TableFunction { expr, .. } => TableFactor::TableFunction {
            expr,
            alias: Some(alias),
        },
        other => other,
    };
    keys.splice(
        index..=index,
        [
            Expr::Identifier(Ident::new("window_start")),
            Expr::Identifier(Ident::new("window_end")),
        ],
    );
    // `KIND_START(…)` and `KIND_END(…)` name the window's bounds.
    let mut error = None;
    let mut bounds = |e: &mut Expr| {
        let Expr::Function(f) = e else {
            return ControlFlow::<()>::Continue(());
        };
        let name = f.name.to_string().to_ascii_uppercase();
        let Some((window, part)) = name.rsplit_once('_') else {
            return ControlFlow::Continue(());
        };
        if !KINDS.contains(&window) {
            return ControlFlow::Continue(());
        }
        let column = match part {
            "START" => "window_start",
            "END" => "window_end",
            "ROWTIME" | "PROCTIME" => {
                error = Some(SqlError::at(
                    at(&*e),
                    format!(
                        "{name} is not supported yet (the window's end is a plain TIMESTAMP, not a time attribute); use {window}_END, or window TVFs to cascade windows"
                    ),
                ));
                return ControlFlow::Break(());
            }
            _ => return ControlFlow::Continue(()),
        };
        if window != kind {
            error = Some(SqlError::at(
                at(&*e),
                format!("{name} in a query grouped by {kind}(…): use {kind}_{part}"),
            ));
            return ControlFlow::Break(());
        }
        *e = Expr::Identifier(Ident::new(column));
        ControlFlow::Continue(())
    };
    for item in &mut s.projection {
        let _ = visit_expressions_mut(item, &mut bounds);
    }
    if let Some(h) = &mut s.having {
        let _ = visit_expressions_mut(h, &mut bounds);
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn not_over_a_table(key: &Expr, kind: &str) -> SqlError {
    SqlError::at(
        at(key),
        format!(
            "GROUP BY {kind}(…) over a join or a subquery is not supported yet; group over a table or view (CREATE VIEW of the join), or use the window TVF TABLE({kind}(TABLE t, DESCRIPTOR(time_column), …))"
        ),
    )
}

/// The relation of `SELECT * FROM <relation>` (a window TVF here, its table argument
/// without the `TABLE` keyword, as the script splitter leaves it).
fn parse_relation(sql: &str) -> Option<TableFactor> {
    let statement = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statement())
        .ok()?;
    let datafusion_sql::sqlparser::ast::Statement::Query(q) = statement else {
        return None;
    };
    let SetExpr::Select(s) = *q.body else {
        return None;
    };
    s.from.into_iter().next().map(|t| t.relation)
}
