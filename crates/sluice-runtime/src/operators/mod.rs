//! Built-in operators, by family in folders (windows, aggregates, joins, rank) with the
//! helpers each family shares, and the constructor registry that turns a plan
//! node into an operator factory.

pub mod aggregates;
pub mod filter;
pub mod joins;
pub mod limit;
pub mod normalize;
pub mod proctime;
pub mod project;
pub mod rank;
mod row_ids;
#[cfg(test)]
mod test_util;
pub mod upsert_materialize;
pub mod windows;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use sluice_plan::NodeKind;
use sluice_types::{Result, SluiceError, TaskInfo};

use crate::operator::Operator;
use crate::source::ConnectorRegistry;

/// Creates the operator of one subtask.
pub type OperatorFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync>;

/// A prepared operator whose subtasks each get `fresh(&template)`: empty state, same
/// configuration. The factory runs once per subtask at start-up; the lock is uncontended.
pub(crate) fn prepare_from_template<T: Operator + 'static>(
    template: T,
    output_schema: SchemaRef,
    fresh: fn(&T) -> Result<T>,
) -> PreparedOperator {
    let template = std::sync::Mutex::new(template);
    PreparedOperator {
        output_schema,
        factory: Arc::new(move |_| {
            let t = template.lock().unwrap_or_else(|p| p.into_inner());
            Ok(Box::new(fresh(&t)?) as Box<dyn Operator>)
        }),
    }
}

/// A plan node checked against its input schema: what it emits, and how to build it.
pub struct PreparedOperator {
    /// Schema of its output (event-time column last).
    pub output_schema: SchemaRef,
    /// Builds one subtask's operator.
    pub factory: OperatorFactory,
}

/// A node prepared against its inputs: the operator, the schema its (merged) input is
/// read as, and the schema of its side output, if it has one.
pub struct PreparedNode {
    /// The operator.
    pub operator: PreparedOperator,
    /// The schema of its input (the first input of a join).
    pub input_schema: SchemaRef,
    /// The schema of its side output (late rows), if the node has one.
    pub side_output_schema: Option<SchemaRef>,
}

/// Builds the operator of one kind of plan node from the node and its input schemas (one
/// per input edge, in plan order).
type Constructor = fn(&NodeKind, &[&SchemaRef], &ConnectorRegistry) -> Result<PreparedOperator>;

/// The constructor registered for each kind of plan node; each lives with its operator.
fn constructor(kind: &NodeKind) -> Constructor {
    match kind {
        NodeKind::Filter { .. } => filter::FilterOperator::from_node,
        NodeKind::Project { .. } => project::ProjectOperator::from_node,
        NodeKind::ProcessingTime => proctime::ProcessingTimeOperator::from_node,
        NodeKind::AssignWindows { .. } => windows::assign::AssignWindowsOperator::from_node,
        NodeKind::ChangelogNormalize { .. } => normalize::ChangelogNormalizeOperator::from_node,
        NodeKind::UpsertMaterialize { .. } => {
            upsert_materialize::UpsertMaterializeOperator::from_node
        }
        NodeKind::Aggregate { .. } | NodeKind::ChangelogWindowAggregate { .. } => {
            aggregates::group::AggregateOperator::from_node
        }
        NodeKind::OverAggregate { .. } => aggregates::over::OverAggregateOperator::from_node,
        NodeKind::ChangelogOverAggregate { .. } => {
            aggregates::changelog_over::ChangelogOverOperator::from_node
        }
        NodeKind::WindowAggregate { .. } => windows::from_node,
        NodeKind::TopNPerWindow { .. } => rank::window_topn::TopNPerWindowOperator::from_node,
        NodeKind::TopN { .. } => rank::topn::TopNOperator::from_node,
        NodeKind::LookupJoin { .. } => joins::lookup::LookupJoinOperator::from_node,
        NodeKind::Join { .. } => joins::from_node,
        NodeKind::Limit { .. } => limit::LimitOperator::from_node,
        NodeKind::Sink(_) => sink_from_node,
        NodeKind::Source(_) => |_, _, _| {
            Err(SluiceError::internal(
                "sources are prepared by the job builder, not as operators",
            ))
        },
    }
}

