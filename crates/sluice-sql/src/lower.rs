//! DataFusion logical plans to the Sluice physical plan.
//!
//! ```text
//!  TableScan(table)            -> source (+ projection to the declared columns)
//!  TableScan(view)             -> the view's plan, lowered in place
//!  WindowTvf                   -> nothing yet: marks the stream as windowed
//!  Filter / Projection         -> filter / project (chained with their neighbours)
//!  Aggregate over a window TVF -> window aggregate, hash-partitioned by the other keys
//!  Aggregate                   -> running aggregate (an upsert stream by key)
//!  Filter(rank <= n) over Window(RANK() OVER (PARTITION BY window_start, window_end …))
//!                              -> top-n per window
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion_common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion_common::{Column, DFSchema, ScalarValue};
use datafusion_expr::expr::{AggregateFunction, WindowFunction};
use datafusion_expr::{BinaryExpr, Expr, LogicalPlan, Operator, WindowFunctionDefinition, lit};
use sluice_plan::{
    ConnectorSpec, EventTime, JobPlan, NodeId, NodeKind, OverFrame, Partitioning, SourceNode,
    WatermarkSpec, WindowSpec,
};
use sluice_runtime::ConnectorRegistry;

use crate::catalog::{Entry, EntryRef, SluiceTable, TableDef, TimeAttribute};
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
    /// Whether rows update earlier rows (a running aggregate's upserts).
    pub updating: bool,
    /// For updating rows: the columns that identify what a row updates (empty: one global
    /// row); `None` when unknown (a key column was dropped).
    pub upsert_key: Option<Vec<String>>,
    /// The `window_end` column of windowed rows (under its current name) and the window
    /// size in ms: a row's window ends at most that long after its event time.
    pub window_end: Option<(String, u64)>,
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
    pub(crate) sources: HashMap<String, Lowered>,
    /// Sink node per table: a second INSERT INTO the same table joins the first's sink.
    pub(crate) sinks: HashMap<String, NodeId>,
}

