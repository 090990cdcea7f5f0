//! Choosing the cheaper changelog where it is as correct, as Flink's changelog-mode
//! inference does: an updating aggregate (or a Top-N, keyed by its partition columns and
//! rank) whose only consumer (through projections that keep its keys) is an upsert sink
//! keyed by exactly those keys emits upserts, an update being its new row alone. The sink keeps each key's last row, so the `-U` before it
//! carries nothing the sink uses (it would skip it anyway), and half the rows of every
//! update no longer cross the exchange.

use datafusion_expr::Expr;
use sluice_plan::{JobPlan, NodeId, NodeKind};

/// Sets upsert mode on every aggregate and Top-N that feeds only an upsert sink keyed
/// like it.
pub(crate) fn upserts_where_possible(plan: &mut JobPlan) {
    let sinks: Vec<(NodeId, Vec<String>)> = plan
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Sink(s) if s.connector == "upsert-kafka" => s
                .options
                .get("key.fields")
                .map(|k| (n.id, k.split(';').map(str::to_string).collect())),
            _ => None,
        })
        .collect();
    for (sink, key) in sinks {
        if let Some(node) = aggregate_keyed_like(plan, sink, key) {
            match &mut plan.nodes[node].kind {
                NodeKind::Aggregate { upsert, .. } | NodeKind::TopN { upsert, .. } => {
                    *upsert = true
                }
                _ => {}
            }
        }
    }
}

/// The one input of `node`, when it has exactly one and that input feeds nothing else.
fn only_input(plan: &JobPlan, node: NodeId) -> Option<NodeId> {
    let mut inputs = plan.edges.iter().filter(|e| e.to == node);
    let edge = inputs.next()?;
    if inputs.next().is_some() || edge.side.is_some() {
        return None;
    }
    let consumers = plan.edges.iter().filter(|e| e.from == edge.from).count();
    (consumers == 1).then_some(edge.from)
}

/// Follows `columns` (named at `node`'s input) up through projections that pass them on
/// unchanged to an aggregate grouped by exactly them.
fn aggregate_keyed_like(plan: &JobPlan, node: NodeId, columns: Vec<String>) -> Option<NodeId> {
    aggregate_at_or_above(plan, only_input(plan, node)?, columns, false)
}

/// Whether the rows of `node` are keyed by exactly `columns`: an aggregate grouped by them
/// or a Top-N partitioned by them and its rank, or filters and projections that pass them
/// on unchanged from one. Such a changelog holds
/// one row per key, its changes in order, so an upsert sink keyed by them needs no
/// materializing.
pub(crate) fn keyed_by(plan: &JobPlan, node: NodeId, columns: Vec<String>) -> bool {
    aggregate_at_or_above(plan, node, columns, true).is_some()
}

/// [`aggregate_keyed_like`] from `at` itself; through filters too if `filters` (a filter
/// keeps the key, but turns an update into a delete only when it sees the `-U`).
fn aggregate_at_or_above(
    plan: &JobPlan,
    mut at: NodeId,
    mut columns: Vec<String>,
    filters: bool,
) -> Option<NodeId> {
    loop {
        match &plan.nodes[at].kind {
            NodeKind::Project { exprs } => {
                // Each column is a plain column of the projection's input.
                columns = columns
                    .iter()
                    .map(|c| {
                        exprs.iter().find_map(|e| match e {
                            Expr::Alias(a) if &a.name == c => match a.expr.as_ref() {
                                Expr::Column(col) => Some(col.name.clone()),
                                // A column cast to an integer type (a rank, a sink's
                                // declared type) still tells its rows apart.
                                Expr::Cast(cast)
                                    if cast.field.data_type().is_integer()
                                        && matches!(cast.expr.as_ref(), Expr::Column(_)) =>
                                {
                                    match cast.expr.as_ref() {
                                        Expr::Column(col) => Some(col.name.clone()),
                                        _ => None,
                                    }
                                }
                                _ => None,
                            },
                            Expr::Column(col) if &col.name == c => Some(col.name.clone()),
                            _ => None,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                at = only_input(plan, at)?;
            }
            NodeKind::Filter { .. } if filters => {
                at = only_input(plan, at)?;
            }
            NodeKind::Aggregate { keys, .. } => {
                let mut a = keys.clone();
                let mut b = columns;
                a.sort();
                b.sort();
                return (a == b).then_some(at);
            }
            // A Top-N's rows are keyed by their partition and rank.
            NodeKind::TopN {
                partition_by,
                rank_column,
                ..
            } => {
                let mut a = partition_by.clone();
                a.push(rank_column.clone());
                let mut b = columns;
                a.sort();
                b.sort();
                return (a == b).then_some(at);
            }
            _ => return None,
        }
    }
}
