//! Lowering `GROUP BY`: window aggregates over a window TVF, running aggregates,
//! aggregates over updating inputs.

use std::sync::Arc;
use std::time::Duration;

use datafusion_expr::expr::AggregateFunction;
use datafusion_expr::{Expr, lit};
use sluice_plan::{NodeKind, Partitioning, WindowSpec};

use crate::error::{Result, SqlError};
use crate::window_tvf::{WINDOW_COLUMNS, WINDOW_TIME};

use super::*;

impl Lowerer<'_> {
    /// A window aggregate's rows with their `window_time` column (named `name`), when the
    /// GROUP BY has it: the window's last instant, which is the rows' event time, so the
    /// column is their time attribute from here on (a later window can be over it, as in
    /// Flink's cascading windows).
    fn with_window_time(&mut self, out: Lowered, name: Option<String>) -> Lowered {
        let Some(name) = name else {
            return out;
        };
        let mut exprs: Vec<Expr> = out.columns.iter().map(|c| ucol(c.as_str())).collect();
        exprs.push(ucol(sluice_types::TIMESTAMP_FIELD));
        let mut names = out.columns.clone();
        names.push(name.clone());
        let mut timed = self.project_always(&out, exprs, names);
        timed.rowtime = Some(name);
        timed
    }

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
        // `GROUP BY …, window_time`: the name it is given (added after the aggregate).
        let mut window_time: Option<String> = None;
        let mut keys = Vec::new();
        let mut computed: Vec<(Expr, String)> = Vec::new();
        for (g, name) in agg.group_expr.iter().zip(&names) {
            let g = resolve(g, &input.columns);
            match as_column(&g) {
                Some(c) if window.is_some() && WINDOW_COLUMNS.contains(&c) => {
                    window_cols.push(c.to_string())
                }
                Some(c) if window.is_some() && c == WINDOW_TIME => window_time = Some(name.clone()),
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
        if window.is_some() && window_cols.len() != 2 {
            return Err(SqlError::new(
                "a windowed aggregate must GROUP BY both window_start and window_end",
            ));
        }
        if input.updating
            && let Some(tvf) = &window
            && matches!(tvf.kind, crate::window_tvf::TvfKind::Session(..))
            && (tvf.lateness_ms > 0 || tvf.late_sink.is_some())
        {
            return Err(SqlError::unsupported(
                "`lateness =>` or `late_sink =>` on a SESSION window over an updating input",
            ));
        }
        if input.updating
            && let Some(tvf) = &window
            && !matches!(tvf.kind, crate::window_tvf::TvfKind::Session(..))
        {
            // Windows of a changelog (Flink 1.19+): each row (and each retraction) is
            // put in its window as a column, the groups (keys and window) take the
            // changes, and each emits once when the watermark passes its window's end.
            use crate::window_tvf::TvfKind;
            if !matches!(
                tvf.kind,
                TvfKind::Tumble(_) | TvfKind::Hop(..) | TvfKind::Cumulate(..)
            ) {
                return Err(SqlError::unsupported(format!(
                    "a {} window over an updating input (a GROUP BY without windows, a Top-N, a join or a changelog source; TUMBLE, HOP, CUMULATE and SESSION windows take one)",
                    tvf.kind.spec()
                )));
            }
            let spec = tvf.kind.spec();
            let windowed = match tvf.kind {
                TvfKind::Tumble(_) => self.materialize(Lowered {
                    window: Some(Arc::clone(tvf)),
                    ..input
                })?,
                // A row is in several windows: a copy for each.
                _ => {
                    let par = self.plan.nodes[input.node].parallelism;
                    let node =
                        self.add(&input, NodeKind::AssignWindows { window: spec }, par, None);
                    let mut columns = input.columns.clone();
                    columns.extend(WINDOW_COLUMNS.iter().map(|c| c.to_string()));
                    Lowered {
                        node,
                        columns,
                        window: None,
                        ..input
                    }
                }
            };
            let (size, slide) = spec
                .size_and_slide_ms()
                .map(|(a, b)| (a as u64, b as u64))
                .unwrap_or_default();
            let mut group_keys = keys.clone();
            group_keys.extend(WINDOW_COLUMNS.iter().map(|c| c.to_string()));
            let node = self.add(
                &windowed,
                NodeKind::ChangelogWindowAggregate {
                    keys: group_keys.clone(),
                    aggregates,
                    window_end: "window_end".into(),
                },
                p,
                Some(Partitioning::Hash(group_keys.clone())),
            );
            let mut columns = group_keys;
            columns.extend(names[n_groups..].iter().cloned());
            let out = Lowered {
                node,
                columns,
                rowtime: None,
                window: None,
                updating: false,
                window_end: Some(("window_end".to_string(), size)),
                window_start: Some(("window_start".to_string(), slide)),
            };
            return Ok(self.with_window_time(out, window_time));
        }
        if let Some(tvf) = window {
            // SESSION(TABLE t PARTITION BY …): sessions are per partition key, and the
            // aggregate's keys are what sessions are kept apart by, so they must agree.
            if !tvf.partition_by.is_empty() {
                let mut given = tvf.partition_by.clone();
                let mut grouped = keys.clone();
                given.sort();
                grouped.sort();
                if given != grouped {
                    return Err(SqlError::unsupported(format!(
                        "a SESSION window partitioned by ({}) grouped by ({}): GROUP BY exactly the PARTITION BY columns (with window_start, window_end)",
                        tvf.partition_by.join(", "),
                        keys.join(", ")
                    )));
                }
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
            let window_start = spec
                .size_and_slide_ms()
                .map(|(_, slide)| ("window_start".to_string(), slide as u64));
            let mut columns = keys;
            columns.extend(WINDOW_COLUMNS.iter().map(|s| s.to_string()));
            columns.extend(names[n_groups..].iter().cloned());
            let out = Lowered {
                node,
                columns,
                rowtime: None,
                window: None,
                updating: false,
                window_end,
                window_start,
            };
            return Ok(self.with_window_time(out, window_time));
        }
        if let (Some(start), Some(end)) = (input.window_start.clone(), input.window_end.clone())
            && !input.updating
            && keys.contains(&start.0)
            && keys.contains(&end.0)
        {
            let agg_names = names[n_groups..].to_vec();
            return self.cascade(&input, &keys, aggregates, agg_names, start, end);
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
                    upsert: false,
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
                window_start: None,
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
                upsert: false,
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
            window_start: None,
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

impl Lowerer<'_> {
    /// A `GROUP BY` of a window aggregate's `window_start` and `window_end` (under any
    /// names, with other keys or none): the windows aggregated again, as Flink plans a
    /// cascaded window aggregate. The rows of one window (same end) all come out when the
    /// watermark passes its end, so a tumbling window of the input's slide, which puts
    /// each end in a window of its own, groups them and fires at that same watermark.
    /// Its result keeps the input's window columns, so it can be windowed (or joined on
    /// its windows) again.
    fn cascade(
        &mut self,
        input: &Lowered,
        keys: &[String],
        aggregates: Vec<Expr>,
        agg_names: Vec<String>,
        start: (String, u64),
        end: (String, u64),
    ) -> Result<Lowered> {
        // The input's window columns go under names of their own: the window operator
        // adds `window_start` and `window_end` itself.
        let inner = |c: &String| -> String {
            match c {
                c if *c == start.0 => "__cascade_start".to_string(),
                c if *c == end.0 => "__cascade_end".to_string(),
                c => c.clone(),
            }
        };
        let exprs = input.columns.iter().map(|c| ucol(c.as_str())).collect();
        let renamed = self.project_always(input, exprs, input.columns.iter().map(inner).collect());
        let inner_keys: Vec<String> = keys.iter().map(inner).collect();
        let kind = NodeKind::WindowAggregate {
            keys: inner_keys.clone(),
            window: WindowSpec::Tumbling {
                size: Duration::from_millis(start.1),
            },
            aggregates,
            allowed_lateness: Duration::ZERO,
            early_firing: None,
        };
        let node = self.add(
            &renamed,
            kind,
            self.parallelism,
            Some(Partitioning::Hash(inner_keys.clone())),
        );
        let mut columns = inner_keys.clone();
        columns.extend(WINDOW_COLUMNS.iter().map(|s| s.to_string()));
        columns.extend(agg_names.iter().cloned());
        let windowed = Lowered {
            node,
            columns,
            rowtime: None,
            window: None,
            updating: false,
            window_end: None,
            window_start: None,
        };
        // Back to the query's names, without the operator's own window columns.
        let (mut exprs, mut names) = (Vec::new(), Vec::new());
        for (k, i) in keys.iter().zip(&inner_keys) {
            exprs.push(ucol(i.as_str()));
            names.push(k.clone());
        }
        for n in &agg_names {
            exprs.push(ucol(n.as_str()));
            names.push(n.clone());
        }
        let mut out = self.project_always(&windowed, exprs, names);
        out.window_end = Some(end);
        out.window_start = Some(start);
        Ok(out)
    }
}