/// A column by its exact physical name (which may contain dots).
fn ucol(name: &str) -> Expr {
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
fn referenced(e: &Expr) -> Vec<String> {
    let mut out = Vec::new();
    let _ = e.apply(|e| {
        if let Expr::Column(c) = e {
            out.push(c.name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn as_column(e: &Expr) -> Option<&str> {
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
            sources: HashMap::new(),
            sinks: HashMap::new(),
        }
    }

    fn add(
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
    fn project(&mut self, input: &Lowered, exprs: Vec<Expr>, names: Vec<String>) -> Lowered {
        self.project_node(input, exprs, names, false)
    }

    /// Adds a projection node even when it would change nothing (a union's inputs each
    /// need their own node to feed the union).
    fn project_always(&mut self, input: &Lowered, exprs: Vec<Expr>, names: Vec<String>) -> Lowered {
        self.project_node(input, exprs, names, true)
    }

    fn project_node(
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
        let upsert_key = input
            .upsert_key
            .as_ref()
            .and_then(|ks| ks.iter().map(|k| renamed(k)).collect::<Option<Vec<_>>>());
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
            upsert_key,
            window_end,
        }
    }

    /// Gives a pending window TVF its `window_start`/`window_end` columns, where a query
    /// uses them without aggregating: possible for tumbling windows (each row is in one).
    fn materialize(&mut self, input: Lowered) -> Result<Lowered> {
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

    fn check_columns(&self, input: &Lowered, exprs: &[&Expr]) -> Result<()> {
        for e in exprs {
            for c in referenced(e) {
                if !input.columns.contains(&c) {
                    if input.window.is_some() && WINDOW_COLUMNS.contains(&c.as_str()) {
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
                if input.updating {
                    return Err(SqlError::at(
                        at,
                        "a window table function needs an append-only input, not the updates of a GROUP BY without windows",
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
                        .any(|c| WINDOW_COLUMNS.contains(&c.as_str()))
                {
                    input = self.materialize(input)?;
                }
                self.check_columns(&input, &[&predicate])?;
                let p = self.plan.nodes[input.node].parallelism;
                let node = self.add(&input, NodeKind::Filter { predicate }, p, None);
                Ok(Lowered { node, ..input })
            }
            LogicalPlan::Projection(proj) => {
                let mut input = self.lower(&proj.input)?;
                let uses_window = proj.expr.iter().any(|e| {
                    let e = resolve(e, &input.columns);
                    as_column(&e).is_none()
                        && referenced(&e)
                            .iter()
                            .any(|c| WINDOW_COLUMNS.contains(&c.as_str()))
                });
                if input.window.is_some() && uses_window {
                    input = self.materialize(input)?;
                }
                let mut exprs = Vec::new();
                let mut names = Vec::new();
                let out_names = physical_names(&proj.schema);
                for ((e, (_, field)), out_name) in
                    proj.expr.iter().zip(proj.schema.iter()).zip(out_names)
                {
                    let e = resolve(e, &input.columns);
                    if input.window.is_some()
                        && let Some(c) = as_column(&e)
                        && WINDOW_COLUMNS.contains(&c)
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
                self.check_columns(&input, &exprs.iter().collect::<Vec<_>>())?;
                for e in &exprs {
                    check_scalar(e)?;
                }
                Ok(self.project(&input, exprs, names))
            }
            LogicalPlan::Aggregate(agg) => self.aggregate(agg),
            LogicalPlan::Window(w) => self.over(w),
            LogicalPlan::Join(j) => self.join(j, None),
            LogicalPlan::Sort(_) => Err(SqlError::unsupported(
                "ORDER BY on an unbounded stream (use a Top-N per window)",
            )),
            LogicalPlan::Limit(_) => Err(SqlError::unsupported("LIMIT on a stream")),
            LogicalPlan::Distinct(_) => Err(SqlError::unsupported(
                "SELECT DISTINCT and UNION without ALL (write GROUP BY over the columns, or UNION ALL)",
            )),
            LogicalPlan::Union(u) => {
                // Each input projected (and cast) to the union's columns, then one node
                // that reads them all.
                let names = physical_names(&u.schema);
                let mut parts = Vec::new();
                for input in &u.inputs {
                    let lowered = self.lower(input)?;
                    let lowered = self.materialize(lowered)?;
                    if lowered.updating {
                        return Err(SqlError::unsupported("UNION ALL of updating inputs"));
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
                    updating: false,
                    upsert_key: None,
                    window_end: None,
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

    /// A table's source node, shared by every query of the job that reads it.
    fn table(&mut self, def: &Arc<TableDef>) -> Result<Lowered> {
        if let Some(l) = self.sources.get(&def.name) {
            return Ok(l.clone());
        }
        let actual = def.source_schema(self.registry)?;
        let (event_time, delay, mut rowtime) = match &def.time {
            TimeAttribute::EventTime { column, delay } => {
                match def.computed.iter().find(|(c, _, _)| c == column) {
                    Some((_, e, _)) => (EventTime::Expr(e.clone()), *delay, Some(column.clone())),
                    None => (
                        EventTime::Column(column.clone()),
                        *delay,
                        Some(column.clone()),
                    ),
                }
            }
            TimeAttribute::ProcTime { column } => (
                EventTime::ProcessingTime,
                Duration::ZERO,
                Some(column.clone()),
            ),
            TimeAttribute::ConnectorDefault => {
                let default = def.default_event_time(self.registry)?;
                (EventTime::ConnectorDefault, Duration::ZERO, default)
            }
        };
        let mut spec: ConnectorSpec = def.spec.clone();
        if !def.declared.fields().is_empty() {
            spec.schema = Some(Arc::clone(&def.declared));
        }
        let node = self.plan.add_node(
            def.name.clone(),
            self.parallelism,
            NodeKind::Source(SourceNode {
                spec,
                event_time,
                watermark: WatermarkSpec {
                    max_out_of_orderness: delay,
                    idle_timeout: self.idle_timeout,
                },
            }),
        );
        let columns: Vec<String> = actual.fields().iter().map(|f| f.name().clone()).collect();
        let mut lowered = Lowered {
            node,
            columns: columns.clone(),
            rowtime: rowtime.clone(),
            window: None,
            updating: false,
            upsert_key: None,
            window_end: None,
        };
        let mut want: Vec<String> = if def.declared.fields().is_empty() {
            columns
        } else {
            def.declared
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        };
        let mut exprs: Vec<Expr> = want.iter().map(|c| ucol(c.as_str())).collect();
        let ms =
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
        for (name, e, ty) in &def.computed {
            // The event-time column is `_timestamp` already, when its type is the same.
            let is_rowtime =
                matches!(&def.time, TimeAttribute::EventTime { column, .. } if column == name);
            exprs.push(if is_rowtime && *ty == ms {
                ucol(sluice_types::TIMESTAMP_FIELD)
            } else {
                e.clone()
            });
            want.push(name.clone());
        }
        if let TimeAttribute::ProcTime { column } = &def.time {
            exprs.push(ucol(sluice_types::TIMESTAMP_FIELD));
            want.push(column.clone());
            rowtime = Some(column.clone());
        }
        lowered = self.project(&lowered, exprs, want);
        lowered.rowtime = rowtime.filter(|r| lowered.columns.contains(r));
        self.sources.insert(def.name.clone(), lowered.clone());
        Ok(lowered)
    }

    fn aggregate(&mut self, agg: &datafusion_expr::logical_plan::Aggregate) -> Result<Lowered> {
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
        if input.updating {
            // The upserts of another GROUP BY (or Top-N): each row replaces the earlier
            // row of its key, so it is taken back out of its group first.
            if window.is_some() {
                return Err(SqlError::unsupported(
                    "a windowed aggregate over an updating input (a GROUP BY without windows)",
                ));
            }
            let Some(upsert_key) = input.upsert_key.clone() else {
                return Err(SqlError::unsupported(
                    "an aggregate over an updating input whose key columns were not all selected (keep every GROUP BY column of the inner query in its SELECT list)",
                ));
            };
            if let Some(k) = keys.iter().find(|k| !upsert_key.contains(k)) {
                return Err(SqlError::unsupported(format!(
                    "GROUP BY `{k}` over an updating input whose rows are identified by ({}): group by those columns (or some of them), so that every update of a row stays in its group",
                    upsert_key.join(", ")
                )));
            }
            if keys.is_empty() {
                return Err(SqlError::unsupported(
                    "a global aggregate (no GROUP BY) over an updating input",
                ));
            }
            let node = self.add(
                &input,
                NodeKind::UpdatingAggregate {
                    keys: keys.clone(),
                    upsert_key,
                    aggregates,
                },
                p,
                Some(Partitioning::Hash(keys.clone())),
            );
            let key_names = keys.clone();
            let mut columns = keys;
            columns.extend(names[n_groups..].iter().cloned());
            return Ok(Lowered {
                node,
                columns,
                rowtime: None,
                window: None,
                updating: true,
                upsert_key: Some(key_names),
                window_end: None,
            });
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
                upsert_key: None,
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
                upsert_key: Some(Vec::new()),
                window_end: None,
            };
            let names = names[n_groups..].to_vec();
            let exprs = names.iter().map(|n| ucol(n.as_str())).collect();
            return Ok(self.project(&out, exprs, names));
        }
        let key_names = keys.clone();
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
            upsert_key: Some(key_names),
            window_end: None,
        })
    }

    /// An inner equi-join: interval join (a time condition between the two event times),
    /// window join (equal `window_end`s), or regular join (rows kept for the state TTL).
    fn join(
        &mut self,
        j: &datafusion_expr::logical_plan::Join,
        where_clause: Option<&Expr>,
    ) -> Result<Lowered> {
        use datafusion_expr::JoinType;
        // Outer joins keep the unmatched rows of these sides (left, right).
        let outer = match j.join_type {
            JoinType::Inner => (false, false),
            JoinType::Left => (true, false),
            JoinType::Right => (false, true),
            JoinType::Full => (true, true),
            other => {
                return Err(SqlError::unsupported(format!(
                    "{} JOIN (inner, left, right and full outer joins are supported)",
                    other.to_string().to_uppercase()
                )));
            }
        };
        let is_outer = outer.0 || outer.1;
        // An outer join's WHERE filters its output (NULL-padded rows included), after it.
        let (where_clause, after) = match is_outer {
            true => (None, where_clause),
            false => (where_clause, None),
        };
        if is_outer && (lookup_table(&j.right).is_some() || lookup_table(&j.left).is_some()) {
            return Err(SqlError::unsupported("an outer lookup join"));
        }
        if let Some(table) = lookup_table(&j.right) {
            return self.lookup_join(j, where_clause, &table);
        }
        if lookup_table(&j.left).is_some() {
            return Err(SqlError::unsupported(
                "a lookup table (FOR SYSTEM_TIME AS OF) on the left of a join; put it on the right",
            ));
        }
        // The condition: ON and WHERE, as conjuncts (BETWEEN split in two).
        let conjuncts = join_conjuncts(j, where_clause);
        let in_schema = reads_only;
        // Conditions on one side only are applied before the join (less state).
        let mut left_only = Vec::new();
        let mut right_only = Vec::new();
        let mut both = Vec::new();
        for c in conjuncts {
            let (l, r) = (
                in_schema(&c, j.left.schema()),
                in_schema(&c, j.right.schema()),
            );
            // In an outer join's ON, a condition on a kept side decides matching, not
            // which of its rows exist: it cannot be applied before the join.
            if (l && outer.0) || (r && outer.1) {
                return Err(SqlError::unsupported(format!(
                    "`{c}` in the ON of an outer join, on the side whose rows it keeps (filter that input in a subquery, or move the condition to WHERE)"
                )));
            }
            if l {
                left_only.push(c);
            } else if r {
                right_only.push(c);
            } else {
                both.push(c);
            }
        }
        let mut left = self.lower(&j.left)?;
        left = self.materialize(left)?;
        let mut right = self.lower(&j.right)?;
        right = self.materialize(right)?;
        for (side, preds) in [(&mut left, left_only), (&mut right, right_only)] {
            if let Some(p) = datafusion_expr::utils::conjunction(preds) {
                let predicate = resolve(&p, &side.columns);
                self.check_columns(side, &[&predicate])?;
                let par = self.plan.nodes[side.node].parallelism;
                side.node = self.add(side, NodeKind::Filter { predicate }, par, None);
            }
        }
        if left.updating != right.updating {
            return Err(SqlError::unsupported(
                "a join of an updating input (the output of a GROUP BY without windows) with an append-only one",
            ));
        }
        let updating = left.updating;
        if updating && (left.upsert_key.is_none() || right.upsert_key.is_none()) {
            return Err(SqlError::unsupported(
                "a join of updating inputs whose key columns were not all selected (keep every GROUP BY column in the inner SELECT lists)",
            ));
        }
        // Physical names: plain where unique in the join's output, `q.name` where not.
        let names = physical_names(&j.schema);
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        if unique.len() != names.len() {
            return Err(SqlError::new(
                "a join's inputs have columns of the same name and table alias; alias the tables differently",
            ));
        }
        let nl = j.left.schema().fields().len();
        let side_columns = |lowered: &Lowered, schema: &DFSchema, names: &[String]| {
            let mut exprs = Vec::new();
            for (i, (q, f)) in schema.iter().enumerate() {
                let c = Expr::Column(Column::new(q.cloned(), f.name()));
                let e = resolve(&c, &lowered.columns);
                match as_column(&e) {
                    Some(n) if lowered.columns.iter().any(|x| x == n) => exprs.push(e),
                    _ => {
                        return Err(SqlError::new(format!(
                            "column `{}` of a join input is not available",
                            f.name()
                        )));
                    }
                }
                let _ = i;
            }
            Ok::<_, SqlError>((exprs, names.to_vec()))
        };
        let (le, ln) = side_columns(&left, j.left.schema(), &names[..nl])?;
        let (re, rn) = side_columns(&right, j.right.schema(), &names[nl..])?;
        let left = self.project(&left, le, ln);
        let right = self.project(&right, re, rn);
        // Equality keys, by the new names.
        let key_name = |e: &Expr, schema: &DFSchema, offset: usize| -> Result<String> {
            match e {
                Expr::Column(c) => schema
                    .index_of_column(c)
                    .map(|i| names[offset + i].clone())
                    .map_err(|_| SqlError::new(format!("join key `{c}` is not a column"))),
                other => Err(SqlError::unsupported(format!(
                    "a join key that is an expression (`{other}`); compute it as a column in a view first"
                ))),
            }
        };
        let mut left_keys = Vec::new();
        let mut right_keys = Vec::new();
        for (l, r) in &j.on {
            left_keys.push(key_name(l, j.left.schema(), 0)?);
            right_keys.push(key_name(r, j.right.schema(), nl)?);
        }
        // Equalities between a left and a right column are keys too.
        let mut rest = Vec::new();
        for c in both {
            if let Expr::BinaryExpr(BinaryExpr {
                left: a,
                op: Operator::Eq,
                right: b,
            }) = &c
                && let (Expr::Column(x), Expr::Column(y)) = (a.as_ref(), b.as_ref())
            {
                let (l, r) = if j.left.schema().has_column(x) && j.right.schema().has_column(y) {
                    (a, b)
                } else if j.left.schema().has_column(y) && j.right.schema().has_column(x) {
                    (b, a)
                } else {
                    rest.push(c);
                    continue;
                };
                left_keys.push(key_name(l, j.left.schema(), 0)?);
                right_keys.push(key_name(r, j.right.schema(), nl)?);
                continue;
            }
            if let Expr::BinaryExpr(BinaryExpr {
                left: a,
                op: Operator::Eq,
                right: b,
            }) = &c
                && in_schema(a, j.left.schema()) != in_schema(b, j.left.schema())
                && !matches!((a.as_ref(), b.as_ref()), (Expr::Column(_), Expr::Column(_)))
            {
                return Err(SqlError::unsupported(format!(
                    "a join key that is an expression (`{c}`); compute it as a column in a view first"
                )));
            }
            rest.push(c);
        }
        if left_keys.is_empty() {
            return Err(SqlError::unsupported(
                "a join without an equality between the two sides (a cross join)",
            ));
        }
        // Time bounds, on d = right time - left time.
        let mut lower = i64::MIN;
        let mut upper = i64::MAX;
        let mut residual = Vec::new();
        let conjuncts = rest;
        let side_of = |e: &Expr| -> Option<(usize, i64)> { time_term(e, j, &left, &right) };
        let mut until: [Option<String>; 2] = [None, None];
        for c in conjuncts {
            let bound = match &c {
                Expr::BinaryExpr(BinaryExpr {
                    left: a,
                    op,
                    right: b,
                }) => {
                    match (side_of(a), side_of(b)) {
                        (Some((sa, oa)), Some((sb, ob))) if sa != sb => {
                            // (t_sa + oa) op (t_sb + ob)
                            let (op, k) = if sa == 1 {
                                (*op, ob - oa)
                            } else {
                                (op.swap().unwrap_or(*op), oa - ob)
                            };
                            Some((op, k))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            match bound {
                Some((Operator::GtEq, k)) => lower = lower.max(k),
                Some((Operator::Gt, k)) => lower = lower.max(k.saturating_add(1)),
                Some((Operator::LtEq, k)) => upper = upper.min(k),
                Some((Operator::Lt, k)) => upper = upper.min(k.saturating_sub(1)),
                Some((Operator::Eq, k)) => {
                    lower = lower.max(k);
                    upper = upper.min(k);
                }
                _ => {
                    // `r.time <= l.col` (or `<`, or mirrored): no right row can match a left
                    // row once the watermark passes its `col`; the same the other way round.
                    // The condition stays a filter; it also frees state.
                    if let Some((side, col)) = until_column(&c, j, &names, &side_of) {
                        until[side] = Some(col);
                    }
                    residual.push(c)
                }
            }
        }
        let interval = (lower != i64::MIN || upper != i64::MAX).then_some((lower, upper));
        let is_window_join = match (&left.window_end, &right.window_end) {
            (Some((lw, _)), Some((rw, _))) => left_keys
                .iter()
                .zip(&right_keys)
                .any(|(l, r)| l == lw && r == rw),
            _ => false,
        };
        let ttl = self.state_ttl.map(|d| d.as_millis() as i64);
        let (left_retain_ms, right_retain_ms) = if let Some((lo, hi)) = interval {
            (
                (hi != i64::MAX).then_some(hi),
                (lo != i64::MIN).then(|| lo.saturating_neg()),
            )
        } else if is_window_join {
            (
                left.window_end.as_ref().map(|(_, s)| *s as i64),
                right.window_end.as_ref().map(|(_, s)| *s as i64),
            )
        } else {
            (ttl, ttl)
        };
        if is_outer {
            if updating {
                return Err(SqlError::unsupported(
                    "an outer join of updating inputs (it would need retractions)",
                ));
            }
            if interval.is_none() || is_window_join {
                return Err(SqlError::unsupported(
                    "an outer join without time bounds between its inputs: write it as an interval join (`r.ts BETWEEN l.ts - INTERVAL … AND l.ts + INTERVAL …`); a regular outer join would need retractions",
                ));
            }
            if !residual.is_empty() {
                return Err(SqlError::unsupported(
                    "conditions beyond equal keys and time bounds in the ON of an outer join",
                ));
            }
        }
        let upsert_keys = match (&left.upsert_key, &right.upsert_key) {
            (Some(lu), Some(ru)) if updating => {
                if interval.is_some() || is_window_join || !residual.is_empty() {
                    return Err(SqlError::unsupported(
                        "a join of updating inputs with conditions beyond equal keys (time bounds, windows or other predicates); filter each input first",
                    ));
                }
                for (keys, upsert, side) in [(&left_keys, lu, "left"), (&right_keys, ru, "right")] {
                    if let Some(k) = keys.iter().find(|k| !upsert.contains(k)) {
                        return Err(SqlError::unsupported(format!(
                            "joining updating inputs on `{k}`, which is not among the columns identifying the {side} input's rows ({}): every update of a row must keep its join key",
                            upsert.join(", ")
                        )));
                    }
                }
                Some((lu.clone(), ru.clone()))
            }
            _ => None,
        };
        let out_upsert_key = upsert_keys.as_ref().map(|(l, r)| {
            let mut k = l.clone();
            k.extend(r.iter().cloned());
            k
        });
        let kind = NodeKind::Join {
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            interval,
            left_retain_ms: left_retain_ms.or(ttl),
            right_retain_ms: right_retain_ms.or(ttl),
            upsert_keys,
            outer,
            until: (until[0].take(), until[1].take()),
        };
        let name = kind.label();
        let node = self.plan.add_node(name, self.parallelism, kind);
        self.plan
            .add_edge(left.node, node, Partitioning::Hash(left_keys));
        self.plan
            .add_edge(right.node, node, Partitioning::Hash(right_keys));
        let mut out = Lowered {
            node,
            columns: names.clone(),
            rowtime: None,
            window: None,
            updating,
            upsert_key: out_upsert_key,
            window_end: None,
        };
        if !residual.is_empty() {
            let predicate = resolve(
                &datafusion_expr::utils::conjunction(residual).expect("invariant: non-empty"),
                &out.columns,
            );
            self.check_columns(&out, &[&predicate])?;
            let p = self.parallelism;
            let f = self.add(&out, NodeKind::Filter { predicate }, p, None);
            out.node = f;
        }
        if let Some(w) = after {
            let predicate = resolve(w, &out.columns);
            self.check_columns(&out, &[&predicate])?;
            let p = self.parallelism;
            out.node = self.add(&out, NodeKind::Filter { predicate }, p, None);
        }
        Ok(out)
    }

    /// A lookup join: the stream on the left, a bounded table on the right, read once.
    fn lookup_join(
        &mut self,
        j: &datafusion_expr::logical_plan::Join,
        where_clause: Option<&Expr>,
        table: &str,
    ) -> Result<Lowered> {
        let def = match self.catalog.get(table) {
            Some(Entry::Table(t)) => Arc::clone(t),
            _ => {
                return Err(SqlError::new(format!(
                    "`{table}` FOR SYSTEM_TIME AS OF: a lookup table is a table (CREATE TABLE), not a view"
                )));
            }
        };
        let mut conjuncts = join_conjuncts(j, where_clause);
        for (l, r) in &j.on {
            conjuncts.push(l.clone().eq(r.clone()));
        }
        let names = physical_names(&j.schema);
        let nl = j.left.schema().fields().len();
        let mut left = self.lower(&j.left)?;
        left = self.materialize(left)?;
        if left.updating {
            return Err(SqlError::unsupported("a lookup join of an updating stream"));
        }
        let only = reads_only;
        let mut left_keys = Vec::new();
        let mut right_keys = Vec::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        for c in conjuncts {
            if only(&c, j.left.schema()) {
                before.push(c);
                continue;
            }
            if let Expr::BinaryExpr(BinaryExpr {
                left: a,
                op: Operator::Eq,
                right: b,
            }) = &c
                && let (Expr::Column(x), Expr::Column(y)) = (a.as_ref(), b.as_ref())
            {
                let pair = if j.left.schema().has_column(x) && j.right.schema().has_column(y) {
                    Some((x, y))
                } else if j.left.schema().has_column(y) && j.right.schema().has_column(x) {
                    Some((y, x))
                } else {
                    None
                };
                if let Some((l, r)) = pair {
                    let li = j
                        .left
                        .schema()
                        .index_of_column(l)
                        .map_err(|e| SqlError::new(e.to_string()))?;
                    let ri = j
                        .right
                        .schema()
                        .index_of_column(r)
                        .map_err(|e| SqlError::new(e.to_string()))?;
                    left_keys.push(names[li].clone());
                    right_keys.push(j.right.schema().field(ri).name().clone());
                    continue;
                }
            }
            after.push(c);
        }
        if left_keys.is_empty() {
            return Err(SqlError::new(
                "a lookup join needs an equality between a stream column and a table column",
            ));
        }
        if let Some(p) = datafusion_expr::utils::conjunction(before) {
            let predicate = resolve(&p, &left.columns);
            self.check_columns(&left, &[&predicate])?;
            let par = self.plan.nodes[left.node].parallelism;
            left.node = self.add(&left, NodeKind::Filter { predicate }, par, None);
        }
        // The stream's columns under their names in the join's output.
        let mut exprs = Vec::new();
        for (q, f) in j.left.schema().iter() {
            exprs.push(resolve(
                &Expr::Column(Column::new(q.cloned(), f.name())),
                &left.columns,
            ));
        }
        self.check_columns(&left, &exprs.iter().collect::<Vec<_>>())?;
        let left = self.project(&left, exprs, names[..nl].to_vec());
        let mut table_spec = def.spec.clone();
        if !def.declared.fields().is_empty() {
            table_spec.schema = Some(Arc::clone(&def.declared));
        }
        let p = self.plan.nodes[left.node].parallelism;
        let node = self.add(
            &left,
            NodeKind::LookupJoin {
                table: table_spec,
                left_keys,
                right_keys,
                right_names: names[nl..].to_vec(),
            },
            p,
            None,
        );
        let mut out = Lowered {
            node,
            columns: names.clone(),
            rowtime: left.rowtime.clone(),
            window: None,
            updating: false,
            upsert_key: None,
            window_end: None,
        };
        if let Some(p) = datafusion_expr::utils::conjunction(after) {
            let predicate = resolve(&p, &out.columns);
            self.check_columns(&out, &[&predicate])?;
            let par = self.plan.nodes[out.node].parallelism;
            out.node = self.add(&out, NodeKind::Filter { predicate }, par, None);
        }
        Ok(out)
    }

    /// `WHERE rk <= n` over `RANK() OVER (PARTITION BY window_start, window_end … ORDER BY x)`.
    fn top_n(&mut self, f: &datafusion_expr::logical_plan::Filter) -> Result<Option<Lowered>> {
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
            // Top-N over the whole stream: an updating result (upserts by key and rank).
            if fname != "row_number" {
                return Err(SqlError::unsupported(
                    "RANK() without windows (use ROW_NUMBER(), or partition by window_start, window_end)",
                ));
            }
            if input.updating {
                return Err(SqlError::unsupported("a Top-N over an updating input"));
            }
            let (p, edge) = if partition.is_empty() {
                (1, None)
            } else {
                (
                    self.parallelism,
                    Some(Partitioning::Hash(partition.clone())),
                )
            };
            let mut upsert_key = partition.clone();
            upsert_key.push(rank_name.clone());
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
                upsert_key: Some(upsert_key),
                window_end: None,
            };
            return Ok(Some(self.reproject(out, &skipped, &window_out, &rank_name)));
        }
        if !then_by.is_empty() {
            return Err(SqlError::unsupported(
                "a Top-N per window ordered by more than one column",
            ));
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
    fn reproject(
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

    /// OVER aggregates: `agg(x) OVER (PARTITION BY k ORDER BY ts [ROWS|RANGE BETWEEN …
    /// PRECEDING AND CURRENT ROW])`, every row kept, with the aggregates over its frame.
    fn over(&mut self, w: &datafusion_expr::logical_plan::Window) -> Result<Lowered> {
        use datafusion_expr::{WindowFrameBound, WindowFrameUnits};
        let input = self.lower(&w.input)?;
        let input = self.materialize(input)?;
        if input.updating {
            return Err(SqlError::unsupported(
                "an OVER aggregate over an updating input (a GROUP BY without windows)",
            ));
        }
        let Some(rowtime) = input.rowtime.clone() else {
            return Err(SqlError::new(
                "an OVER aggregate orders rows by event time: its input needs a time column (WATERMARK FOR …)",
            ));
        };
        let n_in = w.input.schema().fields().len();
        let mut partition: Option<Vec<String>> = None;
        let mut frame: Option<OverFrame> = None;
        let mut aggregates = Vec::new();
        let mut names = Vec::new();
        for (i, e) in w.window_expr.iter().enumerate() {
            let name = w.schema.field(n_in + i).name().clone();
            let Expr::WindowFunction(wf) = e.clone().unalias() else {
                return Err(SqlError::unsupported(format!(
                    "`{e}` as an OVER expression"
                )));
            };
            let WindowFunction { fun, params } = wf.as_ref();
            let WindowFunctionDefinition::AggregateUDF(udf) = fun else {
                return Err(SqlError::unsupported(format!(
                    "{}() OVER (…) outside a Top-N (`WHERE rn <= n` over ROW_NUMBER() or RANK())",
                    fun.name().to_uppercase()
                )));
            };
            if params.distinct || params.filter.is_some() {
                return Err(SqlError::unsupported(
                    "DISTINCT or FILTER in an OVER aggregate",
                ));
            }
            let part: Vec<String> = params
                .partition_by
                .iter()
                .map(|e| as_column(&resolve(e, &input.columns)).map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| SqlError::new("an OVER aggregate partitions by columns"))?;
            let [order] = params.order_by.as_slice() else {
                return Err(SqlError::new(format!(
                    "an OVER aggregate orders by the event-time column `{rowtime}`, ascending: ORDER BY {rowtime}"
                )));
            };
            let by_time =
                as_column(&resolve(&order.expr, &input.columns)) == Some(rowtime.as_str());
            if !by_time || !order.asc {
                return Err(SqlError::new(format!(
                    "an OVER aggregate orders by the event-time column `{rowtime}`, ascending: ORDER BY {rowtime}"
                )));
            }
            let f = &params.window_frame;
            if !matches!(f.end_bound, WindowFrameBound::CurrentRow) {
                return Err(SqlError::unsupported(
                    "an OVER frame that does not end at the CURRENT ROW",
                ));
            }
            let this = match (&f.units, &f.start_bound) {
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v)) if v.is_null() => {
                    OverFrame::UnboundedRows
                }
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(v)) if v.is_null() => {
                    OverFrame::UnboundedRange
                }
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v)) => {
                    let n = v
                        .cast_to(&arrow::datatypes::DataType::UInt64)
                        .ok()
                        .and_then(|v| match v {
                            ScalarValue::UInt64(Some(n)) => Some(n),
                            _ => None,
                        })
                        .ok_or_else(|| {
                            SqlError::new(format!("ROWS {v} PRECEDING: not a row count"))
                        })?;
                    OverFrame::Rows { preceding: n }
                }
                (WindowFrameUnits::Rows, WindowFrameBound::CurrentRow) => {
                    OverFrame::Rows { preceding: 0 }
                }
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(v)) => {
                    // The planner keeps a frame's interval as text until coercion.
                    let v = v
                        .cast_to(&arrow::datatypes::DataType::Interval(
                            arrow::datatypes::IntervalUnit::MonthDayNano,
                        ))
                        .unwrap_or_else(|_| v.clone());
                    let ms = crate::window_tvf::literal_interval_ms(&Expr::Literal(v.clone(), None))
                        .ok_or_else(|| {
                            SqlError::new(format!(
                                "RANGE {v} PRECEDING: use an interval, as in RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW"
                            ))
                        })?;
                    OverFrame::Range {
                        preceding_ms: ms as i64,
                    }
                }
                (WindowFrameUnits::Range, WindowFrameBound::CurrentRow) => {
                    OverFrame::Range { preceding_ms: 0 }
                }
                _ => {
                    return Err(SqlError::unsupported(format!("the OVER frame `{f}`")));
                }
            };
            match (&partition, &frame) {
                (None, None) => {
                    partition = Some(part);
                    frame = Some(this);
                }
                (Some(p), Some(fr)) if *p == part && *fr == this => {}
                _ => {
                    return Err(SqlError::unsupported(
                        "OVER aggregates with different PARTITION BY, ORDER BY or frames in one SELECT (split them into subqueries)",
                    ));
                }
            }
            let args: Vec<Expr> = params
                .args
                .iter()
                .map(|a| resolve(a, &input.columns))
                .collect();
            self.check_columns(&input, &args.iter().collect::<Vec<_>>())?;
            aggregates.push(
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    Arc::clone(udf),
                    args,
                    false,
                    None,
                    vec![],
                    None,
                ))
                .alias(name.clone()),
            );
            names.push(name);
        }
        let partition = partition.unwrap_or_default();
        let frame = frame.unwrap_or(OverFrame::UnboundedRange);
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
            NodeKind::OverAggregate {
                partition_by: partition,
                aggregates,
                frame,
                ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
            },
            p,
            edge,
        );
        let mut columns = input.columns.clone();
        columns.extend(names);
        Ok(Lowered {
            node,
            columns,
            rowtime: input.rowtime.clone(),
            window: None,
            updating: false,
            upsert_key: None,
            window_end: None,
        })
    }

    /// Routes a window aggregate's late rows to a table, by column name.
    fn late_sink(&mut self, node: NodeId, input: &Lowered, table: &str) -> Result<()> {
        let def = match self.catalog.get(table) {
            Some(Entry::Table(t)) => Arc::clone(t),
            _ => {
                return Err(SqlError::new(format!(
                    "late_sink `{table}` is not a table; declare it with CREATE TABLE"
                )));
            }
        };
        let mut late_columns = input.columns.clone();
        late_columns.extend(["late_reason".to_string(), "missed_watermark".to_string()]);
        let side = Lowered {
            node,
            columns: late_columns.clone(),
            rowtime: None,
            window: None,
            updating: false,
            upsert_key: None,
            window_end: None,
        };
        // The project reads the side output: add it by hand.
        let (exprs, names): (Vec<Expr>, Vec<String>) = if def.declared.fields().is_empty() {
            late_columns
                .iter()
                .map(|c| (ucol(c.as_str()), c.clone()))
                .unzip()
        } else {
            let mut pairs = Vec::new();
            for f in def.declared.fields() {
                if !late_columns.contains(f.name()) {
                    return Err(SqlError::new(format!(
                        "late_sink `{table}` has column `{}`, which late rows do not have; they have: {}",
                        f.name(),
                        late_columns.join(", ")
                    )));
                }
                pairs.push((
                    Expr::Cast(datafusion_expr::Cast::new(
                        Box::new(ucol(f.name().as_str())),
                        f.data_type().clone(),
                    )),
                    f.name().clone(),
                ));
            }
            pairs.into_iter().unzip()
        };
        let p = self.plan.nodes[node].parallelism;
        let exprs = exprs
            .into_iter()
            .zip(&names)
            .map(|(e, n)| e.alias(n))
            .collect();
        let proj = self
            .plan
            .add_node("project late rows", p, NodeKind::Project { exprs });
        self.plan
            .add_side_edge(side.node, "late", proj, Partitioning::Forward);
        let sink = self
            .plan
            .add_node(format!("sink {table}"), p, NodeKind::Sink(def.spec.clone()));
        self.plan.add_edge(proj, sink, Partitioning::Forward);
        Ok(())
    }

    /// Ends a query in a table: columns matched by position to the table's declared
    /// columns (cast where types differ), or passed through when it declares none.
    pub fn sink(&mut self, query: Lowered, schema: &DFSchema, def: &TableDef) -> Result<()> {
        let query = self.materialize(query)?;
        let out_names = physical_names(schema);
        // What the sink writes: the declared columns but the VIRTUAL metadata ones.
        let written: arrow::datatypes::SchemaRef = match def.virtual_columns.is_empty() {
            true => Arc::clone(&def.declared),
            false => Arc::new(arrow::datatypes::Schema::new(
                def.declared
                    .fields()
                    .iter()
                    .filter(|f| !def.virtual_columns.contains(f.name()))
                    .cloned()
                    .collect::<Vec<_>>(),
            )),
        };
        let lowered = if written.fields().is_empty() {
            let exprs = out_names.iter().map(|n| ucol(n.as_str())).collect();
            self.project(&query, exprs, out_names)
        } else {
            let declared = written.fields();
            if declared.len() != out_names.len() {
                return Err(SqlError::new(format!(
                    "the query returns {} columns ({}) but table `{}` has {} ({})",
                    out_names.len(),
                    out_names.join(", "),
                    def.name,
                    declared.len(),
                    declared
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let mut exprs = Vec::new();
            let mut names = Vec::new();
            for ((name, (_, qf)), f) in out_names.iter().zip(schema.iter()).zip(declared.iter()) {
                let c = ucol(name.as_str());
                exprs.push(if qf.data_type() == f.data_type() {
                    c
                } else {
                    Expr::Cast(datafusion_expr::Cast::new(
                        Box::new(c),
                        f.data_type().clone(),
                    ))
                });
                names.push(f.name().clone());
            }
            self.project(&query, exprs, names)
        };
        let mut spec = def.spec.clone();
        if !written.fields().is_empty() {
            spec.schema = Some(Arc::clone(&written));
        }
        spec.metadata
            .retain(|c, _| !def.virtual_columns.contains(c));
        let mut lowered = lowered;
        if spec.options.get("format").map(String::as_str) == Some("debezium-json") {
            // A changelog of the updates: before/after/op rows, written as JSON lines.
            if !lowered.updating {
                return Err(SqlError::new(format!(
                    "table `{}` uses 'format' = 'debezium-json', which writes the changes of an updating query (GROUP BY without windows, Top-N without windows); this query only appends rows: use 'format' = 'json'",
                    def.name
                )));
            }
            let Some(keys) = lowered.upsert_key.clone() else {
                return Err(SqlError::new(format!(
                    "table `{}` uses 'format' = 'debezium-json': select the columns that identify an update (the GROUP BY or PARTITION BY columns, and the rank)",
                    def.name
                )));
            };
            let p = self.plan.nodes[lowered.node].parallelism;
            let edge = (!keys.is_empty()).then(|| Partitioning::Hash(keys.clone()));
            let p = if keys.is_empty() { 1 } else { p };
            lowered.node = self.add(&lowered, NodeKind::Changelog { keys }, p, edge);
            spec.options.insert("format".into(), "json".into());
            // The sink writes before/after/op, not the table's columns.
            spec.schema = None;
        }
        let p = self.plan.nodes[lowered.node].parallelism;
        let node = match self.sinks.get(&def.name) {
            Some(&n) => n,
            None => {
                let n = self
                    .plan
                    .add_node(format!("sink {}", def.name), p, NodeKind::Sink(spec));
                self.sinks.insert(def.name.clone(), n);
                n
            }
        };
        let edge = if self.plan.nodes[node].parallelism == p {
            Partitioning::Forward
        } else {
            Partitioning::Rebalance
        };
        self.plan.add_edge(lowered.node, node, edge);
        Ok(())
    }
}

/// Whether an expression reads only columns of `schema`.
fn reads_only(e: &Expr, schema: &DFSchema) -> bool {
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

/// A join's ON and WHERE conditions as conjuncts, `BETWEEN` split in two.
fn join_conjuncts(
    j: &datafusion_expr::logical_plan::Join,
    where_clause: Option<&Expr>,
) -> Vec<Expr> {
    let mut conjuncts = Vec::new();
    for e in j.filter.iter().chain(where_clause) {
        for c in datafusion_expr::utils::split_conjunction(e) {
            match c {
                Expr::Between(b) if !b.negated => {
                    conjuncts.push(b.expr.as_ref().clone().gt_eq(b.low.as_ref().clone()));
                    conjuncts.push(b.expr.as_ref().clone().lt_eq(b.high.as_ref().clone()));
                }
                other => conjuncts.push(other.clone()),
            }
        }
    }
    conjuncts
}

/// The catalog name of a lookup table (`FOR SYSTEM_TIME AS OF`), under any aliases.
fn lookup_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => lookup_table(&a.input),
        LogicalPlan::Extension(e) => e
            .node
            .as_any()
            .downcast_ref::<crate::window_tvf::LookupTable>()
            .map(|l| l.table.clone()),
        _ => None,
    }
}

/// A join condition's term `time_column [± INTERVAL]`: which side (0 left, 1 right) and
/// the offset in ms, when the column is that side's event-time column.
/// For `a <= b` (or `<`, `>=`, `>`) comparing one side's event time with a plain
/// column of the other side, bounding it from above: (the other side, that column's
/// physical name).
fn until_column(
    c: &Expr,
    j: &datafusion_expr::logical_plan::Join,
    names: &[String],
    side_of: &dyn Fn(&Expr) -> Option<(usize, i64)>,
) -> Option<(usize, String)> {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op,
        right: b,
    }) = c
    else {
        return None;
    };
    // Normalise to `time <= column`.
    let (time, column) = match op {
        Operator::LtEq | Operator::Lt => (a.as_ref(), b.as_ref()),
        Operator::GtEq | Operator::Gt => (b.as_ref(), a.as_ref()),
        _ => return None,
    };
    let (time_side, 0) = side_of(time)? else {
        return None;
    };
    let Expr::Column(col) = column else {
        return None;
    };
    let nl = j.left.schema().fields().len();
    let (col_side, index) = if let Ok(i) = j.left.schema().index_of_column(col) {
        (0, i)
    } else {
        (1, nl + j.right.schema().index_of_column(col).ok()?)
    };
    if col_side == time_side || side_of(column).is_some() {
        return None;
    }
    Some((col_side, names.get(index)?.clone()))
}

fn time_term(
    e: &Expr,
    j: &datafusion_expr::logical_plan::Join,
    left: &Lowered,
    right: &Lowered,
) -> Option<(usize, i64)> {
    match e {
        Expr::Column(c) => {
            let (side, lowered, schema) = if j.left.schema().has_column(c) {
                (0, left, j.left.schema())
            } else if j.right.schema().has_column(c) {
                (1, right, j.right.schema())
            } else {
                return None;
            };
            // The rowtime under the side's original (pre-rename) name.
            let i = schema.index_of_column(c).ok()?;
            let original = schema.field(i).name();
            let rt = lowered.rowtime.as_deref()?;
            (rt == original || lowered.columns.get(i).map(String::as_str) == Some(rt))
                .then_some((side, 0))
        }
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op,
            right: b,
        }) if matches!(op, Operator::Plus | Operator::Minus) => {
            let (side, off) = time_term(a, j, left, right)?;
            let ms = i64::try_from(crate::window_tvf::literal_interval_ms(b)?).ok()?;
            Some((
                side,
                if *op == Operator::Plus {
                    off + ms
                } else {
                    off - ms
                },
            ))
        }
        Expr::Cast(c) => time_term(&c.expr, j, left, right),
        _ => None,
    }
}

/// `agg(x) FILTER (WHERE p)` as `agg(CASE WHEN p THEN x END)`: the same for aggregates
/// that skip nulls (`count`, `sum`, `min`, `max`, `avg`, and their DISTINCT forms).
fn rewrite_filter(e: Expr) -> Result<Expr> {
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

/// The limit of `rank <op> v`, if it is a Top-N bound.
fn limit_of(op: Operator, v: &ScalarValue, flipped: bool) -> Option<usize> {
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

/// Rejects what a stateless projection cannot evaluate.
fn check_scalar(e: &Expr) -> Result<()> {
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
