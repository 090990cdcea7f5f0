//! Lowering joins: interval, window, regular and lookup joins.

use std::sync::Arc;

use datafusion_common::{Column, DFSchema};
use datafusion_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use sluice_plan::{NodeKind, Partitioning};

use crate::catalog::Entry;
use crate::error::{Result, SqlError};

use super::*;

impl Lowerer<'_> {
    /// An inner equi-join: interval join (a time condition between the two event times),
    /// window join (equal `window_end`s), or regular join (rows kept for the state TTL).
    pub(crate) fn join(
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
                side.node = self.add(side, NodeKind::filter(predicate), par, None);
            }
        }
        let updating_input = left.updating || right.updating;
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
        if updating_input && (interval.is_some() || is_window_join) {
            return Err(SqlError::unsupported(
                "an interval or window join of an updating input (the output of a GROUP BY without windows, a Top-N or a regular join): join it with equal keys only",
            ));
        }
        if is_outer {
            if is_window_join {
                return Err(SqlError::unsupported(
                    "an outer window join: write it as an interval join (`r.ts BETWEEN l.ts - INTERVAL … AND l.ts + INTERVAL …`) or a regular outer join",
                ));
            }
            if !residual.is_empty() {
                return Err(SqlError::unsupported(
                    "conditions beyond equal keys and time bounds in the ON of an outer join; filter the inputs first",
                ));
            }
        }
        // A regular outer join takes its NULL-padded rows back when a match comes.
        let updating = updating_input || (is_outer && interval.is_none());
        let kind = NodeKind::Join {
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            interval,
            left_retain_ms: left_retain_ms.or(ttl),
            right_retain_ms: right_retain_ms.or(ttl),
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
            window_end: None,
            window_start: None,
        };
        if !residual.is_empty() {
            let predicate = resolve(
                &datafusion_expr::utils::conjunction(residual).expect("invariant: non-empty"),
                &out.columns,
            );
            self.check_columns(&out, &[&predicate])?;
            let p = self.parallelism;
            let f = self.add(&out, NodeKind::filter(predicate), p, None);
            out.node = f;
        }
        if let Some(w) = after {
            let predicate = resolve(w, &out.columns);
            self.check_columns(&out, &[&predicate])?;
            let p = self.parallelism;
            out.node = self.add(&out, NodeKind::filter(predicate), p, None);
        }
        Ok(out)
    }

    /// A lookup join: the stream on the left, a bounded table on the right, read once.
    pub(crate) fn lookup_join(
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
        let only = reads_only;
        let mut left_keys = Vec::new();
        let mut right_keys = Vec::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        let mut computed_keys: Vec<(Expr, String)> = Vec::new();
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
            // `f(stream columns) = table column`: the stream's side is computed into a
            // column of its own before the join (and dropped after it).
            if let Expr::BinaryExpr(BinaryExpr {
                left: a,
                op: Operator::Eq,
                right: b,
            }) = &c
            {
                let table_column = |e: &Expr| match e {
                    Expr::Column(y) if j.right.schema().has_column(y) => j
                        .right
                        .schema()
                        .index_of_column(y)
                        .ok()
                        .map(|ri| j.right.schema().field(ri).name().clone()),
                    _ => None,
                };
                let pair = match (table_column(b), table_column(a)) {
                    (Some(r), _) if only(a, j.left.schema()) => Some((a.as_ref().clone(), r)),
                    (_, Some(r)) if only(b, j.left.schema()) => Some((b.as_ref().clone(), r)),
                    _ => None,
                };
                if let Some((e, r)) = pair {
                    let name = format!("__lookup_key_{}", computed_keys.len());
                    computed_keys.push((e, name.clone()));
                    left_keys.push(name);
                    right_keys.push(r);
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
            left.node = self.add(&left, NodeKind::filter(predicate), par, None);
        }
        // The stream's columns under their names in the join's output.
        let mut exprs = Vec::new();
        for (q, f) in j.left.schema().iter() {
            exprs.push(resolve(
                &Expr::Column(Column::new(q.cloned(), f.name())),
                &left.columns,
            ));
        }
        let mut left_names = names[..nl].to_vec();
        for (e, name) in &computed_keys {
            exprs.push(resolve(e, &left.columns));
            left_names.push(name.clone());
        }
        self.check_columns(&left, &exprs.iter().collect::<Vec<_>>())?;
        let left = self.project(&left, exprs, left_names.clone());
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
            columns: left_names
                .into_iter()
                .chain(names[nl..].iter().cloned())
                .collect(),
            rowtime: left.rowtime.clone(),
            window: None,
            // Each change of an updating stream joins as it is: its pairs carry its kind.
            updating: left.updating,
            window_end: None,
            window_start: None,
        };
        if !computed_keys.is_empty() {
            let exprs = names.iter().map(|n| ucol(n.as_str())).collect();
            out = self.project(&out, exprs, names.clone());
        }
        if let Some(p) = datafusion_expr::utils::conjunction(after) {
            let predicate = resolve(&p, &out.columns);
            self.check_columns(&out, &[&predicate])?;
            let par = self.plan.nodes[out.node].parallelism;
            out.node = self.add(&out, NodeKind::filter(predicate), par, None);
        }
        Ok(out)
    }
}

/// A join's ON and WHERE conditions as conjuncts, `BETWEEN` split in two.
pub(crate) fn join_conjuncts(
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
pub(crate) fn lookup_table(plan: &LogicalPlan) -> Option<String> {
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
pub(crate) fn until_column(
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

pub(crate) fn time_term(
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
