//! Lowering `GROUP BY`: window aggregates over a window TVF, running aggregates,
//! aggregates over updating inputs.

use std::sync::Arc;
use std::time::Duration;

use datafusion_expr::expr::AggregateFunction;
use datafusion_expr::{Expr, lit};
use sluice_plan::{NodeKind, Partitioning, WindowSpec};

use crate::error::{Result, SqlError};
use crate::window_tvf::WINDOW_COLUMNS;

use super::*;

impl Lowerer<'_> {
    pub(crate) fn aggregate(
        &mut self,
        agg: &datafusion_expr::logical_plan::Aggregate,
    ) -> Result<Lowered> {
        let mut input = self.lower(&agg.input)?;
        let n_groups = agg.group_expr.len();
        let names: Vec<String> = agg
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let window = input.window.take();
        let mut window_cols = Vec::new();
        let mut keys = Vec::new();
        let mut computed: Vec<(Expr, String)> = Vec::new();
        for (g, name) in agg.group_expr.iter().zip(&names) {
            let g = resolve(g, &input.columns);
            match as_column(&g) {
                Some(c) if window.is_some() && WINDOW_COLUMNS.contains(&c) => {
                    window_cols.push(c.to_string())
                }
                Some(c) if input.columns.iter().any(|x| x == c) => keys.push(c.to_string()),
                _ => {
                    if let Expr::GroupingSet(_) = g {
                        return Err(SqlError::unsupported("GROUPING SETS, CUBE and ROLLUP"));
                    }
                    check_scalar(&g)?;
                    computed.push((g, name.clone()));
                    keys.push(name.clone());
                }
            }
        }
        let aggregates: Vec<Expr> = agg
            .aggr_expr
            .iter()
            .zip(&names[n_groups..])
            .map(|(e, n)| resolve(e, &input.columns).unalias().alias(n))
            .collect();
        let aggregates = aggregates
            .into_iter()
            .map(rewrite_filter)
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Expr> = aggregates.iter().collect();
        self.check_columns(&input, &refs)?;
        if !computed.is_empty() {
            // Compute the grouping expressions as columns first.
            let mut exprs: Vec<Expr> = input.columns.iter().map(|c| ucol(c.as_str())).collect();
            let mut cols = input.columns.clone();
            for (e, n) in &computed {
                exprs.push(e.clone());
                cols.push(n.clone());
            }
            self.check_columns(&input, &computed.iter().map(|(e, _)| e).collect::<Vec<_>>())?;
            let w = input.window.clone();
            input = self.project(&input, exprs, cols);
            input.window = w;
        }
        let p = self.parallelism;
        if input.updating && window.is_some() {
            return Err(SqlError::unsupported(
                "a windowed aggregate over an updating input (a GROUP BY without windows, a Top-N or a regular join of one)",
            ));
        }
        if let Some(tvf) = window {
            if window_cols.len() != 2 {
                return Err(SqlError::new(
                    "a windowed aggregate must GROUP BY both window_start and window_end",
                ));
            }
            let spec: WindowSpec = tvf.kind.spec();
            let kind = NodeKind::WindowAggregate {
                keys: keys.clone(),
                window: spec,
                aggregates,
                allowed_lateness: Duration::from_millis(tvf.lateness_ms),
                early_firing: None,
            };
            let (p, edge) = if keys.is_empty() {
                (1, None)
            } else {
                (p, Some(Partitioning::Hash(keys.clone())))
            };
            let node = self.add(&input, kind, p, edge);
            if let Some(sink) = &tvf.late_sink {
                self.late_sink(node, &input, sink)?;
            }
            let window_end = spec
                .size_and_slide_ms()
                .map(|(size, _)| ("window_end".to_string(), size as u64));
            let mut columns = keys;
            columns.extend(WINDOW_COLUMNS.iter().map(|s| s.to_string()));
            columns.extend(names[n_groups..].iter().cloned());
            return Ok(Lowered {
                node,
                columns,
                rowtime: None,
                window: None,
                updating: false,
                window_end,
            });
        }
        if keys.is_empty() {
            // A global aggregate: one constant key, one subtask.
            let mut exprs: Vec<Expr> = input.columns.iter().map(|c| ucol(c.as_str())).collect();
            let mut cols = input.columns.clone();
            exprs.push(lit(0i32));
            cols.push("__global".into());
            let keyed = self.project(&input, exprs, cols);
            let node = self.add(
                &keyed,
                NodeKind::Aggregate {
                    keys: vec!["__global".into()],
                    aggregates,
                    ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
                },
                1,
                Some(Partitioning::Hash(vec!["__global".into()])),
            );
            let mut columns = vec!["__global".to_string()];
            columns.extend(names[n_groups..].iter().cloned());
            let out = Lowered {
                node,
                columns,
                rowtime: None,
                window: None,
                updating: true,
                window_end: None,
            };
            let names = names[n_groups..].to_vec();
            let exprs = names.iter().map(|n| ucol(n.as_str())).collect();
            return Ok(self.project(&out, exprs, names));
        }
        let node = self.add(
            &input,
            NodeKind::Aggregate {
                keys: keys.clone(),
                aggregates,
                ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
            },
            p,
            Some(Partitioning::Hash(keys.clone())),
        );
        let mut columns = keys;
        columns.extend(names[n_groups..].iter().cloned());
        Ok(Lowered {
            node,
            columns,
            rowtime: None,
            window: None,
            updating: true,
            window_end: None,
        })
    }
}

/// `agg(x) FILTER (WHERE p)` as `agg(CASE WHEN p THEN x END)`: the same for aggregates
/// that skip nulls (`count`, `sum`, `min`, `max`, `avg`, and their DISTINCT forms).
pub(crate) fn rewrite_filter(e: Expr) -> Result<Expr> {
    let Expr::Alias(alias) = &e else {
        return Ok(e);
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = alias.expr.as_ref() else {
        return Ok(e);
    };
    let Some(filter) = &params.filter else {
        return Ok(e);
    };
    if !matches!(func.name(), "count" | "sum" | "min" | "max" | "avg") {
        return Err(SqlError::unsupported(format!(
            "FILTER (WHERE …) on `{}` (count, sum, min, max and avg take it)",
            func.name()
        )));
    }
    let mut params = params.clone();
    params.args = params
        .args
        .iter()
        .map(|a| {
            datafusion_expr::when(filter.as_ref().clone(), a.clone())
                .end()
                .map_err(|e| SqlError::new(e.to_string()))
        })
        .collect::<Result<_>>()?;
    params.filter = None;
    Ok(Expr::AggregateFunction(AggregateFunction {
        func: Arc::clone(func),
        params,
    })
    .alias(alias.name.clone()))
}
