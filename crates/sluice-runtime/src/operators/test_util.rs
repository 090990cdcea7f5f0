//! Helpers shared by the operators' tests.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_types::{Batch, IngestTime, timestamp_field};

/// A batch of `(key, value, event time)` rows as columns `k: Utf8` (`k<key>`), `v: Int64`
/// and `_timestamp`.
pub(crate) fn kv_batch(rows: &[(i64, i64, i64)]) -> Batch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
        timestamp_field(),
    ]));
    let data = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("k{}", r.0)),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.2),
            )),
        ],
    )
    .expect("invariant: columns match the schema");
    Batch::try_new(data, IngestTime::at(0)).expect("invariant: _timestamp is last")
}
