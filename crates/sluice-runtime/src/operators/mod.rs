//! Built-in operators, by family in folders (windows, aggregates, joins, rank) with the
//! helpers each family shares, and the constructor registry that turns a plan
//! node into an operator factory.

pub mod aggregates;
pub mod changelog;
pub mod filter;
pub mod joins;
pub mod project;
pub mod rank;
#[cfg(test)]
mod test_util;
pub mod windows;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use sluice_plan::NodeKind;
use sluice_types::{Result, SluiceError, TaskInfo};

use crate::operator::Operator;
use crate::source::ConnectorRegistry;

/// Creates the operator of one subtask.
pub type OperatorFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Operator>> + Send + Sync>;

/// When a keyed operator last swept its state for keys it may forget (a state TTL, a
/// frame no row can see): a sweep visits every key, so it runs at most every tenth of
/// the interval, in event time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sweeps {
    at: i64,
}

impl Default for Sweeps {
    fn default() -> Self {
        Self { at: i64::MIN }
    }
}

impl Sweeps {
    /// Whether a sweep is due at `watermark` (never at the end of input); records it.
    pub(crate) fn due(&mut self, watermark: i64, interval: i64) -> bool {
        if watermark == i64::MAX || watermark.saturating_sub(self.at) < (interval / 10).max(1) {
            return false;
        }
        self.at = watermark;
        true
    }
}

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

/// Constructs a non-source node. Each operator file owns its own `prepare`.
pub fn prepare(
    kind: &NodeKind,
    input: &SchemaRef,
    registry: &ConnectorRegistry,
) -> Result<PreparedOperator> {
    match kind {
        NodeKind::Filter { predicate } => filter::FilterOperator::prepare(predicate, input),
        NodeKind::Project { exprs } => project::ProjectOperator::prepare(exprs, input),
        NodeKind::Aggregate {
            keys,
            aggregates,
            ttl_ms,
        } => {
            aggregates::group::AggregateOperator::prepare_with_ttl(keys, aggregates, *ttl_ms, input)
        }
        NodeKind::OverAggregate {
            partition_by,
            aggregates,
            frame,
            ttl_ms,
        } => aggregates::over::OverAggregateOperator::prepare(
            partition_by,
            aggregates,
            *frame,
            *ttl_ms,
            input,
        ),
        NodeKind::UpdatingAggregate {
            keys,
            upsert_key,
            aggregates,
        } => aggregates::retract::RetractAggregateOperator::prepare(
            keys, upsert_key, aggregates, input,
        ),
        NodeKind::WindowAggregate {
            keys,
            window,
            aggregates,
            allowed_lateness,
            early_firing,
        } => match window {
            sluice_plan::WindowSpec::Global { .. } if early_firing.is_some() => {
                Err(SluiceError::user(
                    "a global window fires by its trigger; add a processing-time interval to the trigger instead of early firing",
                ))
            }
            sluice_plan::WindowSpec::Global { trigger } => {
                windows::global::GlobalWindowOperator::prepare(keys, *trigger, aggregates, input)
            }
            sluice_plan::WindowSpec::Count { size, slide } => Ok(
                windows::count::CountWindowOperator::new(keys, *size, *slide, aggregates, input)?
                    .with_early_firing(*early_firing)
                    .into_prepared(),
            ),
            sluice_plan::WindowSpec::Session { gap } => {
                Ok(windows::session::SessionWindowOperator::new(
                    keys,
                    *gap,
                    aggregates,
                    *allowed_lateness,
                    input,
                )?
                .with_early_firing(*early_firing)
                .into_prepared())
            }
            _ => Ok(windows::slicing::WindowAggregateOperator::new(
                keys,
                *window,
                aggregates,
                *allowed_lateness,
                input,
            )?
            .with_early_firing(*early_firing)
            .into_prepared()),
        },
        NodeKind::TopNPerWindow {
            partition_by,
            order_by,
            descending,
            limit,
            row_number,
            rank_column,
        } => rank::window_topn::TopNPerWindowOperator::prepare_numbered(
            partition_by,
            order_by,
            *descending,
            *limit,
            *row_number,
            rank_column.as_deref(),
            input,
        ),
        NodeKind::Sink(spec) => {
            let factory = registry.sink(&spec.connector)?.prepare(spec, input)?;
            Ok(PreparedOperator {
                output_schema: Arc::clone(input),
                factory,
            })
        }
        NodeKind::Source(_) => Err(SluiceError::internal(
            "sources are prepared by the job builder, not as operators",
        )),
        NodeKind::TopN {
            partition_by,
            order_by,
            descending,
            then_by,
            limit,
            rank_column,
            ttl_ms,
        } => rank::topn::TopNOperator::prepare_ordered(
            partition_by,
            order_by,
            *descending,
            then_by,
            *limit,
            rank_column,
            *ttl_ms,
            input,
        ),
        NodeKind::Changelog { keys } => changelog::ChangelogOperator::prepare(keys, input),
        NodeKind::LookupJoin {
            table,
            left_keys,
            right_keys,
            right_names,
        } => joins::lookup::LookupJoinOperator::prepare(
            table,
            left_keys,
            right_keys,
            right_names,
            input,
            registry,
        ),
        NodeKind::Join { .. } => Err(SluiceError::internal(
            "joins are prepared by the job builder with both input schemas",
        )),
    }
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
