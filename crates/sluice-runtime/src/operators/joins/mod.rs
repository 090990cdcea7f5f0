//! Joins: interval, window and regular joins of two append-only inputs ([`join`]),
//! joins whose output takes rows back ([`changelog`]: of updating inputs, regular outer
//! joins) and lookup joins against a table ([`lookup`]).

pub mod changelog;
pub mod join;
pub mod lookup;

use arrow::datatypes::SchemaRef;
use sluice_plan::NodeKind;
use sluice_types::Result;

use crate::operators::PreparedOperator;

/// The registered constructor of join nodes: a regular join of updating inputs or a
/// regular outer join is a changelog join; any other an append-only one.
pub fn from_node(
    kind: &NodeKind,
    inputs: &[&SchemaRef],
    _registry: &crate::source::ConnectorRegistry,
) -> Result<PreparedOperator> {
    if let NodeKind::Join {
        left_keys,
        right_keys,
        interval: None,
        outer,
        ..
    } = kind
        && let [left, right] = inputs
        && (outer.0 || outer.1 || inputs.iter().any(|i| sluice_types::is_updating(i)))
    {
        return changelog::ChangelogJoinOperator::prepare(
            left_keys,
            right_keys,
            *outer,
            [left, right],
        );
    }
    if inputs.iter().any(|i| sluice_types::is_updating(i)) {
        return Err(sluice_types::SluiceError::user(
            "an interval or window join cannot take updates and deletes: join updating inputs with a regular join (equal keys only)",
        ));
    }
    join::JoinOperator::prepare(kind, inputs)
}

/// Most rows of one join output batch: an input batch whose keys match many held rows
/// leaves in batches of about this size, each sent (waiting for room downstream, and a
/// point where a cancelled job stops) before the next is built.
pub(crate) const MAX_OUTPUT_ROWS: usize = 8192;