/// Whether a node of this kind handles every row kind of an updating input.
fn consumes_updates(kind: &NodeKind) -> bool {
    matches!(
        kind,
        NodeKind::Filter { .. }
            | NodeKind::Project { .. }
            | NodeKind::ProcessingTime
            | NodeKind::ChangelogNormalize { .. }
            | NodeKind::UpsertMaterialize { .. }
            | NodeKind::ChangelogWindowAggregate { .. }
            | NodeKind::AssignWindows { .. }
            | NodeKind::Aggregate { .. }
            | NodeKind::Join { .. }
            | NodeKind::TopN { .. }
            | NodeKind::ChangelogOverAggregate { .. }
            | NodeKind::LookupJoin { .. }
            | NodeKind::WindowAggregate {
                window: sluice_plan::WindowSpec::Session { .. },
                ..
            }
            | NodeKind::Sink(_)
    )
}

/// Prepares a non-source node against its input schemas: every configuration error
/// surfaces here, before data moves.
pub fn prepare_node(
    kind: &NodeKind,
    inputs: &[&SchemaRef],
    registry: &ConnectorRegistry,
) -> Result<PreparedNode> {
    if inputs.iter().any(|i| sluice_types::is_updating(i)) && !consumes_updates(kind) {
        return Err(SluiceError::user(format!(
            "`{}` cannot take updates and deletes, but its input updates rows it emitted before (a GROUP BY without windows, a Top-N, or a join of one)",
            kind.label()
        )));
    }
    // A single-input node's inputs merge once here; its constructor sees the merged one.
    let (operator, input_schema) = match kind {
        NodeKind::Join { .. } => {
            let first = inputs
                .first()
                .ok_or_else(|| SluiceError::internal("a join without inputs"))?;
            (
                constructor(kind)(kind, inputs, registry)?,
                Arc::clone(first),
            )
        }
        _ => {
            let input = single_input(inputs)?;
            (constructor(kind)(kind, &[&input], registry)?, input)
        }
    };
    let side_output_schema = match kind.side_outputs().is_empty() {
        true => None,
        false => Some(windows::late_output_schema(&input_schema)?),
    };
    Ok(PreparedNode {
        operator,
        input_schema,
        side_output_schema,
    })
}

/// The one input of a single-input node: its input edges' schemas must agree (a union);
/// a column nullable in any input is nullable in the result.
pub(crate) fn single_input(inputs: &[&SchemaRef]) -> Result<SchemaRef> {
    let (first, rest) = inputs
        .split_first()
        .ok_or_else(|| SluiceError::internal("an operator without inputs"))?;
    let mut input = Arc::clone(first);
    for other in rest {
        let same = other.fields().len() == input.fields().len()
            && other
                .fields()
                .iter()
                .zip(input.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return Err(SluiceError::user(format!(
                "inputs have different schemas: {input} and {other}"
            )));
        }
        if other.fields() != input.fields() {
            let fields: Vec<arrow::datatypes::Field> = input
                .fields()
                .iter()
                .zip(other.fields())
                .map(|(a, b)| {
                    a.as_ref()
                        .clone()
                        .with_nullable(a.is_nullable() || b.is_nullable())
                })
                .collect();
            input = Arc::new(arrow::datatypes::Schema::new(fields));
        }
    }
    Ok(input)
}

/// The error of a constructor handed a node of another kind (a bug in the registry).
pub(crate) fn wrong_node(kind: &NodeKind, expected: &str) -> SluiceError {
    SluiceError::internal(format!(
        "the {expected} constructor was given a `{}` node",
        kind.label()
    ))
}

fn sink_from_node(
    kind: &NodeKind,
    inputs: &[&SchemaRef],
    registry: &ConnectorRegistry,
) -> Result<PreparedOperator> {
    let NodeKind::Sink(spec) = kind else {
        return Err(wrong_node(kind, "sink"));
    };
    let input = single_input(inputs)?;
    let factory = registry.prepare_sink(spec, &input)?;
    Ok(PreparedOperator {
        output_schema: input,
        factory,
    })
}

/// Runs a prepared operator over batches, returning what it emitted (including on close).
#[cfg(test)]
pub(crate) async fn run_prepared(
    prepared: &PreparedOperator,
    input: Vec<sluice_types::Batch>,
) -> Result<Vec<sluice_types::Batch>> {
    let schema = input
        .first()
        .map(|b| b.data.schema())
        .ok_or_else(|| SluiceError::internal("no input"))?;
    let mut op = (prepared.factory)(&TaskInfo::for_test("test"))?;
    let mut ctx = crate::operator::OperatorContext::for_test(schema);
    let mut out = crate::operator::VecCollector::default();
    for b in input {
        op.process_batch(b, &mut ctx, &mut out).await?;
    }
    op.on_close(&mut ctx, &mut out).await?;
    Ok(out.batches)
}
