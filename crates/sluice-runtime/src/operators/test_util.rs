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

/// Fires the operator's earliest processing-time timer, as the task loop would when the
/// wall clock reaches it. Returns its time, or `None` when none is registered.
pub(crate) async fn fire_processing_timer(
    op: &mut dyn crate::operator::Operator,
    ctx: &mut crate::operator::OperatorContext,
    out: &mut crate::operator::VecCollector,
) -> Option<i64> {
    use crate::operator::TimeDomain;
    let t = ctx.timers.pop_due(TimeDomain::ProcessingTime, i64::MAX)?;
    op.on_timer(TimeDomain::ProcessingTime, t, ctx, out)
        .await
        .expect("timer");
    Some(t)
}

/// `k,window_start,window_end,<column 3>` of every output row, in emission order.
pub(crate) fn window_rows(out: &[Batch]) -> Vec<String> {
    use arrow::util::display::array_value_to_string;
    let mut rows = Vec::new();
    for b in out {
        let d = &b.data;
        for i in 0..d.num_rows() {
            let cell = |c: usize| array_value_to_string(d.column(c), i).expect("printable");
            let ts = |c: usize| {
                d.column(c)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .expect("a window bound")
                    .value(i)
            };
            rows.push(format!("{},{},{},{}", cell(0), ts(1), ts(2), cell(3)));
        }
    }
    rows
}
