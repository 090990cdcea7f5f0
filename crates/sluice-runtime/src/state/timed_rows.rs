//! Whole rows with their event times as a keyed state table: what operators that hold
//! rows (changelog normalize, upsert materialize, OVER of changes) checkpoint.
//!
//! ```text
//!  snapshot: encoded rows + times ──> | user columns … | _timestamp |  keyed by key columns
//!  restore:  | user columns … | _timestamp | ──> (user columns, times), checked
//! ```

use std::sync::Arc;

use arrow::array::{RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::Schema;
use arrow::row::{Row, RowConverter};
use sluice_types::{Result, SluiceError, user_column_count};

use super::{OperatorState, TableWriter};

/// Adds table `name` of rows (encoded by `converter` from `input`'s user columns) with
/// their `times`, keyed by the user columns `keys`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_timed_rows<'a>(
    converter: &RowConverter,
    rows: impl IntoIterator<Item = Row<'a>>,
    times: impl IntoIterator<Item = i64>,
    input: &Schema,
    keys: &[usize],
    name: &str,
    max_parallelism: usize,
    state: &mut OperatorState,
) -> Result<()> {
    let width = user_column_count(input);
    let mut columns = converter.convert_rows(rows)?;
    columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(times)));
    let mut fields = input.fields()[..width].to_vec();
    fields.push(Arc::new(sluice_types::timestamp_field()));
    let all = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    TableWriter::rows_of(&all, keys).finish(name, max_parallelism, state)
}

/// A restored batch of a [`write_timed_rows`] table: its user columns (`width` of them)
/// and its times; `what` names the operator in the error for a batch of another shape.
pub(crate) fn read_timed_rows(
    b: &RecordBatch,
    width: usize,
    what: &str,
) -> Result<(RecordBatch, TimestampMillisecondArray)> {
    let times = (b.num_columns() == width + 1)
        .then(|| {
            b.column(width)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .cloned()
        })
        .flatten()
        .ok_or_else(|| {
            SluiceError::user(format!(
                "the checkpoint's {what} state has other columns: the job changed"
            ))
        })?;
    Ok((b.project(&(0..width).collect::<Vec<_>>())?, times))
}

/// The positions of the columns `keys` among `input`'s user columns.
pub(crate) fn user_key_indices(input: &Schema, keys: &[String]) -> Result<Vec<usize>> {
    let width = user_column_count(input);
    keys.iter()
        .map(|k| {
            input.fields()[..width]
                .iter()
                .position(|f| f.name() == k)
                .ok_or_else(|| SluiceError::user(format!("the key column `{k}` is not a column")))
        })
        .collect()
}
