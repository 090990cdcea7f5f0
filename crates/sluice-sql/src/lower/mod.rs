//! DataFusion logical plans to the Sluice physical plan.
//!
//! ```text
//!  TableScan(table)            -> source (+ projection to the declared columns)
//!  TableScan(view)             -> the view's plan, lowered in place
//!  WindowTvf                   -> nothing yet: marks the stream as windowed
//!  Filter / Projection         -> filter / project (chained with their neighbours)
//!  Aggregate over a window TVF -> window aggregate, hash-partitioned by the other keys
//!  Aggregate                   -> running aggregate (a changelog: +I, -U/+U, -D)
//!  Filter(rank <= n) over Window(RANK() OVER (PARTITION BY window_start, window_end …))
//!                              -> top-n per window
//! ```

mod aggregate;
#[cfg(test)]
mod explain_tests;
mod join;
mod over;
mod sink;
mod source;
mod topn;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion_common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion_common::{Column, DFSchema};
use datafusion_expr::{Expr, LogicalPlan, lit};
use sluice_plan::{JobPlan, NodeId, NodeKind, Partitioning};
use sluice_runtime::ConnectorRegistry;

use crate::catalog::{Entry, EntryRef, SluiceTable};
use crate::error::{Result, SqlError};
use crate::window_tvf::{WINDOW_COLUMNS, WindowTvf};

/// A lowered relation: the node whose main output carries it, and what is known of it.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// The node.
    pub node: NodeId,
    /// Physical column names, in order (without `_timestamp`).
    pub columns: Vec<String>,
    /// The column holding the event time (the one `_timestamp` was taken from), if it is
    /// still there under some name.
    pub rowtime: Option<String>,
    /// A window TVF not yet consumed by its GROUP BY.
    pub window: Option<Arc<WindowTvf>>,
    /// Whether rows update or delete rows emitted before (a changelog: rows carry their
    /// kind), as the output of a GROUP BY without windows, a Top-N or a regular join of one.
    pub updating: bool,
    /// The `window_end` column of windowed rows (under its current name) and the window
    /// size in ms: a row's window ends at most that long after its event time.
    pub window_end: Option<(String, u64)>,
    /// The `window_start` column of a window aggregate's rows (under its current name)
    /// and the distance between window ends in ms (the slide; the size of tumbling
    /// windows): with `window_end` it lets a `GROUP BY` of both aggregate the windows
    /// again (a cascaded window aggregate, as Flink plans it).
    pub window_start: Option<(String, u64)>,
}

/// Builds one job's nodes from logical plans.
pub struct Lowerer<'a> {
    /// The job being built.
    pub plan: &'a mut JobPlan,
    pub(crate) registry: &'a ConnectorRegistry,
    pub(crate) catalog: &'a HashMap<String, Entry>,
    /// Parallelism of every operator (windows without keys run with 1).
    pub parallelism: usize,
    /// Source idleness (`table.exec.source.idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// How long a regular join keeps rows (`table.exec.state.ttl`); `None`: forever.
    pub state_ttl: Option<Duration>,
    /// When upsert sinks get an upsert-materialize step.
    pub upsert_materialize: crate::settings::UpsertMaterialize,
    pub(crate) sources: HashMap<String, Lowered>,
    /// Sink node per table: a second INSERT INTO the same table joins the first's sink.
    pub(crate) sinks: HashMap<String, NodeId>,
}

/// A column by its exact physical name (which may contain dots).
pub(crate) fn ucol(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// Drops table qualifiers: operators see one flat row of named columns.
pub fn unqualify(e: &Expr) -> Expr {
    e.clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| e.clone())
}

/// Drops table qualifiers where the input has the plain name; keeps `q.name` where the
/// input has that (columns a join disambiguated).
pub fn resolve(e: &Expr, columns: &[String]) -> Expr {
    e.clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    let qualified = format!(
                        "{}.{}",
                        c.relation.as_ref().map(|r| r.table()).unwrap_or_default(),
                        c.name
                    );
                    let name = if columns.contains(&qualified) {
                        qualified
                    } else {
                        c.name
                    };
                    Transformed::yes(Expr::Column(Column::new_unqualified(name)))
                }
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| e.clone())
}

/// The physical column names of a logical schema: the plain name where it is unique,
/// `qualifier.name` where two columns share a name.
pub fn physical_names(schema: &DFSchema) -> Vec<String> {
    let fields: Vec<(String, String)> = schema
        .iter()
        .map(|(q, f)| {
            (
                q.map(|q| q.table().to_string()).unwrap_or_default(),
                f.name().clone(),
            )
        })
        .collect();
    fields
        .iter()
        .map(|(q, n)| {
            if fields.iter().filter(|(_, m)| m == n).count() > 1 && !q.is_empty() {
                format!("{q}.{n}")
            } else {
                n.clone()
            }
        })
        .collect()
}

