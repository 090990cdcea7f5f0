//! Which of a source's columns, and which fields of its nested rows, a job reads:
//! worked out backwards from the sinks over the projections and filters after each
//! source, so that a decoder can pass over the rest without building it (projection
//! pushdown, nested fields included). The same walk narrows what flows between those
//! operators: a filter passes on only what is read after it, and a projection drops the
//! columns no one reads. And the comparisons the filters right after a source put on its
//! own columns are handed to it (filter pushdown: Parquet skips row groups by them).
//!
//! ```text
//!  source (event_type, person ROW<…8>, bid ROW<…7>)     filters: event_type = 2
//!    └─ project  CASE … person.dateTime … bid.dateTime … AS dateTime, bid, event_type
//!        └─ filter event_type = 2                       passes: bid{price}, dateTime
//!            └─ project bid.price, dateTime        (the sink takes all it gets)
//!  reads: event_type, person{dateTime}, bid{price, dateTime}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::{DataType, Fields};
use datafusion_common::ScalarValue;
use datafusion_common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion_expr::Expr;

use crate::{EventTime, JobPlan, NodeId, NodeKind};

/// How much of a value is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldUse {
    /// All of it.
    All,
    /// Only these fields of a row (by name), each to the extent given; a field not
    /// named is not read at all.
    Fields(BTreeMap<String, FieldUse>),
}

impl FieldUse {
    /// Nothing yet (a row none of whose fields is read).
    pub fn none() -> Self {
        FieldUse::Fields(BTreeMap::new())
    }

    /// Widens this use by `other`.
    pub fn add(&mut self, other: FieldUse) {
        match (&mut *self, other) {
            (FieldUse::All, _) => {}
            (me, FieldUse::All) => *me = FieldUse::All,
            (FieldUse::Fields(mine), FieldUse::Fields(theirs)) => {
                for (name, u) in theirs {
                    match mine.get_mut(&name) {
                        Some(m) => m.add(u),
                        None => {
                            mine.insert(name, u);
                        }
                    }
                }
            }
        }
    }

    /// Widens the use of field `name` by `u`.
    fn add_field(&mut self, name: &str, u: FieldUse) {
        self.add(FieldUse::Fields(BTreeMap::from([(name.to_string(), u)])))
    }

    /// Whether this use leaves out any of `fields` (or of their nested fields).
    pub fn narrows(&self, fields: &Fields) -> bool {
        fields.iter().any(|f| match self.field(f.name()) {
            None => true,
            Some(FieldUse::All) => false,
            Some(u) => match f.data_type() {
                DataType::Struct(children) => u.narrows(children),
                _ => false,
            },
        })
    }

    /// `fields` as far as this use reads them: the fields not read left out, and the
    /// rows among the others narrowed the same way.
    pub fn narrow(&self, fields: &Fields) -> Fields {
        fields
            .iter()
            .filter_map(|f| {
                let u = self.field(f.name())?;
                Some(match (u, f.data_type()) {
                    (FieldUse::Fields(_), DataType::Struct(children)) => Arc::new(
                        f.as_ref()
                            .clone()
                            .with_data_type(DataType::Struct(u.narrow(children))),
                    ),
                    _ => Arc::clone(f),
                })
            })
            .collect()
    }

    /// The use of field `name` of a row used this way (`None`: not read).
    pub fn field(&self, name: &str) -> Option<&FieldUse> {
        match self {
            FieldUse::All => Some(&FieldUse::All),
            FieldUse::Fields(f) => f.get(name),
        }
    }
}