/// Columns an expression reads.
pub(crate) fn referenced(e: &Expr) -> Vec<String> {
    let mut out = Vec::new();
    let _ = e.apply(|e| {
        if let Expr::Column(c) = e {
            out.push(c.name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

pub(crate) fn as_column(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Alias(a) => as_column(&a.expr),
        _ => None,
    }
}

impl<'a> Lowerer<'a> {
    /// A lowerer adding to `plan`.
    pub fn new(
        plan: &'a mut JobPlan,
        registry: &'a ConnectorRegistry,
        catalog: &'a HashMap<String, Entry>,
        parallelism: usize,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            plan,
            registry,
            catalog,
            parallelism,
            idle_timeout,
            state_ttl: None,
            upsert_materialize: crate::settings::UpsertMaterialize::Auto,
            sources: HashMap::new(),
            sinks: HashMap::new(),
        }
    }

    pub(crate) fn add(
        &mut self,
        input: &Lowered,
        kind: NodeKind,
        p: usize,
        edge: Option<Partitioning>,
    ) -> NodeId {
        let name = kind.label();
        let id = self.plan.add_node(name, p, kind);
        let up_p = self.plan.nodes[input.node].parallelism;
        let edge = edge.unwrap_or(if up_p == p {
            Partitioning::Forward
        } else {
            Partitioning::Rebalance
        });
        self.plan.add_edge(input.node, id, edge);
        id
    }

    /// Adds a projection; `exprs` are named by `alias`. Nothing is added when it would
    /// change nothing.
    pub(crate) fn project(
        &mut self,
        input: &Lowered,
        exprs: Vec<Expr>,
        names: Vec<String>,
    ) -> Lowered {
        self.project_node(input, exprs, names, false)
    }

    /// Adds a projection node even when it would change nothing (a union's inputs each
    /// need their own node to feed the union).
    pub(crate) fn project_always(
        &mut self,
        input: &Lowered,
        exprs: Vec<Expr>,
        names: Vec<String>,
    ) -> Lowered {
        self.project_node(input, exprs, names, true)
    }

    pub(crate) fn project_node(
        &mut self,
        input: &Lowered,
        exprs: Vec<Expr>,
        names: Vec<String>,
        always: bool,
    ) -> Lowered {
        let identity = !always
            && exprs.len() == input.columns.len()
            && exprs
                .iter()
                .zip(&input.columns)
                .zip(&names)
                .all(|((e, c), n)| as_column(e) == Some(c.as_str()) && n == c);
        if identity {
            return input.clone();
        }
        let renamed = |col: &str| {
            exprs
                .iter()
                .zip(&names)
                .find(|(e, _)| as_column(e) == Some(col))
                .map(|(_, n)| n.clone())
        };
        let rowtime = input.rowtime.as_deref().and_then(renamed);
        let window_end = input
            .window_end
            .as_ref()
            .and_then(|(c, size)| renamed(c).map(|n| (n, *size)));
        let window_start = input
            .window_start
            .as_ref()
            .and_then(|(c, slide)| renamed(c).map(|n| (n, *slide)));
        let exprs = exprs
            .into_iter()
            .zip(&names)
            .map(|(e, n)| e.unalias().alias(n))
            .collect();
        let p = self.plan.nodes[input.node].parallelism;
        let node = self.add(input, NodeKind::Project { exprs }, p, None);
        Lowered {
            node,
            columns: names,
            rowtime,
            window: input.window.clone(),
            updating: input.updating,
            window_end,
            window_start,
        }
    }

    /// Gives a pending window TVF its `window_start`/`window_end` columns, where a query
    /// uses them without aggregating: possible for tumbling windows (each row is in one).
    pub(crate) fn materialize(&mut self, input: Lowered) -> Result<Lowered> {
        let Some(tvf) = input.window.clone() else {
            return Ok(input);
        };
        let crate::window_tvf::TvfKind::Tumble(size_ms) = tvf.kind else {
            return Err(SqlError::new(format!(
                "{} can only be followed by GROUP BY window_start, window_end (TUMBLE may also be read row by row)",
                tvf.kind.spec()
            )));
        };
        // Integer arithmetic on epoch milliseconds (casts to and from Timestamp(ms) are
        // free): start = t - ((t % size) + size) % size, also right for t < 0.
        use arrow::datatypes::{DataType, TimeUnit};
        let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        let cast = |e: Expr, t: DataType| Expr::Cast(datafusion_expr::Cast::new(Box::new(e), t));
        let size = lit(size_ms as i64);
        let t = cast(ucol(sluice_types::TIMESTAMP_FIELD), DataType::Int64);
        let start_ms = t.clone() - ((t % size.clone()) + size.clone()) % size.clone();
        let start = cast(start_ms.clone(), ms.clone());
        let end = cast(start_ms + size, ms);
        let mut exprs: Vec<Expr> = input.columns.iter().map(|c| ucol(c.as_str())).collect();
        let mut names = input.columns.clone();
        exprs.push(start);
        exprs.push(end);
        names.extend(WINDOW_COLUMNS.iter().map(|c| c.to_string()));
        let mut out = self.project(
            &Lowered {
                window: None,
                ..input
            },
            exprs,
            names,
        );
        out.window = None;
        Ok(out)
    }

    /// Adds `window_time` (the window's last instant, `window_end` - 1 ms) to rows that
    /// have their window's columns, where a query reads it: computed only then.
    pub(crate) fn with_window_time_column(&mut self, input: Lowered, exprs: &[&Expr]) -> Lowered {
        use crate::window_tvf::WINDOW_TIME;
        let wanted = exprs
            .iter()
            .any(|e| referenced(e).iter().any(|c| c == WINDOW_TIME));
        if !wanted
            || input.window.is_some()
            || input.columns.iter().any(|c| c == WINDOW_TIME)
            || !input.columns.iter().any(|c| c == "window_end")
        {
            return input;
        }
        use arrow::datatypes::{DataType, TimeUnit};
        let cast = |e: Expr, t: DataType| Expr::Cast(datafusion_expr::Cast::new(Box::new(e), t));
        let end_ms = cast(ucol("window_end"), DataType::Int64);
        let last = cast(
            end_ms - lit(1i64),
            DataType::Timestamp(TimeUnit::Millisecond, None),
        );
        let mut exprs: Vec<Expr> = input.columns.iter().map(|c| ucol(c.as_str())).collect();
        exprs.push(last);
        let mut names = input.columns.clone();
        names.push(WINDOW_TIME.to_string());
        self.project(&input, exprs, names)
    }

    pub(crate) fn check_columns(&self, input: &Lowered, exprs: &[&Expr]) -> Result<()> {
        for e in exprs {
            for c in referenced(e) {
                if !input.columns.contains(&c) {
                    if input.window.is_some() && crate::window_tvf::is_window_column(&c) {
                        return Err(SqlError::new(format!(
                            "`{c}` of a window table function can be used in GROUP BY window_start, window_end and after it, not before (in `{e}`)"
                        )));
                    }
                    return Err(SqlError::new(format!(
                        "column `{c}` is not available here (in `{e}`); columns: {}",
                        input.columns.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Lowers a logical plan.
    pub fn lower(&mut self, plan: &LogicalPlan) -> Result<Lowered> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if !scan.filters.is_empty() {
                    return Err(SqlError::unsupported("a filter pushed into a scan"));
                }
                let table = scan
                    .source
                    .as_ref()
                    .downcast_ref::<SluiceTable>()
                    .ok_or_else(|| SqlError::new("internal: unknown table source"))?;
                let lowered = match &table.entry {
                    EntryRef::Table(def) => self.table(&Arc::clone(def))?,
                    EntryRef::View(view) => self.lower(&Arc::clone(view))?,
                };
                match &scan.projection {
                    None => Ok(lowered),
                    Some(indices) => {
                        let names: Vec<String> = indices
                            .iter()
                            .map(|&i| lowered.columns[i].clone())
                            .collect();
                        let exprs = names.iter().map(|n| ucol(n.as_str())).collect();
                        Ok(self.project(&lowered, exprs, names))
                    }
                }
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input),
            LogicalPlan::Extension(ext) => {
                let Some(tvf) = ext.node.as_any().downcast_ref::<WindowTvf>() else {
                    return Err(SqlError::unsupported(format!("`{}`", ext.node.name())));
                };
                let input = self.lower(&tvf.input)?;
                let at = crate::script::Pos {
                    line: tvf.at.0,
                    column: tvf.at.1,
                };
                if input.window.is_some() {
                    return Err(SqlError::at(
                        at,
                        "a window table function over another one needs a GROUP BY between them",
                    ));
                }
                // A changelog may be windowed by time (its window aggregate takes the
                // changes); count windows need an append-only input.
                if input.updating && matches!(tvf.kind, crate::window_tvf::TvfKind::Rows(..)) {
                    return Err(SqlError::at(
                        at,
                        "count windows need an append-only input, not the updates of a GROUP BY without windows, a join or a changelog source",
                    ));
                }
                if let Some(tc) = &tvf.time_column
                    && input.rowtime.as_deref() != Some(tc.as_str())
                {
                    return Err(SqlError::at(
                        at,
                        match &input.rowtime {
                            Some(rt) => format!(
                                "DESCRIPTOR({tc}) is not the event-time column; windows are over the event time, which is `{rt}` here"
                            ),
                            None => format!(
                                "DESCRIPTOR({tc}) is not an event-time column; declare it in the table with WATERMARK FOR {tc} AS {tc} - INTERVAL '…' SECOND"
                            ),
                        },
                    ));
                }
                Ok(Lowered {
                    window: Some(Arc::new(tvf.clone())),
                    ..input
                })
            }
            LogicalPlan::Filter(f) => {
                if let Some(l) = self.top_n(f)? {
                    return Ok(l);
                }
                // `FROM a, b WHERE …` and `a JOIN b … WHERE …`: the WHERE is join condition.
                if let LogicalPlan::Join(j) = f.input.as_ref()
                    && j.join_type == datafusion_expr::JoinType::Inner
                {
                    return self.join(j, Some(&f.predicate));
                }
                let mut input = self.lower(&f.input)?;
                let predicate = resolve(&f.predicate, &input.columns);
                if input.window.is_some()
                    && referenced(&predicate)
                        .iter()
                        .any(|c| crate::window_tvf::is_window_column(c))
                {
                    input = self.materialize(input)?;
                }
                input = self.with_window_time_column(input, &[&predicate]);
                self.check_columns(&input, &[&predicate])?;
                let p = self.plan.nodes[input.node].parallelism;
                let node = self.add(&input, NodeKind::filter(predicate), p, None);
                Ok(Lowered { node, ..input })
            }
            LogicalPlan::Projection(proj) => {
                let mut input = self.lower(&proj.input)?;
                let uses_window = proj.expr.iter().any(|e| {
                    let e = resolve(e, &input.columns);
                    as_column(&e).is_none()
                        && referenced(&e)
                            .iter()
                            .any(|c| crate::window_tvf::is_window_column(c))
                });
                // `window_time` read row by row: the windows are given their columns.
                let reads_time = proj.expr.iter().any(|e| {
                    referenced(&resolve(e, &input.columns))
                        .iter()
                        .any(|c| c == crate::window_tvf::WINDOW_TIME)
                });
                if input.window.is_some() && (uses_window || reads_time) {
                    input = self.materialize(input)?;
                }
                let resolved: Vec<Expr> = proj
                    .expr
                    .iter()
                    .map(|e| resolve(e, &input.columns))
                    .collect();
                input = self.with_window_time_column(input, &resolved.iter().collect::<Vec<_>>());
                // `PROCTIME()` in the list: the rows' time becomes the wall clock from
                // here on, and the column is that time.
                let is_proctime = |e: &Expr| matches!(e.clone().unalias(), Expr::ScalarFunction(f) if f.func.name() == "proctime");
                let mut proctime = None;
                if proj.expr.iter().any(is_proctime) {
                    if input.window.is_some() || input.updating {
                        return Err(SqlError::unsupported(
                            "PROCTIME() over a window aggregate or an updating result",
                        ));
                    }
                    let p = self.plan.nodes[input.node].parallelism;
                    let node = self.add(&input, NodeKind::ProcessingTime, p, None);
                    input = Lowered {
                        node,
                        rowtime: None,
                        ..input
                    };
                }
                let mut exprs = Vec::new();
                let mut names = Vec::new();
                let out_names = physical_names(&proj.schema);
                for ((e, (_, field)), out_name) in
                    proj.expr.iter().zip(proj.schema.iter()).zip(out_names)
                {
                    if is_proctime(e) {
                        proctime = Some(out_name.clone());
                        exprs.push(ucol(sluice_types::TIMESTAMP_FIELD));
                        names.push(out_name);
                        continue;
                    }
                    let e = resolve(e, &input.columns);
                    if input.window.is_some()
                        && let Some(c) = as_column(&e)
                        && crate::window_tvf::is_window_column(c)
                    {
                        if field.name() != c {
                            return Err(SqlError::new(format!(
                                "`{c}` cannot be renamed before the window's GROUP BY"
                            )));
                        }
                        continue;
                    }
                    exprs.push(e);
                    names.push(out_name);
                }
                let time = ucol(sluice_types::TIMESTAMP_FIELD);
                let checked: Vec<&Expr> = exprs.iter().filter(|e| **e != time).collect();
                self.check_columns(&input, &checked)?;
                for e in &exprs {
                    check_scalar(e)?;
                }
                let mut lowered = self.project(&input, exprs, names);
                if proctime.is_some() {
                    lowered.rowtime = proctime;
                }
                Ok(lowered)
            }
            LogicalPlan::Aggregate(agg) => self.aggregate(agg),
            LogicalPlan::Window(w) => self.over(w),
            LogicalPlan::Join(j) => self.join(j, None),
            LogicalPlan::Sort(_) => Err(SqlError::unsupported(
                "ORDER BY on an unbounded stream (use a Top-N per window)",
            )),
            LogicalPlan::Limit(l) => self.limit(l),
            LogicalPlan::Distinct(datafusion_expr::Distinct::All(input)) => {
                // SELECT DISTINCT (and UNION without ALL): a GROUP BY over every column
                // without aggregates, an updating result (a row's last copy taken back
                // deletes it).
                let lowered = self.lower(input)?;
                let lowered = self.materialize(lowered)?;
                let keys = lowered.columns.clone();
                let node = self.add(
                    &lowered,
                    NodeKind::Aggregate {
                        keys: keys.clone(),
                        aggregates: Vec::new(),
                        ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
                        upsert: false,
                    },
                    self.parallelism,
                    Some(Partitioning::Hash(keys.clone())),
                );
                Ok(Lowered {
                    node,
                    columns: keys,
                    rowtime: None,
                    window: None,
                    updating: true,
                    window_end: None,
                    window_start: None,
                })
            }
            LogicalPlan::Distinct(_) => Err(SqlError::unsupported("SELECT DISTINCT ON")),
            LogicalPlan::Union(u) => {
                // Each input projected (and cast) to the union's columns, then one node
                // that reads them all.
                let names = physical_names(&u.schema);
                let mut parts: Vec<Lowered> = Vec::new();
                for input in &u.inputs {
                    let lowered = self.lower(input)?;
                    let lowered = self.materialize(lowered)?;
                    if parts
                        .first()
                        .is_some_and(|p| p.updating != lowered.updating)
                    {
                        return Err(SqlError::unsupported(
                            "UNION ALL of an updating input (a GROUP BY without windows, a Top-N, a regular join of one) with an append-only one",
                        ));
                    }
                    let exprs = physical_names(input.schema())
                        .iter()
                        .zip(u.schema.fields())
                        .map(|(c, f)| {
                            Expr::Cast(datafusion_expr::Cast::new(
                                Box::new(ucol(c)),
                                f.data_type().clone(),
                            ))
                        })
                        .collect();
                    parts.push(self.project_always(&lowered, exprs, names.clone()));
                }
                let p = self.parallelism;
                let exprs = names.iter().map(|n| ucol(n)).collect();
                let node = self.plan.add_node("union", p, NodeKind::Project { exprs });
                for part in &parts {
                    let edge = if self.plan.nodes[part.node].parallelism == p {
                        Partitioning::Forward
                    } else {
                        Partitioning::Rebalance
                    };
                    self.plan.add_edge(part.node, node, edge);
                }
                Ok(Lowered {
                    node,
                    columns: names,
                    rowtime: None,
                    window: None,
                    updating: parts.iter().any(|p| p.updating),
                    window_end: None,
                    window_start: None,
                })
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => Err(SqlError::unsupported(
                "a query without a table (SELECT of constants, VALUES)",
            )),
            other => Err(SqlError::unsupported(format!(
                "`{}`",
                other
                    .display()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
            ))),
        }
    }
}

/// Whether an expression reads only columns of `schema`.
pub(crate) fn reads_only(e: &Expr, schema: &DFSchema) -> bool {
    let mut all = true;
    let _ = e.apply(|x| {
        if let Expr::Column(c) = x
            && !schema.has_column(c)
        {
            all = false;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    all
}

/// Rejects what a stateless projection cannot evaluate.
pub(crate) fn check_scalar(e: &Expr) -> Result<()> {
    let mut bad = None;
    let _ = e.apply(|e| {
        bad = match e {
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                Some("a subquery in an expression")
            }
            Expr::Placeholder(_) => Some("a placeholder ($1)"),
            Expr::OuterReferenceColumn(..) => Some("a correlated subquery"),
            _ => None,
        };
        Ok(if bad.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    match bad {
        Some(what) => Err(SqlError::unsupported(what)),
        None => Ok(()),
    }
}