/// `a, r{x, y}`: the fields read, a row's own fields in braces; `*` for all.
impl std::fmt::Display for FieldUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldUse::All => f.write_str("*"),
            FieldUse::Fields(fields) => {
                for (i, (name, u)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(name)?;
                    if let FieldUse::Fields(_) = u {
                        write!(f, "{{{u}}}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl JobPlan {
    /// Sets each source's [`crate::ConnectorSpec::reads`] to what the job reads of it
    /// and its [`crate::ConnectorSpec::filters`], what each filter passes on to what is
    /// read after it, and drops from each projection the columns no one reads. A source
    /// followed by anything but projections, filters and aggregates (before its sinks or
    /// other operators, which take every column they get) reads everything.
    pub fn mark_reads(&mut self) {
        let Ok(order) = self.topological_order() else {
            return;
        };
        // What is read of each node's output, filled from the sinks back.
        let mut used: Vec<FieldUse> = vec![FieldUse::none(); self.nodes.len()];
        // What the consumers of each filter and projection read of it.
        let mut passes: Vec<(NodeId, FieldUse)> = Vec::new();
        for &id in order.iter().rev() {
            let mine = std::mem::replace(&mut used[id], FieldUse::none());
            let wanted = if self.outputs(id).any(|e| e.side.is_none()) {
                mine
            } else {
                // A node without consumers of its rows (a sink): every column.
                FieldUse::All
            };
            let inputs: Vec<NodeId> = self
                .inputs(id)
                .filter(|e| e.side.is_none())
                .map(|e| e.from)
                .collect();
            let needs = match &self.nodes[id].kind {
                NodeKind::Filter { predicate, .. } => {
                    passes.push((id, wanted.clone()));
                    let mut u = wanted.clone();
                    expr_use(predicate, FieldUse::All, &mut u);
                    u
                }
                NodeKind::Project { exprs } => {
                    passes.push((id, wanted.clone()));
                    project_use(exprs, &wanted)
                }
                // Aggregates read their keys and their arguments (the window is the
                // rows' event time, which the source computes).
                NodeKind::WindowAggregate {
                    keys, aggregates, ..
                }
                | NodeKind::Aggregate {
                    keys, aggregates, ..
                } => {
                    let mut u = FieldUse::none();
                    for k in keys {
                        u.add_field(k, FieldUse::All);
                    }
                    for a in aggregates {
                        expr_use(a, FieldUse::All, &mut u);
                    }
                    u
                }
                NodeKind::Source(s) => {
                    let mut u = wanted.clone();
                    match &s.event_time {
                        EventTime::Expr(e) => expr_use(e, FieldUse::All, &mut u),
                        EventTime::Column(c) => u.add_field(c, FieldUse::All),
                        _ => {}
                    }
                    for c in s.spec.metadata.keys() {
                        u.add_field(c, FieldUse::All);
                    }
                    used[id] = u;
                    continue;
                }
                _ => FieldUse::All,
            };
            // A node with a side output (late rows to a table) passes whole input rows on.
            let needs = match self.outputs(id).any(|e| e.side.is_some()) {
                true => FieldUse::All,
                false => needs,
            };
            // Side inputs (late rows of a window feeding this node) are whole rows of the
            // node's input; a source's side output (dead letters) is the raw records.
            for e in self.edges.iter().filter(|e| e.to == id && e.side.is_some()) {
                if !matches!(self.nodes[e.from].kind, NodeKind::Source(_)) {
                    used[e.from].add(FieldUse::All);
                }
            }
            for i in inputs {
                used[i].add(needs.clone());
            }
        }
        for (id, u) in passes {
            match &mut self.nodes[id].kind {
                NodeKind::Filter { passes, .. } => *passes = u,
                // A column no one reads is not computed (an unnamed one is kept).
                NodeKind::Project { exprs } => {
                    exprs.retain(|e| output_name(e).is_none_or(|n| u.field(n).is_some()))
                }
                _ => {}
            }
        }
        let filters: Vec<Vec<Expr>> = (0..self.nodes.len())
            .map(|id| match &self.nodes[id].kind {
                NodeKind::Source(_) => self.source_filters(id),
                _ => Vec::new(),
            })
            .collect();
        for ((id, mut u), filters) in used.into_iter().enumerate().zip(filters) {
            if let NodeKind::Source(s) = &mut self.nodes[id].kind {
                s.spec.filters = filters;
                // Only the source's own columns (not the rows' event time, which every
                // operator carries).
                if let FieldUse::Fields(f) = &mut u {
                    f.remove(sluice_types::TIMESTAMP_FIELD);
                }
                s.spec.reads = u;
            }
        }
    }
}

impl JobPlan {
    /// The conditions every row the job keeps of source `id` meets, on the source's own
    /// columns: the conjuncts of the filters right after it (through projections that
    /// pass or rename its columns), while each step has a single consumer.
    fn source_filters(&self, id: NodeId) -> Vec<Expr> {
        // Each visible column's source column.
        let mut names: Option<HashMap<String, String>> = None;
        let mut out = Vec::new();
        let mut node = id;
        loop {
            let mut next = self.outputs(node).filter(|e| e.side.is_none());
            let (Some(e), None) = (next.next(), next.next()) else {
                break;
            };
            node = e.to;
            if self.inputs(node).count() != 1 {
                break;
            }
            match &self.nodes[node].kind {
                NodeKind::Project { exprs } => {
                    let mut renamed = HashMap::new();
                    for e in exprs {
                        let (name, inner) = match e {
                            Expr::Alias(a) => (a.name.as_str(), a.expr.as_ref()),
                            _ => match e {
                                Expr::Column(c) => (c.name.as_str(), e),
                                _ => continue,
                            },
                        };
                        if let Expr::Column(c) = inner {
                            let from = match &names {
                                None => Some(c.name.clone()),
                                Some(n) => n.get(&c.name).cloned(),
                            };
                            if let Some(from) = from {
                                renamed.insert(name.to_string(), from);
                            }
                        }
                    }
                    names = Some(renamed);
                }
                NodeKind::Filter { predicate, .. } => {
                    for c in datafusion_expr::utils::split_conjunction(predicate) {
                        if let Some(c) = on_source(c, names.as_ref()) {
                            out.push(c);
                        }
                    }
                }
                _ => break,
            }
        }
        out
    }
}

/// `e` on the source's own columns (`names`: each visible column's source column, or
/// `None` for the source's own), if it is a comparison of one with a literal.
fn on_source(e: &Expr, names: Option<&HashMap<String, String>>) -> Option<Expr> {
    use datafusion_expr::Operator;
    // A literal written with a cast (`TIMESTAMP '…'`, `CAST(5 AS INT)`) as the value the
    // cast gives.
    let e = &e
        .clone()
        .transform(|x| match &x {
            Expr::Cast(c) => match c.expr.as_ref() {
                Expr::Literal(v, _) => match v.cast_to(c.field.data_type()) {
                    Ok(v) => Ok(Transformed::yes(Expr::Literal(v, None))),
                    Err(_) => Ok(Transformed::no(x)),
                },
                _ => Ok(Transformed::no(x)),
            },
            _ => Ok(Transformed::no(x)),
        })
        .ok()?
        .data;
    let literal = |e: &Expr| matches!(e, Expr::Literal(v, _) if !v.is_null());
    let simple = match e {
        Expr::BinaryExpr(b) => {
            matches!(
                b.op,
                Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            ) && match (b.left.as_ref(), b.right.as_ref()) {
                (Expr::Column(_), r) => literal(r),
                (l, Expr::Column(_)) => literal(l),
                _ => false,
            }
        }
        Expr::Between(b) => {
            !b.negated
                && matches!(b.expr.as_ref(), Expr::Column(_))
                && literal(&b.low)
                && literal(&b.high)
        }
        _ => false,
    };
    if !simple {
        return None;
    }
    let mut mapped = true;
    let out = e
        .clone()
        .transform(|x| {
            let Expr::Column(c) = &x else {
                return Ok(Transformed::no(x));
            };
            let to = match names {
                None => Some(c.name.clone()),
                Some(n) => n.get(&c.name).cloned(),
            };
            match to {
                Some(to) if to != sluice_types::TIMESTAMP_FIELD => Ok(Transformed::yes(
                    Expr::Column(datafusion_common::Column::from_name(to)),
                )),
                _ => {
                    mapped = false;
                    Ok(Transformed::no(x))
                }
            }
        })
        .ok()?
        .data;
    mapped.then_some(out)
}

/// The name of a projection's output column, when it is given one.
fn output_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Alias(a) => Some(a.name.as_str()),
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

/// What a projection reads of its input, when `wanted` is read of its output.
fn project_use(exprs: &[Expr], wanted: &FieldUse) -> FieldUse {
    let mut u = FieldUse::none();
    for e in exprs {
        let name = output_name(e);
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            _ => e,
        };
        let of_output = match name {
            Some(n) => match wanted.field(n) {
                Some(w) => w.clone(),
                None => continue,
            },
            None => FieldUse::All,
        };
        expr_use(inner, of_output, &mut u);
    }
    u
}

/// Adds to `acc` what `e` reads of its input's columns when `of_value` is read of its
/// value: a column or a chain of field accesses on one narrows to that path; any other
/// expression reads all of every column it names.
fn expr_use(e: &Expr, of_value: FieldUse, acc: &mut FieldUse) {
    match e {
        Expr::Column(c) => acc.add_field(&c.name, of_value),
        Expr::Alias(a) => expr_use(&a.expr, of_value, acc),
        Expr::ScalarFunction(f) if f.func.name() == "get_field" && f.args.len() >= 2 => {
            let mut names = Vec::new();
            for a in &f.args[1..] {
                match a {
                    Expr::Literal(ScalarValue::Utf8(Some(n)), _)
                    | Expr::Literal(ScalarValue::LargeUtf8(Some(n)), _)
                    | Expr::Literal(ScalarValue::Utf8View(Some(n)), _) => names.push(n.clone()),
                    _ => {
                        // A computed key (or a map's): every part read whole.
                        for a in &f.args {
                            expr_use(a, FieldUse::All, acc);
                        }
                        return;
                    }
                }
            }
            let mut u = of_value;
            for n in names.into_iter().rev() {
                u = FieldUse::Fields(BTreeMap::from([(n, u)]));
            }
            expr_use(&f.args[0], u, acc);
        }
        _ => {
            let _ = e.apply_children(|c| {
                expr_use(c, FieldUse::All, acc);
                Ok(TreeNodeRecursion::Continue)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, FieldUse)]) -> FieldUse {
        FieldUse::Fields(
            pairs
                .iter()
                .map(|(n, u)| (n.to_string(), u.clone()))
                .collect(),
        )
    }

    #[test]
    fn widening_a_use_keeps_the_wider() {
        let mut u = fields(&[("a", fields(&[("x", FieldUse::All)]))]);
        u.add(fields(&[
            ("a", fields(&[("y", FieldUse::All)])),
            ("b", FieldUse::All),
        ]));
        assert_eq!(
            u,
            fields(&[
                ("a", fields(&[("x", FieldUse::All), ("y", FieldUse::All)])),
                ("b", FieldUse::All)
            ])
        );
        assert_eq!(u.to_string(), "a{x, y}, b");
        u.add(fields(&[("a", FieldUse::All)]));
        assert_eq!(u.field("a"), Some(&FieldUse::All));
        u.add(FieldUse::All);
        assert_eq!(u, FieldUse::All);
    }
}
